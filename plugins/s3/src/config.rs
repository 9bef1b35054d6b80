//! The mount's `[mount.config]` table: parsed with serde (unknown keys refused by
//! `ConfigTable::parse`), then checked, every error naming its key. The secret key never
//! appears in a message or a log line.

use std::path::PathBuf;
use std::time::Duration;

use plugfs_plugin_api::OpenError;
use serde::{Deserialize, Deserializer};

/// A credential: shown as `<redacted>` by `Debug`, and a value of the wrong type is
/// refused without echoing it.
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'v> serde::de::Visitor<'v> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            // Every other type: a fixed message, never the value.
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("must be a string"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("must be a string"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("must be a string"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("must be a string"))
            }
            fn visit_map<A: serde::de::MapAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                Err(serde::de::Error::custom("must be a string"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                Err(serde::de::Error::custom("must be a string"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte count: an integer, or a string with a binary suffix (`"8MiB"`, `"10G"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected bytes: 8388608 or \"8MiB\""))? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => parse_size(&s).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!("`{s}` is not a size (bytes, or a number with K, M, G or T)"))
            }),
        }
    }
}

/// Parses `123`, `8M`, `8MiB`, `8MB` (binary multiples all), `1.5G`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().trim_end_matches(['B', 'b']).trim_end_matches('i') {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return None,
    };
    let v = num * mult as f64;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// The config table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub allow_http: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub cache_dir: Option<PathBuf>,
    pub cache_size: Option<Size>,
    /// Seconds (fractions allowed).
    pub metadata_ttl: Option<f64>,
    pub part_size: Option<Size>,
    pub concurrency: Option<usize>,
    /// Seconds.
    pub connect_timeout: Option<f64>,
    /// Seconds.
    pub request_timeout: Option<f64>,
    pub retries: Option<u32>,
    /// Defaults for objects without s3fs metadata.
    pub file_mode: Option<u32>,
    pub dir_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Create files with a conditional PUT (If-None-Match: *).
    pub conditional_create: Option<bool>,
    /// Copies (renames) of larger objects are multipart.
    pub multipart_copy_threshold: Option<Size>,
    /// Nodes the kernel does not reference that the node table keeps (beyond those it does).
    pub max_nodes: Option<usize>,
}

/// The checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
    pub endpoint: String,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub cache_dir: Option<PathBuf>,
    pub cache_size: u64,
    pub metadata_ttl: Duration,
    pub part_size: u64,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retries: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub conditional_create: bool,
    pub multipart_copy_threshold: u64,
    pub max_nodes: usize,
}

/// S3's smallest part (all but the last).
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART: u64 = 5 << 30;

fn seconds(key: &str, v: Option<f64>, default: f64, allow_zero: bool) -> Result<Duration, OpenError> {
    let v = v.unwrap_or(default);
    if !v.is_finite() || v < 0.0 || (v == 0.0 && !allow_zero) || v > 86_400.0 * 365.0 {
        return Err(OpenError::config(key, format!("{v} is not a usable number of seconds")));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Settings {
    pub fn check(raw: Raw) -> Result<Settings, OpenError> {
        // Bucket names: 3 to 63 of a-z, 0-9, '.', '-' (S3's rules; other servers accept the
        // same set). Checked here so the name can go into a URL as it is.
        let b = &raw.bucket;
        if b.len() < 3
            || b.len() > 63
            || !b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        {
            return Err(OpenError::config("bucket", format!("`{b}` is not a bucket name (3-63 of a-z 0-9 . -)")));
        }
        let mut prefix = raw.prefix.trim_start_matches('/').to_string();
        if prefix.split('/').filter(|p| !p.is_empty()).any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(OpenError::config(
                "prefix",
                "must be a key prefix like `data/2024/` (no empty, `.` or `..` parts)",
            ));
        }
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let region = raw
            .region
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = raw.endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        match endpoint.split_once("://") {
            Some(("https", rest)) if !rest.is_empty() => {}
            Some(("http", rest)) if !rest.is_empty() => {
                if !raw.allow_http {
                    return Err(OpenError::config(
                        "endpoint",
                        format!("`{endpoint}` is plain HTTP: set allow_http = true to allow it (local servers only)"),
                    ));
                }
            }
            _ => return Err(OpenError::config("endpoint", format!("`{endpoint}` is not an http(s):// URL"))),
        }
        match (&raw.access_key_id, &raw.secret_access_key) {
            (Some(_), None) => {
                return Err(OpenError::config("secret_access_key", "access_key_id is set, so this must be too"));
            }
            (None, Some(_)) => {
                return Err(OpenError::config("access_key_id", "secret_access_key is set, so this must be too"));
            }
            _ => {}
        }
        let part_size = raw.part_size.map(|s| s.0).unwrap_or(8 << 20);
        if !(MIN_PART..=MAX_PART).contains(&part_size) {
            return Err(OpenError::config("part_size", format!("{part_size} is outside S3's 5 MiB to 5 GiB")));
        }
        let concurrency = raw.concurrency.unwrap_or(8);
        if !(1..=64).contains(&concurrency) {
            return Err(OpenError::config("concurrency", format!("{concurrency} is outside 1 to 64")));
        }
        let cache_size = raw.cache_size.map(|s| s.0).unwrap_or(10 << 30);
        if cache_size < part_size {
            return Err(OpenError::config("cache_size", format!("{cache_size} is smaller than part_size")));
        }
        let mode = |key: &str, v: Option<u32>, d: u32| -> Result<u32, OpenError> {
            let v = v.unwrap_or(d);
            if v > 0o7777 {
                return Err(OpenError::config(key, format!("{v:o} is not a permission mode (at most 0o7777)")));
            }
            Ok(v)
        };
        // S3 refuses a single CopyObject over 5 GiB; some servers refuse less.
        let multipart_copy_threshold = raw.multipart_copy_threshold.map(|s| s.0).unwrap_or(MAX_PART);
        if !(MIN_PART..=MAX_PART).contains(&multipart_copy_threshold) {
            return Err(OpenError::config(
                "multipart_copy_threshold",
                format!("{multipart_copy_threshold} is outside 5 MiB to 5 GiB"),
            ));
        }
        let retries = raw.retries.unwrap_or(4);
        if retries > 20 {
            return Err(OpenError::config("retries", format!("{retries} is more than 20")));
        }
        let max_nodes = raw.max_nodes.unwrap_or(100_000);
        if max_nodes < 16 {
            return Err(OpenError::config("max_nodes", format!("{max_nodes} is less than 16")));
        }
        Ok(Settings {
            bucket: raw.bucket,
            prefix,
            endpoint,
            region,
            path_style: raw.path_style,
            access_key_id: raw.access_key_id,
            secret_access_key: raw.secret_access_key,
            cache_dir: raw.cache_dir,
            cache_size,
            metadata_ttl: seconds("metadata_ttl", raw.metadata_ttl, 5.0, true)?,
            part_size,
            concurrency,
            connect_timeout: seconds("connect_timeout", raw.connect_timeout, 10.0, false)?,
            request_timeout: seconds("request_timeout", raw.request_timeout, 60.0, false)?,
            retries,
            file_mode: mode("file_mode", raw.file_mode, 0o644)?,
            dir_mode: mode("dir_mode", raw.dir_mode, 0o755)?,
            uid: raw.uid.unwrap_or_else(|| rustix::process::getuid().as_raw()),
            gid: raw.gid.unwrap_or_else(|| rustix::process::getgid().as_raw()),
            conditional_create: raw.conditional_create.unwrap_or(true),
            multipart_copy_threshold,
            max_nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_integers_and_binary_suffixes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("8M"), Some(8 << 20));
        assert_eq!(parse_size("8MiB"), Some(8 << 20));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5X"), None);
    }
}
