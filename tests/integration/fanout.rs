//! One read of the source for all destinations of a policy (issue #21
//! item 5): a policy with two destinations (two real registries) reads each
//! blob and each tag's manifest from the source once per pass, counted by
//! the fault proxy in front of the source and by the run's report; one
//! destination refusing uploads, or slowed by a bandwidth limit, neither
//! fails the other nor makes it wait for the slow one; what a killed pass
//! spooled is removed by the next.

use std::time::Duration;

use testkit::dataset::{self, Pushed};
use testkit::{Access, FaultProxy, Faults, Registry, TestRegistry};

use crate::support::{Scratch, assert_mirrored, plain_images, repos_of, wait_until};

/// A policy file copying everything from `src` to each of `destinations`.
fn policy(scratch: &Scratch, src: &str, destinations: &[&str]) -> String {
    let dests: String = destinations.iter().map(|d| format!("  - registry: '{d}'\n")).collect();
    crate::policies::write(
        scratch,
        "policies",
        "p.yaml",
        &format!("name: fan\nsource: {{ registry: '{src}' }}\ndestinations:\n{dests}retry: {{ attempts: 2 }}\n"),
    )
}

/// Blob bytes the reports of a `run --json` say were read from the source,
/// summed over the destinations of the pass.
fn source_bytes_read(out: &serde_json::Value) -> u64 {
    out[0]["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["report"]["registries"].as_array().cloned().unwrap_or_default())
        .filter(|u| u["role"] == "source")
        .map(|u| u["blob_bytes_read"].as_u64().unwrap_or(0))
        .sum()
}

/// Distinct blobs of a data set.
fn distinct_blobs(items: &[Pushed]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    items.iter().flat_map(|p| p.manifest.all_blobs()).filter(|b| seen.insert(b.digest.clone())).count() as u64
}

/// 3 repositories × 3 tags sharing base layers; big enough that a slow link
/// takes seconds.
fn data() -> testkit::dataset::Spec {
    testkit::dataset::Spec { base_layer_size: 256 * 1024, repo_layer_size: 128 * 1024, tag_layer_size: 64 * 1024, ..plain_images(3, 3) }
}

/// A source filled with [`data`] behind a counting fault proxy (`sp`), two
/// empty destination registries and a scratch directory.
struct Fan {
    _src: TestRegistry,
    d1: TestRegistry,
    d2: TestRegistry,
    s: Registry,
    pushed: Vec<Pushed>,
    sp: FaultProxy,
    scratch: Scratch,
}

impl Fan {
    async fn start() -> Fan {
        let src = TestRegistry::start();
        let (d1, d2) = (TestRegistry::start(), TestRegistry::start());
        let s = Registry::new(&src.url, Access::Anonymous);
        let pushed = dataset::fill(&s, &data()).await;
        let sp = FaultProxy::start(&src.url, Faults::default());
        Fan { _src: src, d1, d2, s, pushed, sp, scratch: Scratch::new() }
    }

    /// `regferry run` of `policies` with this scratch's state, `--json`.
    fn command(&self, policies: &str) -> tokio::process::Command {
        crate::support::command(&self.scratch, &["run", "--policies", policies, "--state", &self.scratch.state(), "--json"], &[])
    }

    /// One pass of `policies`, to its end.
    async fn pass(&self, policies: &str) -> crate::support::Run {
        crate::support::regferry(&self.scratch, &["run", "--policies", policies, "--state", &self.scratch.state(), "--json"], &[]).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_destinations_read_each_blob_and_manifest_of_the_source_once() {
    let f = Fan::start().await;
    let (d1, d2, s, pushed, sp, scratch) = (&f.d1, &f.d2, &f.s, &f.pushed, &f.sp, &f.scratch);
    let policies = policy(scratch, &sp.url, &[&d1.url, &d2.url]);
    let run = f.pass(&policies).await;
    run.assert_ok();
    let out = run.json();
    for d in [d1, d2] {
        let d = Registry::new(&d.url, Access::Anonymous);
        assert_mirrored(s, &d, &repos_of(pushed), "").await;
    }
    let distinct = dataset::distinct_blob_bytes(pushed);
    eprintln!(
        "source: {} blob GETs for {} distinct blobs, {} manifest GETs for {} tags; report: {} bytes read, distinct {distinct}",
        sp.counters.kind("GET blob"),
        distinct_blobs(pushed),
        sp.counters.kind("GET manifest"),
        pushed.len(),
        source_bytes_read(&out)
    );
    assert_eq!(source_bytes_read(&out), distinct, "source blob bytes read (report) ≠ the distinct bytes once: {out}");
    assert_eq!(sp.counters.kind("GET blob"), distinct_blobs(pushed), "blob GETs at the source ≠ one per distinct blob");
    assert_eq!(sp.counters.kind("GET manifest"), pushed.len() as u64, "manifest GETs at the source ≠ one per tag");
    // The pass's spool (beside the state) went with it.
    let spool = scratch.path("state/spool");
    assert!(spool.is_dir(), "no spool directory beside the state");
    assert_eq!(std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(1), 0, "the pass left its spool behind");

    // A second pass with nothing new reads no blob, pulls nothing, and
    // asks the source about each tag once for both destinations.
    let (blobs, pulls, heads) = (sp.counters.kind("GET blob"), sp.counters.kind("GET manifest"), sp.counters.kind("HEAD manifest"));
    f.pass(&policies).await.assert_ok();
    assert_eq!((sp.counters.kind("GET blob"), sp.counters.kind("GET manifest")), (blobs, pulls));
    assert_eq!(sp.counters.kind("HEAD manifest") - heads, pushed.len() as u64, "source manifest HEADs of a no-op pass ≠ one per tag");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_refusing_uploads_fails_alone_and_the_source_is_still_read_once() {
    let f = Fan::start().await;
    let (d1, s, pushed, sp) = (&f.d1, &f.s, &f.pushed, &f.sp);
    // The second destination refuses every blob upload (400 BLOB_UPLOAD_INVALID).
    let refusing = FaultProxy::start(&f.d2.url, Faults { upload_invalid: 1.0, ..Faults::default() });
    let policies = policy(&f.scratch, &sp.url, &[&d1.url, &refusing.url]);
    let run = f.pass(&policies).await;
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let out = run.json();
    let dests = out[0]["destinations"].as_array().cloned().unwrap_or_default();
    let at = |url: &str| dests.iter().find(|d| d["destination"].as_str().is_some_and(|d| d.starts_with(url))).cloned().unwrap_or_default();
    assert_eq!(at(&d1.url)["report"]["status"], "succeeded", "{out}");
    assert!(!at(&refusing.url)["report"]["failures"].as_array().cloned().unwrap_or_default().is_empty(), "{out}");
    assert!(refusing.counters.injected("upload_invalid") > 0);
    assert_mirrored(s, &Registry::new(&d1.url, Access::Anonymous), &repos_of(pushed), "").await;
    // Every blob crossed from the source once, however often the refused
    // destination tried it again.
    assert_eq!(sp.counters.kind("GET blob"), distinct_blobs(pushed), "blob GETs at the source ≠ one per distinct blob");
    assert_eq!(source_bytes_read(&out), dataset::distinct_blob_bytes(pushed), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_destination_does_not_hold_back_the_fast_one() {
    let f = Fan::start().await;
    let (d1, d2, s, pushed, sp) = (&f.d1, &f.d2, &f.s, &f.pushed, &f.sp);
    let distinct = dataset::distinct_blob_bytes(pushed);
    // The slow destination's link takes ~8 s for the data set.
    let slow = FaultProxy::start(&d2.url, Faults { bandwidth: distinct / 8, ..Faults::default() });
    let policies = policy(&f.scratch, &sp.url, &[&d1.url, &slow.url]);
    let mut child = f.command(&policies).stdout(std::process::Stdio::piped()).spawn().expect("start regferry");
    let fast = Registry::new(&d1.url, Access::Anonymous);
    let repos = repos_of(pushed);
    let tags = pushed.len();
    // The fast destination holds every tag while the slow one is still
    // being written (the run has not ended).
    wait_until(Duration::from_secs(60), "the fast destination to hold every tag", async || {
        let mut n = 0;
        for r in &repos {
            n += fast.tag_map(r).await.len();
        }
        n == tags
    })
    .await;
    assert!(child.try_wait().expect("wait").is_none(), "the run ended before the fast destination was checked: the slow link was not slow");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("run ends").expect("output");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_mirrored(s, &fast, &repos, "").await;
    assert_mirrored(s, &Registry::new(&d2.url, Access::Anonymous), &repos, "").await;
    assert_eq!(sp.counters.kind("GET blob"), distinct_blobs(pushed), "blob GETs at the source ≠ one per distinct blob");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_killed_mid_way_leaves_a_spool_that_the_next_pass_removes() {
    let f = Fan::start().await;
    let (d1, d2, s, pushed, sp) = (&f.d1, &f.d2, &f.s, &f.pushed, &f.sp);
    // A slow source: the pass is still reading it when it is killed.
    sp.set_faults(Faults { bandwidth: dataset::distinct_blob_bytes(pushed) / 6, ..Faults::default() });
    let policies = policy(&f.scratch, &sp.url, &[&d1.url, &d2.url]);
    let mut child = f.command(&policies).stdout(std::process::Stdio::null()).spawn().expect("start regferry");
    let spool = f.scratch.path("state/spool");
    let files = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir).into_iter().flatten().flatten().flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten().map(|f| f.path())).collect()
    };
    wait_until(Duration::from_secs(30), "the pass to spool a blob", async || !files(&spool).is_empty()).await;
    child.start_kill().expect("kill -9");
    child.wait().await.expect("wait");
    let left = files(&spool);
    assert!(!left.is_empty(), "the killed pass left nothing to clean up");

    sp.set_faults(Faults::default());
    f.pass(&policies).await.assert_ok();
    for p in &left {
        assert!(!p.exists(), "{} of the killed pass is still there", p.display());
    }
    assert_eq!(std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(1), 0, "a spool directory is left");
    for d in [d1, d2] {
        assert_mirrored(s, &Registry::new(&d.url, Access::Anonymous), &repos_of(pushed), "").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dr_site_and_an_air_gap_export_read_the_source_once_indexes_and_signatures_included() {
    let src = TestRegistry::start();
    let dr = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let pushed = dataset::fill(&s, &testkit::dataset::Spec { repos: 2, tags_per_repo: 3, multi_arch_every: 2, signatures: true, ..data() }).await;
    let sp = FaultProxy::start(&src.url, Faults::default());
    let scratch = Scratch::new();
    let layout = format!("oci:{}", scratch.path("export").display());
    let policies = policy(&scratch, &sp.url, &[&dr.url, &layout]);
    let run = crate::support::regferry(&scratch, &["run", "--policies", &policies, "--state", &scratch.state(), "--json"], &[]).await;
    run.assert_ok();
    let out = run.json();
    assert_mirrored(&s, &Registry::new(&dr.url, Access::Anonymous), &repos_of(&pushed), "").await;
    let verify = crate::support::regferry(&scratch, &["verify", "--from", &src.url, "--to", &layout, "--deep", "--json"], &[]).await;
    assert_eq!(verify.code, 0, "verify of the export: {}\n{}", verify.stdout, verify.stderr);
    assert_eq!(sp.counters.kind("GET blob"), distinct_blobs(&pushed), "blob GETs at the source ≠ one per distinct blob");
    assert_eq!(source_bytes_read(&out), dataset::distinct_blob_bytes(&pushed), "{out}");
    // Each manifest (tags, index children, signatures) once: no GET of one path twice.
    let gets: Vec<String> = sp.counters.seen().iter().filter(|r| r.method == "GET" && r.target.contains("/manifests/")).map(|r| r.target.clone()).collect();
    let distinct: std::collections::HashSet<&String> = gets.iter().collect();
    assert_eq!(gets.len(), distinct.len(), "a source manifest was fetched more than once: {gets:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deletions_are_mirrored_at_both_destinations_of_a_shared_pass() {
    let f = Fan::start().await;
    let (d1, d2, s, sp) = (&f.d1, &f.d2, &f.s, &f.sp);
    crate::policies::push_tags(s, "team/app", &["v1", "v2", "v3"], "app").await;
    let text = format!(
        "name: del\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n  - registry: '{}'\n\
         repositories: {{ include: ['team/**'] }}\ndelete: true\nmax_delete: 5\n",
        sp.url, d1.url, d2.url
    );
    let policies = crate::policies::write(&f.scratch, "policies", "p.yaml", &text);
    f.pass(&policies).await.assert_ok();
    let v2 = s.head("team/app", "v2").await.expect("v2").0;
    s.delete_manifest("team/app", &v2).await;
    let run = f.pass(&policies).await;
    run.assert_ok();
    for (i, d) in [d1, d2].into_iter().enumerate() {
        assert_eq!(run.json()[0]["destinations"][i]["deleted"], serde_json::json!(["team/app:v2"]), "{}", run.stdout);
        let mut tags = Registry::new(&d.url, Access::Anonymous).tags("team/app").await;
        tags.sort();
        assert_eq!(tags, ["v1", "v3"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_spool_budget_caps_every_pass_and_zero_turns_the_spool_off() {
    let f = Fan::start().await;
    let (d1, d2, s, pushed, sp) = (&f.d1, &f.d2, &f.s, &f.pushed, &f.sp);
    let text = format!(
        "name: fan\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n  - registry: '{}'\ntrigger: {{ interval: 1h }}\n",
        sp.url, d1.url, d2.url
    );
    let policies = crate::policies::write(&f.scratch, "policies", "p.yaml", &text);
    // The policy's own spool_budget (the default, 2 GiB) would take every blob.
    let port = testkit::free_port();
    let daemon = crate::support::daemon_command(&f.scratch, &policies, port).arg("--spool-budget").arg("0").spawn().expect("start daemon");
    let repos = repos_of(pushed);
    for d in [d1, d2] {
        let d = Registry::new(&d.url, Access::Anonymous);
        wait_until(Duration::from_secs(60), "both destinations to hold every tag", async || {
            let mut n = 0;
            for r in &repos {
                n += d.tag_map(r).await.len();
            }
            n == pushed.len()
        })
        .await;
        assert_mirrored(s, &d, &repos, "").await;
    }
    crate::support::stop_daemon(daemon, &f.scratch.path("daemon.log")).await;
    assert_eq!(sp.counters.kind("GET blob"), 2 * distinct_blobs(pushed), "with the daemon's spool budget at 0, each destination reads each blob itself");
    // Manifests are still fetched once for both (they are not spooled).
    assert_eq!(sp.counters.kind("GET manifest"), pushed.len() as u64);
}
