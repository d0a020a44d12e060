//! Bad input from a registry or the command line: the tag (or name) at
//! fault fails with a precise reason, everything else is copied, and a bad
//! name never reaches a request. Manifests the real registry refuses to
//! store are served by a proxy in front of it.

use serde_json::{Value, json};
use testkit::image::{self, Flavor, OCI_INDEX, OCI_MANIFEST};
use testkit::{Canned, FaultProxy, Faults};

use crate::support::{Scratch, assert_mirrored, migrate, regferry, registries};

/// `failures` of a JSON report as (repository, tag) → error.
fn failures(report: &Value) -> std::collections::BTreeMap<(String, String), String> {
    report["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            ((s("repository"), s("tag")), s("error"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_manifests_fail_their_tag_with_a_precise_reason_and_the_rest_is_copied() {
    let (src, dst, s, d) = registries();
    let img = |name: &str| image::image(Flavor::Oci, name, vec![image::layer(Flavor::Oci, name, 1500)]);
    s.push("app/good", "v1", &img("good-1")).await;
    s.push("app/good", "v2", &img("good-2")).await;
    s.push("app/bad", "fine", &img("fine")).await;
    let placeholder = img("placeholder");
    let config = placeholder.blobs[0].descriptor();

    let big_annotation = "x".repeat(5 << 20);
    let cases: Vec<(&str, &str, Vec<u8>, String)> = vec![
        ("not-json", OCI_MANIFEST, b"<html>not a manifest</html>".to_vec(), "manifest is not valid JSON: expected value at line 1 column 1".into()),
        (
            "no-media-type",
            "application/json",
            json!({"schemaVersion": 2, "annotations": {"a": "b"}}).to_string().into_bytes(),
            "manifest has no usable media type".into(),
        ),
        (
            "no-schema-version",
            OCI_MANIFEST,
            json!({"mediaType": OCI_MANIFEST, "config": config, "layers": []}).to_string().into_bytes(),
            "manifest lacks schemaVersion 2 (found None)".into(),
        ),
        (
            "too-large",
            OCI_MANIFEST,
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [], "annotations": {"big": big_annotation}})
                .to_string()
                .into_bytes(),
            "above the 4 MiB limit".into(),
        ),
        (
            "bad-digest",
            OCI_MANIFEST,
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                   "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:zz", "size": 2}]})
            .to_string()
            .into_bytes(),
            r#"malformed digest "sha256:zz": encoded part must be lowercase hex"#.into(),
        ),
        (
            "path-digest",
            OCI_MANIFEST,
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                   "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:../../../../etc/passwd", "size": 2}]})
            .to_string()
            .into_bytes(),
            r#"malformed digest "sha256:../../../../etc/passwd""#.into(),
        ),
        (
            "bad-child",
            OCI_INDEX,
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST, "digest": "md5:abc", "size": 10}]})
                .to_string()
                .into_bytes(),
            r#"malformed digest "md5:abc": unsupported algorithm"#.into(),
        ),
        (
            "unknown-type",
            "application/vnd.example.thing+json",
            json!({"schemaVersion": 2, "mediaType": "application/vnd.example.thing+json"}).to_string().into_bytes(),
            r#"unsupported manifest media type "application/vnd.example.thing+json""#.into(),
        ),
    ];
    // The real registry refuses to store any of these, so each bad tag
    // exists at the source with an ordinary manifest and the proxy serves
    // the bad one in its place (by tag and by digest).
    let sp = FaultProxy::start(&src.url, Faults::default());
    for (tag, content_type, body, _) in &cases {
        s.push("app/bad", tag, &placeholder).await;
        let canned = Canned::manifest(content_type, body.clone());
        sp.answer(&format!("/v2/app/bad/manifests/{tag}"), canned.clone());
        sp.answer(&format!("/v2/app/bad/manifests/{}", image::sha256(body)), canned);
    }

    let scratch = Scratch::new();
    let run = migrate(&scratch, &sp.url, &dst.url, &[]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let failed = failures(&report);
    assert_eq!(failed.len(), cases.len(), "{failed:#?}");
    for (tag, _, _, reason) in &cases {
        let error = failed.get(&("app/bad".to_string(), tag.to_string())).unwrap_or_else(|| panic!("{tag} did not fail: {failed:#?}"));
        assert!(error.starts_with(&format!("manifest app/bad:{tag} at {}: ", sp.url)), "{tag}: the error names the tag and registry: {error}");
        assert!(error.contains(reason.as_str()), "{tag}: expected {reason:?} in {error:?}");
        assert!(error.len() < 400, "{tag}: the reason is one short line: {error}");
        // A bad manifest is not retried: one fetch to copy (plus, for a
        // generic Content-Type, one to learn its type while planning).
        let fetches = sp.counters.seen().iter().filter(|r| r.method == "GET" && r.target == format!("/v2/app/bad/manifests/{tag}")).count();
        assert!(fetches <= 2, "{tag} fetched {fetches} times");
    }
    assert_eq!(report["counts"]["tags_copied"], 3);
    assert_mirrored(&s, &d, &["app/good".into()], "").await;
    assert_eq!(d.tags("app/bad").await, vec!["fine".to_string()], "only the good tag of app/bad is copied");
    assert_eq!(d.head("app/bad", "fine").await, s.head("app/bad", "fine").await);
    // No malformed digest ever became a request path.
    for r in sp.counters.seen() {
        assert!(!r.target.contains("..") && !r.target.contains("passwd") && !r.target.contains("md5"), "request built from a bad digest: {}", r.target);
    }
    assert!(!dst.log().contains("passwd"));

    // The same reasons in the human summary of the next (resumed) run.
    let state = scratch.state();
    let run = regferry(&scratch, &["migrate", "--from", &sp.url, "--to", &dst.url, "--state", &state], &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("failed tags:"), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("  app/bad:not-json: manifest app/bad:not-json at {}: manifest is not valid JSON", sp.url)), "{}", run.stdout);
    assert!(run.stdout.contains("8 failed"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn names_that_break_the_grammar_are_refused_before_any_request() {
    let (src, dst, s, d) = registries();
    s.push("good/app", "v1", &image::image(Flavor::Docker, "good", vec![image::layer(Flavor::Docker, "good", 800)])).await;

    // A source whose catalog and tag list name things no request may carry.
    let bad_repos = ["../escape", "a%2Fb", "/lead", "Upper/x", "ok/../../x", "x//y", "trail/", "a b"];
    let bad_tags = ["../../etc", "a%2Fb", ".hidden", "-x", "x/y", "a:b", "%2e%2e"];
    let sp = FaultProxy::start(&src.url, Faults::default());
    let mut repos: Vec<&str> = vec!["good/app"];
    repos.extend(bad_repos);
    sp.answer("/v2/_catalog", Canned::json(&json!({ "repositories": repos })));
    let mut tags: Vec<&str> = vec!["v1"];
    tags.extend(bad_tags);
    sp.answer("/v2/good/app/tags/list", Canned::json(&json!({ "name": "good/app", "tags": tags })));

    let scratch = Scratch::new();
    let run = migrate(&scratch, &sp.url, &dst.url, &[]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let failed = failures(&report);
    for repo in bad_repos {
        let error = failed.get(&(repo.to_string(), String::new())).unwrap_or_else(|| panic!("{repo:?} not reported: {failed:#?}"));
        assert!(error.starts_with(&format!("invalid repository name {repo:?}: ")), "{error}");
    }
    for tag in bad_tags {
        let error = failed.get(&("good/app".to_string(), tag.to_string())).unwrap_or_else(|| panic!("{tag:?} not reported: {failed:#?}"));
        assert!(error.starts_with(&format!("invalid tag {tag:?}: ")), "{error}");
    }
    assert_eq!(failed.len(), bad_repos.len() + bad_tags.len());
    assert_eq!(report["counts"]["tags_copied"], 1);
    assert_mirrored(&s, &d, &["good/app".into()], "").await;

    // Not one request named anything but the good repository.
    for r in sp.counters.seen() {
        let path = r.target.split('?').next().unwrap_or_default();
        let ok = path == "/v2/"
            || path == "/v2/_catalog"
            || path == "/v2/good/app/tags/list"
            || path == "/v2/good/app/manifests/v1"
            || path.strip_prefix("/v2/good/app/blobs/sha256:").is_some_and(|h| h.len() == 64)
            || path.strip_prefix("/v2/good/app/referrers/sha256:").is_some_and(|h| h.len() == 64);
        assert!(ok, "request to the source built from a bad name: {} {}", r.method, r.target);
    }
    for line in dst.lines_by("regferry/") {
        assert!(line.contains("\"GET /v2/ ") || line.contains(" /v2/good/app/"), "request to the destination built from a bad name: {line}");
    }

    // A bad name on the command line stops the run before any request.
    let (src_before, dst_before) = (src.access_lines().len(), dst.access_lines().len());
    let state = scratch.state();
    for (from, to) in [(format!("{}/a%2Fb", src.url), dst.url.clone()), (src.url.clone(), format!("{}/../x", dst.url))] {
        let run = regferry(&scratch, &["migrate", "--from", &from, "--to", &to, "--state", &state], &[]).await;
        assert_eq!(run.code, 2, "{from} → {to}: {}", run.stderr);
        assert!(run.stderr.contains("repository prefix"), "{}", run.stderr);
    }
    assert_eq!((src.access_lines().len(), dst.access_lines().len()), (src_before, dst_before), "a refused name still caused requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_content_digest_that_disagrees_with_the_bytes_loses_to_the_bytes() {
    let (src, dst, s, d) = registries();
    let img = |name: &str| image::image(Flavor::Oci, name, vec![image::layer(Flavor::Oci, name, 1200)]);
    let (one, two, solo) = (img("one"), img("two"), img("solo"));
    s.push("lie/app", "v1", &one).await;
    s.push("lie/app", "v2", &two).await;
    s.push("lie/solo", "v1", &solo).await;
    // Every manifest answer under lie/ claims to be lie/app:v2: for
    // lie/app:v1 that names another manifest that exists, for lie/solo one
    // that does not exist there.
    let sp = FaultProxy::start(&src.url, Faults { wrong_digest: Some(two.digest.clone()), only: vec!["/v2/lie/".into()], ..Faults::default() });
    let scratch = Scratch::new();
    let run = migrate(&scratch, &sp.url, &dst.url, &[]).await;
    run.assert_ok();
    assert!(sp.counters.injected("wrong_digest") > 0);
    // The bytes won: every tag is what the source really holds.
    assert_mirrored(&s, &d, &["lie/app".into(), "lie/solo".into()], "").await;
    assert_eq!(d.head("lie/app", "v1").await.map(|h| h.0), Some(one.digest.clone()));
    // And the mismatch was reported: counted, and logged with both digests.
    assert_eq!(run.json()["counts"]["digest_mismatches"], 2);
    let warning = run
        .stderr
        .lines()
        .find(|l| l.contains("Docker-Content-Digest disagrees with the manifest bytes") && l.contains("lie/app"))
        .unwrap_or_else(|| panic!("no warning:\n{}", run.stderr));
    assert!(warning.contains(&two.digest) && warning.contains(&one.digest), "{warning}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_duration_is_refused_with_exit_code_2_and_names_the_flag() {
    let scratch = Scratch::new();
    for (value, reason) in [("5x", "unknown time unit"), ("0s", "at least 1s"), ("soon", "expected e.g. 30s")] {
        let run = regferry(&scratch, &["migrate", "--from", "http://127.0.0.1:1", "--to", "http://127.0.0.1:1", "--stall-timeout", value], &[]).await;
        assert_eq!(run.code, 2, "{value}: {}", run.stderr);
        assert!(run.stderr.contains(&format!("invalid value '{value}' for '--stall-timeout <DURATION>'")), "{}", run.stderr);
        assert!(run.stderr.contains(reason), "{value}: {}", run.stderr);
    }
}
