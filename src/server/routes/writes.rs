//! The routes that start jobs which write: backup, restore (with its safety snapshot), the upload of a
//! legacy archive, and check.

use super::*;

/// The backup of one instance as a job's work (also what the schedule starts, with `scheduled`: the time
/// its tick found the instance due; then retention and prune follow), under the instance's run lock. Held
/// elsewhere, a backup-now job fails as locked, naming the holder; a scheduled one completes with
/// `{"skipped": holder}` and no snapshot (as `daemon` skips it), so the schedule tries it again at its next
/// tick instead of holding it back as failed. A scheduled one that finds, under the lock, that another run
/// of the instance ended since its tick ([`runner::enter_scheduled_run`]) completes with
/// `{"already_run": what}` and no snapshot; one paused, made manual or removed since, with
/// `{"withdrawn": which}`.
pub(super) fn backup_work(
    repo: Arc<Repository>,
    name: String,
    scheduled: Option<chrono::DateTime<Utc>>,
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
        let (_run, cfg) = match scheduled {
            Some(decided) => {
                match runner::enter_scheduled_run(&repo, &name, decided, "serve (schedule)")? {
                    runner::RunGate::Go(guard, cfg) => (guard, *cfg),
                    runner::RunGate::Held(holder) => {
                        eprintln!("cairn serve: {name}: scheduled backup skipped: {holder}");
                        return Ok(Outcome {
                            detail: Some(json!({ "skipped": holder })),
                            ..Outcome::default()
                        });
                    }
                    runner::RunGate::AlreadyRun(what) => {
                        eprintln!(
                            "cairn serve: {name}: scheduled backup skipped: already run since it was found due ({what})"
                        );
                        return Ok(Outcome {
                            detail: Some(json!({ "already_run": what })),
                            ..Outcome::default()
                        });
                    }
                    runner::RunGate::Withdrawn(why) => {
                        eprintln!(
                            "cairn serve: {name}: scheduled backup skipped: {why} since it was found due"
                        );
                        return Ok(Outcome {
                            detail: Some(json!({ "withdrawn": why })),
                            ..Outcome::default()
                        });
                    }
                }
            }
            None => (
                crate::lock::acquire_instance(repo.backend(), &name, "serve (backup now)")?,
                cfg,
            ),
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
        if scheduled.is_some() {
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

pub(super) async fn backup(
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
            .submit("backup", Some(&n), backup_work(repo, n.clone(), None))
            .map_err(refused)?;
        Ok(accepted(&job))
    })
    .await
}

/// `POST /instances/{name}/restore`'s body.
#[derive(Deserialize, Default)]
pub(super) struct RestoreBody {
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
        // A relative target would be resolved against the server's working directory, which the caller
        // neither knows nor chose.
        if let Some(t) = self.target.as_ref().filter(|t| !t.is_absolute()) {
            return Err(ApiError::bad_request(format!(
                "target {:?}: give an absolute path (a relative one would land under the server's working \
                 directory)",
                t.display().to_string()
            )));
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

pub(super) async fn restore(
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

/// Largest text field of an upload form (`time`).
const TEXT_FIELD_MAX: usize = 1024;

/// An upload archive may expand, when extracted, to this many times its size...
const EXPANSION: u64 = 100;
/// ...or to this many bytes if that is more (a small archive of a sparse database).
const EXPANSION_FLOOR: u64 = 64 << 20;

/// What the extraction of an upload of `size` bytes may write: beyond, it is a decompression bomb.
fn extraction_budget(size: u64) -> u64 {
    size.saturating_mul(EXPANSION).max(EXPANSION_FLOOR)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(e.status(), e.body_text())
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload is larger than the server's limit of {limit} bytes"),
    )
}

/// A text field of the form, at most [`TEXT_FIELD_MAX`] bytes (413 beyond), counted into `total`.
async fn small_text(
    field: &mut axum::extract::multipart::Field<'_>,
    total: &mut u64,
    limit: u64,
) -> ApiResult<String> {
    let name = field.name().unwrap_or_default().to_string();
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        *total += chunk.len() as u64;
        if *total > limit {
            return Err(too_large(limit));
        }
        if text.len() + chunk.len() > TEXT_FIELD_MAX {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the form field `{name}` is longer than {TEXT_FIELD_MAX} bytes"),
            ));
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text).map_err(|_| ApiError::bad_request(format!("`{name}` is not UTF-8")))
}

/// Streams the multipart field `archive` (or `file`) into a private temporary file; the whole form (every
/// field, whatever its name) may hold at most `limit` bytes (413 beyond, the partial file removed). Returns
/// the file and the `time` field.
pub(super) async fn receive_upload(
    mut form: Multipart,
    limit: u64,
) -> ApiResult<(tempfile::TempPath, Option<String>)> {
    let bad = multipart_error;
    let mut time = None;
    let mut saved = None;
    let mut total = 0u64;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        match field.name().unwrap_or_default() {
            "time" => time = Some(small_text(&mut field, &mut total, limit).await?),
            "archive" | "file" => {
                let tmp = tokio::task::spawn_blocking(|| {
                    tempfile::Builder::new().prefix("cairn-upload-").tempfile()
                })
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(format!("temporary file: {e}")))?;
                let (file, path) = tmp.into_parts();
                let mut out = tokio::fs::File::from_std(file);
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    total += chunk.len() as u64;
                    if total > limit {
                        return Err(too_large(limit));
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
            // Read through (a form is one stream), and counted.
            _ => {
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    total += chunk.len() as u64;
                    if total > limit {
                        return Err(too_large(limit));
                    }
                }
            }
        }
    }
    let path = saved.ok_or_else(|| ApiError::bad_request("no `archive` file in the form"))?;
    Ok((path, time))
}

pub(super) async fn import(
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
                let size = std::fs::metadata(&path)
                    .map_err(|e| Error::io(&path, e))?
                    .len();
                let report = crate::archive::import_archive_within(
                    &repo,
                    &path,
                    Some(n3),
                    time,
                    Some(extraction_budget(size)),
                )?;
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
pub(super) struct CheckBody {
    /// Read every pack too (default: structure only).
    #[serde(default)]
    read_data: bool,
}

pub(super) async fn check(
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
