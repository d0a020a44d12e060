//! Operating the daemon: the HTTP API behind read-only and admin tokens,
//! its OpenAPI document, the status page in headless Chromium, and webhook
//! notifications received by a real HTTP server in the test — all against
//! a running daemon and real registries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{Registry, TestRegistry, free_port};

use crate::policies::{push_tags, write};
use crate::support::{Scratch, binary, daemon_command, regferry, registries, stop_daemon, wait_until};

const ADMIN: &str = "admin-7f3c9e1d5b";
const READER: &str = "reader-2a8e4c6f0d";
const HOOK_SECRET: &str = "T000-B000-hooksecret-91b7";

/// A webhook receiver: records every POST body by path.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let record = got.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::post(move |axum::extract::Path(path): axum::extract::Path<String>, body: axum::body::Bytes| {
                let record = record.clone();
                async move {
                    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    record.lock().expect("lock").push((path, value));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, got, server }
    }

    /// The bodies received at paths starting with `prefix`.
    fn at(&self, prefix: &str) -> Vec<Value> {
        self.got.lock().expect("lock").iter().filter(|(p, _)| p.starts_with(prefix)).map(|(_, v)| v.clone()).collect()
    }

    fn events(&self, prefix: &str) -> Vec<String> {
        self.at(prefix).iter().map(|v| v["event"].as_str().unwrap_or("?").to_string()).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A running daemon with its port, log and state.
struct Daemon {
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
    state: String,
}

impl Daemon {
    fn start(scratch: &Scratch, policies: &str, env: &[(&str, &str)], extra: &[&str]) -> Daemon {
        let port = free_port();
        let mut cmd = daemon_command(scratch, policies, port);
        cmd.args(extra).env_remove("RUST_LOG").envs(env.iter().copied());
        Daemon { child: cmd.spawn().expect("start daemon"), port, log: scratch.path("daemon.log"), state: scratch.state() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Passes finished so far (one log line per destination and pass).
    fn passes(&self) -> usize {
        self.log().lines().filter(|l| l.contains("pass finished")).count()
    }

    async fn wait_passes(&self, n: usize, what: &str) {
        wait_until(Duration::from_secs(30), what, async || self.passes() >= n).await;
    }

    async fn stop(self) -> String {
        stop_daemon(self.child, &self.log).await
    }
}

/// `method path` with an optional bearer token; (status, body as JSON or string).
async fn call(method: reqwest::Method, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let code = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn get(d: &Daemon, path: &str, token: Option<&str>) -> (u16, Value) {
    call(reqwest::Method::GET, &d.url(path), token, None).await
}

async fn post(d: &Daemon, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    call(reqwest::Method::POST, &d.url(path), token, body).await
}

/// Push `good` and `broken` to `svc/api` and break `broken` behind the
/// registry's back (its layer's data moved away). Returns where the data
/// went and where it belongs, to put it back.
async fn broken_source(src: &TestRegistry, s: &Registry) -> (PathBuf, PathBuf) {
    push_tags(s, "svc/api", &["good", "broken"], "api").await;
    let (bytes, _) = s.get_manifest("svc/api", "broken").await.expect("manifest");
    let manifest: Value = serde_json::from_slice(&bytes).expect("json");
    let layer = manifest["layers"][0]["digest"].as_str().expect("layer digest").trim_start_matches("sha256:").to_string();
    let data = src.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{layer}", &layer[..2]));
    let aside = src.storage().join(format!("aside-{layer}"));
    std::fs::rename(&data, &aside).expect("move blob data away");
    (aside, data)
}

#[tokio::test(flavor = "multi_thread")]
async fn api_tokens_errors_retry_run_now_and_notifications() {
    let (src, dst, s, d) = registries();
    let (aside, data) = broken_source(&src, &s).await;
    let hooks = Receiver::start().await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "ops.yaml",
        &format!(
            "name: ops\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ interval: 1h }}\n\
             retry: {{ attempts: 1, backoff: 1h }}\n\
             notify:\n  - url_env: HOOK_JSON\n  - url_env: HOOK_SLACK\n    format: slack\n",
            src.url, dst.url
        ),
    );
    let json_hook = format!("http://{}/json/{HOOK_SECRET}", hooks.addr);
    let slack_hook = format!("http://{}/slack/{HOOK_SECRET}", hooks.addr);
    let env = [("REGFERRY_API_TOKEN", ADMIN), ("REGFERRY_API_READ_TOKEN", READER), ("HOOK_JSON", json_hook.as_str()), ("HOOK_SLACK", slack_hook.as_str())];
    let daemon = Daemon::start(&scratch, &policies, &env, &[]);
    daemon.wait_passes(1, "the first pass").await;

    // Tokens: none or a wrong one → 401; read-only may read but not act → 403; admin may act.
    assert_eq!(get(&daemon, "/api/v1/policies", None).await.0, 401);
    assert_eq!(get(&daemon, "/api/v1/policies", Some("not-a-token")).await.0, 401);
    assert_eq!(get(&daemon, "/api/v1/policies", Some(ADMIN)).await.0, 200);
    let (code, list) = get(&daemon, "/api/v1/policies", Some(READER)).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(post(&daemon, "/api/v1/policies/ops/run", Some(READER), None).await.0, 403);
    assert_eq!(post(&daemon, "/api/v1/policies/ops/run", None, None).await.0, 401);
    assert_eq!(post(&daemon, "/api/v1/executions/1/retry", Some("nope"), None).await.0, 401);
    assert_eq!(get(&daemon, "/api/v1/executions/999999", Some(READER)).await.0, 404);
    assert_eq!(post(&daemon, "/api/v1/policies/nope/run", Some(ADMIN), None).await.0, 404);
    // Push events take the same tokens.
    let envelope = json!({ "events": [] });
    assert_eq!(post(&daemon, "/events/distribution", None, Some(envelope.clone())).await.0, 401);
    assert_eq!(post(&daemon, "/events/distribution", Some(READER), Some(envelope)).await.0, 202);
    // Probes and metrics stay open.
    assert_eq!(get(&daemon, "/healthz", None).await.0, 200);

    // The policy: forward, ran, failing, with its failing tag.
    let p = &list[0];
    assert_eq!((p["name"].as_str(), p["direction"].as_str(), p["failing_tags"].as_i64()), (Some("ops"), Some("forward"), Some(1)), "{list}");
    assert_eq!(p["health"]["failing"], true, "{list}");
    assert!(p["last_pass_at"].as_i64().is_some() && p["lag_seconds"].as_f64().is_some_and(|l| l > 0.0), "{list}");
    assert!(p["outstanding_tags"].as_i64() >= Some(1), "{list}");

    // Executions and tasks: the failed tag with the registry's exact error,
    // the same text the jobs CLI shows.
    let (code, execs) = get(&daemon, "/api/v1/executions?policy=ops&status=failed", Some(READER)).await;
    assert_eq!(code, 200, "{execs}");
    let id = execs[0]["id"].as_i64().expect("a failed execution");
    assert_eq!(execs[0]["tasks"]["failed"], 1, "{execs}");
    let (code, tasks) = get(&daemon, &format!("/api/v1/executions/{id}/tasks?status=failed"), Some(READER)).await;
    assert_eq!(code, 200);
    let tasks = tasks.as_array().cloned().unwrap_or_default();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!((tasks[0]["source_repo"].as_str(), tasks[0]["tag"].as_str()), (Some("svc/api"), Some("broken")));
    let error = tasks[0]["last_error"].as_str().expect("an error").to_string();
    assert!(error.contains("BLOB_UNKNOWN"), "{error}");
    let show = regferry(&scratch, &["jobs", "show", &id.to_string(), "--state", &daemon.state, "--json"], &[]).await;
    show.assert_ok();
    let cli = show.json();
    let cli_error = cli["tasks"].as_array().into_iter().flatten().find(|t| t["tag"] == "broken").map(|t| t["last_error"].clone());
    assert_eq!(cli_error, Some(Value::String(error.clone())), "the API shows the exact error the state holds");
    let (_, detail) = get(&daemon, "/api/v1/policies/ops", Some(READER)).await;
    assert_eq!(detail["failing"][0]["last_error"].as_str(), Some(error.as_str()), "{detail}");
    assert_eq!(get(&daemon, &format!("/api/v1/executions/{id}"), Some(READER)).await.1["status"], "failed");

    // More failing passes (run now, twice): still one failure notification.
    for n in [2, 3] {
        assert_eq!(post(&daemon, "/api/v1/policies/ops/run", Some(ADMIN), None).await.0, 202);
        daemon.wait_passes(n, "a pass started through the API").await;
    }
    wait_until(Duration::from_secs(10), "the failure notifications", async || hooks.at("json").len() == 1 && hooks.at("slack").len() == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hooks.events("json"), ["failure"], "one failure notification per failing streak");
    let failure = &hooks.at("json")[0];
    assert_eq!((failure["policy"].as_str(), failure["direction"].as_str()), (Some("ops"), Some("forward")));
    let failures = &failure["destinations"][0]["failures"];
    assert_eq!((failures[0]["tag"].as_str(), failures[0]["error"].as_str()), (Some("broken"), Some(error.as_str())), "{failure}");
    let slack = &hooks.at("slack")[0];
    let text = slack["text"].as_str().unwrap_or_default();
    assert!(slack.as_object().is_some_and(|o| o.len() == 1), "Slack-shaped: just a text: {slack}");
    assert!(text.contains("ops is failing") && text.contains("svc/api:broken") && text.contains("BLOB_UNKNOWN"), "{text}");

    // A restart keeps the streak (it lives in the state database): its first,
    // still failing pass sends nothing new.
    let first_log = daemon.stop().await;
    let daemon = Daemon::start(&scratch, &policies, &env, &[]);
    daemon.wait_passes(1, "the first pass after a restart").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hooks.events("json"), ["failure"], "a restart must not notify the same failing streak again");

    // Fix the source, retry through the API: the same execution succeeds, and
    // the receivers hear of the recovery once.
    std::fs::rename(&aside, &data).expect("put the blob data back");
    let (code, retried) = post(&daemon, &format!("/api/v1/executions/{id}/retry"), Some(ADMIN), None).await;
    assert_eq!((code, retried["queued"].as_i64()), (202, Some(1)), "{retried}");
    wait_until(Duration::from_secs(30), "the retried execution to succeed", async || {
        get(&daemon, &format!("/api/v1/executions/{id}"), Some(READER)).await.1["status"] == "succeeded"
    })
    .await;
    assert_eq!(d.head("svc/api", "broken").await, s.head("svc/api", "broken").await);
    wait_until(Duration::from_secs(10), "the recovery notification", async || hooks.at("json").len() == 2).await;
    let (_, p) = get(&daemon, "/api/v1/policies/ops", Some(READER)).await;
    assert_eq!((p["health"]["failing"].as_bool(), p["failing_tags"].as_i64()), (Some(false), Some(0)), "{p}");

    // Run now, scoped to one repository: only that one is replicated.
    push_tags(&s, "svc/api", &["v2"], "api2").await;
    push_tags(&s, "other/repo", &["v1"], "other").await;
    let before = daemon.passes();
    let (code, reply) = post(&daemon, "/api/v1/policies/ops/run", Some(ADMIN), Some(json!({ "repositories": ["svc/api"] }))).await;
    assert_eq!(code, 202, "{reply}");
    assert_eq!(reply["repositories"], json!(["svc/api"]));
    daemon.wait_passes(before + 1, "the scoped pass").await;
    assert_eq!(d.head("svc/api", "v2").await, s.head("svc/api", "v2").await);
    assert_eq!(d.head("other/repo", "v1").await, None, "a pass scoped to svc/api leaves other repositories alone");
    assert_eq!(post(&daemon, "/api/v1/policies/ops/run", Some(ADMIN), Some(json!({ "repositories": ["../x"] }))).await.0, 400);

    // Cancel of a finished execution says so.
    let (code, cancel) = post(&daemon, &format!("/api/v1/executions/{id}/cancel"), Some(ADMIN), None).await;
    assert_eq!((code, cancel["outcome"].as_str()), (202, Some("finished")), "{cancel}");

    // The OpenAPI document: valid JSON, OpenAPI 3, listing every route this test used.
    let (code, doc) = get(&daemon, "/api/openapi.json", Some(READER)).await;
    assert_eq!(code, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let paths: Vec<&str> = doc["paths"].as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    for served in [
        "/api/openapi.json",
        "/api/v1/policies",
        "/api/v1/policies/{name}",
        "/api/v1/policies/{name}/run",
        "/api/v1/policies/{name}/retry",
        "/api/v1/executions",
        "/api/v1/executions/{id}",
        "/api/v1/executions/{id}/tasks",
        "/api/v1/executions/{id}/retry",
        "/api/v1/executions/{id}/cancel",
        "/events/distribution",
        "/events/harbor",
    ] {
        assert!(paths.contains(&served), "{served} missing from the OpenAPI document: {paths:?}");
    }
    assert_eq!(get(&daemon, "/api/openapi.json", None).await.0, 401);

    let log = daemon.stop().await;
    assert_eq!(hooks.events("json"), ["failure", "recovery"], "no more notifications than the streak's two");
    assert_eq!(hooks.events("slack").len(), 2);
    for secret in [ADMIN, READER, HOOK_SECRET] {
        assert!(!log.contains(secret) && !first_log.contains(secret), "a secret leaked into the log:\n{first_log}\n{log}");
    }
    assert!(log.contains("notification delivered"), "{log}");
}

/// Headless Chromium, as a person's browser would load the page.
fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Chromium is needed for the status page test: scripts/deps.sh installs it (apt-get install chromium)")
}

async fn chromium_run(scratch: &Scratch, args: &[&str]) -> String {
    let profile = scratch.path("chromium-profile");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(chromium())
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
            .args(["--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .env("HOME", scratch.dir.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes within 60 s")
    .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_in_chromium_shows_failing_tags_and_reads_no_registry() {
    let (src, dst, s, _d) = registries();
    let (_aside, _data) = broken_source(&src, &s).await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "mirror.yaml",
        &format!(
            "name: prod-to-dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: dr\n\
             trigger: {{ interval: 1h }}\nretry: {{ attempts: 1, backoff: 1h }}\n",
            src.url, dst.url
        ),
    );
    write(
        &scratch,
        "policies",
        "idle.yaml",
        &format!("name: idle-one\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ cron: '0 3 * * *' }}\n", src.url, dst.url),
    );
    let daemon = Daemon::start(&scratch, &policies, &[("REGFERRY_API_TOKEN", ADMIN), ("REGFERRY_API_READ_TOKEN", READER)], &["--public-status"]);
    daemon.wait_passes(2, "the first passes").await;
    let (_, execs) = get(&daemon, "/api/v1/executions?policy=prod-to-dr", Some(READER)).await;
    let id = execs[0]["id"].as_i64().expect("an execution");

    // From here on the registries must not hear from the daemon while the page is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (src_before, dst_before) = (src.access_lines().len(), dst.access_lines().len());

    let dom = chromium_run(&scratch, &["--dump-dom", &daemon.url("/")]).await;
    assert!(dom.contains("prod-to-dr") && dom.contains("idle-one"), "every policy is listed:\n{dom}");
    assert!(dom.contains("failing"), "{dom}");
    assert!(dom.contains("svc/api:broken") && dom.contains("BLOB_UNKNOWN"), "the failing tag and its error:\n{dom}");
    assert!(dom.contains("http-equiv=\"refresh\""), "the page refreshes itself:\n{dom}");
    let page = chromium_run(&scratch, &["--dump-dom", &daemon.url(&format!("/executions/{id}"))]).await;
    assert!(page.contains("svc/api:broken") && page.contains("BLOB_UNKNOWN"), "{page}");
    assert!(page.contains("Retry 1 failed task(s)") && page.contains("name=\"token\""), "a retry button for the admin token:\n{page}");
    let shot = std::env::var_os("REGFERRY_SCREENSHOT_DIR").map_or_else(|| scratch.path("status.png"), |d| PathBuf::from(d).join("status.png"));
    chromium_run(&scratch, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,1100", &daemon.url("/")]).await;
    if let Some(dir) = std::env::var_os("REGFERRY_SCREENSHOT_DIR") {
        // For a person to look at: the execution page too.
        let page = PathBuf::from(dir).join("execution.png");
        chromium_run(&scratch, &[&format!("--screenshot={}", page.display()), "--window-size=1280,700", &daemon.url(&format!("/executions/{id}"))]).await;
    }
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());

    assert_eq!(src.access_lines().len(), src_before, "the status page must not cause a source registry request");
    assert_eq!(dst.access_lines().len(), dst_before, "the status page must not cause a destination registry request");

    // The retry button: the token must be in the form, and be the admin one.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let retry = |token: &'static str| {
        client
            .post(daemon.url(&format!("/executions/{id}/retry")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    assert_eq!(retry(READER).await.expect("post").status().as_u16(), 403);
    assert_eq!(retry("").await.expect("post").status().as_u16(), 401);
    let ok = retry(ADMIN).await.expect("post");
    assert_eq!(ok.status().as_u16(), 303);
    assert_eq!(ok.headers().get("location").and_then(|v| v.to_str().ok()), Some(format!("/executions/{id}?retried=1").as_str()));

    daemon.stop().await;

    // Without --public-status the page asks for a token (Basic: any user, the token as password).
    let daemon = Daemon::start(&scratch, &policies, &[("REGFERRY_API_READ_TOKEN", READER)], &[]);
    wait_until(Duration::from_secs(20), "the daemon to listen", async || reqwest::get(daemon.url("/healthz")).await.is_ok()).await;
    let anonymous = reqwest::get(daemon.url("/")).await.expect("get");
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(anonymous.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("Basic")));
    let signed_in = reqwest::Client::new().get(daemon.url("/")).basic_auth("ops", Some(READER)).send().await.expect("get");
    assert_eq!(signed_in.status().as_u16(), 200);
    assert!(signed_in.text().await.unwrap_or_default().contains("prod-to-dr"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_receiver_does_not_slow_replication() {
    let (src, dst, s, d) = registries();
    push_tags(&s, "app/web", &["v1"], "web").await;
    let dead = format!("http://127.0.0.1:{}/hook/{HOOK_SECRET}", free_port());
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: busy\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ interval: 1s }}\n\
             notify:\n  - url_env: DEAD_HOOK\n    events: [success, failure, recovery]\n",
            src.url, dst.url
        ),
    );
    let daemon = Daemon::start(&scratch, &policies, &[("DEAD_HOOK", &dead), ("RUST_LOG", "warn,regferry=debug")], &[]);
    wait_until(Duration::from_secs(30), "the first copy", async || d.head("app/web", "v1").await.is_some()).await;
    // Every pass queues a success notification nobody receives; passes keep their pace.
    let first = daemon.passes();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let passes = daemon.passes() - first;
    assert!(passes >= 3, "passes must keep going every second while deliveries fail: {passes} in 4 s");
    push_tags(&s, "app/web", &["v2"], "web").await;
    wait_until(Duration::from_secs(10), "a new tag", async || d.head("app/web", "v2").await.is_some()).await;
    let log = daemon.stop().await;
    assert!(log.contains("notification failed; retrying"), "deliveries are retried:\n{log}");
    assert!(!log.contains(HOOK_SECRET), "the webhook URL must not be logged:\n{log}");
}

fn repo_file(path: &str) -> String {
    let full = concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + path;
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Run a checker that scripts/deps.sh installs; its output on failure.
fn checker(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed (scripts/deps.sh installs it): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// The `restricted` Pod Security settings of a pod spec and its containers.
fn assert_restricted(pod: &Value, what: &str) {
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{what}: pod runAsNonRoot");
    assert!(psc["runAsUser"].as_i64().is_some_and(|u| u > 0), "{what}: a numeric non-root runAsUser");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{what}: pod seccompProfile");
    assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null() && pod["hostIPC"].is_null(), "{what}: no host namespaces");
    for v in pod["volumes"].as_array().into_iter().flatten() {
        assert!(v["hostPath"].is_null(), "{what}: no hostPath volumes");
    }
    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    assert!(!containers.is_empty(), "{what}: containers");
    for c in &containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}: allowPrivilegeEscalation");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}: readOnlyRootFilesystem");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}: all capabilities dropped");
        assert!(sc["capabilities"]["add"].is_null() && sc["privileged"].is_null(), "{what}: nothing added back");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}: container seccompProfile");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{what}: liveness probe");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{what}: readiness probe");
        let image = c["image"].as_str().unwrap_or_default();
        assert!(!image.ends_with(":latest") && image.contains(':'), "{what}: a pinned image, not {image}");
    }
}

