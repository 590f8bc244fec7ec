//! Where the integration tests' repositories live, and backend-neutral access to their objects.
//!
//! With `CAIRN_TEST_BACKEND=s3` (scripts/test sets it for its second pass) [`repo_in`] hands out
//! `s3://<bucket>/<unique prefix>` repository URLs on the real S3-protocol test server on loopback (moto,
//! started by `scripts/s3-setup`), and [`super::cairn`] gives the child the endpoint, credentials and an index
//! cache directory of that repository's own; otherwise a directory. A repository URL travels in a `PathBuf`
//! so that the tests stay written once: `repo.join("packs/ab/...")` names an object in either kind.
//!
//! The object helpers ([`obj_list`], [`obj_read`], [`obj_write`], [`obj_delete`]) let damage tests corrupt,
//! truncate or remove a pack in either kind of repository. For S3 they speak plain HTTP/1.1 to the test server
//! (path-style, with a dummy `Authorization` header: moto does not check signatures but treats unsigned
//! requests as anonymous), independently of cairn's own S3 client, which is the code under test.
//!
//! The credentials are passed to child processes only, never set in this process (tests run in parallel
//! threads and changing the environment under them is unsound).

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// moto accepts any key pair.
pub const S3_KEY_ID: &str = "cairn-test";
pub const S3_SECRET: &str = "cairn-test-secret";

/// Whether this run puts the repositories in S3 (`CAIRN_TEST_BACKEND=s3`).
pub fn s3_mode() -> bool {
    static MODE: OnceLock<bool> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("CAIRN_TEST_BACKEND").as_deref() {
        Ok("s3") => true,
        Ok("local") | Err(_) => false,
        Ok(other) => panic!("CAIRN_TEST_BACKEND={other:?}: expected \"s3\" or \"local\""),
    })
}

/// For a test that must stay on a local repository: in an S3 run, prints why and returns true (skip).
pub fn local_only(reason: &str) -> bool {
    if s3_mode() {
        eprintln!("local repositories only: {reason}");
    }
    s3_mode()
}

/// The S3 test server's endpoint (`http://127.0.0.1:PORT`): `CAIRN_TEST_S3_ENDPOINT`, else what
/// `scripts/s3-setup` starts.
pub fn s3_endpoint() -> &'static str {
    static EP: OnceLock<String> = OnceLock::new();
    EP.get_or_init(|| {
        if let Ok(ep) = std::env::var("CAIRN_TEST_S3_ENDPOINT") {
            return ep;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-setup");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("CAIRN_TEST_S3_ENDPOINT="))
            .unwrap_or_else(|| panic!("s3-setup printed no endpoint: {stdout}"))
            .to_string()
    })
}

/// This test process's bucket on `endpoint`, created on first use.
fn bucket(endpoint: &str) -> String {
    static BUCKETS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let mut made = BUCKETS.lock().unwrap();
    if let Some((_, b)) = made.iter().find(|(ep, _)| ep == endpoint) {
        return b.clone();
    }
    let b = format!("suite-{}-{}", std::process::id(), made.len());
    create_bucket(endpoint, &b);
    made.push((endpoint.to_string(), b.clone()));
    b
}

/// Creates `bucket` on `endpoint`.
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let (status, body) = http(endpoint, "PUT", &format!("/{bucket}"), &[], &[]);
    assert_eq!(
        status,
        200,
        "create bucket: {}",
        String::from_utf8_lossy(&body)
    );
}

/// A process-unique number.
pub fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The index cache directory of each S3 repository handed out, by URL.
fn caches() -> &'static Mutex<HashMap<String, PathBuf>> {
    static C: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// Where a new (not yet initialised) repository of this test lives: `dir/repo`, or in an S3 run a fresh
/// prefix in this process's bucket whose index cache is `dir/cache-N` (so the test's temporary directory
/// owns it).
pub fn repo_in(dir: &Path) -> PathBuf {
    if !s3_mode() {
        return dir.join("repo");
    }
    s3_repo_in(dir)
}

/// A new S3 repository URL whatever the run's backend (for the tests that are about S3), its index cache
/// under `dir` as in [`repo_in`].
pub fn s3_repo_in(dir: &Path) -> PathBuf {
    let n = unique();
    let url = format!("s3://{}/r{n}", bucket(s3_endpoint()));
    caches()
        .lock()
        .unwrap()
        .insert(url.clone(), dir.join(format!("cache-{n}")));
    PathBuf::from(url)
}

/// The index cache directory (`XDG_CACHE_HOME`) for the S3 repository `url`.
pub fn cache_of(url: &str) -> PathBuf {
    if let Some(c) = caches().lock().unwrap().get(url) {
        return c.clone();
    }
    // A URL this harness did not hand out (a test that made its own): one shared cache per process.
    std::env::temp_dir().join(format!("cairn-test-cache-{}", std::process::id()))
}

/// Whether `repo` (or an object path inside it) is an S3 URL.
pub fn is_s3(p: &Path) -> bool {
    p.to_str().is_some_and(|s| s.starts_with("s3://"))
}

/// Points `cmd` at the S3 repository `url`: endpoint, credentials, its own index cache.
pub fn s3_env(cmd: &mut Command, url: &str) {
    cmd.env("AWS_ENDPOINT_URL", s3_endpoint())
        .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_SESSION_TOKEN")
        .env("XDG_CACHE_HOME", cache_of(url));
}

