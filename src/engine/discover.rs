//! Discovery: which source repositories and tags are in scope.
//!
//! Reads the catalog (or takes an explicit repository list), applies the
//! repository globs and the tag selector, and lists tags. It only reads from
//! the source; a name that breaks the grammar (at the source, or at the
//! destination once the prefix is added) becomes a [`Problem`], never a
//! request. When source and destination are one registry, the
//! destination's own namespace is never read as source (a registry
//! mirrored into its own `mirror/` must not grow `mirror/mirror/`).

use std::sync::Arc;

use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};

use super::EngineError;
use super::plan::{Problem, RepoMapping};
use super::referrers::ReferrerOptions;
use crate::registry::{RegistryUrl, RepoName, Tag};
use crate::scheme::Scheme;

/// Chooses the tags of a repository to replicate (regexes, semver, newest N…).
pub trait TagSelector: Send + Sync {
    fn select(&self, repo: &RepoName, tags: Vec<Tag>) -> Vec<Tag>;
    /// The tags, when the rules name them exactly (no pattern, no version
    /// rule): discovery then asks for them directly instead of listing.
    fn literal(&self) -> Option<LiteralTags> {
        None
    }
}

/// Tags named exactly by the rules.
#[derive(Debug, Clone, Default)]
pub struct LiteralTags {
    pub tags: Vec<Tag>,
    /// Their cosign companions (`sha256-<hex>.sig|.att|.sbom`) travel too.
    pub companions: bool,
}

/// Every tag.
pub struct AllTags;

impl TagSelector for AllTags {
    fn select(&self, _repo: &RepoName, tags: Vec<Tag>) -> Vec<Tag> {
        tags
    }
}

/// The last path component of regferry's own bookkeeping repository (the
/// failover fence, see `pass::fence`): never replicated, verified or pruned as
/// an ordinary repository, whatever the globs say.
pub const RESERVED_REPOSITORY: &str = "regferry-fence";

/// Whether `name` (full or relative) is regferry's own bookkeeping repository.
pub fn is_reserved(name: &str) -> bool {
    name.rsplit('/').next() == Some(RESERVED_REPOSITORY)
}

/// Repository globs: `*` stays within one path component, `**` crosses them.
#[derive(Clone, Default)]
pub struct RepoFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// Include patterns without glob characters: names the user expects to exist.
    literals: Vec<String>,
    /// The include patterns as written, in the glob set's order.
    patterns: Vec<String>,
}

fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '[', ']', '{', '}'])
}

fn glob_set(patterns: &[String]) -> Result<Option<GlobSet>, EngineError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p.trim_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|e| EngineError::Input(format!("invalid repository glob {p:?}: {}", e.kind())))?;
        b.add(glob);
    }
    b.build().map(Some).map_err(|e| EngineError::Input(format!("invalid repository globs: {e}")))
}

impl RepoFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<RepoFilter, EngineError> {
        // validate each alone first, so the error names the culprit
        for p in include.iter().chain(exclude) {
            Glob::new(p).map_err(|e| EngineError::Input(format!("invalid repository glob {p:?}: {}", e.kind())))?;
        }
        Ok(RepoFilter {
            include: glob_set(include)?,
            exclude: glob_set(exclude)?,
            literals: include.iter().filter(|p| is_literal(p)).map(|p| p.trim_matches('/').to_string()).collect(),
            patterns: include.to_vec(),
        })
    }

    /// Whether the repository `relative` (to the prefix) is in scope. The
    /// reserved repository never is.
    pub fn matches(&self, relative: &str) -> bool {
        !is_reserved(relative)
            && self.include.as_ref().is_none_or(|s| s.is_match(relative))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(relative))
    }

    /// The include globs (not plain names: a missing plain name is already a
    /// problem of its own) that none of `in_scope` matches — most likely a
    /// typo, reported as a warning rather than a silent empty pass.
    pub fn unmatched<'a>(&self, in_scope: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let Some(include) = &self.include else { return Vec::new() };
        let mut hit = vec![false; self.patterns.len()];
        for name in in_scope {
            for i in include.matches(name) {
                if let Some(h) = hit.get_mut(i) {
                    *h = true;
                }
            }
        }
        self.patterns.iter().zip(hit).filter(|(p, hit)| !hit && !is_literal(p)).map(|(p, _)| p.clone()).collect()
    }

    /// True when every include pattern is a plain name (so they can stand in
    /// for a catalog the registry does not serve).
    pub fn all_literal(&self) -> bool {
        self.include.is_some() && self.literals.len() == self.include.as_ref().map_or(0, GlobSet::len)
    }
}

