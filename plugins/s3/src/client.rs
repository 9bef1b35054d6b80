//! [`Store`] for S3 and servers that speak its protocol, over HTTP: reqwest (rustls) sends,
//! reqsign signs (SigV4) and loads credentials, quick-xml reads the XML bodies. Each call
//! blocks on the plugin's own tokio runtime; nothing async leaves this file.
//!
//! Transient failures (no answer, 5xx, throttling) are retried with exponential backoff up
//! to `retries` times; everything else is returned at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::store::{ChunkStream, FileMeta, ListPage, ObjectInfo, Store, StoreError, StoreResult};

/// S3 allows at most 10,000 parts per multipart upload.
const MAX_PARTS: u64 = 10_000;

/// Where credentials come from.
pub enum Credentials {
    /// From the mount's config.
    Static { access_key_id: String, secret_access_key: String },
    /// The standard AWS environment variables, then the profile files (reqsign's loader;
    /// the EC2 metadata service is not asked, so a laptop does not wait for it).
    Default,
}

/// How to reach the bucket.
pub struct ClientConfig {
    /// `http(s)://host[:port]`, without the bucket.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key`.
    pub path_style: bool,
    pub credentials: Credentials,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retries: u32,
    pub part_size: u64,
    pub concurrency: usize,
    /// Copies of objects larger than this are multipart (UploadPartCopy).
    pub copy_threshold: u64,
}

/// The S3 client.
pub struct S3Client {
    rt: Arc<tokio::runtime::Runtime>,
    http: reqwest::Client,
    signer: reqsign::AwsV4Signer,
    creds: CredSource,
    base: String,
    bucket: String,
    retries: u32,
    request_timeout: Duration,
    copy_threshold: u64,
    part_size: u64,
    concurrency: usize,
    /// For messages: the endpoint, never a credential.
    endpoint: String,
}

enum CredSource {
    Static(reqsign::AwsCredential),
    Loader(Box<reqsign::AwsDefaultLoader>),
}

/// Characters of a key that stay as they are in the URL path: RFC 3986 unreserved and `/`.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');
/// Query values encode `/` too (SigV4's canonical query string).
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn unreachable(endpoint: &str, e: &reqwest::Error) -> StoreError {
    // reqwest's error text names the URL; its source chain says why (refused, timed out).
    let mut cause = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause.push_str(": ");
        cause.push_str(&s.to_string());
        src = s.source();
    }
    StoreError::Unreachable { endpoint: endpoint.to_string(), cause }
}

