//! The benchmark's yardsticks: the "raw limit" copy and a digest-by-digest
//! comparison of two registries.
//!
//! The raw copy moves each distinct blob once, source `GET` streamed
//! straight into a destination `POST` + monolithic `PUT`, with no checks,
//! no retries, no manifests and no state: the cheapest transfer of the data
//! set's bytes this machine can do over the registry API. Finding the blobs
//! ([`plan`]) is a separate, untimed step.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::client::{Access, Registry};

/// One blob to copy: a repository that holds it, its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub repo: String,
    pub digest: String,
    pub size: u64,
}

impl BlobRef {
    pub fn to_line(&self) -> String {
        format!("{}\t{}\t{}", self.repo, self.digest, self.size)
    }

    pub fn from_line(line: &str) -> Option<BlobRef> {
        let mut it = line.split('\t');
        let repo = it.next()?.to_string();
        let digest = it.next()?.to_string();
        let size = it.next()?.trim().parse().ok()?;
        Some(BlobRef { repo, digest, size })
    }
}

pub(crate) fn descriptors(v: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let one = |d: &Value| Some((d["digest"].as_str()?.to_string(), d["size"].as_u64()?));
    if let Some(c) = one(&v["config"]) {
        out.push(c);
    }
    for l in v["layers"].as_array().into_iter().flatten() {
        if let Some(l) = one(l) {
            out.push(l);
        }
    }
    out
}

/// Every distinct blob (configs and layers) reachable from the tags of
/// `registry`, each with the first repository found holding it.
pub async fn plan(registry: &Registry) -> Vec<BlobRef> {
    let repos = registry.catalog().await;
    let per_repo: Vec<(String, Vec<(String, u64)>)> = futures::stream::iter(repos)
        .map(|repo| async move {
            let mut blobs = Vec::new();
            let mut seen = HashSet::new();
            let mut stack: Vec<String> = registry.tags(&repo).await;
            while let Some(reference) = stack.pop() {
                if !seen.insert(reference.clone()) {
                    continue;
                }
                let Some((bytes, _)) = registry.get_manifest(&repo, &reference).await else { continue };
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                for m in v["manifests"].as_array().into_iter().flatten() {
                    if let Some(d) = m["digest"].as_str() {
                        stack.push(d.to_string());
                    }
                }
                blobs.extend(descriptors(&v));
            }
            (repo, blobs)
        })
        .buffered(8)
        .collect()
        .await;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (repo, blobs) in per_repo {
        for (digest, size) in blobs {
            if seen.insert(digest.clone()) {
                out.push(BlobRef { repo: repo.clone(), digest, size });
            }
        }
    }
    out
}

/// What a raw copy did.
#[derive(Debug, Default)]
pub struct RawStats {
    pub blobs: u64,
    pub bytes: u64,
    pub requests_source: u64,
    pub requests_destination: u64,
    pub seconds: f64,
}

