//! The state database never wedges a run (issue 18): repeated and scoped
//! migrates on one SQLite file, two migrates at once on it, a file that is
//! not a database, repeated migrates on fresh PostgreSQL databases, a
//! worker whose clock runs 60 s ahead (Debian `faketime`), SIGTERM mid-pass
//! on PostgreSQL. Every regferry run here has a deadline far below the
//! time a wedged one took (minutes).
//!
//! `REGFERRY_WEDGE_ROUNDS=N` runs N rounds / N PostgreSQL migrates instead
//! of the CI's few (the manual check is 20).

use std::process::Stdio;
use std::time::{Duration, Instant};

use testkit::TestPostgres;

use crate::support::{Run, Scratch, assert_mirrored, command, plain_images, registries, repos_of, wait_until};

/// How many rounds: `REGFERRY_WEDGE_ROUNDS`, else `ci`.
fn rounds(ci: usize) -> usize {
    std::env::var("REGFERRY_WEDGE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(ci)
}

/// `regferry args…`, which must end within `limit` (a wedged run is killed
/// and the test fails naming it).
async fn bounded(scratch: &Scratch, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let child = command(scratch, args, env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start regferry");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("regferry {args:?} did not finish within {limit:?} (wedged)"))
        .expect("wait for regferry");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `SELECT COUNT(*) …` on database `db`, 0 while regferry has not created its tables yet.
fn count(pg: &TestPostgres, db: &str, sql: &str) -> u64 {
    if pg.psql(db, "SELECT COUNT(*) FROM pg_tables WHERE tablename = 'leases'").trim() == "0" {
        return 0;
    }
    pg.psql(db, sql).trim().parse().unwrap_or(0)
}

fn migrate_args<'a>(from: &'a str, to: &'a str, state: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["migrate", "--from", from, "--to", to, "--state", state, "--json"];
    a.extend_from_slice(extra);
    a
}

/// A full migrate into a fresh state file, then a second migrate of three
/// named repositories into another prefix with the same state file (its
/// mount hints come from the first run's records). Before the fix about
/// one round in three stopped after a few tags: a transfer held SQLite's
/// only connection (a mount-hint lookup) while the worker loop, which had
/// stopped polling the transfers, waited for it to record a claim's end.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_full_then_scoped_migrates_never_wedge() {
    let (src, dst, s, d) = registries();
    let pushed = testkit::dataset::fill(&s, &plain_images(6, 5)).await;
    let repos = repos_of(&pushed);
    let limit = Duration::from_secs(90);
    for round in 0..rounds(3) {
        let scratch = Scratch::new();
        let state = scratch.state();
        let first_to = format!("{}/r{round}", dst.url);
        let first = bounded(&scratch, &migrate_args(&src.url, &first_to, &state, &[]), &[], limit).await;
        first.assert_ok();
        assert_eq!(first.json()["counts"]["tags_copied"], 30, "round {round}: {}", first.stdout);
        let second_to = format!("{}/r{round}-again", dst.url);
        let mut extra = Vec::new();
        for r in &repos[..3] {
            extra.extend(["--repo", r.as_str()]);
        }
        let second = bounded(&scratch, &migrate_args(&src.url, &second_to, &state, &extra), &[], limit).await;
        second.assert_ok();
        assert_eq!(second.json()["counts"]["tags_copied"], 15, "round {round}: {}", second.stdout);
        assert!(!second.stderr.contains("pool timed out"), "round {round}: {}", second.stderr);
        assert_eq!(assert_mirrored(&s, &d, &repos[..3].to_vec(), &format!("r{round}-again")).await, 15);
    }
}

/// A few hundred tags across two dozen repositories, every one named with
/// `--repo`, after a first run in the same state (it stuck at 3/282).
#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_tags_named_with_repo_after_a_first_run() {
    let (src, dst, s, d) = registries();
    let spec = testkit::dataset::Spec { base_layer_size: 4096, repo_layer_size: 2048, tag_layer_size: 1024, ..plain_images(24, 11) };
    let pushed = testkit::dataset::fill(&s, &spec).await;
    let repos = repos_of(&pushed);
    assert_eq!(pushed.len(), 264);
    let scratch = Scratch::new();
    let state = scratch.state();
    let limit = Duration::from_secs(180);
    let first_to = format!("{}/first", dst.url);
    bounded(&scratch, &migrate_args(&src.url, &first_to, &state, &["--repo", &repos[0]]), &[], limit).await.assert_ok();
    let to = format!("{}/named", dst.url);
    let mut extra = Vec::new();
    for r in &repos {
        extra.extend(["--repo", r.as_str()]);
    }
    let run = bounded(&scratch, &migrate_args(&src.url, &to, &state, &extra), &[], limit).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], 264, "{}", run.stdout);
    assert_eq!(assert_mirrored(&s, &d, &repos, "named").await, 264);
}

