//! Policy files: what to replicate, from where to where, and when.
//!
//! The spec: the checked [`Policy`] values a policy file becomes, and the
//! [`JobSpec`] per destination each one yields. Reading the files lives in
//! [`load`], turning raw fields into a policy (and collecting every mistake
//! with its file, line and field) in `check`. Nothing here talks to a
//! registry or to the state database.

mod check;
pub mod file;
mod load;
pub mod notify;
pub mod tags;
pub mod trigger;


use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::discover::{RepoFilter, Scope};
use crate::engine::execute::ExecuteOptions;
use crate::engine::plan::RepoMapping;
use crate::engine::rename::{Rename, RenameRule};
use crate::engine::platforms::{FilterMode, PlatformFilter};
use crate::engine::cosign::TrustedKey;
use crate::engine::gate::Requirement;
use crate::engine::referrers::ReferrerOptions;
use crate::job::JobSpec;
use crate::registry::endpoint::parse_size;
use crate::registry::{ClientOptions, CredentialSource, Credentials, Endpoint, Limits, Proxy, RegistryUrl, Secret, Tls, docker_config};
use file::{At, RawCredentials, RawPolicy};

pub use check::check_chunk_size;
pub use load::{files, load, load_offline};
pub use tags::TagFilter;
pub use trigger::{Cron, Trigger};

/// One mistake in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    pub file: PathBuf,
    pub line: Option<u64>,
    /// The field, as a path (`tags.include[1]`); empty for the file as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("no policy files (*.yaml, *.yml) in {0}")]
    Empty(PathBuf),
    #[error("{} problem(s) in the policy files:\n{}", .0.len(), .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<PolicyIssue>),
}

/// Retry rules of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per tag within one pass.
    pub attempts: u32,
    /// Wait before retrying a failed tag on a later pass; doubles each time…
    pub backoff: Duration,
    /// …up to this.
    pub max_backoff: Duration,
    /// Failed passes after which a tag is given up (until its source changes).
    pub give_up_after: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 3, backoff: Duration::from_secs(60), max_backoff: Duration::from_secs(6 * 3600), give_up_after: 10 }
    }
}

impl RetryPolicy {
    /// How long to wait after the `failures`-th failed pass.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// How many tags one pass of a `delete: true` policy may delete at a
/// destination: a share of its in-scope tags (rounded up, so one deletion is
/// always allowed) or a number of tags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxDelete {
    /// Percent of the destination's in-scope tags, above 0 and at most 100.
    Share(f64),
    /// At most this many tags.
    Count(u64),
}

impl Default for MaxDelete {
    fn default() -> Self {
        MaxDelete::Share(10.0)
    }
}

impl fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxDelete::Share(p) => write!(f, "{p}%"),
            MaxDelete::Count(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for MaxDelete {
    type Err = String;

    fn from_str(s: &str) -> Result<MaxDelete, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a share or a count; write e.g. 10% or 50");
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err("a share must be above 0% and at most 100%".into());
            }
            return Ok(MaxDelete::Share(p));
        }
        match s.parse::<u64>() {
            Ok(0) => Err("must be at least 1 (to never delete, leave delete: false)".into()),
            Ok(n) => Ok(MaxDelete::Count(n)),
            Err(_) => Err(bad()),
        }
    }
}

impl MaxDelete {
    /// How many deletions a pass may make at a destination holding `in_scope` covered tags.
    pub fn allowed(&self, in_scope: usize) -> usize {
        match *self {
            MaxDelete::Share(p) => ((in_scope as f64 * p / 100.0).ceil() as usize).max(1),
            MaxDelete::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }
}

/// One destination of a policy.
#[derive(Debug, Clone)]
pub struct Destination {
    pub endpoint: Endpoint,
    /// Prefix for repository names at the destination ("" keeps names).
    pub namespace: String,
    /// Other `host[:port]` names of the registry, matched in push events.
    pub aliases: Vec<String>,
}

impl Destination {
    /// The destination as a URL with its namespace, e.g. `https://dr.example.com/mirror`.
    pub fn url(&self) -> RegistryUrl {
        let prefix = [self.endpoint.url.prefix(), &self.namespace].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("/");
        self.endpoint.url.with_prefix(&prefix)
    }
}

/// A checked policy.
#[derive(Clone)]
pub struct Policy {
    pub name: String,
    pub file: PathBuf,
    pub source: Endpoint,
    /// Repositories to take instead of the catalog.
    pub source_repositories: Vec<String>,
    /// Other `host[:port]` names of the source registry, matched in push events.
    pub source_aliases: Vec<String>,
    pub destinations: Vec<Destination>,
    pub repos: RepoFilter,
    /// `repositories.rename`: names relative to the prefixes, mapped back after a failover.
    pub rename: Arc<Rename>,
    pub tags: Arc<TagFilter>,
    /// Copy only these platforms of multi-platform images.
    pub platforms: Option<Arc<PlatformFilter>>,
    /// Whether (and which) referrers travel with their subjects.
    pub referrers: Arc<ReferrerOptions>,
    /// What a tag must have to be copied (`require:`).
    pub require: Option<Arc<Requirement>>,
    pub overwrite: bool,
    pub delete: bool,
    /// The deletion guard's limit per pass and destination.
    pub max_delete: MaxDelete,
    /// Override the deletion guard for one pass (`run --force-delete`;
    /// never read from a policy file).
    pub force_delete: bool,
    /// Run a pass whose DR fence cannot be read (401, 403, 5xx, a timeout, a
    /// body that is not a fence) as if there were none: `run
    /// --ignore-unreadable-fence`, never read from a policy file.
    pub ignore_unreadable_fence: bool,
    /// Where the jobs of this policy count their progress (a CLI shows it).
    pub progress: Arc<crate::engine::stats::PlanCounters>,
    pub trigger: Trigger,
    pub retry: RetryPolicy,
    pub concurrency: usize,
    /// Where notifications go.
    pub notify: Vec<notify::Receiver>,
    /// Transport settings (the stall and commit timeouts).
    pub client: ClientOptions,
    /// Disk bytes a pass with several destinations may spool source blobs
    /// in, to read each once for all (`spool_budget:`; 0: no spool).
    pub spool_budget: u64,
    /// The words that make up the policy's scope (for the resume key).
    scope_words: Vec<String>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy").field("name", &self.name).field("file", &self.file).finish_non_exhaustive()
    }
}