/// What to replicate from a source.
#[derive(Clone)]
pub struct Scope {
    pub mapping: RepoMapping,
    pub repos: RepoFilter,
    /// Repositories to take instead of the catalog (relative to the source prefix).
    pub explicit: Vec<String>,
    pub tags: Arc<dyn TagSelector>,
    /// Copy only these platforms of multi-platform images (see [`super::platforms`]).
    pub platforms: Option<Arc<super::platforms::PlatformFilter>>,
    /// Referrers (and their fallback tags) travel with their subjects.
    pub referrers: Arc<ReferrerOptions>,
    /// Immutable tags: a tag the destination lists is never checked again.
    pub immutable: bool,
    /// Planning progress (read by a progress display).
    pub counters: Arc<super::stats::PlanCounters>,
    /// What a tag must have to be copied (policy `require:`; see [`super::gate`]).
    pub require: Option<Arc<super::gate::Requirement>>,
    /// What narrowing to `platforms` produced on earlier passes.
    pub narrowed: Arc<super::platforms::NarrowMemory>,
    /// The one named tag is read at the source under another reference
    /// (`copy`; see [`super::plan::Pin`]). Ignored unless the tag rules name tags exactly.
    pub pin: Option<super::plan::Pin>,
}

impl Scope {
    pub fn everything(mapping: RepoMapping) -> Scope {
        Scope::new(mapping, RepoFilter::default(), Arc::new(AllTags))
    }

    /// A scope with the default referrer handling and mutable tags.
    pub fn new(mapping: RepoMapping, repos: RepoFilter, tags: Arc<dyn TagSelector>) -> Scope {
        Scope { mapping, repos, explicit: Vec::new(), tags, platforms: None, referrers: Arc::default(), immutable: false, counters: Arc::default(), require: None, narrowed: Arc::default(), pin: None }
    }

    /// The tags of `repo` this scope replicates: the selector's choice,
    /// plus every referrers fallback tag (`sha256-<hex>`) when referrers
    /// travel — whatever the tag rules say, since they exist for their
    /// subject (which decides at execution whether they go) — and none of
    /// them when referrers do not travel.
    pub fn select(&self, repo: &RepoName, tags: Vec<Tag>) -> Vec<Tag> {
        let (fallback, tags): (Vec<Tag>, Vec<Tag>) =
            tags.into_iter().partition(|t| crate::registry::referrers::fallback_subject(t).is_some());
        let mut out = match self.mapping.tags.is_some() && self.mapping.backwards {
            // The tag rules name the tags of the policy's own source: those
            // of a renamed DR site are selected by the names they map back to.
            true => {
                let named: Vec<Tag> = tags.iter().filter_map(|t| self.mapping.scope_tag(t)).collect();
                self.tags.select(repo, named).iter().filter_map(|t| self.mapping.source_tag_of_scope(t)).collect()
            }
            false => self.tags.select(repo, tags),
        };
        if self.referrers.enabled {
            out.extend(fallback);
        }
        out
    }
}

/// A source repository in scope with its selected tags.
#[derive(Debug, Clone)]
pub struct RepoTags {
    pub source: RepoName,
    pub dest: RepoName,
    pub tags: Vec<Tag>,
    /// The tags were named by the rules, not listed: they may not exist,
    /// and their referrers fallback tags are looked up by name.
    pub literal: bool,
}

