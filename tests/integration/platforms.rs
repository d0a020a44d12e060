//! Platform selection against real registries: `rewrite` pushes a
//! narrowed index (new digest, recorded, verified, stable across passes),
//! `sparse` is refused by a registry that validates index children
//! (distribution does) with an error naming `rewrite`, and `--platform`
//! on `migrate` takes a comma list.

use serde_json::Value;
use testkit::image::{self, Flavor, Manifest};
use testkit::{Access, Registry, TestRegistry};

use crate::policies::write;
use crate::support::{Scratch, migrate, regferry};

/// A small image per platform, distinct per `seed`.
fn child(flavor: Flavor, seed: &str) -> Manifest {
    image::image(flavor, seed, vec![image::layer(flavor, seed, 200)])
}

/// An index over `platforms`, one small image each.
fn multi(flavor: Flavor, seed: &str, platforms: &[&'static str]) -> Manifest {
    image::platform_index(flavor, platforms.iter().map(|p| (child(flavor, &format!("{seed}-{p}")), *p)).collect())
}

/// The index JSON with only the children of `keep` (by digest) left in `manifests`.
fn filtered(index: &Manifest, keep: &[&str]) -> Value {
    let mut v: Value = serde_json::from_slice(&index.bytes).expect("index json");
    let list = v["manifests"].as_array().expect("manifests").iter().filter(|d| keep.contains(&d["digest"].as_str().unwrap_or(""))).cloned();
    v["manifests"] = Value::Array(list.collect());
    v
}

fn digest_of(platforms: &Manifest, platform: &str) -> String {
    let v: Value = serde_json::from_slice(&platforms.bytes).expect("index json");
    let d = v["manifests"].as_array().expect("manifests").iter().find(|d| {
        let p = &d["platform"];
        let name = match p["variant"].as_str() {
            Some(var) => format!("{}/{}/{var}", p["os"].as_str().unwrap_or(""), p["architecture"].as_str().unwrap_or("")),
            None => format!("{}/{}", p["os"].as_str().unwrap_or(""), p["architecture"].as_str().unwrap_or("")),
        };
        name == platform
    });
    d.and_then(|d| d["digest"].as_str()).expect("platform in index").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrite_copies_only_the_selected_platforms_records_the_new_digest_and_stays_a_no_op() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let four = multi(Flavor::Oci, "four", &["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"]);
    let list = multi(Flavor::Docker, "list", &["windows/amd64", "linux/amd64", "linux/ppc64le"]);
    let windows = multi(Flavor::Oci, "win", &["windows/amd64", "windows/arm64"]);
    let single = child(Flavor::Oci, "single");
    s.push("team/app", "multi", &four).await;
    s.push("team/app", "list", &list).await;
    s.push("team/app", "windows", &windows).await;
    s.push("team/app", "single", &single).await;
    // A cosign signature of the index signs the source digest, which a rewritten
    // index does not have: it stays behind (a signature never travels without its subject).
    s.push("team/app", &image::signature_tag(&four.digest), &image::signature(&four)).await;
    // …but not that of an index that is not copied.
    s.push("team/app", &image::signature_tag(&windows.digest), &image::signature(&windows)).await;

    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: arches\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: dr\n\
             platforms: [linux/amd64, linux/arm64]\nplatform_filter: rewrite\nretry: {{ attempts: 1 }}\n",
            src.url, dst.url
        ),
    );
    let state = scratch.state();
    regferry(&scratch, &["policy", "check", &policies], &[]).await.assert_ok();
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    run.assert_ok();
    let out = run.json();
    let report = &out[0]["destinations"][0]["report"];
    assert_eq!(report["status"], "succeeded", "{out}");
    // multi, list and single; the windows-only index is skipped.
    assert_eq!(report["counts"]["tags_copied"], 3, "{out}");

    // The rewritten index: the source's JSON with only the selected children,
    // same media type, a new digest; exactly the selected children are there.
    let (bytes, media_type) = d.get_manifest("dr/team/app", "multi").await.expect("multi at the destination");
    assert_eq!(media_type, four.media_type);
    let (amd64, arm64) = (digest_of(&four, "linux/amd64"), digest_of(&four, "linux/arm64"));
    let got: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(got, filtered(&four, &[&amd64, &arm64]));
    let rewritten = image::raw(&media_type, bytes).digest;
    assert_ne!(rewritten, four.digest);
    assert!(d.missing_content("dr/team/app", "multi").await.is_empty(), "the selected platforms are pullable");
    for dropped in ["linux/arm/v7", "linux/s390x"] {
        assert_eq!(d.head("dr/team/app", &digest_of(&four, dropped)).await, None, "{dropped} must not be copied");
    }
    let (bytes, media_type) = d.get_manifest("dr/team/app", "list").await.expect("list at the destination");
    assert_eq!(media_type, list.media_type, "a Docker manifest list stays one");
    let list_amd64 = digest_of(&list, "linux/amd64");
    assert_eq!(serde_json::from_slice::<Value>(&bytes).expect("json"), filtered(&list, &[&list_amd64]));
    assert_eq!(d.head("dr/team/app", "single").await, s.head("team/app", "single").await, "a single-platform image passes unchanged");
    assert_eq!(d.head("dr/team/app", "windows").await, None, "no empty index is pushed");
    assert_eq!(d.head("dr/team/app", &image::signature_tag(&windows.digest)).await, None, "nor the signature of a skipped index");
    let sig = image::signature_tag(&four.digest);
    assert!(s.head("team/app", &sig).await.is_some());
    assert_eq!(d.head("dr/team/app", &sig).await, None, "the signature of the source index does not sign the rewritten one");

    // The state records the new digest; jobs show says what was pushed and why windows was not.
    let id = report["execution"].as_i64().expect("execution id").to_string();
    let show = regferry(&scratch, &["jobs", "show", &id, "--state", &state], &[]).await;
    show.assert_ok();
    assert!(
        show.stdout.lines().any(|l| l.contains("dr/team/app:multi") && l.contains(&format!("linux/amd64,linux/arm64 (rewrite) → {rewritten}"))),
        "{}",
        show.stdout
    );
    assert!(show.stdout.lines().any(|l| l.contains("dr/team/app:windows") && l.contains("none of the selected platforms")), "{}", show.stdout);
    let shown = regferry(&scratch, &["jobs", "show", &id, "--state", &state, "--json"], &[]).await.json();
    let task = shown["tasks"].as_array().expect("tasks").iter().find(|t| t["tag"] == "multi").cloned().expect("multi task");
    assert_eq!((task["source_digest"].as_str(), task["dest_digest"].as_str()), (Some(four.digest.as_str()), Some(rewritten.as_str())));

    // verify compares against the narrowed digest and says so.
    let verify = regferry(&scratch, &["verify", "--policies", &policies, "--state", &state], &[]).await;
    verify.assert_ok();
    let says = format!("linux/amd64,linux/arm64 of {} (rewritten to {rewritten})", four.digest);
    assert!(verify.stdout.contains(&says), "{}", verify.stdout);

    // A second pass over the unchanged source writes nothing, and pulls
    // nothing: the state remembers what each source index narrowed to (or
    // that it has none of the platforms), so HEADs decide.
    let before = dst.lines_by("regferry/").len();
    let source_before = src.lines_by("regferry/").len();
    let again = regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    again.assert_ok();
    let out = again.json();
    let counts = &out[0]["destinations"][0]["report"]["counts"];
    assert_eq!(counts["tags_copied"], 0, "{counts}");
    let writes: Vec<String> = dst.lines_by("regferry/").into_iter().skip(before).filter(|l| l.contains("\"PUT ") || l.contains("\"POST ")).collect();
    assert!(writes.is_empty(), "a no-op pass wrote: {writes:?}");
    let pulls: Vec<String> =
        src.lines_by("regferry/").into_iter().skip(source_before).filter(|l| l.contains("\"GET ") && l.contains("/manifests/")).collect();
    assert!(pulls.is_empty(), "an unchanged platform-filtered pass pulled: {pulls:?}");
    let usage = out[0]["destinations"][0]["report"]["registries"].as_array().and_then(|r| r.iter().find(|u| u["role"] == "source").cloned());
    assert_eq!(usage.as_ref().map(|u| u["pulls"].clone()), Some(serde_json::json!(0)), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sparse_is_refused_by_a_validating_registry_with_the_mode_to_use() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let four = multi(Flavor::Oci, "sparse", &["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"]);
    s.push("team/app", "multi", &four).await;

    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dst.url, &["--platform", "linux/amd64", "--platform-filter", "sparse"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let error = report["failures"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("validates that every child of an index is present"), "{error}");
    assert!(error.contains("`rewrite`") && error.contains("--platform-filter rewrite"), "{error}");
    assert!(error.contains("MANIFEST_BLOB_UNKNOWN"), "the registry's own answer is kept: {error}");
    // The selected child was copied; the index was not; no retry of what cannot succeed.
    assert!(d.head("team/app", &digest_of(&four, "linux/amd64")).await.is_some());
    assert_eq!(d.head("team/app", "multi").await, None);
    let puts = dst.lines_by("regferry/").iter().filter(|l| l.contains("\"PUT /v2/team/app/manifests/multi ")).count();
    assert_eq!(puts, 1, "refused once, not retried");

    // The same copy with rewrite succeeds against the same registry.
    let run = migrate(&scratch, &src.url, &dst.url, &["--platform", "linux/amd64"]).await;
    run.assert_ok();
    assert!(d.missing_content("team/app", "multi").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_takes_a_platform_list_and_verify_compares_the_same_way() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let four = multi(Flavor::Docker, "flag", &["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6"]);
    s.push("team/app", "v1", &four).await;

    let scratch = Scratch::new();
    let flags = ["--platform", "linux/arm/v7,linux/amd64"];
    let run = migrate(&scratch, &src.url, &dst.url, &flags).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], 1);
    let (bytes, _) = d.get_manifest("team/app", "v1").await.expect("v1 at the destination");
    let keep = [digest_of(&four, "linux/amd64"), digest_of(&four, "linux/arm/v7")];
    assert_eq!(serde_json::from_slice::<Value>(&bytes).expect("json"), filtered(&four, &[&keep[0], &keep[1]]));
    let again = migrate(&scratch, &src.url, &dst.url, &flags).await;
    again.assert_ok();
    assert_eq!(again.json()["counts"]["tags_copied"], 0, "the rewritten index is recognised as in sync");

    let verify = regferry(&scratch, &["verify", "--from", &src.url, "--to", &dst.url, "--platform", "linux/arm/v7,linux/amd64"], &[]).await;
    verify.assert_ok();
    assert!(verify.stdout.contains("(rewritten to sha256:"), "{}", verify.stdout);
    // Without the selection, the destination honestly differs from the source.
    let plain = regferry(&scratch, &["verify", "--from", &src.url, "--to", &dst.url], &[]).await;
    assert_eq!(plain.code, 1, "{}", plain.stdout);
    assert!(plain.stdout.contains("digest differs"), "{}", plain.stdout);
    // A malformed platform is a usage error.
    assert_eq!(migrate(&scratch, &src.url, &dst.url, &["--platform", "linux"]).await.code, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failover_the_primary_keeps_every_platform() {
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    let p = Registry::new(&primary.url, Access::Anonymous);
    let d = Registry::new(&dr.url, Access::Anonymous);
    let four = multi(Flavor::Oci, "fo", &["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"]);
    p.push("team/app", "multi", &four).await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\n\
             platforms: [linux/amd64]\ntrigger: {{ interval: 1h }}\n",
            primary.url, dr.url
        ),
    );
    let state = scratch.state();
    let cmd = |verb: &'static str| {
        let (scratch, policies, state) = (&scratch, policies.clone(), state.clone());
        async move {
            let mut args = vec![verb, "--policies", policies.as_str(), "--state", state.as_str()];
            if verb == "failover" {
                args.extend(["--policy", "dr"]);
            }
            regferry(scratch, &args, &[]).await
        }
    };
    cmd("run").await.assert_ok();
    let narrowed = d.head("mirror/team/app", "multi").await.expect("narrowed at DR");
    assert_ne!(narrowed.0, four.digest);
    cmd("failover").await.assert_ok();

    // At the DR site: a new multi-platform image, pushed whole.
    let two = multi(Flavor::Oci, "new", &["linux/amd64", "linux/arm64"]);
    d.push("mirror/team/app", "new", &two).await;
    cmd("run").await.assert_ok();
    assert_eq!(p.head("team/app", "multi").await.map(|h| h.0), Some(four.digest.clone()), "the primary's full index is left alone");
    assert_eq!(p.head("team/app", "new").await.map(|h| h.0), Some(two.digest.clone()), "what DR holds goes back as it is");
    assert!(p.missing_content("team/app", "new").await.is_empty());
    let verify = cmd("verify").await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains(&format!("linux/amd64 of {} at the destination is {}", four.digest, narrowed.0)), "{}", verify.stdout);
    let before = primary.lines_by("regferry/").len();
    cmd("run").await.assert_ok();
    let writes: Vec<String> = primary.lines_by("regferry/").into_iter().skip(before).filter(|l| l.contains("\"PUT ") || l.contains("\"POST ")).collect();
    assert!(writes.is_empty(), "a no-op reversed pass wrote: {writes:?}");
}
