//! Instances: list, show, create, change, delete, pause and resume; an instance's snapshots, run log and
//! statistics, and the repository's.

use super::*;
use crate::instance::PriorityChange;

pub(super) async fn list_instances(State(st): St, headers: HeaderMap) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    let o = st.overview.get(&st.repo).await?;
    Ok(Json(json!(o.instances)))
}

pub(super) async fn show_instance(
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

/// A read of one instance's: the caller at least a viewer and the name valid, then `read` on the blocking
/// pool.
async fn read_instance<T: Send + 'static>(
    st: &AppState,
    headers: &HeaderMap,
    name: String,
    read: impl FnOnce(&Repository, &str) -> crate::Result<T> + Send + 'static,
) -> ApiResult<T> {
    st.auth.require(headers, Role::Viewer, None).await?;
    checked_name(&name)?;
    let repo = st.repo.clone();
    blocking(move || read(&repo, &name)).await
}

/// A change to one instance, recorded in the run log as `action`: the caller's role checked against
/// `need` (a refusal recorded as denied), then `change` on the blocking pool, recorded with its result.
async fn change_instance<T: Send + 'static>(
    st: &AppState,
    headers: &HeaderMap,
    need: Role,
    action: &str,
    name: &str,
    change: impl FnOnce(&Repository, &str) -> crate::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let caller = st
        .auth
        .require(headers, need, Some((action, Some(name))))
        .await?;
    let (repo, n) = (st.repo.clone(), name.to_string());
    audited(
        st,
        &caller,
        action,
        Some(name),
        blocking(move || change(&repo, &n)),
    )
    .await
}

/// Fields the API may not set: identity, and shell commands the server would run.
const FIXED_FIELDS: [&str; 5] = ["name", "created", "pre_hook", "post_hook", "notify"];

/// `cfg` with the fields of `body` laid over it. A new priority first moves schedule and retention to its
/// presets where they were the old priority's, keeping custom ones, as `instance set --priority` does
/// ([`InstanceConfig::set_priority`]); what it did is returned, less the fields `body` sets itself.
pub(super) fn overlay(
    cfg: &InstanceConfig,
    body: &Value,
) -> crate::Result<(InstanceConfig, Option<PriorityChange>)> {
    let Value::Object(fields) = body else {
        return Err(Error::Invalid("the body must be a JSON object".into()));
    };
    let mut base = cfg.clone();
    let mut change = match fields.get("priority").and_then(Value::as_str) {
        Some(p) => Some(base.set_priority(p.parse::<Priority>()?)),
        None => None,
    };
    if let Some(c) = change.as_mut() {
        c.changed.retain(|w| !fields.contains_key(*w));
        c.kept.retain(|w| !fields.contains_key(*w));
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
    let cfg = serde_json::from_value(v).map_err(|e| Error::Invalid(format!("instance: {e}")))?;
    Ok((cfg, change))
}

pub(super) async fn create_instance(
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
    let v = change_instance(
        &st,
        &headers,
        Role::Admin,
        "instance-add",
        &name,
        move |repo, n| {
            instance::validate_name(n)?;
            if instance::load_for_update(repo, n).is_ok() {
                return Err(Error::Invalid(format!("instance {n} exists (use PUT)")));
            }
            let (cfg, _) = overlay(&InstanceConfig::new(n, Priority::Medium), &body)?;
            instance::save(repo, &cfg)?;
            Ok(config_json(&cfg))
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub(super) async fn update_instance(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let v = change_instance(
        &st,
        &headers,
        Role::Admin,
        "instance-set",
        &name,
        move |repo, n| {
            let (cfg, change) = overlay(&instance::load_for_update(repo, n)?, &body)?;
            instance::save(repo, &cfg)?;
            let mut v = config_json(&cfg);
            if let Some(c) = change {
                // Which of schedule and retention followed the new priority, which were kept as custom.
                v["priority_change"] = json!(c);
            }
            Ok(v)
        },
    )
    .await?;
    Ok(Json(v))
}

#[derive(Deserialize)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

pub(super) async fn delete_instance(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<Value>> {
    let v = change_instance(
        &st,
        &headers,
        Role::Admin,
        "instance-remove",
        &name,
        move |repo, n| {
            instance::remove(repo, n)?;
            let mut forgotten = Vec::new();
            if q.purge {
                let ids: Vec<_> = repo
                    .snapshots()?
                    .into_iter()
                    .filter(|(_, s)| s.instance.as_deref() == Some(n))
                    .map(|(id, _)| id)
                    .collect();
                crate::gc::forget_ids(repo, &ids, false)?;
                forgotten = ids.iter().map(|i| i.to_hex()).collect();
            }
            Ok(json!({"instance": n, "action": "removed", "snapshots_forgotten": forgotten}))
        },
    )
    .await?;
    Ok(Json(v))
}

pub(super) async fn set_paused(
    st: Arc<AppState>,
    headers: HeaderMap,
    name: String,
    paused: bool,
) -> ApiResult<Json<Value>> {
    let action = if paused { "pause" } else { "resume" };
    let v = change_instance(
        &st,
        &headers,
        Role::Operator,
        action,
        &name,
        move |repo, n| {
            let mut cfg = instance::load_for_update(repo, n)?;
            cfg.paused = paused;
            instance::save(repo, &cfg)?;
            let mut v = config_json(&cfg);
            v["action"] = json!(if paused { "paused" } else { "resumed" });
            Ok(v)
        },
    )
    .await?;
    Ok(Json(v))
}

pub(super) async fn pause(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(st, headers, name, true).await
}

pub(super) async fn resume(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(st, headers, name, false).await
}

pub(super) async fn instance_snapshots(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = read_instance(&st, &headers, name, |repo, name| {
        instance::load_for_update(repo, name)?;
        Ok(repo
            .snapshots()?
            .iter()
            .filter(|(_, s)| s.instance.as_deref() == Some(name))
            .map(|(id, s)| s.to_json(id))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(json!(v)))
}

pub(super) async fn instance_log(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = read_instance(&st, &headers, name, |repo, name| {
        instance::runs(repo, Some(name))
    })
    .await?;
    Ok(Json(json!(v)))
}

pub(super) async fn instance_stats(
    State(st): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = read_instance(&st, &headers, name, |repo, name| {
        instance::load_for_update(repo, name)?;
        Ok(Overview::read(repo)?.stats_of(name))
    })
    .await?;
    Ok(Json(v))
}

pub(super) async fn stats(State(st): St, headers: HeaderMap) -> ApiResult<Json<Value>> {
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
