//! # s3
//!
//! A plugfs plugin that mounts an S3 bucket, or a prefix of one, as a writable filesystem:
//! directories from key prefixes and `dir/` markers, files written through a local
//! write-back cache and uploaded on close and fsync (multipart, parts in parallel), ranged
//! reads with growing read-ahead, s3fs-compatible metadata. `docs/s3.md` describes the
//! semantics operation by operation.
//!
//! This file is the plugin glue (description, config, opening); [`S3Fs`] in `fs.rs` is the
//! filesystem, over the `Store` trait (`store.rs`) that `client.rs` implements for
//! S3 over HTTP, and the local cache (`cache.rs`).

#![warn(missing_docs)]

mod cache;
mod client;
mod config;
mod fs;
mod store;

use std::sync::Arc;

use plugfs_plugin_api::{ConfigTable, MountOptions, OpenError, Plugin, PluginInfo};

pub use fs::{CAPABILITIES, S3Fs};

/// The `s3` plugin.
pub struct S3Plugin;

impl Plugin for S3Plugin {
    type Fs = S3Fs;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "s3",
            version: env!("CARGO_PKG_VERSION"),
            description: "an S3-compatible bucket (or a prefix of one) as a writable filesystem",
            config_help: concat!(
                "bucket = \"my-bucket\"  # required\n",
                "prefix = \"\"  # mount only the keys below this prefix (a trailing / is added)\n",
                "endpoint = \"https://s3.us-east-1.amazonaws.com\"  # default: AWS in `region`\n",
                "region = \"us-east-1\"  # default: AWS_REGION, AWS_DEFAULT_REGION, or us-east-1\n",
                "path_style = false  # endpoint/bucket/key instead of bucket.endpoint/key (most local servers)\n",
                "allow_http = false  # allow a plain http:// endpoint (local servers only)\n",
                "access_key_id = \"...\"  # with secret_access_key; default: AWS environment variables, then profile\n",
                "secret_access_key = \"...\"  # never logged nor shown in an error\n",
                "cache_dir = \"/var/cache/plugfs-s3\"  # local copies of files being written; default: a temporary directory\n",
                "cache_size = \"10GiB\"  # most bytes the local copies may take\n",
                "metadata_ttl = 5  # seconds names and attributes are cached (also the kernel's TTL)\n",
                "part_size = \"8MiB\"  # multipart upload part size (5 MiB to 5 GiB)\n",
                "concurrency = 8  # parts uploaded or fetched in parallel per file\n",
                "connect_timeout = 10  # seconds\n",
                "request_timeout = 60  # seconds, per request\n",
                "retries = 4  # retries of a transient failure, with exponential backoff\n",
                "file_mode = 0o644  # mode of files without s3fs metadata (dir_mode = 0o755 for directories)\n",
                "uid = 0  # owner of objects without s3fs metadata (gid likewise); default: the host's\n",
                "conditional_create = true  # create files with If-None-Match: * (EEXIST on a concurrent creator)\n",
                "multipart_copy_threshold = \"5GiB\"  # renames of larger objects copy in parts (UploadPartCopy)\n",
                "max_nodes = 100000  # names kept in memory that the kernel no longer holds (least recently used go first)",
            ),
            capabilities: CAPABILITIES,
        }
    }

    fn open(config: &ConfigTable, options: &MountOptions) -> Result<S3Fs, OpenError> {
        let raw: config::Raw = config.parse()?;
        let s = config::Settings::check(raw)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("plugfs-s3")
            .enable_all()
            .build()
            .map_err(|e| OpenError::other(format!("cannot start the s3 plugin's runtime: {e}")))?;
        let credentials = match (&s.access_key_id, &s.secret_access_key) {
            (Some(id), Some(secret)) => {
                client::Credentials::Static { access_key_id: id.clone(), secret_access_key: secret.0.clone() }
            }
            _ => client::Credentials::Default,
        };
        let client = client::S3Client::new(
            client::ClientConfig {
                endpoint: s.endpoint.clone(),
                region: s.region.clone(),
                bucket: s.bucket.clone(),
                path_style: s.path_style,
                credentials,
                connect_timeout: s.connect_timeout,
                request_timeout: s.request_timeout,
                retries: s.retries,
                part_size: s.part_size,
                concurrency: s.concurrency,
                copy_threshold: s.multipart_copy_threshold,
            },
            Arc::new(rt),
        )
        .map_err(|e| OpenError::config("endpoint", e))?;
        // One clear error at mount for an unreachable endpoint, a missing bucket or
        // rejected credentials, rather than EIO on the first call.
        store::Store::check(&client, &s.prefix)
            .map_err(|e| OpenError::other(format!("bucket `{}` at {}: {e}", s.bucket, s.endpoint)))?;
        let id = cache_id(&s.endpoint, &s.bucket, &s.prefix);
        let cache = cache::Cache::open(s.cache_dir.as_deref(), &id, s.cache_size)
            .map_err(|e| OpenError::config("cache_dir", e))?;
        Ok(S3Fs::new(Arc::new(client), s, cache, options.read_only))
    }
}

