//! `regferry migrate` against real registries: exact copies of every
//! manifest shape, cheap no-op reruns, dry runs, selection, resumption.

use testkit::dataset::{self, Spec};
use testkit::image::{self, Flavor};
use testkit::{Access, Registry, TestRegistry};

use crate::support::{Scratch, assert_mirrored, migrate, repos_of};

/// Lines of `lines` after the first `from`.
fn since(lines: Vec<String>, from: usize) -> Vec<String> {
    lines.into_iter().skip(from).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_every_shape_exactly_and_a_rerun_is_a_no_op() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    // Docker schema2 and OCI images, Docker lists and OCI indexes, cosign
    // signature tags with `subject`, base layers shared across repositories.
    let spec = Spec { repos: 4, tags_per_repo: 4, multi_arch_every: 2, ..Spec::default() };
    let pushed = dataset::fill(&s, &spec).await;
    let repos = repos_of(&pushed);

    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &format!("{}/mirror", dst.url), &[]).await;
    run.assert_ok();
    let report = run.json();
    assert_eq!(report["status"], "succeeded");
    let compared = assert_mirrored(&s, &d, &repos, "mirror").await;
    assert_eq!(compared, pushed.len());
    assert_eq!(report["counts"]["tags_copied"], pushed.len() as u64);

    // Every distinct blob crossed the wire exactly once; the rest was mounted.
    let distinct = dataset::distinct_blob_bytes(&pushed);
    assert_eq!(report["counts"]["bytes_uploaded"], distinct, "bytes uploaded must equal the distinct blob bytes");
    let mut digests: Vec<&str> = pushed.iter().flat_map(|p| p.manifest.all_blobs()).map(|b| b.digest.as_str()).collect();
    digests.sort();
    digests.dedup();
    let lines = dst.lines_by("regferry/");
    let blob_puts = lines.iter().filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/")).count();
    assert_eq!(blob_puts, digests.len(), "one upload per distinct blob");
    let mounts = lines.iter().filter(|l| l.contains("\"POST /v2/") && l.contains("mount=") && l.contains("\" 201 ")).count();
    assert!(mounts > 0, "shared base layers must be mounted, not uploaded again");
    assert_eq!(report["counts"]["blobs_mounted"], mounts as u64);

    // The signature tag kept its `subject` (same bytes, same digest).
    let sig = pushed.iter().find(|p| p.tag.ends_with(".sig")).expect("a signature tag");
    let (bytes, _) = d.get_manifest(&format!("mirror/{}", sig.repo), &sig.tag).await.expect("signature at destination");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert!(v["subject"]["digest"].as_str().is_some_and(|s| s.starts_with("sha256:")));

    // Second run on an unchanged source: nothing written, no blob touched,
    // one manifest HEAD per tag per side (plus listings — the source's and
    // one tag list per destination repository — and a ping).
    let before_dst = dst.lines_by("regferry/").len();
    let before_src = src.lines_by("regferry/").len();
    let again = migrate(&scratch, &src.url, &format!("{}/mirror", dst.url), &[]).await;
    again.assert_ok();
    let r2 = again.json();
    assert_eq!(r2["counts"]["tags_skipped"], pushed.len() as u64);
    assert_eq!(r2["counts"]["tags_copied"], 0);
    let dst_new = since(dst.lines_by("regferry/"), before_dst);
    let src_new = since(src.lines_by("regferry/"), before_src);
    for line in &dst_new {
        let ok = (line.contains("\"HEAD /v2/mirror/") && line.contains("/manifests/"))
            || (line.contains("\"GET /v2/mirror/") && line.contains("/tags/list"))
            || line.contains("\"GET /v2/ ");
        assert!(ok, "unexpected destination request on a no-op rerun: {line}");
    }
    let listings = dst_new.iter().filter(|l| l.contains("/tags/list")).count();
    assert_eq!(listings, repos.len(), "one destination tag list per repository");
    for line in &src_new {
        let ok = (line.contains("\"HEAD /v2/") && line.contains("/manifests/"))
            || line.contains("/tags/list")
            || line.contains("/_catalog")
            || line.contains("\"GET /v2/ ");
        assert!(ok, "unexpected source request on a no-op rerun: {line}");
    }
    let heads = |lines: &[String]| lines.iter().filter(|l| l.contains("\"HEAD ") && l.contains("/manifests/")).count();
    assert_eq!(heads(&dst_new), pushed.len());
    assert_eq!(heads(&src_new), pushed.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_explains_and_changes_nothing() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let pushed = dataset::fill(&s, &Spec { repos: 2, tags_per_repo: 2, signatures: false, ..Spec::default() }).await;
    let scratch = Scratch::new();
    migrate(&scratch, &src.url, &dst.url, &[]).await.assert_ok();

    // Move one tag, add another.
    let repo = &pushed[0].repo;
    let moved = image::image(Flavor::Oci, "moved", vec![image::layer(Flavor::Oci, "moved", 1000)]);
    s.push(repo, &pushed[0].tag, &moved).await;
    s.push(repo, "v9.9.9", &moved).await;

    let writes_before = dst.writes();
    let state = scratch.path("dry.db");
    let run = crate::support::regferry(
        &scratch,
        &["migrate", "--from", &src.url, "--to", &dst.url, "--dry-run", "--state", &state.to_string_lossy()],
        &[],
    )
    .await;
    run.assert_ok();
    assert!(run.stdout.contains(&format!("copy  {repo}:{}  (digest differs: ", pushed[0].tag)), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("copy  {repo}:v9.9.9  (missing)")), "{}", run.stdout);
    assert!(run.stdout.contains("2 to copy"), "{}", run.stdout);
    assert_eq!(dst.writes(), writes_before, "a dry run must not write to the destination");
    assert!(!state.exists(), "a dry run must not create a state database");
}

