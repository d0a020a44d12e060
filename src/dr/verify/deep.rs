//! The deep check: every manifest tree at the destination fetched once per
//! (repository, digest), child manifests followed (only the selected
//! children of an index a platform filter narrowed), then each distinct
//! (repository, blob) `HEAD`ed once, with bounded concurrency; what each
//! tag's tree lacks becomes a `not pullable` problem.
//!
//! Only reads: it never writes to, copies to or repairs the destination
//! (re-copying what it finds missing is `dr::repair`'s).

use std::collections::{BTreeSet, HashMap, HashSet};

use futures::StreamExt;

use super::is_not_found;
use super::report::{ProblemKind, TagProblem};
use crate::engine::platforms::{self, PlatformFilter, Selection};
use crate::registry::manifest::{self, Kind};
use crate::registry::{Digest, Reference, RepoName, Scopes, Tag};
use crate::scheme::Scheme;

/// What a manifest tree at the destination lacks.
#[derive(Debug, Clone, Default)]
pub(super) struct Missing {
    manifests: BTreeSet<String>,
    blobs: BTreeSet<String>,
    errors: BTreeSet<String>,
}

impl Missing {
    pub(super) fn is_empty(&self) -> bool {
        self.manifests.is_empty() && self.blobs.is_empty() && self.errors.is_empty()
    }

    /// `repo:tag` (at `digest`) is not pullable: it lacks this.
    pub(super) fn problem(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> TagProblem {
        let mut t = TagProblem::new(ProblemKind::NotPullable);
        t.destination_repository = Some(repo.to_string());
        t.tag = Some(tag.to_string());
        t.destination_digest = Some(digest.to_string());
        self.fill(&mut t);
        t
    }

    pub(super) fn fill(&self, p: &mut TagProblem) {
        p.missing_manifests = self.manifests.iter().cloned().collect();
        p.missing_blobs = self.blobs.iter().cloned().collect();
        if !self.errors.is_empty() {
            p.error = Some(self.errors.iter().cloned().collect::<Vec<_>>().join("; "));
        }
    }
}

pub(super) struct Deep {
    /// (repository, top manifest digest) → what its tree lacks.
    pub(super) missing: HashMap<(RepoName, Digest), Missing>,
    pub(super) manifests: usize,
    pub(super) blobs: usize,
}

/// One destination manifest as fetched.
enum Node {
    Absent,
    Failed(String),
    Tree { children: Vec<Digest>, blobs: Vec<Digest> },
}

/// Walk every manifest tree at the destination once per (repository,
/// digest), then `HEAD` every distinct (repository, blob) once.
pub(super) async fn deep_check(dst: &dyn Scheme, roots: &[(RepoName, Tag, Digest)], concurrency: usize, narrowed_by: Option<&PlatformFilter>, counters: &crate::engine::stats::PlanCounters) -> Deep {
    let root_keys: HashSet<(RepoName, Digest)> = roots.iter().map(|(r, _, d)| (r.clone(), d.clone())).collect();
    let mut nodes: HashMap<(RepoName, Digest), Node> = HashMap::new();
    let mut level: Vec<(RepoName, Digest)> = {
        let set: BTreeSet<(RepoName, String)> = roots.iter().map(|(r, _, d)| (r.clone(), d.to_string())).collect();
        set.into_iter().filter_map(|(r, d)| d.parse().ok().map(|d| (r, d))).collect()
    };
    while !level.is_empty() {
        let fetched: Vec<((RepoName, Digest), Node)> = futures::stream::iter(level)
            .map(|(repo, digest)| {
                let is_root = root_keys.contains(&(repo.clone(), digest.clone()));
                async move {
                let node = match dst.get_manifest(&repo, &Reference::Digest(digest.clone()), &Scopes::pull(&repo)).await {
                    Ok(body) => match manifest::parse(&body.bytes, &body.content_type) {
                        Ok(p) => Node::Tree {
                            children: match (p.kind, narrowed_by.filter(|_| is_root)) {
                                // A tag's index narrowed to some platforms (sparse: the
                                // original index, only the selected children copied):
                                // only the selected children must be there.
                                (Kind::Index, Some(filter)) => match platforms::select(filter, &body.bytes, &body.content_type) {
                                    Ok(Selection::Narrowed(n)) => n.children.into_iter().map(|d| d.digest).collect(),
                                    _ => p.manifests.into_iter().map(|d| d.digest).collect(),
                                },
                                (Kind::Index, None) => p.manifests.into_iter().map(|d| d.digest).collect(),
                                _ => Vec::new(),
                            },
                            blobs: p.blobs.into_iter().filter(|b| !b.foreign).map(|b| b.digest).collect(),
                        },
                        Err(e) => Node::Failed(format!("manifest {digest}: {e}")),
                    },
                    Err(e) if is_not_found(&e) => Node::Absent,
                    Err(e) => Node::Failed(e.to_string()),
                };
                crate::engine::stats::Stats::add(&counters.deep_checked, 1);
                ((repo, digest), node)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut next = Vec::new();
        for (key, node) in fetched {
            if let Node::Tree { children, .. } = &node {
                for c in children {
                    let k = (key.0.clone(), c.clone());
                    if !nodes.contains_key(&k) && !next.contains(&k) {
                        next.push(k);
                    }
                }
            }
            nodes.insert(key, node);
        }
        next.retain(|k| !nodes.contains_key(k));
        level = next;
    }

    let blobs: BTreeSet<(RepoName, String)> = nodes
        .iter()
        .flat_map(|((repo, _), node)| match node {
            Node::Tree { blobs, .. } => blobs.iter().map(|b| (repo.clone(), b.to_string())).collect(),
            _ => Vec::new(),
        })
        .collect();
    let checked = blobs.len();
    let blob_state: HashMap<(RepoName, String), Result<bool, String>> = futures::stream::iter(blobs)
        .map(|(repo, digest)| async move {
            let state = match digest.parse::<Digest>() {
                Ok(d) => dst.blob_exists(&repo, &d, &Scopes::pull(&repo)).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            crate::engine::stats::Stats::add(&counters.deep_checked, 1);
            ((repo, digest), state)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;

    let mut missing = HashMap::new();
    for (repo, _, digest) in roots {
        let key = (repo.clone(), digest.clone());
        if missing.contains_key(&key) {
            continue;
        }
        let mut m = Missing::default();
        let mut stack = vec![digest.clone()];
        let mut seen = HashSet::new();
        while let Some(d) = stack.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            match nodes.get(&(repo.clone(), d.clone())) {
                Some(Node::Absent) | None => {
                    m.manifests.insert(d.to_string());
                }
                Some(Node::Failed(e)) => {
                    m.errors.insert(e.clone());
                }
                Some(Node::Tree { children, blobs }) => {
                    stack.extend(children.iter().cloned());
                    for b in blobs {
                        match blob_state.get(&(repo.clone(), b.to_string())) {
                            Some(Ok(true)) => {}
                            Some(Ok(false)) | None => {
                                m.blobs.insert(b.to_string());
                            }
                            Some(Err(e)) => {
                                m.errors.insert(format!("blob {b}: {e}"));
                            }
                        }
                    }
                }
            }
        }
        missing.insert(key, m);
    }
    Deep { missing, manifests: nodes.len(), blobs: checked }
}
