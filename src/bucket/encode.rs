//! Names in keys: a byte-exact port of rclone's `lib/encoder` for the three encodings a
//! local Linux name passes through on its way into an S3 key, so that rclone restores
//! exactly the name replicad read. Pure: bytes in, bytes out; knows nothing of S3 or files.
//!
//! rclone (1.75, `backend/local` + `backend/s3` + `lib/encoder/encoder.go`) moves a name
//! through a "standard" form:
//!
//! ```text
//! local name ──Base.Decode──► raw ──Standard.Encode──► standard ──Standard.Decode──► raw
//!            ──S3.Encode──► key segment
//! ```
//!
//! and back the same way in reverse on restore. `Base` (`EncodeZero|Slash|Dot`) is the local
//! backend's default on Linux, `Standard` adds `Ctl|Del`, and `S3` is the S3 backend's
//! default `EncodeInvalidUtf8|EncodeSlash|EncodeDot`. Invalid UTF-8 bytes become `‛XX`
//! (quote rune + upper-case hex); `/` inside a name becomes `／`; the names `.` and `..`
//! become `．` and `．．`; NUL becomes `␀`; a literal quote rune or symbol is quoted.
//!
//! `Base.Decode` is not injective (`‛x` and `‛‛x` both decode to `‛x`), so a few local names
//! cannot come back from *any* key: [`to_key_segment`] refuses them rather than write an
//! object rclone would restore under another name.
//!
//! Go's `for i, r := range s` yields `RuneError` (width 1) for each byte of an invalid
//! sequence and a literal U+FFFD (width 3) for the real character; the port keeps that
//! distinction (`Rune::Invalid(byte)` versus `Rune::Char('\u{FFFD}')`).

/// The encoding flags the three encodings use (bit names as in rclone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mask {
    slash: bool,
    dot: bool,
    ctl: bool,
    del: bool,
    invalid_utf8: bool,
}

/// rclone's `encoder.Base`, the local backend's default on Linux (`encoder.OS`).
const BASE: Mask = Mask { slash: true, dot: true, ctl: false, del: false, invalid_utf8: false };
/// rclone's `encoder.Standard`, the internal form every backend converts to and from.
const STANDARD: Mask = Mask { slash: true, dot: true, ctl: true, del: true, invalid_utf8: false };
/// The S3 backend's default `encoding` option (`backend/s3/s3.go`).
const S3: Mask = Mask { slash: true, dot: true, ctl: false, del: false, invalid_utf8: true };

const QUOTE: char = '‛'; // SINGLE HIGH-REVERSED-9 QUOTATION MARK
const SYMBOL_NULL: char = '␀';
const SYMBOL_DEL: char = '␡';
const FULL_SLASH: char = '／';
const FULL_DOT: &str = "．";
/// Added to a C0 control character to get its "SYMBOL FOR" picture.
const SYMBOL_OFFSET: u32 = 0x2400;

/// One step of Go's `range` over a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rune {
    Char(char),
    Invalid(u8),
}

/// Splits `s` the way Go's `range` does: valid characters, and each byte of an invalid
/// sequence on its own. Returns (byte offset, rune, width).
fn runes(s: &[u8]) -> impl Iterator<Item = (usize, Rune, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= s.len() {
            return None;
        }
        let at = i;
        let (rune, width) = decode_one(&s[i..]);
        i += width;
        Some((at, rune, width))
    })
}

fn decode_one(s: &[u8]) -> (Rune, usize) {
    let width = match s[0] {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return (Rune::Invalid(s[0]), 1),
    };
    match s.get(..width).and_then(|b| std::str::from_utf8(b).ok()).and_then(|t| t.chars().next()) {
        Some(c) => (Rune::Char(c), width),
        None => (Rune::Invalid(s[0]), 1),
    }
}