/// A request to make: method, key, query (already encoded), headers and body. Kept whole
/// so a retry can rebuild and re-sign it.
struct Req<'a> {
    /// A streamed GET: bounded by the idle read timeout, not by a total.
    stream: bool,
    method: Method,
    key: &'a str,
    query: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl<'a> Req<'a> {
    fn new(method: Method, key: &'a str) -> Self {
        Req { stream: false, method, key, query: String::new(), headers: Vec::new(), body: Bytes::new() }
    }
    fn query(mut self, q: &[(&str, &str)]) -> Self {
        let mut pairs: Vec<String> = q
            .iter()
            .map(|(k, v)| {
                if v.is_empty() && !matches!(*k, "prefix") {
                    utf8_percent_encode(k, QUERY_SET).to_string()
                } else {
                    format!("{}={}", utf8_percent_encode(k, QUERY_SET), utf8_percent_encode(v, QUERY_SET))
                }
            })
            .collect();
        // SigV4 signs the query sorted; sending it sorted keeps both the same.
        pairs.sort();
        self.query = pairs.join("&");
        self
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn meta(mut self, meta: &FileMeta) -> Self {
        for (k, v) in meta.to_headers() {
            self.headers.push((format!("x-amz-meta-{k}"), v));
        }
        self
    }
    fn body(mut self, b: Bytes) -> Self {
        self.body = b;
        self
    }
}

/// An S3 error body.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ErrorBody {
    code: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<ListContents>,
    #[serde(default)]
    common_prefixes: Vec<ListPrefix>,
    #[serde(default)]
    next_continuation_token: Option<String>,
    #[serde(default)]
    is_truncated: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListContents {
    key: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    last_modified: Option<String>,
    #[serde(default, rename = "ETag")]
    etag: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPrefix {
    prefix: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateResult {
    upload_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CompleteResult {
    #[serde(default, rename = "ETag")]
    etag: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CopyPartResult {
    #[serde(rename = "ETag")]
    etag: String,
}

fn parse_xml<T: for<'de> Deserialize<'de>>(body: &[u8]) -> StoreResult<T> {
    let text = std::str::from_utf8(body).map_err(|_| StoreError::BadResponse("XML body is not UTF-8".into()))?;
    quick_xml::de::from_str(text).map_err(|e| StoreError::BadResponse(format!("unreadable XML: {e}")))
}

fn parse_http_date(v: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc2822(v).ok().map(SystemTime::from)
}

fn parse_iso_date(v: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(v).ok().map(SystemTime::from)
}

impl S3Client {
    /// Builds the client (no request is made: see [`Store::check`]).
    pub fn new(config: ClientConfig, rt: Arc<tokio::runtime::Runtime>) -> Result<S3Client, String> {
        // No client-wide total timeout: a streamed GET of a large object may rightly take
        // longer. Every other request gets `request_timeout` as its total (in `request`),
        // and every read, streams included, fails after `request_timeout` without a byte.
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let endpoint = config.endpoint.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&endpoint).map_err(|e| format!("`{endpoint}` is not a URL: {e}"))?;
        // A bucket cannot be a subdomain of an IP address or of `localhost`: such endpoints
        // are addressed path-style whatever the setting says (as the AWS SDKs do).
        let host_is_ip = url.host_str().is_some_and(|h| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok())
            || url.host_str() == Some("localhost");
        let base = if config.path_style || host_is_ip {
            format!("{endpoint}/{}", utf8_percent_encode(&config.bucket, KEY_SET))
        } else {
            let host = url.host_str().ok_or_else(|| format!("`{endpoint}` has no host"))?;
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}.{host}{port}", url.scheme(), config.bucket)
        };
        let creds = match config.credentials {
            Credentials::Static { access_key_id, secret_access_key } => CredSource::Static(reqsign::AwsCredential {
                access_key_id,
                secret_access_key,
                session_token: None,
                expires_in: None,
            }),
            Credentials::Default => {
                let cfg = reqsign::AwsConfig::default().from_profile().from_env();
                CredSource::Loader(Box::new(
                    reqsign::AwsDefaultLoader::new(http.clone(), cfg).with_disable_ec2_metadata(),
                ))
            }
        };
        Ok(S3Client {
            rt,
            http,
            signer: reqsign::AwsV4Signer::new("s3", &config.region),
            creds,
            base,
            bucket: config.bucket,
            retries: config.retries,
            request_timeout: config.request_timeout,
            copy_threshold: config.copy_threshold,
            part_size: config.part_size,
            concurrency: config.concurrency.max(1),
            endpoint,
        })
    }

    fn url(&self, key: &str, query: &str) -> String {
        let mut u = format!("{}/{}", self.base, utf8_percent_encode(key, KEY_SET));
        if !query.is_empty() {
            u.push('?');
            u.push_str(query);
        }
        u
    }

    async fn credential(&self) -> StoreResult<Option<reqsign::AwsCredential>> {
        match &self.creds {
            CredSource::Static(c) => Ok(Some(c.clone())),
            CredSource::Loader(l) => l
                .load()
                .await
                // The loader's errors name files and variables, never a secret.
                .map_err(|e| StoreError::AccessDenied(format!("cannot load AWS credentials: {e}"))),
        }
    }

    /// Sends once: builds, signs, and reads the whole answer.
    async fn send_once(&self, r: &Req<'_>) -> StoreResult<(StatusCode, reqwest::header::HeaderMap, Bytes)> {
        let resp = self.request(r).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| unreachable(&self.endpoint, &e))?;
        Ok((status, headers, body))
    }

    /// Builds, signs and sends a request; returns the answer with its body unread.
    async fn request(&self, r: &Req<'_>) -> StoreResult<reqwest::Response> {
        let url = reqwest::Url::parse(&self.url(r.key, &r.query))
            .map_err(|e| StoreError::BadResponse(format!("cannot build a URL for key {:?}: {e}", r.key)))?;
        let mut req = reqwest::Request::new(r.method.clone(), url);
        if !r.stream {
            *req.timeout_mut() = Some(self.request_timeout);
        }
        for (k, v) in &r.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| StoreError::BadResponse(format!("header {k}: {e}")))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| StoreError::BadResponse(format!("header {k}: {e}")))?;
            req.headers_mut().insert(name, value);
        }
        if !r.body.is_empty() || r.method == Method::PUT || r.method == Method::POST {
            req.headers_mut().insert(reqwest::header::CONTENT_LENGTH, r.body.len().into());
            *req.body_mut() = Some(reqwest::Body::from(r.body.clone()));
        }
        if let Some(cred) = self.credential().await? {
            self.signer.sign(&mut req, &cred).map_err(|e| StoreError::BadResponse(format!("cannot sign: {e}")))?;
        }
        self.http.execute(req).await.map_err(|e| unreachable(&self.endpoint, &e))
    }

    /// Sends with retries, and turns error answers into [`StoreError`]s.
    async fn send(&self, r: &Req<'_>) -> StoreResult<(reqwest::header::HeaderMap, Bytes)> {
        let mut attempt = 0;
        loop {
            let result = match self.send_once(r).await {
                Ok((status, headers, body)) if status.is_success() || status == StatusCode::PARTIAL_CONTENT => {
                    // CopyObject and CompleteMultipartUpload can fail with 200 and an
                    // error body.
                    if body.starts_with(b"<?xml") && body.windows(7).take(200).any(|w| w == b"<Error>") {
                        let e: ErrorBody = parse_xml(&body).unwrap_or_default();
                        Err(StoreError::Server { status: 500, code: e.code, message: e.message })
                    } else {
                        Ok((headers, body))
                    }
                }
                Ok((status, _, body)) => Err(self.error_for(status, &body)),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    attempt += 1;
                    let delay = Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5));
                    tracing::warn!(method = %r.method, key = r.key, attempt, "s3: {e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    fn error_for(&self, status: StatusCode, body: &[u8]) -> StoreError {
        let e: ErrorBody = parse_xml(body).unwrap_or_default();
        match (status, e.code.as_str()) {
            (_, "NoSuchBucket") => StoreError::NoSuchBucket(self.bucket.clone()),
            (StatusCode::NOT_FOUND, _) | (_, "NoSuchKey") => StoreError::NotFound,
            (StatusCode::PRECONDITION_FAILED, _) | (_, "PreconditionFailed") => StoreError::PreconditionFailed,
            // A conditional write racing another one on the same key.
            (StatusCode::CONFLICT, "ConditionalRequestConflict") => StoreError::PreconditionFailed,
            (StatusCode::FORBIDDEN, _) => {
                StoreError::AccessDenied(if e.code.is_empty() { "403".into() } else { e.code.clone() })
            }
            _ => StoreError::Server { status: status.as_u16(), code: e.code, message: e.message },
        }
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn part_size_for(&self, size: u64) -> u64 {
        // Grow the part so the upload stays within S3's 10,000 parts.
        self.part_size.max(size.div_ceil(MAX_PARTS))
    }

    async fn multipart<F, Fut>(
        &self,
        key: &str,
        meta: Option<&FileMeta>,
        size: u64,
        part: F,
    ) -> StoreResult<Option<String>>
    where
        F: Fn(String, u32, u64, u64) -> Fut,
        Fut: std::future::Future<Output = StoreResult<String>>,
    {
        let mut init = Req::new(Method::POST, key).query(&[("uploads", "")]);
        if let Some(m) = meta {
            init = init.meta(m);
        }
        let (_, body) = self.send(&init).await?;
        let upload_id = parse_xml::<InitiateResult>(&body)?.upload_id;
        let psize = self.part_size_for(size);
        let nparts = size.div_ceil(psize).max(1);
        use futures::StreamExt;
        let results: Vec<StoreResult<(u32, String)>> = futures::stream::iter(0..nparts)
            .map(|i| {
                let off = i * psize;
                let len = psize.min(size - off);
                let n = i as u32 + 1;
                let fut = part(upload_id.clone(), n, off, len);
                async move { fut.await.map(|etag| (n, etag)) }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut parts = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(p) => parts.push(p),
                Err(e) => {
                    self.abort(key, &upload_id).await;
                    return Err(e);
                }
            }
        }
        parts.sort_by_key(|p| p.0);
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in &parts {
            xml.push_str(&format!("<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>", xml_escape(etag)));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let done = Req::new(Method::POST, key).query(&[("uploadId", &upload_id)]).body(Bytes::from(xml));
        match self.send(&done).await {
            Ok((_, body)) => Ok(parse_xml::<CompleteResult>(&body).ok().and_then(|r| r.etag)),
            Err(e) => {
                self.abort(key, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        let r = Req::new(Method::DELETE, key).query(&[("uploadId", upload_id)]);
        if let Err(e) = self.send(&r).await {
            // An unfinished upload costs storage until a lifecycle rule removes it.
            tracing::warn!(key, "s3: cannot abort multipart upload {upload_id}: {e}");
        }
    }

    async fn get_range_async(&self, key: &str, offset: u64, len: u64) -> StoreResult<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let r = Req::new(Method::GET, key).header("range", format!("bytes={}-{}", offset, offset + len - 1));
        match self.send(&r).await {
            // A server that ignores Range sends the whole object (200, no Content-Range):
            // take the range from it rather than hand back the wrong bytes.
            Ok((h, body)) if h.get("content-range").is_none() => {
                let from = (offset.min(body.len() as u64)) as usize;
                let to = (offset.saturating_add(len).min(body.len() as u64)) as usize;
                Ok(body.slice(from..to))
            }
            // Never more than asked, whatever the server sent.
            Ok((_, body)) => Ok(body.slice(..(len.min(body.len() as u64)) as usize)),
            // At or past the end: nothing to read.
            Err(StoreError::Server { status: 416, .. }) => Ok(Bytes::new()),
            Err(e) => Err(e),
        }
    }
}

/// A GET's body as it arrives, pumped by a task on the plugin's runtime into a bounded
/// channel: the reader takes chunks as it needs them and the server is read no faster
/// (backpressure), so memory stays at a few chunks. Dropping it stops the download.
struct BodyStream {
    rx: tokio::sync::mpsc::Receiver<StoreResult<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

/// Chunks a body stream may hold unread (hyper's chunks are at most a few hundred KiB).
const STREAM_CHUNKS: usize = 32;

impl ChunkStream for BodyStream {
    fn next_chunk(&mut self) -> Option<StoreResult<Bytes>> {
        self.rx.blocking_recv()
    }
}

impl Drop for BodyStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn header_str<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl Store for S3Client {
    fn check(&self, prefix: &str) -> StoreResult<()> {
        self.list(prefix, true, None, 1).map(|_| ())
    }

    fn head(&self, key: &str) -> StoreResult<Option<ObjectInfo>> {
        let r = Req::new(Method::HEAD, key);
        match self.block(self.send(&r)) {
            Ok((h, _)) => {
                let mut user = BTreeMap::new();
                for (name, value) in h.iter() {
                    if let Some(k) = name.as_str().strip_prefix("x-amz-meta-")
                        && let Ok(v) = value.to_str()
                    {
                        user.insert(k.to_string(), v.to_string());
                    }
                }
                Ok(Some(ObjectInfo {
                    key: key.to_string(),
                    size: header_str(&h, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0),
                    modified: header_str(&h, "last-modified").and_then(parse_http_date),
                    etag: header_str(&h, "etag").map(str::to_string),
                    meta: Some(FileMeta::from_user_metadata(&user)),
                }))
            }
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Bytes> {
        // Large ranges in parallel parts: one stream rarely fills the link.
        let part = (self.part_size / 2).max(1 << 20);
        if len <= part || self.concurrency == 1 {
            return self.block(self.get_range_async(key, offset, len));
        }
        use futures::StreamExt;
        let n = len.div_ceil(part);
        let parts: Vec<StoreResult<Bytes>> = self.block(
            futures::stream::iter(0..n)
                .map(|i| {
                    let o = offset + i * part;
                    let l = part.min(offset + len - o);
                    self.get_range_async(key, o, l)
                })
                .buffered(self.concurrency)
                .collect(),
        );
        let mut out = Vec::with_capacity(len as usize);
        for p in parts {
            let p = p?;
            let short = (p.len() as u64) < part;
            out.extend_from_slice(&p);
            if short {
                break; // the end of the object
            }
        }
        Ok(Bytes::from(out))
    }

    fn get_stream(&self, key: &str, offset: u64, len: u64) -> StoreResult<Box<dyn ChunkStream>> {
        let mut r = Req::new(Method::GET, key).header("range", format!("bytes={}-{}", offset, offset + len.max(1) - 1));
        r.stream = true;
        // Retried like any request until the answer's head arrives; a failure of the body
        // part way reaches the reader, which falls back to ranged GETs.
        let mut attempt = 0;
        let resp = loop {
            let result = match self.block(self.request(&r)) {
                Ok(resp)
                    if resp.status() == StatusCode::PARTIAL_CONTENT || resp.status().is_success() && offset == 0 =>
                {
                    Ok(resp)
                }
                // Range ignored: the body would start at 0, not at `offset`.
                Ok(resp) if resp.status().is_success() => {
                    Err(StoreError::BadResponse("the server ignored the Range of a GET".into()))
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = self.block(resp.bytes()).unwrap_or_default();
                    Err(self.error_for(status, &body))
                }
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5)));
                }
                other => break other?,
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS);
        let endpoint = self.endpoint.clone();
        let task = self.rt.spawn(async move {
            let mut resp = resp;
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            return; // the reader is gone
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(unreachable(&endpoint, &e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Box::new(BodyStream { rx, task }))
    }

    fn download(&self, key: &str, file: &File) -> StoreResult<u64> {
        let size = match self.head(key)? {
            Some(info) => info.size,
            None => return Err(StoreError::NotFound),
        };
        let chunk = self.part_size.max(1 << 20);
        let mut off = 0;
        while off < size {
            let len = (chunk * self.concurrency as u64).min(size - off);
            let data = self.get_range(key, off, len)?;
            if data.is_empty() {
                break; // shrank since the HEAD
            }
            file.write_all_at(&data, off)?;
            off += data.len() as u64;
        }
        file.set_len(off)?;
        Ok(off)
    }

    fn put(&self, key: &str, body: Bytes, meta: &FileMeta, if_absent: bool) -> StoreResult<Option<String>> {
        let mut r = Req::new(Method::PUT, key).meta(meta).body(body);
        if if_absent {
            r = r.header("if-none-match", "*");
        }
        self.block(self.send(&r)).map(|(h, _)| header_str(&h, "etag").map(str::to_string))
    }

    fn upload(&self, key: &str, file: &File, size: u64, meta: &FileMeta) -> StoreResult<Option<String>> {
        let read = |off: u64, len: u64| -> StoreResult<Bytes> {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, off)?;
            Ok(Bytes::from(buf))
        };
        if size <= self.part_size {
            return self.put(key, read(0, size)?, meta, false);
        }
        self.block(self.multipart(key, Some(meta), size, |id, n, off, len| {
            // Read the part here, inside the bounded stream: at most `concurrency` parts
            // are in memory at once.
            let data = read(off, len);
            async move {
                let body = data?;
                let r =
                    Req::new(Method::PUT, key).query(&[("partNumber", &n.to_string()), ("uploadId", &id)]).body(body);
                let (h, _) = self.send(&r).await?;
                header_str(&h, "etag")
                    .map(str::to_string)
                    .ok_or_else(|| StoreError::BadResponse("UploadPart answer without an ETag".into()))
            }
        }))
    }

    fn upload_over(
        &self,
        key: &str,
        file: &File,
        size: u64,
        meta: &FileMeta,
        unchanged: u64,
        etag: &str,
    ) -> StoreResult<Option<String>> {
        let psize = self.part_size_for(size);
        if size <= self.part_size || unchanged < psize {
            return self.upload(key, file, size, meta);
        }
        let source = format!("/{}/{}", utf8_percent_encode(&self.bucket, KEY_SET), utf8_percent_encode(key, KEY_SET));
        self.block(self.multipart(key, Some(meta), size, |id, n, off, len| {
            let part = [("partNumber", n.to_string()), ("uploadId", id)];
            // Parts wholly in the unchanged range are copied from the stored object (if it
            // is still the one the local copy came from); the others are read here, inside
            // the bounded stream, so at most `concurrency` parts are in memory at once.
            let body = if off + len <= unchanged {
                None
            } else {
                let mut buf = vec![0u8; len as usize];
                Some(file.read_exact_at(&mut buf, off).map(|_| Bytes::from(buf)))
            };
            let source = source.clone();
            async move {
                let q: Vec<(&str, &str)> = part.iter().map(|(k, v)| (*k, v.as_str())).collect();
                match body {
                    None => {
                        let r = Req::new(Method::PUT, key)
                            .query(&q)
                            .header("x-amz-copy-source", source)
                            .header("x-amz-copy-source-if-match", etag.to_string())
                            .header("x-amz-copy-source-range", format!("bytes={}-{}", off, off + len - 1));
                        let (_, body) = self.send(&r).await?;
                        Ok(parse_xml::<CopyPartResult>(&body)?.etag)
                    }
                    Some(body) => {
                        let r = Req::new(Method::PUT, key).query(&q).body(body?);
                        let (h, _) = self.send(&r).await?;
                        header_str(&h, "etag")
                            .map(str::to_string)
                            .ok_or_else(|| StoreError::BadResponse("UploadPart answer without an ETag".into()))
                    }
                }
            }
        }))
    }

    fn copy(&self, from: &str, to: &str, size: u64, meta: Option<&FileMeta>) -> StoreResult<()> {
        let source = format!("/{}/{}", utf8_percent_encode(&self.bucket, KEY_SET), utf8_percent_encode(from, KEY_SET));
        if size <= self.copy_threshold {
            let mut r = Req::new(Method::PUT, to).header("x-amz-copy-source", source);
            if let Some(m) = meta {
                r = r.header("x-amz-metadata-directive", "REPLACE").meta(m);
            }
            return self.block(self.send(&r)).map(|_| ());
        }
        // Above CopyObject's limit: a multipart upload whose parts are server-side copies
        // of ranges (UploadPartCopy). The new object's metadata is given at initiation, so
        // keep the source's unless it is replaced.
        let meta = match meta {
            Some(m) => *m,
            None => self.head(from)?.and_then(|i| i.meta).unwrap_or_default(),
        };
        self.block(self.multipart(to, Some(&meta), size, |id, n, off, len| {
            let source = source.clone();
            async move {
                let r = Req::new(Method::PUT, to)
                    .query(&[("partNumber", &n.to_string()), ("uploadId", &id)])
                    .header("x-amz-copy-source", source)
                    .header("x-amz-copy-source-range", format!("bytes={}-{}", off, off + len - 1));
                let (_, body) = self.send(&r).await?;
                Ok(parse_xml::<CopyPartResult>(&body)?.etag)
            }
        }))
        .map(|_| ())
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        match self.block(self.send(&Req::new(Method::DELETE, key))) {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str, delimited: bool, token: Option<&str>, max_keys: u32) -> StoreResult<ListPage> {
        let max = max_keys.to_string();
        let mut q: Vec<(&str, &str)> = vec![("list-type", "2"), ("prefix", prefix), ("max-keys", &max)];
        if delimited {
            q.push(("delimiter", "/"));
        }
        if let Some(t) = token {
            q.push(("continuation-token", t));
        }
        // The bucket itself is the resource: path style lists `endpoint/bucket?...`,
        // virtual-host style `bucket.endpoint/?...`.
        let r = Req::new(Method::GET, "").query(&q);
        let (_, body) = self.block(self.send(&r))?;
        let parsed: ListBucketResult = parse_xml(&body)?;
        let next = match (parsed.is_truncated, parsed.next_continuation_token) {
            (Some(true), Some(t)) => Some(t),
            _ => None,
        };
        Ok(ListPage {
            prefixes: parsed.common_prefixes.into_iter().map(|p| p.prefix).collect(),
            objects: parsed
                .contents
                .into_iter()
                .map(|c| ObjectInfo {
                    modified: c.last_modified.as_deref().and_then(parse_iso_date),
                    key: c.key,
                    size: c.size,
                    etag: c.etag,
                    meta: None,
                })
                .collect(),
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_results_parse_with_and_without_optional_fields() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>d/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>
<Contents><Key>d/a &amp; b</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"x"</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
<CommonPrefixes><Prefix>d/sub/</Prefix></CommonPrefixes><NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"#;
        let r: ListBucketResult = parse_xml(xml.as_bytes()).unwrap();
        assert_eq!(r.contents.len(), 1);
        assert_eq!(r.contents[0].key, "d/a & b");
        assert_eq!(r.contents[0].size, 12);
        assert!(parse_iso_date(r.contents[0].last_modified.as_deref().unwrap()).is_some());
        assert_eq!(r.common_prefixes[0].prefix, "d/sub/");
        assert_eq!(r.next_continuation_token.as_deref(), Some("tok"));
        let empty: ListBucketResult = parse_xml(b"<ListBucketResult><Name>b</Name></ListBucketResult>").unwrap();
        assert!(empty.contents.is_empty() && empty.common_prefixes.is_empty());
    }

    #[test]
    fn garbage_from_the_server_is_an_error_not_a_panic() {
        for body in [&b"\xff\xfe"[..], b"<ListBucketResult><Contents><Size>-1</Size>", b"", b"<a>"] {
            assert!(parse_xml::<ListBucketResult>(body).is_err());
        }
        assert!(parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn s3fs_metadata_reads_and_odd_values_are_ignored() {
        let mut m = BTreeMap::new();
        m.insert("mode".to_string(), "33188".to_string());
        m.insert("uid".to_string(), "1000".to_string());
        m.insert("gid".to_string(), "-4".to_string());
        m.insert("mtime".to_string(), "1700000000.5".to_string());
        let meta = FileMeta::from_user_metadata(&m);
        assert_eq!(
            meta,
            FileMeta { mode: Some(0o100644), uid: Some(1000), gid: None, mtime: Some(1_700_000_000), atime: None }
        );
    }
}
