//! The HTTP routes: each checks the caller's role, runs the library call on the blocking pool (or starts a
//! job), and answers JSON with the field names of the CLI's `--json` output. Every mutating route records
//! its call in the run log (see [`super::auth`]).
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
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
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

type St = State<Arc<AppState>>;

/// Every route of the server.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/health", get(health))
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
        .route("/metrics", get(metrics));
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics))
        .merge(super::dashboard::routes())
        .with_state(state)
}

// ----- helpers -------------------------------------------------------------------------------------------

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

// ----- health, openapi -----------------------------------------------------------------------------------

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
        include_str!("openapi.json"),
    )
        .into_response())
}

// ----- instances -----------------------------------------------------------------------------------------

async fn list_instances(State(st): St, headers: HeaderMap) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    let o = st.overview.get(&st.repo).await?;
    Ok(Json(json!(o.instances)))
}

async fn show_instance(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    checked_name(&name)?;
    let o = st.overview.get(&st.repo).await?;
    if let Some(v) = o.instances.iter().find(|v| v["instance"] == json!(name)) {
        return Ok(Json(v.clone()));
    }
    // Not in the overview: loading it says why (none of that name, or a revision that cannot be read).
    let repo = st.repo.clone();
    blocking(move || {
        instance::load(&repo, &name)?;
        Err(Error::NotFound(format!("no instance named {name:?}")))
    })
    .await
}

/// Fields the API may not set: identity, and shell commands the server would run.
const FIXED_FIELDS: [&str; 5] = ["name", "created", "pre_hook", "post_hook", "notify"];

/// `cfg` with the fields of `body` laid over it (a new priority first resets schedule and retention to its
/// presets, as `instance set --priority` does).
fn overlay(cfg: &InstanceConfig, body: &Value) -> crate::Result<InstanceConfig> {
    let Value::Object(fields) = body else {
        return Err(Error::Invalid("the body must be a JSON object".into()));
    };
    let mut base = cfg.clone();
    if let Some(p) = fields.get("priority").and_then(Value::as_str) {
        let p: Priority = p.parse()?;
        base.priority = p;
        base.schedule = p.default_schedule().map(str::to_string);
        base.retention = p.default_retention();
    }
    let mut v = serde_json::to_value(&base).map_err(|e| Error::Invalid(e.to_string()))?;
    for (k, val) in fields {
        if k == "instance" || k == "priority" {
            continue;
        }
        if FIXED_FIELDS.contains(&k.as_str()) {
            if k == "name" {
                continue; // the name is the path's
            }
            return Err(Error::Invalid(format!(
                "{k} cannot be set over the API (it is a command the server would run): use `cairn instance set` on the host"
            )));
        }
        v[k] = val.clone();
    }
    serde_json::from_value(v).map_err(|e| Error::Invalid(format!("instance: {e}")))
}

