//! Jobs: list, show and cancel.

use super::*;

#[derive(Deserialize)]
pub(super) struct JobsQuery {
    status: Option<String>,
    instance: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list_jobs(
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

pub(super) async fn show_job(
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

pub(super) async fn cancel_job(
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
