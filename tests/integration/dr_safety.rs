//! DR safety against real registries: the failover fence written into the
//! registries stops a fresh state from replicating over a failed-over site,
//! the deletion guard keeps an emptied or shrunken source from emptying the
//! destination, a failover reports its RPO and refuses a DR site that is not
//! pullable, and a repository glob that matches nothing is a warning.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::image::{self, Flavor};
use testkit::{Access, Registry, TestRegistry, free_port};

use crate::policies::{push_tags, write};
use crate::support::{Run, Scratch, daemon_command, policy_verb, regferry, stop_daemon};

async fn metrics(port: u16) -> Option<String> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?;
    resp.text().await.ok()
}

/// Wait until the daemon's `/metrics` has a line starting with `prefix` whose value is at least 1.
async fn wait_for_metric(port: u16, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(m) = metrics(port).await
            && m.lines().any(|l| l.starts_with(prefix) && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 1.0))
        {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no {prefix} sample of at least 1 within 30 s:\n{}", metrics(port).await.unwrap_or_default());
}

fn remove_state(state: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{state}{suffix}"));
    }
    assert!(!std::path::Path::new(state).exists());
}

fn text(run: &Run) -> String {
    format!("exit {}\n{}\n{}", run.code, run.stdout, run.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failover_fence_stops_a_fresh_state_from_replicating_over_the_dr_site() {
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
        &format!(
            "name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\ndelete: true\ntrigger: {{ interval: 1s }}\n",
            primary.url, dr.url
        ),
    );
    let state = scratch.state();
    let cmd = |verb: &'static str, extra: &'static [&'static str]| policy_verb(&scratch, &policies, &state, "dr", verb, extra);
    cmd("run", &[]).await.assert_ok();
    let fo = cmd("failover", &[]).await;
    assert_eq!(fo.code, 0, "{}", text(&fo));
    assert!(fo.stdout.contains("RPO: 0s"), "{}", fo.stdout);
    assert!(fo.stdout.contains("fence written") && fo.stdout.contains("mirror/regferry-fence:dr (generation 1)"), "{}", fo.stdout);
    let fence = d.get_manifest("mirror/regferry-fence", "dr").await.expect("the fence at DR");
    let fence: Value = serde_json::from_slice(&fence.0).expect("fence JSON");
    assert_eq!(fence["artifactType"], "application/vnd.regferry.fence.v1");
    assert_eq!(fence["annotations"]["io.regferry.fence.direction"], "reversed");
    assert!(p.head("regferry-fence", "dr").await.is_some(), "the reachable old primary is fenced too");

    // Work goes on at DR; the primary comes back stale, with other content under v1.
    push_tags(&d, "mirror/team/app", &["v2"], "dr").await;
    let dr_v1 = d.head("mirror/team/app", "v1").await;
    push_tags(&p, "team/app", &["v1"], "stale").await;
    // The disk holding the state is lost.
    remove_state(&state);

    let run = cmd("run", &["--json"]).await;
    assert_eq!(run.code, 1, "{}", text(&run));
    let err = run.json()[0]["destinations"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("was failed over") && err.contains("regferry failover --policy dr") && err.contains("regferry failback --policy dr"), "{err}");
    assert_eq!(run.json()[0]["destinations"][0]["fenced"], true);
    assert_eq!(d.head("mirror/team/app", "v1").await, dr_v1, "the stale primary must not overwrite DR");
    assert!(d.head("mirror/team/app", "v2").await.is_some(), "delete: true must not delete DR's own tags");

    // A fresh daemon is refused the same way, pass after pass, and says so on /metrics.
    remove_state(&state);
    let port = free_port();
    let daemon = daemon_command(&scratch, &policies, port).spawn().expect("start daemon");
    let m = wait_for_metric(port, "regferry_fenced_passes_total{policy=\"dr\"").await;
    assert!(m.contains("regferry_failed_passes_total{policy=\"dr\""), "{m}");
    stop_daemon(daemon, &scratch.path("daemon.log")).await;
    assert_eq!(d.head("mirror/team/app", "v1").await, dr_v1);
    assert!(d.head("mirror/team/app", "v2").await.is_some());

    // The operator's explicit word: take over the failed-over direction (no sync pass).
    remove_state(&state);
    let fo = cmd("failover", &[]).await;
    assert_eq!(fo.code, 0, "{}", text(&fo));
    assert!(fo.stdout.contains("took that direction over") && fo.stdout.contains("nothing to do"), "{}", fo.stdout);
    assert_eq!(d.head("mirror/team/app", "v1").await, dr_v1);
    let run = cmd("run", &["--json"]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    assert_eq!(run.json()[0]["destinations"][0]["reversed"], true);
    assert_eq!(p.head("team/app", "v1").await, dr_v1, "DR's v1 wins once the direction is taken over");
    assert_eq!(p.head("team/app", "v2").await, d.head("mirror/team/app", "v2").await);
    assert!(!p.catalog().await.iter().any(|r| r.starts_with("mirror/")), "the fence repository is never replicated");

    // A backup of the state taken while reversed, for later.
    let backup = scratch.path("backup.db").to_string_lossy().into_owned();
    copy_state(&state, &backup);

    // Failback rewrites the fence; a forward pass runs again.
    let fb = cmd("failback", &[]).await;
    assert_eq!(fb.code, 0, "{}", text(&fb));
    assert!(fb.stdout.contains("(generation 2)"), "{}", fb.stdout);
    let fence: Value = serde_json::from_slice(&d.get_manifest("mirror/regferry-fence", "dr").await.expect("fence").0).expect("JSON");
    assert_eq!(fence["annotations"]["io.regferry.fence.direction"], "forward");
    cmd("run", &[]).await.assert_ok();
    let verify = cmd("verify", &["--deep", "--json"]).await;
    assert_eq!(verify.code, 0, "the fence is neither compared nor reported as only at DR: {}", text(&verify));

    // The state restored from the backup says reversed; the fence says failed back: DR is not
    // replicated over the primary, and `failback` takes the forward direction over without a sync.
    remove_state(&state);
    copy_state(&backup, &state);
    push_tags(&p, "team/app", &["v1"], "primary-again").await;
    let primary_v1 = p.head("team/app", "v1").await;
    let run = cmd("run", &["--json"]).await;
    assert_eq!(run.code, 1, "{}", text(&run));
    assert!(run.json()[0]["destinations"][0]["error"].as_str().unwrap_or_default().contains("was failed back"), "{}", run.stdout);
    assert_eq!(p.head("team/app", "v1").await, primary_v1, "the primary keeps its new v1");
    let fb = cmd("failback", &[]).await;
    assert_eq!(fb.code, 0, "{}", text(&fb));
    assert!(fb.stdout.contains("took that direction over") && fb.stdout.contains("nothing to do"), "{}", fb.stdout);
    cmd("run", &[]).await.assert_ok();
    assert_eq!(d.head("mirror/team/app", "v1").await, primary_v1, "forward again");
}

fn copy_state(from: &str, to: &str) {
    for suffix in ["", "-wal", "-shm"] {
        if std::path::Path::new(&format!("{from}{suffix}")).exists() {
            std::fs::copy(format!("{from}{suffix}"), format!("{to}{suffix}")).expect("copy the state");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deletion_guard_keeps_an_emptied_source_from_emptying_the_destination() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let ten = ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10"];
    push_tags(&s, "team/app", &ten, "app").await;
    push_tags(&s, "team/lib", &["x1"], "lib").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: del\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ndelete: true\n\
             repositories: {{ include: ['team/**', 'nothing-here/*'] }}\ntrigger: {{ interval: 1s }}\n",
            src.url, dst.url
        ),
    );
    let state = scratch.state();
    let args = ["run", "--policies", policies.as_str(), "--state", state.as_str(), "--json"];
    regferry(&scratch, &args, &[]).await.assert_ok();

    // The source lists no tags for team/lib (all deleted), and 3 of team/app's 10 are gone:
    // 3 deletions of 11 in-scope tags is above the default 10 % (at most 2).
    let x1 = s.head("team/lib", "x1").await.expect("x1").0;
    s.delete_manifest("team/lib", &x1).await;
    assert!(s.tags("team/lib").await.is_empty(), "the repository is still listed, with no tags");
    for t in ["v1", "v2", "v3"] {
        let digest = s.head("team/app", t).await.expect("tag").0;
        s.delete_manifest("team/app", &digest).await;
    }
    let run = regferry(&scratch, &args, &[]).await;
    assert_eq!(run.code, 1, "{}", text(&run));
    let refused = run.json()[0]["destinations"][0]["deletions_refused"].to_string();
    assert!(refused.contains("team/lib: the source lists no tags at all"), "{refused}");
    assert!(refused.contains("not deleting 3 of 11 in-scope tag(s)") && refused.contains("max_delete 10%"), "{refused}");
    assert!(refused.contains("--force-delete"), "the way out is named: {refused}");
    assert_eq!(d.tags("team/lib").await, ["x1"]);
    assert_eq!(d.tags("team/app").await.len(), 10, "nothing deleted");

    // `jobs show` says why the pass failed.
    let list = regferry(&scratch, &["jobs", "list", "--policy", "del", "--state", &state, "--json"], &[]).await;
    list.assert_ok();
    let id = list.json()[0]["id"].as_i64().expect("an execution id").to_string();
    let show = regferry(&scratch, &["jobs", "show", &id, "--state", &state, "--json"], &[]).await;
    show.assert_ok();
    let execution = &show.json()["execution"];
    assert_eq!(execution["status"], "failed", "{execution}");
    assert!(execution["error"].as_str().unwrap_or_default().contains("deletions refused"), "{execution}");

    // The daemon's /metrics count refused passes and the glob that matched nothing.
    let port = free_port();
    let daemon = daemon_command(&scratch, &policies, port).spawn().expect("start daemon");
    let m = wait_for_metric(port, "regferry_deletions_refused_total{policy=\"del\"").await;
    let unmatched = format!("regferry_policy_unmatched_patterns{{policy=\"del\",destination=\"{}\"", dst.url);
    assert!(m.lines().any(|l| l.starts_with(&unmatched) && l.ends_with("} 1")), "{m}");
    stop_daemon(daemon, &scratch.path("daemon.log")).await;
    assert_eq!(d.tags("team/app").await.len(), 10);

    // The operator forces this one pass.
    let forced = ["run", "--policies", policies.as_str(), "--state", state.as_str(), "--json", "--force-delete"];
    let run = regferry(&scratch, &forced, &[]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    let deleted = &run.json()[0]["destinations"][0]["deleted"];
    assert_eq!(deleted.as_array().map(Vec::len), Some(4), "{deleted}");
    assert!(d.tags("team/lib").await.is_empty());
    assert_eq!(d.tags("team/app").await.len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_reports_the_rpo_and_refuses_a_dr_site_that_is_not_pullable() {
    let mut primary = TestRegistry::start();
    let dr = TestRegistry::start();
    let p = Registry::new(&primary.url, Access::Anonymous);
    let d = Registry::new(&dr.url, Access::Anonymous);
    let img = image::image(Flavor::Docker, "broken", vec![image::layer(Flavor::Docker, "broken-layer", 900)]);
    p.push("team/app", "v1", &img).await;
    push_tags(&p, "team/app", &["v2"], "app").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\n", primary.url, dr.url),
    );
    let state = scratch.state();
    let cmd = |extra: &'static [&'static str]| {
        let (scratch, policies, state) = (&scratch, policies.clone(), state.clone());
        async move {
            let mut args = vec!["failover", "--policy", "dr", "--policies", policies.as_str(), "--state", state.as_str()];
            args.extend_from_slice(extra);
            regferry(scratch, &args, &[]).await
        }
    };
    regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).await.assert_ok();

    // Tag lists agree, but a layer of v1 is gone from DR's storage — and from the
    // primary's too, so the failover cannot repair it (dr_ownership tests the repair).
    let layer = img.blobs.last().expect("a layer").digest.clone();
    std::fs::remove_dir_all(dr.blob_dir(&layer)).expect("remove the blob");
    std::fs::remove_dir_all(primary.blob_dir(&layer)).expect("remove the blob at the primary");

    let fo = cmd(&[]).await;
    assert_eq!(fo.code, 1, "{}", text(&fo));
    assert!(fo.stdout.contains("RPO: 0s"), "{}", fo.stdout);
    assert!(fo.stdout.contains("not pullable") && fo.stdout.contains(&layer), "{}", fo.stdout);
    assert!(fo.stdout.contains("not repaired: cannot repair blob"), "the repair was tried first: {}", fo.stdout);
    assert!(fo.stdout.contains("not switched") && fo.stdout.contains("--force"), "{}", fo.stdout);
    assert!(d.head("mirror/regferry-fence", "dr").await.is_none(), "a refused failover writes no fence");

    // The disaster: the primary is gone, with a change DR never saw. DR is checked on its own.
    push_tags(&p, "team/app", &["v3"], "late").await;
    primary.stop();
    let fo = cmd(&["--json"]).await;
    assert_eq!(fo.code, 1, "{}", text(&fo));
    let v = fo.json();
    assert_eq!((v["from_reachable"].as_bool(), v["switched"].as_bool()), (Some(false), Some(false)), "{v}");
    assert!(v["rpo"]["rpo_seconds"].as_f64().is_some() && v["rpo"]["caught_up"] == false, "{v}");
    assert_eq!(v["verification"]["not_pullable"].as_u64(), Some(1), "{v}");
    assert_eq!(v["verification"]["identical"].as_u64(), Some(1), "v2 pulls: {v}");

    let fo = cmd(&["--force"]).await;
    assert_eq!(fo.code, 0, "{}", text(&fo));
    assert!(fo.stdout.contains("RPO: up to") && fo.stdout.contains("last pass"), "{}", fo.stdout);
    assert!(fo.stdout.contains("warning: the DR site is not pullable"), "{}", fo.stdout);
    assert!(fo.stdout.contains("done"), "{}", fo.stdout);
    assert!(d.head("mirror/regferry-fence", "dr").await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_glob_that_matches_nothing_is_a_warning() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    push_tags(&s, "team/app", &["v1"], "app").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: typo\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\nrepositories: {{ include: ['team/**', 'teem/**'] }}\n",
            src.url, dst.url
        ),
    );
    let state = scratch.state();
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).await;
    assert_eq!(run.code, 0, "a warning, not a failure: {}", text(&run));
    assert!(run.stdout.contains("warning") && run.stdout.contains("\"teem/**\" matches no repository"), "{}", run.stdout);
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    assert_eq!(run.json()[0]["destinations"][0]["unmatched_patterns"], serde_json::json!(["teem/**"]), "{}", run.stdout);
    let verify = regferry(&scratch, &["verify", "--policies", &policies, "--state", &state], &[]).await;
    assert_eq!(verify.code, 0, "{}", text(&verify));
    assert!(verify.stdout.contains("warning: repository pattern \"teem/**\" matches no repository"), "{}", verify.stdout);
}
