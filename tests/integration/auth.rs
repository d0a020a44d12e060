//! Authentication against real registries: htpasswd basic auth, bearer
//! tokens from a real (test) token service with per-repository scopes,
//! token refresh and re-authentication, wrong credentials.

use std::sync::atomic::Ordering;
use std::time::Duration;

use testkit::dataset::{self, Spec};
use testkit::{Access, Auth, FaultProxy, Faults, Options, Registry, TestRegistry, TokenServer};

use crate::support::{Scratch, assert_mirrored, regferry, repos_of};

fn htpasswd(user: &str, password: &str) -> TestRegistry {
    TestRegistry::start_with(Options { auth: Auth::Htpasswd { user: user.into(), password: password.into() }, ..Options::default() })
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_from_flags_and_docker_config() {
    let src = htpasswd("alice", "alice-pw");
    let dst = htpasswd("bob", "bob-secret-pw");
    let s = Registry::new(&src.url, Access::Basic("alice".into(), "alice-pw".into()));
    let d = Registry::new(&dst.url, Access::Basic("bob".into(), "bob-secret-pw".into()));
    let pushed = dataset::fill(&s, &Spec { repos: 2, tags_per_repo: 2, ..Spec::default() }).await;
    let scratch = Scratch::new();

    // Source credentials from a docker config.json, destination from the environment.
    let config_dir = scratch.path("docker");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(
        config_dir.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, src.host(), testkit::client::basic("alice", "alice-pw").trim_start_matches("Basic ")),
    )
    .expect("config.json");
    let state = scratch.state();
    let run = regferry(
        &scratch,
        &["-v", "migrate", "--from", &src.url, "--to", &dst.url, "--state", &state, "--json"],
        &[("DOCKER_CONFIG", &config_dir.to_string_lossy()), ("REGFERRY_TO_CREDS", "bob:bob-secret-pw")],
    )
    .await;
    run.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;
    assert!(!run.stderr.contains("bob-secret-pw") && !run.stdout.contains("bob-secret-pw"), "the password leaked into the output");

    // A wrong password: one clear line, exit 1, no secret, no panic.
    let run = regferry(
        &scratch,
        &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &state, "--to-creds", "bob:wrong-pw-123"],
        &[("DOCKER_CONFIG", &config_dir.to_string_lossy())],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("username or password rejected"), "{}", run.stderr);
    assert!(run.stderr.contains(&dst.url), "the error names the registry: {}", run.stderr);
    assert!(!run.stderr.contains("wrong-pw-123") && !run.stderr.contains("panicked"), "{}", run.stderr);

    // No credentials at all: told how to give them.
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &state], &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("requires credentials"), "{}", run.stderr);
}

fn token_registry(tokens: &TokenServer) -> TestRegistry {
    TestRegistry::start_with(Options { auth: tokens.registry_auth(), ..Options::default() })
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_with_per_repository_scopes_and_cross_repository_mounts() {
    let tokens = TokenServer::start(&[("ci", "ci-token-pw")]);
    let src = token_registry(&tokens);
    let dst = token_registry(&tokens);
    let s = Registry::new(&src.url, Access::Token(tokens.clone()));
    let d = Registry::new(&dst.url, Access::Token(tokens.clone()));
    let pushed = dataset::fill(&s, &Spec { repos: 3, tags_per_repo: 2, ..Spec::default() }).await;
    let scratch = Scratch::new();
    let state = scratch.state();
    let run = regferry(
        &scratch,
        &["migrate", "--from", &src.url, "--to", &format!("{}/mirror", dst.url), "--state", &state, "--json"],
        &[("REGFERRY_FROM_CREDS", "ci:ci-token-pw"), ("REGFERRY_TO_CREDS", "ci:ci-token-pw")],
    )
    .await;
    run.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "mirror").await;
    let issued = tokens.issued();
    assert!(issued.iter().any(|i| i.scopes.iter().any(|s| s == "registry:catalog:*")), "catalog scope asked");
    // A mount asks for push on the target and pull on the source repository, in one token.
    let mount_token = issued.iter().any(|i| {
        i.scopes.len() == 2
            && i.scopes.iter().any(|s| s.starts_with("repository:mirror/") && s.ends_with(":pull,push"))
            && i.scopes.iter().any(|s| s.starts_with("repository:mirror/") && s.ends_with(":pull"))
    });
    assert!(mount_token, "no token asked for push on the target and pull on the mount source: {issued:?}");
    assert!(run.json()["counts"]["blobs_mounted"].as_u64() > Some(0), "mounts must work with token auth");
    // Tokens are cached: far fewer token requests than registry requests.
    let requests = run.json()["requests"]["destination"].as_u64().unwrap_or(0);
    assert!((issued.len() as u64) < requests / 2, "{} token requests for {requests} registry requests", issued.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_tokens_are_refreshed_and_expired_ones_replaced_once() {
    let tokens = TokenServer::start(&[("ci", "pw")]);
    let src = token_registry(&tokens);
    let dst = token_registry(&tokens);
    let s = Registry::new(&src.url, Access::Token(tokens.clone()));
    let d = Registry::new(&dst.url, Access::Token(tokens.clone()));
    // Enough tags per repository that one repository's work (one token
    // scope) outlives a 1-2 s token even when a first copy needs few requests.
    let pushed = dataset::fill(&s, &Spec { repos: 3, tags_per_repo: 6, ..Spec::default() }).await;
    // Slow the destination down so the run outlives several tokens.
    let slow = FaultProxy::start(&dst.url, Faults { latency: Duration::from_millis(100), ..Faults::default() });
    let scratch = Scratch::new();
    let state = scratch.state();
    let creds = [("REGFERRY_FROM_CREDS", "ci:pw"), ("REGFERRY_TO_CREDS", "ci:pw")];

    // Tokens that live 2 s and say so: renewed before they expire.
    tokens.lifetime.store(2, Ordering::Relaxed);
    let to = format!("{}/a", slow.url);
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &to, "--state", &state, "--concurrency", "2", "--json"], &creds).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "a").await;
    let elapsed = run.json()["elapsed_seconds"].as_f64().unwrap_or(0.0);
    let mut per_scope = std::collections::HashMap::new();
    for i in tokens.issued() {
        *per_scope.entry(i.scopes.join(" ")).or_insert(0) += 1;
    }
    assert!(elapsed > 3.0, "the run must outlive the tokens to test refresh (took {elapsed:.1}s)");
    assert!(per_scope.values().any(|&n| n > 1), "no scope was ever refreshed in a {elapsed:.1}s run");

    // Tokens that claim 300 s but die within a second: the registry's 401
    // makes regferry fetch a new token once and carry on. One tag at a time,
    // so the run outlives many of them.
    tokens.lifetime.store(1, Ordering::Relaxed);
    tokens.advertised.store(300, Ordering::Relaxed);
    let to = format!("{}/b", slow.url);
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &to, "--state", &state, "--concurrency", "1", "--json"], &creds).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "b").await;
    let rejected = dst.lines_by("regferry/").iter().filter(|l| l.contains("/v2/b/") && l.contains("\" 401 ")).count();
    assert!(rejected > 0, "expected the registry to reject expired tokens during the run");

    // Tokens that are dead on arrival: re-authenticate once, then fail loudly.
    tokens.lifetime.store(0, Ordering::Relaxed);
    let before = tokens.issued().len();
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &state], &creds).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("refused a freshly issued token"), "{}", run.stderr);
    assert!(tokens.issued().len() - before < 10, "must not hammer the token service");
}
