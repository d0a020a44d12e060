//! Several workers on one state: three `regferry daemon` processes share one
//! pass (each claims tasks), a `kill -9` of the worker holding the pass hands
//! its lease and tasks to another within the lease time, the destination
//! ends identical and deep-pullable, no task is worked by two workers at
//! once, and a blob crosses the wire once however many workers need it.
//! And `run` waits while another `run` holds the pass, and one worker only
//! exports the series read from the shared state on `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use regferry::state::StateDb;
use regferry::state::leases::Claim;
use testkit::proxy::{Faults, FaultProxy};
use testkit::registry::free_port;
use testkit::{Access, Registry, TestRegistry};

use crate::policies::write;
use crate::support::*;

/// Lease time of the workers in these tests.
const LEASE: &str = "2s";

/// Bytes of every blob (layers, configs and manifests) a registry stores:
/// what a copy of all of it has to upload at least once.
fn stored_bytes(storage: &Path) -> u64 {
    let root = storage.join("docker/registry/v2/blobs/sha256");
    let mut total = 0;
    for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for blob in std::fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
            total += std::fs::metadata(blob.path().join("data")).map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// A source with `repos` × `tags` images of distinct tag layers over shared
/// base layers, and an empty destination behind a counting proxy.
async fn setup(repos: usize, tags: usize) -> (TestRegistry, TestRegistry, FaultProxy, Vec<String>) {
    let (src, dst, s, _d) = registries();
    let spec = testkit::dataset::Spec {
        repos,
        tags_per_repo: tags,
        base_layer_size: 256 * 1024,
        repo_layer_size: 64 * 1024,
        tag_layer_size: 128 * 1024,
        multi_arch_every: 0,
        signatures: false,
        ..testkit::dataset::Spec::default()
    };
    let pushed = testkit::dataset::fill(&s, &spec).await;
    let proxy = FaultProxy::start(&dst.url, Faults::default());
    (src, dst, proxy, repos_of(&pushed))
}

/// A policy copying everything from `src` to `to` at `bps` bytes per second
/// per worker (standing in for one machine's network).
fn policy(scratch: &Scratch, src: &str, to: &str, bps: &str) -> String {
    write(
        scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: shared\nsource: {{ registry: '{src}' }}\ndestinations:\n  - registry: '{to}'\n    bytes_per_second: {bps}\n\
             trigger: {{ interval: 1h }}\nconcurrency: 2\nretry: {{ attempts: 2 }}\n"
        ),
    )
}

