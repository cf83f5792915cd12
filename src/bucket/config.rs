//! Where the bucket is and how to reach it: `s3://BUCKET[/PREFIX]` and the standard AWS
//! environment variables. Pure: the environment is passed in as a lookup function, so tests
//! never depend on (or change) the process environment.
//!
//! | variable | use |
//! |---|---|
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` | required, both |
//! | `AWS_SESSION_TOKEN` | optional (temporary credentials) |
//! | `AWS_REGION` (else `AWS_DEFAULT_REGION`) | signing region; default `us-east-1` |
//! | `AWS_ENDPOINT_URL` | an S3-compatible endpoint (`https://…`), or several comma-separated (failover, in order); default AWS |
//! | `AWS_ALLOW_HTTP` | `true` to allow an `http://` endpoint (a local store) |
//!
//! Profiles, instance metadata and web identity are deliberately not consulted: the
//! credentials replicad uses are exactly the ones its environment names, and a missing key
//! is a one-line configuration error rather than a slow probe of a metadata service.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::mapping::Prefix;

/// A configuration error, reported before anything is read or written (exit 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not `s3://BUCKET[/PREFIX]`.
    #[error("{url}: not a bucket URL: {why}")]
    Url {
        /// The argument as given (lossy only for this message).
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A required variable is unset or empty.
    #[error("{0} is not set (the bucket's credentials come from the standard AWS variables)")]
    Missing(&'static str),
    /// A variable has a value replicad cannot use.
    #[error("{name}={value:?}: {why}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        why: &'static str,
    },
}

/// `s3://BUCKET[/PREFIX]`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketUrl {
    /// The bucket name.
    pub bucket: String,
    /// The key prefix the mirror lives under (normalised).
    pub prefix: Prefix,
}

impl BucketUrl {
    /// `Ok(None)` if `arg` is not an `s3://` URL at all (a local REPLICA path).
    pub fn parse(arg: &OsStr) -> Result<Option<BucketUrl>, ConfigError> {
        let Some(rest) = arg.as_bytes().strip_prefix(b"s3://") else {
            return Ok(None);
        };
        let bad = |why| ConfigError::Url { url: arg.to_string_lossy().into_owned(), why };
        let rest = std::str::from_utf8(rest).map_err(|_| bad("S3 keys must be UTF-8"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is empty"));
        }
        let bucket_ok = bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !bucket_ok || bucket.len() > 63 {
            return Err(bad("a bucket name is 1-63 of a-z, 0-9, '.', '-', '_'"));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            for segment in prefix.split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(bad("the prefix has an empty, '.' or '..' segment"));
                }
            }
            if prefix.trim() != prefix || prefix.chars().any(char::is_control) {
                return Err(bad(
                    "the prefix starts or ends with white space, or has a control character",
                ));
            }
        }
        Ok(Some(BucketUrl { bucket: bucket.to_owned(), prefix: Prefix::new(prefix) }))
    }
}

/// How to reach and sign for the store.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `AWS_ENDPOINT_URL`, without a trailing `/` (several: comma-separated, tried in
    /// order); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The signing region.
    pub region: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    /// Never prints the secret or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes")
}

impl S3Settings {
    /// The endpoints in the order they are tried (`None`: AWS's default).
    pub fn endpoints(&self) -> Vec<Option<String>> {
        match &self.endpoint {
            None => vec![None],
            Some(list) => list.split(',').map(|u| Some(u.to_owned())).collect(),
        }
    }

