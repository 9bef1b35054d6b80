//! The object store as the filesystem sees it: a small synchronous trait ([`Store`]) over
//! the few S3 operations the plugin needs, so the client underneath can be replaced, and
//! the types it speaks in. `client.rs` implements it for S3 over HTTP.

use std::collections::BTreeMap;
use std::fs::File;
use std::time::SystemTime;

use bytes::Bytes;

/// What the plugin keeps in an object's user metadata, under the header names s3fs uses
/// (`x-amz-meta-mode`, `-uid`, `-gid`, `-mtime`), so a bucket written by either shows the
/// same owners, modes and times in the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileMeta {
    /// `st_mode`, file type bits included (s3fs writes them: 33188 is a 0644 file).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Seconds since the epoch (s3fs writes whole seconds).
    pub mtime: Option<i64>,
    /// Last access, seconds (s3fs's `x-amz-meta-atime`).
    pub atime: Option<i64>,
}

impl FileMeta {
    /// The `x-amz-meta-*` headers (names without the prefix) for these values.
    pub fn to_headers(self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(m) = self.mode {
            h.push(("mode", m.to_string()));
        }
        if let Some(u) = self.uid {
            h.push(("uid", u.to_string()));
        }
        if let Some(g) = self.gid {
            h.push(("gid", g.to_string()));
        }
        if let Some(t) = self.mtime {
            h.push(("mtime", t.to_string()));
        }
        if let Some(t) = self.atime {
            h.push(("atime", t.to_string()));
        }
        h
    }

    /// Reads the values from user metadata (names without the prefix, lowercase). Values
    /// that do not parse are ignored, as if absent: a bucket may hold anything.
    pub fn from_user_metadata(meta: &BTreeMap<String, String>) -> FileMeta {
        let num = |k: &str| meta.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        // s3fs writes whole seconds; other tools sometimes write fractions.
        let secs = |k: &str| {
            meta.get(k)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .and_then(|f| if f.is_finite() && f.abs() < 1e15 { Some(f.floor() as i64) } else { None })
        };
        FileMeta {
            mode: num("mode").and_then(|m| u32::try_from(m).ok()),
            uid: num("uid").and_then(|m| u32::try_from(m).ok()),
            gid: num("gid").and_then(|m| u32::try_from(m).ok()),
            mtime: secs("mtime"),
            atime: secs("atime"),
        }
    }
}

/// One object, from a HEAD (with its user metadata) or a listing (without).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full key.
    pub key: String,
    pub size: u64,
    /// `Last-Modified`.
    pub modified: Option<SystemTime>,
    pub etag: Option<String>,
    /// `None` when the metadata was not read (a listing does not carry it).
    pub meta: Option<FileMeta>,
}

/// One page of a delimited listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Common prefixes (full keys, ending in the delimiter).
    pub prefixes: Vec<String>,
    pub objects: Vec<ObjectInfo>,
    /// Where the next page starts, if there is one.
    pub next: Option<String>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    /// A conditional request's condition did not hold (If-None-Match on an existing key).
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("bucket `{0}` does not exist")]
    NoSuchBucket(String),
    #[error("access denied ({0}): check the credentials and the bucket policy")]
    AccessDenied(String),
    /// Any other answer of the server, with its status and S3 error code.
    #[error("server answered {status}: {code} {message}")]
    Server { status: u16, code: String, message: String },
    /// The request did not get an answer (connection refused, reset, timed out).
    #[error("cannot reach {endpoint}: {cause}")]
    Unreachable { endpoint: String, cause: String },
    /// The server answered with something the client cannot read.
    #[error("bad answer from the server: {0}")]
    BadResponse(String),
    #[error("local cache: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether retrying the same request may succeed: no answer, throttling, server errors.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } => true,
            StoreError::Server { status, code, .. } => {
                *status >= 500 || *status == 429 || code == "SlowDown" || code == "RequestTimeout"
            }
            _ => false,
        }
    }
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// A streamed body: the next chunk, an error, or `None` at its end. Blocks until a chunk
/// arrives (bounded by the request timeout).
pub trait ChunkStream: Send {
    fn next_chunk(&mut self) -> Option<StoreResult<Bytes>>;
}

/// The operations the filesystem needs from an object store. Synchronous: an
/// implementation runs its own runtime and blocks on it, and may be called from many
/// threads at once. Keys are full keys (the mount's prefix included); the filesystem never
/// sees a URL or a credential.
pub trait Store: Send + Sync + 'static {
    /// Checks at mount time that the bucket exists and answers with these credentials.
    fn check(&self, prefix: &str) -> StoreResult<()>;
    /// The object's size, times and metadata, or `None` if there is no such key.
    fn head(&self, key: &str) -> StoreResult<Option<ObjectInfo>>;
    /// Bytes `offset..offset + len` of the object (fewer at its end). Large ranges are
    /// fetched as parallel parts.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Bytes>;
    /// Bytes `offset..offset + len` as one streamed GET, read chunk by chunk: for
    /// sequential readers, one request for the rest of the object.
    fn get_stream(&self, key: &str, offset: u64, len: u64) -> StoreResult<Box<dyn ChunkStream>>;
    /// The whole object into `file` (from offset 0); returns its size.
    fn download(&self, key: &str, file: &File) -> StoreResult<u64>;
    /// Stores a small object in one request. With `if_absent`, fails with
    /// [`StoreError::PreconditionFailed`] if the key exists (conditional PUT).
    /// Returns the new object's ETag when the server gave one.
    fn put(&self, key: &str, body: Bytes, meta: &FileMeta, if_absent: bool) -> StoreResult<Option<String>>;
    /// Stores the first `size` bytes of `file`: one PUT up to the part size, a multipart
    /// upload with parts in parallel beyond it. Returns when the object is stored.
    /// Returns the new object's ETag when the server gave one.
    fn upload(&self, key: &str, file: &File, size: u64, meta: &FileMeta) -> StoreResult<Option<String>>;
    /// Like [`Store::upload`], for a file whose first `unchanged` bytes are those of the
    /// object now stored under `key` with ETag `etag`: a multipart upload whose parts that
    /// lie wholly in that range are copied server-side from the object (UploadPartCopy,
    /// on the condition that it still has that ETag) and only the others are sent. Fails
    /// with [`StoreError::PreconditionFailed`] if the object changed; the caller then
    /// uploads the whole file. The default sends the whole file.
    fn upload_over(
        &self,
        key: &str,
        file: &File,
        size: u64,
        meta: &FileMeta,
        unchanged: u64,
        etag: &str,
    ) -> StoreResult<Option<String>> {
        let _ = (unchanged, etag);
        self.upload(key, file, size, meta)
    }
    /// Server-side copy. `meta` replaces the metadata (`None`: copied as it is). `size` is
    /// the source's size, which decides between one CopyObject and a multipart copy.
    fn copy(&self, from: &str, to: &str, size: u64, meta: Option<&FileMeta>) -> StoreResult<()>;
    /// Deletes a key; deleting a missing key is not an error (S3 semantics).
    fn delete(&self, key: &str) -> StoreResult<()>;
    /// One page of the keys under `prefix`: grouped at the next `/` when `delimited`,
    /// every key below otherwise. `max_keys` bounds the page (the server may give fewer).
    fn list(&self, prefix: &str, delimited: bool, token: Option<&str>, max_keys: u32) -> StoreResult<ListPage>;
}
