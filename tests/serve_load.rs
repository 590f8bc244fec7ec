//! The load run of BENCHMARKS.md ("`cairn serve` under load"): 200 concurrent clients (tokio tasks, each
//! with its own keep-alive connection) read `GET /api/v1/instances` and `GET /api/v1/jobs/{id}` in a loop
//! while the server runs a backup job; the backup's time is compared with the same backup by the CLI
//! (`cairn instance backup`, the same library call) into a fresh repository of its own.
//!
//! Ignored: it is a measurement, run with a release build:
//! `CARGO_TARGET_DIR=... cargo test --release --test serve_load -- --ignored --nocapture`.
//! Each client sends its next request `CAIRN_LOAD_INTERVAL_MS` (default 100) after the start of its last
//! one (or at once if that took longer), the clients' start times spread over one interval: 200 clients
//! make up to 2,000 requests a second, five times what 200 dashboards polling every 500 ms would. With
//! `CAIRN_LOAD_INTERVAL_MS=0` each client sends its next request as soon as it has its answer (a closed loop
//! that measures the server saturated, where latency is the number of clients over the throughput).
//! `CAIRN_LOAD_MIB` (default 1024: a backup of a few seconds, so that each round has thousands of samples;
//! 256 MiB backs up in about a second, too few for a steady p99) sets the data size, `CAIRN_LOAD_CLIENTS`
//! (200) the clients, `CAIRN_LOAD_ROUNDS` (3) the rounds (each round: a CLI backup, then a server backup under load, each into a
//! fresh repository, so neither deduplicates against the other). Asserts the targets: p99 under 50 ms for
//! each route, and the server's backup within 10% of the CLI's (medians over the rounds).

mod harness;
mod serve_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;
use serve_support::{token, Server};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `mib` MiB in 4 MiB files, half random, half compressible text, plus a few hundred small files.
fn data(dir: &Path, mib: usize) -> PathBuf {
    let src = dir.join("files");
    build_rich_tree(&src, 300);
    for i in 0..mib.div_ceil(4) {
        let bytes = if i % 2 == 0 {
            pseudo_random(4 << 20, i as u64 + 1)
        } else {
            format!("line {i} of a compressible log file\n")
                .repeat(1 + (4 << 20) / 36)
                .into_bytes()
        };
        fs::write(src.join(format!("f{i}.bin")), bytes).unwrap();
    }
    src
}

/// A fresh repository with instance `app` backing up `src`.
fn repo_with_instance(src: &Path) -> (tempfile::TempDir, PathBuf) {
    let (dir, repo) = new_repo();
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(src));
    (dir, repo)
}

fn cli_backup_seconds(src: &Path) -> f64 {
    let (_dir, repo) = repo_with_instance(src);
    let t = Instant::now();
    ok(cairn(&repo).args(["--quiet", "instance", "backup", "app"]));
    t.elapsed().as_secs_f64()
}

/// Latencies, in milliseconds, of the requests that started while the backup ran.
#[derive(Default)]
struct Samples {
    instances: Vec<f64>,
    job: Vec<f64>,
    errors: usize,
}

