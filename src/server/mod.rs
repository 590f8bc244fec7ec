//! `cairn serve`: the HTTP API (under `/api/v1`), the web dashboard (at `/`) and, unless disabled, the
//! instance schedules of `daemon`, in one process on the same library as the CLI.
//!
//! Layout: [`routes`] maps requests to library calls, [`auth`] checks tokens and roles and records mutating
//! calls, [`jobs`] runs long operations with progress and cancellation, [`errors`] turns failures into
//! HTTP answers, [`dashboard`] serves the embedded web page.
//!
//! Invariants: blocking library work (SQLite, file I/O, hashing) runs on tokio's blocking pool through
//! [`blocking`] or as a job, never on the runtime's worker threads, so one slow backup never delays a
//! request. The server listens on loopback unless told otherwise; a non-loopback address is refused without
//! `--insecure-http`, because tokens would cross the network in clear (TLS is not built in yet). SIGTERM or
//! SIGINT stops accepting requests and new jobs, and waits (at most [`SHUTDOWN_GRACE`]) for running jobs.

pub mod auth;
pub mod dashboard;
pub mod errors;
pub mod jobs;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::backend::RepoUrl;
use crate::error::{Error, Result};
use crate::repo::Repository;
use errors::{ApiError, ApiResult};

/// How long a stopping server waits for running jobs before it exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(120);

/// Largest accepted upload (`POST /instances/{name}/import`) unless configured otherwise.
pub const DEFAULT_UPLOAD_LIMIT: u64 = 4 << 30;

/// Settings of `cairn serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub repo: RepoUrl,
    pub listen: SocketAddr,
    /// Run the instance schedules (as `daemon` does).
    pub schedule: bool,
    /// Allow a non-loopback address without TLS.
    pub insecure_http: bool,
    /// Largest upload accepted, in bytes.
    pub upload_limit: u64,
    /// How often schedules are evaluated.
    pub tick: Duration,
}

/// What every handler shares.
pub struct AppState {
    pub repo: Arc<Repository>,
    pub auth: auth::Auth,
    pub jobs: Arc<jobs::JobTable>,
    pub upload_limit: u64,
}

/// Runs `f` on the blocking pool and waits for it; a library error becomes its HTTP answer.
pub async fn blocking<T, F>(f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!("a server task failed: {e}"))),
    }
}

/// Refuses to listen where tokens would travel in clear over a network.
pub fn check_listen(addr: &SocketAddr, insecure_http: bool) -> Result<()> {
    if addr.ip().is_loopback() || insecure_http {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "refusing to serve plain HTTP on {addr}, which is not a loopback address: API tokens would cross the \
         network in clear. Listen on 127.0.0.1 behind a TLS proxy, or pass --insecure-http"
    )))
}

/// Runs the server until SIGTERM/SIGINT.
pub fn run(opts: ServeOptions) -> Result<()> {
    check_listen(&opts.listen, opts.insecure_http)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Command(format!("server runtime: {e}")))?;
    let result = rt.block_on(serve(opts));
    // Jobs still running after the grace period are abandoned with the process.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(opts: ServeOptions) -> Result<()> {
    let url = opts.repo.clone();
    let repo = tokio::task::spawn_blocking(move || Repository::open(&url))
        .await
        .map_err(|e| Error::Command(format!("opening the repository: {e}")))??;
    let repo = Arc::new(repo);
    let state = Arc::new(AppState {
        auth: auth::Auth::new(repo.clone()),
        repo,
        jobs: Arc::new(jobs::JobTable::default()),
        upload_limit: opts.upload_limit,
    });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::io(opts.listen.to_string(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(opts.listen.to_string(), e))?;
    eprintln!("cairn serve: listening on http://{addr}");
    if opts.schedule {
        tokio::spawn(routes::schedule_loop(state.clone(), opts.tick));
    }
    let sig = |k| signal(k).map_err(|e| Error::Command(format!("signal handler: {e}")));
    let (mut term, mut int) = (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?);
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    };
    axum::serve(listener, routes::router(state.clone()))
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| Error::Command(format!("server: {e}")))?;
    state.jobs.close();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let running = state.jobs.unfinished();
    if running > 0 {
        eprintln!("cairn serve: stopping; waiting for {running} running job(s)");
    }
    while state.jobs.unfinished() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("cairn serve: stopped");
    Ok(())
}
