//! Progress while a job runs: a live bar on a terminal (repositories, tags,
//! bytes), a plain log line every few seconds otherwise.
//!
//! Reads the engine's atomic counters only; it never slows a transfer.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use regferry::engine::stats::{PlanCounters, Snapshot, Stats, human_bytes};

use super::logging;

/// A running progress display; [`Progress::finish`] removes it.
pub struct Progress {
    stop: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

fn line(s: &Snapshot) -> String {
    format!(
        "repos {}/{} · {} copied, {} skipped, {} failed · {} uploaded",
        s.repos_done,
        s.repos_total,
        s.tags_copied,
        s.tags_skipped,
        s.tags_failed,
        human_bytes(s.bytes_uploaded)
    )
}

impl Progress {
    /// Show progress of `stats` on stderr (nothing when `quiet`).
    pub fn start(stats: Arc<Stats>, quiet: bool) -> Progress {
        let stop = CancellationToken::new();
        if quiet {
            return Progress { stop, handle: None };
        }
        let token = stop.clone();
        let handle = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} tags {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            logging::set_bar(bar.clone());
            tokio::spawn(async move {
                loop {
                    let s = stats.snapshot();
                    bar.set_length(s.tags_total);
                    bar.set_position(s.tags_done());
                    bar.set_message(line(&s));
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(150)) => {}
                    }
                }
                logging::clear_bar();
                bar.finish_and_clear();
            })
        } else {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                    let s = stats.snapshot();
                    tracing::info!("progress: {}/{} tags · {}", s.tags_done(), s.tags_total, line(&s));
                }
            })
        };
        Progress { stop, handle: Some(handle) }
    }

    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

/// Progress of a long phase on a terminal: planning (repositories listed so
/// far of those in scope, tags found and compared), then the transfer (tags
/// done, bytes) and/or a deep verification (manifests and blobs checked), as
/// `failover` runs them all; each phase that ended leaves its last line.
/// Nothing when not on a terminal (the log says when phases start and end),
/// with `NO_COLOR`, or when quiet / JSON.
pub struct Planning {
    stop: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

/// The phases of a long command, in the order they run (a failover:
/// the sync pass's planning and copying, then the deep verification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Planning,
    Copying,
    Deep,
}

impl Phase {
    fn of(counters: &PlanCounters) -> Phase {
        match (counters.deep_checked(), counters.transfer()) {
            (1.., _) => Phase::Deep,
            (0, Some(_)) => Phase::Copying,
            (0, None) => Phase::Planning,
        }
    }

    fn next(self) -> Phase {
        match self {
            Phase::Planning => Phase::Copying,
            Phase::Copying | Phase::Deep => Phase::Deep,
        }
    }

    /// The line of this phase (a terminal line is short); `None` for a
    /// transfer that did not happen.
    fn line(self, counters: &PlanCounters) -> Option<String> {
        let (_, _, _, compared) = counters.read();
        match self {
            Phase::Planning => {
                // Once copying started, what the planning before it found.
                let (listed, total, found, compared) = counters.planned().unwrap_or_else(|| counters.read());
                Some(format!("repositories listed {listed}/{total} · tags found {found} · compared {compared}"))
            }
            Phase::Copying => counters.transfer().map(|s| {
                format!("copying: {}/{} tags · {} copied, {} failed · {} uploaded", s.tags_done(), s.tags_total, s.tags_copied, s.tags_failed, human_bytes(s.bytes_uploaded))
            }),
            Phase::Deep => Some(format!("deep: {} manifests and blobs checked ({compared} tags compared)", counters.deep_checked())),
        }
    }
}

/// The line of the phase running now.
fn planning_line(counters: &PlanCounters) -> String {
    Phase::of(counters).line(counters).unwrap_or_default()
}

impl Planning {
    /// Show `counters` under `what` (e.g. "planning") on stderr when it is a terminal.
    pub fn start(counters: Arc<PlanCounters>, quiet: bool, what: &str) -> Planning {
        let stop = CancellationToken::new();
        // A live line needs terminal control sequences: none with NO_COLOR either.
        if quiet || !logging::color_allowed() {
            return Planning { stop, handle: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
        bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {wide_msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
        bar.set_prefix(what.to_string());
        logging::set_bar(bar.clone());
        let token = stop.clone();
        let what = what.to_string();
        let handle = tokio::spawn(async move {
            // (Phases that ended before this display began are not its business.)
            let mut shown = Phase::of(&counters);
            // Each phase that ended leaves its last state on the terminal
            // (however quickly it went by between two redraws).
            let passed = |shown: &mut Phase| {
                while *shown < Phase::of(&counters) {
                    if let Some(line) = shown.line(&counters) {
                        bar.println(format!("{what}: {line}"));
                    }
                    *shown = shown.next();
                }
            };
            loop {
                passed(&mut shown);
                bar.set_message(planning_line(&counters));
                bar.tick();
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(150)) => {}
                }
            }
            passed(&mut shown);
            logging::clear_bar();
            // Leave the last state on the terminal: it says what planning found.
            bar.finish_with_message(planning_line(&counters));
        });
        Planning { stop, handle: Some(handle) }
    }

    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}
