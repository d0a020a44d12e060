//! Credentials stay secret at every log level, in errors and in the state
//! database; TLS is verified (with a per-registry CA when given) and
//! plain HTTP or skipped verification happen only when asked for; the
//! registry's `Authorization` never follows a redirect to another host.

use base64::Engine;
use testkit::dataset::{self, Spec};
use testkit::tls::Pki;
use testkit::{Access, Auth, FaultProxy, Faults, Options, Registry, TestRegistry, TokenServer};

use crate::support::{Run, Scratch, assert_mirrored, plain_images, regferry, repos_of};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_logs_errors_or_the_state_database() {
    const TOKEN_PW: &str = "tok-Pw-81zq-never-print";
    const BASIC_PW: &str = "basic-Pw-44xk-never-print";
    const WRONG_PW: &str = "wrong-Pw-19hh-never-print";
    let tokens = TokenServer::start(&[("ci", TOKEN_PW)]);
    let src = TestRegistry::start_with(Options { auth: tokens.registry_auth(), ..Options::default() });
    let dst = TestRegistry::start_with(Options {
        auth: Auth::Htpasswd { user: "admin".into(), password: BASIC_PW.into() },
        ..Options::default()
    });
    let s = Registry::new(&src.url, Access::Token(tokens.clone()));
    let d = Registry::new(&dst.url, Access::Basic("admin".into(), BASIC_PW.into()));
    let pushed = dataset::fill(&s, &Spec { repos: 2, tags_per_repo: 2, ..Spec::default() }).await;
    // Proxies record the Authorization headers regferry really sends.
    let sp = FaultProxy::start(&src.url, Faults::default());
    let dp = FaultProxy::start(&dst.url, Faults::default());
    let scratch = Scratch::new();
    let state = scratch.state();
    let from_creds = format!("ci:{TOKEN_PW}");
    let to_creds = format!("admin:{BASIC_PW}");
    let creds = [("REGFERRY_FROM_CREDS", from_creds.as_str()), ("REGFERRY_TO_CREDS", to_creds.as_str())];
    let (to_a, to_b) = (format!("{}/a", dp.url), format!("{}/b", dp.url));

    let mut runs: Vec<(&str, Run)> = Vec::new();
    // Debug and trace logging of our own code…
    let run = regferry(&scratch, &["-v", "-v", "migrate", "--from", &sp.url, "--to", &to_a, "--state", &state, "--json"], &creds).await;
    run.assert_ok();
    runs.push(("-v -v", run));
    // …and trace logging of every library (HTTP, TLS, SQL), as JSON.
    let trace = [creds[0], creds[1], ("RUST_LOG", "trace")];
    let run = regferry(&scratch, &["--log-format", "json", "migrate", "--from", &sp.url, "--to", &to_b, "--state", &state, "--json"], &trace).await;
    run.assert_ok();
    let lines = run.stderr.lines().count();
    assert!(lines > 200 && run.stderr.contains("reqwest::connect") && run.stderr.contains("\"level\":\"TRACE\""), "RUST_LOG=trace must really log the HTTP stack ({lines} lines)");
    runs.push(("RUST_LOG=trace", run));
    // Errors: a wrong password at a basic-auth registry and at a token service.
    let wrong_to = format!("admin:{WRONG_PW}");
    let run = regferry(&scratch, &["-v", "-v", "migrate", "--from", &sp.url, "--to", &dp.url, "--state", &state], &[creds[0], ("REGFERRY_TO_CREDS", &wrong_to), ("RUST_LOG", "trace")]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("username or password rejected"), "{}", run.stderr);
    runs.push(("wrong basic password", run));
    let wrong_from = format!("ci:{WRONG_PW}");
    let run = regferry(&scratch, &["-v", "-v", "migrate", "--from", &sp.url, "--to", &dp.url, "--state", &state], &[("REGFERRY_FROM_CREDS", &wrong_from), creds[1]]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("refused the credentials"), "{}", run.stderr);
    runs.push(("wrong token password", run));

    assert_mirrored(&s, &d, &repos_of(&pushed), "a").await;
    assert_mirrored(&s, &d, &repos_of(&pushed), "b").await;

    // Everything secret: passwords, basic credentials as sent, every token
    // issued and every Authorization value that went over the wire.
    let mut secrets: Vec<String> = [TOKEN_PW, BASIC_PW, WRONG_PW].map(String::from).to_vec();
    for pair in [&from_creds, &to_creds, &wrong_to, &wrong_from] {
        secrets.push(b64(pair));
    }
    let issued = tokens.issued();
    assert!(issued.iter().any(|i| i.user.as_deref() == Some("ci")), "regferry fetched tokens");
    for t in issued {
        secrets.push(t.token.rsplit('.').next().unwrap_or_default().to_string()); // the signature alone
        secrets.push(t.token);
    }
    let mut sent = 0;
    for seen in sp.counters.seen().into_iter().chain(dp.counters.seen()) {
        if let Some(value) = seen.authorization {
            let credential = value.split_once(' ').map(|(_, c)| c.to_string()).unwrap_or(value);
            secrets.push(credential);
            sent += 1;
        }
    }
    assert!(sent > 20, "credentials were in use ({sent} authorized requests)");
    secrets.sort();
    secrets.dedup();

    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, run) in &runs {
        haystacks.push((format!("{name}: stdout"), run.stdout.clone().into_bytes()));
        haystacks.push((format!("{name}: stderr"), run.stderr.clone().into_bytes()));
    }
    let state_dir = scratch.path("state");
    for entry in std::fs::read_dir(&state_dir).expect("state directory").flatten() {
        haystacks.push((entry.path().display().to_string(), std::fs::read(entry.path()).expect("read state file")));
    }
    assert!(haystacks.iter().any(|(n, _)| n.ends_with("regferry.db")), "the state database exists");
    for (name, bytes) in &haystacks {
        let text = String::from_utf8_lossy(bytes);
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret ({}…) leaked into {name}", &secret[..6.min(secret.len())]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_verified_with_a_custom_ca_and_plain_http_or_insecure_only_when_asked() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let src = TestRegistry::start_with(Options { tls: Some((pki.cert.clone(), pki.key.clone())), ..Options::default() });
    assert!(src.url.starts_with("https://"));
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let pushed = dataset::fill(&s, &Spec { repos: 1, tags_per_repo: 2, ..Spec::default() }).await;
    let repos = repos_of(&pushed);
    let scratch = Scratch::new();
    let state = scratch.state();
    let ca = pki.ca.to_string_lossy().into_owned();
    let wrong_ca = stranger.ca.to_string_lossy().into_owned();
    let to = |prefix: &str| format!("{}/{prefix}", dst.url);

    // Verified against the CA given for this registry.
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--from-ca", &ca, "--to", &to("ca"), "--state", &state], &[]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &repos, "ca").await;

    // Without it (or with another CA): refused, with a clear reason.
    for extra in [vec![], vec!["--from-ca", wrong_ca.as_str()]] {
        let mut args = vec!["migrate", "--from", &src.url, "--to", &dst.url, "--state", &state];
        args.extend(extra);
        let run = regferry(&scratch, &args, &[]).await;
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains(&format!("source cannot reach {}", src.url)), "{}", run.stderr);
        assert!(run.stderr.contains("certificate"), "the reason names the certificate: {}", run.stderr);
        assert!(run.stderr.contains("--from-ca"), "the error says how to trust a private CA: {}", run.stderr);
    }
    assert!(d.catalog().await.iter().all(|r| r.starts_with("ca/")), "nothing was copied unverified");

    // Skipping verification is possible, for this registry only, when asked.
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--from-insecure", "--to", &to("insecure"), "--state", &state], &[]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &repos, "insecure").await;

    // No scheme means https: a plain-HTTP registry is not silently used.
    let plain = format!("127.0.0.1:{}", dst.port);
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--from-ca", &ca, "--to", &plain, "--state", &state], &[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("destination cannot reach https://{plain}")), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_host_redirect_never_carries_the_registry_authorization() {
    const PW: &str = "redirect-Pw-never-forward";
    let src = TestRegistry::start_with(Options { auth: Auth::Htpasswd { user: "u".into(), password: PW.into() }, ..Options::default() });
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Basic("u".into(), PW.into()));
    let d = Registry::new(&dst.url, Access::Anonymous);
    let pushed = dataset::fill(&s, &plain_images(2, 2)).await;
    // Every blob download is redirected to "object storage" on another host.
    let sp = FaultProxy::start_with_storage(&src.url, Faults { redirect_blobs: 1.0, ..Faults::default() }, src.storage());
    let scratch = Scratch::new();
    let state = scratch.state();
    let creds = format!("u:{PW}");
    let run = regferry(&scratch, &["migrate", "--from", &sp.url, "--to", &dst.url, "--state", &state, "--json"], &[("REGFERRY_FROM_CREDS", &creds)]).await;
    run.assert_ok();
    assert_mirrored(&s, &d, &repos_of(&pushed), "").await;

    let redirected = sp.counters.injected("redirect");
    let fetched = sp.counters.storage_requests();
    assert!(redirected > 0 && fetched.len() as u64 == redirected, "{redirected} redirects, {} storage fetches", fetched.len());
    // The registry leg carried credentials; the storage leg never did.
    let blob_gets: Vec<_> = sp.counters.seen().into_iter().filter(|r| r.fault == Some("redirect")).collect();
    assert!(blob_gets.iter().all(|r| r.authorization.as_deref().is_some_and(|a| a.starts_with("Basic "))));
    for f in &fetched {
        let names: Vec<&str> = f.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert!(!names.contains(&"authorization") && !names.contains(&"cookie"), "credentials followed the redirect to {}: {names:?}", f.path);
    }
    assert_eq!(run.json()["counts"]["blobs_uploaded"], redirected, "every blob came through the redirect");
}
