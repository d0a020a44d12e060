//! The daemon's HTTP side: liveness, readiness, Prometheus metrics,
//! registry push events, the JSON API and the status page.
//!
//! Handlers only read shared state and hand work to the scheduler; they
//! never run a replication themselves and never echo request headers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/events/distribution", post(super::events::distribution))
        .route("/events/harbor", post(super::events::harbor))
        .merge(super::api::routes())
        .merge(super::status_page::routes())
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if !shared.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: policies not loaded\n".to_string());
    }
    match shared.state.ping().await {
        Ok(_) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut body = shared.metrics.render();
    // The series read from the shared state: from one worker only.
    let exporter = shared.exports_shared.load(Ordering::Relaxed);
    body.push_str(&crate::pass::metrics::render_exporter(exporter));
    if !exporter {
        return ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body);
    }
    let mut lags = Vec::new();
    for policy in &shared.policies().policies {
        match shared.state.replication_lag(&policy.name).await {
            Ok(lag) => lags.push(lag),
            Err(e) => tracing::warn!(policy = %policy.name, error = %e, "cannot read the replication lag for /metrics"),
        }
    }
    body.push_str(&crate::pass::metrics::render_lag(&lags));
    body.push_str(&crate::registry::usage::global().render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}
