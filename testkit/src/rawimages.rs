//! The benchmark's floor for a whole copy: the raw copy's blobs plus the
//! least a destination needs to hold the same images.
//!
//! [`copy`] first moves each distinct blob once (the raw copy, into the
//! first repository that holds it), then lists every source repository,
//! `GET`s each manifest once, mounts a blob into each further repository
//! that uses it, and `PUT`s the manifest (children by digest, then the tag).
//! No `HEAD`s, no digest checks, no retries, no state: whatever a complete
//! image copy cannot avoid on the registry API. A tool's time against it is
//! its own overhead; the raw copy's time against it is what the manifests
//! alone cost on this machine. It must never skip work it cannot do: any
//! failure panics, so a flattering yardstick cannot pass unnoticed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::client::{ACCEPT, Access, Registry};
use crate::rawcopy::{BlobRef, copy_blobs, descriptors, dest_repo, raw_client};

/// Mounts already made or under way: (destination repository, digest).
type Placed = Mutex<HashMap<(String, String), Arc<OnceCell<()>>>>;

struct Ctx {
    http: reqwest::Client,
    from: String,
    to: String,
    dest_prefix: String,
    /// digest → the source repository its one upload went to.
    home: HashMap<String, String>,
    placed: Placed,
}

impl Ctx {
    fn dest(&self, repo: &str) -> String {
        dest_repo(&self.dest_prefix, repo)
    }

    /// Make `digest` present in the destination's `repo`: nothing when its
    /// upload went there, else one cross-repository mount (once).
    async fn place(&self, repo: &str, digest: &str) {
        let home = self.home.get(digest).unwrap_or_else(|| panic!("{digest} of {repo} is not in the blob list"));
        if home == repo {
            return;
        }
        let cell = self.placed.lock().expect("placed").entry((repo.to_string(), digest.to_string())).or_default().clone();
        cell.get_or_init(|| async {
            let url = format!("{}/v2/{}/blobs/uploads/?mount={digest}&from={}", self.to, self.dest(repo), self.dest(home));
            let resp = self.http.post(url).send().await.expect("POST mount");
            assert_eq!(resp.status().as_u16(), 201, "mount {digest} into {repo}");
        })
        .await;
    }

    /// Copy `repo@reference` (its children first), `PUT` under `reference`.
    async fn manifest(&self, repo: &str, reference: &str) {
        let resp = self
            .http
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.from))
            .header("accept", ACCEPT)
            .send()
            .await
            .expect("GET manifest");
        assert!(resp.status().is_success(), "GET {repo}:{reference}: {}", resp.status());
        let media_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let bytes = resp.bytes().await.expect("manifest body");
        let v: Value = serde_json::from_slice(&bytes).expect("manifest JSON");
        for child in v["manifests"].as_array().into_iter().flatten() {
            let digest = child["digest"].as_str().expect("child digest");
            Box::pin(self.manifest(repo, digest)).await;
        }
        for (digest, _) in descriptors(&v) {
            self.place(repo, &digest).await;
        }
        let put = self
            .http
            .put(format!("{}/v2/{}/manifests/{reference}", self.to, self.dest(repo)))
            .header("content-type", media_type)
            .body(bytes)
            .send()
            .await
            .expect("PUT manifest");
        assert_eq!(put.status().as_u16(), 201, "PUT {repo}:{reference}");
    }
}

/// What a whole-image raw copy did (requests are counted from the
/// registries' access logs by the benchmark, not here).
#[derive(Debug, Default)]
pub struct ImageStats {
    pub blobs: u64,
    pub bytes: u64,
    pub tags: u64,
    pub seconds: f64,
}

/// Copy every tag of `from` to `to` (repositories under `dest_prefix`):
/// the blobs of `list` once each, then listings, mounts and manifests,
/// `concurrency` at a time. The destination must not hold them yet.
pub async fn copy(from: &str, to: &str, dest_prefix: &str, list: &[BlobRef], concurrency: usize) -> ImageStats {
    let started = Instant::now();
    let http = raw_client();
    let bytes = copy_blobs(&http, from, to, dest_prefix, list, concurrency).await;
    let ctx = Ctx {
        http,
        home: list.iter().map(|b| (b.digest.clone(), b.repo.clone())).collect(),
        from: from.trim_end_matches('/').to_string(),
        to: to.trim_end_matches('/').to_string(),
        dest_prefix: dest_prefix.to_string(),
        placed: Mutex::default(),
    };
    let source = Registry::new(&ctx.from, Access::Anonymous);
    let repos = source.catalog().await;
    let tags: Vec<(String, String)> = futures::stream::iter(repos)
        .map(|repo| {
            let source = &source;
            async move { source.tags(&repo).await.into_iter().map(|t| (repo.clone(), t)).collect::<Vec<_>>() }
        })
        .buffered(concurrency.max(1))
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    futures::stream::iter(&tags)
        .for_each_concurrent(concurrency.max(1), |(repo, tag)| ctx.manifest(repo, tag))
        .await;
    ImageStats {
        blobs: list.len() as u64,
        bytes,
        tags: tags.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    }
}