/// Two migrates started at once on one state file: the second waits for
/// the first's lease, then finds the job done (or resumes it); both end,
/// and no execution is left `running`.
#[tokio::test(flavor = "multi_thread")]
async fn two_migrates_at_once_on_one_state_file_both_end() {
    let (src, dst, s, d) = registries();
    let pushed = testkit::dataset::fill(&s, &plain_images(6, 5)).await;
    let scratch = Scratch::new();
    let state = scratch.state();
    let limit = Duration::from_secs(120);
    for round in 0..rounds(2) {
        let to = format!("{}/twice{round}", dst.url);
        let args = migrate_args(&src.url, &to, &state, &[]);
        let (a, b) = tokio::join!(bounded(&scratch, &args, &[], limit), bounded(&scratch, &args, &[], limit));
        a.assert_ok();
        b.assert_ok();
        // (The second planned before it waited for the lease, so it may
        // push what the first already did: same digests.)
        for run in [&a, &b] {
            assert_eq!(run.json()["counts"]["tags_failed"], 0, "{}", run.stdout);
        }
        assert_eq!(assert_mirrored(&s, &d, &repos_of(&pushed), &format!("twice{round}")).await, 30);
    }
    let list = bounded(&scratch, &["jobs", "list", "--state", &state, "--json"], &[], Duration::from_secs(30)).await;
    list.assert_ok();
    let running: Vec<_> = list.json().as_array().expect("rows").iter().filter(|r| r["status"] == "running").cloned().collect();
    assert!(running.is_empty(), "executions left running: {running:?}");
}

/// A state file that is not a database fails `migrate` and `jobs list` at
/// once, with one line (it used to be retried for minutes).
#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_state_file_fails_at_once_with_one_line() {
    let (src, dst, _s, _d) = registries();
    let scratch = Scratch::new();
    let state = scratch.path("garbage.db");
    std::fs::write(&state, vec![0x5au8; 16 * 1024]).expect("write garbage");
    let state = state.to_string_lossy().into_owned();
    for args in [vec!["jobs", "list", "--state", state.as_str()], vec!["migrate", "--from", &src.url, "--to", &dst.url, "--state", state.as_str()]] {
        let started = Instant::now();
        let run = bounded(&scratch, &args, &[], Duration::from_secs(30)).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?} took {:?}", started.elapsed());
        assert_ne!(run.code, 0);
        let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line:\n{}", run.stderr);
        assert!(lines[0].contains("file is not a database") && lines[0].contains("garbage.db"), "{}", run.stderr);
    }
}

/// Sequential migrates, each on a fresh PostgreSQL database, of a data set
/// with indexes and signatures at default concurrency: each one ends, and
/// quickly (one of three stuck for minutes before the fix).
#[tokio::test(flavor = "multi_thread")]
async fn repeated_migrates_on_fresh_postgres_databases() {
    let pg = TestPostgres::start();
    let (src, dst, s, d) = registries();
    let spec = testkit::dataset::Spec { repos: 4, tags_per_repo: 6, ..testkit::dataset::Spec::default() };
    let pushed = testkit::dataset::fill(&s, &spec).await;
    let repos = repos_of(&pushed);
    let scratch = Scratch::new();
    for round in 0..rounds(3) {
        let url = pg.database();
        let to = format!("{}/pg{round}", dst.url);
        let started = Instant::now();
        let run = bounded(&scratch, &migrate_args(&src.url, &to, &url, &[]), &[], Duration::from_secs(60)).await;
        run.assert_ok();
        assert!(!run.stderr.contains("pool timed out"), "round {round}: {}", run.stderr);
        assert_mirrored(&s, &d, &repos, &format!("pg{round}")).await;
        eprintln!("postgres migrate {round}: {:?}", started.elapsed());
    }
}