/// The result of discovery.
#[derive(Debug, Default)]
pub struct Discovered {
    pub repos: Vec<RepoTags>,
    pub problems: Vec<Problem>,
    /// Include globs that matched no repository at the source.
    pub unmatched: Vec<String>,
    /// How referrers travel (for diffing their fallback tags).
    pub referrers: Arc<ReferrerOptions>,
    /// Immutable tags (see [`Scope::immutable`]).
    pub immutable: bool,
    /// Planning progress, carried on to the diff.
    pub counters: Arc<super::stats::PlanCounters>,
    /// Indexes will be narrowed to some platforms: a tag missing at the
    /// destination is asked with `HEAD` (free where pulls are counted), not
    /// `GET`, since what is remembered about its narrowing may spare the pull.
    pub narrowing: bool,
    /// Cosign companions of tags named by the rules (not listed) are
    /// looked up by name.
    pub literal_companions: bool,
    /// A named tag read at the source under another reference (see [`Scope::pin`]).
    pub pin: Option<super::plan::Pin>,
    /// How source tags are named at the destination (`tags.rename`).
    pub tag_mapping: RepoMapping,
}

fn repo_problem(source: &str, error: String) -> Problem {
    Problem { source_repo: source.to_string(), dest_repo: None, tag: None, error }
}

/// Registries hold repository names up to this many characters.
const MAX_NAME: usize = 255;

/// The source repositories in scope (full names, prefix included), each
/// with its destination name.
async fn repositories(
    src: &dyn Scheme,
    dest: &RegistryUrl,
    scope: &Scope,
    problems: &mut Vec<Problem>,
    unmatched: &mut Vec<String>,
) -> Result<Vec<(RepoName, RepoName)>, EngineError> {
    let prefix = &scope.mapping.source_prefix;
    let full = |relative: &str| if prefix.is_empty() { relative.to_string() } else { format!("{prefix}/{relative}") };

    let names: Vec<String> = if !scope.explicit.is_empty() {
        scope.explicit.iter().map(|r| full(r.trim_matches('/'))).collect()
    } else {
        match src.catalog().await {
            Ok(all) => {
                for literal in &scope.repos.literals {
                    let name = full(&scope.mapping.source_name_of(literal));
                    if !all.contains(&name) {
                        problems.push(repo_problem(&name, format!("repository {name} not found in the catalog of {}", src.name())));
                    }
                }
                all
            }
            Err(e) if scope.repos.all_literal() => {
                tracing::warn!(registry = %src.name(), error = %e, "catalog unavailable; using the repositories named on the command line");
                scope.repos.literals.iter().map(|l| full(&scope.mapping.source_name_of(l))).collect()
            }
            Err(e) => return Err(EngineError::Catalog(Box::new(e))),
        }
    };

    let same_registry = src.url().base() == dest.base();
    let mut own_output = 0;
    let mut out = Vec::new();
    let mut in_scope: Vec<String> = Vec::new();
    for name in names {
        let repo = match name.parse::<RepoName>() {
            Ok(repo) => repo,
            Err(e) => {
                problems.push(repo_problem(&name, e.to_string()));
                continue;
            }
        };
        let Some(relative) = scope.mapping.relative(&repo) else { continue };
        if is_reserved(relative.as_str()) || !scope.repos.matches(&scope.mapping.scope_name(relative.as_str())) {
            continue;
        }
        if same_registry && scope.mapping.is_own_output(&repo) {
            own_output += 1;
            continue;
        }
        in_scope.push(relative.to_string());
        match scope.mapping.try_map(&repo) {
            Some(Ok(dest)) if is_reserved(dest.as_str()) => problems.push(repo_problem(
                repo.as_str(),
                format!("repository {repo} would be renamed to {dest}, regferry's own fence repository: refused (change the rename rule)"),
            )),
            Some(Ok(dest)) => out.push((repo, dest)),
            Some(Err(_)) => {
                let dest = format!("{}/{}", scope.mapping.dest_prefix, scope.mapping.renamed(relative.as_str()));
                let dest = dest.trim_start_matches('/').to_string();
                let error = if dest.len() > MAX_NAME {
                    format!(
                        "repository {repo} cannot be replicated: its destination name {dest} would be {} characters, \
                         above the {MAX_NAME} a registry holds (shorten the destination prefix)",
                        dest.len()
                    )
                } else {
                    format!("repository {repo} cannot be replicated: its destination name {dest} is not a valid repository name")
                };
                problems.push(Problem { source_repo: repo.to_string(), dest_repo: None, tag: None, error });
            }
            None => {}
        }
    }
    if own_output > 0 {
        tracing::info!(
            registry = %src.name(), namespace = %scope.mapping.dest_prefix, repositories = own_output,
            "source and destination are one registry: the destination namespace is not replicated into itself"
        );
    }
    // Renames: two names that would get one destination name, and (for a
    // policy) names that would not map back, are refused with their names.
    let conflicts = scope.mapping.conflicts(in_scope.iter().map(String::as_str));
    if !conflicts.is_empty() {
        let refused: std::collections::HashSet<&str> = conflicts.iter().flat_map(|c| c.sources.iter().map(String::as_str)).collect();
        out.retain(|(repo, _)| scope.mapping.relative(repo).is_none_or(|r| !refused.contains(r.as_str())));
        for c in &conflicts {
            for source in &c.sources {
                problems.push(repo_problem(&full(source), c.message.clone()));
            }
        }
    }
    let scope_names: Vec<String> = in_scope.iter().map(|r| scope.mapping.scope_name(r)).collect();
    *unmatched = scope.repos.unmatched(scope_names.iter().map(String::as_str));
    out.sort();
    out.dedup();
    Ok(out)
}

