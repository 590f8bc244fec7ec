//! `cairn serve`: the HTTP API (under `/api/v1`), the web dashboard (at `/`) and, unless disabled, the
//! instance schedules of `daemon`, in one process on the same library as the CLI.
//!
//! Layout: [`routes`] maps requests to library calls, [`auth`] checks tokens and roles and records mutating
//! calls, [`jobs`] runs long operations with progress and cancellation, [`job_store`] keeps their records
//! across restarts, [`overview_cache`] shares one read of the instance overview among the requests of the
//! same second, [`errors`] turns failures into HTTP answers, [`dashboard`] serves the embedded web
//! page, [`tls`] reads the certificate and key of HTTPS, [`connections`] bounds what one connection may
//! hold (time, and a share of the file descriptors).
//!
//! Invariants: blocking library work (SQLite, file I/O, hashing) runs on tokio's blocking pool through
//! [`blocking`] or as a job, never on the runtime's worker threads, so one slow backup never delays a
//! request. The server listens on loopback unless told otherwise; with `--tls-cert`/`--tls-key` it speaks
//! HTTPS only ([`tls`]); a non-loopback address without TLS is refused unless `--insecure-http`, because
//! tokens would cross the network in clear. SIGTERM or SIGINT stops accepting requests and new jobs, and
//! waits (at most [`SHUTDOWN_GRACE`]) for running jobs.

pub mod auth;
pub mod connections;
pub mod dashboard;
pub mod errors;
pub mod job_store;
pub mod jobs;
pub mod overview_cache;
pub mod routes;
pub mod tls;

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
    /// Serve HTTPS with this certificate and key (else plain HTTP).
    pub tls: Option<tls::TlsFiles>,
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
    /// The instance overview shared by the routes that show it.
    pub overview: overview_cache::OverviewCache,
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

/// Refuses to listen where tokens would travel in clear over a network: plain HTTP on a non-loopback
/// address, unless the operator insists.
pub fn check_listen(addr: &SocketAddr, tls: bool, insecure_http: bool) -> Result<()> {
    if tls || addr.ip().is_loopback() || insecure_http {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "refusing to serve plain HTTP on {addr}, which is not a loopback address: API tokens would cross the \
         network in clear. Give --tls-cert and --tls-key, listen on 127.0.0.1 behind a TLS proxy, or pass \
         --insecure-http"
    )))
}

/// The job table: with this host's records of the repository's jobs when this server can own them, else
/// in memory only (said on stderr; the server runs either way).
fn job_table(repo: &Repository) -> jobs::JobTable {
    let table = job_store::JobStore::open(repo).and_then(|store| match store {
        Some(store) => jobs::JobTable::with_store(store).map(Some),
        None => Ok(None),
    });
    match table {
        Ok(Some(t)) => t,
        Ok(None) => {
            eprintln!(
                "cairn serve: warning: another cairn serve on this host keeps the job records of this \
                 repository; this server's jobs are kept in memory only"
            );
            jobs::JobTable::default()
        }
        Err(e) => {
            eprintln!(
                "cairn serve: warning: job records unavailable ({e}); jobs are kept in memory only"
            );
            jobs::JobTable::default()
        }
    }
}

/// Runs the server until SIGTERM/SIGINT.
pub fn run(opts: ServeOptions) -> Result<()> {
    check_listen(&opts.listen, opts.tls.is_some(), opts.insecure_http)?;
    // Before anything else: a bad certificate or key stops the command at once.
    let tls = opts
        .tls
        .as_ref()
        .map(tls::TlsFiles::server_config)
        .transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Command(format!("server runtime: {e}")))?;
    let result = rt.block_on(serve(opts, tls));
    // Jobs still running after the grace period are abandoned with the process.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(opts: ServeOptions, tls: Option<Arc<rustls::ServerConfig>>) -> Result<()> {
    let url = opts.repo.clone();
    let (repo, jobs) = tokio::task::spawn_blocking(move || {
        let repo = Repository::open(&url)?;
        let jobs = job_table(&repo);
        Ok::<_, Error>((Arc::new(repo), jobs))
    })
    .await
    .map_err(|e| Error::Command(format!("opening the repository: {e}")))??;
    // Bumped by every change the server makes (jobs ending included): the shared overview is read again.
    let changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let state = Arc::new(AppState {
        auth: auth::Auth::new(repo.clone()),
        repo,
        jobs: Arc::new(jobs.notifying(changes.clone())),
        overview: overview_cache::OverviewCache::new(changes),
        upload_limit: opts.upload_limit,
    });
    // Bound here (not by the server) so that the address, with the port a `:0` got, is printed before the
    // first request can arrive.
    let listener = std::net::TcpListener::bind(opts.listen)
        .map_err(|e| Error::io(opts.listen.to_string(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(opts.listen.to_string(), e))?;
    // Before the address is announced: a supervisor may stop the server as soon as it is up, and that
    // must be a clean stop, not the default action of SIGTERM.
    let sig = |k| signal(k).map_err(|e| Error::Command(format!("signal handler: {e}")));
    let (mut term, mut int) = (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?);
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("cairn serve: listening on {scheme}://{addr}");
    if opts.schedule {
        tokio::spawn(routes::schedule_loop(state.clone(), opts.tick));
    }
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        // Requests under way get the grace period too; a download still streaming after it is cut.
        stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let app = routes::router(state.clone()).into_make_service();
    let server_error = |e: std::io::Error| Error::Command(format!("server: {e}"));
    // HTTP/1.1 only: hyper's HTTP/2 connections have neither the header-read nor an idle timeout, so a
    // client that sent one request could keep its connection (and a descriptor) for ever. A panel and an
    // API on one host lose nothing by it.
    let mut listening = axum_server::from_tcp(listener)
        .map_err(server_error)?
        .http1_only();
    listening
        .http_builder()
        .http1()
        .header_read_timeout(connections::HEADER_READ_TIMEOUT);
    let listening = listening.first_request_timeout(connections::FIRST_REQUEST_TIMEOUT);
    let cap = connections::connection_cap();
    match tls {
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
            let tls = axum_server::tls_rustls::RustlsAcceptor::new(config);
            listening
                .acceptor(connections::LimitedAcceptor::new(tls, cap))
                .handle(handle)
                .serve(app)
                .await
        }
        None => {
            let plain = axum_server::accept::DefaultAcceptor::new();
            listening
                .acceptor(connections::LimitedAcceptor::new(plain, cap))
                .handle(handle)
                .serve(app)
                .await
        }
    }
    .map_err(server_error)?;
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