/// A second worker whose clock runs 60 s ahead (`faketime -f '+60s'`)
/// takes no live lease: it waits for the first, whose lease the database's
/// clock says is live.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_with_its_clock_ahead_takes_no_live_lease() {
    if std::process::Command::new("faketime").arg("--version").output().is_err() {
        panic!("faketime is not installed (scripts/deps.sh --test installs Debian's faketime)");
    }
    let pg = TestPostgres::start();
    let url = pg.database();
    let (src, dst, s, d) = registries();
    let pushed = testkit::dataset::fill(&s, &testkit::dataset::Spec { tag_layer_size: 384 * 1024, ..plain_images(2, 3) }).await;
    let scratch = Scratch::new();
    let to = format!("{}/ahead", dst.url);
    // Slow enough to hold the job for a while.
    let mut args = migrate_args(&src.url, &to, &url, &["--to-bandwidth", "200KiB", "--lease-time", "3s", "--concurrency", "1"]);
    let mut first = command(&scratch, &args, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the first");
    let db = url.rsplit('/').next().unwrap_or("regferry").to_string();
    wait_until(Duration::from_secs(30), "the first worker to hold the job", async || {
        count(&pg, &db, "SELECT COUNT(*) FROM tasks WHERE status = 'running'") > 0
    })
    .await;
    let holder = pg.psql(&db, "SELECT holder FROM leases").trim().to_string();
    let binary = crate::support::binary();
    args.insert(0, binary);
    let mut ahead = tokio::process::Command::new("faketime");
    ahead
        .arg("-f")
        .arg("+60s")
        .args(&args)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("HOME", scratch.dir.path())
        .env("DOCKER_CONFIG", scratch.path("none"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let second = ahead.spawn().expect("start the worker under faketime");
    // Several lease times: the lease and the claims stay the first's.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(pg.psql(&db, "SELECT holder FROM leases").trim(), holder, "the lease changed hands");
    let others = pg.psql(&db, &format!("SELECT COUNT(*) FROM task_claims WHERE worker <> '{holder}'"));
    assert_eq!(others.trim(), "0", "the worker under faketime claimed a live task");
    let out = tokio::time::timeout(Duration::from_secs(120), second.wait_with_output()).await.expect("the second ends").expect("wait");
    let second_log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(second_log.contains("another worker holds this job"), "{second_log}");
    let status = tokio::time::timeout(Duration::from_secs(60), first.wait()).await.expect("the first ends").expect("wait");
    let mut first_log = String::new();
    if let Some(mut e) = first.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut first_log).await;
    }
    assert!(status.success(), "{first_log}");
    assert!(!first_log.contains("lost the lease"), "{first_log}");
    assert_eq!(assert_mirrored(&s, &d, &repos_of(&pushed), "ahead").await, pushed.len());
}

/// SIGTERM mid-pass on a PostgreSQL state: `migrate` ends within its
/// grace (30 s) and a few seconds, recording what it did.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_pass_on_postgres_ends_within_the_grace() {
    let pg = TestPostgres::start();
    let url = pg.database();
    let (src, dst, s, _d) = registries();
    let spec = testkit::dataset::Spec { tag_layer_size: 128 * 1024, ..plain_images(3, 4) };
    testkit::dataset::fill(&s, &spec).await;
    let scratch = Scratch::new();
    let to = format!("{}/term", dst.url);
    let args = migrate_args(&src.url, &to, &url, &["--to-bandwidth", "150KiB"]);
    let mut child = command(&scratch, &args, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start");
    let db = url.rsplit('/').next().unwrap_or("regferry").to_string();
    wait_until(Duration::from_secs(30), "a tag copied", async || count(&pg, &db, "SELECT COUNT(*) FROM tasks WHERE status = 'succeeded'") > 0).await;
    let pid = child.id().expect("pid") as libc::pid_t;
    let signalled = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(45), child.wait()).await.expect("migrate ends after SIGTERM").expect("wait");
    assert!(signalled.elapsed() < Duration::from_secs(40), "{:?}", signalled.elapsed());
    assert_ne!(status.code(), None, "ended by itself, not killed");
    let running = pg.psql(&db, "SELECT COUNT(*) FROM executions WHERE status = 'running'");
    assert_eq!(running.trim(), "0", "the execution was closed");
}

