//! The user metadata of an object, written exactly as rclone's S3 backend writes it with
//! `--metadata`, so `rclone copy --metadata` restores owner, mode and times. Pure.
//!
//! What rclone 1.75 writes (read from `backend/local/metadata_linux.go`,
//! `backend/s3/s3.go` and `github.com/ncw/swift/v2` `meta.go`):
//!
//! | key (`x-amz-meta-…`) | value | example |
//! |---|---|---|
//! | `mtime` | seconds since the epoch as a fixed-point decimal, trailing zeros dropped (swift's `TimeToFloatString`) — *not* RFC 3339: the S3 backend turns rclone's RFC 3339 `mtime` into this | `1700000000.123456789` |
//! | `mode` | the whole `st_mode`, type bits included, in octal without a leading zero (`%0o`) | `100644`, `40755`, `120777` |
//! | `uid`, `gid` | decimal | `0` |
//! | `atime`, `btime` | RFC 3339 with nanoseconds, trailing zeros dropped (Go's `RFC3339Nano`) | `2026-11-29T11:12:38.5Z` |
//! | `md5chksum` | base64 of the content's MD5, for multipart uploads (whose ETag is not an MD5) | `1B2M2Y8AsgTpgAmY7PhCfg==` |
//!
//! rclone restores `atime`/`mtime` (atime defaults to mtime), `uid`/`gid` and the permission
//! bits of `mode` (`--metadata` drops setuid/setgid/sticky unless asked), and cannot set
//! `btime` on Linux. replicad compares only `mtime`, `mode`, `uid`, `gid` (and the content):
//! `atime` moves when anyone reads the file, `btime` cannot be set.

use std::collections::HashMap;

use base64::Engine as _;

use crate::checksum::Md5Sum;
use crate::entry::Time;

/// User-metadata keys (lowercase, without the `x-amz-meta-` prefix).
pub const MTIME: &str = "mtime";
/// See [`MTIME`].
pub const MODE: &str = "mode";
/// See [`MTIME`].
pub const UID: &str = "uid";
/// See [`MTIME`].
pub const GID: &str = "gid";
/// See [`MTIME`].
pub const ATIME: &str = "atime";
/// See [`MTIME`].
pub const BTIME: &str = "btime";
/// See [`MTIME`].
pub const MD5: &str = "md5chksum";

/// The `S_IFMT` type bits rclone keeps in `mode`.
pub const S_IFREG: u32 = 0o100000;
/// A directory.
pub const S_IFDIR: u32 = 0o040000;
/// A symbolic link.
pub const S_IFLNK: u32 = 0o120000;

/// The metadata replicad writes with an object (and reads back from HEAD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `st_mode` with the type bits (`S_IFREG | 0o644`), as rclone writes it.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time to the nanosecond.
    pub mtime: Time,
    /// Access time at upload, if known (written for rclone, never compared).
    pub atime: Option<Time>,
    /// Birth time, if the filesystem reports one (written for rclone, never compared).
    pub btime: Option<Time>,
    /// MD5 of the content, written for multipart uploads (`md5chksum`).
    pub md5: Option<Md5Sum>,
}

impl ObjectMeta {
    /// True if the attributes replicad mirrors are equal: mode (with type), owner, mtime.
    pub fn same_attrs(&self, other: &ObjectMeta) -> bool {
        (self.mode, self.uid, self.gid, self.mtime)
            == (other.mode, other.uid, other.gid, other.mtime)
    }

    /// The user metadata to send with the object.
    pub fn to_user_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::with_capacity(7);
        m.insert(MTIME.to_owned(), float_seconds(self.mtime));
        m.insert(MODE.to_owned(), format!("{:o}", self.mode));
        m.insert(UID.to_owned(), self.uid.to_string());
        m.insert(GID.to_owned(), self.gid.to_string());
        if let Some(t) = self.atime.and_then(rfc3339_nano) {
            m.insert(ATIME.to_owned(), t);
        }
        if let Some(t) = self.btime.and_then(rfc3339_nano) {
            m.insert(BTIME.to_owned(), t);
        }
        if let Some(md5) = &self.md5 {
            m.insert(MD5.to_owned(), base64::engine::general_purpose::STANDARD.encode(md5));
        }
        m
    }

    /// Parses what HEAD returned (keys compared case-insensitively, as S3 lowercases
    /// them). `None` if `mtime`, `mode`, `uid` or `gid` is missing or malformed: such an
    /// object was not written by replicad (or was edited) and is written again.
    pub fn from_user_metadata<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<ObjectMeta> {
        let mut map = HashMap::new();
        for (k, v) in pairs {
            map.insert(k.to_ascii_lowercase(), v);
        }
        let get = |k: &str| map.get(k).copied();
        Some(ObjectMeta {
            mode: u32::from_str_radix(get(MODE)?, 8).ok()?,
            uid: get(UID)?.parse().ok()?,
            gid: get(GID)?.parse().ok()?,
            mtime: parse_float_seconds(get(MTIME)?)?,
            atime: get(ATIME).and_then(parse_rfc3339),
            btime: get(BTIME).and_then(parse_rfc3339),
            md5: get(MD5).and_then(|b| {
                let bytes = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
                bytes.try_into().ok()
            }),
        })
    }
}

fn nanos(t: Time) -> i128 {
    i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec)
}

