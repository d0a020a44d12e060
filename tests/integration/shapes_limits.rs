//! Registries that push back: a `429` storm answered by one shared pause,
//! a source that dies mid-run, a read-only destination, an announced quota
//! that runs low, and the optional request and byte rates — each against
//! real registries (behind the fault proxy where a fault is needed).

use std::time::{Duration, Instant};

use testkit::dataset::{self, Spec};
use testkit::{Canned, FaultProxy, Faults, Options, TestRegistry};

use crate::support::{Scratch, assert_mirrored, command, migrate, migrate_args, plain_images, registries, repos_of, wait_until, regferry};

/// Lines of `text` that contain `needle`.
fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_storm_pauses_every_task_once_instead_of_each_discovering_it() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &plain_images(4, 3)).await;
    // Every blob download is answered 429 + Retry-After: 2 until the storm
    // is switched off, 3 s after the first one.
    let storm = Faults { too_many_requests: 1.0, retry_after_secs: 2, only: vec!["GET ".into(), "/blobs/sha256:".into()], ..Faults::default() };
    let sp = FaultProxy::start(&src.url, storm);
    let scratch = Scratch::new();
    let args = migrate_args(&scratch, &sp.url, &dst.url, &["--concurrency", "8"]);
    let run = tokio::spawn(command(&scratch, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).output());
    wait_until(Duration::from_secs(60), "the first 429", async || sp.counters.injected("too_many_requests") > 0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    sp.set_faults(Faults::default());
    let out = run.await.expect("join").expect("run regferry");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;

    // At most the blob streams in flight when the storm began (8) were
    // answered 429, plus one scout per pause — not tasks × retries × levels.
    let throttled = sp.counters.injected("too_many_requests");
    assert!((1..=8 + 3).contains(&throttled), "{throttled} requests were answered 429");

    // Nothing was sent during an announced pause (a request already on its
    // way when the 429 arrived may land a moment later).
    let seen = sp.counters.seen();
    for t in seen.iter().filter(|s| s.fault == Some("too_many_requests")) {
        let during: Vec<&str> = seen
            .iter()
            .filter(|s| s.at > t.at + Duration::from_millis(300) && s.at < t.at + Duration::from_millis(1800))
            .map(|s| s.target.as_str())
            .collect();
        assert!(during.is_empty(), "requests sent during the pause that began {:?} into the run: {during:?}", t.at - seen[0].at);
    }
    // The pause is announced at the default log level, once per pause, not once per task.
    let announced = count_lines(&stderr, "every request to it waits");
    assert!((1..=3).contains(&announced), "{announced} announcements:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_dies_mid_run_fails_the_remaining_tags_at_once_with_one_message() {
    let mut src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = testkit::Registry::new(&src.url, testkit::Access::Anonymous);
    let pushed = dataset::fill(&s, &plain_images(6, 6)).await;
    // A slow destination keeps the run going long enough to kill the source under it.
    let dp = FaultProxy::start(&dst.url, Faults { latency: Duration::from_millis(60), ..Faults::default() });
    let scratch = Scratch::new();
    let args = migrate_args(&scratch, &src.url, &dp.url, &["--concurrency", "2"]);
    let started = Instant::now();
    let run = tokio::spawn(command(&scratch, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).output());
    wait_until(Duration::from_secs(60), "two tags at the destination", async || dst.count("PUT", "/manifests/") >= 2).await;
    let source_url = src.url.clone();
    src.stop();
    let out = run.await.expect("join").expect("run regferry");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");

    // One condition, naming the registry; the rest of the tags not attempted.
    let conditions = report["conditions"].as_array().expect("conditions");
    assert_eq!(conditions.len(), 1, "{conditions:?}");
    let condition = conditions[0].as_str().unwrap_or_default();
    assert!(condition.starts_with(&format!("source {source_url} is down:")), "{condition}");
    let copied = report["counts"]["tags_copied"].as_u64().unwrap_or(0);
    let failed = report["counts"]["tags_failed"].as_u64().unwrap_or(0);
    let not_attempted = report["not_attempted"].as_u64().unwrap_or(0);
    assert_eq!(copied + failed, pushed.len() as u64, "{report}");
    // Only the tags in flight when it died (2) fail on their own.
    assert!(not_attempted + 2 >= failed && not_attempted >= 10, "{not_attempted} of {failed} failures not attempted: {report}");
    // Announced once at the default level, not once per tag.
    assert_eq!(count_lines(&stderr, "is down"), 1, "{stderr}");
    assert!(count_lines(&stderr, "copy failed") <= 2, "{stderr}");
    // No tag worked through its retry budget against a dead registry.
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");

    // `jobs show` names the condition too.
    let id = report["execution"].as_i64().expect("execution id").to_string();
    let show = regferry(&scratch, &["jobs", "show", &id, "--state", &scratch.state()], &[]).await;
    eprintln!("after the source died ({elapsed:?}):\n{stderr}\n{}", show.stdout.lines().take(12).collect::<Vec<_>>().join("\n"));
    assert!(show.stdout.contains(&format!("source {source_url} is down")), "{}", show.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_destination_is_recognised_with_one_clear_message() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start_with(Options { read_only: true, ..Options::default() });
    let s = testkit::Registry::new(&src.url, testkit::Access::Anonymous);
    let pushed = dataset::fill(&s, &plain_images(3, 3)).await;
    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dst.url, &["--concurrency", "2"]).await;
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let report = run.json();
    let conditions = report["conditions"].as_array().expect("conditions");
    assert_eq!(conditions.len(), 1, "{conditions:?}");
    let condition = conditions[0].as_str().unwrap_or_default();
    assert!(
        condition.starts_with(&format!("destination {} is read-only (maintenance mode?): HTTP 405", dst.url)),
        "{condition}"
    );
    assert_eq!(report["counts"]["tags_failed"], pushed.len() as u64);
    // The tags in flight (2, and one started while the second refusal was
    // on its way) met the refusal; the rest were not attempted.
    assert!(report["not_attempted"].as_u64().unwrap_or(0) >= pushed.len() as u64 - 3, "{report}");
    assert_eq!(count_lines(&run.stderr, "is read-only"), 1, "{}", run.stderr);
    // The registry was asked to open an upload a handful of times, not once per blob per retry.
    let posts = dst.count("POST", "/blobs/uploads/");
    assert!((2..=4).contains(&posts), "{posts} upload sessions asked for");
    // The human summary says it in one line.
    let text = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &scratch.state(), "--concurrency", "2"], &[]).await;
    assert!(text.stdout.contains("registry problems:") && text.stdout.contains("is read-only (maintenance mode?)"), "{}", text.stdout);
    assert!(text.stdout.contains("remaining tag(s) not attempted"), "{}", text.stdout);
    assert!(count_lines(&text.stdout, "is read-only") <= 1, "the condition is not repeated per tag:\n{}", text.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nearly_used_up_quota_stops_new_work_before_it_runs_out() {
    let (src, dst, s, _d) = registries();
    let pushed = dataset::fill(&s, &plain_images(1, 3)).await;
    let sp = FaultProxy::start(&src.url, Faults::default());
    // Docker Hub's header, on the answer to the first request.
    sp.answer(
        "/v2/",
        Canned { status: 200, headers: vec![("ratelimit-remaining".into(), "5;w=21600".into())], body: "{}".into() },
    );
    let scratch = Scratch::new();
    let run = migrate(&scratch, &sp.url, &dst.url, &[]).await;
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["not_attempted"], pushed.len() as u64, "{report}");
    let condition = report["conditions"][0].as_str().unwrap_or_default();
    assert!(condition.contains("allows only 5 more requests in its 21600s rate-limit window"), "{condition}");
    assert_eq!(count_lines(&run.stderr, "no new work is started"), 1, "{}", run.stderr);
    // Planning read the tags; nothing was pulled.
    assert_eq!(sp.counters.kind("GET blob"), 0);
    assert_eq!(dst.count("PUT", "/manifests/"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bandwidth_limit_is_never_exceeded() {
    let (src, dst, s, d) = registries();
    let spec = Spec { base_layers: 1, base_layer_size: 256 * 1024, ..plain_images(1, 2) };
    let pushed = dataset::fill(&s, &spec).await;
    let bytes = dataset::distinct_blob_bytes(&pushed);
    let scratch = Scratch::new();
    let started = Instant::now();
    migrate(&scratch, &src.url, &dst.url, &["--from-bandwidth", "128KiB"]).await.assert_ok();
    let elapsed = started.elapsed();
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;
    // A lower bound: the bytes cannot have crossed faster than the limit.
    let least = Duration::from_secs_f64(bytes as f64 / (128.0 * 1024.0));
    assert!(elapsed >= least, "{bytes} bytes in {elapsed:?} at 128KiB/s (at least {least:?})");
    // The destination's limit applies to the same bytes.
    let scratch = Scratch::new();
    let started = Instant::now();
    migrate(&scratch, &src.url, &format!("{}/to", dst.url), &["--to-bandwidth", "256KiB"]).await.assert_ok();
    let least = Duration::from_secs_f64(bytes as f64 / (256.0 * 1024.0));
    assert!(started.elapsed() >= least, "{bytes} bytes in {:?} at 256KiB/s", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_rate_limit_is_never_exceeded() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &plain_images(2, 2)).await;
    let sp = FaultProxy::start(&src.url, Faults::default());
    let scratch = Scratch::new();
    migrate(&scratch, &sp.url, &dst.url, &["--from-rps", "5", "--concurrency", "8"]).await.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;
    let seen = sp.counters.seen();
    assert!(seen.len() >= 10, "only {} requests", seen.len());
    // No two-second window holds more than 10 requests (+2 for the edges
    // and for requests a busy machine let out late and close together).
    let arrivals: Vec<Duration> = seen.iter().map(|s| s.at - seen[0].at).collect();
    for (i, first) in arrivals.iter().enumerate() {
        let within = arrivals[i..].iter().filter(|&&a| a < *first + Duration::from_secs(2)).count();
        assert!(within <= 12, "{within} requests within two seconds of request {i}: {arrivals:?}");
    }
    let span = seen.last().map(|l| l.at - seen[0].at).unwrap_or_default();
    let least = Duration::from_secs_f64((seen.len() - 1) as f64 / 5.0 * 0.9);
    assert!(span >= least, "{} requests in {span:?}", seen.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_that_stays_throttled_costs_one_request_budget_not_one_per_level() {
    let (src, dst, s, _d) = registries();
    let pushed = dataset::fill(&s, &plain_images(1, 1)).await;
    // One layer of the only tag is answered 429 for good.
    let digest = pushed[0].manifest.blobs.last().expect("a layer").digest.clone();
    let sp = FaultProxy::start(
        &src.url,
        Faults { too_many_requests: 1.0, retry_after_secs: 1, only: vec!["GET ".into(), format!("/blobs/{digest}")], ..Faults::default() },
    );
    let scratch = Scratch::new();
    let run = migrate(&scratch, &sp.url, &dst.url, &[]).await;
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    // The request's own budget (1 + 4 retries), not × 3 blob attempts × 3 tag attempts.
    let asked = sp.counters.injected("too_many_requests");
    assert_eq!(asked, 5, "the throttled blob was asked for {asked} times");
    let error = run.json()["failures"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("HTTP 429") && error.contains("gave up after 5 attempts"), "{error}");
}