/// PostgreSQL goes away and comes back: the daemon survives, `/readyz`
/// answers 503 (quickly) during the outage and 200 after it; a one-shot
/// command fails within a bounded time with one line naming the database,
/// the password masked.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_outage_is_survived_by_the_daemon_and_fails_a_command_in_bounded_time() {
    let pg = TestPostgres::start();
    let url = pg.database();
    let (src, dst, s, d) = registries();
    crate::policies::push_tags(&s, "team/app", &["v1"], "app").await;
    let scratch = Scratch::new();
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: mirror\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ interval: 2s }}\n", src.url, dst.url),
    );
    let port = testkit::free_port();
    let log = scratch.path("daemon.log");
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = command(&scratch, &["daemon", "--policies", &policies, "--listen", &listen, "--state", &url], &[]);
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
    let daemon = cmd.spawn().expect("start daemon");
    wait_until(Duration::from_secs(30), "the first pass to copy v1", async || d.head("team/app", "v1").await.is_some()).await;
    let ready = async || {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        match client.get(format!("http://127.0.0.1:{port}/readyz")).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    };
    assert_eq!(ready().await, 200);

    pg.stop();
    let asked = Instant::now();
    assert_eq!(ready().await, 503, "not ready while the database is down");
    assert!(asked.elapsed() < Duration::from_secs(5), "/readyz took {:?}", asked.elapsed());
    let started = Instant::now();
    let run = bounded(&scratch, &["jobs", "list", "--state", &url], &[], Duration::from_secs(60)).await;
    assert_ne!(run.code, 0);
    assert!(started.elapsed() < Duration::from_secs(30), "jobs list took {:?}", started.elapsed());
    let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{}", run.stderr);
    let db = url.rsplit('/').next().unwrap_or_default();
    assert!(lines[0].contains(&format!("postgres://regferry:***@127.0.0.1:{}/{db}", pg.port)), "{}", run.stderr);
    assert!(!run.stderr.contains(&pg.password), "{}", run.stderr);
    // A few passes' worth of outage.
    tokio::time::sleep(Duration::from_secs(4)).await;

    pg.restart();
    wait_until(Duration::from_secs(30), "ready again", async || ready().await == 200).await;
    crate::policies::push_tags(&s, "team/app", &["v2"], "app2").await;
    wait_until(Duration::from_secs(60), "a pass after the outage to copy v2", async || d.head("team/app", "v2").await.is_some()).await;
    crate::support::stop_daemon(daemon, &log).await;
}

/// Two daemons share a pass on PostgreSQL (lease 2 s); every tag needs
/// one 3 MiB base layer, so one worker uploads it under its blob fence
/// while the other waits. That worker is frozen (SIGSTOP) for six lease
/// times mid-upload: the other is not blocked (it takes the blob, and the
/// pass, over), and once the frozen one is resumed (SIGCONT) it stops what
/// it lost; the destination ends identical, every stored blob intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_frozen_mid_upload_blocks_nobody_and_corrupts_nothing() {
    let pg = TestPostgres::start();
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap_or_default().to_string();
    let (src, dst, s, d) = registries();
    let spec = testkit::dataset::Spec {
        repos: 3,
        tags_per_repo: 3,
        base_layers: 1,
        base_layer_size: 3 * 1024 * 1024,
        repo_layer_size: 16 * 1024,
        tag_layer_size: 16 * 1024,
        multi_arch_every: 0,
        signatures: false,
        ..testkit::dataset::Spec::default()
    };
    let pushed = testkit::dataset::fill(&s, &spec).await;
    let scratch = Scratch::new();
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: shared\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    bytes_per_second: 1MiB\n\
             trigger: {{ interval: 1h }}\nconcurrency: 2\n",
            src.url, dst.url
        ),
    );
    let start = |id: &str| {
        let mut cmd = command(&scratch, &["daemon", "--policies", &policies, "--state", &url, "--listen", &format!("127.0.0.1:{}", testkit::free_port())], &[]);
        cmd.args(["--worker-id", id, "--lease-time", "2s"]).stdout(Stdio::null()).stderr(std::fs::File::create(scratch.path(&format!("{id}.log"))).expect("log"));
        cmd.spawn().expect("start daemon")
    };
    let mut workers = vec![("w1", start("w1")), ("w2", start("w2"))];
    let mut fenced = String::new();
    wait_until(Duration::from_secs(30), "a worker to upload the base layer under its fence", async || {
        if count(&pg, &db, "SELECT COUNT(*) FROM blob_fences") == 0 {
            return false;
        }
        fenced = pg.psql(&db, "SELECT holder FROM blob_fences LIMIT 1").trim().to_string();
        !fenced.is_empty()
    })
    .await;
    let frozen = workers.iter().position(|(id, _)| *id == fenced).expect("one of ours holds the fence");
    let other = workers[1 - frozen].0;
    let pid = workers[frozen].1.id().expect("pid") as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stopped = Instant::now();
    // The other worker gets on with it while the first is frozen.
    // (Fence expiry 2 s, then 3 MiB at 1 MiB/s: ~5 s on a quiet machine.)
    wait_until(Duration::from_secs(40), "the other worker to finish a task while the first is frozen", async || {
        count(&pg, &db, &format!("SELECT COUNT(*) FROM task_claims WHERE worker = '{other}' AND ended_at IS NOT NULL")) > 0
    })
    .await;
    let progress = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(stopped.elapsed())).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_until(Duration::from_secs(90), "every tag at the destination", async || {
        let mut all = true;
        for p in &pushed {
            all &= d.head(&p.repo, &p.tag).await.is_some();
        }
        all
    })
    .await;
    assert_eq!(assert_mirrored(&s, &d, &repos_of(&pushed), "").await, pushed.len());
    assert!(crate::support::assert_blobs_intact(&dst.storage()) > 0);
    eprintln!("the other worker finished a task {progress:?} after the freeze");
    for (id, child) in workers.drain(..) {
        crate::support::stop_daemon(child, &scratch.path(&format!("{id}.log"))).await;
    }
    assert_eq!(count(&pg, &db, "SELECT COUNT(*) FROM executions WHERE status = 'running'"), 0);
}

