//! What the engine tells the outside world while it works: task state
//! changes and blob locations, sent over a bounded channel to whoever
//! records them (the state database) — so the engine itself never writes.
//!
//! A full channel slows the engine down (backpressure); a closed one is
//! ignored, so recording can never make a transfer fail.

use tokio::sync::mpsc;

use crate::registry::{Digest, RepoName};

/// One thing that happened. `index` is the position of the task in the
/// plan's items.
#[derive(Debug, Clone)]
pub enum Event {
    TaskStarted { index: usize },
    TaskRetrying { index: usize, attempt: u32, error: String },
    TaskSucceeded { index: usize, attempts: u32 },
    TaskFailed { index: usize, attempts: u32, error: String },
    /// Stopped by cancellation before it finished.
    TaskCanceled { index: usize, attempts: u32 },
    /// The destination repository `repo` holds `digest`.
    BlobAt { digest: Digest, repo: RepoName },
}

/// The sending side, cheap to clone.
#[derive(Clone, Default)]
pub struct EventSink(Option<mpsc::Sender<Event>>);

impl EventSink {
    /// A sink with a bounded channel of `capacity`, and its receiver.
    pub fn channel(capacity: usize) -> (EventSink, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (EventSink(Some(tx)), rx)
    }

    pub async fn send(&self, event: Event) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event).await;
        }
    }
}