async fn create_instance(
    State(st): St,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> ApiResult<Response> {
    let name = body
        .get("name")
        .or_else(|| body.get("instance"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let caller = st
        .auth
        .require(&headers, Role::Admin, Some(("instance-add", Some(&name))))
        .await?;
    let repo = st.repo.clone();
    let n = name.clone();
    let v = audited(&st, &caller, "instance-add", Some(&name), async move {
        blocking(move || {
            instance::validate_name(&n)?;
            if instance::load_for_update(&repo, &n).is_ok() {
                return Err(Error::Invalid(format!("instance {n} exists (use PUT)")));
            }
            let cfg = overlay(&InstanceConfig::new(&n, Priority::Medium), &body)?;
            instance::save(&repo, &cfg)?;
            Ok(config_json(&cfg))
        })
        .await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn update_instance(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let caller = st
        .auth
        .require(&headers, Role::Admin, Some(("instance-set", Some(&name))))
        .await?;
    let repo = st.repo.clone();
    let n = name.clone();
    let v = audited(&st, &caller, "instance-set", Some(&name), async move {
        blocking(move || {
            let cfg = overlay(&instance::load_for_update(&repo, &n)?, &body)?;
            instance::save(&repo, &cfg)?;
            Ok(config_json(&cfg))
        })
        .await
    })
    .await?;
    Ok(Json(v))
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

async fn delete_instance(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<Value>> {
    let caller = st
        .auth
        .require(
            &headers,
            Role::Admin,
            Some(("instance-remove", Some(&name))),
        )
        .await?;
    let repo = st.repo.clone();
    let n = name.clone();
    let v = audited(&st, &caller, "instance-remove", Some(&name), async move {
        blocking(move || {
            instance::remove(&repo, &n)?;
            let mut forgotten = Vec::new();
            if q.purge {
                let ids: Vec<_> = repo
                    .snapshots()?
                    .into_iter()
                    .filter(|(_, s)| s.instance.as_deref() == Some(n.as_str()))
                    .map(|(id, _)| id)
                    .collect();
                crate::gc::forget_ids(&repo, &ids, false)?;
                forgotten = ids.iter().map(|i| i.to_hex()).collect();
            }
            Ok(json!({"instance": n, "action": "removed", "snapshots_forgotten": forgotten}))
        })
        .await
    })
    .await?;
    Ok(Json(v))
}

async fn set_paused(
    st: Arc<AppState>,
    headers: HeaderMap,
    name: String,
    paused: bool,
) -> ApiResult<Json<Value>> {
    let action = if paused { "pause" } else { "resume" };
    let caller = st
        .auth
        .require(&headers, Role::Operator, Some((action, Some(&name))))
        .await?;
    let repo = st.repo.clone();
    let n = name.clone();
    let v = audited(&st, &caller, action, Some(&name), async move {
        blocking(move || {
            let mut cfg = instance::load_for_update(&repo, &n)?;
            cfg.paused = paused;
            instance::save(&repo, &cfg)?;
            let mut v = config_json(&cfg);
            v["action"] = json!(if paused { "paused" } else { "resumed" });
            Ok(v)
        })
        .await
    })
    .await?;
    Ok(Json(v))
}

async fn pause(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(st, headers, name, true).await
}

async fn resume(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(st, headers, name, false).await
}

async fn instance_snapshots(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    checked_name(&name)?;
    let repo = st.repo.clone();
    let v = blocking(move || {
        instance::load_for_update(&repo, &name)?;
        Ok(repo
            .snapshots()?
            .iter()
            .filter(|(_, s)| s.instance.as_deref() == Some(name.as_str()))
            .map(|(id, s)| s.to_json(id))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(json!(v)))
}

async fn instance_log(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    checked_name(&name)?;
    let repo = st.repo.clone();
    let v = blocking(move || instance::runs(&repo, Some(&name))).await?;
    Ok(Json(json!(v)))
}

async fn instance_stats(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    checked_name(&name)?;
    let repo = st.repo.clone();
    let v = blocking(move || {
        instance::load_for_update(&repo, &name)?;
        Ok(Overview::read(&repo)?.stats_of(&name))
    })
    .await?;
    Ok(Json(v))
}

async fn stats(State(st): St, headers: HeaderMap) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    let repo = st.repo.clone();
    let v = blocking(move || {
        let o = Overview::read(&repo)?;
        let rows: Vec<_> = o.configs.iter().map(|c| o.stats_of(&c.name)).collect();
        let pack_bytes: u64 = repo.pack_files()?.iter().map(|(_, n)| n).sum();
        Ok(json!({
            "instances": rows,
            "totals": {
                "snapshot_count": o.snapshots.len(),
                "logical_bytes": o.snapshots.iter().map(|(_, s)| s.summary.bytes_total).sum::<u64>(),
                "stored_bytes": pack_bytes,
            },
            // The dashboard's chart of repository size over time.
            "size_history": o.size_history(),
        }))
    })
    .await?;
    Ok(Json(v))
}

// ----- jobs that write ----------------------------------------------------------------------------------

/// The backup of one instance as a job's work (also what the schedule starts).
fn backup_work(
    repo: Arc<Repository>,
    name: String,
    housekeeping: bool,
) -> impl FnOnce(&Arc<Job>, Progress) -> crate::Result<Outcome> + Send + 'static {
    move |job, progress| {
        progress.step("reading the configuration");
        let cfg = match instance::load(&repo, &name) {
            Ok(c) => c,
            Err(e) => {
                runner::record_refused(&repo, &name, &e)?;
                return Err(e);
            }
        };
        // The last snapshot's size is the best estimate of this one's, for a percentage.
        if let Some((_, s)) = repo
            .snapshots()?
            .into_iter()
            .rev()
            .find(|(_, s)| s.instance.as_deref() == Some(name.as_str()))
        {
            job.expect_bytes(s.summary.bytes_total);
        }
        progress.step("backing up");
        let r = runner::backup_instance(
            &repo,
            &cfg,
            None,
            &instance_restore::db_stream,
            progress.clone(),
        )?;
        if housekeeping {
            progress.step("retention");
            if let Err(e) = runner::housekeeping(&repo, &cfg) {
                eprintln!("cairn serve: {name}: retention/prune skipped: {e}");
            }
        }
        Ok(Outcome {
            snapshot_id: Some(r.snapshot_id.to_hex()),
            detail: Some(
                json!({"partial": r.snapshot.partial, "summary": r.snapshot.summary, "warnings": r.warnings}),
            ),
            ..Outcome::default()
        })
    }
}

async fn backup(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let caller = st
        .auth
        .require(&headers, Role::Operator, Some(("backup", Some(&name))))
        .await?;
    let repo = st.repo.clone();
    let jobs = st.jobs.clone();
    let n = name.clone();
    audited(&st, &caller, "backup", Some(&name), async move {
        let r2 = repo.clone();
        let n2 = n.clone();
        blocking(move || instance::load(&r2, &n2).map(|_| ())).await?;
        let job = jobs
            .submit("backup", Some(&n), backup_work(repo, n.clone(), false))
            .map_err(refused)?;
        Ok(accepted(&job))
    })
    .await
}

/// `POST /instances/{name}/restore`'s body.
#[derive(Deserialize, Default)]
struct RestoreBody {
    snapshot: Option<String>,
    at: Option<String>,
    #[serde(default)]
    confirm: bool,
    restore_db: Option<bool>,
    restore_files: Option<bool>,
    pg_target: Option<String>,
    #[serde(default)]
    in_place: bool,
    target: Option<std::path::PathBuf>,
    #[serde(default)]
    overwrite: bool,
    #[serde(default)]
    delete: bool,
    #[serde(default)]
    replace: bool,
}

impl RestoreBody {
    fn request(self) -> ApiResult<RestoreRequest> {
        if !self.confirm {
            return Err(ApiError::bad_request(
                "a restore replaces data: send \"confirm\": true to go ahead",
            ));
        }
        let (files, db) = (
            self.restore_files.unwrap_or(true),
            self.restore_db.unwrap_or(true),
        );
        if self.in_place && !(files && db) {
            return Err(ApiError::bad_request(
                "an in-place restore restores the files and the database together; restore one of them with target or pg_target",
            ));
        }
        let at = self
            .at
            .as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| ApiError::bad_request(format!("at: want RFC 3339 ({e})")))
            })
            .transpose()?;
        Ok(RestoreRequest {
            snapshot: self.snapshot,
            at,
            target: self.target.filter(|_| files),
            pg_target: self.pg_target.filter(|_| db),
            in_place: self.in_place,
            overwrite: self.overwrite,
            delete: self.delete,
            replace: self.replace,
            ..RestoreRequest::default()
        })
    }
}

async fn restore(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<RestoreBody>,
) -> ApiResult<Response> {
    let caller = st
        .auth
        .require(&headers, Role::Admin, Some(("restore", Some(&name))))
        .await?;
    let repo = st.repo.clone();
    let jobs = st.jobs.clone();
    let n = name.clone();
    audited(&st, &caller, "restore", Some(&name), async move {
        checked_name(&n)?;
        let req = body.request()?;
        let r2 = repo.clone();
        let n2 = n.clone();
        blocking(move || instance::load(&r2, &n2).map(|_| ())).await?;
        let n3 = n.clone();
        let job = jobs
            .submit("restore", Some(&n), move |_job, progress| {
                let out = instance_restore::restore_instance(&repo, &n3, req, &progress)?;
                Ok(Outcome {
                    snapshot_id: Some(out.snapshot_id.clone()),
                    safety_snapshot_id: out.safety_snapshot_id.clone(),
                    detail: serde_json::to_value(&out).ok(),
                })
            })
            .map_err(refused)?;
        Ok(accepted(&job))
    })
    .await
}

/// Streams the multipart field `archive` (or `file`) into a private temporary file, at most `limit`
/// bytes (413 beyond, the partial file removed); returns it and the `time` field.
async fn receive_upload(
    mut form: Multipart,
    limit: u64,
) -> ApiResult<(tempfile::TempPath, Option<String>)> {
    let bad =
        |e: axum::extract::multipart::MultipartError| ApiError::new(e.status(), e.body_text());
    let mut time = None;
    let mut saved = None;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        match field.name().unwrap_or_default() {
            "time" => time = Some(field.text().await.map_err(bad)?),
            "archive" | "file" => {
                let tmp = tokio::task::spawn_blocking(|| {
                    tempfile::Builder::new().prefix("cairn-upload-").tempfile()
                })
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(format!("temporary file: {e}")))?;
                let (file, path) = tmp.into_parts();
                let mut out = tokio::fs::File::from_std(file);
                let mut size = 0u64;
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "the upload is larger than the server's limit of {limit} bytes"
                            ),
                        ));
                    }
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
                }
                out.flush()
                    .await
                    .map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
                saved = Some(path);
            }
            _ => {}
        }
    }
    let path = saved.ok_or_else(|| ApiError::bad_request("no `archive` file in the form"))?;
    Ok((path, time))
}