/// SIGTERM to a daemon mid-pass on a PostgreSQL state: it exits 0 within
/// its grace (`--grace 3s`) and a few seconds, and leaves no execution
/// `running` with a live lease (its lease is released).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_a_daemon_mid_pass_on_postgres_ends_within_the_grace() {
    let MidPass { pg, db, log, mut daemon, .. } = daemon_mid_pass("3s").await;
    assert!(count(&pg, &db, "SELECT COUNT(*) FROM tasks WHERE status IN ('pending', 'running')") > 0, "still mid-pass");
    let pid = daemon.id().expect("pid") as libc::pid_t;
    let signalled = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await.expect("the daemon ends after SIGTERM").expect("wait");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(took < Duration::from_secs(3 + 5), "stopping took {took:?}");
    assert_eq!(count(&pg, &db, "SELECT COUNT(*) FROM leases WHERE expires_at > 0"), 0, "its lease was released");
}

/// The PostgreSQL server and every backend process of the cluster.
fn cluster_pids(pg: &TestPostgres) -> Vec<libc::pid_t> {
    let pidfile = std::fs::read_to_string(pg.dir().join("data/postmaster.pid")).expect("postmaster.pid");
    let main: libc::pid_t = pidfile.lines().next().and_then(|l| l.trim().parse().ok()).expect("postmaster pid");
    let mut pids = vec![main];
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid …: the fields after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<libc::pid_t>().ok());
        if ppid == Some(main) {
            pids.push(pid);
        }
    }
    pids
}

/// SIGTERM to a daemon whose PostgreSQL server is frozen (SIGSTOP: it
/// accepts connections and never answers): the daemon still ends within
/// its grace and the 10 s after it, whatever the database does.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_daemon_even_when_the_database_hangs() {
    let MidPass { pg, log, mut daemon, .. } = daemon_mid_pass("1s").await;
    let frozen = cluster_pids(&pg);
    for pid in &frozen {
        // SAFETY: stopping processes of the cluster this test started.
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = daemon.id().expect("pid") as libc::pid_t;
    let signalled = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), daemon.wait()).await;
    let took = signalled.elapsed();
    for pid in &frozen {
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGCONT) };
    }
    let status = status.expect("the daemon ends after SIGTERM though its database hangs").expect("wait");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(took < Duration::from_secs(1 + 10 + 4), "stopping took {took:?}\n{text}");
    assert!(matches!(status.code(), Some(0) | Some(130)), "{status:?}\n{text}");
    eprintln!("the daemon ended {took:?} after SIGTERM with its database frozen ({status:?})");
}