impl Policy {
    /// The job that replicates this policy from `source` to `destination`
    /// (normally its own source and one of its destinations; reversed after a failover).
    pub fn job_spec(&self, source: &Endpoint, source_prefix: &str, destination: &Endpoint, dest_prefix: &str) -> JobSpec {
        let mapping = RepoMapping::new(source_prefix, dest_prefix)
            .with_rename(self.rename.as_ref().clone(), true)
            .with_tag_rename(self.tags.rename.clone());
        let mut source = source.clone();
        source.url = source.url.with_prefix(source_prefix);
        let mut destination = destination.clone();
        destination.url = destination.url.with_prefix(dest_prefix);
        JobSpec {
            kind: "policy".into(),
            policy: Some(self.name.clone()),
            source,
            destination,
            scope: Scope {
                explicit: self.source_repositories.clone(),
                referrers: self.referrers.clone(),
                immutable: self.tags.immutable,
                platforms: self.platforms.clone(),
                counters: self.progress.clone(),
                require: self.require.clone(),
                ..Scope::new(mapping, self.repos.clone(), self.tags.clone())
            },
            scope_words: self.scope_words.clone(),
            overwrite: self.overwrite,
            reversed: false,
            execute: ExecuteOptions { concurrency: self.concurrency, attempts: self.retry.attempts, ..ExecuteOptions::default() },
            client: self.client.clone(),
        }
    }

    /// The job for one of the policy's destinations, in the policy's own direction.
    pub fn forward(&self, destination: &Destination) -> JobSpec {
        let dest_prefix = destination.url();
        self.job_spec(&self.source, self.source.url.prefix(), &destination.endpoint, dest_prefix.prefix())
    }

    /// The job after a failover: from `destination` (the DR site) back to the
    /// policy's source, names mapped back (`mirror/team/app` → `team/app`).
    /// Repository and tag filters still apply, to the names relative to the prefixes.
    pub fn reverse(&self, destination: &Destination) -> JobSpec {
        let dest_prefix = destination.url();
        let mut spec = self.job_spec(&destination.endpoint, dest_prefix.prefix(), &self.source, self.source.url.prefix());
        spec.reversed = true;
        spec.scope.explicit = Vec::new();
        // Names mapped back: strip the DR prefix, undo the renames, add the source's.
        spec.scope.mapping = RepoMapping::new(self.source.url.prefix(), dest_prefix.prefix())
            .with_rename(self.rename.as_ref().clone(), true)
            .with_tag_rename(self.tags.rename.clone())
            .reversed();
        // The primary keeps every platform; the DR site holds the selection.
        spec.scope.platforms =
            self.platforms.as_deref().map(|f| Arc::new(PlatformFilter { destination_may_hold_more: true, ..f.clone() }));
        spec
    }
}

/// Every policy of a directory, by name.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
}

/// Timeouts given on the command line: they win over the policies' own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeoutOverrides {
    pub stall: Option<Duration>,
    pub commit: Option<Duration>,
}

impl TimeoutOverrides {
    /// `client` with these overrides applied. A stall timeout given alone
    /// also moves the default commit wait with it (never below the stall).
    pub fn apply(&self, client: &ClientOptions) -> ClientOptions {
        let mut c = client.clone();
        if let Some(stall) = self.stall {
            c.stall_timeout = stall;
            c.commit_timeout = c.commit_timeout.max(stall);
        }
        if let Some(commit) = self.commit {
            c.commit_timeout = commit;
        }
        c
    }
}

impl PolicySet {
    /// Every policy with `overrides` applied to its timeouts.
    pub fn with_timeouts(mut self, overrides: &TimeoutOverrides) -> PolicySet {
        for p in &mut self.policies {
            p.client = overrides.apply(&p.client);
        }
        self
    }

    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// The policies named in `names` (all when empty); unknown names are an error.
    pub fn select(&self, names: &[String]) -> Result<Vec<Policy>, String> {
        if names.is_empty() {
            return Ok(self.policies.clone());
        }
        names
            .iter()
            .map(|n| {
                self.get(n).cloned().ok_or_else(|| {
                    let known: Vec<&str> = self.policies.iter().map(|p| p.name.as_str()).collect();
                    format!("no policy named {n:?} (known: {})", known.join(", "))
                })
            })
            .collect()
    }
}
