//! A repository "place" for tests that run against both a local directory and the S3 test server (moto on
//! loopback, started by `scripts/s3-setup` unless `CAIRN_TEST_S3_ENDPOINT` names one). Each host is a
//! `cairn` process with its own `XDG_CACHE_HOME`, as two machines sharing one repository would be.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::{cairn_bin, store};

/// moto accepts any key pair; this secret must never appear in any output.
pub const SECRET: &str = "s3cr3t-copy-tests-91c2";

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
        let bucket = format!("cp-{tag}-{}-{}", std::process::id(), store::unique());
        store::create_bucket(store::s3_endpoint(), &bucket);
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

/// The S3 test server's settings for a command (harmless for a local repository). Unlike
/// `harness::store::s3_env` it names the endpoint through cairn's own `CAIRN_S3_ENDPOINT` /
/// `CAIRN_S3_PATH_STYLE` and a secret of its own, so these tests cover that path and can check the secret
/// never shows.
pub fn s3_env(c: &mut Command) {
    c.env("AWS_ACCESS_KEY_ID", "cairn-test")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("CAIRN_S3_ENDPOINT", store::s3_endpoint())
        .env("CAIRN_S3_PATH_STYLE", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_SESSION_TOKEN");
}
