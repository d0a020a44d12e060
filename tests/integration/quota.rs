//! The cost of a pass against a registry that counts pulls (Docker Hub's
//! quota, emulated by the fault proxy in front of a real registry: manifest
//! `GET`s are counted and answered `429 TOOMANYREQUESTS` once the quota is
//! used, every manifest answer carries `RateLimit-Limit` /
//! `RateLimit-Remaining`, `HEAD`s are free), and the per-registry accounting
//! of pulls, `HEAD`s, bytes and `429`s in a run's report.

use testkit::dataset;
use testkit::{FaultProxy, Faults};

use crate::support::{Scratch, assert_mirrored, migrate, plain_images, registries, repos_of};

fn hub(quota: u64) -> Faults {
    Faults { pull_quota: Some(quota), quota_window_secs: 3600, ..Faults::default() }
}

/// The source's line of a report's `registries`.
fn source_usage(report: &serde_json::Value) -> serde_json::Value {
    report["registries"].as_array().and_then(|r| r.iter().find(|u| u["role"] == "source").cloned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_quota_stops_pulls_at_the_reserve_and_heads_keep_a_no_op_working_at_zero() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &plain_images(2, 10)).await;
    let sp = FaultProxy::start(&src.url, hub(16));
    let scratch = Scratch::new();

    // 20 tags to copy, 16 pulls in the quota, 10 of them kept in reserve.
    let run = migrate(&scratch, &sp.url, &dst.url, &["--concurrency", "4"]).await;
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let report = run.json();
    let pulls = sp.counters.kind("GET manifest");
    let throttled = sp.counters.injected("quota");
    eprintln!("first pass: {pulls} manifest GETs, {throttled} answered 429, report {}", source_usage(&report));
    // Planning GETs the manifests of missing tags (8 at a time), each
    // counted against the quota as it is sent: the 6 above the reserve.
    assert_eq!(pulls, 6, "manifest GETs: not the quota above the reserve");
    assert_eq!(throttled, 0, "answers 429");
    // Every manifest pulled is copied (its blobs are not pulls).
    let copied = report["counts"]["tags_copied"].as_u64().unwrap_or(0);
    assert_eq!(copied, pulls, "{report}");
    let failures = report["failures"].as_array().cloned().unwrap_or_default();
    assert_eq!(copied as usize + failures.len(), pushed.len(), "{report}");
    for f in &failures {
        let e = f["error"].as_str().unwrap_or_default();
        assert!(e.contains("waiting for the registry's quota (resets in "), "{e}");
    }
    // The report's accounting is the proxy's.
    let usage = source_usage(&report);
    assert_eq!(usage["pulls"].as_u64(), Some(pulls), "{usage}");
    assert_eq!(usage["throttled"].as_u64(), Some(throttled), "{usage}");
    let heads = sp.counters.seen().iter().filter(|s| s.method == "HEAD").count() as u64;
    assert_eq!(usage["heads"].as_u64(), Some(heads), "{usage}");
    assert!(report["quota_resets_in_seconds"].as_u64().is_some_and(|s| s > 3000 && s <= 3600), "{report}");
    assert!(run.stderr.matches("no new work is started").count() <= 1, "{}", run.stderr);

    // The next pass, quota still at the reserve: not one pull, not one 429.
    // (Each run on its own state file: repeated migrates on one SQLite
    // file can wedge today, issue #18, fixed on its own branch.)
    let run = migrate(&Scratch::new(), &sp.url, &dst.url, &[]).await;
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(sp.counters.kind("GET manifest"), pulls, "a pull was sent with the quota at its reserve");
    assert_eq!(sp.counters.injected("quota"), throttled);
    assert_eq!(run.json()["counts"]["tags_skipped"].as_u64(), Some(copied), "{}", run.stdout);

    // The window resets (a bigger quota): the rest is copied.
    sp.set_faults(hub(pulls + pushed.len() as u64 + 20));
    migrate(&Scratch::new(), &sp.url, &dst.url, &[]).await.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;

    // Quota at 0: an unchanged pass costs HEADs only and succeeds.
    let used = sp.counters.kind("GET manifest");
    sp.set_faults(hub(used));
    let heads = sp.counters.kind("HEAD manifest");
    let run = migrate(&Scratch::new(), &sp.url, &dst.url, &[]).await;
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(sp.counters.kind("GET manifest"), used, "an unchanged pass pulled");
    assert_eq!(sp.counters.kind("HEAD manifest") - heads, pushed.len() as u64);
    assert_eq!(run.json()["counts"]["tags_skipped"].as_u64(), Some(pushed.len() as u64));
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_named_exactly_are_asked_for_without_listing_and_their_signatures_travel() {
    use testkit::image::{self, Flavor};
    use testkit::{Access, Registry, TestRegistry};

    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    crate::policies::push_tags(&s, "team/app", &["1.0.0", "1.1.0", "latest", "dev"], "named").await;
    let signed = image::image(Flavor::Oci, "signed", vec![image::layer(Flavor::Oci, "signed", 300)]);
    s.push("team/app", "1.2.0", &signed).await;
    s.push("team/app", &image::signature_tag(&signed.digest), &image::signature(&signed)).await;
    let scratch = Scratch::new();
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: named\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: m\n\
             repositories:\n  include: ['team/app']\ntags:\n  include: ['1.0.0', '1.2.0', 'latest', 'gone']\nretry: {{ attempts: 1 }}\n",
            src.url, dst.url
        ),
    );
    let state = scratch.state();
    let run = crate::support::regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    let out = run.json();
    let report = &out[0]["destinations"][0]["report"];
    // The tag that does not exist is named as such; the others are copied.
    assert_eq!(report["counts"]["tags_copied"], 4, "{out}");
    let failures = report["failures"].as_array().cloned().unwrap_or_default();
    assert_eq!(failures.len(), 1, "{out}");
    assert!(failures[0]["error"].as_str().unwrap_or_default().contains("team/app:gone (named by the tag rules) does not exist"), "{out}");
    assert_eq!(src.count("GET", "/tags/list"), 0, "the source's tags were listed");
    for tag in ["1.0.0", "1.2.0", "latest", &image::signature_tag(&signed.digest)] {
        assert_eq!(d.head("m/team/app", tag).await, s.head("team/app", tag).await, "{tag}");
    }
    for tag in ["1.1.0", "dev"] {
        assert_eq!(d.head("m/team/app", tag).await, None, "{tag} is not named");
    }
    // The next pass: still no listing, HEADs only at the source.
    let before = src.lines_by("regferry/").len();
    crate::support::regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    let lines: Vec<String> = src.lines_by("regferry/").into_iter().skip(before).collect();
    assert!(lines.iter().all(|l| !l.contains("/tags/list") && !(l.contains("\"GET ") && l.contains("/manifests/"))), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_tries_again_when_the_quota_resets_not_at_its_next_trigger() {
    use std::time::Duration;

    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &plain_images(2, 10)).await;
    // A 12-pull quota in a 4-second window: 2 pulls above the reserve
    // (and up to 8 more already on their way when it is reached).
    let sp = FaultProxy::start(&src.url, Faults { pull_quota: Some(12), quota_window_secs: 4, ..Faults::default() });
    let scratch = Scratch::new();
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: hub\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ interval: 1h }}\nconcurrency: 1\n",
            sp.url, dst.url
        ),
    );
    let daemon = crate::support::daemon_command(&scratch, &policies, testkit::free_port()).spawn().expect("start daemon");
    let log = scratch.path("daemon.log");
    crate::support::wait_until(Duration::from_secs(30), "the first pass to stop at the quota", async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("the next pass starts when it resets")
    })
    .await;
    let first = sp.counters.kind("GET manifest");
    assert!(first < pushed.len() as u64, "{first} pulls");
    // The window resets with room for the rest: the next pass comes then, not in an hour.
    sp.set_faults(Faults { pull_quota: Some(100), quota_window_secs: 4, ..Faults::default() });
    crate::support::wait_until(Duration::from_secs(30), "the rest copied after the reset", async || {
        for p in &pushed {
            if d.head(&p.repo, &p.tag).await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
    let text = crate::support::stop_daemon(daemon, &log).await;
    assert_eq!(text.matches("its rate limit allows only").count(), 1, "announced once:\n{text}");
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;
}

/// Planning keeps the manifests it fetched for tags the destination lacks
/// within a memory budget (8 MiB); once that is spent, the rest are planned
/// with a `HEAD` (free where pulls are counted) and fetched once by the
/// copy — never pulled twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_copy_beyond_the_kept_manifests_budget_pulls_each_manifest_once() {
    use testkit::image::{self, Flavor};

    let (src, dst, s, d) = registries();
    // One image whose manifest is ~128 KiB (annotations), under 100 tags:
    // 12.5 MiB of manifests to plan.
    let layer = image::layer(Flavor::Oci, "big-manifest", 1000);
    let config = image::Blob::new("application/vnd.oci.image.config.v1+json", b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec());
    s.push_blob("team/wide", &layer).await;
    s.push_blob("team/wide", &config).await;
    let filler: serde_json::Map<String, serde_json::Value> =
        (0..1000).map(|i| (format!("org.example.note.{i:04}"), serde_json::Value::String("x".repeat(110)))).collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
        "annotations": filler,
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest");
    assert!(bytes.len() > 120 * 1024, "{}", bytes.len());
    let tags: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
    for tag in &tags {
        let r = s.put_manifest("team/wide", tag, "application/vnd.oci.image.manifest.v1+json", &bytes).await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    let sp = FaultProxy::start(&src.url, Faults::default());
    let run = migrate(&Scratch::new(), &sp.url, &dst.url, &[]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &["team/wide".to_string()], "").await;
    let (pulls, heads) = (sp.counters.kind("GET manifest"), sp.counters.kind("HEAD manifest"));
    eprintln!("100 tags of a {}-byte manifest: {pulls} manifest GETs, {heads} HEADs at the source", bytes.len());
    assert_eq!(
        pulls,
        tags.len() as u64,
        "a manifest was pulled twice (planning dropped it over the budget, the copy fetched it again); the run's report (retries, per registry): {}",
        run.stdout
    );
    assert!(heads < tags.len() as u64, "{heads} HEADs: the budget was never used");
}

/// A front that forbids manifest `HEAD`s (403) while serving `GET`s: a
/// refused `HEAD` is asked again with `GET` to read the registry's reason,
/// and that `GET` is a pull like any other, counted in the run's report.
#[tokio::test(flavor = "multi_thread")]
async fn a_get_sent_to_read_why_a_head_was_refused_is_a_counted_pull() {
    let (src, dst, s, _d) = registries();
    dataset::fill(&s, &plain_images(1, 4)).await;
    let scratch = Scratch::new();
    migrate(&scratch, &src.url, &dst.url, &[]).await.assert_ok();

    // The no-op pass HEADs every tag; each HEAD is refused.
    let sp = FaultProxy::start(&src.url, Faults { refuse_manifest_head: 1.0, ..Faults::default() });
    let run = migrate(&scratch, &sp.url, &dst.url, &[]).await;
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let usage = source_usage(&run.json());
    let pulls = sp.counters.kind("GET manifest");
    eprintln!("HEADs refused: {pulls} manifest GETs at the source, report {usage}");
    assert!(pulls > 0, "no GET was sent to read the refusal");
    assert_eq!(usage["pulls"].as_u64(), Some(pulls), "a manifest GET the report does not count: {usage}");

}