async fn import(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Multipart,
) -> ApiResult<Response> {
    let caller = st
        .auth
        .require(&headers, Role::Admin, Some(("import", Some(&name))))
        .await?;
    let repo = st.repo.clone();
    let jobs = st.jobs.clone();
    let limit = st.upload_limit;
    let n = name.clone();
    audited(&st, &caller, "import", Some(&name), async move {
        checked_name(&n)?;
        let (path, time) = receive_upload(form, limit).await?;
        let time =
            time.ok_or_else(|| ApiError::bad_request("give the archive's `time` (RFC 3339)"))?;
        let time = chrono::DateTime::parse_from_rfc3339(time.trim())
            .map_err(|e| ApiError::bad_request(format!("time: want RFC 3339 ({e})")))?;
        let n3 = n.clone();
        let job = jobs
            .submit("import", Some(&n), move |_job, progress| {
                progress.step("importing");
                let report = crate::archive::import_archive(&repo, &path, Some(n3), time)?;
                drop(path); // the upload is deleted as soon as it is imported
                let id = report.backup.snapshot_id;
                if !report.skipped.is_empty() {
                    // An upload is taken whole or not at all: what the archive tried to place outside its
                    // root (or could not be kept) makes it rejected, and its snapshot goes.
                    crate::gc::forget_ids(&repo, &[id], false)?;
                    return Err(Error::Invalid(format!(
                        "archive rejected: {}",
                        report.skipped.join("; ")
                    )));
                }
                Ok(Outcome {
                    snapshot_id: Some(id.to_hex()),
                    ..Outcome::default()
                })
            })
            .map_err(refused)?;
        Ok(accepted(&job))
    })
    .await
}