#[tokio::test(flavor = "multi_thread")]
async fn repo_globs_and_prefixes_select_and_map_names() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let img = image::image(Flavor::Docker, "x", vec![image::layer(Flavor::Docker, "x", 500)]);
    for repo in ["team/app", "team/tools/cli", "team/tmp-scratch", "other/app"] {
        s.push(repo, "v1", &img).await;
    }
    let scratch = Scratch::new();
    // --from prefix is stripped, --to prefix prepended; '*' stays in one component.
    migrate(&scratch, &format!("{}/team", src.url), &format!("{}/dr", dst.url), &["--repo", "*"]).await.assert_ok();
    let mut catalog = d.catalog().await;
    catalog.sort();
    assert_eq!(catalog, vec!["dr/app", "dr/tmp-scratch"]);
    migrate(&scratch, &src.url, &dst.url, &["--repo", "team/**", "--repo", "nothing/*"]).await.assert_ok();
    let mut catalog = d.catalog().await;
    catalog.sort();
    assert_eq!(catalog, vec!["dr/app", "dr/tmp-scratch", "team/app", "team/tmp-scratch", "team/tools/cli"]);
    assert_eq!(d.head("team/tools/cli", "v1").await, s.head("team/tools/cli", "v1").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_failure_is_reported_and_resumed_by_the_next_run() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let good = image::image(Flavor::Oci, "good", vec![image::layer(Flavor::Oci, "good", 2000)]);
    let broken_layer = image::layer(Flavor::Oci, "broken", 3000);
    let broken = image::image(Flavor::Oci, "broken", vec![broken_layer.clone()]);
    s.push("app/good", "v1", &good).await;
    s.push("app/broken", "v1", &broken).await;
    // Remove the layer's bytes behind the source registry's back.
    let hex = broken_layer.digest.trim_start_matches("sha256:");
    let blob_dir = src.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2]));
    std::fs::remove_dir_all(&blob_dir).expect("remove blob from source storage");

    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dst.url, &["--attempts", "2"]).await;
    assert_eq!(run.code, 1, "a failed tag means exit 1\n{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["status"], "failed");
    assert_eq!(report["counts"]["tags_copied"], 1);
    assert_eq!(report["counts"]["tags_failed"], 1);
    let failure = &report["failures"][0];
    assert_eq!(failure["repository"], "app/broken");
    let error = failure["error"].as_str().unwrap_or_default();
    assert!(error.contains("BLOB_UNKNOWN") || error.contains("404"), "the registry's reason is kept: {error}");
    assert!(d.head("app/broken", "v1").await.is_none(), "a tag with missing content must never be pushed");
    let execution = report["execution"].as_i64().expect("execution id");

    // Repair the source and run the same command again: the same execution resumes.
    s.push_blob("app/broken", &broken_layer).await;
    let again = migrate(&scratch, &src.url, &dst.url, &[]).await;
    again.assert_ok();
    let r2 = again.json();
    assert_eq!(r2["execution"].as_i64(), Some(execution));
    assert_eq!(r2["resumed"], true);
    assert_eq!(r2["counts"]["tags_copied"], 1);
    assert_mirrored(&s, &d, &["app/good".into(), "app/broken".into()], "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn content_already_at_the_destination_is_neither_uploaded_nor_asked_for_twice() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let base = image::layer(Flavor::Oci, "base", 40_000);
    let web1 = image::image(Flavor::Oci, "web1", vec![base.clone(), image::layer(Flavor::Oci, "web1", 3000)]);
    let web2 = image::image(Flavor::Oci, "web2", vec![base.clone(), image::layer(Flavor::Oci, "web2", 5000)]);
    let api = image::index(
        Flavor::Oci,
        vec![
            (image::image(Flavor::Oci, "api-amd64", vec![base.clone(), image::layer(Flavor::Oci, "api-amd64", 7000)]), "amd64"),
            (image::image(Flavor::Oci, "api-arm64", vec![base.clone(), image::layer(Flavor::Oci, "api-arm64", 9000)]), "arm64"),
        ],
    );
    s.push("app/a-web", "v1", &web1).await;
    s.push("app/a-web", "v2", &web2).await;
    s.push("app/b-api", "v1", &api).await;
    s.push("app/b-api", "latest", &api).await;
    // Signed: its cosign companion goes after the subject, which this run
    // pushed, so it needs no HEAD to learn that the subject is there.
    let sig = image::signature(&api);
    s.push("app/b-api", &image::signature_tag(&api.digest), &sig).await;
    // The destination already has app/a-web:v1 (from an earlier copy by any tool).
    d.push("app/a-web", "v1", &web1).await;

    let scratch = Scratch::new();
    let before = dst.lines_by("regferry/").len();
    // One tag at a time, in plan order (app/a-web first), so that the base
    // layer is found in app/a-web before app/b-api needs it.
    let run = migrate(&scratch, &src.url, &dst.url, &["--concurrency", "1"]).await;
    run.assert_ok();
    let report = run.json();
    assert_eq!(report["counts"]["tags_copied"], 4, "app/a-web:v1 is up to date");
    assert_eq!(report["counts"]["tags_skipped"], 1);
    assert_mirrored(&s, &d, &["app/a-web".into(), "app/b-api".into()], "").await;

    // Only what the destination lacked crossed the wire: web2's config and
    // layer, api's children's configs and layers. The base layer was found in
    // app/a-web (which existed) and mounted into app/b-api (which did not).
    let mut lacked: Vec<&image::Blob> = web2.all_blobs().into_iter().filter(|b| b.digest != base.digest).collect();
    lacked.extend(api.all_blobs().into_iter().filter(|b| b.digest != base.digest));
    lacked.extend(sig.all_blobs());
    lacked.sort_by(|a, b| a.digest.cmp(&b.digest));
    lacked.dedup_by(|a, b| a.digest == b.digest);
    let lacked_bytes: u64 = lacked.iter().map(|b| b.bytes.len() as u64).sum();
    assert_eq!(report["counts"]["bytes_uploaded"], lacked_bytes);
    assert_eq!(report["counts"]["blobs_mounted"], 1);
    let lines = since(dst.lines_by("regferry/"), before);
    // app/b-api did not exist: nothing in it was asked for before it was
    // written, and its two tags (same index) pushed each child manifest once.
    assert!(
        !lines.iter().any(|l| l.contains("\"HEAD /v2/app/b-api/")),
        "no HEAD into a repository the run created: {lines:#?}"
    );
    let child_puts = lines.iter().filter(|l| l.contains("\"PUT /v2/app/b-api/manifests/sha256:")).count();
    assert_eq!(child_puts, 2);
    // app/a-web existed: its blobs were checked, not re-sent.
    assert!(lines.iter().any(|l| l.contains("\"HEAD /v2/app/a-web/blobs/")));
}
