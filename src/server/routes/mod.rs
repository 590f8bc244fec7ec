//! The HTTP routes: each checks the caller's role, runs the library call on the blocking pool (or starts a
//! job), and answers JSON with the field names of the CLI's `--json` output. Every mutating route records
//! its call in the run log (see [`super::auth`]).
//!
//! Authentication comes first: every route but `GET /api/v1/health` sits behind [`authenticate`], which
//! answers 401 to a request without a valid token before anything of it (its path parameters, query or
//! body) is looked at, so an anonymous client can neither make the server read a body nor learn from a 400
//! or 404 what exists. The handlers then check the role their action needs.
//!
//! Roles: viewer reads; operator also backs up, checks, pauses, resumes, cancels jobs and downloads
//! snapshots; admin also restores, deletes, changes configuration and uploads. Only `GET /api/v1/health`
//! answers without a token, and says no more than ok or failing. Hooks and notify commands (shell commands
//! the server would run) cannot be set over the API: they are set on the host with `cairn instance set`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::errors::{ApiError, ApiResult};
use super::jobs::{Job, Outcome, Refusal};
use super::{blocking, AppState};
use crate::instance::{self, InstanceConfig};
use crate::instance_restore::{self, RestoreRequest};
use crate::overview::{config_json, Overview};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::runner;
use crate::schedule::Priority;
use crate::tokens::Role;
use crate::Error;

mod instances;
mod jobs;
mod metrics;
mod schedule;
mod snapshots;
mod writes;

use instances::*;
use jobs::*;
use metrics::*;
pub use schedule::schedule_loop;
use snapshots::*;
use writes::*;

type St = State<Arc<AppState>>;

/// Every route of the server.
pub fn router(state: Arc<AppState>) -> Router {
    let authenticated = || middleware::from_fn_with_state(state.clone(), authenticate);
    let api = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/instances", get(list_instances).post(create_instance))
        .route(
            "/instances/{name}",
            get(show_instance)
                .put(update_instance)
                .delete(delete_instance),
        )
        .route("/instances/{name}/pause", post(pause))
        .route("/instances/{name}/resume", post(resume))
        .route("/instances/{name}/snapshots", get(instance_snapshots))
        .route("/instances/{name}/backup", post(backup))
        .route("/instances/{name}/restore", post(restore))
        .route(
            "/instances/{name}/import",
            post(import).layer(DefaultBodyLimit::disable()),
        )
        .route("/instances/{name}/log", get(instance_log))
        .route("/instances/{name}/stats", get(instance_stats))
        .route(
            "/snapshots/{id}",
            get(show_snapshot).delete(forget_snapshot),
        )
        .route("/snapshots/{id}/download", get(download))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(show_job).delete(cancel_job))
        .route("/stats", get(stats))
        .route("/check", post(check))
        .route("/metrics", get(metrics))
        .route_layer(authenticated())
        .route("/health", get(health));
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics).route_layer(authenticated()))
        .merge(super::dashboard::routes())
        .with_state(state)
}

/// Lets through only requests with a valid token (of any role: the handler checks its own), their body
/// bounded in time (see [`super::connections`]).
async fn authenticate(State(st): St, req: Request, next: Next) -> Response {
    if let Err(e) = st.auth.require(req.headers(), Role::Viewer, None).await {
        return e.into_response();
    }
    let (parts, body) = req.into_parts();
    next.run(Request::from_parts(
        parts,
        super::connections::idle_bounded(body),
    ))
    .await
}

/// A job started: 202 with the job as `GET /jobs/{id}` shows it.
fn accepted(job: &Job) -> Response {
    (StatusCode::ACCEPTED, Json(job.to_json())).into_response()
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Busy(m) => ApiError::conflict(m),
        Refusal::Closed => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
    }
}

/// Runs a mutating call's work, records it with its result, and answers.
async fn audited<T>(
    st: &AppState,
    caller: &super::auth::Caller,
    action: &str,
    instance: Option<&str>,
    work: impl std::future::Future<Output = ApiResult<T>>,
) -> ApiResult<T> {
    let r = work.await;
    let (status, detail) = match &r {
        Ok(_) => ("ok", None),
        Err(e) => ("failed", Some(e.message.clone())),
    };
    st.auth
        .audit(caller, action, instance, status, detail)
        .await;
    // Whatever it did (even failing half-way) may show in the overview: read anew before the answer goes.
    st.overview.invalidate();
    r
}

fn checked_name(name: &str) -> ApiResult<()> {
    instance::validate_name(name).map_err(ApiError::from)
}

/// `GET /health`: no token; only whether every instance is fine.
async fn health(State(st): St) -> Response {
    match st.overview.get(&st.repo).await.map(|o| o.healthy) {
        Ok(true) => Json(json!({"status": "ok"})).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failing"})),
        )
            .into_response(),
    }
}

async fn openapi(State(st): St, headers: HeaderMap) -> ApiResult<Response> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response())
}
