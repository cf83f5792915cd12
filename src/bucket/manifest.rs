//! The quick check without a HEAD per object: what replicad remembers about each object,
//! trusted only while LIST still reports the very same object. Pure (the object's bytes
//! in and out; [`super::store`] reads and writes it at `PREFIX/.replicad/manifest`).
//!
//! A no-op pass over N objects costs one GET of the manifest and ⌈N/1000⌉ LIST requests:
//! for each listed key whose (size, ETag, Last-Modified) equal the manifest's record, the
//! metadata in the record is taken as the object's; any other key is HEADed.
//!
//! **Why this cannot miss a change made behind replicad's back.** Every way to change an
//! object in S3 — PUT, a completed multipart upload, CopyObject (including a copy onto
//! itself to replace only the metadata) — creates a new object with its own Last-Modified,
//! the time that write happened; DELETE removes the key from LIST. LIST reports
//! Last-Modified to the millisecond (AWS, Garage), so an object written after the record
//! was taken shows a different Last-Modified (and usually a different ETag or size), fails
//! the comparison and is HEADed again. The record itself never outlives what it describes:
//! it is taken from a LIST that ran *after* replicad's own write, and bound to the metadata
//! replicad sent only if that LIST shows the ETag and size replicad's write returned. A
//! manifest that is missing, unreadable or edited costs HEADs, never a wrong answer: it is
//! only ever a cache of what LIST can disprove.
//!
//! The residual window, stated exactly: another writer replaces an object with
//! byte-identical content (same ETag and size) but different metadata *between* replicad's
//! PUT and the LIST that follows it in the same pass, or within the same millisecond as
//! the recorded write. The record would then bind replicad's metadata to the other
//! writer's object until that object changes again.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::client::Listed;
use super::meta::{ObjectMeta, float_seconds, parse_float_seconds};

const HEADER: &str = "replicad-manifest v1";

/// What replicad knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Size as LIST reported it.
    pub size: u64,
    /// ETag as LIST reported it.
    pub etag: String,
    /// Last-Modified as LIST reported it (ns).
    pub last_modified_ns: i128,
    /// The metadata the object carries.
    pub meta: ObjectMeta,
}

/// A write replicad made this pass, waiting for a LIST to bind it to a Last-Modified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Size written.
    pub size: u64,
    /// ETag the store returned.
    pub etag: String,
    /// Metadata sent.
    pub meta: ObjectMeta,
}

/// Key → record, plus this pass's writes not yet seen in a LIST.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    records: BTreeMap<String, Record>,
    written: BTreeMap<String, Written>,
    dirty: bool,
}

impl Manifest {
    /// The metadata of `listed`, if the record still describes that very object.
    pub fn trusted(&self, listed: &Listed) -> Option<&ObjectMeta> {
        let r = self.records.get(&listed.key)?;
        let same = r.size == listed.size
            && r.etag == listed.etag
            && r.last_modified_ns == listed.last_modified_ns
            && !listed.etag.is_empty();
        same.then_some(&r.meta)
    }

    /// Like [`Manifest::trusted`], or else the metadata of replicad's own write of that key
    /// not yet bound, when LIST shows the ETag and size that write returned — exactly
    /// what [`Manifest::bind_writes`] will bind at the end of the pass. Event work between
    /// passes (and a rename's copies) reads its own writes back this way without a HEAD.
    pub fn trusted_or_written(&self, listed: &Listed) -> Option<&ObjectMeta> {
        self.trusted(listed).or_else(|| {
            let w = self.written.get(&listed.key)?;
            let same = w.size == listed.size && w.etag == listed.etag && !w.etag.is_empty();
            same.then_some(&w.meta)
        })
    }

    /// Binds what a HEAD of `listed` returned to it (the HEAD ran after that LIST; if the
    /// object changed in between, its Last-Modified no longer matches at the next LIST).
    pub fn record_head(&mut self, listed: &Listed, meta: ObjectMeta) {
        let r = Record {
            size: listed.size,
            etag: listed.etag.clone(),
            last_modified_ns: listed.last_modified_ns,
            meta,
        };
        if self.records.get(&listed.key) != Some(&r) {
            self.records.insert(listed.key.clone(), r);
            self.dirty = true;
        }
    }

    /// Notes replicad's own write; the record is made by [`Manifest::bind_writes`].
    pub fn note_write(&mut self, key: &str, written: Written) {
        if self.records.remove(key).is_some() {
            self.dirty = true;
        }
        self.written.insert(key.to_owned(), written);
    }

    /// Forgets a key (replicad deleted it).
    pub fn forget(&mut self, key: &str) {
        self.written.remove(key);
        if self.records.remove(key).is_some() {
            self.dirty = true;
        }
    }

    /// After a LIST that ran after this pass's writes: binds each write whose key LIST
    /// shows with the written ETag and size, drops records of keys LIST no longer shows.
    /// `listing` must be the complete listing of the prefix (sorted by key).
    pub fn bind_writes(&mut self, listing: &[Listed]) {
        for l in listing {
            if let Some(w) = self.written.remove(&l.key)
                && w.etag == l.etag
                && w.size == l.size
                && !l.etag.is_empty()
            {
                self.record_head(l, w.meta);
            }
        }
        self.written.clear();
        let before = self.records.len();
        let present: std::collections::HashSet<&str> =
            listing.iter().map(|l| l.key.as_str()).collect();
        self.records.retain(|k, _| present.contains(k.as_str()));
        self.dirty |= self.records.len() != before;
    }

