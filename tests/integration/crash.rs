//! `kill -9` of `migrate` and of the daemon in the middle of a transfer,
//! for real: the state database survives, the destination never holds a tag
//! with missing content, and the same command again resumes the same
//! execution and finishes it.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};
use testkit::dataset::{self, Spec};
use testkit::image::{self, Flavor};
use testkit::{FaultProxy, Faults};

use crate::support::{Scratch, assert_blobs_intact, assert_mirrored, command, migrate, migrate_args, registries, repos_of, wait_until};

async fn open(db: &Path, read_only: bool) -> SqliteConnection {
    SqliteConnectOptions::new().filename(db).read_only(read_only).connect().await.expect("open the state database")
}

/// `PRAGMA integrity_check` says "ok".
async fn assert_intact(db: &Path) {
    let mut conn = open(db, false).await;
    let rows = sqlx::query("PRAGMA integrity_check").fetch_all(&mut conn).await.expect("integrity_check");
    let verdict: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    assert_eq!(verdict, vec!["ok".to_string()], "the state database is damaged");
}

/// Status of `repo:tag` in the state database (read-only, while regferry
/// may be writing), if recorded yet.
async fn task_status(db: &Path, repo: &str, tag: &str) -> Option<String> {
    if !db.exists() {
        return None;
    }
    let mut conn = SqliteConnectOptions::new().filename(db).read_only(true).connect().await.ok()?;
    sqlx::query("SELECT status FROM tasks WHERE source_repo = ? AND tag = ?")
        .bind(repo)
        .bind(tag)
        .fetch_optional(&mut conn)
        .await
        .ok()
        .flatten()
        .map(|r| r.get::<String, _>(0))
}

/// Tasks by status.
async fn statuses(db: &Path) -> std::collections::BTreeMap<String, i64> {
    let mut conn = open(db, false).await;
    sqlx::query("SELECT status, COUNT(*) FROM tasks GROUP BY status")
        .fetch_all(&mut conn)
        .await
        .expect("tasks")
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect()
}

