//! The state on PostgreSQL (a throwaway cluster from `testkit::postgres`)
//! against real registries: `migrate` and its no-op rerun, `jobs`, a policy
//! `run`, `failover` seen by a second process, the daemon's API and status
//! page; several processes creating one new state at once (SQLite and
//! PostgreSQL); and the password of the URL never shown.

use std::process::Stdio;
use std::time::Duration;

use testkit::{TestPostgres, TestRegistry, free_port};

use crate::policies::{push_tags, write};
use crate::support::{Run, Scratch, assert_mirrored, command, plain_images, regferry, registries, repos_of, wait_until};

/// Neither stream of `run` shows `password`.
fn assert_hidden(run: &Run, password: &str) {
    assert!(!run.stdout.contains(password) && !run.stderr.contains(password), "the password shows:\n{}\n{}", run.stdout, run.stderr);
}

/// `migrate` on a PostgreSQL state, its rerun a no-op, `jobs list/show` reading it.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_and_jobs_on_postgres() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let (src, dst, s, d) = registries();
    let pushed = testkit::dataset::fill(&s, &plain_images(2, 2)).await;
    let scratch = Scratch::new();
    let args = |extra: &[&str]| {
        let mut a = vec!["migrate", "--from", src.url.as_str(), "--to", dst.url.as_str(), "--state", url.as_str(), "--json", "-v"];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let first = regferry(&scratch, &args(&[]).iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    first.assert_ok();
    assert_hidden(&first, &pg.password);
    assert_eq!(first.json()["counts"]["tags_copied"], pushed.len() as u64, "{}", first.stdout);
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;

    let again = regferry(&scratch, &args(&[]).iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    again.assert_ok();
    assert_eq!(again.json()["counts"]["tags_copied"], 0, "{}", again.stdout);

    // The state is in PostgreSQL, not in a file named after the URL.
    assert!(!scratch.path("state").exists() && !std::path::Path::new("postgres:").exists());
    let tasks = pg.psql("regferry", "SELECT COUNT(*) FROM tasks WHERE status = 'succeeded'");
    assert_eq!(tasks.trim(), pushed.len().to_string(), "tasks recorded in PostgreSQL");

    let list = regferry(&scratch, &["jobs", "list", "--state", &url, "--json"], &[]).await;
    list.assert_ok();
    let rows = list.json();
    let id = rows[0]["id"].as_i64().expect("an execution id");
    assert_eq!(rows[0]["kind"], "migrate", "{}", list.stdout);
    let show = regferry(&scratch, &["jobs", "show", &id.to_string(), "--state", &url], &[]).await;
    show.assert_ok();
    assert!(show.stdout.contains("succeeded"), "{}", show.stdout);
    assert_hidden(&list, &pg.password);
    assert_hidden(&show, &pg.password);

    // The operator's requests and housekeeping run on PostgreSQL too.
    let jobs = async |args: &[&str]| {
        let mut a = vec!["jobs"];
        a.extend_from_slice(args);
        a.extend(["--state", url.as_str()]);
        regferry(&scratch, &a, &[]).await
    };
    let retry = jobs(&["retry", "--failed"]).await;
    retry.assert_ok();
    assert!(retry.stdout.contains("no failed executions"), "{}", retry.stdout);
    let cancel = jobs(&["cancel", &id.to_string()]).await;
    cancel.assert_ok();
    assert!(cancel.stdout.contains("already succeeded"), "{}", cancel.stdout);
    jobs(&["prune", "--older-than", "0s"]).await.assert_ok();
    jobs(&["show", &id.to_string()]).await.assert_ok();
    let missing = jobs(&["show", "999999"]).await;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains(&format!("no execution 999999 in postgres://regferry:***@127.0.0.1:{}/regferry", pg.port)), "{}", missing.stderr);
    assert_hidden(&missing, &pg.password);
}

/// A policy `run`, then `failover`: the direction lives in PostgreSQL, so a
/// second process (and `jobs`) sees it, and the next `run` goes DR → primary.
#[tokio::test(flavor = "multi_thread")]
async fn failover_direction_is_shared_through_postgres() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    let p = testkit::Registry::new(&primary.url, testkit::Access::Anonymous);
    let d = testkit::Registry::new(&dr.url, testkit::Access::Anonymous);
    push_tags(&p, "team/app", &["v1"], "app").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\ntrigger: {{ interval: 1h }}\n", primary.url, dr.url),
    );
    let run = |extra: &'static [&'static str]| {
        let (scratch, policies, url) = (&scratch, policies.clone(), url.clone());
        async move {
            let mut args = vec!["run", "--policies", policies.as_str(), "--state", url.as_str()];
            args.extend_from_slice(extra);
            regferry(scratch, &args, &[]).await
        }
    };
    run(&[]).await.assert_ok();
    assert!(d.head("mirror/team/app", "v1").await.is_some());

    let fo = regferry(&scratch, &["failover", "--policies", &policies, "--state", &url, "--policy", "dr"], &[]).await;
    fo.assert_ok();
    assert_hidden(&fo, &pg.password);
    assert_eq!(pg.psql("regferry", "SELECT reversed FROM policy_direction WHERE policy = 'dr'").trim(), "1");

    // Another process, another scratch directory: only PostgreSQL is shared.
    let elsewhere = Scratch::new();
    push_tags(&d, "mirror/team/app", &["v2"], "dr").await;
    let reversed = regferry(&elsewhere, &["run", "--policies", &policies, "--state", &url, "--json"], &[]).await;
    reversed.assert_ok();
    assert_eq!(reversed.json()[0]["destinations"][0]["reversed"], true, "{}", reversed.stdout);
    assert_eq!(p.head("team/app", "v2").await, d.head("mirror/team/app", "v2").await, "replicated DR → primary");
    let list = regferry(&elsewhere, &["jobs", "list", "--policy", "dr", "--state", &url, "--json"], &[]).await;
    list.assert_ok();
    assert_eq!(list.json()[0]["direction"], "reversed", "{}", list.stdout);
    let verify = regferry(&elsewhere, &["verify", "--policies", &policies, "--state", &url, "--json"], &[]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert_eq!(verify.json()["lag"][0]["direction"], "reversed", "{}", verify.stdout);
}