fn from_nanos(ns: i128) -> Option<Time> {
    let sec = i64::try_from(ns.div_euclid(1_000_000_000)).ok()?;
    let nsec = u32::try_from(ns.rem_euclid(1_000_000_000)).ok()?;
    Some(Time { sec, nsec })
}

/// swift's `nsToFloatString`: `%010d` of the nanoseconds, a point before the last nine
/// digits, trailing zeros (and a bare point) dropped.
pub fn float_seconds(t: Time) -> String {
    let ns = nanos(t);
    if ns < 0 {
        return format!("-{}", float_seconds(from_nanos(-ns).unwrap_or_default()));
    }
    let digits = format!("{ns:010}");
    let (int, frac) = digits.split_at(digits.len() - 9);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() { int.to_owned() } else { format!("{int}.{frac}") }
}

/// swift's `floatStringToNs`: at most nine decimals are kept, the rest cut off.
pub fn parse_float_seconds(s: &str) -> Option<Time> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let frac: String = frac.chars().take(9).collect();
    let digits = format!("{int}{frac:0<9}");
    let digits = digits.strip_prefix('+').unwrap_or(&digits);
    if digits.is_empty() || !digits.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // i128: an mtime after 2262 or before 1678 is valid on ext4, xfs and btrfs.
    from_nanos(digits.parse::<i128>().ok()?)
}

/// Go's `time.RFC3339Nano` in UTC: `2006-01-02T15:04:05.999999999Z`, fraction trimmed.
pub fn rfc3339_nano(t: Time) -> Option<String> {
    let ts = jiff::Timestamp::new(t.sec, i32::try_from(t.nsec).ok()?).ok()?;
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if t.nsec != 0 {
        let frac = format!("{:09}", t.nsec);
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    Some(s)
}

/// Parses RFC 3339 with any offset (rclone writes local time).
pub fn parse_rfc3339(s: &str) -> Option<Time> {
    let ts: jiff::Timestamp = s.parse().ok()?;
    from_nanos(ts.as_nanosecond())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(sec: i64, nsec: u32) -> Time {
        Time { sec, nsec }
    }

    #[test]
    fn float_seconds_like_swift() {
        assert_eq!(float_seconds(t(1_354_040_105, 123_456_789)), "1354040105.123456789");
        assert_eq!(float_seconds(t(1_700_000_000, 0)), "1700000000");
        assert_eq!(float_seconds(t(1_700_000_000, 500_000_000)), "1700000000.5");
        assert_eq!(float_seconds(t(0, 5)), "0.000000005");
        assert_eq!(float_seconds(t(0, 0)), "0");
        assert_eq!(float_seconds(t(-1, 500_000_000)), "-0.5");
        assert_eq!(
            parse_float_seconds("1354040105.1234567891"),
            Some(t(1_354_040_105, 123_456_789))
        );
        assert_eq!(parse_float_seconds("12"), Some(t(12, 0)));
        assert_eq!(parse_float_seconds("-0.5"), Some(t(-1, 500_000_000)));
        assert_eq!(parse_float_seconds(""), None);
        assert_eq!(parse_float_seconds("1e9"), None);
    }

    #[test]
    fn rfc3339_like_go() {
        assert_eq!(rfc3339_nano(t(0, 0)).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(t(1_354_040_105, 120_000_000)).unwrap(), "2012-11-27T18:15:05.12Z");
        assert_eq!(
            parse_rfc3339("2012-11-27T19:15:05.12+01:00"),
            Some(t(1_354_040_105, 120_000_000))
        );
    }

    #[test]
    fn mode_is_octal_with_type_bits() {
        let m = ObjectMeta {
            mode: S_IFREG | 0o4755,
            uid: 0,
            gid: 7,
            mtime: t(1, 2),
            atime: None,
            btime: None,
            md5: Some([0; 16]),
        };
        let um = m.to_user_metadata();
        assert_eq!(um[MODE], "104755");
        assert_eq!(um[MD5], "AAAAAAAAAAAAAAAAAAAAAA==");
        let back = ObjectMeta::from_user_metadata(um.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back, Some(m));
    }

    #[test]
    fn incomplete_metadata_is_not_ours() {
        assert_eq!(ObjectMeta::from_user_metadata([("mtime", "1"), ("mode", "100644")]), None);
        let bad_mode = [("mtime", "1"), ("mode", "9"), ("uid", "0"), ("gid", "0")];
        assert_eq!(ObjectMeta::from_user_metadata(bad_mode), None);
    }

    #[test]
    fn mtimes_beyond_i64_nanoseconds_round_trip() {
        // After 2262-04-11 and before 1677-09-21: valid on ext4, xfs and btrfs.
        for time in [t(10_413_792_000, 0), t(10_413_792_000, 7), t(-10_000_000_000, 5)] {
            assert_eq!(parse_float_seconds(&float_seconds(time)), Some(time), "{time:?}");
        }
    }

    proptest! {
        #[test]
        fn times_round_trip(sec in -9_000_000_000i64..9_000_000_000, nsec in 0u32..1_000_000_000) {
            prop_assert_eq!(parse_float_seconds(&float_seconds(t(sec, nsec))), Some(t(sec, nsec)));
            let s = rfc3339_nano(t(sec, nsec)).unwrap();
            prop_assert_eq!(parse_rfc3339(&s), Some(t(sec, nsec)));
        }
    }
}
