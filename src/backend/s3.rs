//! A repository in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, Garage, Google Cloud Storage's XML
//! API with HMAC keys), through the `object_store` crate.
//!
//! `object_store` was chosen over `opendal` because it is the smaller dependency for the one service we need,
//! exposes exactly the operations of [`Backend`] (put, ranged get, head, list by prefix, delete) plus a
//! create-only put, and retries transient failures (5xx, timeouts, connection resets) with bounded
//! exponential backoff itself, while failing at once on permanent ones (403, 404, 400).
//!
//! Keys are `<prefix>/<kind dir>/[<xx>/]<name>`, the local layout with `/` separators. A PUT is atomic (an
//! object appears whole or not at all), so no temporary objects are needed; a streamed write is buffered
//! locally and sent with one PUT when finished. Credentials come from the standard `AWS_*` variables and are
//! never printed: [`S3Backend::location`] shows only the bucket and prefix.
//!
//! The library is synchronous; each call runs on this backend's own small Tokio runtime and the caller's
//! thread waits for its result over a channel, which works from any thread, inside another runtime or not.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as StorePath;
use object_store::{
    ClientConfigKey, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use super::{check_name, not_found, short_object, Backend, ObjectKind, ObjectWriter};
use crate::error::{Error, Result};

/// Where an S3 repository is and how to reach it; secrets are read from the environment, never kept here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// `--s3-endpoint`, else `AWS_ENDPOINT_URL` from the environment.
    pub endpoint: Option<String>,
    /// `--s3-path-style`: `endpoint/bucket/key` instead of `bucket.endpoint/key` (MinIO, Ceph, Garage).
    pub path_style: bool,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<S3Location> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::Invalid(format!("{url:?} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(Error::Invalid(format!(
                "{url:?}: {bucket:?} is not a bucket name (3-63 lowercase letters, digits, '-' or '.')"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == ".." || p == ".") || prefix.contains("//") {
            return Err(Error::Invalid(format!("{url:?}: bad key prefix")));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: None,
            path_style: false,
        })
    }
}

/// An S3-compatible backend.
pub struct S3Backend {
    inner: Arc<Inner>,
    // Owns the threads `inner.rt` hands requests to; dropped last (see the `Drop` impl).
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for S3Backend {
    /// A repository may be dropped inside another runtime (`cairn serve`'s, the daemon's), where dropping
    /// a runtime panics in tokio: `serve` on an S3 repository exited with a panic after a clean stop. There
    /// it is shut down without waiting; every request made through it has been answered by then, since
    /// each call waits for its own.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            }
        }
    }
}

/// What requests need; shared with writers, which must be `'static`.
struct Inner {
    loc: S3Location,
    store: Arc<dyn ObjectStore>,
    /// The same server with [`TRANSFER_TIMEOUT`] per request, for requests moving more than
    /// [`LARGE_TRANSFER`] bytes.
    bulk: Arc<dyn ObjectStore>,
    /// The same client, for listings one page at a time ([`S3Backend::list`] bounds them).
    lister: Arc<dyn PaginatedListStore>,
    rt: tokio::runtime::Handle,
}

/// What a pack's upload buffer reserves: the default pack size (16 MiB) plus the largest blob (4 MiB).
const PACK_BUFFER: usize = 20 << 20;

/// The most keys one listing may hold (valid names or not): 10 million packs of 16 MiB are 160 TB, and
/// their names about a GB of memory. A server listing more is broken or hostile.
const MAX_LISTED_KEYS: usize = 10_000_000;
/// The most pages in a row that may bring no key while saying that more follow (S3 returns up to 1,000
/// keys a page and says "truncated" only when more exist).
const MAX_EMPTY_PAGES: usize = 100;

/// How many times a transient failure is retried, and for how long at most, before it is an error.
const MAX_RETRIES: usize = 6;
const RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one request moving more than [`LARGE_TRANSFER`] bytes may take from start to end, unless
/// `AWS_TIMEOUT` says otherwise. object_store's bound, 30 s (kept for every other request, so a server that
/// stops answering is noticed soon), cut every upload of a 16 MiB pack on a link slower than about 4.5
/// Mbit/s per upload in flight (four by default share the link), and each retry started over: a backup over
/// a 2 Mbit/s uplink failed after 60 s, every time. 15 minutes pass a 20 MiB pack at 23 KiB/s.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const LARGE_TRANSFER: u64 = 1 << 20;