/// A file-name-safe id for the cache directory of one endpoint, bucket and prefix.
fn cache_id(endpoint: &str, bucket: &str, prefix: &str) -> String {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in endpoint.bytes().chain([0]).chain(prefix.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{bucket}-{h:016x}")
}

plugfs_plugin_api::export_plugin!(S3Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens with `toml`, which must fail before any request, and returns (key, message).
    fn refused(toml: &str) -> (Option<String>, String) {
        match S3Plugin::open(&ConfigTable::from_toml(toml), &MountOptions::default()) {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => (e.key, e.message),
        }
    }

    const BASE: &str = "bucket = \"b-1\"\nendpoint = \"http://127.0.0.1:9\"\nallow_http = true\n";

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            ("bucket = \"B!\"", "bucket"),
            ("bucket = \"ok-bucket\"\nendpoint = \"http://127.0.0.1:9\"", "endpoint"),
            ("bucket = \"ok-bucket\"\nendpoint = \"ftp://x\"", "endpoint"),
            (&format!("{BASE}part_size = \"1MiB\""), "part_size"),
            (&format!("{BASE}concurrency = 0"), "concurrency"),
            (&format!("{BASE}cache_size = 10"), "cache_size"),
            (&format!("{BASE}metadata_ttl = -1"), "metadata_ttl"),
            (&format!("{BASE}request_timeout = 0"), "request_timeout"),
            (&format!("{BASE}file_mode = 0o17777"), "file_mode"),
            (&format!("{BASE}prefix = \"a/../b\""), "prefix"),
            (&format!("{BASE}access_key_id = \"id\""), "secret_access_key"),
        ];
        for (toml, key) in cases {
            let (k, msg) = refused(toml);
            assert_eq!(k.as_deref(), Some(key), "{toml}: {msg}");
        }
        let (k, msg) = refused(&format!("{BASE}cache_sise = 1"));
        assert!(k.as_deref().is_some_and(|k| k.contains("cache_sise")) || msg.contains("cache_sise"), "{k:?} {msg}");
    }

    #[test]
    fn the_secret_never_appears_in_an_error_or_debug_output() {
        for toml in [
            format!("{BASE}secret_access_key = 12345678"),
            format!("{BASE}secret_access_key = \"12345678\""),
            format!("{BASE}secret_access_key = \"12345678\"\naccess_key_id = \"id\"\nconcurrency = 0"),
        ] {
            let (k, msg) = refused(&toml);
            assert!(!msg.contains("12345678") && !k.unwrap_or_default().contains("12345678"), "{msg}");
        }
        let raw: config::Raw =
            ConfigTable::from_toml(format!("{BASE}secret_access_key = \"12345678\"\naccess_key_id = \"id\""))
                .parse()
                .unwrap();
        assert!(!format!("{raw:?}").contains("12345678"));
        let settings = config::Settings::check(raw).unwrap();
        assert!(!format!("{settings:?}").contains("12345678"));
    }

    #[test]
    fn an_unreachable_endpoint_is_one_error_at_open() {
        let toml =
            format!("{BASE}connect_timeout = 1\nretries = 0\naccess_key_id = \"id\"\nsecret_access_key = \"s3cr3t\"");
        let (k, msg) = refused(&toml);
        assert_eq!(k, None);
        assert!(msg.contains("cannot reach http://127.0.0.1:9") && !msg.contains("s3cr3t"), "{msg}");
    }
}