struct Worker {
    id: String,
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

fn start_worker(scratch: &Scratch, state: &str, policies: &str, id: &str) -> Worker {
    start_worker_at(scratch, state, policies, id, free_port())
}

fn start_worker_at(scratch: &Scratch, state: &str, policies: &str, id: &str, port: u16) -> Worker {
    let log = scratch.path(&format!("{id}.log"));
    let mut cmd = tokio::process::Command::new(binary());
    cmd.args(["daemon", "--policies", policies, "--state", state, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--worker-id", id, "--lease-time", LEASE])
        .env("DOCKER_CONFIG", scratch.path("none"))
        .env("HOME", scratch.dir.path())
        .env("RUST_LOG", "regferry=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true);
    Worker { id: id.into(), child: cmd.spawn().expect("start daemon"), log }
}

/// No two workers ever held a claim on one task at the same time: each
/// claim ended (said by its worker) before the next one began, except the
/// claims of `dead`, which never said so (the next came after their expiry).
fn assert_no_overlap(claims: &[Claim], dead: &str) {
    let mut by_task: BTreeMap<i64, Vec<&Claim>> = BTreeMap::new();
    for c in claims {
        by_task.entry(c.task_id).or_default().push(c);
    }
    for (task, claims) in by_task {
        for pair in claims.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            match a.ended_at {
                Some(end) => assert!(end <= b.claimed_at, "task {task}: {} claimed it while {} still worked it: {claims:?}", b.worker, a.worker),
                None => assert_eq!(a.worker, dead, "task {task}: a live worker's claim never ended: {claims:?}"),
            }
        }
    }
}

/// The execution the first pass of policy `shared` records, once it exists.
async fn execution(db: &StateDb) -> i64 {
    let mut id = None;
    wait_until(Duration::from_secs(30), "the pass to be recorded", async || {
        id = db.list_executions(&Default::default()).await.ok().and_then(|e| e.last().map(|e| e.id));
        id.is_some()
    })
    .await;
    id.unwrap_or_default()
}

async fn open(state: &str) -> StateDb {
    StateDb::open(&state.parse().expect("state location")).await.expect("state")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_on_postgres_share_a_pass_and_a_killed_one_hands_it_over() {
    let pg = testkit::TestPostgres::start();
    three_daemons(&pg.database()).await;
}

async fn three_daemons(state: &str) {
    let (src, dst, proxy, repos) = setup(8, 6).await;
    let scratch = Scratch::new();
    let policies = policy(&scratch, &src.url, &proxy.url, "600KiB");
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"].iter().map(|id| start_worker(&scratch, state, &policies, id)).collect();
    let db = open(state).await;
    let id = execution(&db).await;

    // Every worker claims tasks of the one pass.
    let mut claims = Vec::new();
    wait_until(Duration::from_secs(30), "all three workers to claim tasks", async || {
        claims = db.claims(id).await.unwrap_or_default();
        claims.iter().map(|c| c.worker.as_str()).collect::<BTreeSet<_>>().len() == 3
    })
    .await;

    // kill -9 the worker holding the pass a third of the way through (the
    // shared base layers are across by then).
    wait_until(Duration::from_secs(30), "a third of the tasks to be done", async || {
        db.tasks(id).await.unwrap_or_default().iter().filter(|t| t.status == "succeeded").count() >= 16
    })
    .await;
    let holder = db.leases().await.expect("leases").into_iter().find_map(|(_, h)| h.execution.filter(|e| *e == id).map(|_| h.worker));
    let holder = holder.expect("someone holds the pass");
    let unfinished = db.unfinished_tasks(id).await.expect("tasks");
    assert!(unfinished > 0, "the pass is still going when its holder is killed");
    let victim = workers.iter().position(|w| w.id == holder).expect("a worker of ours holds it");
    let mut dead = workers.remove(victim);
    dead.child.start_kill().expect("kill -9");
    let _ = dead.child.wait().await;
    let killed_at = Instant::now();

    let mut new_holder = None;
    while new_holder.is_none() {
        new_holder = db.leases().await.unwrap_or_default().into_iter().find_map(|(_, h)| (h.execution == Some(id) && h.worker != holder).then_some(h.worker));
        if killed_at.elapsed() > Duration::from_secs(20) {
            let logs: Vec<String> = workers.iter().map(|w| std::fs::read_to_string(&w.log).unwrap_or_default()).collect();
            panic!("no other worker took the pass over within 20 s; logs:\n{}", logs.join("\n-----\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handover = killed_at.elapsed();
    eprintln!("lease hand-over after kill -9 of {holder}: {handover:?} (to {new_holder:?})");
    // The lease time, plus one daemon tick (2 s) and the takeover's own planning.
    assert!(handover < Duration::from_secs(8), "hand-over took {handover:?}");

    wait_until(Duration::from_secs(60), "the pass to end", async || {
        db.execution(id).await.ok().flatten().is_some_and(|e| e.status != "running")
    })
    .await;
    let e = db.execution(id).await.expect("state").expect("execution");
    assert_eq!(e.status, "succeeded", "{e:?}");
    let tasks = db.tasks(id).await.expect("tasks");
    assert!(tasks.iter().all(|t| t.status == "succeeded"), "{tasks:?}");
    let ran: BTreeSet<&str> = tasks.iter().filter_map(|t| t.worker.as_deref()).collect();
    assert!(ran.len() >= 2, "tasks were run by several workers: {ran:?}");
    let claims = db.claims(id).await.expect("claims");
    assert_no_overlap(&claims, &holder);
    let workers_claiming: BTreeSet<&str> = claims.iter().map(|c| c.worker.as_str()).collect();
    assert_eq!(workers_claiming.len(), 3, "each of the three workers claimed tasks: {claims:?}");

    // `jobs show` names the worker of each task.
    let show = regferry(&scratch, &["jobs", "show", &id.to_string(), "--state", state], &[]).await;
    show.assert_ok();
    assert!(show.stdout.contains("WORKER") && ran.iter().all(|w| show.stdout.contains(w)), "{}", show.stdout);

    // Identical, deep-pullable, and every blob crossed the wire once (what
    // the killed worker had half sent is the margin).
    let (s, d) = (Registry::new(&src.url, Access::Anonymous), Registry::new(&dst.url, Access::Anonymous));
    assert_eq!(assert_mirrored(&s, &d, &repos, "").await, 48);
    let verify = regferry(&scratch, &["verify", "--from", &src.url, "--to", &dst.url, "--deep", "--state", state], &[]).await;
    verify.assert_ok();
    let (up, distinct) = (proxy.counters.bytes_up.load(std::sync::atomic::Ordering::Relaxed), stored_bytes(&src.storage()));
    eprintln!("bytes uploaded {up}, distinct blob bytes {distinct}");
    assert!(up as f64 <= 1.1 * distinct as f64, "uploaded {up} bytes for {distinct} distinct blob bytes");

    for w in &workers {
        let log = std::fs::read_to_string(&w.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "{log}");
    }
    for w in workers {
        let log = w.log.clone();
        stop_daemon(w.child, &log).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_waits_while_another_run_holds_the_pass() {
    let (src, _dst, proxy, repos) = setup(2, 3).await;
    let scratch = Scratch::new();
    let policies = policy(&scratch, &src.url, &proxy.url, "1MiB");
    regferry(&scratch, &["jobs", "list", "--state", &scratch.state()], &[]).await.assert_ok();
    let run = |id: &'static str| {
        let mut cmd = command(&scratch, &["run", "--policies", &policies, "--state", &scratch.state(), "--worker-id", id, "--json"], &[]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().expect("run")
    };
    let first = run("first");
    let db = open(&scratch.state()).await;
    wait_until(Duration::from_secs(20), "the first run to hold the pass", async || {
        db.leases().await.unwrap_or_default().iter().any(|(_, h)| h.worker == "first")
    })
    .await;
    let second = run("second");
    let (a, b) = (first.wait_with_output().await.expect("first"), second.wait_with_output().await.expect("second"));
    let (a_err, b_err) = (String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert_eq!(a.status.code(), Some(0), "{a_err}");
    assert_eq!(b.status.code(), Some(0), "{b_err}");
    assert!(b_err.contains("another worker holds this pass"), "the second run said it waits: {b_err}");

    // One execution, all of it worked by the first run; the second found it done.
    let executions = db.list_executions(&Default::default()).await.expect("executions");
    assert_eq!(executions.len(), 1, "{executions:?}");
    let claims = db.claims(executions[0].id).await.expect("claims");
    assert!(!claims.is_empty() && claims.iter().all(|c| c.worker == "first"), "{claims:?}");
    let (s, d) = (Registry::new(&src.url, Access::Anonymous), Registry::new(&proxy.url, Access::Anonymous));
    assert_mirrored(&s, &d, &repos, "").await;
    let (up, distinct) = (proxy.counters.bytes_up.load(std::sync::atomic::Ordering::Relaxed), stored_bytes(&src.storage()));
    assert!(up as f64 <= 1.1 * distinct as f64, "uploaded {up} bytes for {distinct} distinct blob bytes");
}

/// `/metrics` of the daemon on `port`, once it answers.
async fn metrics(port: u16) -> Option<String> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

/// Whether a `/metrics` text is the exporter's: the flag, and the series
/// read from the shared state.
fn exports_shared(text: &str) -> bool {
    let flag = text.lines().any(|l| l == "regferry_shared_series_exporter 1");
    let series = text.lines().any(|l| l.starts_with("regferry_outstanding_tags{") || l.starts_with("regferry_replication_lag_seconds{"));
    assert_eq!(flag, series, "the exporter flag and the shared series disagree:\n{text}");
    flag
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_on_postgres_export_the_shared_series_once_and_hand_them_over() {
    let pg = testkit::TestPostgres::start();
    let state = pg.database();
    let (src, _dst, proxy, _repos) = setup(1, 2).await;
    let scratch = Scratch::new();
    let policies = policy(&scratch, &src.url, &proxy.url, "10MiB");
    let ports = [free_port(), free_port()];
    let mut workers: Vec<Worker> = ["m1", "m2"].iter().zip(ports).map(|(id, port)| start_worker_at(&scratch, &state, &policies, id, port)).collect();

    // Both serve /metrics; exactly one of them exports the shared series.
    let mut flags = Vec::new();
    wait_until(Duration::from_secs(30), "both daemons to serve /metrics, one of them the shared series", async || {
        flags.clear();
        for port in ports {
            match metrics(port).await {
                Some(text) => flags.push(exports_shared(&text)),
                None => return false,
            }
        }
        flags.iter().filter(|f| **f).count() == 1
    })
    .await;
    // ...and it stays that way over several lease times.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut now = Vec::new();
        for port in ports {
            now.push(exports_shared(&metrics(port).await.expect("/metrics")));
        }
        assert_eq!(now, flags, "the exporter changed with both workers alive");
    }
    let exporter = flags.iter().position(|f| *f).expect("an exporter");
    let other = 1 - exporter;

    // kill -9 the exporter: the other takes over within the lease time (plus a tick).
    let mut dead = workers.remove(exporter);
    dead.child.start_kill().expect("kill -9");
    let _ = dead.child.wait().await;
    let killed_at = Instant::now();
    wait_until(Duration::from_secs(20), "the surviving daemon to export the shared series", async || {
        metrics(ports[other]).await.is_some_and(|t| exports_shared(&t))
    })
    .await;
    let handover = killed_at.elapsed();
    eprintln!("shared series hand-over after kill -9 of {}: {handover:?}", dead.id);
    assert!(handover < Duration::from_secs(8), "hand-over took {handover:?}");
    for w in workers {
        let log = w.log.clone();
        stop_daemon(w.child, &log).await;
    }
}