#[test]
fn deployment_files_start_under_the_restricted_level() {
    // Kubernetes manifests: the restricted settings, a Secret for the API
    // tokens, ReadWriteOncePod for SQLite; and valid against the schemas.
    let docs: Vec<Value> = serde_saphyr::from_multiple(&repo_file("deploy/kubernetes/regferry.yaml")).expect("manifests parse");
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).cloned().unwrap_or_else(|| panic!("no {k}"));
    let deploy = kind("Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_restricted(pod, "deploy/kubernetes");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(kind("PersistentVolumeClaim")["spec"]["accessModes"], json!(["ReadWriteOncePod"]));
    let env = &pod["containers"][0]["env"];
    let token_file = env.as_array().into_iter().flatten().find(|e| e["name"] == "REGFERRY_API_TOKEN_FILE").expect("the API token from a file");
    let token_dir = token_file["value"].as_str().and_then(|v| v.rsplit_once('/')).map(|(d, _)| d.to_string()).expect("a path");
    let mount = pod["containers"][0]["volumeMounts"].as_array().into_iter().flatten().find(|m| m["mountPath"] == token_dir.as_str()).expect("mounted");
    let volume = pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == mount["name"]).expect("its volume");
    assert!(volume["secret"]["secretName"].is_string(), "the API tokens come from a Secret: {volume}");
    checker("kubernetes-validate", &["--strict", "--quiet", "deploy/kubernetes/regferry.yaml"]);

    // The image: numeric user, HEALTHCHECK, OCI labels, stripped binary.
    let dockerfile = repo_file("deploy/Dockerfile");
    let user = dockerfile.lines().rfind(|l| l.starts_with("USER ")).expect("a USER line");
    assert!(regex::Regex::new(r"^USER [1-9][0-9]*(:[0-9]+)?$").unwrap().is_match(user), "numeric non-root user: {user}");
    assert!(dockerfile.contains("\nHEALTHCHECK ") && dockerfile.contains("/healthz"));
    for label in ["title", "version", "revision", "licenses", "source"] {
        assert!(dockerfile.contains(&format!("org.opencontainers.image.{label}=")), "OCI label {label}");
    }
    assert!(dockerfile.contains("strip "), "the binary is stripped");

    // systemd: hardened, credentials through LoadCredential=.
    let unit = repo_file("deploy/regferry.service");
    for line in ["CapabilityBoundingSet=\n", "RestrictAddressFamilies=", "SystemCallFilter=@system-service", "LoadCredential=", "NoNewPrivileges=yes", "ProtectSystem=strict"] {
        assert!(unit.contains(line), "regferry.service lacks {line:?}");
    }

    // Alert rules: promtool's check, and the four alerts the issue names.
    checker("promtool", &["check", "rules", "deploy/prometheus/regferry-rules.yaml"]);
    // Their unit tests: several pods reporting the shared-state series alert once.
    checker("promtool", &["test", "rules", "deploy/prometheus/regferry-rules.test.yaml"]);
    let rules: Value = serde_saphyr::from_str(&repo_file("deploy/prometheus/regferry-rules.yaml")).expect("rules parse");
    let alerts: Vec<&str> = rules["groups"][0]["rules"].as_array().into_iter().flatten().filter_map(|r| r["alert"].as_str()).collect();
    for a in ["RegferryDown", "RegferryLagAboveRPO", "RegferryTagsFailing", "RegferryPassesFailing", "RegferrySharedSeriesExporters"] {
        assert!(alerts.contains(&a), "{a} in {alerts:?}");
    }
    let dashboard: Value = serde_json::from_str(&repo_file("deploy/grafana/regferry-dashboard.json")).expect("dashboard JSON");
    let exprs = dashboard["panels"].to_string();
    assert!(exprs.contains("regferry_replication_lag_seconds") && exprs.contains("regferry_tags_failed_total"));

    // The OpenAPI document is valid OpenAPI 3.
    checker("openapi-spec-validator", &["src/daemon/openapi.json"]);
}

