//! Notifications: after each pass, decide from the policy's health streak
//! (kept in the state database) whether its receivers hear of a failure,
//! a recovery, a success or a failover, and deliver the webhooks.
//!
//! A failing policy notifies once per failing streak — across restarts too
//! — and again when it recovers. Delivery happens on workers behind bounded
//! queues: the pass only ever does a non-blocking `try_send`, so a slow or
//! dead receiver never delays replication (when a queue is full the
//! notification is dropped and logged). Each receiver gets its
//! notifications in order, one at a time, each retried with exponential
//! backoff. A receiver's URL is never logged: only its host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::pass::PassOutcome;
use crate::policy::Policy;
use crate::policy::notify::{Event, Format, Receiver};
use crate::state::StateDb;

/// Notifications waiting for delivery, at most.
const QUEUE: usize = 256;
/// Requests in flight at once (across receivers).
const IN_FLIGHT: usize = 4;
/// Notifications waiting per receiver, at most.
const LANE: usize = 64;
/// Tries per delivery (the first and the retries).
const TRIES: u32 = 5;
/// Wait before the first retry; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Per-request limit.
const TIMEOUT: Duration = Duration::from_secs(10);

struct Delivery {
    receiver: Receiver,
    event: Event,
    policy: String,
    body: Value,
}

/// Hands notifications to the delivery worker.
pub struct Notifier {
    state: StateDb,
    tx: mpsc::Sender<Delivery>,
}

impl Notifier {
    /// Start the delivery worker (it ends when the notifier is dropped).
    pub fn start(state: StateDb) -> Notifier {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver_all(rx));
        Notifier { state, tx }
    }

    /// After a pass of `policy`: update its health streak and queue what
    /// its receivers asked for. `full` is false for a pass limited to some
    /// repositories (a push event): such a pass can start a failing streak
    /// but not end one, since it did not look at everything. Never blocks
    /// on delivery.
    pub async fn pass_finished(&self, policy: &Policy, outcome: &PassOutcome, full: bool) {
        let failing = !outcome.ok();
        if !failing && !full {
            return;
        }
        let reversed = outcome.destinations.iter().any(|d| d.reversed);
        let direction = if reversed { "reversed" } else { "forward" };
        let before = match self.state.record_health(&policy.name, failing, direction).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(policy = %policy.name, error = %e, "cannot record the policy's health; no notification sent");
                return;
            }
        };
        let mut events = Vec::new();
        if before.as_ref().is_some_and(|h| h.direction != direction) {
            events.push(Event::Failover);
        }
        match (&before, failing) {
            (None, true) => events.push(Event::Failure),
            (Some(h), true) if !h.failing => events.push(Event::Failure),
            (Some(h), false) if h.failing => events.push(Event::Recovery),
            _ => {}
        }
        if !failing {
            events.push(Event::Success);
        }
        if policy.notify.is_empty() {
            return;
        }
        for event in events {
            let body = payload(event, policy, direction, outcome);
            for receiver in policy.notify.iter().filter(|r| r.wants(event)) {
                let shaped = match receiver.format {
                    Format::Json => body.clone(),
                    Format::Slack => slack(&body),
                };
                let delivery = Delivery { receiver: receiver.clone(), event, policy: policy.name.clone(), body: shaped };
                match self.tx.try_send(delivery) {
                    Ok(()) => tracing::debug!(policy = %policy.name, event = %event, receiver = %receiver.host, "notification queued"),
                    Err(_) => tracing::warn!(policy = %policy.name, event = %event, receiver = %receiver.host, "notification dropped: delivery queue full"),
                }
            }
        }
    }
}

/// The generic JSON document.
fn payload(event: Event, policy: &Policy, direction: &str, outcome: &PassOutcome) -> Value {
    let destinations: Vec<Value> = outcome
        .destinations
        .iter()
        .map(|d| {
            let failures: Vec<Value> = d
                .report
                .iter()
                .flat_map(|r| r.failures.iter().take(20))
                .map(|f| json!({ "repository": f.repository, "tag": f.tag, "error": f.error }))
                .collect();
            let counts = d.report.as_ref().map(|r| &r.counts);
            json!({
                "source": d.source,
                "destination": d.destination,
                "ok": d.ok(),
                "error": d.error,
                "execution": d.report.as_ref().map(|r| r.execution),
                "status": d.report.as_ref().map(|r| r.status.as_str().to_string()),
                "tags_copied": counts.map_or(0, |c| c.tags_copied),
                "tags_failed": counts.map_or(0, |c| c.tags_failed),
                "tags_deferred": d.deferred,
                "failures": failures,
                "prune_errors": d.prune.as_ref().map(|p| p.errors.clone()).unwrap_or_default(),
            })
        })
        .collect();
    let failed: u64 = outcome.destinations.iter().filter_map(|d| d.report.as_ref()).map(|r| r.counts.tags_failed).sum();
    let deferred: usize = outcome.destinations.iter().map(|d| d.deferred).sum();
    let broken = outcome.destinations.iter().filter(|d| d.error.is_some()).count();
    let summary = match event {
        Event::Failure => format!(
            "regferry policy {} is failing: {failed} tag(s) failed, {deferred} backing off, {broken} destination(s) unreachable",
            policy.name
        ),
        Event::Recovery => format!("regferry policy {} has recovered: every tag in scope is replicated", policy.name),
        Event::Success => format!("regferry policy {}: pass succeeded", policy.name),
        Event::Failover => format!("regferry policy {} now replicates {direction}", policy.name),
    };
    json!({
        "event": event.as_str(),
        "policy": policy.name,
        "direction": direction,
        "at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "summary": summary,
        "destinations": destinations,
    })
}

