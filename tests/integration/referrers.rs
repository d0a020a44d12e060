//! OCI referrers travel with their subject (issue 13, item 1), and the
//! immutable tags mode (item 4), against real distribution registries.
//!
//! Debian's docker-registry 2.8 does not serve the referrers API, so this is
//! the referrers tag schema end to end: artifacts pushed the way `oras
//! attach` pushes them (manifest with `subject`, then the `sha256-<hex>`
//! fallback index), read back the spec's way (API, else fallback tag). The
//! API side is covered by unit tests against the spec's JSON and status
//! codes (`registry::referrers`).

use serde_json::Value;
use testkit::image::{self, Flavor, Manifest};
use testkit::referrers::{self as refs, artifact, fallback_tag};
use testkit::{Access, FaultProxy, Faults, Registry, TestRegistry};

use crate::policies::{push_tags, write};
use crate::support::{Scratch, migrate, regferry, registries};

const SPDX: &str = "application/spdx+json";
const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const VEX: &str = "application/vnd.openvex+json";
const REPO: &str = "team/app";

/// What the source holds.
struct Source {
    image: Manifest,
    sbom: Manifest,
    signature: Manifest,
    index: Manifest,
}

/// `team/app:stable` with an SBOM, and a signature of the SBOM (both attached
/// like oras does); `team/app:multi`, an index whose children and itself
/// carry cosign `.sig` tags (`cosign sign --recursive`).
async fn fill(s: &Registry) -> Source {
    let image = image::image(Flavor::Oci, "ref-app", vec![image::layer(Flavor::Oci, "ref-app", 500)]);
    s.push(REPO, "stable", &image).await;
    let sbom = artifact(&image, SPDX, r#"{"spdxVersion":"SPDX-2.3"}"#);
    s.attach(REPO, &image.digest, &sbom, SPDX).await;
    let signature = artifact(&sbom, SIG, "signature of the sbom");
    s.attach(REPO, &sbom.digest, &signature, SIG).await;

    let children: Vec<(Manifest, &str)> = ["amd64", "arm64"]
        .iter()
        .map(|arch| (image::image(Flavor::Oci, &format!("multi-{arch}"), vec![image::layer(Flavor::Oci, arch, 300)]), *arch))
        .collect();
    let index = image::index(Flavor::Oci, children);
    s.push(REPO, "multi", &index).await;
    for m in index.children.iter().chain([&index]) {
        s.push(REPO, &image::signature_tag(&m.digest), &image::signature(m)).await;
    }
    Source { image, sbom, signature, index }
}

/// What a registry serving the referrers API answers with `entries` (an OCI index).
pub(crate) fn api_listing(entries: Vec<Value>) -> testkit::Canned {
    testkit::Canned {
        status: 200,
        headers: vec![("content-type".into(), image::OCI_INDEX.into())],
        body: serde_json::to_vec(&serde_json::json!({ "schemaVersion": 2, "mediaType": image::OCI_INDEX, "manifests": entries }))
            .expect("index")
            .into(),
    }
}

/// Push `m` (an artifact with a `subject`) by digest only, as to a
/// registry that indexes referrers itself: no fallback tag.
pub(crate) async fn push_by_digest(s: &Registry, m: &Manifest) {
    for b in &m.blobs {
        s.push_blob(REPO, b).await;
    }
    assert!(s.put_manifest(REPO, &m.digest, &m.media_type, &m.bytes).await.status().is_success());
}

/// Pass `n` of `regferry run --policies --json`: its first destination's report (the pass must exit 0).
pub(crate) async fn pass_report(scratch: &Scratch, policies: &str, state: &str, n: u32) -> Value {
    let run = regferry(scratch, &["run", "--policies", policies, "--state", state, "--json"], &[]).await;
    assert_eq!(run.code, 0, "pass {n}\n{}\n{}", run.stdout, run.stderr);
    run.json()[0]["destinations"][0]["report"].clone()
}

fn counts(run: &Value) -> (u64, u64, u64) {
    let c = &run["counts"];
    (c["tags_copied"].as_u64().unwrap_or(u64::MAX), c["tags_failed"].as_u64().unwrap_or(u64::MAX), c["manifests_pushed"].as_u64().unwrap_or(u64::MAX))
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_travel_merge_and_cost_nothing_when_unchanged() {
    let (src, dst, s, d) = registries();
    let source = fill(&s).await;
    // Someone attached their own referrer to the image at the destination.
    let theirs = artifact(&source.image, VEX, "their vex statement");
    d.attach(REPO, &source.image.digest, &theirs, VEX).await;

    let scratch = Scratch::new();
    let first = migrate(&scratch, &src.url, &dst.url, &[]).await;
    first.assert_ok();
    let out = first.json();
    assert_eq!(out["failures"].as_array().map(Vec::len), Some(0), "{}", first.stdout);

    // Found by a client listing referrers the spec's way, theirs kept (merged).
    let of_image = refs::digests(&d.referrers(REPO, &source.image.digest).await);
    let mut want = vec![source.sbom.digest.clone(), theirs.digest.clone()];
    want.sort();
    assert_eq!(of_image, want, "the image's referrers at the destination");
    assert_eq!(refs::digests(&d.referrers(REPO, &source.sbom.digest).await), vec![source.signature.digest.clone()]);
    for m in [&source.sbom, &source.signature] {
        let (bytes, _) = d.get_manifest(REPO, &m.digest).await.expect("referrer at destination");
        assert_eq!(bytes, m.bytes, "same bytes, same digest");
        assert!(d.missing_content(REPO, &m.digest).await.is_empty());
    }
    // The fallback entries keep their artifactType (clients filter on it).
    let listed = d.referrers(REPO, &source.image.digest).await;
    assert!(listed.iter().any(|e| e["digest"] == source.sbom.digest.as_str() && e["artifactType"] == SPDX), "{listed:?}");
    // cosign --recursive: each child's signature travelled with the index.
    let tags = d.tags(REPO).await;
    for m in source.index.children.iter().chain([&source.index]) {
        let tag = image::signature_tag(&m.digest);
        assert!(tags.contains(&tag), "{tag} missing at the destination: {tags:?}");
        assert_eq!(d.head(REPO, &tag).await, s.head(REPO, &tag).await);
    }

    // An unchanged source: a no-op whose requests are those of its tags.
    let second = migrate(&scratch, &src.url, &dst.url, &[]).await;
    second.assert_ok();
    let out = second.json();
    assert_eq!(counts(&out), (0, 0, 0), "{}", second.stdout);
    let source_tags = s.tags(REPO).await.len() as u64;
    let (src_req, dst_req) = (out["requests"]["source"].as_u64().unwrap_or(0), out["requests"]["destination"].as_u64().unwrap_or(0));
    // Per side: ping (+ its auth probe), catalog, one tag listing, and one
    // request per tag (fallback tags included: one GET each, like a HEAD).
    assert!(src_req <= source_tags + 4, "{src_req} source requests for {source_tags} tags");
    assert!(dst_req <= source_tags + 3, "{dst_req} destination requests for {source_tags} tags");

    // A new referrer of an unchanged image travels on the next pass.
    let vex = artifact(&source.image, VEX, "a new vex statement");
    s.attach(REPO, &source.image.digest, &vex, VEX).await;
    let third = migrate(&scratch, &src.url, &dst.url, &[]).await;
    third.assert_ok();
    assert_eq!(counts(&third.json()).0, 1, "only the fallback tag changed\n{}", third.stdout);
    let of_image = refs::digests(&d.referrers(REPO, &source.image.digest).await);
    assert_eq!(of_image.len(), 3, "{of_image:?}");
    assert!(of_image.contains(&vex.digest) && of_image.contains(&theirs.digest));

    // verify (and deep) include referrers, and catch one that went missing.
    let verify = |deep: bool| {
        let mut args = vec!["verify", "--from", &src.url, "--to", &dst.url, "--json"];
        if deep {
            args.push("--deep");
        }
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let scratch = &scratch;
        async move { regferry(scratch, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await }
    };
    verify(true).await.assert_ok();
    d.delete_manifest(REPO, &source.signature.digest).await;
    for deep in [false, true] {
        let run = verify(deep).await;
        assert_eq!(run.code, 1, "verify must fail\n{}\n{}", run.stdout, run.stderr);
        let report = &run.json()["results"][0]["report"];
        assert_eq!(report["referrers_missing"], 1, "{}", run.stdout);
        let problem = report["problems"].as_array().and_then(|p| p.iter().find(|p| p["kind"] == "referrers_missing")).cloned();
        let problem = problem.unwrap_or_else(|| panic!("no referrers_missing problem: {}", run.stdout));
        assert_eq!(problem["tag"], fallback_tag(&source.sbom.digest));
        assert!(problem["missing_manifests"].to_string().contains(&source.signature.digest), "{problem}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn referrer_types_filter_and_referrers_can_be_left_out() {
    let src = TestRegistry::start();
    let (only_sbom, none) = (TestRegistry::start(), TestRegistry::start());
    let s = Registry::new(&src.url, Access::Anonymous);
    let source = fill(&s).await;
    let scratch = Scratch::new();

    migrate(&scratch, &src.url, &only_sbom.url, &["--referrer-type", SPDX]).await.assert_ok();
    let d = Registry::new(&only_sbom.url, Access::Anonymous);
    assert_eq!(refs::digests(&d.referrers(REPO, &source.image.digest).await), vec![source.sbom.digest.clone()]);
    assert!(d.referrers(REPO, &source.sbom.digest).await.is_empty(), "the signature is not of a wanted type");
    assert!(d.head(REPO, &source.signature.digest).await.is_none());

    let run = migrate(&scratch, &src.url, &none.url, &["--no-referrers"]).await;
    run.assert_ok();
    let d = Registry::new(&none.url, Access::Anonymous);
    assert!(d.head(REPO, "stable").await.is_some());
    assert!(d.head(REPO, &source.sbom.digest).await.is_none(), "no referrer copied");
    let tags = d.tags(REPO).await;
    assert!(!tags.contains(&fallback_tag(&source.image.digest)), "{tags:?}");
    // Cosign companions are signatures, not referrers: they still travel.
    assert!(tags.contains(&image::signature_tag(&source.index.digest)), "{tags:?}");

    // Policies: types are checked; `referrers: false` with types is a contradiction.
    let bad = write(
        &scratch,
        "bad",
        "p.yaml",
        &format!("name: p\nsource: {{ registry: '{}' }}\ndestinations: [{{ registry: '{}' }}]\nreferrer_types: ['spdx']\n", src.url, none.url),
    );
    let check = regferry(&scratch, &["policy", "check", &bad], &[]).await;
    assert_eq!(check.code, 2, "{}", check.stderr);
    assert!(check.stderr.contains("referrer_types[0]") && check.stderr.contains("not a media type"), "{}", check.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn fallback_tags_survive_tag_rules_and_immutable_tags_cost_only_listings() {
    let (src, dst, s, d) = registries();
    let source = fill(&s).await;
    let versions: Vec<String> = (0..12).map(|i| format!("1.{i}.0")).collect();
    push_tags(&s, REPO, &versions.iter().map(String::as_str).collect::<Vec<_>>(), "many").await;
    // The source behind a request meter.
    let meter = FaultProxy::start(&src.url, Faults::default());

    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: immutable\nsource: {{ registry: '{}' }}\ndestinations: [{{ registry: '{}' }}]\n\
             tags:\n  include: ['stable', '1\\.\\d+\\.0']\n  latest: 10\n  immutable: true\nretry: {{ attempts: 1 }}\n",
            meter.url, dst.url
        ),
    );
    let state = scratch.state();
    let run = |n: u32| pass_report(&scratch, &policies, &state, n);
    let first = run(1).await;
    assert_eq!(first["failures"].as_array().map(Vec::len), Some(0), "{first}");
    // The fallback tags are not tag-rule material: the SBOM and its
    // signature travelled although `sha256-…` matches no include rule.
    assert_eq!(refs::digests(&d.referrers(REPO, &source.image.digest).await), vec![source.sbom.digest.clone()]);
    assert_eq!(refs::digests(&d.referrers(REPO, &source.sbom.digest).await), vec![source.signature.digest.clone()]);
    // `multi` is not selected: neither it nor its children's signatures went.
    let tags = d.tags(REPO).await;
    assert!(!tags.contains(&"multi".to_string()), "{tags:?}");
    assert!(!tags.iter().any(|t| t.ends_with(".sig")), "signatures of unselected manifests stay behind: {tags:?}");
    assert!(!tags.contains(&"1.0.0".to_string()) && tags.contains(&"1.11.0".to_string()), "latest 10: {tags:?}");

    // Unchanged: the second pass asks the source for no plain tag at all
    // (listings only); tags that exist for another manifest (the two
    // fallback tags, the three signatures of the unselected index) are
    // still read, since they change in place.
    let seen_before = meter.counters.seen().len();
    let second = run(2).await;
    assert_eq!(second["counts"]["tags_copied"], 0, "{second}");
    let seen: Vec<String> = meter.counters.seen()[seen_before..].iter().map(|r| format!("{} {}", r.method, r.target)).collect();
    let plain: Vec<&String> = seen.iter().filter(|r| r.contains("/manifests/") && !r.contains("/manifests/sha256")).collect();
    assert!(plain.is_empty(), "immutable tags were checked: {plain:?}");
    assert!(seen.len() <= 10, "{} source requests: {seen:#?}", seen.len());
    assert!(second["requests"]["destination"].as_u64().is_some_and(|n| n <= 9), "{second}");

    // A changed tag is not re-checked (immutable); a new one is copied.
    push_tags(&s, REPO, &["1.11.0", "1.12.0"], "changed").await;
    let third = run(3).await;
    assert_eq!(third["counts"]["tags_copied"], 1, "{third}");
    assert_ne!(d.head(REPO, "1.11.0").await, s.head(REPO, "1.11.0").await, "immutable: the destination's 1.11.0 stays");
    assert_eq!(d.head(REPO, "1.12.0").await, s.head(REPO, "1.12.0").await);

    // `migrate --missing-only` is the same mode.
    let run = migrate(&scratch, &meter.url, &dst.url, &["--missing-only", "--repo", REPO]).await;
    run.assert_ok();
    let out = run.json();
    assert_eq!(counts(&out).1, 0, "{}", run.stdout);
}

/// The referrers API side, beside the real test above: the source
/// registry is real, and only `GET /v2/<name>/referrers/<digest>` — which
/// Debian's registry 2.8 does not serve — is answered by the proxy in front
/// of it, as a registry serving the API answers (no fallback tag exists).
#[tokio::test(flavor = "multi_thread")]
async fn referrers_found_through_the_api_travel_too() {
    let (src, dst, s, d) = registries();
    let image = image::image(Flavor::Oci, "api-app", vec![image::layer(Flavor::Oci, "api-app", 400)]);
    s.push(REPO, "stable", &image).await;
    let sbom = artifact(&image, SPDX, r#"{"spdxVersion":"SPDX-2.3"}"#);
    push_by_digest(&s, &sbom).await;

    let api = FaultProxy::start(&src.url, Faults::default());
    api.answer(&format!("/v2/{REPO}/referrers/{}", image.digest), api_listing(vec![refs::referrer_descriptor(&sbom, SPDX)]));
    api.answer(&format!("/v2/{REPO}/referrers/{}", sbom.digest), api_listing(Vec::new()));

    let scratch = Scratch::new();
    let run = migrate(&scratch, &api.url, &dst.url, &["--referrer-type", SPDX]).await;
    run.assert_ok();
    assert_eq!(counts(&run.json()).1, 0, "{}", run.stdout);
    // The destination (no referrers API, no OCI-Subject) got a fallback index.
    assert_eq!(refs::digests(&d.referrers(REPO, &image.digest).await), vec![sbom.digest.clone()]);
    assert_eq!(d.get_manifest(REPO, &sbom.digest).await.map(|(b, _)| b), Some(sbom.bytes.clone()));
    // The one wanted type was asked of the registry, not only filtered here.
    let asked: Vec<String> = api.counters.seen().iter().filter(|r| r.target.contains("/referrers/")).map(|r| r.target.clone()).collect();
    assert!(!asked.is_empty() && asked.iter().all(|t| t.contains("artifactType=application%2Fspdx%2Bjson")), "{asked:?}");

    // Policy passes: the API has no change feed, so each pass asks it once
    // per tag's manifest and syncs only a subject whose list changed since
    // the last pass (recorded in the state).
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: api\nsource: {{ registry: '{}' }}\ndestinations: [{{ registry: '{}' }}]\nretry: {{ attempts: 1 }}\n", api.url, dst.url),
    );
    let state = scratch.state();
    let pass = |n: u32| pass_report(&scratch, &policies, &state, n);
    // First pass: nothing recorded yet, so the image's list is synced once (nothing new to write).
    let first = pass(1).await;
    assert_eq!(first["counts"]["tags_copied"], 1, "{first}");
    let puts_before = api.counters.seen().len();
    let second = pass(2).await;
    assert_eq!(second["counts"]["tags_copied"], 0, "an unchanged list is not synced again: {second}");
    let asked = api.counters.seen()[puts_before..].iter().filter(|r| r.target.contains("/referrers/")).count();
    assert_eq!(asked, 1, "one referrers request for the one tag");
    // A new referrer of the unchanged image: the next pass carries it.
    let vex = artifact(&image, VEX, "a vex statement");
    push_by_digest(&s, &vex).await;
    let both = vec![refs::referrer_descriptor(&sbom, SPDX), refs::referrer_descriptor(&vex, VEX)];
    api.answer(&format!("/v2/{REPO}/referrers/{}", image.digest), api_listing(both));
    api.answer(&format!("/v2/{REPO}/referrers/{}", vex.digest), api_listing(Vec::new()));
    let third = pass(3).await;
    assert_eq!(third["counts"]["tags_copied"], 1, "{third}");
    let mut want = vec![sbom.digest.clone(), vex.digest.clone()];
    want.sort();
    assert_eq!(refs::digests(&d.referrers(REPO, &image.digest).await), want);
    assert_eq!(pass(4).await["counts"]["tags_copied"], 0);
}

/// Item 3 of issue 22: referrers listed through the API are checked for
/// the children of an index too, each pass, at a cost of one referrers
/// request per manifest (the index's children are remembered, not read
/// again); one added later to a child travels on the next pass.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_of_index_children_listed_by_the_api_are_checked_each_pass() {
    let (src, dst, s, d) = registries();
    let children: Vec<(Manifest, &str)> = ["amd64", "arm64"]
        .iter()
        .map(|arch| (image::image(Flavor::Oci, &format!("kids-{arch}"), vec![image::layer(Flavor::Oci, &format!("kids-{arch}"), 300)]), *arch))
        .collect();
    let index = image::index(Flavor::Oci, children);
    s.push(REPO, "multi", &index).await;
    let child = index.children[0].clone();

    let api = FaultProxy::start(&src.url, Faults::default());
    for m in index.children.iter().chain([&index]) {
        api.answer(&format!("/v2/{REPO}/referrers/{}", m.digest), api_listing(Vec::new()));
    }
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: kids\nsource: {{ registry: '{}' }}\ndestinations: [{{ registry: '{}' }}]\nretry: {{ attempts: 1 }}\n", api.url, dst.url),
    );
    let state = scratch.state();
    let pass = |n: u32| pass_report(&scratch, &policies, &state, n);
    assert_eq!(pass(1).await["counts"]["tags_copied"], 1, "the index is copied");
    assert_eq!(pass(2).await["counts"]["tags_copied"], 0, "empty lists are nothing to sync");
    // A no-op pass: one referrers request per manifest (the index and its
    // two children), and the index is not read again to find its children.
    let before = api.counters.seen().len();
    assert_eq!(pass(3).await["counts"]["tags_copied"], 0);
    let seen = api.counters.seen()[before..].to_vec();
    let asked: Vec<&str> = seen.iter().filter(|r| r.target.contains("/referrers/")).map(|r| r.target.as_str()).collect();
    assert_eq!(asked.len(), 3, "{asked:?}");
    for m in index.children.iter().chain([&index]) {
        assert!(asked.iter().any(|t| t.contains(&m.digest)), "{} not asked: {asked:?}", m.digest);
    }
    let reads: Vec<String> = seen.iter().filter(|r| r.method == "GET" && r.target.contains("/manifests/")).map(|r| r.target.clone()).collect();
    assert!(reads.is_empty(), "a no-op pass reads no manifest: {reads:?}");
    let total = seen.len();

    // An SBOM attached later to one child (not to the index, whose tag is
    // unchanged): the next pass copies it and the destination lists it.
    let sbom = artifact(&child, SPDX, r#"{"spdxVersion":"SPDX-2.3","name":"amd64"}"#);
    push_by_digest(&s, &sbom).await;
    api.answer(&format!("/v2/{REPO}/referrers/{}", child.digest), api_listing(vec![refs::referrer_descriptor(&sbom, SPDX)]));
    api.answer(&format!("/v2/{REPO}/referrers/{}", sbom.digest), api_listing(Vec::new()));
    assert!(d.get_manifest(REPO, &sbom.digest).await.is_none());
    let fourth = pass(4).await;
    assert_eq!(fourth["counts"]["tags_copied"], 1, "{fourth}");
    assert_eq!(fourth["counts"]["tags_failed"], 0, "{fourth}");
    assert_eq!(d.get_manifest(REPO, &sbom.digest).await.map(|(b, _)| b), Some(sbom.bytes.clone()));
    assert_eq!(refs::digests(&d.referrers(REPO, &child.digest).await), vec![sbom.digest.clone()]);
    // Back to a no-op, at the same cost as before.
    let before = api.counters.seen().len();
    assert_eq!(pass(5).await["counts"]["tags_copied"], 0);
    let seen = api.counters.seen()[before..].to_vec();
    assert_eq!(seen.iter().filter(|r| r.target.contains("/referrers/")).count(), 3, "{:?}", seen.iter().map(|r| &r.target).collect::<Vec<_>>());
    assert_eq!(seen.len(), total, "a no-op pass costs what it cost before the SBOM");
}

/// Item 3 of issue 22 for immutable tags: a tag the destination lists is
/// never compared again, but its referrers listed through the source's API
/// are checked each pass — one referrers request per tag and no manifest
/// request on either side once the tag's manifest is remembered — and an
/// SBOM attached later to the immutable image travels on the next pass.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_of_immutable_tags_listed_by_the_api_are_checked_each_pass() {
    let (src, dst, s, d) = registries();
    let images: Vec<Manifest> =
        ["1.0", "1.1"].iter().map(|v| image::image(Flavor::Oci, &format!("frozen-{v}"), vec![image::layer(Flavor::Oci, &format!("frozen-{v}"), 300)])).collect();
    for (v, m) in ["1.0", "1.1"].iter().zip(&images) {
        s.push(REPO, v, m).await;
    }
    let api = FaultProxy::start(&src.url, Faults::default());
    for m in &images {
        api.answer(&format!("/v2/{REPO}/referrers/{}", m.digest), api_listing(Vec::new()));
    }
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: frozen\nsource: {{ registry: '{}' }}\ndestinations: [{{ registry: '{}' }}]\n\
             tags: {{ immutable: true }}\nretry: {{ attempts: 1 }}\n",
            api.url, dst.url
        ),
    );
    let state = scratch.state();
    let pass = |n: u32| pass_report(&scratch, &policies, &state, n);
    assert_eq!(pass(1).await["counts"]["tags_copied"], 2, "both tags are copied");
    // The first pass over the immutable tags reads each one's manifest at
    // the destination once (a HEAD) and remembers it.
    assert_eq!(pass(2).await["counts"]["tags_copied"], 0);
    // A no-op pass: one referrers request per tag, no manifest request on either side.
    let (before, dst_before) = (api.counters.seen().len(), dst.lines_by("regferry/").len());
    assert_eq!(pass(3).await["counts"]["tags_copied"], 0);
    let seen: Vec<String> = api.counters.seen()[before..].iter().map(|r| format!("{} {}", r.method, r.target)).collect();
    let asked: Vec<&String> = seen.iter().filter(|t| t.contains("/referrers/")).collect();
    assert_eq!(asked.len(), 2, "{seen:?}");
    for m in &images {
        assert!(asked.iter().any(|t| t.contains(&m.digest)), "{} not asked: {seen:?}", m.digest);
    }
    assert!(!seen.iter().any(|t| t.contains("/manifests/")), "a no-op pass reads no source manifest: {seen:?}");
    // (The failover fence is read each pass, like in every policy pass.)
    let at_dst: Vec<String> =
        dst.lines_by("regferry/").into_iter().skip(dst_before).filter(|l| l.contains("/manifests/") && !l.contains("/regferry-fence/")).collect();
    assert!(at_dst.is_empty(), "a no-op pass asks the destination for no image manifest: {at_dst:?}");
    let total = seen.len();

    // An SBOM attached later to the immutable 1.0: the next pass copies it.
    let sbom = artifact(&images[0], SPDX, r#"{"spdxVersion":"SPDX-2.3","name":"frozen"}"#);
    push_by_digest(&s, &sbom).await;
    api.answer(&format!("/v2/{REPO}/referrers/{}", images[0].digest), api_listing(vec![refs::referrer_descriptor(&sbom, SPDX)]));
    api.answer(&format!("/v2/{REPO}/referrers/{}", sbom.digest), api_listing(Vec::new()));
    let fourth = pass(4).await;
    assert_eq!(fourth["counts"]["tags_copied"], 1, "{fourth}");
    assert_eq!(fourth["counts"]["tags_failed"], 0, "{fourth}");
    assert_eq!(d.get_manifest(REPO, &sbom.digest).await.map(|(b, _)| b), Some(sbom.bytes.clone()));
    assert_eq!(refs::digests(&d.referrers(REPO, &images[0].digest).await), vec![sbom.digest.clone()]);
    // Back to a no-op, at the same cost as before.
    let before = api.counters.seen().len();
    assert_eq!(pass(5).await["counts"]["tags_copied"], 0);
    assert_eq!(api.counters.seen().len() - before, total, "a no-op pass costs what it cost before the SBOM");
}