/// Copy every blob of `list` from `from` to `to` (same repository names,
/// under `dest_prefix`), `concurrency` at a time. Panics on any failure:
/// a yardstick that silently skips work would flatter itself.
pub async fn copy(from: &str, to: &str, dest_prefix: &str, list: &[BlobRef], concurrency: usize) -> RawStats {
    let started = Instant::now();
    let bytes = copy_blobs(&raw_client(), from, to, dest_prefix, list, concurrency).await;
    RawStats {
        blobs: list.len() as u64,
        bytes,
        requests_source: list.len() as u64,
        requests_destination: 2 * list.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The destination repository of source repository `repo`.
pub(crate) fn dest_repo(dest_prefix: &str, repo: &str) -> String {
    if dest_prefix.is_empty() { repo.to_string() } else { format!("{dest_prefix}/{repo}") }
}

/// Each blob of `list` once, source `GET` into destination `POST` + `PUT`,
/// `concurrency` at a time: the bytes read from the source.
pub(crate) async fn copy_blobs(http: &reqwest::Client, from: &str, to: &str, dest_prefix: &str, list: &[BlobRef], concurrency: usize) -> u64 {
    let from = from.trim_end_matches('/');
    let to = to.trim_end_matches('/');
    let base = reqwest::Url::parse(to).expect("destination URL");
    let bytes = Arc::new(AtomicU64::new(0));
    futures::stream::iter(list)
        .for_each_concurrent(concurrency.max(1), |b| {
            let (base, bytes) = (&base, &bytes);
            async move { copy_blob(http, from, to, base, &dest_repo(dest_prefix, &b.repo), b, bytes).await }
        })
        .await;
    bytes.load(Ordering::Relaxed)
}

/// The HTTP client both yardsticks use (no checks, a large idle pool).
pub(crate) fn raw_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent("regferry-rawcopy")
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("http client")
}

/// One blob: source `GET` streamed into a destination `POST` + monolithic
/// `PUT` in `dest_repo`. Panics on any failure.
async fn copy_blob(
    http: &reqwest::Client,
    from: &str,
    to: &str,
    base: &reqwest::Url,
    dest_repo: &str,
    b: &BlobRef,
    bytes: &Arc<AtomicU64>,
) {
    let resp = http.post(format!("{to}/v2/{dest_repo}/blobs/uploads/")).send().await.expect("POST upload");
    assert_eq!(resp.status().as_u16(), 202, "POST upload to {dest_repo}");
    let location = resp.headers()["location"].to_str().expect("location").to_string();
    let mut url = base.join(&location).expect("location URL");
    url.query_pairs_mut().append_pair("digest", &b.digest);
    let get = http.get(format!("{from}/v2/{}/blobs/{}", b.repo, b.digest)).send().await.expect("GET blob");
    assert!(get.status().is_success(), "GET {}@{}: {}", b.repo, b.digest, get.status());
    let counter = bytes.clone();
    let body = get.bytes_stream().inspect_ok(move |c| {
        counter.fetch_add(c.len() as u64, Ordering::Relaxed);
    });
    let put = http
        .put(url)
        .header("content-type", "application/octet-stream")
        .header("content-length", b.size)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("PUT blob");
    assert_eq!(put.status().as_u16(), 201, "PUT {}@{}", dest_repo, b.digest);
}

/// How the destination names a source repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `prefix/` + the full source name (regferry).
    Full,
    /// `prefix/` + the last path component (`skopeo sync` without `--scoped`).
    Basename,
}

/// Compare every tag of every source repository with the destination by
/// digest and media type (`HEAD` with the full `Accept` list). Returns the
/// number of tags compared and the differences found.
pub async fn compare(from: &str, to: &str, dest_prefix: &str, naming: Naming) -> (usize, Vec<String>) {
    let s = Registry::new(from, Access::Anonymous);
    let d = Registry::new(to, Access::Anonymous);
    let repos = s.catalog().await;
    let results: Vec<(usize, Vec<String>)> = futures::stream::iter(repos)
        .map(|repo| {
            let (s, d) = (&s, &d);
            async move {
                let name = match naming {
                    Naming::Full => repo.clone(),
                    Naming::Basename => repo.rsplit('/').next().unwrap_or(&repo).to_string(),
                };
                let dest_repo = if dest_prefix.is_empty() { name } else { format!("{dest_prefix}/{name}") };
                let tags = s.tags(&repo).await;
                let mut diffs = Vec::new();
                let (r, dr) = (&repo, &dest_repo);
                let heads: Vec<_> = futures::stream::iter(tags.iter())
                    .map(|t| async move { (t, s.head(r, t).await, d.head(dr, t).await) })
                    .buffered(8)
                    .collect()
                    .await;
                for (t, a, b) in heads {
                    if a != b {
                        diffs.push(format!("{repo}:{t}: source {a:?}, destination {dest_repo}:{t} {b:?}"));
                    }
                }
                (tags.len(), diffs)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let compared = results.iter().map(|r| r.0).sum();
    (compared, results.into_iter().flat_map(|r| r.1).collect())
}
