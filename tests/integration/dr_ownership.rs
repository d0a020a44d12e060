//! DR that never destroys, against real docker-registry processes (delete
//! enabled) with skopeo as the client that pulls: deletion sync deletes only
//! what regferry wrote and nothing a kept tag needs (a multi-arch index's
//! child), a reversed pass never deletes the primary's tags that DR never
//! had (`latest: N`), and the failover fence never fails open (a front that
//! answers `HEAD` 404, a front that answers 403).

use testkit::image::{self, Flavor};
use testkit::{Access, Front, Nginx, Registry, TestRegistry};

use crate::policies::{push_tags, write};
use crate::support::{Run, Scratch, policy_verb};

fn text(run: &Run) -> String {
    format!("exit {}\n{}\n{}", run.code, run.stdout, run.stderr)
}

fn remove_state(state: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{state}{suffix}"));
    }
}

/// `skopeo copy --all` of `host/repo:tag` into a layout: every child and blob is fetched.
async fn skopeo_pulls(scratch: &Scratch, url: &str, reference: &str) -> Result<(), String> {
    let dir = scratch.path(&format!("pull-{}", reference.replace(['/', ':'], "_")));
    let out = tokio::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{reference}", url.trim_start_matches("http://")))
        .arg(format!("oci:{}:pulled", dir.display()))
        .env("HOME", scratch.dir.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run skopeo");
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// Delete `repo:tag` alone in a registry's storage, as registries that
/// delete tags alone do (distribution 2.8 cannot through its API).
fn delete_tag_in_storage(reg: &TestRegistry, repo: &str, tag: &str) {
    let dir = reg.storage().join(format!("docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}"));
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_child_tag_at_the_source_never_breaks_the_index_at_dr() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let amd64 = image::image(Flavor::Oci, "multi-amd64", vec![image::layer(Flavor::Oci, "multi-amd64", 400)]);
    let arm64 = image::image(Flavor::Oci, "multi-arm64", vec![image::layer(Flavor::Oci, "multi-arm64", 400)]);
    let index = image::index(Flavor::Oci, vec![(amd64.clone(), "amd64"), (arm64, "arm64")]);
    s.push("team/app", "1.0", &index).await;
    s.push("team/app", "1.0-amd64", &amd64).await;
    push_tags(&s, "team/app", &["old"], "plain").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: multi\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ndelete: true\nmax_delete: 5\n", src.url, dst.url),
    );
    let state = scratch.state();
    policy_verb(&scratch, &policies, &state, "multi", "run", &[]).await.assert_ok();
    skopeo_pulls(&scratch, &dst.url, "team/app:1.0").await.expect("the index pulls at DR after the first pass");

    // The source deletes the per-arch tag alone, and a plain tag with its manifest.
    delete_tag_in_storage(&src, "team/app", "1.0-amd64");
    let old = s.head("team/app", "old").await.expect("old").0;
    s.delete_manifest("team/app", &old).await;
    assert_eq!(s.tags("team/app").await, ["1.0"]);

    let run = policy_verb(&scratch, &policies, &state, "multi", "run", &["--json"]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    let dest = &run.json()[0]["destinations"][0];
    assert_eq!(dest["deleted"], serde_json::json!(["team/app:old"]), "{dest}");
    assert!(dest["kept"].to_string().contains("team/app:1.0-amd64") && dest["kept"].to_string().contains("cannot delete a tag alone"), "{dest}");
    assert!(d.head("team/app", "old").await.is_none(), "a plain tag gone at the source is still deleted");
    assert_eq!(d.head("team/app", "1.0-amd64").await.map(|h| h.0), Some(amd64.digest.clone()), "the shared child stays");
    if let Err(e) = skopeo_pulls(&scratch, &dst.url, "team/app:1.0").await {
        panic!("the index at DR no longer pulls after deletion sync: {e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reversed_pass_never_deletes_the_primarys_tags_that_dr_never_had() {
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    let p = Registry::new(&primary.url, Access::Anonymous);
    let d = Registry::new(&dr.url, Access::Anonymous);
    let repos = ["team/a", "team/b", "team/c"];
    for repo in repos {
        push_tags(&p, repo, &["1.0.1", "1.0.2", "1.0.3", "1.0.4"], repo).await;
    }
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: latest\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\n\
             tags: {{ latest: 3 }}\ndelete: true\nmax_delete: 50%\n",
            primary.url, dr.url
        ),
    );
    let state = scratch.state();
    let cmd = |verb: &'static str, extra: &'static [&'static str]| policy_verb(&scratch, &policies, &state, "latest", verb, extra);
    cmd("run", &[]).await.assert_ok();
    assert_eq!(d.tags("mirror/team/a").await.len(), 3, "latest: 3 copies three versions");
    let fo = cmd("failover", &[]).await;
    assert_eq!(fo.code, 0, "{}", text(&fo));

    // The first reversed pass (DR → primary): 1.0.1 was never replicated, so DR never had it.
    let run = cmd("run", &["--json"]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    assert_eq!(run.json()[0]["destinations"][0]["reversed"], true);
    for repo in repos {
        assert!(p.head(repo, "1.0.1").await.is_some(), "the reversed pass deleted {repo}:1.0.1 at the primary: {}", run.stdout);
    }

    // A tag deleted at the active site (DR) is still mirrored to the primary.
    let gone = d.head("mirror/team/a", "1.0.4").await.expect("1.0.4 at DR").0;
    d.delete_manifest("mirror/team/a", &gone).await;
    let run = cmd("run", &["--json"]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    assert_eq!(run.json()[0]["destinations"][0]["deleted"], serde_json::json!(["team/a:1.0.4"]), "{}", run.stdout);
    assert!(p.head("team/a", "1.0.4").await.is_none());
    for repo in repos {
        assert!(p.head(repo, "1.0.1").await.is_some(), "{repo}:1.0.1 stays at the primary");
    }

    // A state that lost its records deletes nothing, and says so.
    remove_state(&state);
    let fo = cmd("failover", &[]).await;
    assert_eq!(fo.code, 0, "the operator takes the fence's direction over: {}", text(&fo));
    let gone = d.head("mirror/team/b", "1.0.4").await.expect("1.0.4 at DR").0;
    d.delete_manifest("mirror/team/b", &gone).await;
    let run = cmd("run", &["--json"]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    let dest = &run.json()[0]["destinations"][0];
    assert_eq!(dest["deleted"], serde_json::json!([]), "{dest}");
    assert!(dest["kept"].to_string().contains("team/b:1.0.4 (regferry has no record of writing it here)"), "{dest}");
    assert!(p.head("team/b", "1.0.4").await.is_some());
}

/// A failover behind `front` at DR, then a new build pushed at DR and a lost
/// state: a fresh `run` must be refused and leave DR's tag alone.
async fn fence_behind_a_front(front: Front, policy: &str) -> (Run, Option<(String, String)>, Option<(String, String)>, Registry) {
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    let nginx = Nginx::start(&dr.url, front);
    let p = Registry::new(&primary.url, Access::Anonymous);
    let d = Registry::new(&dr.url, Access::Anonymous);
    push_tags(&p, "team/app", &["v1"], "app").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: {policy}\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\ndelete: true\n", primary.url, nginx.url),
    );
    let state = scratch.state();
    let cmd = |verb: &'static str, extra: &'static [&'static str]| policy_verb(&scratch, &policies, &state, policy, verb, extra);
    let run = cmd("run", &[]).await;
    if run.code != 0 {
        // Behind a front that refuses the fence, even the first pass is refused.
        return (run, None, None, d);
    }
    let fo = cmd("failover", &["--force"]).await;
    assert_eq!(fo.code, 0, "{}", text(&fo));
    push_tags(&d, "mirror/team/app", &["v1"], "built-at-dr").await;
    let before = d.head("mirror/team/app", "v1").await;
    remove_state(&state);
    let run = cmd("run", &["--json"]).await;
    let after = d.head("mirror/team/app", "v1").await;
    (run, before, after, d)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fence_is_read_through_a_front_that_answers_head_with_404() {
    let front = Front { refuse_manifest_head: Some(404), ..Front::default() };
    let (run, before, after, _d) = fence_behind_a_front(front, "head404").await;
    assert!(before.is_some(), "the failover ran: {}", text(&run));
    assert_eq!(run.code, 1, "a fresh state must be refused by the fence: {}", text(&run));
    let err = run.json()[0]["destinations"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("was failed over"), "{err}");
    assert_eq!(after, before, "the old primary was replicated over the tag pushed at DR");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fence_the_credentials_may_not_read_refuses_the_pass() {
    let front = Front { extra: "location ~ /regferry-fence/ { return 403; }\n".into(), ..Front::default() };
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    let nginx = Nginx::start(&dr.url, front);
    let p = Registry::new(&primary.url, Access::Anonymous);
    let d = Registry::new(&dr.url, Access::Anonymous);
    push_tags(&p, "team/app", &["v1"], "app").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: f403\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\n", primary.url, nginx.url),
    );
    let state = scratch.state();
    let run = policy_verb(&scratch, &policies, &state, "f403", "run", &["--json"]).await;
    assert_eq!(run.code, 1, "a 403 on the fence is not \"no fence\": {}", text(&run));
    let dest = &run.json()[0]["destinations"][0];
    let err = dest["error"].as_str().unwrap_or_default();
    assert!(err.contains("regferry-fence:f403") && err.contains("403") && err.contains("--ignore-unreadable-fence"), "{dest}");
    assert_eq!(dest["fenced"], true, "{dest}");
    assert!(d.head("mirror/team/app", "v1").await.is_none(), "nothing was copied");

    // The operator's explicit word, for one pass.
    let run = policy_verb(&scratch, &policies, &state, "f403", "run", &["--ignore-unreadable-fence"]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    assert!(d.head("mirror/team/app", "v1").await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_lost_at_dr_is_repaired_by_the_failover() {
    let LostLayer { primary: _primary, dr, scratch, policies, state, .. } = lost_layer_at_dr("fix").await;

    let fo = policy_verb(&scratch, &policies, &state, "fix", "failover", &[]).await;
    assert_eq!(fo.code, 0, "the failover repairs the DR site, then switches: {}", text(&fo));
    assert!(fo.stdout.contains("repaired the DR site from the primary: 1 blob(s), 0 manifest(s)"), "{}", fo.stdout);
    assert!(fo.stdout.contains("done"), "{}", fo.stdout);
    skopeo_pulls(&scratch, &dr.url, "mirror/team/app:v1").await.expect("v1 pulls at DR after the repair");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_queued_behind_a_failover_never_runs_the_old_direction() {
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    // A slow primary: the failover's catch-up pass takes a few seconds (the
    // fault proxy's shared bandwidth limit; nginx's limit_rate does not slow
    // an unbuffered proxied response, and the pass then ran in ~0.1 s, too
    // short for the test to see it running).
    let slow = testkit::FaultProxy::start(&primary.url, testkit::Faults { bandwidth: 300_000, ..testkit::Faults::default() });
    let p = Registry::new(&primary.url, Access::Anonymous);
    let img = image::image(Flavor::Oci, "big", vec![image::layer(Flavor::Oci, "big-layer", 1_200_000)]);
    p.push("team/app", "v1", &img).await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: queued\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\ndelete: true\n", slow.url, dr.url),
    );
    let state = scratch.state();
    let started = std::time::Instant::now();
    let failover = policy_verb(&scratch, &policies, &state, "queued", "failover", &[]);
    let queued = async {
        // Start once the failover's catch-up pass has an execution running.
        let list = ["jobs", "list", "--policy", "queued", "--state", state.as_str(), "--json"];
        loop {
            let jobs = crate::support::regferry(&scratch, &list, &[]).await;
            if jobs.code == 0 && jobs.stdout.contains("\"running\"") {
                break;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "the failover's catch-up pass never ran: {}", text(&jobs));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        eprintln!("queued pass started {:?} after the failover", started.elapsed());
        policy_verb(&scratch, &policies, &state, "queued", "run", &["--json"]).await
    };
    let (fo, run) = tokio::join!(failover, queued);
    eprintln!("failover and queued pass done after {:?}", started.elapsed());
    assert_eq!(fo.code, 0, "{}", text(&fo));
    assert_eq!(run.code, 1, "the queued pass must not run forward after the switch: {}", text(&run));
    let err = run.json()[0]["destinations"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("was switched to run reversed") && err.contains("while this pass waited"), "{err}");
    // The next pass runs the new direction.
    let run = policy_verb(&scratch, &policies, &state, "queued", "run", &["--json"]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    assert_eq!(run.json()[0]["destinations"][0]["reversed"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_racing_a_second_worker_on_postgres_never_deletes_what_it_just_copied() {
    let pg = testkit::TestPostgres::start();
    let state = pg.database();
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let proxy = testkit::FaultProxy::start(&dst.url, testkit::Faults::default());
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    push_tags(&s, "team/app", &["v1"], "race").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: race\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ndelete: true\nmax_delete: 100%\n", src.url, proxy.url),
    );
    let run = |id: &'static str| {
        let (scratch, policies, state) = (&scratch, policies.clone(), state.clone());
        async move { crate::support::regferry(scratch, &["run", "--policies", &policies, "--state", &state, "--worker-id", id, "--json"], &[]).await }
    };
    run("setup").await.assert_ok();

    // Worker A's pass copies a larger v0 over a slow link; once its plan has
    // listed the destination, the next listing — its deletion sweep's — is held…
    let big = image::image(Flavor::Oci, "race-big", vec![image::layer(Flavor::Oci, "race-big", 600_000)]);
    s.push("team/app", "v0", &big).await;
    proxy.set_faults(testkit::Faults { bandwidth: 300_000, ..testkit::Faults::default() });
    let listings = || proxy.counters.seen().iter().filter(|r| r.method == "GET" && r.target.starts_with("/v2/team/app/tags/list")).count();
    let before = listings();
    let a = run("A");
    let race = async {
        let started = std::time::Instant::now();
        while listings() == before {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "worker A never planned");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        proxy.set_faults(testkit::Faults { hold: 1.0, only: vec!["GET /v2/team/app/tags/list".into()], limit: 1, ..testkit::Faults::default() });
        while proxy.counters.injected("hold") == 0 {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "worker A's sweep never listed the destination");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // …while v2 is pushed and worker B starts a pass that copies it.
        push_tags(&s, "team/app", &["v2"], "race").await;
        let b = run("B");
        tokio::pin!(b);
        let b_done = tokio::select! {
            r = &mut b => Some(r),
            _ = tokio::time::sleep(std::time::Duration::from_secs(4)) => None,
        };
        proxy.release();
        match b_done {
            Some(r) => r,
            None => b.await,
        }
    };
    let (a, b) = tokio::join!(a, race);
    assert_eq!(a.code, 0, "{}", text(&a));
    assert_eq!(b.code, 0, "{}", text(&b));
    assert_eq!(d.head("team/app", "v2").await.map(|h| h.0), s.head("team/app", "v2").await.map(|h| h.0), "a sweep deleted the tag another worker had just copied: A {} / B {}", a.stdout, b.stdout);
    assert!(d.missing_content("team/app", "v2").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_running_when_the_policy_is_switched_stops_before_its_next_writes() {
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    // A slow link to DR: the pass takes several seconds.
    let slow = testkit::FaultProxy::start(&dr.url, testkit::Faults { bandwidth: 250_000, ..testkit::Faults::default() });
    let p = Registry::new(&primary.url, Access::Anonymous);
    let d = Registry::new(&dr.url, Access::Anonymous);
    let tags: Vec<String> = (1..=8).map(|i| format!("v{i}")).collect();
    for t in &tags {
        let img = image::image(Flavor::Oci, &format!("switch-{t}"), vec![image::layer(Flavor::Oci, &format!("switch-{t}"), 250_000)]);
        p.push("team/app", t, &img).await;
    }
    let scratch = Scratch::new();
    let body = |source: &str| format!("name: cut\nsource: {{ registry: '{source}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\nconcurrency: 1\n", slow.url);
    let policies = write(&scratch, "policies", "p.yaml", &body(&primary.url));
    // The failover runs where the primary cannot be reached (a partition): no catch-up pass, no wait for the job.
    let cut_off = write(&scratch, "cut-off", "p.yaml", &body("http://127.0.0.1:1"));
    let state = scratch.state();
    let run = policy_verb(&scratch, &policies, &state, "cut", "run", &["--json"]);
    let switch = async {
        let started = std::time::Instant::now();
        while d.tags("mirror/team/app").await.is_empty() {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "the pass never copied a tag");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        policy_verb(&scratch, &cut_off, &state, "cut", "failover", &["--force"]).await
    };
    let (run, fo) = tokio::join!(run, switch);
    assert_eq!(fo.code, 0, "{}", text(&fo));
    assert_eq!(run.code, 1, "the pass must stop once the policy is switched: {}", text(&run));
    let err = run.json()[0]["destinations"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("was switched (failover/failback) during this pass"), "{err}");
    let copied = d.tags("mirror/team/app").await.len();
    assert!(copied < tags.len(), "the pass went on writing to DR after the switch: {copied} tags");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_deep_repair_copies_again_exactly_what_is_missing() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let amd64 = image::image(Flavor::Oci, "fix-amd64", vec![image::layer(Flavor::Oci, "fix-amd64", 500)]);
    let arm64 = image::image(Flavor::Oci, "fix-arm64", vec![image::layer(Flavor::Oci, "fix-arm64", 500)]);
    let index = image::index(Flavor::Oci, vec![(amd64.clone(), "amd64"), (arm64.clone(), "arm64")]);
    s.push("team/app", "1.0", &index).await;
    let scratch = Scratch::new();
    crate::support::migrate(&scratch, &src.url, &dst.url, &[]).await.assert_ok();
    // DR's storage loses the arm64 child manifest and a layer of the amd64 child.
    std::fs::remove_dir_all(dst.blob_dir(&arm64.digest)).expect("remove the child manifest");
    std::fs::remove_dir_all(dst.blob_dir(&amd64.blobs.last().expect("a layer").digest)).expect("remove the layer");
    assert!(skopeo_pulls(&scratch, &dst.url, "team/app:1.0").await.is_err());

    let args = ["verify", "--from", src.url.as_str(), "--to", dst.url.as_str(), "--deep", "--json"];
    let v = crate::support::regferry(&scratch, &args, &[]).await;
    assert_eq!(v.code, 1, "{}", text(&v));
    let mut with_repair = args.to_vec();
    with_repair.push("--repair");
    let v = crate::support::regferry(&scratch, &with_repair, &[]).await;
    assert_eq!(v.code, 0, "repaired, then verified: {}", text(&v));
    let repair = &v.json()["results"][0]["repair"];
    assert_eq!(repair["blobs"].as_array().map(Vec::len), Some(1), "{repair}");
    assert_eq!(repair["manifests"].as_array().map(Vec::len), Some(1), "{repair}");
    skopeo_pulls(&scratch, &dst.url, "team/app:1.0").await.expect("the index pulls after the repair");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_repair_copies_again_a_blob_lost_at_dr() {
    let LostLayer { primary: _primary, dr, scratch, policies, state, layer } = lost_layer_at_dr("mend").await;

    // A plain pass sees nothing to do (the tag is "unchanged") and leaves it broken.
    policy_verb(&scratch, &policies, &state, "mend", "run", &[]).await.assert_ok();
    assert!(skopeo_pulls(&scratch, &dr.url, "mirror/team/app:v1").await.is_err(), "a plain pass does not repair");

    let run = policy_verb(&scratch, &policies, &state, "mend", "run", &["--repair", "--json"]).await;
    assert_eq!(run.code, 0, "repaired, then verified: {}", text(&run));
    let repair = &run.json()[0]["repair"][0];
    assert_eq!(repair["ok"], true, "{repair}");
    assert_eq!(repair["repair"]["blobs"], serde_json::json!([format!("mirror/team/app@{layer}")]), "exactly the lost blob: {repair}");
    assert_eq!(repair["repair"]["manifests"].as_array().map(Vec::len), Some(0), "{repair}");
    assert_eq!(repair["report"]["not_pullable"], 0, "verified again after the repair: {repair}");
    skopeo_pulls(&scratch, &dr.url, "mirror/team/app:v1").await.expect("v1 pulls at DR after run --repair");

    // Nothing left to repair: the text says the deep check passed and nothing was copied.
    let run = policy_verb(&scratch, &policies, &state, "mend", "run", &["--repair"]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    assert!(run.stdout.contains("(deep): identical"), "{}", run.stdout);
    assert!(!run.stdout.contains("copied again"), "{}", run.stdout);
}

/// A primary and a DR site replicated by policy `name` (namespace `mirror`,
/// tags v1 and v2 of team/app), then a layer of v1 removed from DR's
/// storage: "tag lists match, pulls 404".
struct LostLayer {
    primary: TestRegistry,
    dr: TestRegistry,
    scratch: Scratch,
    policies: String,
    state: String,
    /// The digest of the lost layer.
    layer: String,
}

async fn lost_layer_at_dr(name: &str) -> LostLayer {
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    let p = Registry::new(&primary.url, Access::Anonymous);
    let img = image::image(Flavor::Docker, name, vec![image::layer(Flavor::Docker, &format!("{name}-layer"), 900)]);
    p.push("team/app", "v1", &img).await;
    push_tags(&p, "team/app", &["v2"], "app").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: {name}\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\n", primary.url, dr.url),
    );
    let state = scratch.state();
    policy_verb(&scratch, &policies, &state, name, "run", &[]).await.assert_ok();
    let layer = img.blobs.last().expect("a layer").digest.clone();
    std::fs::remove_dir_all(dr.blob_dir(&layer)).expect("remove the blob");
    assert!(skopeo_pulls(&scratch, &dr.url, "mirror/team/app:v1").await.is_err(), "the lost blob breaks the pull");
    LostLayer { primary, dr, scratch, policies, state, layer }
}
