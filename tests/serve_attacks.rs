//! `cairn serve` attacked the way a client on the network, a low-role token or a hostile upload would:
//! every test drives the real server over real sockets and checks what it answered and what it kept.

mod harness;
mod serve_support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::*;
use serde_json::{json, Value};
use serve_support::{token, Server};

/// Adds the instance `app` (manual schedule, `extra` options) backing up a tree of `files` files under
/// `dir/files`.
fn add_app(dir: &Path, repo: &Path, files: usize, extra: &[&str]) -> PathBuf {
    let src = dir.join("files");
    build_rich_tree(&src, files);
    ok(cairn(repo)
        .args(["instance", "add", "app", "--priority", "manual"])
        .args(extra)
        .arg("--path")
        .arg(&src));
    src
}

/// Every `(method, path)` of the API, from its OpenAPI description, with `{name}` and `{id}` filled in,
/// plus the routes the description does not list.
fn every_route(name: &str, id: &str) -> Vec<(String, String)> {
    let spec: Value = serde_json::from_str(include_str!("../src/server/openapi.json")).unwrap();
    let mut routes = vec![
        ("GET".to_string(), "/api/v1/openapi.json".to_string()),
        ("GET".to_string(), "/metrics".to_string()),
    ];
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_some() {
                let path = path.replace("{name}", name).replace("{id}", id);
                routes.push((method.to_uppercase(), format!("/api/v1{path}")));
            }
        }
    }
    assert!(routes.len() > 20, "{routes:?}");
    routes
}

/// One raw HTTP/1.1 request; the status of the answer (0 if none came).
fn raw_status(base: &str, request: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn serve_every_api_route_refuses_a_caller_without_a_valid_token_before_reading_its_body() {
    let (_dir, repo) = new_repo();
    let viewer = token(&repo, "view", "viewer");
    let s = Server::start(&repo, &[]);
    let bad = format!("cairn_{}", "0".repeat(64));
    // Bodies a route would refuse if it read them: not JSON, not the declared type, a broken form.
    let bodies = [
        ("application/json", "{not json"),
        ("text/plain", "hello"),
        ("multipart/form-data; boundary=x", "--y\r\nbroken"),
    ];
    for (method, path) in every_route("app", &"ab".repeat(32)) {
        if path == "/api/v1/health" {
            continue;
        }
        for auth in ["", &format!("Authorization: Bearer {bad}\r\n")] {
            for (mime, body) in bodies {
                let request = format!(
                    "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: {mime}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                assert_eq!(
                    raw_status(&s.base, &request),
                    401,
                    "{method} {path} ({auth:?}, {mime})"
                );
            }
        }
    }
    // Nor does an unauthenticated caller learn whether an instance or snapshot exists.
    for path in ["/api/v1/instances/no-such", "/api/v1/snapshots/zz"] {
        assert_eq!(s.get(path, None).0, 401, "{path}");
    }
    // A valid token still gets the route's own answer.
    assert_eq!(s.get("/api/v1/instances", Some(&viewer)).0, 200);
}

/// Whether the server closes `conn` (EOF or reset) within `within`.
fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    read_until_closed(conn, within).1
}

/// What the server sends on `conn` until it closes it (EOF or reset) or `within` passes, and whether it did.
fn read_until_closed(conn: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + within;
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]), // e.g. an error answer (408/400) before closing
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

#[test]
fn serve_idle_and_slow_connections_are_closed_so_they_cannot_pin_the_server() {
    let (_dir, repo) = new_repo();
    let viewer = token(&repo, "view", "viewer");
    let s = Server::start(&repo, &[]);
    let addr = s.base.trim_start_matches("http://").to_string();
    // Silent after connecting; half a request line; headers dribbled one byte a second (slowloris); a
    // keep-alive connection left idle after a request.
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /api/v1/hea").unwrap();
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(
        format!(
            "GET /api/v1/instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {viewer}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let dribble_addr = addr.clone();
    let dribbler = std::thread::spawn(move || {
        let mut c = TcpStream::connect(&dribble_addr).unwrap();
        c.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let start = Instant::now();
        // Keeps sending a byte a second for up to a minute; a write failing means the server hung up.
        while start.elapsed() < Duration::from_secs(60) {
            if c.write_all(b"X-Slow: y\r\n"[..1].as_ref()).is_err() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_secs(1));
            let mut probe = [0u8; 1];
            c.set_nonblocking(true).unwrap();
            let r = c.read(&mut probe);
            c.set_nonblocking(false).unwrap();
            match r {
                Ok(0) => return Some(start.elapsed()),
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    return Some(start.elapsed())
                }
                _ => {}
            }
        }
        None
    });
    let within = Duration::from_secs(45);
    assert!(
        closed_by_server(&mut silent, within),
        "a silent connection stays open"
    );
    assert!(
        closed_by_server(&mut half, within),
        "half a request stays open"
    );
    assert!(
        closed_by_server(&mut idle, within),
        "an idle keep-alive connection stays open"
    );
    let dribbled = dribbler.join().unwrap();
    assert!(
        dribbled.is_some_and(|t| t < within),
        "headers sent a byte a second keep the connection open: {dribbled:?}"
    );
    // The server still answers.
    assert_eq!(s.get("/api/v1/instances", Some(&viewer)).0, 200);
}

