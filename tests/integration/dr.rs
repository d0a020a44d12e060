//! DR failover sync against real registries: `verify` (tag parity and deep
//! pullability), push events from a registry's `notifications`, mirrored
//! deletions, and a failover / failback round trip.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::image::{self, Flavor};
use testkit::{Access, Options, Registry, TestRegistry, free_port};

use crate::policies::{push_tags, write};
use crate::support::{Scratch, assert_mirrored, daemon_command, migrate, policy_verb, regferry, stop_daemon};

/// Remove a blob's data behind the registry's back.
fn remove_blob(reg: &TestRegistry, digest: &str) {
    let hex = digest.trim_start_matches("sha256:");
    let data = reg.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}", &hex[..2]));
    std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("remove {}: {e}", data.display()));
}

fn problems(v: &Value) -> Vec<Value> {
    v["results"][0]["report"]["problems"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_digest_differences_and_deep_finds_missing_blobs() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let amd = image::image(Flavor::Docker, "amd", vec![image::layer(Flavor::Docker, "amd-layer", 700)]);
    let arm = image::image(Flavor::Docker, "arm", vec![image::layer(Flavor::Docker, "arm-layer", 700)]);
    let multi = image::index(Flavor::Docker, vec![(amd.clone(), "amd64"), (arm, "arm64")]);
    s.push("team/app", "v1", &multi).await;
    push_tags(&s, "team/app", &["v2"], "app").await;
    push_tags(&s, "team/lib", &["1.0"], "lib").await;
    let scratch = Scratch::new();
    migrate(&scratch, &src.url, &format!("{}/mirror", dst.url), &[]).await.assert_ok();

    let to = format!("{}/mirror", dst.url);
    let verify = |extra: &'static [&'static str]| {
        let (scratch, from, to) = (&scratch, src.url.clone(), to.clone());
        async move {
            let mut args = vec!["verify", "--from", from.as_str(), "--to", to.as_str()];
            args.extend_from_slice(extra);
            regferry(scratch, &args, &[]).await
        }
    };

    // A faithful copy: identical and pullable.
    let run = verify(&["--deep", "--json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = &run.json()["results"][0]["report"];
    assert_eq!((report["repositories"].as_u64(), report["tags"].as_u64(), report["identical"].as_u64()), (Some(2), Some(3), Some(3)), "{report}");
    // 3 index/image manifests for v1 + 1 each for v2 and lib; blobs: config + layer of each image.
    assert_eq!(report["manifests_checked"].as_u64(), Some(5), "{report}");
    assert_eq!(report["blobs_checked"].as_u64(), Some(8), "{report}");

    // The field notes' failure: tag lists agree, pulls fail. Only --deep sees it.
    let layer = amd.blobs.last().expect("a layer (config comes first)").digest.clone();
    remove_blob(&dst, &layer);
    let run = verify(&[]).await;
    assert_eq!(run.code, 0, "tag-level parity still holds\n{}\n{}", run.stdout, run.stderr);
    let run = verify(&["--deep"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let line = run.stdout.lines().find(|l| l.trim_start().starts_with("not pullable")).unwrap_or_default();
    assert!(line.contains("mirror/team/app:v1") && line.contains(&format!("missing blob {layer}")), "{}", run.stdout);
    assert!(run.stdout.contains("1 not pullable"), "{}", run.stdout);
    assert!(!run.stdout.contains("mirror/team/lib:1.0"), "only the broken tag is named:\n{}", run.stdout);

    // Retag one tag at the destination and add a tag of its own.
    let theirs = image::image(Flavor::Oci, "theirs", vec![image::layer(Flavor::Oci, "theirs", 300)]);
    d.push("mirror/team/app", "v2", &theirs).await;
    d.push("mirror/team/lib", "extra", &theirs).await;
    let run = verify(&["--json"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let out = run.json();
    assert_eq!(out["ok"], false);
    let p = problems(&out);
    let differs = p.iter().find(|p| p["kind"] == "digest_differs").unwrap_or_else(|| panic!("no digest difference in {p:?}"));
    assert_eq!(differs["destination_repository"], "mirror/team/app");
    assert_eq!(differs["tag"], "v2");
    assert_eq!(differs["destination_digest"].as_str(), Some(theirs.digest.as_str()));
    assert_eq!(differs["source_digest"].as_str(), s.head("team/app", "v2").await.map(|h| h.0).as_deref());
    let only = p.iter().find(|p| p["kind"] == "only_at_destination").unwrap_or_else(|| panic!("no destination-only tag in {p:?}"));
    assert_eq!((only["destination_repository"].as_str(), only["tag"].as_str()), (Some("mirror/team/lib"), Some("extra")));
    assert_eq!(p.len(), 2, "{p:?}");

    // A missing tag, and --repo narrowing the scope.
    push_tags(&s, "team/lib", &["2.0"], "lib").await;
    let run = verify(&["--repo", "team/lib"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.lines().any(|l| l.trim_start().starts_with("missing") && l.contains("mirror/team/lib:2.0")), "{}", run.stdout);
    assert!(!run.stdout.contains("team/app"), "--repo limits the scope:\n{}", run.stdout);

    // Bad input is exit 2.
    assert_eq!(regferry(&scratch, &["verify", "--from", &src.url], &[]).await.code, 2);
    assert_eq!(regferry(&scratch, &["verify", "--from", &format!("{}/UPPER", src.url), "--to", &to], &[]).await.code, 2);
    assert_eq!(regferry(&scratch, &["verify", "--from", &src.url, "--to", &to, "--repo", "a/[b"], &[]).await.code, 2);
}

/// POST `body` to the daemon with an optional Authorization header.
async fn post(port: u16, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new().post(format!("http://127.0.0.1:{port}{path}")).body(body.to_string());
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.expect("POST to the daemon");
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

async fn wait_for_tag(reg: &Registry, repo: &str, tag: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if reg.head(repo, tag).await.is_some() {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{repo}:{tag} did not arrive within {within:?}");
}

fn start_daemon(scratch: &Scratch, policies: &str, port: u16, env: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = daemon_command(scratch, policies, port);
    cmd.env("RUST_LOG", "regferry=debug").envs(env.iter().copied());
    cmd.spawn().expect("start daemon")
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_push_events_replicate_within_seconds() {
    let port = free_port();
    let token = "Bearer regferry-events-secret";
    let src = TestRegistry::start_with(Options {
        notify_url: Some(format!("http://127.0.0.1:{port}/events/distribution")),
        notify_headers: vec![("Authorization".into(), token.into())],
        ..Options::default()
    });
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    push_tags(&s, "app/web", &["v1"], "web").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: live\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: m\n\
             repositories: {{ include: ['app/**'] }}\ntrigger: {{ interval: 1h }}\n",
            src.url, dst.url
        ),
    );
    let daemon = start_daemon(&scratch, &policies, port, &[("REGFERRY_EVENTS_TOKEN", token)]);
    wait_for_tag(&d, "m/app/web", "v1", Duration::from_secs(30)).await;

    // Out of scope: pushed, notified, never replicated.
    push_tags(&s, "other/x", &["v1"], "other").await;
    // In scope: with an hourly interval only the event can bring it over.
    push_tags(&s, "app/web", &["v2"], "web").await;
    let took = wait_for_tag(&d, "m/app/web", "v2", Duration::from_secs(15)).await;
    assert!(took < Duration::from_secs(10), "the push took {took:?} to arrive");
    assert_eq!(d.head("m/app/web", "v2").await, s.head("app/web", "v2").await);
    assert!(d.head("m/other/x", "v1").await.is_none(), "an event outside every policy's scope must not be replicated");

    // The shared secret: missing or wrong → 401.
    let envelope = r#"{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"app/web","tag":"v2"},"request":{"host":"x"}}]}"#;
    assert_eq!(post(port, "/events/distribution", None, envelope).await.0, 401);
    assert_eq!(post(port, "/events/distribution", Some("Bearer wrong"), envelope).await.0, 401);
    assert_eq!(post(port, "/events/harbor", None, "{}").await.0, 401);
    // Harbor payloads are matched by registry host and repository.
    let harbor = |host: &str, repo: &str| {
        format!(
            r#"{{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"admin","event_data":{{"resources":[{{"digest":"sha256:00","tag":"v2","resource_url":"{host}/{repo}:v2"}}],"repository":{{"name":"web","namespace":"app","repo_full_name":"{repo}","repo_type":"private"}}}}}}"#
        )
    };
    let (code, body) = post(port, "/events/harbor", Some(token), &harbor(&src.host(), "app/web")).await;
    assert_eq!((code, body.contains("\"live\"")), (202, true), "{body}");
    let (code, body) = post(port, "/events/harbor", Some(token), &harbor(&src.host(), "other/x")).await;
    assert_eq!((code, body.contains("\"policies\":[]")), (202, true), "{body}");
    let (code, body) = post(port, "/events/harbor", Some(token), &harbor("elsewhere.example:5000", "app/web")).await;
    assert_eq!((code, body.contains("\"policies\":[]")), (202, true), "{body}");
    assert_eq!(post(port, "/events/distribution", Some(token), "not json").await.0, 400);

    let log = stop_daemon(daemon, &scratch.path("daemon.log")).await;
    assert!(log.contains("pass for pushed repositories"), "{log}");
    assert!(!log.contains(token.trim_start_matches("Bearer ")), "the token must never be logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_true_mirrors_deletions_only_for_covered_tags() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    push_tags(&s, "team/app", &["v1", "v2", "v3"], "app").await;
    let scratch = Scratch::new();
    let policy = |delete: bool| {
        format!(
            "name: del\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntags: {{ include: ['v.*'] }}\ndelete: {delete}\n",
            src.url, dst.url
        )
    };
    let policies = write(&scratch, "policies", "p.yaml", &policy(false));
    let state = scratch.state();
    let args = ["run", "--policies", policies.as_str(), "--state", state.as_str(), "--json"];
    regferry(&scratch, &args, &[]).await.assert_ok();
    // At the destination only: a tag outside the filters, and one sharing v1's digest.
    push_tags(&d, "team/app", &["keep-me"], "theirs").await;
    let (bytes, media_type) = s.get_manifest("team/app", "v1").await.expect("v1");
    let v1 = image::raw(&media_type, bytes);
    d.put_manifest("team/app", "v9", &media_type, &v1.bytes).await;

    let v2 = s.head("team/app", "v2").await.expect("v2").0;
    s.delete_manifest("team/app", &v2).await;
    // Off by default: nothing is deleted.
    regferry(&scratch, &args, &[]).await.assert_ok();
    assert!(d.head("team/app", "v2").await.is_some(), "delete: false must never delete");

    write(&scratch, "policies", "p.yaml", &policy(true));
    let run = regferry(&scratch, &args, &[]).await;
    run.assert_ok();
    let deleted = &run.json()[0]["destinations"][0]["deleted"];
    assert_eq!(deleted, &serde_json::json!(["team/app:v2"]), "{}", run.stdout);
    let mut tags = d.tags("team/app").await;
    tags.sort();
    assert_eq!(tags, ["keep-me", "v1", "v3", "v9"], "v9 shares v1's digest, keep-me is not covered");
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_and_failback_round_trip() {
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    let p = Registry::new(&primary.url, Access::Anonymous);
    let d = Registry::new(&dr.url, Access::Anonymous);
    push_tags(&p, "team/app", &["v1"], "app").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\ntrigger: {{ interval: 1h }}\n", primary.url, dr.url),
    );
    let state = scratch.state();
    let cmd = |verb: &'static str, extra: &'static [&'static str]| policy_verb(&scratch, &policies, &state, "dr", verb, extra);
    cmd("run", &[]).await.assert_ok();
    assert!(d.head("mirror/team/app", "v1").await.is_some());

    // A change the DR site has not seen yet: the failover catches it up first.
    push_tags(&p, "team/app", &["v2"], "app").await;
    let dry = cmd("failover", &["--dry-run"]).await;
    dry.assert_ok();
    assert!(dry.stdout.contains("would copy 1 tag(s)"), "{}", dry.stdout);
    assert!(d.head("mirror/team/app", "v2").await.is_none(), "a dry run changes nothing");
    let fo = cmd("failover", &[]).await;
    fo.assert_ok();
    assert!(fo.stdout.contains("done"), "{}", fo.stdout);
    assert_eq!(d.head("mirror/team/app", "v2").await, p.head("team/app", "v2").await, "catch-up pass before the switch");

    // Work continues on DR; `run` now replicates DR → primary, names mapped back.
    push_tags(&d, "mirror/team/app", &["v3"], "dr").await;
    let run = cmd("run", &["--json"]).await;
    run.assert_ok();
    assert_eq!(run.json()[0]["destinations"][0]["reversed"], true, "{}", run.stdout);
    assert_eq!(p.head("team/app", "v3").await, d.head("mirror/team/app", "v3").await);
    let list = regferry(&scratch, &["jobs", "list", "--policy", "dr", "--state", &state, "--json"], &[]).await;
    list.assert_ok();
    assert_eq!(list.json()[0]["direction"], "reversed", "{}", list.stdout);
    let verify = cmd("verify", &["--json"]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    let v = verify.json();
    assert_eq!(v["results"][0]["reversed"], true);
    assert_eq!(v["lag"][0]["direction"], "reversed");
    assert_eq!(v["lag"][0]["lag_seconds"].as_f64(), Some(0.0), "{v}");

    // Failing over twice is harmless.
    let again = cmd("failover", &[]).await;
    again.assert_ok();
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);

    // Failback syncs DR's last change to the primary, then restores the direction.
    push_tags(&d, "mirror/team/app", &["v4"], "dr").await;
    let fb = cmd("failback", &[]).await;
    fb.assert_ok();
    assert_eq!(p.head("team/app", "v4").await, d.head("mirror/team/app", "v4").await);
    let run = cmd("run", &["--json"]).await;
    run.assert_ok();
    assert_eq!(run.json()[0]["destinations"][0]["reversed"], false, "{}", run.stdout);
    let verify = cmd("verify", &["--deep"]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("4 identical"), "{}", verify.stdout);
    assert_eq!(assert_mirrored(&p, &d, &["team/app".to_string()], "mirror").await, 4);
}