    /// True if the manifest changed since it was loaded or last marked saved.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Marks the manifest saved.
    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    /// How many objects it describes.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if it describes none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The object's bytes: a header line, then one tab-separated line per key.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(64 + self.records.len() * 120);
        s.push_str(HEADER);
        s.push('\n');
        for (key, r) in &self.records {
            let m = &r.meta;
            let md5 = m.md5.map(|d| crate::checksum::hex(&d)).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "{}\t{}\t{}\t{}\t{:o}\t{}\t{}\t{}\t{}",
                escape(&r.etag),
                r.size,
                r.last_modified_ns,
                float_seconds(m.mtime),
                m.mode,
                m.uid,
                m.gid,
                md5,
                escape(key)
            );
        }
        s.into_bytes()
    }

    /// Parses [`Manifest::encode`]'s output; `Err((line, why))` on anything unexpected
    /// (the caller then starts from an empty manifest: it is only a cache).
    pub fn decode(bytes: &[u8]) -> Result<Manifest, (usize, &'static str)> {
        let text = std::str::from_utf8(bytes).map_err(|_| (0, "not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err((1, "unknown header"));
        }
        let mut m = Manifest::default();
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            let f: Vec<&str> = line.split('\t').collect();
            let [etag, size, lm, mtime, mode, uid, gid, md5, key] = f[..] else {
                return Err((n, "wrong number of fields"));
            };
            let bad = |why| move |_| (n, why);
            let md5 = match md5 {
                "-" => None,
                h => Some(u128::from_str_radix(h, 16).map_err(bad("bad md5"))?.to_be_bytes()),
            };
            let meta = ObjectMeta {
                mode: u32::from_str_radix(mode, 8).map_err(bad("bad mode"))?,
                uid: uid.parse().map_err(bad("bad uid"))?,
                gid: gid.parse().map_err(bad("bad gid"))?,
                mtime: parse_float_seconds(mtime).ok_or((n, "bad mtime"))?,
                atime: None,
                btime: None,
                md5,
            };
            let record = Record {
                size: size.parse().map_err(bad("bad size"))?,
                etag: unescape(etag).ok_or((n, "bad etag"))?,
                last_modified_ns: lm.parse().map_err(bad("bad last-modified"))?,
                meta,
            };
            m.records.insert(unescape(key).ok_or((n, "bad key"))?, record);
        }
        Ok(m)
    }
}

/// Percent-escapes `%` and control characters so a key is one tab-free line.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Time;

    fn meta(mode: u32) -> ObjectMeta {
        ObjectMeta {
            mode,
            uid: 1,
            gid: 2,
            mtime: Time { sec: 1_700_000_000, nsec: 5 },
            atime: None,
            btime: None,
            md5: Some([7; 16]),
        }
    }

    fn listed(key: &str, etag: &str, lm: i128) -> Listed {
        Listed { key: key.into(), size: 3, etag: etag.into(), last_modified_ns: lm }
    }

    #[test]
    fn trusted_only_while_list_shows_the_same_object() {
        let mut m = Manifest::default();
        m.note_write("p/a", Written { size: 3, etag: "e1".into(), meta: meta(0o100644) });
        m.note_write("p/b", Written { size: 3, etag: "e1".into(), meta: meta(0o100644) });
        // b was replaced by someone else before the LIST: another ETag, never bound.
        m.bind_writes(&[listed("p/a", "e1", 10), listed("p/b", "e2", 11)]);
        assert_eq!(m.trusted(&listed("p/a", "e1", 10)), Some(&meta(0o100644)));
        assert_eq!(m.trusted(&listed("p/b", "e2", 11)), None);
        // Rewritten later with the same bytes (metadata-only change): new Last-Modified.
        assert_eq!(m.trusted(&listed("p/a", "e1", 12)), None);
        // Other size or ETag: not trusted either.
        assert_eq!(m.trusted(&Listed { size: 4, ..listed("p/a", "e1", 10) }), None);
        assert_eq!(m.trusted(&listed("p/a", "e9", 10)), None);
        // Gone from LIST: forgotten.
        m.bind_writes(&[]);
        assert!(m.is_empty());
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut m = Manifest::default();
        m.record_head(&listed("p/we%ird\tkey\n", "\"x\"", -5), meta(0o40755));
        m.record_head(
            &listed("p/‛FF", "abc-2", 1_700_000_000_123_000_000),
            ObjectMeta { md5: None, ..meta(0o120777) },
        );
        assert!(m.is_dirty());
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back.records, m.records);
        assert_eq!(Manifest::decode(b"nope\n"), Err((1, "unknown header")));
        assert_eq!(
            Manifest::decode(format!("{HEADER}\na\tb\n").as_bytes()),
            Err((2, "wrong number of fields"))
        );
    }
}
