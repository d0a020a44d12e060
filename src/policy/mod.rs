//! Policy files: what to replicate, from where to where, and when.
//!
//! Loading turns `policies/*.yaml` into checked [`Policy`] values and
//! collects every mistake with its file, line and field, so that
//! `policy check` and the daemon can refuse a broken set in one go. A policy
//! becomes one [`JobSpec`] per destination; nothing here talks to a registry
//! or to the state database.

pub mod file;
pub mod notify;
pub mod tags;
pub mod trigger;

use std::collections::HashMap;
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

/// A registry's TLS and proxy fields in a policy file.
struct TlsFields<'a> {
    ca_file: Option<&'a At<String>>,
    client_cert: Option<&'a At<String>>,
    client_key: Option<&'a At<String>>,
    proxy: Option<&'a At<String>>,
}
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
        let mapping = RepoMapping::new(source_prefix, dest_prefix).with_rename(self.rename.as_ref().clone(), true);
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

/// The policy files at `path`: a directory's `*.yaml`/`*.yml`, or one file.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let read = |source| PolicyError::Read { path: path.to_path_buf(), source };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(PolicyError::Empty(path.to_path_buf()));
    }
    Ok(out)
}

/// Load and check every policy at `path`. `env` looks up environment
/// variables (credentials); pass `|k| std::env::var(k).ok()`.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<PolicySet, PolicyError> {
    load_with(path, env, false)
}

/// [`load`] for `policy check --offline` (CI without secrets): credentials'
/// environment variables, password files, auth files, CA bundles and client
/// certificates need not exist (their fields are still checked); nothing
/// loaded this way is fit to connect with.
pub fn load_offline(path: &Path) -> Result<PolicySet, PolicyError> {
    load_with(path, &|k| std::env::var(k).ok().or_else(|| Some(OFFLINE_PLACEHOLDER.to_string())), true)
}

/// What an absent secret reads as in an offline check (a URL, so that a
/// webhook address from the environment passes as well).
const OFFLINE_PLACEHOLDER: &str = "https://offline-check.invalid/";

fn load_with(path: &Path, env: &dyn Fn(&str) -> Option<String>, offline: bool) -> Result<PolicySet, PolicyError> {
    let mut issues = Vec::new();
    let mut policies: Vec<Policy> = Vec::new();
    let mut names: HashMap<String, (PathBuf, u64)> = HashMap::new();
    for file in files(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| PolicyError::Read { path: file.clone(), source })?;
        let mut check = Checker { file: &file, issues: &mut issues, env, offline };
        let Some(policy) = check.policy(&text) else { continue };
        let line = policy_line(&text, "name");
        if let Some((other, other_line)) = names.get(&policy.name) {
            check.issue(Some(line), "name", format!("policy name {:?} is already used by {}:{other_line}", policy.name, other.display()));
            continue;
        }
        names.insert(policy.name.clone(), (file.clone(), line));
        policies.push(policy);
    }
    if issues.is_empty() { Ok(PolicySet { policies }) } else { Err(PolicyError::Invalid(issues)) }
}

/// The line of a top-level key (for issues found after parsing).
fn policy_line(text: &str, key: &str) -> u64 {
    text.lines().position(|l| l.starts_with(&format!("{key}:"))).map_or(1, |i| i as u64 + 1)
}

/// Collects the issues of one file while building its policy.
struct Checker<'a> {
    file: &'a Path,
    issues: &'a mut Vec<PolicyIssue>,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Files holding secrets (and TLS files) need not exist.
    offline: bool,
}

fn line<T>(v: &At<T>) -> Option<u64> {
    Some(v.referenced.line()).filter(|&l| l > 0)
}

fn duration(v: &At<String>) -> Result<Duration, String> {
    humantime::parse_duration(v.value.trim())
        .map_err(|e| format!("{:?} is not a duration ({e}); write e.g. 90s, 10m, 6h", v.value))
        .and_then(|d| if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(d) })
}