/// List the repositories and tags in `scope`, `concurrency` listings at a
/// time, for replication to the registry at `dest` (only compared with the
/// source's address, never contacted).
pub async fn discover(src: &dyn Scheme, dest: &RegistryUrl, scope: &Scope, concurrency: usize) -> Result<Discovered, EngineError> {
    let mut discovery = Discovery::start(src, dest, scope).await?;
    Ok(discovery.next_part(src, scope, concurrency, usize::MAX).await.unwrap_or_default())
}

/// Discovery in parts: the repositories in scope are read from the catalog
/// at once, their tags listed part by part ([`Discovery::next_part`]), so a
/// pass over a registry of any size holds one part's listings at a time.
/// A repository is never split between parts (its signature and fallback
/// tags wait on its images).
pub struct Discovery {
    repos: std::collections::VecDeque<(RepoName, RepoName)>,
    /// The catalog's problems and unmatched globs: given with the first part.
    problems: Vec<Problem>,
    unmatched: Vec<String>,
    first: bool,
    /// Tags listed so far and the repositories they came from (the size of
    /// the next batch of listings is estimated from them).
    listed: (usize, usize),
}

impl Discovery {
    /// Read the repositories in scope (the catalog, or the names given).
    pub async fn start(src: &dyn Scheme, dest: &RegistryUrl, scope: &Scope) -> Result<Discovery, EngineError> {
        let mut problems = Vec::new();
        let mut unmatched = Vec::new();
        let repos = repositories(src, dest, scope, &mut problems, &mut unmatched).await?;
        super::stats::Stats::add(&scope.counters.repos_total, repos.len() as u64);
        Ok(Discovery { repos: repos.into(), problems, unmatched, first: true, listed: (0, 0) })
    }

