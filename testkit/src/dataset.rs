//! Parametrised synthetic data sets: repositories × tags with shared base
//! layers, per-repository and per-tag layers, a share of multi-arch indexes
//! and cosign-style signature tags. Used by tests, the demo and the
//! benchmark, so all three exercise the same shapes.

use crate::client::Registry;
use crate::image::{self, Flavor, Manifest};

/// The shape of a data set.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Repository names are `{prefix}/repo-{i}`.
    pub prefix: String,
    pub repos: usize,
    pub tags_per_repo: usize,
    /// Base layers shared by every image.
    pub base_layers: usize,
    pub base_layer_size: usize,
    /// One layer per repository, shared by its tags.
    pub repo_layer_size: usize,
    /// One layer per tag.
    pub tag_layer_size: usize,
    /// Every n-th tag is a two-platform index (0: none).
    pub multi_arch_every: usize,
    /// Sign the first tag of every repository.
    pub signatures: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            prefix: "bench".into(),
            repos: 4,
            tags_per_repo: 3,
            base_layers: 2,
            base_layer_size: 64 * 1024,
            repo_layer_size: 32 * 1024,
            tag_layer_size: 16 * 1024,
            multi_arch_every: 3,
            signatures: true,
        }
    }
}

/// One pushed tag.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub repo: String,
    pub tag: String,
    pub manifest: Manifest,
}

fn flavor_for(r: usize) -> Flavor {
    if r.is_multiple_of(2) { Flavor::Docker } else { Flavor::Oci }
}

/// Build the manifests of `spec` (deterministic) without pushing them.
pub fn build(spec: &Spec) -> Vec<Pushed> {
    let mut out = Vec::new();
    for r in 0..spec.repos {
        let flavor = flavor_for(r);
        let repo = format!("{}/repo-{r}", spec.prefix);
        let base: Vec<_> = (0..spec.base_layers).map(|b| image::layer(flavor, &format!("base-{b}"), spec.base_layer_size)).collect();
        let repo_layer = image::layer(flavor, &format!("{repo}/layer"), spec.repo_layer_size);
        for t in 0..spec.tags_per_repo {
            let tag = format!("v1.{t}.0");
            let mut layers = base.clone();
            layers.push(repo_layer.clone());
            let one = |arch: &str| {
                let mut l = layers.clone();
                l.push(image::layer(flavor, &format!("{repo}:{tag}/{arch}"), spec.tag_layer_size));
                image::image(flavor, &format!("{repo}:{tag}/{arch}"), l)
            };
            let manifest = if spec.multi_arch_every > 0 && t % spec.multi_arch_every == spec.multi_arch_every - 1 {
                image::index(flavor, vec![(one("amd64"), "amd64"), (one("arm64"), "arm64")])
            } else {
                one("amd64")
            };
            if spec.signatures && t == 0 {
                let sig = image::signature(&manifest);
                out.push(Pushed { repo: repo.clone(), tag: tag.clone(), manifest: manifest.clone() });
                out.push(Pushed { repo: repo.clone(), tag: image::signature_tag(&manifest.digest), manifest: sig });
            } else {
                out.push(Pushed { repo: repo.clone(), tag, manifest });
            }
        }
    }
    out
}

/// Push `spec` to `registry`, a few repositories at a time.
///
/// Each repository's tags go one after the other, and the first repository
/// goes alone: concurrent uploads of the same blob into one registry race
/// in the distribution registry (a manifest push may then fail with
/// `MANIFEST_BLOB_UNKNOWN`), and the shared layers are uploaded once that way.
pub async fn fill(registry: &Registry, spec: &Spec) -> Vec<Pushed> {
    use futures::StreamExt;
    let items = build(spec);
    let mut repos: Vec<&[Pushed]> = Vec::new();
    let mut start = 0;
    for i in 1..=items.len() {
        if i == items.len() || items[i].repo != items[start].repo {
            repos.push(&items[start..i]);
            start = i;
        }
    }
    let push_repo = |group: &[Pushed]| {
        let group = group.to_vec();
        async move {
            for p in &group {
                registry.push(&p.repo, &p.tag, &p.manifest).await;
            }
        }
    };
    let mut groups = repos.into_iter();
    if let Some(first) = groups.next() {
        push_repo(first).await;
    }
    futures::stream::iter(groups).for_each_concurrent(4, push_repo).await;
    items
}

/// Sum of the sizes of the distinct blobs in `items`.
pub fn distinct_blob_bytes(items: &[Pushed]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    items
        .iter()
        .flat_map(|p| p.manifest.all_blobs())
        .filter(|b| seen.insert(b.digest.clone()))
        .map(|b| b.bytes.len() as u64)
        .sum()
}

/// Many tags of one small image per repository (`{prefix}/repo-{i}`, tags
/// `v{t}`): the image is pushed once under its first tag, then its
/// manifest is put under every other tag, `concurrency` puts at once. A
/// scale data set of 100,000 tags in a minute or two rather than hours of
/// pushing a distinct image per tag. Returns the number of tags.
pub async fn fill_retagged(registry: &Registry, prefix: &str, repos: usize, tags: usize, concurrency: usize) -> usize {
    use futures::StreamExt;
    let images: Vec<(String, Manifest)> = (0..repos)
        .map(|r| {
            let flavor = flavor_for(r);
            let repo = format!("{prefix}/repo-{r}");
            let layers = vec![image::layer(flavor, "base-0", 4096), image::layer(flavor, &format!("{repo}/layer"), 1024)];
            let manifest = image::image(flavor, &repo, layers);
            (repo, manifest)
        })
        .collect();
    // Blobs and the first tag one repository after the other (see `fill`
    // on concurrent uploads of one blob).
    for (repo, manifest) in &images {
        if tags > 0 {
            registry.push(repo, "v0", manifest).await;
        }
    }
    let puts = images.iter().flat_map(|(repo, manifest)| (1..tags).map(move |t| (repo, manifest, t)));
    futures::stream::iter(puts)
        .for_each_concurrent(concurrency.max(1), |(repo, manifest, t)| async move {
            let resp = registry.put_manifest(repo, &format!("v{t}"), &manifest.media_type, &manifest.bytes).await;
            assert!(resp.status().is_success(), "tag {repo}:v{t}: {}", resp.status());
        })
        .await;
    repos * tags
}