impl Checker<'_> {
    fn issue(&mut self, line: Option<u64>, field: &str, message: impl Into<String>) {
        self.issues.push(PolicyIssue { file: self.file.to_path_buf(), line, field: field.into(), message: message.into() });
    }

    /// `Some(value)` when `result` is ok; records the issue otherwise.
    fn ok<T, U>(&mut self, at: &At<U>, field: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.issue(line(at), field, m)).ok()
    }

    fn policy(&mut self, text: &str) -> Option<Policy> {
        let raw: RawPolicy = match file::parse(text) {
            Ok(raw) => raw,
            Err((line, message)) => {
                self.issue(line, "", message);
                return None;
            }
        };
        let before = self.issues.len();
        let name = raw.name.value.trim().to_string();
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !name_ok {
            self.issue(line(&raw.name), "name", format!("{name:?} is not a policy name (1-63 letters, digits, '-', '_', '.')"));
        }

        let s = &raw.source;
        let tls = TlsFields { ca_file: s.ca_file.as_ref(), client_cert: s.client_cert.as_ref(), client_key: s.client_key.as_ref(), proxy: s.proxy.as_ref() };
        let source = self.endpoint(&s.registry, s.credentials.as_ref(), tls, s.insecure, "source");
        let limits = self.limits(raw.source.requests_per_second.as_ref(), raw.source.bytes_per_second.as_ref(), "source");
        let source = source.map(|e| Endpoint { limits, ..e });
        let source = source.and_then(|e| self.chunk_size(e, raw.source.chunk_size.as_ref(), "source"));
        let source_repositories: Vec<String> = raw
            .source
            .repositories
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, r)| {
                let name = r.value.trim_matches('/').to_string();
                let ok = name.parse::<crate::registry::RepoName>().map(|_| name).map_err(|e| e.to_string());
                self.ok(r, &format!("source.repositories[{i}]"), ok)
            })
            .collect();

        let source_aliases = self.aliases(&raw.source.aliases, "source");
        if raw.destinations.value.is_empty() {
            self.issue(line(&raw.destinations), "destinations", "at least one destination is required");
        }
        let mut destinations = Vec::new();
        for (i, d) in raw.destinations.value.iter().enumerate() {
            let field = format!("destinations[{i}]");
            let tls = TlsFields { ca_file: d.ca_file.as_ref(), client_cert: d.client_cert.as_ref(), client_key: d.client_key.as_ref(), proxy: d.proxy.as_ref() };
            let endpoint = self.endpoint(&d.registry, d.credentials.as_ref(), tls, d.insecure, &field);
            let limits = self.limits(d.requests_per_second.as_ref(), d.bytes_per_second.as_ref(), &field);
            let endpoint = endpoint.map(|e| Endpoint { limits, ..e });
            let endpoint = endpoint.and_then(|e| self.chunk_size(e, d.chunk_size.as_ref(), &field));
            let namespace = d.namespace.as_ref().map(|n| n.value.trim_matches('/').to_string()).unwrap_or_default();
            if let Some(n) = &d.namespace
                && !namespace.is_empty() {
                    let ok = namespace.parse::<crate::registry::RepoName>().map(|_| ()).map_err(|e| format!("bad namespace: {e}"));
                    self.ok(n, &format!("{field}.namespace"), ok);
                }
            if let Some(endpoint) = endpoint {
                let aliases = self.aliases(&d.aliases, &field);
                destinations.push(Destination { endpoint, namespace, aliases });
            }
        }

        let (include, exclude) = match &raw.repositories {
            Some(r) => (r.include.as_slice(), r.exclude.as_slice()),
            None => (&[][..], &[][..]),
        };
        for (list, kind) in [(include, "include"), (exclude, "exclude")] {
            for (i, g) in list.iter().enumerate() {
                let ok = globset::Glob::new(&g.value).map(|_| ()).map_err(|e| format!("bad glob {:?}: {}", g.value, e.kind()));
                self.ok(g, &format!("repositories.{kind}[{i}]"), ok);
            }
        }
        let values = |l: &[At<String>]| l.iter().map(|g| g.value.clone()).collect::<Vec<_>>();
        let repos = RepoFilter::new(&values(include), &values(exclude)).ok();
        // Renames must map back exactly (failover and failback use the inverse).
        let mut rename_rules = Vec::new();
        for (i, r) in raw.repositories.iter().flat_map(|r| r.rename.iter()).enumerate() {
            let ok = RenameRule::new(&r.value.from, &r.value.to).and_then(|rule| rule.inverse().map(|_| rule)).map_err(|e| e.to_string());
            if let Some(rule) = self.ok(r, &format!("repositories.rename[{i}]"), ok) {
                rename_rules.push(rule);
            }
        }
        let rename_words: Vec<String> = rename_rules.iter().map(|r| format!("rename:{r}")).collect();
        let rename = Rename::new(rename_rules);

        let signatures = raw.signatures.unwrap_or(true);
        let mut tags = TagFilter { signatures, ..TagFilter::default() };
        if let Some(t) = &raw.tags {
            for (list, kind, out) in [(&t.include, "include", &mut tags.include), (&t.exclude, "exclude", &mut tags.exclude)] {
                for (i, r) in list.iter().enumerate() {
                    let ok = tags::anchored(&r.value).map_err(|e| format!("bad regex {:?}: {}", r.value, one_line(&e.to_string())));
                    if let Some(re) = self.ok(r, &format!("tags.{kind}[{i}]"), ok) {
                        out.push(re);
                    }
                }
            }
            if let Some(s) = &t.semver {
                let ok = semver::VersionReq::parse(&s.value).map_err(|e| format!("bad semver range {:?}: {e}", s.value));
                tags.semver = self.ok(s, "tags.semver", ok);
            }
            if let Some(n) = &t.latest {
                let ok = if n.value == 0 { Err("must be at least 1".to_string()) } else { Ok(n.value as usize) };
                tags.latest = self.ok(n, "tags.latest", ok);
            }
            tags.immutable = t.immutable.unwrap_or(false);
        }

        let mut referrers = ReferrerOptions { enabled: raw.referrers.unwrap_or(true), types: Vec::new(), untagged_subjects: false };
        for (i, t) in raw.referrer_types.iter().flatten().enumerate() {
            let ok = crate::engine::referrers::check_artifact_type(&t.value);
            if self.ok(t, &format!("referrer_types[{i}]"), ok).is_some() {
                referrers.types.push(t.value.clone());
            }
        }
        if let (Some(false), Some(list)) = (raw.referrers, raw.referrer_types.as_ref().filter(|l| !l.is_empty())) {
            self.issue(line(&list[0]), "referrer_types", "referrers: false copies no referrers; remove referrer_types or the false");
        }

        let platforms = self.platforms(raw.platforms.as_ref(), raw.platform_filter.as_ref());
        let require = raw.require.as_ref().and_then(|r| self.require(r));

        let trigger = match &raw.trigger {
            Some(t) => match (&t.interval, &t.cron) {
                (Some(i), None) => self.ok(i, "trigger.interval", duration(i)).map(Trigger::Interval),
                (None, Some(c)) => self.ok(c, "trigger.cron", c.value.parse::<Cron>()).map(Trigger::Cron),
                (Some(i), Some(_)) => {
                    self.issue(line(i), "trigger", "give either interval or cron, not both");
                    None
                }
                (None, None) => Some(Trigger::Interval(Duration::from_secs(3600))),
            },
            None => Some(Trigger::Interval(Duration::from_secs(3600))),
        };

        let mut retry = RetryPolicy::default();
        if let Some(r) = &raw.retry {
            if let Some(a) = &r.attempts {
                let ok = if (1..=100).contains(&a.value) { Ok(a.value) } else { Err("must be between 1 and 100".to_string()) };
                retry.attempts = self.ok(a, "retry.attempts", ok).unwrap_or(retry.attempts);
            }
            if let Some(b) = &r.backoff {
                retry.backoff = self.ok(b, "retry.backoff", duration(b)).unwrap_or(retry.backoff);
            }
            if let Some(b) = &r.max_backoff {
                retry.max_backoff = self.ok(b, "retry.max_backoff", duration(b)).unwrap_or(retry.max_backoff);
            }
            if let Some(g) = &r.give_up_after {
                let ok = if g.value >= 1 { Ok(g.value) } else { Err("must be at least 1".to_string()) };
                retry.give_up_after = self.ok(g, "retry.give_up_after", ok).unwrap_or(retry.give_up_after);
            }
        }
        let max_delete = match &raw.max_delete {
            Some(m) => self.ok(m, "max_delete", m.value.parse::<MaxDelete>()).unwrap_or_default(),
            None => MaxDelete::default(),
        };
        let concurrency = match &raw.concurrency {
            Some(c) => {
                let ok = if (1..=256).contains(&c.value) { Ok(c.value as usize) } else { Err("must be between 1 and 256".to_string()) };
                self.ok(c, "concurrency", ok).unwrap_or(8)
            }
            None => 8,
        };

        let mut receivers = Vec::new();
        for (i, r) in raw.notify.iter().flatten().enumerate() {
            if self.offline && r.value.url_file.as_ref().is_some_and(|f| !Path::new(f).exists()) {
                continue; // a secret file of the deployment, absent in CI
            }
            match notify::check(&r.value, self.env) {
                Ok(receiver) => receivers.push(receiver),
                Err((field, message)) => {
                    let field = if field.is_empty() { format!("notify[{i}]") } else { format!("notify[{i}].{field}") };
                    self.issue(line(r), &field, message);
                }
            }
        }

        let mut client = ClientOptions::default();
        if let Some(t) = &raw.stall_timeout
            && let Some(stall) = self.ok(t, "stall_timeout", duration(t).and_then(at_least_a_second))
        {
            client.stall_timeout = stall;
            client.commit_timeout = ClientOptions::default_commit_timeout(stall);
        }
        if let Some(t) = &raw.commit_timeout
            && let Some(commit) = self.ok(t, "commit_timeout", duration(t).and_then(at_least_a_second))
        {
            client.commit_timeout = commit.max(client.stall_timeout);
        }

        if self.issues.len() > before {
            return None;
        }
        let mut scope_words: Vec<String> = values(include).into_iter().map(|g| format!("+{g}")).collect();
        scope_words.extend(values(exclude).into_iter().map(|g| format!("-{g}")));
        scope_words.extend(platforms.as_ref().map(|p| p.scope_word()));
        scope_words.extend(rename_words);
        Some(Policy {
            name,
            file: self.file.to_path_buf(),
            source: source?,
            source_repositories,
            source_aliases,
            destinations,
            repos: repos?,
            rename: Arc::new(rename),
            tags: Arc::new(tags),
            platforms: platforms.map(Arc::new),
            referrers: Arc::new(referrers),
            require: require.map(Arc::new),
            overwrite: raw.overwrite.unwrap_or(true),
            delete: raw.delete.unwrap_or(false),
            max_delete,
            force_delete: false,
            ignore_unreadable_fence: false,
            progress: Arc::default(),
            trigger: trigger?,
            retry,
            concurrency,
            notify: receivers,
            client,
            scope_words,
        })
    }

    /// `require:`: each key file read now (relative to the policy file's
    /// directory), each type checked on its own line. `None` when empty.
    fn require(&mut self, raw: &At<file::RawRequire>) -> Option<Requirement> {
        let mut req = Requirement::default();
        let dir = self.file.parent().map(Path::to_path_buf).unwrap_or_default();
        for (i, k) in raw.value.signed_by.iter().enumerate() {
            let path = dir.join(&k.value);
            let ok = TrustedKey::load(&path).map_err(|e| e.to_string());
            req.signed_by.extend(self.ok(k, &format!("require.signed_by[{i}]"), ok));
        }
        for (i, t) in raw.value.referrer_types.iter().enumerate() {
            let ok = crate::engine::referrers::check_artifact_type(&t.value).map(|()| t.value.clone());
            req.referrer_types.extend(self.ok(t, &format!("require.referrer_types[{i}]"), ok));
        }
        if raw.value.signed_by.is_empty() && raw.value.referrer_types.is_empty() {
            self.issue(line(raw), "require", "is empty: give signed_by: [cosign.pub, …] and/or referrer_types: [type/subtype, …]");
        }
        (!req.is_empty()).then_some(req)
    }

    /// `platforms:` and `platform_filter:`, each value checked on its own line.
    fn platforms(&mut self, list: Option<&At<Vec<At<String>>>>, mode: Option<&At<String>>) -> Option<PlatformFilter> {
        let mode = match mode {
            Some(m) => {
                if list.is_none() {
                    self.issue(line(m), "platform_filter", "has no effect without platforms: [os/arch, …]");
                }
                // On a bad mode the list is still checked (every mistake in one go).
                self.ok(m, "platform_filter", m.value.parse::<FilterMode>()).unwrap_or_default()
            }
            None => FilterMode::default(),
        };
        let list = list?;
        if list.value.is_empty() {
            self.issue(line(list), "platforms", "is empty: list the platforms to copy (e.g. [linux/amd64, linux/arm64]) or leave it out to copy all");
            return None;
        }
        let mut good = Vec::new();
        for (i, p) in list.value.iter().enumerate() {
            let ok = p.value.parse::<crate::engine::platforms::Platform>().map(|_| p.value.clone());
            good.extend(self.ok(p, &format!("platforms[{i}]"), ok));
        }
        (good.len() == list.value.len()).then(|| PlatformFilter::parse(&good, mode).ok()).flatten()
    }

    /// A registry entry's `aliases:`: `host[:port]` each.
    fn aliases(&mut self, list: &[At<String>], field: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let v = a.value.trim().to_ascii_lowercase();
            let ok = if !v.is_empty() && !v.contains(['/', '@', ' ']) && url::Url::parse(&format!("https://{v}")).is_ok() {
                Ok(v)
            } else {
                Err(format!("{:?} is not a host[:port] (e.g. 10.0.0.5:5000 or harbor.example.com)", a.value))
            };
            out.extend(self.ok(a, &format!("{field}.aliases[{i}]"), ok));
        }
        out
    }

    /// `endpoint` with the registry entry's `chunk_size`, if it gives one.
    fn chunk_size(&mut self, mut endpoint: Endpoint, size: Option<&At<String>>, field: &str) -> Option<Endpoint> {
        if let Some(size) = size {
            let ok = parse_size(&size.value).and_then(check_chunk_size);
            endpoint.chunk_size = Some(self.ok(size, &format!("{field}.chunk_size"), ok)?);
        }
        Some(endpoint)
    }

    fn endpoint(
        &mut self,
        registry: &At<String>,
        credentials: Option<&At<RawCredentials>>,
        fields: TlsFields<'_>,
        insecure: Option<bool>,
        field: &str,
    ) -> Option<Endpoint> {
        let url = self.ok(registry, &format!("{field}.registry"), RegistryUrl::parse(&registry.value).map_err(|e| e.to_string()))?;
        let credentials = match credentials {
            Some(c) => self.credentials(c, &url, &format!("{field}.credentials"))?,
            None => CredentialSource::Fixed(Credentials::Anonymous),
        };
        let (client_cert, client_key) = match (fields.client_cert, fields.client_key) {
            (Some(c), Some(k)) => {
                let (cert, key) = (PathBuf::from(&c.value), PathBuf::from(&k.value));
                if !self.offline {
                    self.ok(c, &format!("{field}.client_cert"), Tls::check_client_identity(&cert, &key))?;
                }
                (Some(cert), Some(key))
            }
            (None, None) => (None, None),
            (Some(at), None) | (None, Some(at)) => {
                self.issue(line(at), field, "client_cert and client_key go together");
                return None;
            }
        };
        let proxy = match fields.proxy {
            Some(p) => self.ok(p, &format!("{field}.proxy"), Proxy::parse(&p.value))?,
            None => Proxy::Environment,
        };
        let ca = match fields.ca_file {
            Some(ca) => {
                let path = PathBuf::from(&ca.value);
                let ok = if self.offline { Ok(path) } else { Tls::check_ca_file(&path).map(|()| path) };
                Some(self.ok(ca, &format!("{field}.ca_file"), ok)?)
            }
            None => None,
        };
        let tls = Tls { insecure_skip_verify: insecure.unwrap_or(false), ca_file: ca, client_cert, client_key };
        Some(Endpoint { url, credentials, tls, proxy, limits: Limits::default(), chunk_size: None })
    }

    /// A registry entry's optional `requests_per_second` / `bytes_per_second`.
    fn limits(&mut self, rps: Option<&At<f64>>, bps: Option<&At<String>>, field: &str) -> Limits {
        let requests_per_second = rps.and_then(|r| {
            let ok = if r.value > 0.0 && r.value.is_finite() { Ok(r.value) } else { Err("must be a number above zero".to_string()) };
            self.ok(r, &format!("{field}.requests_per_second"), ok)
        });
        let bytes_per_second =
            bps.and_then(|b| self.ok(b, &format!("{field}.bytes_per_second"), crate::registry::gate::parse_size(&b.value)));
        Limits { requests_per_second, bytes_per_second }
    }

    fn credentials(&mut self, c: &At<RawCredentials>, _url: &RegistryUrl, field: &str) -> Option<CredentialSource> {
        let raw = &c.value;
        let at = line(c);
        if raw.docker_config == Some(true) || raw.auth_file.is_some() {
            if raw.username.is_some() || raw.username_env.is_some() || raw.password_env.is_some() || raw.password_file.is_some() {
                self.issue(at, field, "docker_config / auth_file cannot be combined with a username or password");
                return None;
            }
            // Read (and helpers run) when a client needs them, each pass;
            // here only check that the files parse.
            let files: Vec<PathBuf> = raw.auth_file.iter().map(PathBuf::from).collect();
            if self.offline {
                return Some(CredentialSource::ConfigFiles { files });
            }
            return docker_config::check(&files).map(|()| CredentialSource::ConfigFiles { files }).map_err(|e| self.issue(at, field, e.to_string())).ok();
        }
        let username = match (&raw.username, &raw.username_env) {
            (Some(u), None) => Some(u.clone()),
            (None, Some(var)) => match (self.env)(var) {
                Some(v) if !v.is_empty() => Some(v),
                _ => {
                    self.issue(at, &format!("{field}.username_env"), format!("environment variable {var} is not set"));
                    return None;
                }
            },
            (Some(_), Some(_)) => {
                self.issue(at, field, "give username or username_env, not both");
                return None;
            }
            (None, None) => None,
        };
        let password = match (&raw.password_env, &raw.password_file) {
            (Some(var), None) => match (self.env)(var) {
                Some(v) => Some(v),
                None => {
                    self.issue(at, &format!("{field}.password_env"), format!("environment variable {var} is not set"));
                    return None;
                }
            },
            (None, Some(_)) if self.offline => Some(OFFLINE_PLACEHOLDER.to_string()),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(v) => Some(v.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) => {
                    self.issue(at, &format!("{field}.password_file"), format!("cannot read {path}: {e}"));
                    return None;
                }
            },
            (Some(_), Some(_)) => {
                self.issue(at, field, "give password_env or password_file, not both");
                return None;
            }
            (None, None) => None,
        };
        match (username, password) {
            (Some(username), Some(password)) => Some(CredentialSource::Fixed(Credentials::Basic { username, password: Secret::new(password) })),
            (None, None) => {
                self.issue(at, field, "say where the credentials come from: username/username_env with password_env/password_file, or docker_config: true");
                None
            }
            _ => {
                self.issue(at, field, "a username needs a password (password_env or password_file) and the other way round");
                None
            }
        }
    }
}

