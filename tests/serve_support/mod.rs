//! A `cairn serve` started as a child process for the tests of the server's transport and robustness
//! (tests/serve.rs, tests/serve_tls.rs, tests/serve_resilience.rs, tests/serve_load.rs) and of its dashboard
//! (tests/serve_browser.rs): it is started on a free loopback port (or the `--listen` given, e.g. a restart on the
//! address of a killed server; the address read from its stderr), spoken to over real HTTP or HTTPS, and killed
//! when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{cairn, ok};

/// A running `cairn serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT` or `https://...`, as the server printed it.
    pub base: String,
    pub agent: ureq::Agent,
    /// Everything the server wrote to stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

/// An HTTP(S) client that answers every status (no error for 4xx/5xx) and trusts `ca_pem` if given.
pub fn agent(ca_pem: Option<&str>) -> ureq::Agent {
    let mut cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)));
    if let Some(pem) = ca_pem {
        let cert = ureq::tls::Certificate::from_pem(pem.as_bytes()).unwrap();
        cfg = cfg.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
                .build(),
        );
    }
    cfg.build().into()
}

impl Server {
    /// Starts `cairn serve --listen 127.0.0.1:0 --no-schedule EXTRA...` and waits until it answers.
    pub fn start(repo: &Path, extra: &[&str]) -> Server {
        Server::start_with(repo, extra, None, &[])
    }

    /// Like [`Server::start`], trusting `ca_pem` (for HTTPS) and with extra environment variables.
    pub fn start_with(
        repo: &Path,
        extra: &[&str],
        ca_pem: Option<&str>,
        env: &[(&str, &Path)],
    ) -> Server {
        let mut cmd = cairn(repo);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::start_command(cmd, extra, ca_pem)
    }

    /// Like [`Server::start_with`], from a prepared `cairn` command (e.g. with resource limits).
    pub fn start_command(
        cmd: std::process::Command,
        extra: &[&str],
        ca_pem: Option<&str>,
    ) -> Server {
        Server::launch(cmd, extra, ca_pem, false)
    }

    /// Starts `cairn serve --listen 127.0.0.1:0 EXTRA...` with its instance schedules running (give it
    /// `--tick-seconds 1` to keep a test short), and waits until it answers.
    pub fn start_scheduled(repo: &Path, extra: &[&str]) -> Server {
        Server::launch(cairn(repo), extra, None, true)
    }

    fn launch(
        mut cmd: std::process::Command,
        extra: &[&str],
        ca_pem: Option<&str>,
        schedule: bool,
    ) -> Server {
        cmd.arg("serve");
        if !schedule {
            cmd.arg("--no-schedule");
        }
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start cairn serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("cairn serve: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                log2.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server printed no address; stderr: {}",
                    log.lock().unwrap()
                );
            }
        };
        // A wildcard address is reached through loopback.
        let base = base.replace("0.0.0.0", "127.0.0.1");
        let s = Server {
            child,
            base,
            agent: agent(ca_pem),
            stderr: log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.get("/api/v1/health", None).0 == 0 {
            assert!(Instant::now() < deadline, "the server never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Status and JSON (or text) body; status 0 when no HTTP answer came (connection or TLS failure).
    pub fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
        match r {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(_) => (0, Value::Null),
        }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.get(self.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::answer(req.call())
    }

    /// The JSON (or text) body of a GET with `token` that must answer 200.
    pub fn get_ok(&self, path: &str, token: &str) -> Value {
        let (code, body) = self.get(path, Some(token));
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    }

    pub fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        Self::answer(
            self.agent
                .post(self.url(path))
                .header("Authorization", format!("Bearer {token}"))
                .send_json(body),
        )
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.delete(self.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::answer(req.call())
    }

    /// A POST or PUT of a JSON body.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let url = self.url(path);
        let mut req = match method {
            "POST" => self.agent.post(url),
            "PUT" => self.agent.put(url),
            other => panic!("method {other}"),
        };
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::answer(req.send_json(body))
    }

    /// The raw bytes of a GET.
    pub fn bytes(&self, path: &str, token: &str) -> (u16, Vec<u8>) {
        let mut resp = self
            .agent
            .get(self.url(path))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap();
        (status, body)
    }

    /// Follows a job until it is no longer queued or running.
    pub fn wait_job(&self, id: &str, token: &str) -> Value {
        self.follow_job(id, token).0
    }

    /// Follows a job until it is no longer queued or running; returns its last state and the states seen on
    /// the way.
    pub fn follow_job(&self, id: &str, token: &str) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut seen = Vec::new();
        loop {
            let (code, job) = self.get(&format!("/api/v1/jobs/{id}"), Some(token));
            assert_eq!(code, 200, "{job}");
            seen.push(job.clone());
            if !["queued", "running"].contains(&job["status"].as_str().unwrap_or_default()) {
                return (job, seen);
            }
            assert!(Instant::now() < deadline, "job {id} never finished: {job}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the job's `current_step` is `step`.
    pub fn wait_step(&self, id: &str, token: &str, step: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (code, job) = self.get(&format!("/api/v1/jobs/{id}"), Some(token));
            assert_eq!(code, 200, "{job}");
            if job["current_step"] == step {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never reached {step}: {job}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token of `role`, made with the CLI.
pub fn token(repo: &Path, name: &str, role: &str) -> String {
    ok(cairn(repo).args(["token", "add", name, "--role", role]))
        .trim()
        .to_string()
}