/// The file of the repository's SQLite index (a cache): `repo/index.sqlite`, or for S3 the one under the
/// repository's cache directory.
pub fn index_file(repo: &Path) -> PathBuf {
    let cfg: serde_json::Value = serde_json::from_slice(&obj_read(&repo.join("config"))).unwrap();
    let id = cfg["repository_id"].as_str().expect("repository_id");
    if is_s3(repo) {
        return cache_of(repo.to_str().unwrap())
            .join("cairn")
            .join(id)
            .join("index.sqlite");
    }
    if cfg.get("encryption").is_none() {
        return repo.join("index.sqlite");
    }
    // An encrypted local repository keeps its index in the cache (format-spec section 2.1).
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("cairn-test-cache"));
    let place = repo.canonicalize().unwrap();
    let h =
        cairn::hashing::Id::of(std::os::unix::ffi::OsStrExt::as_bytes(place.as_os_str())).short();
    cache
        .join("cairn")
        .join(format!("{id}-{h}"))
        .join("index.sqlite")
}

/// Deletes the repository's SQLite index cache (and its log files).
pub fn remove_index_cache(repo: &Path) {
    let f = index_file(repo);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = f.clone().into_os_string();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
}

/// (bucket, key) of an `s3://bucket/key` path.
fn split(p: &Path) -> (String, String) {
    let s = p.to_str().unwrap().strip_prefix("s3://").unwrap();
    let (b, k) = s.split_once('/').unwrap_or((s, ""));
    (b.to_string(), k.trim_end_matches('/').to_string())
}

/// Every object under `dir` (a directory, or an S3 prefix), recursively, with its size; sorted.
pub fn obj_list(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    if is_s3(dir) {
        let (b, k) = split(dir);
        let prefix = format!("{k}/");
        let mut token: Option<String> = None;
        loop {
            let mut q = format!("/{b}?list-type=2&prefix={}", pct(&prefix));
            if let Some(t) = &token {
                q.push_str(&format!("&continuation-token={}", pct(t)));
            }
            let (status, body) = http(s3_endpoint(), "GET", &q, &[], &[]);
            let body = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, 200, "list {q}: {body}");
            for c in body.split("<Contents>").skip(1) {
                let key = xml_field(c, "Key").unwrap();
                let size = xml_field(c, "Size").unwrap().parse().unwrap();
                out.push((PathBuf::from(format!("s3://{b}/{key}")), size));
            }
            token = xml_field(&body, "NextContinuationToken");
            if token.is_none() {
                break;
            }
        }
    } else {
        walk_files(dir, &mut out);
    }
    out.sort();
    out
}

fn walk_files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd {
        let p = e.unwrap().path();
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            walk_files(&p, out);
        } else {
            out.push((p, md.len()));
        }
    }
}

/// The bytes of one object (a file, or an S3 object).
pub fn obj_read(p: &Path) -> Vec<u8> {
    if !is_s3(p) {
        return fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    }
    let (b, k) = split(p);
    let (status, body) = http(s3_endpoint(), "GET", &format!("/{b}/{k}"), &[], &[]);
    assert_eq!(status, 200, "GET {}", p.display());
    body
}

/// Replaces (or creates) one object.
pub fn obj_write(p: &Path, bytes: &[u8]) {
    if !is_s3(p) {
        return fs::write(p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
    let (b, k) = split(p);
    let (status, body) = http(s3_endpoint(), "PUT", &format!("/{b}/{k}"), &[], bytes);
    assert_eq!(
        status,
        200,
        "PUT {}: {}",
        p.display(),
        String::from_utf8_lossy(&body)
    );
}

/// Deletes one object.
pub fn obj_delete(p: &Path) {
    if !is_s3(p) {
        return fs::remove_file(p).unwrap_or_else(|e| panic!("delete {}: {e}", p.display()));
    }
    let (b, k) = split(p);
    let (status, _) = http(s3_endpoint(), "DELETE", &format!("/{b}/{k}"), &[], &[]);
    assert!(status == 204 || status == 200, "DELETE {}", p.display());
}

/// Reads the repository's `config` as JSON, lets `edit` change it, writes it back.
pub fn edit_config(repo: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = repo.join("config");
    let mut cfg: serde_json::Value = serde_json::from_slice(&obj_read(&p)).unwrap();
    edit(&mut cfg);
    obj_write(&p, &serde_json::to_vec(&cfg).unwrap());
}

fn xml_field(s: &str, tag: &str) -> Option<String> {
    let start = s.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + s[start..].find(&format!("</{tag}>"))?;
    Some(
        s[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One HTTP/1.1 request to the test server; returns (status, body). The body is read to the end of the
/// connection (`Connection: close`), de-chunked if need be.
pub fn http(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    try_http(endpoint, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {endpoint}{path}: {e}"))
}

/// [`http`] to a server that may be down (one being started or killed by its test): an error where it
/// cannot be reached or answers no HTTP reply.
pub fn try_http(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let host = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(host)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential={S3_KEY_ID}/20260101/us-east-1/s3/aws4_request, \
         SignedHeaders=host, Signature=00\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let not_http = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP reply: {}", String::from_utf8_lossy(&reply)),
        )
    };
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(not_http)?;
    let head = String::from_utf8_lossy(&reply[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(not_http)?;
    let mut rest = reply[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        rest = dechunk(&rest);
    }
    Ok((status, rest))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let len = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
        b = &b[eol + 2 + len + 2..];
    }
}
