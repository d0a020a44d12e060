//! The daemon's JSON API under `/api/v1`: policies with their direction,
//! last pass, lag and failing tags; executions and their tasks with the
//! exact errors; and the operator's levers (retry, cancel, run now).
//! Described by the OpenAPI document at `/api/openapi.json`.
//!
//! Reads only the state database and the loaded policy set, never a
//! registry; actions are requests to the scheduler or flags in the state
//! database, never a replication run inside a handler. Every route checks
//! its token first (see [`super::auth`]).

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Shared;
use crate::policy::Policy;
use crate::state::StateError;
use crate::state::jobs::{CancelOutcome, ExecutionFilter, ExecutionRow};
use crate::state::overview::{FailingTag, Health};
use crate::state::pass_errors::PassError;

/// The OpenAPI 3 document describing every route below.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/policies", get(list_policies))
        .route("/api/v1/policies/{name}", get(show_policy))
        .route("/api/v1/policies/{name}/run", post(run_now))
        .route("/api/v1/policies/{name}/retry", post(retry_policy))
        .route("/api/v1/executions", get(list_executions))
        .route("/api/v1/executions/{id}", get(show_execution))
        .route("/api/v1/executions/{id}/tasks", get(list_tasks))
        .route("/api/v1/executions/{id}/retry", post(retry_execution))
        .route("/api/v1/executions/{id}/cancel", post(cancel_execution))
}

/// A JSON error body with `code`.
fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn state_error(e: StateError) -> Response {
    tracing::warn!(error = %e, "API: state database error");
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn openapi(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(d) = shared.tokens.check_read(&headers) {
        return d.json();
    }
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A policy as the API and the status page show it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    pub name: String,
    pub source: String,
    pub destinations: Vec<String>,
    pub trigger: String,
    /// `forward`, or `reversed` after a failover.
    pub direction: String,
    /// When a pass last checked or copied (Unix ms); `null`: never ran.
    pub last_pass_at: Option<i64>,
    /// Age of the oldest change not replicated yet (0: caught up; `null`: never ran).
    pub lag_seconds: Option<f64>,
    pub outstanding_tags: i64,
    pub failing_tags: usize,
    /// The health streak as the notifications saw it (`null` before the first pass).
    pub health: Option<Health>,
    /// The latest execution of each of its jobs.
    pub latest_executions: Vec<ExecutionRow>,
    /// The last refusal or pass-level error at each destination, newest
    /// first, with its time — also for passes refused before they started
    /// (no execution).
    pub last_errors: Vec<PassError>,
}

/// A policy with its failing tags.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyDetail {
    #[serde(flatten)]
    pub policy: PolicyView,
    pub failing: Vec<FailingTag>,
}

/// Everything shown about `policy`, from the state database only.
pub async fn policy_detail(shared: &Shared, policy: &Policy) -> Result<PolicyDetail, StateError> {
    let lag = shared.state.replication_lag(&policy.name).await?;
    let failing = shared.state.failing_tags_of(&policy.name, &lag.direction).await?;
    let view = PolicyView {
        name: policy.name.clone(),
        source: policy.source.url.to_string(),
        destinations: policy.destinations.iter().map(|d| d.url().to_string()).collect(),
        trigger: policy.trigger.to_string(),
        direction: lag.direction.clone(),
        last_pass_at: lag.last_pass_at,
        lag_seconds: lag.lag_seconds,
        outstanding_tags: lag.outstanding_tags,
        failing_tags: failing.len(),
        health: shared.state.health(&policy.name).await?,
        latest_executions: shared.state.latest_executions_of(&policy.name).await?,
        last_errors: shared.state.pass_errors(Some(&policy.name)).await?,
    };
    Ok(PolicyDetail { policy: view, failing })
}

async fn list_policies(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(d) = shared.tokens.check_read(&headers) {
        return d.json();
    }
    let mut out = Vec::new();
    for p in &shared.policies().policies {
        match policy_detail(&shared, p).await {
            Ok(d) => out.push(d.policy),
            Err(e) => return state_error(e),
        }
    }
    axum::Json(out).into_response()
}

async fn show_policy(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(d) = shared.tokens.check_read(&headers) {
        return d.json();
    }
    let set = shared.policies();
    let Some(policy) = set.get(&name) else { return error(StatusCode::NOT_FOUND, format!("no policy named {name:?}")) };
    match policy_detail(&shared, policy).await {
        Ok(d) => axum::Json(d).into_response(),
        Err(e) => state_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    /// Source repositories (relative to the source prefix); all when absent.
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

async fn run_now(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    if let Err(d) = shared.tokens.check_admin(&headers) {
        return d.json();
    }
    if shared.policies().get(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no policy named {name:?}"));
    }
    let request: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
        }
    };
    let repos = match request.repositories {
        Some(list) if list.is_empty() => return error(StatusCode::BAD_REQUEST, "repositories: give at least one, or leave it out for a full pass"),
        Some(list) => {
            let mut set = HashSet::new();
            for r in list {
                let r = r.trim_matches('/').to_string();
                if let Err(e) = r.parse::<crate::registry::RepoName>() {
                    return error(StatusCode::BAD_REQUEST, format!("repositories: {e}"));
                }
                set.insert(r);
            }
            Some(set)
        }
        None => None,
    };
    let mut listed: Option<Vec<String>> = repos.as_ref().map(|r| r.iter().cloned().collect());
    if let Some(l) = &mut listed {
        l.sort();
    }
    tracing::info!(policy = %name, repositories = listed.as_ref().map_or(0, Vec::len), "API: pass requested");
    shared.request_pass(&name, repos).await;
    (StatusCode::ACCEPTED, axum::Json(json!({ "policy": name, "repositories": listed }))).into_response()
}

