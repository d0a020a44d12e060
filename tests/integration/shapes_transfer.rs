//! Transfers on real links: a slow link longer than the stall timeout, a
//! real stall, a front with a body limit (chunked uploads after `413`),
//! chunks by setting, a source body cut mid-way (resumed with `Range`), and
//! a chunk lost mid-upload (resumed from the offset the registry reports).
//! Real registries, the fault proxy and nginx, all on 127.0.0.1.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use testkit::image::{self, Flavor};
use testkit::proxy::Seen;
use testkit::{FaultProxy, Faults, Front, Nginx, Registry};

use crate::support::{Scratch, assert_blobs_intact, assert_mirrored, migrate, registries, regferry, wait_until};

const MIB: u64 = 1 << 20;

/// Push `repo:v1`, one image whose layers are random blobs of `sizes`;
/// returns the layer digests.
async fn big_image(reg: &Registry, repo: &str, seed: &str, sizes: &[u64]) -> Vec<String> {
    let mut layers = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        layers.push((reg.push_random_blob(repo, &format!("{seed}-{i}"), size).await, size));
    }
    let img = image::image_with_external_layers(Flavor::Oci, seed, &layers);
    reg.push(repo, "v1", &img).await;
    layers.into_iter().map(|(d, _)| d).collect()
}

/// Requests the proxy saw with `method` whose target contains `part`.
fn requests<'a>(seen: &'a [Seen], method: &str, part: &str) -> Vec<&'a Seen> {
    seen.iter().filter(|s| s.method == method && s.target.contains(part)).collect()
}