    /// The next whole repositories, listed until they hold at least
    /// `max_tags` tags (or none are left); `None` once every repository was
    /// given. The first part carries the catalog's problems, even with no
    /// repository.
    pub async fn next_part(&mut self, src: &dyn Scheme, scope: &Scope, concurrency: usize, max_tags: usize) -> Option<Discovered> {
        if self.repos.is_empty() && !std::mem::take(&mut self.first) {
            return None;
        }
        self.first = false;
        let mut out = Discovered {
            repos: Vec::new(),
            problems: std::mem::take(&mut self.problems),
            unmatched: std::mem::take(&mut self.unmatched),
            referrers: scope.referrers.clone(),
            immutable: scope.immutable,
            counters: scope.counters.clone(),
            narrowing: scope.platforms.is_some(),
            literal_companions: false,
            pin: None,
            tag_mapping: scope.mapping.clone(),
        };
        // Tags named exactly: no listing (a listing can be many pages).
        if let Some(literal) = scope.tags.literal() {
            // The rules name the policy's source's tags; this source may call them otherwise (`tags.rename`).
            let named: Vec<Tag> = literal.tags.iter().filter_map(|t| scope.mapping.source_tag_of_scope(t)).collect();
            let take = (max_tags / named.len().max(1)).clamp(1, self.repos.len().max(1));
            out.repos = self.repos.drain(..take.min(self.repos.len())).map(|(source, dest)| RepoTags { source, dest, tags: named.clone(), literal: true }).collect();
            out.literal_companions = literal.companions;
            out.pin = scope.pin.clone();
            return Some(out);
        }
        let mut tags_in_part = 0usize;
        while tags_in_part < max_tags && !self.repos.is_empty() {
            // As many listings at once as the tags still wanted are likely
            // to need (one at first: a repository may hold any number).
            let batch = match self.listed {
                _ if max_tags == usize::MAX => concurrency,
                (_, 0) => 1,
                (tags, repos) => (max_tags - tags_in_part).div_ceil((tags / repos).max(1)),
            }
            .clamp(1, concurrency.max(1))
            .min(self.repos.len());
            let counters = &scope.counters;
            let listings: Vec<_> = futures::stream::iter(self.repos.drain(..batch))
                .map(|(repo, dest)| async move {
                    let tags = src.tags(&repo).await;
                    super::stats::Stats::add(&counters.repos_listed, 1);
                    super::stats::Stats::add(&counters.tags_found, tags.as_ref().map_or(0, |t| t.len() as u64));
                    (repo, dest, tags)
                })
                .buffered(concurrency.max(1))
                .collect()
                .await;
            for (source, dest, listing) in listings {
                let raw = match listing {
                    Ok(raw) => raw,
                    Err(e) if e.has_code("NAME_UNKNOWN") || e.status() == Some(404) => {
                        out.problems.push(repo_problem(source.as_str(), format!("repository {source} does not exist at {}: {e}", src.name())));
                        continue;
                    }
                    Err(e) => {
                        out.problems.push(repo_problem(source.as_str(), format!("cannot list tags of {source}: {e}")));
                        continue;
                    }
                };
                self.listed = (self.listed.0 + raw.len(), self.listed.1 + 1);
                tags_in_part += raw.len();
                let mut tags = Vec::with_capacity(raw.len());
                for t in raw {
                    match t.parse::<Tag>() {
                        Ok(tag) => tags.push(tag),
                        Err(e) => out.problems.push(Problem {
                            source_repo: source.to_string(),
                            dest_repo: Some(dest.to_string()),
                            tag: Some(t.chars().take(128).collect()),
                            error: e.to_string(),
                        }),
                    }
                }
                tags.sort();
                tags.dedup();
                let tags = scope.select(&source, tags);
                out.repos.push(RepoTags { source, dest, tags, literal: false });
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of OCI layouts, `repos` as (name, number of tags).
    fn layouts(repos: &[(&str, usize)]) -> (tempfile::TempDir, crate::scheme::ocidir::OciDir) {
        let dir = tempfile::tempdir().unwrap();
        for (name, tags) in repos {
            let layout = dir.path().join(name);
            std::fs::create_dir_all(&layout).unwrap();
            std::fs::write(layout.join("oci-layout"), crate::scheme::ocidir::LAYOUT_FILE).unwrap();
            let manifests: Vec<serde_json::Value> = (0..*tags)
                .map(|t| {
                    let digest = crate::registry::Digest::sha256_of(format!("{name}:{t}").as_bytes());
                    serde_json::json!({ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.as_str(), "size": 2,
                        "annotations": { crate::scheme::ocidir::REF_NAME: format!("t{t}") } })
                })
                .collect();
            std::fs::write(layout.join("index.json"), serde_json::json!({ "schemaVersion": 2, "manifests": manifests }).to_string()).unwrap();
        }
        let url = RegistryUrl::parse(&format!("oci:{}", dir.path().display())).unwrap();
        let oci = crate::scheme::ocidir::OciDir::new(&url, false).unwrap();
        (dir, oci)
    }

    #[tokio::test]
    async fn parts_hold_whole_repositories_of_at_least_the_tags_asked() {
        let (_dir, oci) = layouts(&[("r1", 5), ("r2", 1), ("r3", 3), ("r4", 2)]);
        let dest = RegistryUrl::parse("http://127.0.0.1:1").unwrap();
        let repos = RepoFilter::new(&["r*".into(), "missing".into()], &[]).unwrap();
        let scope = Scope::new(RepoMapping::new("", ""), repos, Arc::new(AllTags));
        let mut discovery = Discovery::start(&oci, &dest, &scope).await.unwrap();
        let mut parts = Vec::new();
        while let Some(part) = discovery.next_part(&oci, &scope, 4, 3).await {
            let repos: Vec<(String, usize)> = part.repos.iter().map(|r| (r.source.to_string(), r.tags.len())).collect();
            parts.push((repos, part.problems.len()));
        }
        let want = |repos: &[(&str, usize)], problems: usize| (repos.iter().map(|(r, n)| (r.to_string(), *n)).collect::<Vec<_>>(), problems);
        assert_eq!(
            parts,
            [
                // The catalog's problem (a plain name not there) comes with the first part.
                want(&[("r1", 5)], 1),
                // Listed until the part holds at least 3 tags; no repository split.
                want(&[("r2", 1), ("r3", 3)], 0),
                want(&[("r4", 2)], 0),
            ]
        );
        // The whole of it at once, as before parts.
        let all = discover(&oci, &dest, &scope, 4).await.unwrap();
        assert_eq!(all.repos.iter().map(|r| r.tags.len()).sum::<usize>(), 11);
        assert_eq!(all.problems.len(), 1);
        // An empty scope still gives one (empty) first part, then none.
        let none = Scope::new(RepoMapping::new("", ""), RepoFilter::new(&["nothing-*".into()], &[]).unwrap(), Arc::new(AllTags));
        let mut discovery = Discovery::start(&oci, &dest, &none).await.unwrap();
        let first = discovery.next_part(&oci, &none, 4, 3).await.expect("a first part");
        assert!(first.repos.is_empty());
        assert_eq!(first.unmatched, ["nothing-*"]);
        assert!(discovery.next_part(&oci, &none, 4, 3).await.is_none());
    }

    #[test]
    fn globs() {
        let f = RepoFilter::new(&["frontend/**".into(), "library/*".into()], &["**/tmp-*".into()]).unwrap();
        assert!(f.matches("frontend/a/b"));
        assert!(f.matches("library/nginx"));
        assert!(!f.matches("library/x/y"));
        assert!(!f.matches("frontend/tmp-1"));
        assert!(!f.all_literal());
        assert!(RepoFilter::new(&["a/b".into()], &[]).unwrap().all_literal());
        assert!(RepoFilter::default().matches("anything/at/all"));
        assert!(!RepoFilter::default().matches("regferry-fence") && !f.matches("frontend/regferry-fence"), "the fence is never in scope");
        assert_eq!(f.unmatched(["frontend/web"]), ["library/*"]);
        assert!(f.unmatched(["frontend/web", "library/x"]).is_empty());
        assert!(RepoFilter::new(&["a/b".into()], &[]).unwrap().unmatched([]).is_empty(), "a plain name is reported as missing instead");
        let e = RepoFilter::new(&["a/[b".into()], &[]).err().unwrap().to_string();
        assert!(e.contains("a/[b"), "{e}");
    }
}
