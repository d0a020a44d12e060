//! Riding through faults: fault-injecting proxies in front of real
//! registries, on both sides, and every tag still ends identical — or fails
//! with a reason, never half-copied.

use std::time::Duration;

use testkit::dataset::{self, Spec};
use testkit::image::{self, Flavor};
use testkit::proxy::Seen;
use testkit::{FaultProxy, Faults};

use crate::support::{Scratch, assert_blobs_intact, assert_mirrored, migrate, plain_images, registries, repos_of};

/// The first request after `seen[i]` with the same key (the retry of it).
fn retry_of(seen: &[Seen], i: usize) -> Option<&Seen> {
    seen[i + 1..].iter().find(|s| s.key == seen[i].key)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migrate_through_faulty_proxies_on_both_sides_ends_identical() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &Spec { repos: 4, tags_per_repo: 3, ..Spec::default() }).await;
    let repos = repos_of(&pushed);
    // A few percent of every fault, on both sides.
    let sp = FaultProxy::start(
        &src.url,
        Faults {
            seed: 7,
            server_error: 0.04,
            too_many_requests: 0.03,
            reset: 0.04,
            truncate: 0.06,
            corrupt: 0.06,
            stall: 0.04,
            manifest_unknown: 0.2,
            ..Faults::default()
        },
    );
    let dp = FaultProxy::start(
        &dst.url,
        Faults {
            seed: 11,
            server_error: 0.04,
            too_many_requests: 0.03,
            reset: 0.04,
            upload_unknown: 0.08,
            refuse_mount: 0.3,
            refuse_chunked: 1.0,
            manifest_unknown: 0.05,
            ..Faults::default()
        },
    );
    let scratch = Scratch::new();
    // One tag at a time: which repository uploads a shared layer first (and so
    // which requests exist to be faulted) is then the same on every run.
    let run = migrate(&scratch, &sp.url, &format!("{}/mirror", dp.url), &["--stall-timeout", "2s", "--concurrency", "4"]).await;
    let src_faults = sp.counters.injected_map();
    let dst_faults = dp.counters.injected_map();
    eprintln!("source faults {src_faults:?} in {} requests; destination faults {dst_faults:?} in {} requests",
        sp.counters.requests.load(std::sync::atomic::Ordering::Relaxed),
        dp.counters.requests.load(std::sync::atomic::Ordering::Relaxed));
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], pushed.len() as u64);
    assert_eq!(assert_mirrored(&s, &d, &repos, "mirror").await, pushed.len());
    assert!(assert_blobs_intact(&dst.storage()) > 0);

    // The faults really happened, every kind of them.
    for kind in ["server_error", "too_many_requests", "reset", "truncate", "corrupt", "stall", "manifest_unknown"] {
        assert!(src_faults.get(kind).copied().unwrap_or(0) > 0, "no {kind} injected at the source: {src_faults:?}");
    }
    for kind in ["server_error", "too_many_requests", "reset", "upload_unknown", "refuse_mount"] {
        assert!(dst_faults.get(kind).copied().unwrap_or(0) > 0, "no {kind} injected at the destination: {dst_faults:?}");
    }
    assert!(sp.counters.total_injected() + dp.counters.total_injected() >= 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_requests_waits_as_long_as_retry_after_says() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &plain_images(1, 2)).await;
    let repos = repos_of(&pushed);
    let scratch = Scratch::new();
    // Streamed blob uploads, replayable manifest pushes and HEADs (which
    // have no body to explain themselves) each get two 429s with
    // `Retry-After: 2`.
    for (prefix, only) in [("blobs", vec!["PUT ", "/blobs/uploads/"]), ("manifests", vec!["PUT ", "/manifests/"]), ("heads", vec!["HEAD ", "/mirror-heads/"])] {
        let proxy = FaultProxy::start(
            &dst.url,
            Faults {
                too_many_requests: 1.0,
                retry_after_secs: 2,
                limit: 2,
                only: only.into_iter().map(String::from).collect(),
                ..Faults::default()
            },
        );
        let to_prefix = format!("mirror-{prefix}");
        if prefix == "heads" {
            // A first copy asks a repository it creates nothing; the HEADs
            // come when the destination already holds the tags.
            migrate(&scratch, &src.url, &format!("{}/{to_prefix}", dst.url), &[]).await.assert_ok();
        }
        migrate(&scratch, &src.url, &format!("{}/{to_prefix}", proxy.url), &[]).await.assert_ok();
        assert_mirrored(&s, &d, &repos, &to_prefix).await;
        let seen = proxy.counters.seen();
        let throttled: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].fault == Some("too_many_requests")).collect();
        assert_eq!(throttled.len(), 2, "{prefix}: two 429s expected");
        for i in throttled {
            let retry = retry_of(&seen, i).unwrap_or_else(|| panic!("{prefix}: {} was never retried", seen[i].key));
            let waited = retry.at - seen[i].at;
            assert!(waited >= Duration::from_millis(1900), "{prefix}: {} retried after {waited:?}, before Retry-After", seen[i].key);
            assert!(waited < Duration::from_secs(15), "{prefix}: {} retried only after {waited:?}", seen[i].key);
            // A throttled HEAD is not re-sent as a GET just to read a body.
            let path = seen[i].target.split('?').next().unwrap_or_default();
            let between = seen.iter().filter(|s| s.at > seen[i].at && s.at < retry.at && s.target.starts_with(path) && s.method == "GET").count();
            assert_eq!(between, 0, "{prefix}: {} was re-sent as GET while throttled", seen[i].key);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_upload_session_is_replaced_by_a_new_one() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &plain_images(2, 2)).await;
    // The first three upload writes find their session gone (S3-backed
    // registries: 404 BLOB_UPLOAD_UNKNOWN right after the POST).
    let dp = FaultProxy::start(&dst.url, Faults { upload_unknown: 1.0, limit: 3, ..Faults::default() });
    let scratch = Scratch::new();
    migrate(&scratch, &src.url, &dp.url, &[]).await.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;
    let seen = dp.counters.seen();
    let lost: Vec<&Seen> = seen.iter().filter(|s| s.fault == Some("upload_unknown")).collect();
    assert_eq!(lost.len(), 3);
    for l in lost {
        let session = l.target.split('?').next().unwrap_or_default();
        // The lost session is never written to again (a DELETE to clean up is fine)…
        let reused = seen.iter().filter(|s| s.at > l.at && s.target.starts_with(session) && s.method != "DELETE").count();
        assert_eq!(reused, 0, "the lost session {session} was used again");
        // …a new one is opened and the same blob lands through it.
        let repo_uploads = &session[..session.find("/blobs/uploads/").expect("upload path") + "/blobs/uploads/".len()];
        assert!(seen.iter().any(|s| s.at > l.at && s.method == "POST" && s.target.starts_with(repo_uploads)), "no new session after {session}");
        assert!(seen.iter().any(|s| s.at > l.at && s.key == l.key && s.fault.is_none()), "the blob of {} was not uploaded again", l.key);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_unknown_right_after_listing_is_asked_again_then_reported() {
    let (src, dst, s, d) = registries();
    let img = |name: &str| image::image(Flavor::Oci, name, vec![image::layer(Flavor::Oci, name, 1000)]);
    for repo in ["app/flaky", "app/gone", "app/fine"] {
        s.push(repo, "v1", &img(repo)).await;
    }
    let scratch = Scratch::new();

    // Unknown twice, then there: copied.
    let flaky = FaultProxy::start(
        &src.url,
        Faults { manifest_unknown: 1.0, limit: 2, only: vec!["/v2/app/flaky/manifests/v1".into()], ..Faults::default() },
    );
    let run = migrate(&scratch, &flaky.url, &format!("{}/a", dst.url), &[]).await;
    run.assert_ok();
    assert_eq!(flaky.counters.injected("manifest_unknown"), 2);
    assert_mirrored(&s, &d, &["app/flaky".into(), "app/gone".into(), "app/fine".into()], "a").await;

    // Never there: that tag fails with the reason, the others are copied,
    // and the registry is asked a bounded number of times.
    let gone = FaultProxy::start(
        &src.url,
        Faults { manifest_unknown: 1.0, only: vec!["/v2/app/gone/manifests/v1".into()], ..Faults::default() },
    );
    let run = migrate(&scratch, &gone.url, &format!("{}/b", dst.url), &[]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["counts"]["tags_copied"], 2);
    let failures = report["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["repository"], "app/gone");
    assert_eq!(failures[0]["tag"], "v1");
    let error = failures[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("tag app/gone:v1 was listed but its manifest is unknown at http://127.0.0.1:"), "{error}");
    let asked = gone.counters.injected("manifest_unknown");
    assert!((2..=5).contains(&asked), "asked {asked} times");
    assert!(d.head("b/app/gone", "v1").await.is_none());
    assert_mirrored(&s, &d, &["app/flaky".into(), "app/fine".into()], "b").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_mounts_and_chunked_uploads_fall_back_to_plain_uploads() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &plain_images(3, 2)).await;
    let dp = FaultProxy::start(&dst.url, Faults { refuse_mount: 1.0, refuse_chunked: 1.0, ..Faults::default() });
    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dp.url, &[]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;
    let report = run.json();
    assert!(dp.counters.injected("refuse_mount") > 0, "shared base layers must have been offered for mounting");
    assert_eq!(report["counts"]["blobs_mounted"], 0, "a 202 is not a mount");
    // Every upload session the registry opened (including the 202 answers
    // to refused mounts) was used for an upload: none leaked.
    let posts = dst.lines_by("regferry/").iter().filter(|l| l.contains("\"POST /v2/") && l.contains("/blobs/uploads/") && l.contains("\" 202 ")).count();
    let puts = dst.lines_by("regferry/").iter().filter(|l| l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/") && l.contains("\" 201 ")).count();
    assert_eq!(posts, puts, "upload sessions opened vs completed");
    assert_eq!(report["counts"]["blobs_uploaded"], puts as u64);
    assert_eq!(dp.counters.kind("PATCH upload"), 0, "blobs of known size go in one monolithic PUT");
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_corrupt_and_stalled_blob_bodies_are_never_committed_and_fetched_again() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &plain_images(1, 3)).await;
    // The first two blob downloads are cut short, the next two corrupted
    // (same length, one byte flipped), the next two stall halfway.
    let sp = FaultProxy::start(&src.url, Faults { truncate: 1.0, corrupt: 1.0, stall: 1.0, limit: 2, ..Faults::default() });
    let scratch = Scratch::new();
    let run = migrate(&scratch, &sp.url, &dst.url, &["--stall-timeout", "2s"]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;
    for kind in ["truncate", "corrupt", "stall"] {
        assert_eq!(sp.counters.injected(kind), 2, "{kind}");
    }
    // Each damaged blob was fetched again, and complete.
    let seen = sp.counters.seen();
    for (i, bad) in seen.iter().enumerate().filter(|(_, s)| s.fault.is_some()) {
        assert!(seen[i + 1..].iter().any(|s| s.key == bad.key && s.fault.is_none()), "{} was not fetched again", bad.key);
    }
    // Nothing wrong was ever committed: the destination holds only blobs
    // that match their digest, and it never even received all the bytes
    // of a wrong blob (the last chunk is withheld until the digest checks).
    assert!(assert_blobs_intact(&dst.storage()) > 0);
    let log = dst.log();
    assert!(!log.contains("DIGEST_INVALID") && !log.contains("digest did not match"), "the destination saw a complete wrong blob:\n{log}");
    let uploaded = run.json()["counts"]["bytes_uploaded"].as_u64().unwrap_or(0);
    assert!(uploaded >= dataset::distinct_blob_bytes(&pushed), "bytes streamed count failed attempts too: {uploaded}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_stops_answering_mid_request_is_given_up_on_and_retried() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &plain_images(1, 2)).await;
    // The first blob upload and the first manifest push get no answer, ever.
    // (A small blob's bytes all fit into the socket buffers: the upload then
    // waits for the commit timeout, which is 5 minutes unless told.)
    let scratch = Scratch::new();
    for (prefix, only) in [("blob", "/blobs/uploads/"), ("manifest", "/manifests/")] {
        let dp = FaultProxy::start(&dst.url, Faults { hold: 1.0, limit: 1, only: vec!["PUT ".into(), only.into()], ..Faults::default() });
        let started = std::time::Instant::now();
        let run = migrate(&scratch, &src.url, &format!("{}/{prefix}", dp.url), &["--stall-timeout", "2s", "--commit-timeout", "3s"]).await;
        run.assert_ok();
        assert_eq!(dp.counters.injected("hold"), 1, "{prefix}");
        assert_mirrored(&s, &d, &repos_of(&pushed), prefix).await;
        assert!(started.elapsed() < Duration::from_secs(30), "{prefix}: took {:?}", started.elapsed());
        // Leave the held request held until the proxy goes.
    }
}