#[test]
fn helm_chart_renders_and_lints_under_the_restricted_level() {
    // The helm CLI cannot be installed here; Helm's Go SDK can (helm-python-sdk
    // ships it as a library): tests/integration/helm_render.py renders the
    // chart with it and runs a strict lint.
    let out = tempfile::tempdir().expect("temp dir");
    checker("python3", &["tests/integration/helm_render.py", "deploy/helm/regferry", &out.path().to_string_lossy()]);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).expect("report")).expect("JSON");
    let lint = &report["lint"];
    assert_eq!(lint["errors"], json!([]), "{lint}");
    assert!(lint["messages"].as_array().into_iter().flatten().all(|m| m["severity"].as_i64() < Some(2)), "no lint warnings: {lint}");
    for case in ["no image", "no policies", "replicas on SQLite"] {
        assert!(report["must_fail"][case].is_string(), "the chart must refuse to render with {case}: {report}");
    }
    let rendered = |name: &str| -> Value {
        let path = out.path().join("regferry/templates").join(name);
        serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name} not rendered: {e}"))).expect("rendered YAML")
    };
    let deploy = rendered("deployment.yaml");
    assert_restricted(&deploy["spec"]["template"]["spec"], "helm chart");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(rendered("pvc.yaml")["spec"]["accessModes"], json!(["ReadWriteOncePod"]));
    // With a PostgreSQL state: the replicas asked for, the URL from the Secret, no volume claim.
    let shared_dir = out.path().join("postgres/regferry/templates");
    let shared: Value = serde_saphyr::from_str(&std::fs::read_to_string(shared_dir.join("deployment.yaml")).expect("postgres render")).expect("YAML");
    assert_eq!(shared["spec"]["replicas"], 3);
    assert_restricted(&shared["spec"]["template"]["spec"], "helm chart on PostgreSQL");
    let env = &shared["spec"]["template"]["spec"]["containers"][0]["env"];
    let var = |n: &str| env.as_array().into_iter().flatten().find(|e| e["name"] == n).cloned().unwrap_or(Value::Null);
    assert_eq!(var("REGFERRY_STATE")["valueFrom"]["secretKeyRef"], json!({"name": "regferry-state", "key": "url"}));
    assert_eq!(var("REGFERRY_LEASE_TIME")["value"], "20s");
    assert_eq!(var("REGFERRY_WORKER_ID")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert!(!shared_dir.join("pvc.yaml").exists() || std::fs::read_to_string(shared_dir.join("pvc.yaml")).unwrap_or_default().trim().is_empty());
    assert_eq!(rendered("servicemonitor.yaml")["spec"]["endpoints"][0]["path"], "/metrics");
    let templates = out.path().join("regferry/templates");
    let core: Vec<String> =
        ["deployment.yaml", "service.yaml", "configmap.yaml", "pvc.yaml", "secrets.yaml"].iter().map(|f| templates.join(f).to_string_lossy().into_owned()).collect();
    let mut args = vec!["--strict", "--quiet"];
    args.extend(core.iter().map(String::as_str));
    checker("kubernetes-validate", &args);
    // The PrometheusRule's groups pass promtool like deploy/prometheus does.
    let rules = out.path().join("rules.yaml");
    std::fs::write(&rules, serde_json::to_string(&rendered("prometheusrule.yaml")["spec"]).expect("JSON")).expect("write rules");
    checker("promtool", &["check", "rules", &rules.to_string_lossy()]);
    // ...and its unit tests too (the chart's rules are the same rules).
    std::fs::write(out.path().join("regferry-rules.yaml"), serde_json::to_string(&rendered("prometheusrule.yaml")["spec"]).expect("JSON")).expect("write rules");
    std::fs::write(out.path().join("regferry-rules.test.yaml"), repo_file("deploy/prometheus/regferry-rules.test.yaml")).expect("write the rule tests");
    checker("promtool", &["test", "rules", &out.path().join("regferry-rules.test.yaml").to_string_lossy()]);

    // GitOps extras: tokens from a Secret the user manages (two renders
    // identical, no generated token Secret), files a policy references
    // mounted, more environment, a ServiceAccount with annotations.
    assert_eq!(report["extras_stable"], true, "two renders with api.existingSecret differ: {report}");
    assert_eq!(report["extras_lint"]["errors"], json!([]), "{report}");
    let extras_dir = out.path().join("extras/regferry/templates");
    let extras = |name: &str| -> Value {
        serde_saphyr::from_str(&std::fs::read_to_string(extras_dir.join(name)).unwrap_or_else(|e| panic!("{name} not rendered: {e}"))).expect("YAML")
    };
    assert!(!std::fs::read_to_string(extras_dir.join("secrets.yaml")).unwrap_or_default().contains("admin-token"), "no token Secret is generated next to an existing one");
    let deploy = extras("deployment.yaml");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_restricted(pod, "helm chart with extras");
    let volume = |n: &str| pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == n).cloned().unwrap_or(Value::Null);
    assert_eq!(volume("api-tokens")["secret"]["secretName"], "regferry-tokens");
    assert_eq!(volume("registry-ca")["configMap"]["name"], "registry-ca");
    assert_eq!(volume("registry-client")["secret"]["secretName"], "registry-client-cert");
    let c = &pod["containers"][0];
    let mount = |p: &str| c["volumeMounts"].as_array().into_iter().flatten().find(|m| m["mountPath"] == p).cloned().unwrap_or(Value::Null);
    assert_eq!(mount("/etc/regferry/ca")["name"], "registry-ca");
    assert_eq!(mount("/etc/regferry/client")["readOnly"], true);
    let env = |n: &str| c["env"].as_array().into_iter().flatten().find(|e| e["name"] == n).cloned().unwrap_or(Value::Null);
    assert_eq!(env("AWS_REGION")["value"], "eu-west-1");
    assert_eq!(env("HARBOR_PASSWORD")["valueFrom"]["secretKeyRef"], json!({"name": "harbor-robot", "key": "password"}));
    assert_eq!(env("REGFERRY_EVENTS_TOKEN")["valueFrom"]["secretKeyRef"], json!({"name": "regferry-tokens", "key": "events-token", "optional": true}));
    let account = extras("serviceaccount.yaml");
    assert_eq!(account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"], "arn:aws:iam::123456789012:role/regferry");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let validated: Vec<String> = ["deployment.yaml", "serviceaccount.yaml"].iter().map(|f| extras_dir.join(f).to_string_lossy().into_owned()).collect();
    let mut args = vec!["--strict", "--quiet"];
    args.extend(validated.iter().map(String::as_str));
    checker("kubernetes-validate", &args);

    // Every `.Values.x.y` a template uses exists in values.yaml (a typo renders as empty).
    let values: Value = serde_saphyr::from_str(&repo_file("deploy/helm/regferry/values.yaml")).expect("values.yaml");
    let reference = regex::Regex::new(r"\.Values((?:\.[A-Za-z0-9_]+)+)").unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/regferry/templates");
    for entry in std::fs::read_dir(dir).expect("templates") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("template");
        for c in reference.captures_iter(&text) {
            assert!(values_has_key(&values, &c[1]), "{}: .Values{} is not in values.yaml", path.display(), &c[1]);
        }
    }
}