/// Refuses an endpoint that is not an absolute `http(s)://host[:port][/path]` URL: object_store takes any
/// string and panics when it signs the first request to it (`localhost:9000`, without a scheme, is the
/// usual mistake).
fn check_endpoint(ep: &str) -> Result<()> {
    let ok = url::Url::parse(ep).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if ok {
        return Ok(());
    }
    Err(Error::Invalid(
        "the S3 endpoint (from --s3-endpoint or AWS_ENDPOINT_URL; not repeated here, it may hold a \
         secret) is not a URL such as http://127.0.0.1:9000 or https://storage.googleapis.com"
            .into(),
    ))
}

impl S3Backend {
    /// Connects (lazily: no request is made here) with credentials from the `AWS_*` environment.
    pub fn new(loc: S3Location) -> Result<S3Backend> {
        S3Backend::build(loc, AmazonS3Builder::from_env())
    }

    fn build(loc: S3Location, builder: AmazonS3Builder) -> Result<S3Backend> {
        let mut b = builder.with_bucket_name(&loc.bucket);
        let endpoint = loc
            .endpoint
            .clone()
            // Empty is unset, as `export AWS_ENDPOINT_URL=` means in a shell.
            .or_else(|| {
                std::env::var("AWS_ENDPOINT_URL")
                    .ok()
                    .filter(|e| !e.is_empty())
            });
        if let Some(ep) = &endpoint {
            check_endpoint(ep)?;
            b = b
                .with_endpoint(ep)
                .with_allow_http(ep.starts_with("http://"));
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            // Most S3-compatible servers ignore the region but the signature needs one.
            b = b.with_region("us-east-1");
        }
        b = b.with_virtual_hosted_style_request(!loc.path_style && endpoint.is_none());
        let retry = RetryConfig {
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        };
        let b = b.with_retry(retry);
        let bulk = match std::env::var_os("AWS_TIMEOUT") {
            Some(_) => b.clone(),
            None => b.clone().with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                format!("{}s", TRANSFER_TIMEOUT.as_secs()),
            ),
        };
        let built = |b: AmazonS3Builder| {
            b.build().map_err(|e| {
                Error::Invalid(format!("s3://{}: {}", loc.bucket, redact(&e.to_string())))
            })
        };
        let store = Arc::new(built(b)?);
        let bulk = Arc::new(built(bulk)?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        Ok(S3Backend {
            inner: Arc::new(Inner {
                loc,
                store: store.clone(),
                bulk,
                lister: store,
                rt: rt.handle().clone(),
            }),
            rt: Some(rt),
        })
    }
}

impl Inner {
    fn key(&self, kind: ObjectKind, name: &str) -> StorePath {
        self.full(&kind.key(name))
    }

    fn full(&self, rel: &str) -> StorePath {
        if self.loc.prefix.is_empty() {
            StorePath::from(rel)
        } else {
            StorePath::from(format!("{}/{rel}", self.loc.prefix))
        }
    }

    fn url(&self, key: &StorePath) -> String {
        format!("s3://{}/{key}", self.loc.bucket)
    }