#[derive(Deserialize, Default)]
struct CheckBody {
    /// Read every pack too (default: structure only).
    #[serde(default)]
    read_data: bool,
}

async fn check(
    State(st): St,
    headers: HeaderMap,
    body: Option<Json<CheckBody>>,
) -> ApiResult<Response> {
    let caller = st
        .auth
        .require(&headers, Role::Operator, Some(("check", None)))
        .await?;
    let repo = st.repo.clone();
    let jobs = st.jobs.clone();
    let read_data = body.map(|b| b.0.read_data).unwrap_or(false);
    audited(&st, &caller, "check", None, async move {
        let job = jobs
            .submit("check", None, move |_job, progress| {
                progress.step("checking");
                let mode = if read_data {
                    crate::check::ReadData::All
                } else {
                    crate::check::ReadData::None
                };
                let report = crate::check::check(&repo, mode, &progress)?;
                let ok = report.errors.is_empty() && report.read_errors.is_empty();
                let detail = serde_json::to_value(&report).ok();
                if !ok {
                    return Err(Error::Invalid(format!(
                        "check found problems: {}",
                        report
                            .errors
                            .iter()
                            .chain(&report.read_errors)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    )));
                }
                Ok(Outcome {
                    detail,
                    ..Outcome::default()
                })
            })
            .map_err(refused)?;
        Ok(accepted(&job))
    })
    .await
}

// ----- snapshots -----------------------------------------------------------------------------------------

async fn show_snapshot(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    let repo = st.repo.clone();
    let v = blocking(move || {
        let (id, s) = repo.resolve_snapshot(&id, None)?;
        Ok(s.to_json(&id))
    })
    .await?;
    Ok(Json(v))
}

async fn forget_snapshot(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let caller = st
        .auth
        .require(&headers, Role::Admin, Some(("forget", None)))
        .await?;
    let repo = st.repo.clone();
    let target = id.clone();
    audited(
        &st,
        &caller,
        &format!("forget {target}"),
        None,
        async move {
            let v = blocking(move || {
                if id == "latest" {
                    return Err(Error::Invalid(
                        "forget takes a snapshot id, not `latest`".into(),
                    ));
                }
                let (id, _) = repo.resolve_snapshot(&id, None)?;
                crate::gc::forget_ids(&repo, &[id], false)?;
                Ok(json!({"removed": 1, "snapshots": [id.to_hex()]}))
            })
            .await?;
            Ok(Json(v))
        },
    )
    .await
}