    /// Reads the standard variables through `env` (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<S3Settings, ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        let access_key_id =
            get("AWS_ACCESS_KEY_ID").ok_or(ConfigError::Missing("AWS_ACCESS_KEY_ID"))?;
        let secret_access_key =
            get("AWS_SECRET_ACCESS_KEY").ok_or(ConfigError::Missing("AWS_SECRET_ACCESS_KEY"))?;
        let region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"));
        let allow_http = get("AWS_ALLOW_HTTP").is_some_and(|v| truthy(&v));
        let endpoint = match get("AWS_ENDPOINT_URL") {
            None => None,
            Some(list) => {
                let mut urls = Vec::new();
                // Several endpoints, comma-separated: tried in order (see `Client::failover`).
                for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                    let invalid = |why| ConfigError::Invalid {
                        name: "AWS_ENDPOINT_URL",
                        value: url.to_owned(),
                        why,
                    };
                    if url.starts_with("http://") {
                        if !allow_http {
                            return Err(invalid("plain http needs AWS_ALLOW_HTTP=true"));
                        }
                    } else if !url.starts_with("https://") {
                        return Err(invalid("the endpoint must start with https:// (or http://)"));
                    }
                    urls.push(url.trim_end_matches('/').to_owned());
                }
                (!urls.is_empty()).then(|| urls.join(","))
            }
        };
        Ok(S3Settings {
            endpoint,
            region: region.unwrap_or_else(|| "us-east-1".to_owned()),
            access_key_id,
            secret_access_key,
            session_token: get("AWS_SESSION_TOKEN"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn url(s: &str) -> Result<Option<BucketUrl>, ConfigError> {
        BucketUrl::parse(OsStr::new(s))
    }

    #[test]
    fn urls() {
        assert_eq!(url("/srv/replica").unwrap(), None);
        let u = url("s3://photos/2026/raw/").unwrap().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("photos", "2026/raw/"));
        assert_eq!(url("s3://photos").unwrap().unwrap().prefix.as_str(), "");
        for bad in ["s3://", "s3:///x", "s3://Caps", "s3://b/a//c", "s3://b/../x", "s3://b/ x"] {
            assert!(matches!(url(bad), Err(ConfigError::Url { .. })), "{bad}");
        }
        assert!(BucketUrl::parse(OsStr::from_bytes(b"s3://b/\xff")).is_err());
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn environment() {
        let keys = [("AWS_ACCESS_KEY_ID", "GK1"), ("AWS_SECRET_ACCESS_KEY", "s")];
        let s = S3Settings::from_env(env(&keys)).unwrap();
        assert_eq!((s.region.as_str(), s.endpoint.as_deref()), ("us-east-1", None));
        assert!(!format!("{s:?}").contains("\"s\""), "Debug must not print the secret");

        let local = [
            keys[0],
            keys[1],
            ("AWS_REGION", "garage"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:3900/"),
        ];
        assert!(matches!(S3Settings::from_env(env(&local)), Err(ConfigError::Invalid { .. })));
        let allowed = [local[0], local[1], local[2], local[3], ("AWS_ALLOW_HTTP", "true")];
        let s = S3Settings::from_env(env(&allowed)).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(s.region, "garage");

        assert_eq!(
            S3Settings::from_env(env(&keys[..1])),
            Err(ConfigError::Missing("AWS_SECRET_ACCESS_KEY"))
        );
        let ftp = [keys[0], keys[1], ("AWS_ENDPOINT_URL", "ftp://x")];
        assert!(matches!(S3Settings::from_env(env(&ftp)), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn several_endpoints_are_comma_separated_and_each_checked() {
        let keys = [("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")];
        let two = [keys[0], keys[1], ("AWS_ENDPOINT_URL", "https://a/, https://b")];
        let s = S3Settings::from_env(env(&two)).unwrap();
        assert_eq!(s.endpoints(), vec![Some("https://a".into()), Some("https://b".into())]);
        let one_bad = [keys[0], keys[1], ("AWS_ENDPOINT_URL", "https://a,http://b")];
        assert!(matches!(S3Settings::from_env(env(&one_bad)), Err(ConfigError::Invalid { .. })));
        let none = S3Settings::from_env(env(&keys)).unwrap();
        assert_eq!(none.endpoints(), vec![None]);
    }
}