/// Start `regferry migrate`, wait until `ready`, then SIGKILL it.
async fn run_and_kill(scratch: &Scratch, args: &[String], ready: impl AsyncFnMut() -> bool, what: &str) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = command(scratch, &args, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start regferry");
    wait_until(Duration::from_secs(60), what, ready).await;
    child.start_kill().expect("kill -9");
    let status = child.wait().await.expect("reap regferry");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "regferry must die by SIGKILL, not finish: {status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_transfer_then_the_same_command_resumes_and_finishes() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &Spec { repos: 3, tags_per_repo: 2, multi_arch_every: 2, ..Spec::default() }).await;
    // An 8 MiB layer in the middle of the plan.
    const BIG: u64 = 8 << 20;
    let big = s.push_random_blob("bench/repo-1", "crash-big", BIG).await;
    s.push("bench/repo-1", "v1.9-big", &image::image_with_external_layers(Flavor::Oci, "big", &[(big.clone(), BIG)])).await;
    let total = pushed.len() + 1;

    // The destination proxy holds the big layer's upload mid-body.
    let dp = FaultProxy::start(
        &dst.url,
        Faults { hold: 1.0, only: vec!["PUT ".into(), big.trim_start_matches("sha256:").into()], ..Faults::default() },
    );
    let scratch = Scratch::new();
    let db = scratch.path("state/regferry.db");
    // One tag at a time, so the tags before the big one are done and the
    // ones after it have not started when the kill comes.
    let args = migrate_args(&scratch, &src.url, &dp.url, &["--concurrency", "1"]);

    run_and_kill(
        &scratch,
        &args,
        async || dp.counters.injected("hold") >= 1 && task_status(&db, "bench/repo-1", "v1.9-big").await.as_deref() == Some("running"),
        "the big upload to be in flight",
    )
    .await;
    assert_intact(&db).await;
    let after_kill = statuses(&db).await;
    eprintln!("tasks after kill -9: {after_kill:?}");
    assert_eq!(after_kill.get("running"), Some(&1), "the killed run left its in-flight task running: {after_kill:?}");
    let done = after_kill.get("succeeded").copied().unwrap_or(0);
    assert!(done >= 1 && after_kill.get("pending").copied().unwrap_or(0) >= 1, "killed mid-plan: {after_kill:?}");
    // Whatever the destination holds is complete; the big tag is not there.
    let mut present = 0;
    for repo in repos_of(&pushed) {
        for (tag, (digest, _)) in d.tag_map(&repo).await {
            assert!(d.missing_content(&repo, &digest).await.is_empty(), "{repo}:{tag} points at missing content after the kill");
            present += 1;
        }
    }
    assert_eq!(present, done, "tags at the destination vs tasks recorded as succeeded");
    assert!(d.head("bench/repo-1", "v1.9-big").await.is_none());
    assert!(!d.blob_exists("bench/repo-1", &big).await, "a half-sent blob must not be committed");

    // Second run, killed too: this time between the blobs of a tag and its
    // manifest (repo-2's first manifest push is held).
    dp.release();
    dp.set_faults(Faults { hold: 1.0, only: vec!["PUT /v2/bench/repo-2/manifests/".into()], ..Faults::default() });
    run_and_kill(
        &scratch,
        &args,
        async || dp.counters.injected("hold") >= 2 && task_status(&db, "bench/repo-1", "v1.9-big").await.as_deref() == Some("succeeded"),
        "the resumed run to reach repo-2's manifests",
    )
    .await;
    assert_intact(&db).await;
    assert!(d.head("bench/repo-1", "v1.9-big").await.is_some(), "the big tag was finished by the resumed run");
    assert!(d.missing_content("bench/repo-1", &s.head("bench/repo-1", "v1.9-big").await.expect("source tag").0).await.is_empty());

    // Third run, undisturbed (the held request stays held): resumes the same
    // execution, copies what is left, and the destination is identical.
    dp.set_faults(Faults::default());
    let run = migrate(&scratch, &src.url, &dp.url, &[]).await;
    run.assert_ok();
    let report = run.json();
    assert_eq!(report["resumed"], true);
    assert_eq!(report["execution"], 1, "one execution across the three runs");
    let mut repos = repos_of(&pushed);
    repos.sort();
    assert_eq!(assert_mirrored(&s, &d, &repos, "").await, total);
    assert_intact(&db).await;
    assert_eq!(statuses(&db).await, [("succeeded".to_string(), total as i64)].into_iter().collect());
    let mut conn = open(&db, false).await;
    let row = sqlx::query("SELECT attempts, last_error FROM tasks WHERE tag = 'v1.9-big'").fetch_one(&mut conn).await.expect("task");
    let (attempts, last_error): (i64, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(attempts, 2, "the task left running by the kill was taken back and run once more (last error: {last_error:?})");
    assert!(assert_blobs_intact(&dst.storage()) > 0);
}

/// Status of the only execution, and how many there are.
async fn executions(db: &Path) -> Vec<(i64, String)> {
    let mut conn = open(db, true).await;
    sqlx::query("SELECT id, status FROM executions ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("executions")
        .iter()
        .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_daemon_mid_pass_then_a_restart_finishes_the_same_execution() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &Spec { repos: 2, tags_per_repo: 2, ..Spec::default() }).await;
    const BIG: u64 = 4 << 20;
    let big = s.push_random_blob("bench/repo-1", "crash-big", BIG).await;
    s.push("bench/repo-1", "v1.9-big", &image::image_with_external_layers(Flavor::Oci, "big", &[(big.clone(), BIG)])).await;
    let mut repos = repos_of(&pushed);
    repos.sort();
    let total = pushed.len() + 1;

    // The destination proxy holds the big layer's upload mid-body.
    let dp = FaultProxy::start(
        &dst.url,
        Faults { hold: 1.0, only: vec!["PUT ".into(), big.trim_start_matches("sha256:").into()], ..Faults::default() },
    );
    let scratch = Scratch::new();
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "dr.yaml",
        &format!("name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ interval: 1h }}\nconcurrency: 1\n", src.url, dp.url),
    );
    let db = scratch.path("state/regferry.db");
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let args: Vec<String> =
        ["daemon", "--policies", &policies, "--state", &scratch.state(), "--listen", &listen].iter().map(|s| s.to_string()).collect();

    run_and_kill(
        &scratch,
        &args,
        async || dp.counters.injected("hold") >= 1 && task_status(&db, "bench/repo-1", "v1.9-big").await.as_deref() == Some("running"),
        "the daemon's big upload to be in flight",
    )
    .await;
    assert_intact(&db).await;
    assert_eq!(executions(&db).await, [(1, "running".to_string())], "the killed pass is left running");
    assert!(d.head("bench/repo-1", "v1.9-big").await.is_none());
    assert!(!d.blob_exists("bench/repo-1", &big).await, "a half-sent blob must not be committed");

    // The same command again: its first pass takes the killed execution back
    // and finishes it.
    dp.release();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = command(&scratch, &argv, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(scratch.path("daemon.log")).expect("log file"))
        .spawn()
        .expect("restart the daemon");
    wait_until(Duration::from_secs(60), "the restarted daemon to finish the killed pass", async || {
        executions(&db).await.first().is_some_and(|(_, status)| status == "succeeded")
    })
    .await;
    assert_eq!(executions(&db).await, [(1, "succeeded".to_string())], "one execution across the kill");
    assert_eq!(statuses(&db).await, [("succeeded".to_string(), total as i64)].into_iter().collect());
    assert_eq!(assert_mirrored(&s, &d, &repos, "").await, total);
    assert!(assert_blobs_intact(&dst.storage()) > 0);

    // SIGTERM: a clean stop, and the database is intact.
    let pid = daemon.id().expect("daemon pid") as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), daemon.wait()).await.expect("daemon stops").expect("reap daemon");
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(scratch.path("daemon.log")).unwrap_or_default());
    assert_intact(&db).await;
}