#[derive(Deserialize)]
struct DownloadQuery {
    format: Option<String>,
}

/// A `Write` that hands its bytes to the response body; a client that went away makes it fail, which
/// stops the export (its read lock and open files go with it). So does a client that stays connected but
/// takes nothing for [`STALLED_AFTER`]: it would otherwise hold the lock and a blocking thread forever.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
    /// The runtime, to wait for room in the channel with a deadline (from a blocking-pool thread).
    rt: tokio::runtime::Handle,
}

const CHUNK: usize = 256 * 1024;

/// A download whose client has taken nothing for this long is abandoned.
const STALLED_AFTER: Duration = Duration::from_secs(300);

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let sent = self
            .rt
            .block_on(tokio::time::timeout(STALLED_AFTER, self.tx.send(Ok(chunk))));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

async fn download(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
) -> ApiResult<Response> {
    st.auth.require(&headers, Role::Operator, None).await?;
    let format: crate::export::ExportFormat = q.format.as_deref().unwrap_or("tar").parse()?;
    let (ext, mime) = match format {
        crate::export::ExportFormat::Tar | crate::export::ExportFormat::OdooTar => {
            ("tar", "application/x-tar")
        }
        crate::export::ExportFormat::Zip | crate::export::ExportFormat::OdooZip => {
            ("zip", "application/zip")
        }
    };
    let opts = crate::export::ExportOptions {
        format,
        filestore: None,
    };
    let repo = st.repo.clone();
    // Resolved before the answer starts, so that a wrong id is a 404, not a cut-off download.
    let r2 = repo.clone();
    let (id, snap) = blocking(move || crate::latest::for_export(&r2, &id, None, format)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<std::result::Result<(), String>>();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            rt,
        };
        let r = crate::lock::acquire_reader_on(&repo, "export").and_then(|_lock| {
            crate::export::export(&repo, &snap, &opts, &mut out)?;
            out.flush().map_err(|e| Error::io("download", e))
        });
        let _ = done_tx.send(r.map_err(|e| e.to_string()));
    });
    let stream = futures_util::stream::unfold((rx, Some(done_rx)), |(mut rx, done)| async move {
        if let Some(item) = rx.recv().await {
            return Some((item, (rx, done)));
        }
        // The export has ended. Unless it ended well, an error item makes the server cut the response: the
        // client sees a broken download, never a complete-looking one (told through this separate channel,
        // so that it arrives even when the data channel is full).
        let failure = match done?.await {
            Ok(Ok(())) => return None,
            Ok(Err(m)) => m,
            Err(_) => "the export stopped".to_string(),
        };
        Some((Err(std::io::Error::other(failure)), (rx, None)))
    });
    let disposition = format!("attachment; filename=\"{}.{ext}\"", id.short());
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

// ----- jobs ----------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct JobsQuery {
    status: Option<String>,
    instance: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(
    State(st): St,
    headers: HeaderMap,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    let jobs = st.jobs.list(
        q.status.as_deref(),
        q.instance.as_deref(),
        q.limit.unwrap_or(100),
    );
    Ok(Json(json!(jobs
        .iter()
        .map(|j| j.to_json())
        .collect::<Vec<_>>())))
}

async fn show_job(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    let job = st
        .jobs
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    Ok(Json(job.to_json()))
}

async fn cancel_job(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let caller = st
        .auth
        .require(&headers, Role::Operator, Some(("cancel", None)))
        .await?;
    let jobs = st.jobs.clone();
    audited(&st, &caller, &format!("cancel {id}"), None, async move {
        let job = jobs
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        if !jobs.cancel(&job) {
            return Err(ApiError::conflict(format!("job {id} has already finished")));
        }
        Ok((StatusCode::ACCEPTED, Json(job.to_json())).into_response())
    })
    .await
}

// ----- metrics -------------------------------------------------------------------------------------------