/// Whether the dotted path exists as a key (its value may be null or empty).
fn values_has_key(values: &Value, dotted: &str) -> bool {
    let mut v = values;
    for key in dotted.trim_start_matches('.').split('.') {
        match v.as_object().and_then(|o| o.get(key)) {
            Some(next) => v = next,
            None => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_and_success_are_notified_when_asked() {
    let (src, dst, s, d) = registries();
    push_tags(&s, "team/app", &["v1"], "app").await;
    let hooks = Receiver::start().await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "dr.yaml",
        &format!(
            "name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\ntrigger: {{ interval: 1h }}\n\
             notify:\n  - url: 'http://{}/all'\n    events: [success, failover]\n",
            src.url, dst.url, hooks.addr
        ),
    );
    let daemon = Daemon::start(&scratch, &policies, &[("REGFERRY_API_TOKEN", ADMIN)], &[]);
    wait_until(Duration::from_secs(30), "the success notification", async || hooks.events("all") == ["success"]).await;
    assert!(d.head("mirror/team/app", "v1").await.is_some());

    // Fail over (another process, the same state database); the daemon's next
    // pass runs reversed and says so.
    let fo = regferry(&scratch, &["failover", "--policy", "dr", "--policies", &policies, "--state", &daemon.state], &[]).await;
    fo.assert_ok();
    assert_eq!(post(&daemon, "/api/v1/policies/dr/run", Some(ADMIN), None).await.0, 202);
    wait_until(Duration::from_secs(30), "the failover notification", async || hooks.at("all").len() >= 3).await;
    // A receiver hears its notifications in the order they were made.
    assert_eq!(hooks.events("all"), ["success", "failover", "success"]);
    let failover = hooks.at("all").into_iter().find(|v| v["event"] == "failover").expect("failover");
    assert_eq!(failover["direction"], "reversed", "{failover}");
    assert_eq!(get(&daemon, "/api/v1/policies/dr", Some(ADMIN)).await.1["direction"], "reversed");
    assert_eq!(get(&daemon, "/api/v1/policies/dr", None).await.0, 401, "with any API token set, reading needs one too");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_matches_the_live_api() {
    // schemathesis generates requests from the document and checks every
    // answer (status codes, content types, response schemas) against it.
    // The push event endpoints take the registries' own payloads, which
    // the document does not model, so they are left out.
    let (src, dst, s, _d) = registries();
    let (_aside, _data) = broken_source(&src, &s).await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: st\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ interval: 1h }}\nretry: {{ attempts: 1 }}\n", src.url, dst.url),
    );
    let daemon = Daemon::start(&scratch, &policies, &[("REGFERRY_API_TOKEN", ADMIN), ("REGFERRY_API_READ_TOKEN", READER)], &[]);
    daemon.wait_passes(1, "the first pass").await;
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("schemathesis")
            .args(["run", &daemon.url("/api/openapi.json"), "--checks", "all", "--max-examples", "15", "--seed", "1", "--no-color"])
            .args(["--exclude-path-regex", "^/events", "-H", &format!("Authorization: Bearer {ADMIN}")])
            .current_dir(scratch.dir.path())
            .env("HOME", scratch.dir.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finishes within 4 minutes")
    .expect("schemathesis is needed (scripts/deps.sh installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the live API departs from its OpenAPI document:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("Tested: 9"), "every documented API operation was exercised:\n{report}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_man_page_env_flags_and_no_color() {
    let scratch = Scratch::new();
    // Generated from the CLI definition: they know the daemon's new flags.
    let bash = regferry(&scratch, &["completions", "bash"], &[]).await;
    bash.assert_ok();
    assert!(bash.stdout.contains("_regferry()") && bash.stdout.contains("--api-token"), "{}", &bash.stdout[..bash.stdout.len().min(400)]);
    let man = regferry(&scratch, &["man"], &[]).await;
    man.assert_ok();
    assert!(man.stdout.contains(".TH regferry 1") && man.stdout.contains("daemon"), "{}", man.stdout);
    let dir = scratch.path("man1");
    regferry(&scratch, &["man", "--dir", &dir.to_string_lossy()], &[]).await.assert_ok();
    let daemon_page = std::fs::read_to_string(dir.join("regferry-daemon.1")).expect("a page per subcommand");
    assert!(daemon_page.contains("api\\-token\\-file") && daemon_page.contains("public\\-status"), "the daemon's page lists its flags");
    let help = regferry(&scratch, &["daemon", "--help"], &[]).await;
    for var in ["REGFERRY_POLICIES", "REGFERRY_LISTEN", "REGFERRY_API_TOKEN", "REGFERRY_API_READ_TOKEN_FILE", "REGFERRY_MAX_PARALLEL"] {
        assert!(help.stdout.contains(&format!("[env: {var}")), "{var} in:\n{}", help.stdout);
    }

    // Token values in the environment never show in help or the man page.
    let env = [("REGFERRY_API_TOKEN", ADMIN), ("REGFERRY_API_READ_TOKEN", READER)];
    for args in [&["daemon", "--help"][..], &["man", "--dir", &dir.to_string_lossy()][..]] {
        let run = regferry(&scratch, args, &env).await;
        run.assert_ok();
        assert!(!run.stdout.contains(ADMIN) && !run.stdout.contains(READER), "{args:?} shows a token");
    }
    let page = std::fs::read_to_string(dir.join("regferry-daemon.1")).unwrap_or_default();
    assert!(!page.contains(ADMIN) && !page.contains(READER));

    // The daemon's flags come from REGFERRY_* variables: a bad listen address is refused as such.
    let policies = write(&scratch, "policies", "p.yaml", "name: p\nsource: { registry: 'http://127.0.0.1:1' }\ndestinations:\n  - registry: 'http://127.0.0.1:1'\n");
    let bad = regferry(&scratch, &["daemon", "--state", &scratch.state()], &[("REGFERRY_POLICIES", &policies), ("REGFERRY_LISTEN", "not-an-address")]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("not-an-address"), "{}", bad.stderr);

    // On a terminal, logs are coloured unless NO_COLOR is set.
    let on_tty = |no_color: bool| {
        let cmd = format!(
            "{}timeout 1.5 {} -v run --policies {policies} --state {}",
            if no_color { "NO_COLOR=1 " } else { "" },
            binary(),
            scratch.state()
        );
        let home = scratch.dir.path().to_path_buf();
        async move {
            let out = tokio::process::Command::new("script")
                .args(["-qec", &cmd, "/dev/null"])
                .env_remove("NO_COLOR")
                .env_remove("RUST_LOG")
                .env("HOME", home)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .expect("script(1) runs the command on a pseudo-terminal");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let coloured = on_tty(false).await;
    assert!(coloured.contains("pass started") && coloured.contains("\x1b["), "a terminal gets colours:\n{coloured}");
    let plain = on_tty(true).await;
    assert!(plain.contains("pass started") && !plain.contains("\x1b["), "NO_COLOR: no escape codes:\n{plain}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_execution_is_canceled_through_the_api_and_the_daemon_goes_on() {
    use testkit::image::{self, Flavor};
    use testkit::{Front, Nginx};
    let (src, dst, s, d) = registries();
    let tags = ["t1", "t2", "t3", "t4", "t5", "t6"];
    for tag in tags {
        let img = image::image(Flavor::Oci, &format!("slow-{tag}"), vec![image::layer(Flavor::Oci, &format!("slow-{tag}"), 512 * 1024)]);
        s.push("slow/app", tag, &img).await;
    }
    // Slow downloads (256 KiB/s; limit_rate needs proxy buffering): a pass
    // takes many seconds, one tag at a time.
    let slow = format!("location /v2/ {{ proxy_pass {}; proxy_buffering on; limit_rate 256k; }}\n", src.url);
    let front = Nginx::start(&src.url, Front { extra: slow, ..Front::default() });
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "slow.yaml",
        &format!("name: slow\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ interval: 1h }}\nconcurrency: 1\n", front.url, dst.url),
    );
    let daemon = Daemon::start(&scratch, &policies, &[("REGFERRY_API_TOKEN", ADMIN)], &[]);
    wait_until(Duration::from_secs(20), "the daemon to listen", async || reqwest::get(daemon.url("/healthz")).await.is_ok()).await;
    let mut id = 0;
    wait_until(Duration::from_secs(30), "a running execution", async || {
        let (_, list) = get(&daemon, "/api/v1/executions?policy=slow&status=running", Some(ADMIN)).await;
        id = list[0]["id"].as_i64().unwrap_or(0);
        id > 0
    })
    .await;
    let (code, reply) = post(&daemon, &format!("/api/v1/executions/{id}/cancel"), Some(ADMIN), None).await;
    assert_eq!((code, reply["outcome"].as_str()), (202, Some("requested")), "{reply}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, e) = get(&daemon, &format!("/api/v1/executions/{id}"), Some(ADMIN)).await;
        if e["status"] == "canceled" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the execution did not stop: {e}\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.tags("slow/app").await.len() < tags.len(), "a canceled execution stops starting tags");
    // Canceling one execution is not stopping the daemon: it still answers and runs passes.
    assert_eq!(get(&daemon, "/readyz", None).await.0, 200, "{}", daemon.log());
    let before = daemon.passes();
    assert_eq!(post(&daemon, "/api/v1/policies/slow/run", Some(ADMIN), None).await.0, 202);
    daemon.wait_passes(before + 1, "a pass after the cancel").await;
    let log = daemon.stop().await;
    assert_eq!(log.matches("stopping: waiting for in-flight passes").count(), 1, "only SIGTERM stops the daemon:\n{log}");
}

/// Issue 22: a tag the signature gate holds back (`require:`) is
/// `unsigned` everywhere an operator looks: the API's tasks (with the
/// reason), the execution's task counts, `/metrics` (a gauge that parses
/// like the rest of the exposition) and the status page in Chromium.
#[tokio::test(flavor = "multi_thread")]
async fn the_unsigned_status_reaches_the_api_metrics_and_status_page() {
    use testkit::image::{self, Flavor};
    use testkit::referrers::artifact;
    const SPDX: &str = "application/spdx+json";
    let (src, dst, s, _d) = registries();
    let with = image::image(Flavor::Oci, "gate-api-with", vec![image::layer(Flavor::Oci, "gate-api-with", 200)]);
    s.push("team/app", "with", &with).await;
    let sbom = artifact(&with, SPDX, r#"{"spdxVersion":"SPDX-2.3"}"#);
    s.attach("team/app", &with.digest, &sbom, SPDX).await;
    let without = image::image(Flavor::Oci, "gate-api-without", vec![image::layer(Flavor::Oci, "gate-api-without", 200)]);
    s.push("team/app", "without", &without).await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "gate.yaml",
        &format!(
            "name: gate\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: dr\n\
             require: {{ referrer_types: [{SPDX}] }}\ntrigger: {{ interval: 1h }}\nretry: {{ attempts: 1 }}\n",
            src.url, dst.url
        ),
    );
    let daemon = Daemon::start(&scratch, &policies, &[("REGFERRY_API_TOKEN", ADMIN), ("REGFERRY_API_READ_TOKEN", READER)], &["--public-status"]);
    daemon.wait_passes(1, "the first pass").await;

    // The API: the execution counts the unsigned task; its tasks name it and why.
    let (code, execs) = get(&daemon, "/api/v1/executions?policy=gate", Some(READER)).await;
    assert_eq!(code, 200, "{execs}");
    let id = execs[0]["id"].as_i64().unwrap_or_else(|| panic!("an execution: {execs}"));
    assert_eq!(execs[0]["tasks"]["unsigned"], 1, "{execs}");
    let (code, tasks) = get(&daemon, &format!("/api/v1/executions/{id}/tasks?status=unsigned"), Some(READER)).await;
    assert_eq!(code, 200, "{tasks}");
    let tasks = tasks.as_array().cloned().unwrap_or_default();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!((tasks[0]["tag"].as_str(), tasks[0]["status"].as_str()), (Some("without"), Some("unsigned")), "{tasks:?}");
    let reason = format!("no referrer of type {SPDX}");
    assert_eq!(tasks[0]["last_error"].as_str(), Some(reason.as_str()), "{tasks:?}");

    // /metrics: the gauge of the last pass, in an exposition that parses.
    let metrics = reqwest::get(daemon.url("/metrics")).await.expect("metrics").text().await.expect("body");
    crate::policies::assert_prometheus(&metrics);
    let gauge = format!("regferry_tags_unsigned{{policy=\"gate\",destination=\"{}/dr\",worker=\"", dst.url);
    assert!(metrics.lines().any(|l| l.starts_with(&gauge) && l.ends_with("\"} 1")), "{metrics}");

    // The status page, as a browser shows it.
    let dom = chromium_run(&scratch, &["--dump-dom", &daemon.url("/")]).await;
    assert!(dom.contains("1 unsigned"), "the execution's task counts:\n{dom}");
    let page = chromium_run(&scratch, &["--dump-dom", &daemon.url(&format!("/executions/{id}"))]).await;
    assert!(page.contains("<span class=\"badge warn\">unsigned</span>"), "{page}");
    assert!(page.contains("team/app:without") && page.contains(&reason), "the tag and why:\n{page}");
    daemon.stop().await;
}