/// The daemon on a PostgreSQL state: it runs a pass, and its readiness,
/// API, metrics and status page read PostgreSQL and never show the password.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_serves_from_postgres_without_showing_the_password() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let (src, dst, s, d) = registries();
    push_tags(&s, "team/app", &["v1"], "app").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: mirror\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ interval: 1h }}\n", src.url, dst.url),
    );
    let port = free_port();
    let log = scratch.path("daemon.log");
    let listen = format!("127.0.0.1:{port}");
    // Through the environment, as a deployment would pass it.
    let mut cmd = command(&scratch, &["daemon", "--policies", &policies, "--listen", &listen, "-v"], &[("REGFERRY_STATE", &url)]);
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
    let daemon = cmd.spawn().expect("start daemon");
    wait_until(Duration::from_secs(30), "the first pass to copy v1", async || d.head("team/app", "v1").await.is_some()).await;
    let get = async |path: &str| {
        let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.expect("request");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    };
    wait_until(Duration::from_secs(30), "the pass to be recorded", async || {
        get("/api/v1/policies").await.1.contains("succeeded")
    })
    .await;
    for path in ["/readyz", "/api/v1/policies", "/metrics", "/"] {
        let (code, body) = get(path).await;
        assert_eq!(code, 200, "{path}: {body}");
        assert!(!body.contains(&pg.password), "{path} shows the password");
    }
    let log_text = crate::support::stop_daemon(daemon, &log).await;
    assert!(!log_text.contains(&pg.password), "the daemon logged the password:\n{log_text}");
    assert!(log_text.contains("postgres://regferry:***@127.0.0.1"), "the daemon names its state, redacted:\n{log_text}");
}

/// Six processes opening one new state at once all succeed: a new SQLite
/// file (no "database is locked", no "table executions already exists")
/// and an empty PostgreSQL database (the migrator's advisory lock).
#[tokio::test(flavor = "multi_thread")]
async fn six_processes_create_one_new_state_at_once() {
    let pg = TestPostgres::start();
    let scratch = Scratch::new();
    let sqlite = scratch.path("new/state.db").to_string_lossy().into_owned();
    for state in [sqlite, pg.database()] {
        let runs: Vec<_> = (0..6).map(|_| command(&scratch, &["jobs", "list", "--state", &state, "--json"], &[]).output()).collect();
        for out in futures::future::join_all(runs).await {
            let out = out.expect("run regferry");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "a concurrent open failed: {stderr}");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "{stderr}");
        }
    }
    let applied = pg.psql("db0", "SELECT COUNT(*) FROM _sqlx_migrations");
    assert_eq!(applied.trim(), "4", "each migration applied once");
}

/// A wrong password, a bad URL and `--help` with the URL in the
/// environment: the password is never shown, the URL is (redacted).
#[tokio::test(flavor = "multi_thread")]
async fn the_password_of_a_postgres_state_is_never_shown() {
    let pg = TestPostgres::start();
    let scratch = Scratch::new();
    let wrong = pg.url().replace(&pg.password, "wrong-secret-42");
    let run = regferry(&scratch, &["jobs", "list", "--state", &wrong], &[]).await;
    assert_ne!(run.code, 0);
    assert_hidden(&run, "wrong-secret-42");
    assert!(run.stderr.contains(&format!("postgres://regferry:***@127.0.0.1:{}/regferry", pg.port)), "{}", run.stderr);
    assert!(run.stderr.contains("password authentication failed"), "{}", run.stderr);

    let bad = regferry(&scratch, &["jobs", "list", "--state", "postgres://u:bad-url-secret@/db"], &[]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert_hidden(&bad, "bad-url-secret");

    let url = pg.url();
    let help = regferry(&scratch, &["jobs", "list", "--help"], &[("REGFERRY_STATE", &url)]).await;
    help.assert_ok();
    assert_hidden(&help, &pg.password);
    let list = regferry(&scratch, &["jobs", "list", "-vv"], &[("REGFERRY_STATE", &url)]).await;
    list.assert_ok();
    assert_hidden(&list, &pg.password);

    // The password can stay out of the URL: PGPASSWORD, as libpq reads it.
    let bare = format!("postgres://regferry@127.0.0.1:{}/regferry", pg.port);
    regferry(&scratch, &["jobs", "list", "--state", &bare], &[("PGPASSWORD", &pg.password)]).await.assert_ok();
    let without = regferry(&scratch, &["jobs", "list", "--state", &bare], &[]).await;
    assert_ne!(without.code, 0, "no password, no connection: {}", without.stderr);
}