fn push(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

fn push_quoted(out: &mut Vec<u8>, c: char) {
    push(out, QUOTE);
    push(out, c);
}

fn is_symbol_ctl(c: char) -> bool {
    (SYMBOL_OFFSET + 1..=SYMBOL_OFFSET + 0x1f).contains(&u32::from(c))
}

fn shift(c: char, by: u32, up: bool) -> char {
    let v = if up { u32::from(c) + by } else { u32::from(c) - by };
    char::from_u32(v).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// rclone's `MultiEncoder.Encode` for `mask`.
fn encode(mask: Mask, input: &[u8]) -> Vec<u8> {
    if input.is_empty() {
        return Vec::new();
    }
    if mask.dot {
        let q = QUOTE.to_string();
        match input {
            b"." => return FULL_DOT.as_bytes().to_vec(),
            b".." => return FULL_DOT.repeat(2).into_bytes(),
            x if x == FULL_DOT.as_bytes() => return format!("{q}{FULL_DOT}").into_bytes(),
            x if x == FULL_DOT.repeat(2).as_bytes() => {
                return format!("{q}{FULL_DOT}{q}{FULL_DOT}").into_bytes();
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(input.len() + 8);
    for (_, rune, _) in runes(input) {
        let c = match rune {
            Rune::Invalid(b) if mask.invalid_utf8 => {
                push(&mut out, QUOTE);
                out.extend_from_slice(format!("{b:02X}").as_bytes());
                continue;
            }
            Rune::Invalid(b) => {
                out.push(b);
                continue;
            }
            Rune::Char(c) => c,
        };
        match c {
            '\0' => push(&mut out, SYMBOL_NULL),
            SYMBOL_NULL | QUOTE => push_quoted(&mut out, c),
            '/' if mask.slash => push(&mut out, FULL_SLASH),
            FULL_SLASH if mask.slash => push_quoted(&mut out, c),
            SYMBOL_DEL if mask.del => push_quoted(&mut out, c),
            '\u{7f}' if mask.del => push(&mut out, SYMBOL_DEL),
            '\u{1}'..='\u{1f}' if mask.ctl => push(&mut out, shift(c, SYMBOL_OFFSET, true)),
            c if mask.ctl && is_symbol_ctl(c) => push_quoted(&mut out, c),
            c => push(&mut out, c),
        }
    }
    out
}

/// Go's `strconv.ParseUint(s[:2], 16, 8)` on the next two bytes.
fn hex_byte(s: &[u8]) -> Option<u8> {
    let pair = std::str::from_utf8(s.get(..2)?).ok()?;
    if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(pair, 16).ok()
}

/// rclone's `MultiEncoder.Decode` for `mask`.
fn decode(mask: Mask, input: &[u8]) -> Vec<u8> {
    if mask.dot {
        let q = QUOTE.to_string();
        let two = FULL_DOT.repeat(2);
        match input {
            x if x == FULL_DOT.as_bytes() => return b".".to_vec(),
            x if x == two.as_bytes() => return b"..".to_vec(),
            x if x == format!("{q}{FULL_DOT}").as_bytes() => return FULL_DOT.as_bytes().to_vec(),
            x if x == format!("{q}{FULL_DOT}{q}{FULL_DOT}").as_bytes() => return two.into_bytes(),
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let (mut unquote_next, mut skip_next) = (false, false);
    for (i, rune, width) in runes(input) {
        if skip_next {
            skip_next = false;
            continue;
        }
        let unquote = std::mem::replace(&mut unquote_next, false);
        if let Rune::Char(c) = rune {
            let decoded = match c {
                SYMBOL_NULL => Some(if unquote { c } else { '\0' }),
                QUOTE if unquote => Some(c),
                QUOTE => {
                    unquote_next = true;
                    continue;
                }
                FULL_SLASH if mask.slash => Some(if unquote { c } else { '/' }),
                SYMBOL_DEL if mask.del => Some(if unquote { c } else { '\u{7f}' }),
                c if mask.ctl && is_symbol_ctl(c) => {
                    Some(if unquote { c } else { shift(c, SYMBOL_OFFSET, false) })
                }
                _ => None,
            };
            if let Some(d) = decoded {
                push(&mut out, d);
                continue;
            }
        }
        if unquote {
            if mask.invalid_utf8
                && let Some(b) = hex_byte(&input[i..])
            {
                out.push(b);
                skip_next = true;
                continue;
            }
            push(&mut out, QUOTE);
        }
        // Invalid bytes and every other character are copied as they are.
        out.extend_from_slice(&input[i..i + width]);
    }
    if unquote_next {
        push(&mut out, QUOTE);
    }
    out
}

/// Why a local name has no key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// rclone would restore the key under a different local name.
    #[error("rclone's name encoding cannot restore this name (it would come back as {0:?})")]
    NotRestorable(Vec<u8>),
    /// The empty name has no key.
    #[error("empty name")]
    Empty,
}

/// The key segment rclone's S3 backend writes for the local name `name` (with `suffix`,
/// e.g. `.rclonelink`, appended to the standard form as rclone does), or why there is none.
pub fn to_key_segment(name: &[u8], suffix: &str) -> Result<String, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let mut standard = encode(STANDARD, &decode(BASE, name));
    standard.extend_from_slice(suffix.as_bytes());
    let segment = encode(S3, &decode(STANDARD, &standard));
    let back = from_key_segment(segment.as_slice());
    let restored = back.strip_suffix(suffix.as_bytes()).unwrap_or(&back);
    if restored != name {
        return Err(NameError::NotRestorable(restored.to_vec()));
    }
    // S3's encoding quotes every invalid byte, so the segment is valid UTF-8.
    String::from_utf8(segment).map_err(|e| NameError::NotRestorable(e.into_bytes()))
}

/// The local name (suffix included) rclone restores from a key segment.
pub fn from_key_segment(segment: &[u8]) -> Vec<u8> {
    encode(BASE, &decode(STANDARD, &encode(STANDARD, &decode(S3, segment))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(name: &[u8]) -> String {
        to_key_segment(name, "").unwrap()
    }

    #[test]
    fn plain_names_are_unchanged() {
        for n in ["a", "hello world.txt", "ünïcødé", "a:b*c?d", "%41", "tab\there", "x\u{7f}"] {
            assert_eq!(seg(n.as_bytes()), n);
        }
    }

    /// Cases worked by hand from encoder.go.
    #[test]
    fn rclone_cases() {
        assert_eq!(seg(b"\xff"), "‛FF");
        assert_eq!(seg(b"a\xc3"), "a‛C3");
        assert_eq!(seg("‛‛FF".as_bytes()), "‛‛FF");
        assert_eq!(seg("．".as_bytes()), "．");
        assert_eq!(seg("．．".as_bytes()), "．．");
        assert_eq!(seg("a／b".as_bytes()), "a／b");
        assert_eq!(seg("␀".as_bytes()), "␀");
        assert_eq!(seg("\u{fffd}".as_bytes()), "\u{fffd}");
        assert_eq!(seg(b"\x01"), "\x01");
        assert_eq!(to_key_segment(b"x", ".rclonelink").unwrap(), "x.rclonelink");
        assert_eq!(to_key_segment(b"\xfe", ".rclonelink").unwrap(), "‛FE.rclonelink");
    }

    #[test]
    fn names_rclone_cannot_restore_are_refused() {
        // rclone's local backend decodes `‛x` to `‛x` but encodes that back as `‛‛x`.
        for n in ["‛x", "‛", "it‛s", "‛FF"] {
            let r = to_key_segment(n.as_bytes(), "");
            assert!(matches!(r, Err(NameError::NotRestorable(_))), "{n}: {r:?}");
        }
        assert_eq!(to_key_segment(b"", ""), Err(NameError::Empty));
    }

    #[test]
    fn go_range_semantics() {
        let r: Vec<_> = runes(b"a\xe2\x82\xacb\xe2\x82z").map(|(_, r, w)| (r, w)).collect();
        assert_eq!(
            r,
            vec![
                (Rune::Char('a'), 1),
                (Rune::Char('€'), 3),
                (Rune::Char('b'), 1),
                (Rune::Invalid(0xe2), 1),
                (Rune::Invalid(0x82), 1),
                (Rune::Char('z'), 1)
            ]
        );
        // Surrogates and overlong forms are invalid in Go as in Rust.
        assert_eq!(runes(b"\xed\xa0\x80").count(), 3);
        assert_eq!(runes(b"\xc0\xaf").count(), 2);
    }

    fn name_bytes() -> impl Strategy<Value = Vec<u8>> {
        let special = prop::sample::select(vec![
            "‛".as_bytes().to_vec(),
            "␀".as_bytes().to_vec(),
            "．".as_bytes().to_vec(),
            "／".as_bytes().to_vec(),
            "␁".as_bytes().to_vec(),
            "␡".as_bytes().to_vec(),
            "\u{fffd}".as_bytes().to_vec(),
            b"FF".to_vec(),
            b".".to_vec(),
        ]);
        let piece = prop_oneof![
            3 => any::<u8>().prop_filter("no / or NUL in a name", |b| *b != b'/' && *b != 0)
                .prop_map(|b| vec![b]),
            1 => special,
        ];
        prop::collection::vec(piece, 1..12).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Every name that gets a key comes back from it byte for byte, and the key is
        /// one S3 can hold: UTF-8, no `/`, never `.` or `..`.
        #[test]
        fn round_trip(name in name_bytes()) {
            match to_key_segment(&name, "") {
                Ok(segment) => {
                    prop_assert_eq!(from_key_segment(segment.as_bytes()), name);
                    prop_assert!(!segment.contains('/'));
                    prop_assert!(segment != "." && segment != "..");
                }
                Err(NameError::NotRestorable(other)) => prop_assert_ne!(other, name),
                Err(NameError::Empty) => prop_assert!(false, "generator makes no empty name"),
            }
        }

        /// Arbitrary bytes: names without a quote rune or a symbol picture always get a key.
        #[test]
        fn ordinary_bytes_always_have_a_key(
            name in prop::collection::vec(1u8..=255, 1..64)
                .prop_filter("no /", |v| !v.contains(&b'/') && v != b"." && v != b"..")
        ) {
            let s = String::from_utf8_lossy(&name);
            prop_assume!(!s.contains(['‛', '␀', '．', '／']));
            let segment = to_key_segment(&name, "").unwrap();
            prop_assert_eq!(from_key_segment(segment.as_bytes()), name);
        }

        /// Distinct names never share a key (so only the link suffix can collide).
        #[test]
        fn injective(a in name_bytes(), b in name_bytes()) {
            if let (Ok(x), Ok(y)) = (to_key_segment(&a, ""), to_key_segment(&b, "")) {
                prop_assert_eq!(x == y, a == b);
            }
        }
    }
}
