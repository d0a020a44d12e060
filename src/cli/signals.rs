//! Ctrl-C / SIGTERM handling: the first signal stops new work and lets
//! in-flight tags finish (bounded by a grace period), the second aborts.
//!
//! The command returns normally so the state database is closed cleanly;
//! only when it has not returned [`AFTER_ABORT`] after the abort (a state
//! database or a registry that does not answer) is the process ended here,
//! with exit code 130, so that a signal always ends it within its grace
//! and a few seconds.

use std::time::Duration;

use regferry::engine::execute::Cancel;

/// Resolves on the next Ctrl-C or SIGTERM.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            #[cfg(unix)]
            term: match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM");
                    None
                }
            },
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(t) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = t.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long a command has to return once its in-flight tags are aborted.
const AFTER_ABORT: Duration = Duration::from_secs(10);

/// Watch for signals in the background and drive `cancel`.
pub fn watch(cancel: Cancel, grace: Duration) {
    let mut signals = Signals::new();
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("stopping: no new tags are started; in-flight tags get {grace:?} to finish (signal again to abort now)");
        cancel.stop.cancel();
        tokio::select! {
            _ = signals.next() => tracing::warn!("aborting in-flight tags"),
            _ = tokio::time::sleep(grace) => tracing::warn!("grace period over: aborting in-flight tags"),
        }
        cancel.abort.cancel();
        tokio::time::sleep(AFTER_ABORT).await;
        tracing::error!("still not stopped {AFTER_ABORT:?} after aborting (the state database or a registry does not answer): exiting now");
        std::process::exit(130);
    });
}

/// Notify `hangup` on every SIGHUP (reload).
pub fn watch_hangup(hangup: std::sync::Arc<tokio::sync::Notify>) {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut s) => {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    hangup.notify_one();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot watch SIGHUP"),
    }
}