    /// Runs `op` on the store from the backend's runtime and waits for it on this thread; errors carry the
    /// key's URL and an I/O kind (`NotFound`, `PermissionDenied`, else `Other`).
    fn run<T, F>(
        &self,
        key: &StorePath,
        op: impl FnOnce(Arc<dyn ObjectStore>, StorePath) -> F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = object_store::Result<T>> + Send + 'static,
    {
        self.run_moving(0, key, op)
    }

    /// [`run`](Self::run) for a request moving `bytes` (sent or received; at most): a large one gets
    /// [`TRANSFER_TIMEOUT`].
    fn run_moving<T, F>(
        &self,
        bytes: u64,
        key: &StorePath,
        op: impl FnOnce(Arc<dyn ObjectStore>, StorePath) -> F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = object_store::Result<T>> + Send + 'static,
    {
        let store = if bytes > LARGE_TRANSFER {
            &self.bulk
        } else {
            &self.store
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = op(store.clone(), key.clone());
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv() {
            Ok(res) => res.map_err(|e| self.err(key, e)),
            Err(_) => Err(Error::Io {
                path: self.url(key).into(),
                source: std::io::Error::other("the request was dropped (shutting down)"),
            }),
        }
    }

    fn err(&self, key: &StorePath, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => std::io::ErrorKind::PermissionDenied,
            _ => std::io::ErrorKind::Other,
        };
        Error::Io {
            path: self.url(key).into(),
            source: std::io::Error::new(kind, redact(&e.to_string())),
        }
    }

    fn put(&self, key: &StorePath, data: Vec<u8>) -> Result<()> {
        self.run_moving(data.len() as u64, key, |s, k| async move {
            s.put(&k, PutPayload::from(data)).await.map(|_| ())
        })
    }

    /// A conditional PUT (`If-None-Match: *`): `false` when the server answers that the key exists. With
    /// conditional PUTs turned off (`AWS_CONDITIONAL_PUT=disabled`, for a server that rejects the header),
    /// a plain PUT.
    fn put_new(&self, key: &StorePath, data: Vec<u8>) -> Result<bool> {
        self.run_moving(data.len() as u64, key, |s, k| async move {
            let payload = PutPayload::from(data);
            let opts = PutOptions::from(PutMode::Create);
            match s.put_opts(&k, payload.clone(), opts).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(object_store::Error::NotImplemented { .. }) => {
                    s.put(&k, payload).await.map(|_| true)
                }
                Err(e) => Err(e),
            }
        })
    }
}

/// Error texts from the HTTP layer may quote request URLs; a presigned or credential-bearing query string must
/// not reach a terminal or a log, so every URL loses its query.
fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>'))
            .unwrap_or(tail.len());
        let url = &tail[..end];
        match url.find('?') {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?…");
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        let loc = &self.inner.loc;
        if loc.prefix.is_empty() {
            format!("s3://{}", loc.bucket)
        } else {
            format!("s3://{}/{}", loc.bucket, loc.prefix)
        }
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()> {
        check_name(kind, name)?;
        self.inner.put(&self.inner.key(kind, name), data.to_vec())
    }

    /// A conditional PUT, which AWS S3 and most S3-compatible servers (MinIO, R2, moto) honour; a server that
    /// ignores `If-None-Match` overwrites, so callers that must not lose a race read the object back.
    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool> {
        check_name(kind, name)?;
        self.inner
            .put_new(&self.inner.key(kind, name), data.to_vec())
    }

    fn writer(&self, kind: ObjectKind) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(S3Writer {
            inner: self.inner.clone(),
            kind,
            // Reserved whole (untouched pages cost no memory): growing a 16 MiB pack by doubling copied it
            // and left freed 8 and 16 MiB blocks in the allocator's arenas, which peak RSS counted.
            buf: Vec::with_capacity(if kind == ObjectKind::Pack {
                PACK_BUFFER
            } else {
                0
            }),
        }))
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        check_name(kind, name)?;
        let key = self.inner.key(kind, name);
        let Some(max) = kind.max_size() else {
            let got = self.inner.run_moving(u64::MAX, &key, |s, k| async move {
                s.get(&k).await?.bytes().await
            })?;
            return Ok(Vec::from(got));
        };
        // Read as it arrives and never past the kind's bound, whatever the server says the size is.
        let got = self.inner.run_moving(max, &key, move |s, k| async move {
            let r = s.get(&k).await?;
            if r.meta.size > max {
                return Ok(Err(r.meta.size));
            }
            let mut body = r.into_stream();
            let mut out = Vec::new();
            while let Some(piece) = body.try_next().await? {
                if out.len() as u64 + piece.len() as u64 > max {
                    return Ok(Err(out.len() as u64 + piece.len() as u64));
                }
                out.extend_from_slice(&piece);
            }
            Ok(Ok(out))
        })?;
        got.map_err(|size| super::too_large(kind, &self.inner.url(&key), size))
    }

    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        check_name(kind, name)?;
        let key = self.inner.key(kind, name);
        let size = if len == 0 {
            Some(
                self.stat(kind, name)?
                    .ok_or_else(|| not_found(self.inner.url(&key)))?,
            )
        } else {
            None
        };
        if let Some(size) = size {
            return if size >= offset {
                Ok(Vec::new())
            } else {
                Err(short_object(self.inner.url(&key), size, offset, len))
            };
        }
        let end = offset.saturating_add(len);
        let got = self.inner.run_moving(len, &key, |s, k| async move {
            let opts = GetOptions::default().with_range(Some(offset..end));
            let r = s.get_opts(&k, opts).await?;
            let size = r.meta.size;
            Ok((size, r.bytes().await?))
        });
        match got {
            // Taken over without a copy when the body arrived as one buffer: a run is up to 20 MiB.
            Ok((_, b)) if b.len() as u64 == len => Ok(Vec::from(b)),
            // Only an object that ends before the range is short (damage, on a pack).
            Ok((size, _)) if size < end => Err(short_object(self.inner.url(&key), size, offset, len)),
            // Any other length is the server's fault, and says nothing about the object: a read error.
            Ok((size, b)) => Err(Error::Io {
                path: self.inner.url(&key).into(),
                source: std::io::Error::other(format!(
                    "the server answered a read of {len} bytes at offset {offset} of a {size}-byte object with {} bytes",
                    b.len()
                )),
            }),
            // A range past the end is refused by the server (416); say what was asked, like the others.
            Err(e) if !super::is_not_found(&e) => match self.stat(kind, name)? {
                Some(size) if size < end => {
                    Err(short_object(self.inner.url(&key), size, offset, len))
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    fn stat(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>> {
        check_name(kind, name)?;
        let key = self.inner.key(kind, name);
        match self.inner.run(&key, |s, k| async move { s.head(&k).await }) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if super::is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>> {
        if kind == ObjectKind::Config {
            return Ok(self
                .stat(kind, "config")?
                .map(|n| vec![("config".to_string(), n)])
                .unwrap_or_default());
        }
        let prefix = self.inner.full(kind.dir());
        let mut out = Vec::new();
        let mut pages = Pages::new(&self.inner, &prefix);
        while let Some(metas) = pages.next_page()? {
            for m in metas {
                let Some(name) = m.location.filename() else {
                    continue;
                };
                if kind.valid_name(name) && m.location == self.inner.key(kind, name) {
                    out.push((name.to_string(), m.size));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        check_name(kind, name)?;
        let key = self.inner.key(kind, name);
        match self
            .inner
            .run(&key, |s, k| async move { s.delete(&k).await })
        {
            Err(e) if !super::is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }
}

/// A listing read one page at a time and checked as it comes: S3 lists keys in ascending order and a
/// continuation token leads to the keys after the page, so a page that repeats or goes back, a token
/// given twice, page after page of nothing, or more keys than any repository holds mean a broken or
/// hostile server. Each is an error (not damage: it says nothing about the objects) instead of a loop
/// that never ends or a listing that fills memory.
struct Pages<'a> {
    inner: &'a Inner,
    prefix: StorePath,
    token: Option<String>,
    started: bool,
    tokens: std::collections::HashSet<String>,
    last_key: Option<StorePath>,
    keys: usize,
    empty_pages: usize,
}

impl<'a> Pages<'a> {
    fn new(inner: &'a Inner, prefix: &StorePath) -> Pages<'a> {
        Pages {
            inner,
            prefix: prefix.clone(),
            token: None,
            started: false,
            tokens: Default::default(),
            last_key: None,
            keys: 0,
            empty_pages: 0,
        }
    }

    fn broken(&self, why: String) -> Error {
        Error::Io {
            path: format!("{}/", self.inner.url(&self.prefix)).into(),
            source: std::io::Error::other(format!("the server's listing is broken: {why}")),
        }
    }

    /// The next page's objects, `None` after the last page.
    fn next_page(&mut self) -> Result<Option<Vec<object_store::ObjectMeta>>> {
        if self.started && self.token.is_none() {
            return Ok(None);
        }
        self.started = true;
        let opts = PaginatedListOptions {
            page_token: self.token.take(),
            ..Default::default()
        };
        let lister = self.inner.lister.clone();
        let page = self.inner.run(&self.prefix, |_, p| async move {
            // The prefix is a directory: `packs/` must not also list `packs-old/...`.
            lister.list_paginated(Some(&format!("{p}/")), opts).await
        })?;
        let objects = page.result.objects;
        for m in &objects {
            if self
                .last_key
                .as_ref()
                .is_some_and(|last| m.location <= *last)
            {
                return Err(self.broken(format!(
                    "key {:?} comes again or out of order",
                    m.location.as_ref()
                )));
            }
            self.last_key = Some(m.location.clone());
        }
        self.keys += objects.len();
        if self.keys > MAX_LISTED_KEYS {
            return Err(self.broken(format!("more than {MAX_LISTED_KEYS} keys")));
        }
        self.empty_pages = if objects.is_empty() {
            self.empty_pages + 1
        } else {
            0
        };
        if let Some(t) = page.page_token.filter(|t| !t.is_empty()) {
            if self.empty_pages > MAX_EMPTY_PAGES {
                return Err(self.broken(format!(
                    "{MAX_EMPTY_PAGES} pages in a row held no key but said more follow"
                )));
            }
            if !self.tokens.insert(t.clone()) {
                return Err(self.broken("the same continuation token came twice".into()));
            }
            self.token = Some(t);
        }
        Ok(Some(objects))
    }
}

/// A streamed object, buffered until it is finished and sent with one PUT (packs are a few MiB).
struct S3Writer {
    inner: Arc<Inner>,
    kind: ObjectKind,
    buf: Vec<u8>,
}

impl Write for S3Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn finish(self: Box<Self>, name: &str) -> Result<u64> {
        check_name(self.kind, name)?;
        let S3Writer { inner, kind, buf } = *self;
        let size = buf.len() as u64;
        inner.put(&inner.key(kind, name), buf)?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback S3 server of `scripts/s3-setup` (started here if the environment does not name one) and
    /// a fresh bucket on it. No server is a failure, never a skip.
    pub(crate) fn test_bucket(tag: &str) -> S3Location {
        let endpoint = std::env::var("CAIRN_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3-setup");
            let out = std::process::Command::new(script)
                .output()
                .expect("run s3-setup");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix("CAIRN_TEST_S3_ENDPOINT="))
                .expect("s3-setup printed an endpoint")
                .to_string()
        });
        let bucket = format!("unit-{tag}-{}", crate::config::random_hex(6));
        create_bucket(&endpoint, &bucket);
        S3Location {
            bucket,
            prefix: "repo".into(),
            endpoint: Some(endpoint),
            path_style: true,
        }
    }

    /// Creates a bucket with one unsigned PUT (the test server accepts it).
    fn create_bucket(endpoint: &str, bucket: &str) {
        use std::io::{Read, Write};
        let host = endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).expect("connect to the S3 test server");
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }

    /// A backend on a fresh bucket, with the test server's throwaway credentials given explicitly (the
    /// process environment is not changed under parallel tests).
    pub(crate) fn test_backend(tag: &str) -> S3Backend {
        let creds = AmazonS3Builder::new()
            .with_access_key_id("cairn-test")
            .with_secret_access_key("cairn-test");
        S3Backend::build(test_bucket(tag), creds).unwrap()
    }

    #[test]
    fn keeps_the_backend_contract_against_a_real_s3_server() {
        let b = test_backend("contract");
        crate::backend::contract::holds_for(&b);
    }

    #[test]
    fn a_listing_of_more_than_one_page_is_read_whole_and_in_order() {
        // The server pages at 1,000 keys; a listing that stopped after a page would hide packs from
        // prune's accounting and from readers.
        let b = test_backend("pages");
        let mut want: Vec<(String, u64)> = (0..1_234u32)
            .map(|i| (crate::hashing::Id::of(&i.to_le_bytes()).to_hex(), 1))
            .collect();
        for (name, _) in &want {
            b.put(ObjectKind::Run, name, b"x").unwrap();
        }
        b.put(ObjectKind::Snapshot, &want[0].0, b"other kind")
            .unwrap();
        want.sort();
        assert_eq!(b.list(ObjectKind::Run).unwrap(), want);
    }

    #[test]
    fn urls_parse_and_bad_ones_are_refused() {
        let l = S3Location::parse("s3://my-bucket/backups/odoo/").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("my-bucket", "backups/odoo")
        );
        assert_eq!(S3Location::parse("s3://bkt").unwrap().prefix, "");
        for bad in ["s3://", "s3://A_B", "s3://b/../x", "file:///x", "s3://ab"] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redaction_drops_query_strings_from_urls() {
        assert_eq!(
            redact("error sending request for url (http://h/b/k?X-Amz-Signature=abc) x"),
            "error sending request for url (http://h/b/k?…) x"
        );
        assert_eq!(
            redact("GET http://h/b/k?sig=abc failed"),
            "GET http://h/b/k?… failed"
        );
    }
}
