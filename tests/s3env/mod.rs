//! A repository "place" for tests that run against both a local directory and the S3 test server (moto on
//! loopback, started by `scripts/s3-setup` unless `CAIRN_TEST_S3_ENDPOINT` names one). Each host is a
//! `cairn` process with its own `XDG_CACHE_HOME`, as two machines sharing one repository would be.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::harness::cairn_bin;

/// moto accepts any key pair; this secret must never appear in any output.
pub const SECRET: &str = "s3cr3t-copy-tests-91c2";

/// The shared test server's endpoint (`http://127.0.0.1:PORT`).
pub fn endpoint() -> &'static str {
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

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where a test repository lives.
#[derive(Debug, Clone)]
pub enum Place {
    Local(PathBuf),
    S3(String),
}

impl Place {
    /// A fresh local repository path under `dir` (not created).
    pub fn local(dir: &Path, name: &str) -> Place {
        Place::Local(dir.join(name))
    }

    /// A fresh bucket on the test server; the repository is a prefix inside it (not created).
    pub fn s3(tag: &str) -> Place {
        let ep = endpoint();
        let bucket = format!("cp-{tag}-{}", unique());
        let host = ep.trim_start_matches("http://");
        let mut s = TcpStream::connect(host).expect("connect to the S3 test server");
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
        Place::S3(format!("s3://{bucket}/repo"))
    }

    /// The value of `--repo` / `--from-repo`.
    pub fn url(&self) -> String {
        match self {
            Place::Local(p) => p.display().to_string(),
            Place::S3(u) => u.clone(),
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Place::S3(_))
    }

    /// A `cairn` command on this repository, as the host whose cache directory is `cache`. The S3 settings
    /// are given to every command, so a command naming another repository (`copy --from-repo`) reaches it
    /// too.
    pub fn cairn(&self, cache: &Path) -> Command {
        let mut c = Command::new(cairn_bin());
        // The suite's password first: its cache default must not override this host's cache.
        crate::harness::with_password(&mut c);
        c.env("CAIRN_REPO", self.url())
            .env("XDG_CACHE_HOME", cache)
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::null());
        if self.is_s3() {
            s3_env(&mut c);
        }
        c
    }
}

/// The S3 test server's settings for a command (harmless for a local repository).
pub fn s3_env(c: &mut Command) {
    c.env("AWS_ACCESS_KEY_ID", "cairn-test")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("CAIRN_S3_ENDPOINT", endpoint())
        .env("CAIRN_S3_PATH_STYLE", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_SESSION_TOKEN");
}