/// The `?digest=` form of a digest in an upload URL.
fn digest_param(digest: &str) -> String {
    format!("digest={}", digest.replace(':', "%3A"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_slower_than_the_stall_timeout_arrives_on_the_first_attempt() {
    const SIZE: u64 = 4 * MIB;
    let (src, dst, s, d) = registries();
    let layer = big_image(&s, "slow/app", "slow-link", &[SIZE]).await.remove(0);
    // The destination link is the narrow one: the upload outlasts the
    // stall timeout four times over, the download is quicker.
    let sp = FaultProxy::start(&src.url, Faults { bandwidth: 2 * MIB, ..Faults::default() });
    let dp = FaultProxy::start(&dst.url, Faults { bandwidth: MIB, ..Faults::default() });
    let scratch = Scratch::new();
    let started = Instant::now();
    let run = migrate(&scratch, &sp.url, &dp.url, &["--stall-timeout", "1s"]).await;
    let took = started.elapsed();
    run.assert_ok();
    assert!(took >= Duration::from_secs(3), "the premise: the copy outlasts the stall timeout ({took:?})");
    assert_mirrored(&s, &d, &["slow/app".to_string()], "").await;

    // First attempt: one download, one upload, no resume, no retry.
    let src_seen = sp.counters.seen();
    let dst_seen = dp.counters.seen();
    assert_eq!(requests(&src_seen, "GET", &layer).len(), 1, "{src_seen:#?}");
    assert_eq!(requests(&dst_seen, "PUT", &digest_param(&layer)).len(), 1, "{dst_seen:#?}");
    assert_eq!(requests(&dst_seen, "PATCH", "/blobs/uploads/").len(), 0, "a monolithic upload, not chunks");
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);

    // In chunks that each take longer than the stall timeout: the source
    // body waits unread meanwhile, which is no stall either.
    let sp = FaultProxy::start(&src.url, Faults { bandwidth: 2 * MIB, ..Faults::default() });
    let run = migrate(&Scratch::new(), &sp.url, &format!("{}/chunks", dp.url), &["--stall-timeout", "1s", "--to-chunk-size", "2MiB"]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &["slow/app".to_string()], "chunks").await;
    assert_eq!(requests(&sp.counters.seen(), "GET", &layer).len(), 1, "no resumed download: {}", run.stderr);
    assert_eq!(requests(&dp.counters.seen(), "PATCH", "/v2/chunks/slow/app/blobs/uploads/").len(), 3, "two chunks for the layer, one for the config");
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_stall_still_fails_after_the_stall_timeout_and_is_retried() {
    let (src, dst, s, d) = registries();
    let layer = big_image(&s, "stuck/app", "stall", &[3 * MIB]).await.remove(0);
    // The destination takes the first upload of the layer and then
    // nothing: no byte read, no answer.
    let dp = FaultProxy::start(
        &dst.url,
        Faults { hold: 1.0, limit: 1, only: vec!["PUT ".into(), digest_param(&layer)], ..Faults::default() },
    );
    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dp.url, &["--stall-timeout", "1s", "--commit-timeout", "2s"]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &["stuck/app".to_string()], "").await;
    let seen = dp.counters.seen();
    let puts = requests(&seen, "PUT", &digest_param(&layer));
    assert_eq!(puts.len(), 2, "the stalled upload was given up and retried once: {puts:#?}");
    assert_eq!(puts[0].fault, Some("hold"));
    let gave_up_after = puts[1].at - puts[0].at;
    assert!(gave_up_after >= Duration::from_secs(1), "given up before the stall timeout: {gave_up_after:?}");
    assert!(gave_up_after < Duration::from_secs(10), "given up only after {gave_up_after:?}");
    assert!(run.stderr.contains("stall timeout") || run.stderr.contains("commit timeout"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_front_with_a_body_limit_gets_chunks_after_one_413() {
    let (src, dst, s, d) = registries();
    let layers = big_image(&s, "limited/app", "body-limit", &[3 * MIB, 3 * MIB]).await;
    let front = Nginx::start(&dst.url, Front { max_body: Some("1m".into()), ..Front::default() });
    let scratch = Scratch::new();
    // One blob stream at a time: the second layer starts after the first
    // taught regferry about the limit.
    let run = migrate(&scratch, &src.url, &front.url, &["--concurrency", "1"]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &["limited/app".to_string()], "").await;
    assert!(assert_blobs_intact(&dst.storage()) >= 3);

    let lines = front.access_lines();
    // One monolithic PUT refused, for whichever blob came first; then
    // chunks (split until they pass the limit) and a closing PUT per layer.
    assert_eq!(front.count("PUT", "digest=", Some(413)), 1, "{lines:#?}");
    for layer in &layers {
        assert_eq!(front.count("PUT", &digest_param(layer), Some(201)), 1, "{lines:#?}");
    }
    let refused_patches = front.count("PATCH", "/blobs/uploads/", Some(413));
    assert!((1..=4).contains(&refused_patches), "chunks are split until they pass: {lines:#?}");
    assert!(front.count("PATCH", "/blobs/uploads/", Some(202)) >= 2 * 4, "{lines:#?}");
    // The second layer went chunked straight away: no further 413 after the
    // first layer was committed.
    let first_ok = lines
        .iter()
        .position(|l| l.starts_with("PUT ") && layers.iter().any(|d| l.contains(&digest_param(d))) && l.contains(" 201 "))
        .expect("a committed layer");
    let later_413 = lines[first_ok..].iter().filter(|l| l.contains(" 413 ")).count();
    assert_eq!(later_413, 0, "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_by_setting_from_the_flag_a_policy_and_the_registrys_minimum() {
    const SIZE: u64 = 5 * MIB / 2;
    let (src, dst, s, d) = registries();
    let layer = big_image(&s, "chunky/app", "chunk-size", &[SIZE]).await.remove(0);
    let dp = FaultProxy::start(&dst.url, Faults::default());
    let scratch = Scratch::new();
    migrate(&scratch, &src.url, &format!("{}/flag", dp.url), &["--to-chunk-size", "1MiB"]).await.assert_ok();
    assert_mirrored(&s, &d, &["chunky/app".to_string()], "flag").await;
    let seen = dp.counters.seen();
    let patches = requests(&seen, "PATCH", "/v2/flag/chunky/app/blobs/uploads/");
    // 1 MiB + 1 MiB + ½ MiB for the layer, one for the small config blob.
    assert_eq!(patches.len(), 4, "{seen:#?}");
    assert_eq!(requests(&seen, "PUT", &digest_param(&layer)).len(), 1, "one closing PUT");

    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: chunky\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: policy\n    chunk_size: 1MiB\n\
             stall_timeout: 30s\ncommit_timeout: 2m\n",
            src.url, dp.url
        ),
    );
    // A state database of its own: no mount hints from the first copy.
    let fresh = Scratch::new();
    let run = regferry(&fresh, &["run", "--policies", &policies, "--state", &fresh.state(), "--stall-timeout", "20s"], &[]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &["chunky/app".to_string()], "policy").await;
    let seen = dp.counters.seen();
    assert_eq!(requests(&seen, "PATCH", "/v2/policy/chunky/app/blobs/uploads/").len(), 4, "{seen:#?}");

    // A registry that wants bigger chunks says so (OCI-Chunk-Min-Length):
    // 2 MiB chunks although 1 MiB was asked for.
    let front = Nginx::start(&dst.url, Front { extra: "add_header OCI-Chunk-Min-Length 2097152 always;\n".into(), ..Front::default() });
    migrate(&Scratch::new(), &src.url, &format!("{}/min", front.url), &["--to-chunk-size", "1MiB"]).await.assert_ok();
    assert_mirrored(&s, &d, &["chunky/app".to_string()], "min").await;
    // 2 MiB + ½ MiB for the layer, one for the config blob.
    assert_eq!(front.count("PATCH", "/v2/min/chunky/app/blobs/uploads/", Some(202)), 3, "{:#?}", front.access_lines());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_body_cut_mid_way_is_resumed_with_range_and_still_verified() {
    const SIZE: u64 = 4 * MIB;
    let (src, dst, s, d) = registries();
    let layer = big_image(&s, "cut/app", "truncate", &[SIZE]).await.remove(0);
    let sp = FaultProxy::start(
        &src.url,
        Faults { truncate: 1.0, limit: 1, only: vec!["GET ".into(), layer.clone()], ..Faults::default() },
    );
    let scratch = Scratch::new();
    let run = migrate(&scratch, &sp.url, &dst.url, &["--to-chunk-size", "1MiB"]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &["cut/app".to_string()], "").await;
    assert!(assert_blobs_intact(&dst.storage()) >= 2);
    let seen = sp.counters.seen();
    let gets = requests(&seen, "GET", &layer);
    assert_eq!(gets.len(), 2, "cut once, continued once: {gets:#?}");
    assert_eq!(gets[0].fault, Some("truncate"));
    let down = sp.counters.bytes_down.load(Ordering::Relaxed);
    assert!(down < SIZE + SIZE / 2 + MIB, "the rest was fetched, not the whole blob again: {down} bytes");

    // Cut again, and the continuation corrupted: the digest check over the
    // whole stream catches it, nothing wrong is committed, a fresh attempt
    // succeeds.
    let sp = FaultProxy::start(
        &src.url,
        Faults { truncate: 1.0, corrupt: 1.0, limit: 1, only: vec!["GET ".into(), layer.clone()], ..Faults::default() },
    );
    for (chunked, prefix) in [(false, "whole"), (true, "chunks")] {
        sp.set_faults(Faults { truncate: 1.0, corrupt: 1.0, limit: 1, only: vec!["GET ".into(), layer.clone()], ..Faults::default() });
        sp.counters.injected.lock().unwrap().clear();
        let extra: &[&str] = if chunked { &["--to-chunk-size", "1MiB"] } else { &[] };
        // A state database of its own: no mount hints from the copy before.
        let run = migrate(&Scratch::new(), &sp.url, &format!("{}/{prefix}", dst.url), extra).await;
        run.assert_ok();
        assert_eq!(sp.counters.injected("truncate"), 1, "{prefix}");
        assert_eq!(sp.counters.injected("corrupt"), 1, "{prefix}");
        assert!(run.stderr.contains("digest mismatch"), "{prefix}: {}", run.stderr);
        assert_mirrored(&s, &d, &["cut/app".to_string()], prefix).await;
        assert!(assert_blobs_intact(&dst.storage()) >= 2);
    }

    // A source front that ignores Range (answers 200 with the whole blob):
    // the stream starts again from byte 0 and the bytes already passed on
    // are dropped, without a new upload.
    let front = Nginx::start(&src.url, Front { extra: "proxy_set_header Range \"\";\n    max_ranges 0;\n".into(), ..Front::default() });
    let sp = FaultProxy::start(&front.url, Faults { truncate: 1.0, limit: 1, only: vec!["GET ".into(), layer.clone()], ..Faults::default() });
    let run = migrate(&Scratch::new(), &sp.url, &format!("{}/no-range", dst.url), &[]).await;
    run.assert_ok();
    assert!(run.stderr.contains("ignores Range"), "{}", run.stderr);
    assert_mirrored(&s, &d, &["cut/app".to_string()], "no-range").await;
    assert!(assert_blobs_intact(&dst.storage()) >= 2);
    let seen = sp.counters.seen();
    assert_eq!(requests(&seen, "GET", &layer).len(), 2, "cut once, read again once: {seen:#?}");
    assert_eq!(front.count("GET", &layer, Some(200)), 2, "{:#?}", front.access_lines());
    assert!(sp.counters.bytes_down.load(Ordering::Relaxed) > SIZE, "the whole blob came again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_lost_mid_upload_resumes_from_the_offset_the_registry_reports() {
    const SIZE: u64 = 4 * MIB;
    let (src, dst, s, d) = registries();
    let layer = big_image(&s, "lost/app", "lost-chunk", &[SIZE]).await.remove(0);
    // Slow enough to step in after the second chunk.
    let dp = FaultProxy::start(&dst.url, Faults { bandwidth: 4 * MIB, ..Faults::default() });
    let scratch = Scratch::new();
    let args = crate::support::migrate_args(&scratch, &src.url, &dp.url, &["--to-chunk-size", "1MiB"]);
    let child = crate::support::command(&scratch, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).output();
    let counters = dp.counters.clone();
    let (out, ()) = tokio::join!(child, async {
        wait_until(Duration::from_secs(30), "two chunks", async || counters.kind("PATCH upload") >= 2).await;
        // The next chunk is answered "upload unknown" although the
        // registry still holds the session; the one after it is reset.
        dp.set_faults(Faults {
            bandwidth: 4 * MIB,
            upload_unknown: 1.0,
            reset: 1.0,
            limit: 1,
            only: vec!["PATCH ".into()],
            ..Faults::default()
        });
    });
    let out = out.expect("run regferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_mirrored(&s, &d, &["lost/app".to_string()], "").await;
    assert!(assert_blobs_intact(&dst.storage()) >= 2);

    let seen = dp.counters.seen();
    let faulted: Vec<&Seen> = seen.iter().filter(|r| r.fault.is_some()).collect();
    assert_eq!(faulted.len(), 2, "{seen:#?}");
    for f in &faulted {
        // Asked where the session stands, then went on from there.
        let i = seen.iter().position(|r| r.at == f.at && r.target == f.target).unwrap_or(0);
        let next = seen[i + 1..].iter().find(|r| r.target.contains("/blobs/uploads/")).expect("a request after the fault");
        assert_eq!(next.method, "GET", "{seen:#?}");
    }
    // One session for the layer (no new POST after the faults), and the
    // registry got each byte of the layer once.
    assert_eq!(requests(&seen, "POST", "/blobs/uploads/").len(), 2, "the layer and the config: {seen:#?}");
    let up = dp.counters.bytes_up.load(Ordering::Relaxed);
    assert!(up < SIZE + MIB, "resumed, not restarted: {up} bytes went up");
    assert_eq!(requests(&seen, "PUT", &digest_param(&layer)).len(), 1);
}
