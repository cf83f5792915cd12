//! `--checksum` against a bucket: which MD5 an object claims. Pure.
//!
//! A single-part PUT's ETag is the hex MD5 of the content (AWS without SSE-KMS/SSE-C,
//! Garage, MinIO). A multipart upload's ETag is `md5(part md5s)-N`, which says nothing
//! about the content as a whole: for those, replicad (like rclone) writes the content's
//! MD5 as base64 in the `md5chksum` metadata when the upload starts. Anything else (an
//! object written by a tool that set no `md5chksum`, an SSE ETag) has no usable MD5 and
//! counts as different under `--checksum`.

use crate::checksum::Md5Sum;

use super::meta::ObjectMeta;

/// The ETag as an MD5, if it is one (32 hex digits, no `-N` part count).
pub fn etag_md5(etag: &str) -> Option<Md5Sum> {
    let etag = etag.trim_matches('"');
    if etag.len() != 32 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(etag, 16).ok().map(u128::to_be_bytes)
}

/// The MD5 the object's content has, from the ETag or else from `md5chksum`.
pub fn content_md5(etag: &str, meta: Option<&ObjectMeta>) -> Option<Md5Sum> {
    etag_md5(etag).or_else(|| meta.and_then(|m| m.md5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Time;

    #[test]
    fn which_md5() {
        let empty = "d41d8cd98f00b204e9800998ecf8427e";
        assert_eq!(
            etag_md5(&format!("\"{empty}\"")).map(|d| crate::checksum::hex(&d)),
            Some(empty.into())
        );
        assert_eq!(etag_md5("d41d8cd98f00b204e9800998ecf8427e-3"), None);
        let meta = ObjectMeta {
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime: Time::default(),
            atime: None,
            btime: None,
            md5: Some([9; 16]),
        };
        assert_eq!(content_md5("abc-2", Some(&meta)), Some([9; 16]));
        assert_eq!(content_md5("abc-2", None), None);
    }
}
