//! A job planned in parts: whole repositories at a time, each part holding
//! at least [`part_tags`] tags (unless it is the last), so a pass over a
//! registry of any size holds one part's listings and plan in memory, not
//! one item per tag of the registry. A scope under that size is one part,
//! planned exactly as a whole plan.
//!
//! It must never split a repository between parts (a repository's
//! signature and fallback tags wait on its images), and it only plans (reads):
//! the caller runs each part (see [`super::Session`]), and the next part is
//! planned while it runs ([`Parts::next_while`]), so the registries are
//! not left idle while a part is recorded. At most two parts are held at once.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Job, JobError};
use crate::engine::discover::Discovery;
use crate::engine::plan::Plan;
use crate::state::StateDb;

/// Tags per part unless the binary sets another size ([`set_part_tags`]).
pub const PART_TAGS: usize = 10_000;

static PART_SIZE: AtomicUsize = AtomicUsize::new(PART_TAGS);

/// Set how many tags a part holds at least, for the whole process: the
/// binary's `--part-tags` (`REGFERRY_PART_TAGS`), read once at start-up.
/// Zero is taken as one.
pub fn set_part_tags(tags: usize) {
    PART_SIZE.store(tags.max(1), Ordering::Relaxed);
}

/// How many tags a part holds at least ([`PART_TAGS`] unless set).
pub fn part_tags() -> usize {
    PART_SIZE.load(Ordering::Relaxed)
}

/// The parts of a job's plan, in turn (see the module comment).
pub struct Parts<'a> {
    job: &'a Job,
    state: Option<&'a StateDb>,
    discovery: Discovery,
    /// The platform selection whose narrowing is remembered in `state`.
    selection: Option<String>,
    /// When the catalog was asked (the first part's planning time includes it).
    started: Option<Instant>,
    max_tags: usize,
}

impl Job {
    /// Read the repositories in scope and get ready to plan them part by
    /// part. With a `state`, what narrowing to platforms produced on
    /// earlier passes is read first and what each part learns is saved
    /// (an unchanged platform-filtered pass then costs `HEAD`s only).
    pub async fn parts<'a>(&'a self, state: Option<&'a StateDb>) -> Result<Parts<'a>, JobError> {
        let started = Instant::now();
        let selection = self.spec.scope.platforms.as_deref().filter(|f| f.mode == crate::engine::platforms::FilterMode::Rewrite).map(|f| f.scope_word());
        let selection = selection.filter(|_| state.is_some());
        if let (Some(db), Some(selection)) = (state, &selection) {
            self.spec.scope.narrowed.load(db.narrowed_indexes(selection).await?);
        }
        let discovery = Discovery::start(&*self.src, self.dst.url(), &self.spec.scope).await?;
        Ok(Parts { job: self, state, discovery, selection, started: Some(started), max_tags: part_tags() })
    }
}

impl Parts<'_> {
    /// Plan the next part (for a run that writes); `None` once every
    /// repository in scope was planned. The first part carries the
    /// catalog's problems and unmatched globs, even when it holds no
    /// repository.
    pub async fn next(&mut self) -> Option<Result<Plan, JobError>> {
        let job = self.job;
        let started = self.started.take().unwrap_or_else(Instant::now);
        let concurrency = job.spec.execute.concurrency.max(4) * 2;
        let found = self.discovery.next_part(&*job.src, &job.spec.scope, concurrency, self.max_tags).await?;
        let plan = job.plan_found(found, true, started).await;
        if let (Some(db), Some(selection)) = (self.state, &self.selection)
            && let Err(e) = db.record_narrowed_indexes(selection, &job.spec.scope.narrowed.take_learned()).await
        {
            return Some(Err(e.into()));
        }
        Some(Ok(plan))
    }

    /// [`Parts::next`] while `work` (the run of the part before) goes on:
    /// both results once both are done. Once `stop` is cancelled there is
    /// no next part to run ([`Next::Stopped`], unless every part was
    /// planned already): planning gives up at once, and a part planned
    /// before the stop is not given.
    pub async fn next_while<T>(&mut self, work: impl Future<Output = T>, stop: &CancellationToken) -> (T, Next) {
        let planning = async {
            tokio::select! {
                biased;
                _ = stop.cancelled() => Next::Stopped,
                next = self.next() => Next::from(next),
            }
        };
        let (out, next) = tokio::join!(work, planning);
        let next = match next {
            Next::Part(Ok(_)) if stop.is_cancelled() => Next::Stopped,
            next => next,
        };
        (out, next)
    }
}

/// What planning the next part gave.
pub enum Next {
    Part(Result<Plan, JobError>),
    /// Every repository in scope was planned.
    Done,
    /// The run was stopped before the next part was planned.
    Stopped,
}

impl From<Option<Result<Plan, JobError>>> for Next {
    fn from(next: Option<Result<Plan, JobError>>) -> Next {
        next.map_or(Next::Done, Next::Part)
    }
}
