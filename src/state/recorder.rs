//! The recorder: drains the engine's [`Event`]s into the state database,
//! many events per transaction.
//!
//! It must never block the engine for long (the channel is bounded, writes
//! are batched) and never lose an event it received: a failed write is
//! logged and reported when the recorder finishes.
//!
//! A batch is whatever arrives within [`LINGER`] of its first event (up to
//! [`BATCH`] events): events trickle in one at a time while blobs move, and
//! committing each on its own costs a WAL write and a lock round per event.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{StateDb, StateError, now_ms};
use crate::engine::events::{Event, EventSink};

/// Events written per transaction at most.
const BATCH: usize = 512;

/// How long a batch waits for more events before it is written.
const LINGER: Duration = Duration::from_millis(100);

/// A running recorder; call [`Recorder::finish`] after the engine is done
/// and every [`EventSink`] clone is dropped.
pub struct Recorder {
    handle: JoinHandle<Result<(), StateError>>,
}

impl Recorder {
    /// Start recording events of tasks claimed by this worker (an event's
    /// `index` is the task's id); blob locations are filed under `registry`.
    /// A task whose claim another worker has taken meanwhile is left alone.
    pub fn spawn(db: StateDb, registry: String) -> (EventSink, Recorder) {
        let (sink, rx) = EventSink::channel(1024);
        let handle = tokio::spawn(run(db, registry, rx));
        (sink, Recorder { handle })
    }

    /// Wait until every event sent has been written.
    pub async fn finish(self) -> Result<(), StateError> {
        match self.handle.await {
            Ok(r) => r,
            Err(e) => Err(StateError::Query(sqlx::Error::Protocol(format!("recorder task failed: {e}")))),
        }
    }
}

async fn run(db: StateDb, registry: String, mut rx: mpsc::Receiver<Event>) -> Result<(), StateError> {
    let mut first_error = None;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(event) = rx.recv().await {
        batch.push(event);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                // closed (the run is over) or lingered long enough
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(e) = write(&db, &registry, &batch).await {
            tracing::error!(error = %e, "cannot record progress in the state database");
            first_error.get_or_insert(e);
        }
        batch.clear();
    }
    first_error.map_or(Ok(()), Err)
}

async fn write(db: &StateDb, registry: &str, events: &[Event]) -> Result<(), StateError> {
    let now = now_ms();
    let me = db.worker().id.clone();
    let mut tx = db.begin_write().await?;
    for event in events {
        let id = |index: &usize| i64::try_from(*index).unwrap_or(-1);
        let query = match event {
            Event::TaskStarted { index } => sqlx::query(
                "UPDATE tasks SET status = 'running', started_at = COALESCE(started_at, $1), updated_at = $1 WHERE id = $2 AND worker = $3",
            )
            .bind(now)
            .bind(id(index))
            .bind(&me),
            Event::TaskRetrying { index, error, .. } => sqlx::query(
                "UPDATE tasks SET status = 'retrying', attempts = attempts + 1, last_error = $1, updated_at = $2 WHERE id = $3 AND worker = $4",
            )
            .bind(error)
            .bind(now)
            .bind(id(index))
            .bind(&me),
            Event::TaskSucceeded { index, .. } => sqlx::query(
                "UPDATE tasks SET status = 'succeeded', last_error = NULL, finished_at = $1, updated_at = $1 WHERE id = $2 AND worker = $3",
            )
            .bind(now)
            .bind(id(index))
            .bind(&me),
            Event::TaskFailed { index, error, .. } => sqlx::query(
                "UPDATE tasks SET status = 'failed', last_error = $1, finished_at = $2, updated_at = $2 WHERE id = $3 AND worker = $4",
            )
            .bind(error)
            .bind(now)
            .bind(id(index))
            .bind(&me),
            Event::TaskCanceled { index, .. } => {
                sqlx::query("UPDATE tasks SET status = 'canceled', updated_at = $1 WHERE id = $2 AND worker = $3").bind(now).bind(id(index)).bind(&me)
            }
            Event::BlobAt { digest, repo } => sqlx::query(
                "INSERT INTO blob_locations (registry, digest, repo, seen_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (registry, digest, repo) DO UPDATE SET seen_at = excluded.seen_at",
            )
            .bind(registry)
            .bind(digest.as_str())
            .bind(repo.as_str())
            .bind(now),
        };
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