/// An HTTP/2 client (prior knowledge, in clear): the connection preface, empty settings and one complete
/// `GET /` request (HPACK: `:method GET`, `:scheme http`, `:path /` from the static table, `:authority x`).
fn http2_request() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]); // SETTINGS, no parameters
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    // HEADERS on stream 1 with END_STREAM | END_HEADERS.
    out.extend_from_slice(&[0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    out
}

#[test]
fn serve_http2_is_refused_so_no_connection_escapes_the_timeouts() {
    let (_dir, repo) = new_repo();
    let viewer = token(&repo, "view", "viewer");
    let s = Server::start(&repo, &[]);
    let addr = s.base.trim_start_matches("http://").to_string();
    // hyper bounds neither the header read nor the idle time of an HTTP/2 connection: one that has made a
    // request stays open as long as the client likes. The server must not speak HTTP/2 at all.
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.write_all(&http2_request()).unwrap();
    let (answer, closed) = read_until_closed(&mut conn, Duration::from_secs(25));
    // An HTTP/2 server's first frame is its SETTINGS (type 4 on stream 0).
    let spoke_h2 = answer.len() >= 9 && answer[3] == 0x04 && answer[5..9] == [0, 0, 0, 0];
    assert!(
        !spoke_h2,
        "the server answered in HTTP/2: {:?}",
        &answer[..answer.len().min(32)]
    );
    assert!(closed, "an HTTP/2 connection stays open after its request");
    // HTTP/1.1 is still served.
    assert_eq!(s.get("/api/v1/instances", Some(&viewer)).0, 200);
}

/// `cairn` limited to `n` open files, as a service manager might start it.
fn cairn_with_open_files(repo: &Path, n: u64) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = cairn(repo);
    // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn serve_a_flood_of_connections_does_not_starve_a_running_backup_of_file_descriptors() {
    let (dir, repo) = new_repo();
    let operator = token(&repo, "ops", "operator");
    let src = add_app(dir.path(), &repo, 60, &["--pre-hook", "sleep 3"]);
    let s = Server::start_command(cairn_with_open_files(&repo, 256), &[], None);
    let (code, job) = s.post("/api/v1/instances/app/backup", &operator, &json!({}));
    assert_eq!(code, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // While the hook sleeps, far more connections than the server may hold files are opened and kept.
    let addr = s.base.trim_start_matches("http://").to_string();
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(flood.len() > 300, "{}", flood.len());
    // The backup runs under the flood.
    std::thread::sleep(Duration::from_secs(8));
    drop(flood);
    let done = s.wait_job(&id, &operator);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["detail"]["partial"], false, "{done}");
    assert_eq!(done["detail"]["warnings"], json!([]), "{done}");
    let out = dir.path().join("restored");
    ok(cairn(&repo)
        .args(["restore", done["snapshot_id"].as_str().unwrap(), "--target"])
        .arg(&out));
    assert_same_tree(&src, &out.join("files"));
}

/// The bytes of every file under `dir` (what an extraction holds on disk).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// A `.tar.gz` holding a dump and `size` zero bytes as one file: a few hundred KiB for hundreds of MiB.
fn gzip_bomb(size: u64) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(9);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "dump.sql", &b"select 1;"[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "filestore/zeros", std::io::repeat(0).take(size))
        .unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// A `.zip` with a dump and `size` zero bytes, deflated.
fn zip_bomb(size: u64) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    z.start_file("dump.sql", opts).unwrap();
    z.write_all(b"select 1;").unwrap();
    z.start_file("filestore/zeros", opts).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(size), &mut z).unwrap();
    z.finish().unwrap().into_inner()
}

