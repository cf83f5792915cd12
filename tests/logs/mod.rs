//! A log nobody can forge ("Trust (3/3)" item 4): hostile file names — ones that spell out
//! other fields, quotes, backslashes, newlines, Unicode bidi controls, bytes that are not
//! UTF-8 — in both log formats, parsed back by independent parsers (a logfmt parser and
//! Python's `json.loads`): every action line yields exactly the fields replicad wrote, and
//! the path field is the escaped name.

use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use crate::support::Tree;

/// The names, raw; and as the log must show them (replicad's escaping of the path).
const HOSTILE: &[(&[u8], &str)] = &[
    (
        b"innocent kind=dir entries=9999 action=remove path=etc",
        "innocent kind=dir entries=9999 action=remove path=etc",
    ),
    (b"quote\" path=\"x", "quote\" path=\"x"),
    (b"back\\slash", "back\\\\slash"),
    (b"new\nline action=remove", "new\\nline action=remove"),
    ("bidi\u{202e}gpj.exe\u{2066}".as_bytes(), "bidi\\u{202e}gpj.exe\\u{2066}"),
    (b"bytes\xff\xfe", "bytes\\xff\\xfe"),
    (b"plain", "plain"),
];

/// Parses replicad's log lines in Python (logfmt by hand, JSON with `json.loads`) and
/// prints, per action line, `action<TAB>path<TAB>sorted keys`; fails on a line it cannot
/// parse or a field seen twice.
const PARSER: &str = r#"
import json, sys
fmt = sys.argv[1]
def logfmt(s):
    i, n, out = 0, len(s), []
    while i < n:
        while i < n and s[i] == ' ': i += 1
        if i >= n: break
        j = i
        while j < n and s[j] not in ' =': j += 1
        key = s[i:j]; i = j
        if i < n and s[i] == '=':
            i += 1
            if i < n and s[i] == '"':
                i += 1; val = ''
                while True:
                    if i >= n: sys.exit('unterminated quote: ' + s)
                    c = s[i]
                    if c == '\\':
                        val += s[i + 1]; i += 2
                    elif c == '"':
                        i += 1; break
                    else:
                        val += c; i += 1
            else:
                j = i
                while j < n and s[j] != ' ': j += 1
                val = s[i:j]; i = j
            out.append((key, val))
        else:
            out.append((key, None))
    return out
for line in sys.stdin.read().splitlines():
    if fmt == 'json':
        obj = json.loads(line)
        if 'action' not in obj: continue
        pairs = [(k, v) for k, v in obj.items() if k not in ('timestamp', 'level')]
    else:
        if ' INFO ' not in line: continue
        pairs = logfmt(line.split(' INFO ', 1)[1])
        if not any(k == 'action' for k, _ in pairs): continue
    keys = [k for k, v in pairs if v is not None]
    if len(keys) != len(set(keys)): sys.exit('a field appears twice: ' + line)
    d = dict((k, v) for k, v in pairs if v is not None)
    print(d['action'] + '\t' + d['path'].encode('unicode_escape').decode() + '\t' + ','.join(sorted(keys)))
"#;

fn parsed(log: &str, format: &str) -> Vec<(String, String, String)> {
    let mut child = Command::new("python3")
        .args(["-c", PARSER, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    child.stdin.take().unwrap().write_all(log.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {format} parser failed: {}\nlog:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, '\t').map(String::from);
            (f.next().unwrap(), f.next().unwrap(), f.next().unwrap())
        })
        .collect()
}

/// What Python's `unicode_escape` makes of the escaped name (the parser prints it so).
fn python_escaped(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (c as u32) > 0x7e && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (c as u32) >= 0x100 && (c as u32) < 0x10000 => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) >= 0x10000 => out.push_str(&format!("\\U{:08x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[test]
fn hostile_names_cannot_forge_fields_in_either_log_format() {
    for format in ["text", "json"] {
        let t = Tree::new();
        for (raw, _) in HOSTILE {
            t.file(OsStr::from_bytes(raw), b"x");
        }
        let run = t.once(&["--log-format", format]);
        run.assert_code(0);
        let lines = parsed(&run.stderr, format);
        let copies: Vec<&(String, String, String)> =
            lines.iter().filter(|l| l.0 == "copy").collect();
        assert_eq!(copies.len(), HOSTILE.len(), "{format}: one copy line per file:\n{run}");
        for (_, shown) in HOSTILE {
            let want = python_escaped(shown);
            let found = copies.iter().find(|l| l.1 == want);
            let found = found.unwrap_or_else(|| {
                panic!("{format}: no copy line with path {want:?}:\n{lines:?}\n{run}")
            });
            assert_eq!(
                found.2, "action,path,size",
                "{format}: forged fields for {shown:?}:\n{run}"
            );
        }
        assert!(lines.iter().all(|l| l.0 != "remove"), "{format}: a forged remove:\n{run}");
        if format == "text" {
            assert!(
                !run.stderr.contains('\u{202e}'),
                "a raw bidi control reached the terminal:\n{run}"
            );
        }
    }
}