fn at_least_a_second(d: Duration) -> Result<Duration, String> {
    if d < Duration::from_secs(1) { Err("must be at least 1s".into()) } else { Ok(d) }
}

/// A chunk size regferry is willing to use: at least 256 KiB (the smallest
/// chunk it sends), at most 1 GiB (one chunk is held in memory).
pub fn check_chunk_size(size: u64) -> Result<u64, String> {
    use crate::registry::client::MIN_CHUNK_SIZE;
    if !(MIN_CHUNK_SIZE..=1 << 30).contains(&size) {
        return Err("a chunk size must be between 256KiB and 1GiB".into());
    }
    Ok(size)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(files: &[(&str, &str)], env: &[(&str, &str)]) -> Result<PolicySet, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load(dir.path(), &|k| env.get(k).cloned())
    }

    #[test]
    fn a_full_policy_loads_with_defaults_filled_in() {
        let text = "name: p\nsource:\n  registry: https://src.example.com/team\n  credentials: { username_env: U, password_env: P }\n\
                    destinations:\n  - registry: https://dst.example.com/base\n    namespace: mirror\n\
                    repositories: { include: ['**'] }\ntrigger: { cron: '0 */6 * * *' }\n";
        let set = load_text(&[("p.yaml", text)], &[("U", "user"), ("P", "pw")]).unwrap();
        let p = set.get("p").unwrap();
        assert!(matches!(&p.source.credentials, CredentialSource::Fixed(Credentials::Basic { username, .. }) if username == "user"));
        assert_eq!(p.destinations[0].url().to_string(), "https://dst.example.com/base/mirror");
        assert!(matches!(p.trigger, Trigger::Cron(_)));
        assert_eq!((p.overwrite, p.delete, p.concurrency, p.retry), (true, false, 8, RetryPolicy::default()));
        let spec = p.forward(&p.destinations[0]);
        let prefixes = |m: &RepoMapping| (m.source_prefix.clone(), m.dest_prefix.clone(), m.backwards);
        assert_eq!(prefixes(&spec.scope.mapping), ("team".into(), "base/mirror".into(), false));
        let back = p.reverse(&p.destinations[0]);
        assert_eq!(prefixes(&back.scope.mapping), ("base/mirror".into(), "team".into(), true));
        assert!(back.reversed && back.scope_key() != spec.scope_key());
    }

    #[test]
    fn timeouts_and_chunk_sizes_come_from_the_policy_and_yield_to_the_command_line() {
        let text = "name: p\nsource:\n  registry: https://src.example.com\n  chunk_size: 4MiB\n\
                    destinations:\n  - registry: https://dst.example.com\n    chunk_size: 8MiB\n  - registry: https://dr2.example.com\n\
                    stall_timeout: 2m\n";
        let set = load_text(&[("p.yaml", text)], &[]).unwrap();
        let p = set.get("p").unwrap();
        assert_eq!(p.source.chunk_size, Some(4 << 20));
        assert_eq!(p.destinations[0].endpoint.chunk_size, Some(8 << 20));
        assert_eq!(p.destinations[1].endpoint.chunk_size, None);
        let spec = p.forward(&p.destinations[0]);
        assert_eq!((spec.client.stall_timeout, spec.client.commit_timeout), (Duration::from_secs(120), Duration::from_secs(300)));
        assert_eq!(spec.destination.chunk_size, Some(8 << 20));
        assert_eq!(p.reverse(&p.destinations[0]).destination.chunk_size, Some(4 << 20), "after a failover the source is written to");

        let set = set.with_timeouts(&TimeoutOverrides { stall: Some(Duration::from_secs(600)), commit: None });
        let c = &set.get("p").unwrap().client;
        assert_eq!((c.stall_timeout, c.commit_timeout), (Duration::from_secs(600), Duration::from_secs(600)));

        let bad = "name: p\nsource:\n  registry: https://src.example.com\n  chunk_size: 1KiB\n\
                   destinations:\n  - registry: https://dst.example.com\n    chunk_size: lots\nstall_timeout: 10ms\ncommit_timeout: soon\n";
        let issues = match load_text(&[("p.yaml", bad)], &[]) {
            Err(PolicyError::Invalid(issues)) => issues,
            other => panic!("{other:?}"),
        };
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["source.chunk_size", "destinations[0].chunk_size", "stall_timeout", "commit_timeout"], "{issues:?}");
    }

    #[test]
    fn require_reads_each_key_file_and_points_at_each_mistake() {
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        let key = p256::ecdsa::SigningKey::from_bytes(&[5u8; 32].into()).unwrap();
        let pem = key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let base = "name: p\nsource: { registry: https://src.example.com }\ndestinations: [{ registry: https://dst.example.com }]\n";
        let ok = format!("{base}require: {{ signed_by: [keys/cosign.pub], referrer_types: [application/spdx+json] }}\n");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/cosign.pub"), &pem).unwrap();
        std::fs::write(dir.path().join("p.yaml"), &ok).unwrap();
        let set = load(dir.path(), &|_| None).unwrap();
        let p = set.get("p").unwrap();
        let spec = p.forward(&p.destinations[0]);
        let req = spec.scope.require.as_deref().expect("require reaches the scope");
        assert_eq!(req.signed_by.len(), 1);
        assert!(req.signed_by[0].file.ends_with("keys/cosign.pub"), "{:?}", req.signed_by[0].file);
        assert_eq!(req.referrer_types, ["application/spdx+json"]);
        assert!(set.get("p").unwrap().forward(&p.destinations[0]).scope.require.is_some());
        assert!(p.reverse(&p.destinations[0]).scope.require.is_some(), "the gate holds after a failover too");

        let bad = format!("{base}require:\n  signed_by: [missing.pub, p.yaml]\n  referrer_types: [spdx]\n");
        let e = load_text(&[("p.yaml", &bad)], &[]).unwrap_err().to_string();
        assert!(e.contains("p.yaml:5: require.signed_by[0]: cannot read"), "{e}");
        assert!(e.contains("require.signed_by[1]") && e.contains("not an ECDSA P-256 public key"), "{e}");
        assert!(e.contains("p.yaml:6: require.referrer_types[0]") && e.contains("not a media type"), "{e}");
        let empty = format!("{base}require: {{}}\n");
        let e = load_text(&[("p.yaml", &empty)], &[]).unwrap_err().to_string();
        assert!(e.contains("require: is empty"), "{e}");
    }

    #[test]
    fn referrers_and_immutable_tags_reach_the_scope() {
        let base = "name: p\nsource: { registry: https://src.example.com }\ndestinations: [{ registry: https://dst.example.com }]\n";
        let set = load_text(&[("p.yaml", base)], &[]).unwrap();
        let spec = set.get("p").unwrap().forward(&set.get("p").unwrap().destinations[0]);
        assert_eq!(*spec.scope.referrers, ReferrerOptions::default(), "referrers travel by default, every type");
        assert!(!spec.scope.immutable);

        let text = format!("{base}referrer_types: [application/spdx+json]\ntags: {{ immutable: true }}\n");
        let set = load_text(&[("p.yaml", &text)], &[]).unwrap();
        let spec = set.get("p").unwrap().forward(&set.get("p").unwrap().destinations[0]);
        assert_eq!(spec.scope.referrers.types, ["application/spdx+json"]);
        assert!(spec.scope.immutable && spec.scope.referrers.enabled);

        let off = format!("{base}referrers: false\n");
        let set = load_text(&[("p.yaml", &off)], &[]).unwrap();
        assert!(!set.get("p").unwrap().referrers.enabled);

        let bad = format!("{base}referrers: false\nreferrer_types: [spdx, 'application/x']\n");
        let e = load_text(&[("p.yaml", &bad)], &[]).unwrap_err().to_string();
        assert!(e.contains("referrer_types[0]") && e.contains("not a media type"), "{e}");
        assert!(e.contains("referrers: false copies no referrers"), "{e}");
    }

    #[test]
    fn secrets_do_not_leak_into_issues_or_debug_output() {
        let text = "name: p\nsource:\n  registry: https://src.example.com\n  credentials: { username: u, password_env: P }\n\
                    destinations:\n  - registry: 'https://dst.example.com'\n";
        let set = load_text(&[("p.yaml", text)], &[("P", "hunter2-secret")]).unwrap();
        assert!(!format!("{:?}", set.policies[0].source).contains("hunter2"));
    }

    #[test]
    fn registry_limits_load_with_human_sizes() {
        let text = "name: p\nsource:\n  registry: https://src.example.com\n  requests_per_second: 20\n\
                    destinations:\n  - registry: https://dst.example.com\n    bytes_per_second: 50MiB\n\
                    \x20 - registry: https://dst2.example.com\n    bytes_per_second: 1048576\n";
        let set = load_text(&[("p.yaml", text)], &[]).unwrap();
        let p = set.get("p").unwrap();
        assert_eq!(p.source.limits, Limits { requests_per_second: Some(20.0), bytes_per_second: None });
        assert_eq!(p.destinations[0].endpoint.limits.bytes_per_second, Some(50 * 1024 * 1024));
        assert_eq!(p.destinations[1].endpoint.limits.bytes_per_second, Some(1024 * 1024), "a plain number is bytes");
        let bad = "name: p\nsource:\n  registry: https://s.example.com\n  bytes_per_second: lots\n\
                   destinations:\n  - registry: https://d.example.com\n    requests_per_second: 0\n";
        let e = load_text(&[("p.yaml", bad)], &[]).unwrap_err().to_string();
        assert!(e.contains("source.bytes_per_second") && e.contains("destinations[0].requests_per_second"), "{e}");
    }

    #[test]
    fn max_delete_is_a_share_or_a_count_and_is_checked_with_its_line() {
        let text = |m: &str| format!("name: p\nsource: {{ registry: 'https://s.example.com' }}\ndestinations:\n  - registry: 'https://d.example.com'\ndelete: true\nmax_delete: {m}\n");
        let p = |m: &str| load_text(&[("p.yaml", &text(m))], &[]).map(|s| s.policies[0].max_delete);
        assert_eq!(p("25%").unwrap(), MaxDelete::Share(25.0));
        assert_eq!(p("50").unwrap(), MaxDelete::Count(50));
        assert_eq!(MaxDelete::default().allowed(100), 10);
        assert_eq!(MaxDelete::default().allowed(3), 1, "one deletion is always allowed");
        assert_eq!(MaxDelete::Share(100.0).allowed(7), 7);
        for bad in ["0", "0%", "150%", "lots", "-3"] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains("p.yaml:6: max_delete:"), "{bad}: {e}");
        }
    }

    #[test]
    fn platforms_load_with_their_mode_and_each_mistake_has_its_line() {
        let text = "name: p\nsource:\n  registry: https://s.example.com\ndestinations:\n  - registry: https://d.example.com\n\
                    platforms: [linux/amd64, linux/arm64]\n";
        let set = load_text(&[("p.yaml", text)], &[]).unwrap();
        let f = set.get("p").unwrap().platforms.clone().expect("a platform filter");
        assert_eq!((f.label(), f.mode), ("linux/amd64,linux/arm64".to_string(), FilterMode::Rewrite), "rewrite is the default");
        let spec = set.get("p").unwrap().forward(&set.get("p").unwrap().destinations[0]);
        assert!(spec.scope.platforms.is_some() && spec.scope_key().contains("platforms=linux/amd64,linux/arm64:rewrite"));
        let sparse = text.replace("platforms:", "platform_filter: sparse\nplatforms:");
        assert_eq!(load_text(&[("p.yaml", &sparse)], &[]).unwrap().get("p").unwrap().platforms.as_ref().unwrap().mode, FilterMode::Sparse);

        let bad = "name: p\nsource:\n  registry: https://s.example.com\ndestinations:\n  - registry: https://d.example.com\n\
                   platforms:\n  - linux/amd64\n  - linux\nplatform_filter: both\n";
        let e = load_text(&[("p.yaml", bad)], &[]).unwrap_err().to_string();
        assert!(e.contains("p.yaml:8: platforms[1]: \"linux\" is not a platform"), "{e}");
        assert!(e.contains("p.yaml:9: platform_filter: \"both\" is not a platform filter"), "{e}");
        let alone = "name: p\nsource:\n  registry: https://s.example.com\ndestinations:\n  - registry: https://d.example.com\n\
                     platform_filter: sparse\n";
        let e = load_text(&[("p.yaml", alone)], &[]).unwrap_err().to_string();
        assert!(e.contains("p.yaml:6: platform_filter: has no effect without platforms"), "{e}");
        let empty = alone.replace("platform_filter: sparse", "platforms: []");
        assert!(load_text(&[("p.yaml", &empty)], &[]).unwrap_err().to_string().contains("platforms: is empty"));
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let r = RetryPolicy { backoff: Duration::from_secs(60), max_backoff: Duration::from_secs(300), ..RetryPolicy::default() };
        let delays: Vec<u64> = (1..=5).map(|n| r.delay(n).as_secs()).collect();
        assert_eq!(delays, [60, 120, 240, 300, 300]);
    }
}