#[test]
fn serve_upload_that_expands_far_beyond_its_size_is_rejected_before_it_fills_the_disk() {
    let (dir, repo) = new_repo();
    let admin = token(&repo, "boss", "admin");
    add_app(dir.path(), &repo, 3, &[]);
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let s = Server::start_with(&repo, &["--max-upload-mib", "1"], None, &[("TMPDIR", &tmp)]);
    let size = 400 << 20;
    for (bomb, file) in [
        (gzip_bomb(size), "bomb.tar.gz"),
        (zip_bomb(size), "bomb.zip"),
    ] {
        assert!(bomb.len() < 1 << 20, "{file}: {}", bomb.len());
        use ureq::unversioned::multipart::{Form, Part};
        let form = Form::new()
            .text("time", "2020-01-02T03:04:05Z")
            .part("archive", Part::bytes(&bomb).file_name(file));
        let (code, job) = Server::answer(
            s.agent
                .post(s.url("/api/v1/instances/app/import"))
                .header("Authorization", format!("Bearer {admin}"))
                .send(form),
        );
        assert_eq!(code, 202, "{file}: {job}");
        let id = job["id"].as_str().unwrap();
        // What the extraction holds on disk, at most, while the job runs.
        let mut most = 0;
        let done = loop {
            most = most.max(bytes_under(&tmp));
            let (_, j) = s.get(&format!("/api/v1/jobs/{id}"), Some(&admin));
            if !["queued", "running"].contains(&j["status"].as_str().unwrap_or_default()) {
                break j;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(done["status"], "failed", "{file}: {done}");
        let error = done["error"].as_str().unwrap();
        assert!(error.contains("decompression bomb"), "{file}: {error}");
        assert!(most < 100 << 20, "{file}: {most} bytes extracted");
        assert_eq!(
            s.get("/api/v1/instances/app/snapshots", Some(&admin)).1,
            json!([]),
            "{file}"
        );
        assert_eq!(bytes_under(&tmp), 0, "{file}: the extraction is cleaned up");
    }
}

/// The directory where the server on `repo` (with cache `cache`) keeps its job records.
fn job_records(cache: &Path) -> std::path::PathBuf {
    let root = cache.join("cairn");
    fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("serve-jobs"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no serve-jobs under {}", root.display()))
}

#[test]
fn serve_hostile_job_records_do_not_break_the_next_server() {
    let (dir, repo) = new_repo();
    let operator = token(&repo, "ops", "operator");
    add_app(dir.path(), &repo, 3, &[]);
    let cache = dir.path().join("cache");
    let env = [("XDG_CACHE_HOME", cache.as_path())];
    drop(Server::start_with(&repo, &[], None, &env));
    let records = job_records(&cache);
    // Records this host's cache may hold after tampering: the highest possible id, one past it, a
    // negative one, an id that is not a number.
    for id in [
        "job-18446744073709551615",
        "job-18446744073709551616",
        "job--1",
        "job-+7",
    ] {
        let record = json!({"id": id, "kind": "backup", "instance": "app", "status": "completed",
            "created_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z"});
        fs::write(records.join(format!("{id}.json")), record.to_string()).unwrap();
    }
    let s = Server::start_with(&repo, &[], None, &env);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (code, job) = s.post("/api/v1/instances/app/backup", &operator, &json!({}));
        assert_eq!(code, 202, "{job}");
        let done = s.wait_job(job["id"].as_str().unwrap(), &operator);
        assert_eq!(done["status"], "completed", "{done}");
        ids.push(done["id"].as_str().unwrap().to_string());
    }
    assert_ne!(ids[0], ids[1]);
    // Each id names one job.
    let (_, listed) = s.get("/api/v1/jobs?limit=1000", Some(&operator));
    for id in &ids {
        let n = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["id"] == json!(id))
            .count();
        assert_eq!(n, 1, "{id}: {listed}");
    }
}

/// Every string inside `v`.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn serve_api_calls_record_no_attacker_chosen_text_in_the_run_log() {
    let (_dir, repo) = new_repo();
    let viewer = token(&repo, "view", "viewer");
    let operator = token(&repo, "ops", "operator");
    let admin = token(&repo, "boss", "admin");
    let s = Server::start(&repo, &[]);
    // Path parameters with a terminal escape and a line break, and a very long one.
    let long = "a".repeat(4000);
    let mut calls = 0;
    for name in ["%1b%5b2J%0aforged%20entry", long.as_str()] {
        for (route, tok) in [
            ("backup", &viewer),
            ("pause", &viewer),
            ("restore", &viewer),
            ("backup", &operator),
            ("pause", &operator),
        ] {
            let path = format!("/api/v1/instances/{name}/{route}");
            let (code, v) = s.post(&path, tok, &json!({"confirm": true}));
            assert!(
                code == 403 || code == 400 || code == 404,
                "{route}: {code} {v}"
            );
            calls += 1;
        }
        assert_eq!(
            s.delete(&format!("/api/v1/jobs/{name}"), Some(&operator)).0,
            404
        );
        let (code, v) = s.delete(&format!("/api/v1/snapshots/{name}"), Some(&admin));
        assert!(code == 400 || code == 404, "{code} {v}");
        calls += 2;
    }
    let log = ok(cairn(&repo).args(["log", "--json"]));
    let runs: Value = serde_json::from_str(&log).unwrap();
    let recorded: Vec<&Value> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"].as_str().unwrap_or_default().starts_with("api:"))
        .collect();
    assert_eq!(recorded.len(), calls, "{log}");
    for r in recorded {
        for text in strings(r) {
            assert!(
                !text.chars().any(char::is_control) && text.len() < 400,
                "{text:?} in {r}"
            );
        }
    }
    let shown = ok(cairn(&repo).arg("log"));
    assert!(!shown.contains('\u{1b}'), "{shown}");
    assert_eq!(shown.lines().count(), calls, "{shown}");
}