/// Prometheus text format: per instance, the last successful backup's time, duration and bytes added,
/// stored bytes, dedup ratio and failed runs; the repository's pack bytes.
async fn metrics(State(st): St, headers: HeaderMap) -> ApiResult<Response> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    let repo = st.repo.clone();
    let text = blocking(move || {
        let o = Overview::read(&repo)?;
        let pack_bytes: u64 = repo.pack_files()?.iter().map(|(_, n)| n).sum();
        Ok(prometheus_text(&o, pack_bytes))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

fn prometheus_text(o: &Overview, pack_bytes: u64) -> String {
    let mut lines: HashMap<&str, (&str, Vec<String>)> = HashMap::new();
    let mut add = |metric: &'static str, help: &'static str, instance: &str, value: String| {
        lines
            .entry(metric)
            .or_insert_with(|| (help, Vec::new()))
            .1
            .push(format!("{metric}{{instance=\"{instance}\"}} {value}"));
    };
    for c in &o.configs {
        let name = c.name.as_str();
        let backups: Vec<_> = o
            .runs
            .iter()
            .filter(|r| r.instance.as_deref() == Some(name) && r.kind == "backup")
            .collect();
        if let Some(r) = backups.iter().rev().find(|r| r.status == "ok") {
            let end = r.end.unwrap_or(r.start);
            add(
                "cairn_last_success_timestamp_seconds",
                "End of the last successful backup.",
                name,
                end.timestamp().to_string(),
            );
            let secs = (end - r.start).num_milliseconds() as f64 / 1000.0;
            add(
                "cairn_last_backup_duration_seconds",
                "Duration of the last successful backup.",
                name,
                format!("{secs}"),
            );
            add(
                "cairn_last_backup_bytes_added",
                "Bytes the last successful backup added.",
                name,
                r.bytes.unwrap_or(0).to_string(),
            );
        }
        let failures = backups.iter().filter(|r| r.status == "failed").count();
        add(
            "cairn_backup_failures_total",
            "Failed backups in the run log.",
            name,
            failures.to_string(),
        );
        let s = o.stats_of(name);
        add(
            "cairn_instance_stored_bytes",
            "Bytes the instance's snapshots added.",
            name,
            s["stored_bytes"].to_string(),
        );
        add(
            "cairn_instance_dedup_ratio",
            "Logical over stored bytes.",
            name,
            s["dedup_ratio"].to_string(),
        );
    }
    let mut names: Vec<_> = lines.keys().copied().collect();
    names.sort_unstable();
    let mut out = String::new();
    for n in names {
        let (help, rows) = &lines[n];
        out.push_str(&format!("# HELP {n} {help}\n# TYPE {n} gauge\n"));
        for r in rows {
            out.push_str(r);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "# HELP cairn_repository_stored_bytes Bytes in pack files.\n# TYPE cairn_repository_stored_bytes gauge\ncairn_repository_stored_bytes {pack_bytes}\n"
    ));
    out
}

// ----- schedule ------------------------------------------------------------------------------------------

/// A failed scheduled instance is retried after this long, not at every tick (as `daemon`).
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// The instance schedules of `daemon`, as jobs: every tick, each due instance without a running job gets a
/// backup job (then retention and prune).
pub async fn schedule_loop(st: Arc<AppState>, tick: Duration) {
    let mut failed_at: HashMap<String, Instant> = HashMap::new();
    let mut started: HashMap<String, Arc<Job>> = HashMap::new();
    loop {
        for (name, job) in std::mem::take(&mut started) {
            match job.status() {
                super::jobs::Status::Failed => {
                    failed_at.insert(name, Instant::now());
                }
                super::jobs::Status::Completed | super::jobs::Status::Cancelled => {}
                _ => {
                    started.insert(name, job);
                }
            }
        }
        let repo = st.repo.clone();
        let due = blocking(move || {
            let states = runner::schedule_states(&repo)?;
            Ok(crate::schedule::due_in_order(&states, Utc::now()))
        })
        .await;
        match due {
            Ok(names) => {
                for name in names {
                    let recent = failed_at
                        .get(&name)
                        .is_some_and(|t| t.elapsed() < RETRY_AFTER);
                    if recent || started.contains_key(&name) {
                        continue;
                    }
                    let work = backup_work(st.repo.clone(), name.clone(), true);
                    if let Ok(job) = st.jobs.submit("backup", Some(&name), work) {
                        eprintln!("cairn serve: {name}: scheduled backup started ({})", job.id);
                        started.insert(name, job);
                    }
                }
            }
            Err(e) => eprintln!("cairn serve: schedule: {}", e.message),
        }
        tokio::time::sleep(tick).await;
    }
}