async fn retry_policy(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(d) = shared.tokens.check_admin(&headers) {
        return d.json();
    }
    if shared.policies().get(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no policy named {name:?}"));
    }
    let ids = match shared.state.failed_executions(Some(&name)).await {
        Ok(ids) => ids,
        Err(e) => return state_error(e),
    };
    let mut queued = 0;
    for id in &ids {
        match shared.state.request_retry(*id).await {
            Ok(n) => queued += n.unwrap_or(0),
            Err(e) => return state_error(e),
        }
    }
    tracing::info!(policy = %name, executions = ids.len(), tasks = queued, "API: retry requested");
    (StatusCode::ACCEPTED, axum::Json(json!({ "executions": ids, "queued": queued }))).into_response()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    policy: Option<String>,
    status: Option<String>,
    repo: Option<String>,
    /// Started at or after (Unix ms).
    since: Option<i64>,
    limit: Option<u32>,
}

async fn list_executions(State(shared): State<Arc<Shared>>, headers: HeaderMap, q: Result<Query<ListQuery>, QueryRejection>) -> Response {
    if let Err(d) = shared.tokens.check_read(&headers) {
        return d.json();
    }
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Some(s) = &q.status
        && s.parse::<crate::state::ExecutionStatus>().is_err()
        && s.parse::<crate::state::TaskStatus>().is_err()
    {
        return error(StatusCode::BAD_REQUEST, format!("unknown status {s:?}"));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 1000");
    }
    let filter = ExecutionFilter { policy: q.policy, status: q.status, repo: q.repo, since_ms: q.since, limit };
    match shared.state.list_executions(&filter).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => state_error(e),
    }
}

async fn show_execution(State(shared): State<Arc<Shared>>, headers: HeaderMap, id: Result<Path<i64>, PathRejection>) -> Response {
    if let Err(d) = shared.tokens.check_read(&headers) {
        return d.json();
    }
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match shared.state.execution(id).await {
        Ok(Some(row)) => axum::Json(row).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no execution {id}")),
        Err(e) => state_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct TasksQuery {
    status: Option<String>,
}

async fn list_tasks(State(shared): State<Arc<Shared>>, headers: HeaderMap, id: Result<Path<i64>, PathRejection>, q: Result<Query<TasksQuery>, QueryRejection>) -> Response {
    if let Err(d) = shared.tokens.check_read(&headers) {
        return d.json();
    }
    let (id, q) = match (id, q) {
        (Ok(Path(id)), Ok(Query(q))) => (id, q),
        (Err(e), _) => return error(StatusCode::BAD_REQUEST, e.body_text()),
        (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Some(s) = &q.status
        && s.parse::<crate::state::TaskStatus>().is_err()
    {
        return error(StatusCode::BAD_REQUEST, format!("unknown task status {s:?}"));
    }
    match shared.state.execution(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no execution {id}")),
        Err(e) => return state_error(e),
    }
    match shared.state.tasks(id).await {
        Ok(mut rows) => {
            if let Some(s) = &q.status {
                rows.retain(|t| &t.status == s);
            }
            axum::Json(rows).into_response()
        }
        Err(e) => state_error(e),
    }
}

/// Queue an execution's failed tasks again; the daemon resumes it within a
/// couple of seconds. Shared with the status page's retry button.
pub async fn retry(shared: &Shared, id: i64) -> Result<Option<u64>, StateError> {
    let queued = shared.state.request_retry(id).await?;
    if let Some(n) = queued {
        tracing::info!(execution = id, tasks = n, "retry requested");
    }
    Ok(queued)
}

async fn retry_execution(State(shared): State<Arc<Shared>>, headers: HeaderMap, id: Result<Path<i64>, PathRejection>) -> Response {
    if let Err(d) = shared.tokens.check_admin(&headers) {
        return d.json();
    }
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match retry(&shared, id).await {
        Ok(Some(n)) => (StatusCode::ACCEPTED, axum::Json(json!({ "execution": id, "queued": n }))).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no execution {id}")),
        Err(e) => state_error(e),
    }
}

async fn cancel_execution(State(shared): State<Arc<Shared>>, headers: HeaderMap, id: Result<Path<i64>, PathRejection>) -> Response {
    if let Err(d) = shared.tokens.check_admin(&headers) {
        return d.json();
    }
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let outcome = match shared.state.request_cancel(id).await {
        Ok(Some(o)) => o,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no execution {id}")),
        Err(e) => return state_error(e),
    };
    tracing::info!(execution = id, outcome = ?outcome, "API: cancel requested");
    let body = match outcome {
        CancelOutcome::Requested => json!({ "execution": id, "outcome": "requested" }),
        CancelOutcome::Canceled(n) => json!({ "execution": id, "outcome": "canceled", "tasks": n }),
        CancelOutcome::Finished(s) => json!({ "execution": id, "outcome": "finished", "status": s.as_str() }),
    };
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}