#[test]
fn serve_upload_form_fields_besides_the_archive_count_toward_the_limit() {
    let (dir, repo) = new_repo();
    let admin = token(&repo, "boss", "admin");
    add_app(dir.path(), &repo, 3, &[]);
    let s = Server::start(&repo, &["--max-upload-mib", "1"]);
    let archive = gzip_bomb(10);
    let padded_time = format!("2020-01-02T03:04:05Z{}", " ".repeat(2 << 20));
    let junk = "j".repeat(2 << 20);
    use ureq::unversioned::multipart::{Form, Part};
    let send = |form: Form| {
        Server::answer(
            s.agent
                .post(s.url("/api/v1/instances/app/import"))
                .header("Authorization", format!("Bearer {admin}"))
                .send(form),
        )
    };
    // A `time` field of megabytes; a field the server does not use, of megabytes.
    let (code, v) = send(
        Form::new()
            .text("time", &padded_time)
            .part("archive", Part::bytes(&archive).file_name("a.tar.gz")),
    );
    assert_eq!(code, 413, "{v}");
    let (code, v) = send(
        Form::new()
            .text("junk", &junk)
            .text("time", "2020-01-02T03:04:05Z")
            .part("archive", Part::bytes(&archive).file_name("a.tar.gz")),
    );
    assert_eq!(code, 413, "{v}");
    // The same archive in a plain form is taken.
    let (code, v) = send(
        Form::new()
            .text("time", "2020-01-02T03:04:05Z")
            .part("archive", Part::bytes(&archive).file_name("a.tar.gz")),
    );
    assert_eq!(code, 202, "{v}");
    let done = s.wait_job(v["id"].as_str().unwrap(), &admin);
    assert_eq!(done["status"], "completed", "{done}");
}

#[test]
fn serve_restore_refuses_a_relative_target_instead_of_writing_under_the_servers_directory() {
    let (dir, repo) = new_repo();
    let admin = token(&repo, "boss", "admin");
    let src = add_app(dir.path(), &repo, 3, &[]);
    ok(cairn(&repo).args(["instance", "backup", "app"]));
    let cwd = dir.path().join("server-cwd");
    fs::create_dir(&cwd).unwrap();
    let mut cmd = cairn(&repo);
    cmd.current_dir(&cwd);
    let s = Server::start_command(cmd, &[], None);
    for target in ["out", "./out", "../out", ""] {
        let (code, v) = s.post(
            "/api/v1/instances/app/restore",
            &admin,
            &json!({"target": target, "restore_db": false, "confirm": true}),
        );
        if code == 202 {
            s.wait_job(v["id"].as_str().unwrap(), &admin);
        }
        assert_eq!(code, 400, "{target:?}: {v}");
        assert!(v["error"].as_str().unwrap().contains("absolute"), "{v}");
    }
    assert_eq!(fs::read_dir(&cwd).unwrap().count(), 0);
    assert!(!dir.path().join("out").exists());
    // An absolute target is restored to.
    let out = dir.path().join("abs-out");
    let (code, v) = s.post(
        "/api/v1/instances/app/restore",
        &admin,
        &json!({"target": out, "restore_db": false, "confirm": true}),
    );
    assert_eq!(code, 202, "{v}");
    let done = s.wait_job(v["id"].as_str().unwrap(), &admin);
    assert_eq!(done["status"], "completed", "{done}");
    assert_same_tree(&src, &out.join("files"));
}
