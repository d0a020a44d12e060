//! Policy files, `regferry run`, the daemon and the jobs CLI, against real
//! registries.

use std::time::{Duration, Instant};

use testkit::image::{self, Flavor};
use testkit::{Access, Registry, TestRegistry, free_port};

use crate::support::{Scratch, binary, regferry};

pub fn write(scratch: &Scratch, dir: &str, name: &str, text: &str) -> String {
    let dir = scratch.path(dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    std::fs::write(dir.join(name), text).expect("policy file");
    dir.to_string_lossy().into_owned()
}

/// One small image per tag, distinct per `seed`.
pub async fn push_tags(reg: &Registry, repo: &str, tags: &[&str], seed: &str) {
    for tag in tags {
        let img = image::image(Flavor::Oci, &format!("{seed}-{tag}"), vec![image::layer(Flavor::Oci, &format!("{seed}-{tag}"), 300)]);
        reg.push(repo, tag, &img).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_check_points_at_each_mistake() {
    let scratch = Scratch::new();
    let ok = "destinations:\n  - registry: http://127.0.0.1:1\n";
    let cases: &[(&str, String, &str)] = &[
        ("unknown.yaml", format!("name: a\nsource:\n  registry: http://127.0.0.1:1\n  colour: blue\n{ok}"), ":4: unknown field `colour`"),
        ("regex.yaml", format!("name: b\nsource: {{ registry: http://127.0.0.1:1 }}\n{ok}tags:\n  include: ['v(\\d+']\n"), ":6: tags.include[0]: bad regex"),
        ("glob.yaml", format!("name: c\nsource: {{ registry: http://127.0.0.1:1 }}\n{ok}repositories:\n  exclude: ['a/[b']\n"), ":6: repositories.exclude[0]: bad glob"),
        ("duration.yaml", format!("name: d\nsource: {{ registry: http://127.0.0.1:1 }}\n{ok}trigger:\n  interval: 10 parsecs\n"), ":6: trigger.interval: \"10 parsecs\" is not a duration"),
        ("cron.yaml", format!("name: e\nsource: {{ registry: http://127.0.0.1:1 }}\n{ok}trigger: {{ cron: '0 25 * * *' }}\n"), ":5: trigger.cron: \"25\" is out of range for the hour field"),
        (
            "env.yaml",
            format!("name: f\nsource:\n  registry: http://127.0.0.1:1\n  credentials: {{ username: u, password_env: REGFERRY_TEST_UNSET_VAR }}\n{ok}"),
            ":4: source.credentials.password_env: environment variable REGFERRY_TEST_UNSET_VAR is not set",
        ),
        ("url.yaml", "name: g\nsource: { registry: 'http://u:p@127.0.0.1:1' }\ndestinations:\n  - registry: http://127.0.0.1:1\n".into(), ":2: source.registry:"),
        ("semver.yaml", format!("name: h\nsource: {{ registry: http://127.0.0.1:1 }}\n{ok}tags: {{ semver: '=>1' }}\n"), ":5: tags.semver: bad semver range"),
        ("twin.yaml", format!("name: a2\nsource: {{ registry: http://127.0.0.1:1 }}\n{ok}"), ""),
        ("twin2.yaml", format!("name: a2\nsource: {{ registry: http://127.0.0.1:1 }}\n{ok}"), ":1: name: policy name \"a2\" is already used by"),
    ];
    for (file, text, _) in cases {
        write(&scratch, "broken", file, text);
    }
    let dir = scratch.path("broken").to_string_lossy().into_owned();
    let run = regferry(&scratch, &["policy", "check", &dir], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    for (file, _, expected) in cases.iter().filter(|c| !c.2.is_empty()) {
        let needle = format!("{file}{expected}");
        assert!(run.stderr.contains(&needle), "expected {needle:?} in:\n{}", run.stderr);
    }
    assert!(!run.stderr.contains("u:p@"), "credentials from a URL must not be echoed: {}", run.stderr);

    // The daemon refuses the same set before doing anything.
    let state = scratch.state();
    let run = regferry(&scratch, &["daemon", "--policies", &dir, "--state", &state, "--listen", "127.0.0.1:1"], &[]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("twin2.yaml:1: name"), "{}", run.stderr);

    // The examples shipped in the repository are valid.
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    regferry(&scratch, &["policy", "check", examples], &[]).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_overwrite_and_several_destinations() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let tags = ["v1.0.0", "v1.1.0", "v1.2.0", "v1.2.1-rc1", "v1.3.0", "v2.0.0", "1.4.0", "latest", "dev", "latest-dev"];
    push_tags(&s, "team/app", &tags, "app").await;
    push_tags(&s, "team/tmp-build", &["v1.3.0"], "tmp").await;
    push_tags(&s, "other/app", &["v1.3.0"], "other").await;
    // A signature of v1.3.0 (selected) and of v1.0.0 (not selected).
    for tag in ["v1.3.0", "v1.0.0"] {
        let (bytes, media_type) = s.get_manifest("team/app", tag).await.expect("manifest");
        let subject = image::raw(&media_type, bytes);
        let sig = image::signature(&subject);
        s.push("team/app", &image::signature_tag(&subject.digest), &sig).await;
    }
    // The destination already has v2.0.0 with other content: overwrite is off.
    push_tags(&d, "dr/team/app", &["v2.0.0"], "theirs").await;
    let theirs = d.head("dr/team/app", "v2.0.0").await;
    let dead = format!("http://127.0.0.1:{}", free_port());

    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: filtered\nsource: {{ registry: '{src}' }}\ndestinations:\n  - registry: '{dst}'\n    namespace: dr\n  - registry: '{dead}'\n\
             repositories:\n  include: ['team/**']\n  exclude: ['**/tmp-*']\n\
             tags:\n  include: ['v\\d+\\.\\d+\\.\\d+', '\\d+\\.\\d+\\.\\d+', 'latest']\n  exclude: ['-rc\\d*$']\n  semver: '>=1.1.0'\n  latest: 4\n\
             overwrite: false\nretry: {{ attempts: 1 }}\n",
            src = src.url,
            dst = dst.url
        ),
    );
    let state = scratch.state();
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    assert_eq!(run.code, 1, "the dead destination fails the run\n{}\n{}", run.stdout, run.stderr);
    let out = run.json();
    let dests = out[0]["destinations"].as_array().cloned().unwrap_or_default();
    assert_eq!(dests.len(), 2);
    assert!(dests[1]["error"].as_str().is_some_and(|e| e.contains(&dead)), "{dests:?}");
    assert_eq!(dests[0]["report"]["status"], "succeeded", "{dests:?}");

    // Newest four versions ≥ 1.1.0 without the rc: 2.0.0, 1.4.0, 1.3.0, 1.2.0; plus latest;
    // v2.0.0 stays theirs; the signature of v1.3.0 follows it, that of v1.0.0 does not.
    let (sig_tag, _) = {
        let (bytes, media_type) = s.get_manifest("team/app", "v1.3.0").await.expect("manifest");
        (image::signature_tag(&image::raw(&media_type, bytes).digest), ())
    };
    let mut want = vec!["1.4.0".to_string(), "latest".into(), "v1.2.0".into(), "v1.3.0".into(), "v2.0.0".into(), sig_tag];
    want.sort();
    assert_eq!(d.tags("dr/team/app").await, want);
    assert_eq!(d.head("dr/team/app", "v2.0.0").await, theirs, "overwrite: false must leave the differing tag alone");
    for tag in ["1.4.0", "latest", "v1.2.0", "v1.3.0"] {
        assert_eq!(d.head("dr/team/app", tag).await, s.head("team/app", tag).await, "{tag}");
    }
    let mut catalog = d.catalog().await;
    catalog.sort();
    assert_eq!(catalog, vec!["dr/team/app"]);

    // jobs show records the refusal with its reason.
    let id = dests[0]["report"]["execution"].as_i64().expect("execution id").to_string();
    let show = regferry(&scratch, &["jobs", "show", &id, "--state", &state], &[]).await;
    show.assert_ok();
    assert!(show.stdout.lines().any(|l| l.contains("dr/team/app:v2.0.0") && l.contains("differs, overwrite disabled")), "{}", show.stdout);
}

/// Read `/path` from the daemon.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

/// Every sample line of a Prometheus text exposition parses.
pub(crate) fn assert_prometheus(text: &str) {
    let sample = regex::Regex::new(r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.eE+-]+$"#).unwrap();
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(rest.starts_with("HELP ") || rest.starts_with("TYPE "), "bad comment line {line:?}");
            continue;
        }
        assert!(sample.is_match(line), "not a Prometheus sample: {line:?}");
        samples += 1;
    }
    assert!(samples > 5, "too few samples:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_replicates_pushes_serves_metrics_and_stops_cleanly() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    push_tags(&s, "app/web", &["v1"], "web").await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: live\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: m\ntrigger: {{ interval: 1s }}\n", src.url, dst.url),
    );
    let port = free_port();
    let state = scratch.state();
    let mut daemon = tokio::process::Command::new(binary())
        .args(["daemon", "--policies", &policies, "--state", &state, "--listen", &format!("127.0.0.1:{port}")])
        .env("DOCKER_CONFIG", scratch.path("none"))
        .env("HOME", scratch.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(scratch.path("daemon.log")).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start daemon");

    let wait_for = |what: &'static str, repo: &'static str, tag: &'static str| {
        let d = &d;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if d.head(repo, tag).await.is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("{what}: {repo}:{tag} never reached the destination");
        }
    };
    wait_for("initial pass", "m/app/web", "v1").await;
    assert_eq!(get(port, "/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(get(port, "/readyz").await.map(|r| r.0), Some(200));

    // A new tag is picked up by the next pass, with the same digest.
    push_tags(&s, "app/web", &["v2"], "web").await;
    wait_for("pushed tag", "m/app/web", "v2").await;
    assert_eq!(d.head("m/app/web", "v2").await, s.head("app/web", "v2").await);

    // Steady state: passes cost listings and manifest HEADs only.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = src.access_lines().len();
    let dst_before = dst.access_lines().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let src_lines: Vec<String> = src.access_lines().into_iter().skip(before).collect();
    let dst_lines: Vec<String> = dst.access_lines().into_iter().skip(dst_before).collect();
    assert!(src_lines.len() >= 4, "the daemon must keep passing every second: {src_lines:?}");
    for l in src_lines.iter().chain(&dst_lines) {
        // (The failover fence is read with one `GET` per pass: a `HEAD` 404 alone is never trusted.)
        let fence = l.contains("\"GET /v2/m/regferry-fence/manifests/live ");
        let cheap = l.contains("\"HEAD /v2/") || l.contains("/tags/list") || l.contains("/v2/_catalog") || l.contains("\"GET /v2/ ") || fence;
        assert!(cheap, "an unchanged source must cost listings, HEADs and the fence's GET only, saw: {l}");
    }

    let (code, metrics) = get(port, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    assert_prometheus(&metrics);
    let copied = format!("regferry_tags_copied_total{{policy=\"live\",destination=\"{}/m\",worker=\"", dst.url);
    assert!(metrics.lines().any(|l| l.starts_with(&copied) && l.ends_with("\"} 2")), "{metrics}");
    assert!(metrics.contains("regferry_policies 1"));
    // Caught up: no lag, nothing outstanding.
    assert!(metrics.lines().any(|l| l == "regferry_replication_lag_seconds{policy=\"live\",direction=\"forward\"} 0"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "regferry_outstanding_tags{policy=\"live\",direction=\"forward\"} 0"), "{metrics}");
    // Per registry, not per job: requests by method and status, pulls, latency histograms, the build.
    let at_source = format!("{{registry=\"{}\",method=\"HEAD\"", src.url);
    let heads = metrics.lines().find(|l| l.starts_with(&format!("regferry_registry_requests_total{at_source},status=\"200\"}} "))).expect("HEADs counted");
    assert!(heads.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= 4), "{heads}");
    assert!(metrics.lines().any(|l| l.starts_with(&format!("regferry_registry_request_duration_seconds_bucket{at_source},le=\"+Inf\"}} "))), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with(&format!("regferry_registry_pulls_total{{registry=\"{}\"}} ", src.url))), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("regferry_build_info{version=\"") && l.ends_with("} 1")), "{metrics}");
    // And Prometheus' own parser (promtool) takes the whole exposition.
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/deps.sh --test installs it)");
    std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), metrics.as_bytes()).expect("feed promtool");
    let checked = check.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && !said.contains("error"), "promtool: {said}");

    // SIGTERM: exit 0, promptly.
    let pid = daemon.id().expect("pid") as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await.expect("daemon stops within 20 s").expect("wait");
    let log = std::fs::read_to_string(scratch.path("daemon.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("daemon stopped"), "{log}");

    // The jobs CLI tells the same story: two executions that copied one tag each.
    let list = regferry(&scratch, &["jobs", "list", "--policy", "live", "--state", &state, "--json"], &[]).await;
    list.assert_ok();
    let rows = list.json();
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "no-op passes must not pile up executions: {rows:?}");
    assert!(rows.iter().all(|r| r["status"] == "succeeded" && r["tasks"]["succeeded"].as_i64() >= Some(1)), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_tags_are_kept_backed_off_and_retried_on_request() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    push_tags(&s, "svc/api", &["good", "broken"], "api").await;
    // Break one tag behind the registry's back: remove its layer's data.
    let (bytes, _) = s.get_manifest("svc/api", "broken").await.expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    let layer = manifest["layers"][0]["digest"].as_str().expect("layer digest").trim_start_matches("sha256:").to_string();
    let data = src.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{layer}", &layer[..2]));
    std::fs::remove_dir_all(&data).expect("remove blob data");

    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: flaky\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\nretry: {{ attempts: 1, backoff: 1h }}\n",
            src.url, dst.url
        ),
    );
    let state = scratch.state();
    let args = ["run", "--policies", policies.as_str(), "--state", state.as_str(), "--json"];
    let run_once = || regferry(&scratch, &args, &[]);
    let run = run_once().await;
    assert_eq!(run.code, 1);
    let report = &run.json()[0]["destinations"][0]["report"];
    let failures = report["failures"].as_array().cloned().unwrap_or_default();
    assert_eq!(failures.len(), 1, "{report}");
    assert_eq!(failures[0]["tag"], "broken");
    let id = report["execution"].as_i64().expect("execution");

    // jobs list / show: the failed task with the registry's own error.
    let list = regferry(&scratch, &["jobs", "list", "--status", "failed", "--repo", "svc/api", "--since", "1h", "--state", &state, "--json"], &[]).await;
    list.assert_ok();
    assert_eq!(list.json()[0]["id"].as_i64(), Some(id));
    let show = regferry(&scratch, &["jobs", "show", &id.to_string(), "--state", &state], &[]).await;
    show.assert_ok();
    let line = show.stdout.lines().find(|l| l.contains("svc/api:broken")).unwrap_or_default().to_string();
    assert!(line.starts_with("failed") && line.contains("BLOB_UNKNOWN"), "jobs show must carry the registry's error verbatim:\n{}", show.stdout);
    assert!(show.stdout.lines().any(|l| l.starts_with("succeeded") && l.contains("svc/api:good")), "{}", show.stdout);

    // The next pass backs off the failing tag instead of hammering it.
    let run = run_once().await;
    assert_eq!(run.json()[0]["destinations"][0]["deferred"], 1, "{}", run.stdout);

    // An operator's retry resumes that same execution at once.
    let retry = regferry(&scratch, &["jobs", "retry", &id.to_string(), "--state", &state], &[]).await;
    retry.assert_ok();
    assert!(retry.stdout.contains("1 task(s) queued"), "{}", retry.stdout);
    let run = run_once().await;
    let report = &run.json()[0]["destinations"][0]["report"];
    assert_eq!(report["execution"].as_i64(), Some(id), "a retry resumes the execution: {report}");
    assert_eq!(report["resumed"], true);
    assert_eq!(report["failures"].as_array().map(Vec::len), Some(1));

    // Cancel on a finished execution says so; unknown ids are refused.
    let cancel = regferry(&scratch, &["jobs", "cancel", &id.to_string(), "--state", &state], &[]).await;
    cancel.assert_ok();
    let missing = regferry(&scratch, &["jobs", "show", "999999", "--state", &state], &[]).await;
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("no execution 999999"), "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_recipes_in_the_docs_pass_policy_check() {
    // docs/registries.md promises that its policy examples are valid.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/registries.md")).expect("docs/registries.md");
    let scratch = Scratch::new();
    let dir = scratch.path("recipes");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut n = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let policy = block.split("```").next().unwrap_or_default();
        std::fs::write(dir.join(format!("recipe-{n}.yaml")), policy).expect("write");
        n += 1;
    }
    assert!(n >= 11, "one example per registry: {n}");
    let vars: Vec<String> = regex::Regex::new(r"password_env: ([A-Z0-9_]+)").unwrap().captures_iter(&doc).map(|c| c[1].to_string()).collect();
    let env: Vec<(&str, &str)> = vars.iter().map(|v| (v.as_str(), "not-a-real-secret")).collect();
    let run = regferry(&scratch, &["policy", "check", &dir.to_string_lossy()], &env).await;
    assert_eq!(run.code, 0, "the examples of docs/registries.md do not pass policy check:\n{}\n{}", run.stdout, run.stderr);
}