/// Two daemons that are both PID 1 (each in a PID namespace of its own,
/// `unshare --pid --fork`) on one host and one PostgreSQL state have
/// different worker ids (`HOST:1:RANDOM`), so one holds the pass and the
/// other does not mistake it for itself. Skipped, saying so, where
/// `unshare` cannot make a PID namespace (not root).
#[tokio::test(flavor = "multi_thread")]
async fn two_workers_with_the_same_pid_have_different_ids() {
    let probe = std::process::Command::new("unshare").args(["--pid", "--fork", "true"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED two_workers_with_the_same_pid_have_different_ids: `unshare --pid --fork` is not possible here ({probe:?})");
        return;
    }
    let pg = TestPostgres::start();
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap_or_default().to_string();
    let (src, dst, s, _d) = registries();
    let spec = testkit::dataset::Spec { tag_layer_size: 256 * 1024, ..plain_images(3, 4) };
    testkit::dataset::fill(&s, &spec).await;
    let scratch = Scratch::new();
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: shared\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    bytes_per_second: 300KiB\ntrigger: {{ interval: 1h }}\nconcurrency: 1\n",
            src.url, dst.url
        ),
    );
    let mut daemons = Vec::new();
    for n in 0..2 {
        let log = scratch.path(&format!("d{n}.log"));
        let listen = format!("127.0.0.1:{}", testkit::free_port());
        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", "--"])
            .arg(crate::support::binary())
            .args(["daemon", "--policies", &policies, "--state", &url, "--listen", &listen, "--lease-time", "3s"])
            .env("DOCKER_CONFIG", scratch.path("none"))
            .env("HOME", scratch.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .kill_on_drop(true);
        daemons.push(cmd.spawn().expect("start a daemon in its own PID namespace"));
    }
    let mut workers = Vec::new();
    wait_until(Duration::from_secs(40), "both daemons to claim tasks", async || {
        if count(&pg, &db, "SELECT COUNT(*) FROM task_claims") == 0 {
            return false;
        }
        workers = pg.psql(&db, "SELECT DISTINCT worker FROM task_claims ORDER BY worker").lines().map(str::to_string).collect();
        workers.len() >= 2
    })
    .await;
    for w in &workers {
        let mut parts = w.rsplitn(3, ':');
        let (unique, pid) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        assert_eq!(pid, "1", "each daemon is PID 1 in its namespace: {workers:?}");
        assert_eq!(unique.len(), 6, "{workers:?}");
    }
    assert_eq!(pg.psql(&db, "SELECT COUNT(*) FROM leases WHERE expires_at > 0 AND name NOT LIKE 'daemon|%'").trim(), "1", "one holder of the pass (the daemons' shared-series lease aside)");
    let overlapping = pg.psql(
        &db,
        "SELECT COUNT(*) FROM task_claims a JOIN task_claims b ON a.task_id = b.task_id AND a.id < b.id \
         WHERE a.worker <> b.worker AND (a.ended_at IS NULL OR a.ended_at > b.claimed_at)",
    );
    assert_eq!(overlapping.trim(), "0", "no task claimed by both at once");
    for mut d in daemons {
        let _ = d.start_kill();
        let _ = d.wait().await;
    }
}

/// A daemon on a fresh PostgreSQL state (`--grace GRACE`) in the middle of a
/// slow pass (200 KiB/s to the destination): at least one tag copied.
struct MidPass {
    pg: TestPostgres,
    db: String,
    log: std::path::PathBuf,
    daemon: tokio::process::Child,
    _registries: (testkit::TestRegistry, testkit::TestRegistry, testkit::Registry, testkit::Registry),
    _scratch: Scratch,
}

async fn daemon_mid_pass(grace: &str) -> MidPass {
    let pg = TestPostgres::start();
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap_or_default().to_string();
    let (src, dst, s, d) = registries();
    let spec = testkit::dataset::Spec { tag_layer_size: 256 * 1024, ..plain_images(3, 4) };
    testkit::dataset::fill(&s, &spec).await;
    let scratch = Scratch::new();
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: slow\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    bytes_per_second: 200KiB\ntrigger: {{ interval: 1h }}\n",
            src.url, dst.url
        ),
    );
    let log = scratch.path("daemon.log");
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let mut cmd = command(&scratch, &["daemon", "--policies", &policies, "--state", &url, "--listen", &listen, "--grace", grace], &[]);
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log"));
    let daemon = cmd.spawn().expect("start daemon");
    wait_until(Duration::from_secs(30), "a tag copied", async || count(&pg, &db, "SELECT COUNT(*) FROM tasks WHERE status = 'succeeded'") > 0).await;
    MidPass { pg, db, log: log.into(), daemon, _registries: (src, dst, s, d), _scratch: scratch }
}