/// Runs `clients` readers against `base` until `stop`: each request's start, route, milliseconds and success.
async fn readers(
    base: String,
    viewer: String,
    job_id: Arc<std::sync::Mutex<String>>,
    clients: usize,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<(Instant, bool, f64, bool)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, base, viewer, job_id, stop) = (
            http.clone(),
            base.clone(),
            viewer.clone(),
            job_id.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut n = c;
            tokio::time::sleep(interval * c as u32 / clients as u32).await;
            let mut ticks = tokio::time::interval(interval.max(Duration::from_micros(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                if !interval.is_zero() {
                    ticks.tick().await;
                }
                n += 1;
                let instances = n % 2 == 0;
                let path = if instances {
                    "/api/v1/instances".to_string()
                } else {
                    format!("/api/v1/jobs/{}", job_id.lock().unwrap())
                };
                let t = Instant::now();
                let r = http
                    .get(format!("{base}{path}"))
                    .bearer_auth(&viewer)
                    .send()
                    .await;
                let ok = match r {
                    Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                out.push((t, instances, t.elapsed().as_secs_f64() * 1000.0, ok));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// One server backup under load: its seconds and the samples taken while it ran.
fn server_backup_under_load(src: &Path, clients: usize, interval: Duration) -> (f64, Samples) {
    let (_dir, repo) = repo_with_instance(src);
    let ops = token(&repo, "ops", "operator");
    let viewer = token(&repo, "view", "viewer");
    let s = Server::start(&repo, &[]);
    // A finished job to read until the backup's exists (the clients start first, so that the backup
    // starts under full load).
    let (code, warm) = s.post("/api/v1/check", &ops, &json!({}));
    assert_eq!(code, 202, "{warm}");
    s.wait_job(warm["id"].as_str().unwrap(), &viewer);
    let job_id = Arc::new(std::sync::Mutex::new(
        warm["id"].as_str().unwrap().to_string(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = rt.spawn(readers(
        s.base.clone(),
        viewer.clone(),
        job_id.clone(),
        clients,
        interval,
        stop.clone(),
    ));
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let (code, job) = s.post("/api/v1/instances/app/backup", &ops, &json!({}));
    assert_eq!(code, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    *job_id.lock().unwrap() = id.clone();
    let done = loop {
        let (_, j) = s.get(&format!("/api/v1/jobs/{id}"), Some(&viewer));
        if j["status"] != "running" && j["status"] != "queued" {
            break j;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = t.elapsed().as_secs_f64();
    let end = Instant::now();
    assert_eq!(done["status"], "completed", "{done}");
    stop.store(true, Ordering::Relaxed);
    let all = rt.block_on(load).unwrap();
    let mut samples = Samples::default();
    for (at, instances, ms, ok) in all {
        if at < t || at > end {
            continue;
        }
        if !ok {
            samples.errors += 1;
        } else if instances {
            samples.instances.push(ms);
        } else {
            samples.job.push(ms);
        }
    }
    (secs, samples)
}

#[test]
#[ignore = "a load measurement (BENCHMARKS.md): run with --release -- --ignored --nocapture"]
fn serve_load_200_clients_reading_while_a_backup_runs() {
    let mib = env_or("CAIRN_LOAD_MIB", 1024);
    let clients = env_or("CAIRN_LOAD_CLIENTS", 200);
    let rounds = env_or("CAIRN_LOAD_ROUNDS", 3);
    let interval = Duration::from_millis(env_or("CAIRN_LOAD_INTERVAL_MS", 100) as u64);
    let dir = tempfile::tempdir().unwrap();
    let src = data(dir.path(), mib);
    let (mut cli, mut served) = (Vec::new(), Vec::new());
    let (mut p50s, mut p99s) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for round in 1..=rounds {
        let c = cli_backup_seconds(&src);
        let (secs, mut samples) = server_backup_under_load(&src, clients, interval);
        let n = samples.instances.len() + samples.job.len();
        let (i50, i99) = (
            percentile(&mut samples.instances, 0.5),
            percentile(&mut samples.instances, 0.99),
        );
        let (j50, j99) = (
            percentile(&mut samples.job, 0.5),
            percentile(&mut samples.job, 0.99),
        );
        println!(
            "round {round}: CLI {c:.2} s, server under load {secs:.2} s (ratio {:.3}); {n} requests \
             ({:.0}/s), {} errors; /instances p50 {i50:.1} ms p99 {i99:.1} ms; /jobs/{{id}} p50 {j50:.1} ms \
             p99 {j99:.1} ms",
            secs / c,
            n as f64 / secs,
            samples.errors
        );
        assert_eq!(samples.errors, 0);
        cli.push(c);
        served.push(secs);
        p50s.0.push(i50);
        p50s.1.push(j50);
        p99s.0.push(i99);
        p99s.1.push(j99);
    }
    let (c, s) = (median(cli), median(served));
    let (i99, j99) = (median(p99s.0), median(p99s.1));
    println!(
        "medians over {rounds} rounds, {mib} MiB, {clients} clients every {interval:?}: CLI {c:.2} s, server {s:.2} s, ratio \
         {:.3}; /instances p50 {:.1} ms p99 {i99:.1} ms; /jobs/{{id}} p50 {:.1} ms p99 {j99:.1} ms",
        s / c,
        median(p50s.0),
        median(p50s.1)
    );
    assert!(i99 < 50.0 && j99 < 50.0, "p99 over 50 ms");
    assert!(s / c <= 1.10, "the server's backup is more than 10% slower");
}
