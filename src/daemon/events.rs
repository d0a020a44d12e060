//! `POST /events/distribution` and `POST /events/harbor`: registry push
//! events become (coalesced) passes of the policies whose current source
//! covers the pushed repository, limited to the repositories pushed.
//!
//! Replies at once (202) and never waits for a pass. With any token
//! configured, a request without a read-only or admin API token, or exactly
//! the events token, gets 401; the header is never logged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Shared;
use crate::dr::events::{RepoEvent, parse_distribution, parse_harbor, relative_in_scope};


async fn accept(shared: Arc<Shared>, headers: HeaderMap, body: Bytes, parse: fn(&[u8]) -> Result<Vec<RepoEvent>, String>, kind: &str) -> Response {
    if shared.tokens.check_event(&headers).is_err() {
        tracing::warn!(kind, "event refused: missing or wrong Authorization");
        return (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    }
    let events = match parse(&body) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(kind, error = %e, "event payload refused");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let set = shared.policies();
    let mut wanted: HashMap<String, HashSet<String>> = HashMap::new();
    for p in &set.policies {
        let reversed = match shared.state.is_reversed(&p.name).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(policy = %p.name, error = %e, "cannot read the policy's direction; event ignored for it");
                continue;
            }
        };
        for e in &events {
            if e.delete && !p.delete {
                continue;
            }
            if let Some(relative) = relative_in_scope(p, reversed, e) {
                wanted.entry(p.name.clone()).or_default().insert(relative);
            }
        }
    }
    let matched: Vec<String> = wanted.keys().cloned().collect();
    tracing::info!(kind, events = events.len(), policies = matched.len(), "registry event received");
    if matched.is_empty() {
        let mut hosts: Vec<&str> = events.iter().filter_map(|e| e.host.as_deref()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        if !hosts.is_empty() {
            tracing::warn!(
                kind, hosts = %hosts.join(", "),
                "registry event matched no policy; if the registry is also known by this name (an IP, a front's hostname), \
                 add it to the policy's `aliases:` for that registry"
            );
        }
    }
    for (policy, repos) in wanted {
        tracing::debug!(policy = %policy, repositories = ?repos, "pass requested by an event");
        // Stored, so that whichever worker holds the policy acts on it; this
        // worker is woken to try first.
        match shared.state.store_push_event(&policy, &repos).await {
            Ok(()) => shared.request_pass(&policy, Some(HashSet::new())).await,
            Err(e) => {
                tracing::warn!(policy = %policy, error = %e, "cannot store the push event; acting on it here");
                shared.request_pass(&policy, Some(repos)).await;
            }
        }
    }
    (StatusCode::ACCEPTED, axum::Json(json!({ "events": events.len(), "policies": matched }))).into_response()
}

pub async fn distribution(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    accept(shared, headers, body, parse_distribution, "distribution").await
}

pub async fn harbor(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    accept(shared, headers, body, parse_harbor, "harbor").await
}