/// The Slack-compatible shape: one `text` in Slack's markup.
fn slack(body: &Value) -> Value {
    let icon = match body["event"].as_str() {
        Some("failure") => ":red_circle:",
        Some("recovery") | Some("success") => ":large_green_circle:",
        _ => ":arrows_counterclockwise:",
    };
    let mut text = format!("{icon} *{}*", body["summary"].as_str().unwrap_or_default());
    for d in body["destinations"].as_array().into_iter().flatten() {
        if let Some(e) = d["error"].as_str() {
            text.push_str(&format!("\n• `{}`: {e}", d["destination"].as_str().unwrap_or_default()));
        }
        for f in d["failures"].as_array().into_iter().flatten().take(5) {
            text.push_str(&format!(
                "\n• `{}:{}` → `{}`: {}",
                f["repository"].as_str().unwrap_or_default(),
                f["tag"].as_str().unwrap_or_default(),
                d["destination"].as_str().unwrap_or_default(),
                f["error"].as_str().unwrap_or_default()
            ));
        }
    }
    json!({ "text": text })
}

async fn deliver_all(mut rx: mpsc::Receiver<Delivery>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .user_agent(concat!("regferry/", env!("CARGO_PKG_VERSION")))
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e.without_url(), "notifications disabled: cannot build an HTTP client");
            return;
        }
    };
    // One queue and one sender per receiver: a receiver hears its
    // notifications in the order they were made (a failure before its
    // recovery), and a slow or dead one only holds up its own queue.
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut lanes: HashMap<String, mpsc::Sender<Delivery>> = HashMap::new();
    while let Some(d) = rx.recv().await {
        let key = d.receiver.url.expose().to_string();
        let lane = lanes.entry(key).or_insert_with(|| {
            let (tx, lane_rx) = mpsc::channel(LANE);
            tokio::spawn(deliver_lane(client.clone(), slots.clone(), lane_rx));
            tx
        });
        if let Err(mpsc::error::TrySendError::Full(d)) = lane.try_send(d) {
            tracing::warn!(policy = %d.policy, event = %d.event, receiver = %d.receiver.host, "notification dropped: the receiver's queue is full");
        }
    }
}

/// Deliver one receiver's notifications, in order.
async fn deliver_lane(client: reqwest::Client, slots: Arc<Semaphore>, mut rx: mpsc::Receiver<Delivery>) {
    while let Some(d) = rx.recv().await {
        deliver(&client, &slots, &d).await;
    }
}

/// Send one notification, retrying failures that may pass (network, 5xx,
/// 408, 429) with doubling waits.
async fn deliver(client: &reqwest::Client, slots: &Semaphore, d: &Delivery) {
    let mut wait = FIRST_BACKOFF;
    for attempt in 1..=TRIES {
        // A slot per request, not per delivery: waiting to retry holds none.
        let Ok(permit) = slots.acquire().await else { return };
        let sent = client.post(d.receiver.url.expose()).json(&d.body).send().await;
        drop(permit);
        let (retry, reason) = match sent {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(policy = %d.policy, event = %d.event, receiver = %d.receiver.host, attempt, "notification delivered");
                return;
            }
            Ok(resp) => {
                let code = resp.status();
                (code.is_server_error() || code.as_u16() == 408 || code.as_u16() == 429, format!("HTTP {code}"))
            }
            Err(e) => (true, e.without_url().to_string()),
        };
        if !retry || attempt == TRIES {
            tracing::warn!(policy = %d.policy, event = %d.event, receiver = %d.receiver.host, attempt, error = %reason, "notification not delivered");
            return;
        }
        tracing::debug!(policy = %d.policy, event = %d.event, receiver = %d.receiver.host, attempt, error = %reason, "notification failed; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}
