//! Every way users log in, against real registries: credential helpers
//! that rotate and fail, OAuth2 refresh tokens (`identitytoken`), several
//! challenges in one header, a `401` without a challenge, pull-only tokens,
//! one token fetch for many waiting tasks, and mutual TLS through nginx.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use regferry::registry::client::Request;
use regferry::registry::{ClientOptions, Credentials, Endpoint, RegistryClient, RegistryUrl, RepoName, Scopes};
use reqwest::Method;
use testkit::{Access, Front, Nginx, Options, Registry, TestRegistry, TokenServer};

use crate::policies::push_tags;
use crate::support::{Scratch, command, regferry, wait_until};

fn token_registry(tokens: &TokenServer) -> TestRegistry {
    TestRegistry::start_with(Options { auth: tokens.registry_auth(), ..Options::default() })
}

/// A credential helper `docker-credential-test` in `dir`: answers with the
/// user and secret in `dir/user` and `dir/secret`, fails while `dir/fail`
/// exists, and appends every key it is asked about to `dir/calls`.
fn install_helper(dir: &Path, user: &str, secret: &str) {
    std::fs::create_dir_all(dir).expect("helper dir");
    let script = format!(
        "#!/bin/sh\nd='{dir}'\nread -r key\necho \"$key\" >> \"$d/calls\"\n\
         if [ -f \"$d/fail\" ]; then echo \"backend unreachable: vault sealed token=s3cr3t-in-stderr\" >&2; exit 1; fi\n\
         printf '{{\"ServerURL\":\"%s\",\"Username\":\"%s\",\"Secret\":\"%s\"}}\\n' \"$key\" \"$(cat \"$d/user\")\" \"$(cat \"$d/secret\")\"\n",
        dir = dir.display()
    );
    let path = dir.join("docker-credential-test");
    std::fs::write(&path, script).expect("helper script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod helper");
    std::fs::write(dir.join("user"), user).expect("user");
    std::fs::write(dir.join("secret"), secret).expect("secret");
}

fn helper_calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls")).unwrap_or_default().lines().map(str::to_string).collect()
}

fn path_with(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

/// A docker config directory holding `config.json` = `json`.
fn docker_config(scratch: &Scratch, json: &str) -> PathBuf {
    let dir = scratch.path("docker");
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(dir.join("config.json"), json).expect("config.json");
    dir
}

/// A daemon replicating `src` to `dst` every second (policy `name`), both
/// logged in through the test credential helper in `bin` (answering `ci` /
/// `pw-one` until told otherwise), its stderr in `daemon.log`.
struct HelperDaemon {
    bin: PathBuf,
    config: PathBuf,
    /// `PATH` with the helper's directory first.
    path: String,
    child: tokio::process::Child,
}

fn start_helper_daemon(scratch: &Scratch, name: &str, src: &TestRegistry, dst: &TestRegistry) -> HelperDaemon {
    let bin = scratch.path("bin");
    install_helper(&bin, "ci", "pw-one");
    let config = docker_config(scratch, &format!(r#"{{"credHelpers":{{"{}":"test","{}":"test"}}}}"#, src.host(), dst.host()));
    let policies = crate::policies::write(
        scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: {name}\nsource: {{ registry: '{}', credentials: {{ docker_config: true }} }}\n\
             destinations:\n  - registry: '{}'\n    credentials: {{ docker_config: true }}\ntrigger: {{ interval: 1s }}\n",
            src.url, dst.url
        ),
    );
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let path = path_with(&bin);
    let env = [("DOCKER_CONFIG", config.to_str().unwrap_or_default()), ("PATH", path.as_str())];
    let child = command(scratch, &["daemon", "--policies", &policies, "--state", &scratch.state(), "--listen", &listen], &env)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(scratch.path("daemon.log")).expect("log file"))
        .spawn()
        .expect("start daemon");
    HelperDaemon { bin, config, path, child }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_is_asked_again_each_pass_and_a_failing_helper_is_named() {
    let tokens = TokenServer::start(&[("ci", "pw-one")]);
    let src = token_registry(&tokens);
    let dst = token_registry(&tokens);
    let s = Registry::new(&src.url, Access::Token(tokens.clone()));
    let d = Registry::new(&dst.url, Access::Token(tokens.clone()));
    push_tags(&s, "app/web", &["v1"], "rot").await;

    let scratch = Scratch::new();
    let HelperDaemon { bin, config, path, child: mut daemon } = start_helper_daemon(&scratch, "rot", &src, &dst);
    let env = [("DOCKER_CONFIG", config.to_str().unwrap_or_default()), ("PATH", path.as_str())];
    let log = || std::fs::read_to_string(scratch.path("daemon.log")).unwrap_or_default();
    wait_until(Duration::from_secs(30), "the first pass to copy v1", async || d.head("app/web", "v1").await.is_some()).await;
    let calls_before = helper_calls(&bin).len();
    assert!(calls_before >= 2, "the helper is asked for both registries: {:?}", helper_calls(&bin));
    assert!(helper_calls(&bin).iter().all(|k| k == &src.host() || k == &dst.host()), "helpers are asked for host:port: {:?}", helper_calls(&bin));

    // The password is rotated: the token service takes only the new one,
    // and the helper already answers with it. No SIGHUP.
    tokens.set_password("ci", "pw-two");
    std::fs::write(bin.join("secret"), "pw-two").expect("rotate");
    push_tags(&s, "app/web", &["v2"], "rot").await;
    wait_until(Duration::from_secs(30), "a pass after the rotation to copy v2", async || d.head("app/web", "v2").await.is_some()).await;
    assert!(helper_calls(&bin).len() > calls_before, "the helper was not asked again");
    assert_eq!(d.head("app/web", "v2").await, s.head("app/web", "v2").await);

    let pid = daemon.id().expect("daemon pid") as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await.expect("daemon stops").expect("reap daemon");
    assert_eq!(status.code(), Some(0), "{}", log());
    assert!(!log().contains("pw-one") && !log().contains("pw-two"), "a password leaked into the daemon's log");

    // A helper that fails: an error that names it and quotes it (filtered), not anonymous access.
    std::fs::write(bin.join("fail"), "").expect("fail switch");
    let state = scratch.state();
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &format!("{}/x", dst.url), "--state", &state], &env).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("docker-credential-test"), "{}", run.stderr);
    assert!(run.stderr.contains("backend unreachable"), "the helper's stderr is quoted: {}", run.stderr);
    assert!(!run.stderr.contains("s3cr3t-in-stderr"), "secrets in the helper's stderr are filtered: {}", run.stderr);
    assert!(!run.stderr.contains("requires credentials"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_tokens_use_the_oauth2_refresh_token_exchange() {
    let tokens = TokenServer::start(&[]);
    tokens.add_refresh_token("rt-from-config-6f1e2d", "ci");
    tokens.add_refresh_token("rt-from-helper-9a8b7c", "ci");
    let src = token_registry(&tokens);
    let dst = token_registry(&tokens);
    let s = Registry::new(&src.url, Access::Token(tokens.clone()));
    let d = Registry::new(&dst.url, Access::Token(tokens.clone()));
    push_tags(&s, "app/web", &["v1", "v2"], "idt").await;

    // identitytoken in config.json (what `az acr login` writes)
    let scratch = Scratch::new();
    let config = docker_config(
        &scratch,
        &format!(
            r#"{{"auths":{{"{}":{{"username":"00000000-0000-0000-0000-000000000000","identitytoken":"rt-from-config-6f1e2d"}},"{}":{{"identitytoken":"rt-from-config-6f1e2d"}}}}}}"#,
            src.host(),
            dst.host()
        ),
    );
    let env = [("DOCKER_CONFIG", config.to_str().unwrap_or_default()), ("RUST_LOG", "trace")];
    let state = scratch.state();
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &format!("{}/a", dst.url), "--state", &state], &env).await;
    run.assert_ok();
    assert_eq!(d.head("a/app/web", "v2").await, s.head("app/web", "v2").await);
    let issued = tokens.issued();
    assert!(!issued.is_empty());
    assert!(issued.iter().all(|i| i.grant == "refresh_token" && i.user.as_deref() == Some("ci")), "{issued:?}");
    assert!(issued.iter().any(|i| i.scopes.iter().any(|s| s == "repository:a/app/web:pull,push")), "{issued:?}");
    assert!(!run.stderr.contains("rt-from-config"), "the refresh token leaked at trace level");
    for i in &issued {
        let signature = i.token.rsplit('.').next().unwrap_or("never");
        assert!(!run.stderr.contains(signature), "an access token leaked at trace level");
    }

    // A helper answering for the user `<token>`: the same exchange.
    let bin = scratch.path("bin");
    install_helper(&bin, "<token>", "rt-from-helper-9a8b7c");
    std::fs::write(config.join("config.json"), r#"{"credsStore":"test"}"#).expect("config.json");
    let before = tokens.issued().len();
    let path = path_with(&bin);
    let env = [("DOCKER_CONFIG", config.to_str().unwrap_or_default()), ("PATH", path.as_str())];
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &format!("{}/b", dst.url), "--state", &state], &env).await;
    run.assert_ok();
    assert_eq!(d.head("b/app/web", "v1").await, s.head("app/web", "v1").await);
    let issued: Vec<_> = tokens.issued().into_iter().skip(before).collect();
    assert!(!issued.is_empty() && issued.iter().all(|i| i.grant == "refresh_token"), "{issued:?}");
    assert!(!run.stderr.contains("rt-from-helper"), "{}", run.stderr);

    // A token service that does not take POST (nginx answers 405): GET,
    // with the refresh token as a Basic password.
    let no_post = Nginx::start(
        &format!("http://127.0.0.1:{}", tokens.port),
        Front { extra: "if ($request_method = POST) { return 405; }\n".into(), ..Front::default() },
    );
    let behind = TestRegistry::start_with(Options {
        auth: testkit::Auth::Token {
            realm: format!("{}/token", no_post.url),
            service: tokens.service.clone(),
            issuer: tokens.issuer.clone(),
            cert_pem: tokens.cert_pem.clone(),
        },
        ..Options::default()
    });
    let before = tokens.issued().len();
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &behind.url, "--state", &state, "--json"], &env).await;
    run.assert_ok();
    let issued: Vec<_> = tokens.issued().into_iter().skip(before).collect();
    assert!(issued.iter().any(|i| i.grant == "basic-refresh-token"), "{issued:?}");
    assert!(no_post.count("POST", "/token", Some(405)) > 0, "POST was tried first");

    // A refresh token the service does not know: refused, and said so.
    std::fs::write(bin.join("secret"), "rt-unknown-000").expect("secret");
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &format!("{}/c", dst.url), "--state", &state], &env).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("refused the identity token") && run.stderr.contains(&format!(":{}", tokens.port)), "{}", run.stderr);
    assert!(!run.stderr.contains("rt-unknown-000"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiate_beside_bearer_and_a_401_without_a_challenge() {
    let tokens = TokenServer::start(&[("ci", "pw")]);
    let src = token_registry(&tokens);
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Token(tokens.clone()));
    let d = Registry::new(&dst.url, Access::Anonymous);
    push_tags(&s, "app/web", &["v1"], "neg").await;
    let upstream = format!("http://127.0.0.1:{}", src.port);

    // One header with two challenges, the unusable one first.
    let both = Nginx::start(
        &upstream,
        Front {
            extra: format!(
                "proxy_hide_header WWW-Authenticate;\n    add_header WWW-Authenticate 'Negotiate, Bearer realm=\"{}\",service=\"{}\"' always;\n",
                tokens.realm(),
                tokens.service
            ),
            ..Front::default()
        },
    );
    let scratch = Scratch::new();
    let state = scratch.state();
    let creds = [("REGFERRY_FROM_CREDS", "ci:pw")];
    let run = regferry(&scratch, &["migrate", "--from", &both.url, "--to", &format!("{}/n", dst.url), "--state", &state], &creds).await;
    run.assert_ok();
    assert_eq!(d.head("n/app/web", "v1").await, s.head("app/web", "v1").await);
    assert!(both.count("GET", "/v2/", Some(401)) > 0, "the front must have challenged");

    // Only `/v2/` carries a challenge; every other 401 comes bare. Tokens
    // that claim 300 s but die after a second make the registry answer 401
    // later, and the challenge the ping learnt is used again.
    let bare = Nginx::start(
        &upstream,
        Front {
            extra: format!(
                "proxy_hide_header WWW-Authenticate;\n    location = /v2/ {{ proxy_hide_header X-Unused; proxy_pass {upstream}; }}\n"
            ),
            ..Front::default()
        },
    );
    tokens.lifetime.store(1, Ordering::Relaxed);
    tokens.advertised.store(300, Ordering::Relaxed);
    let client = RegistryClient::new(
        &Endpoint::new(RegistryUrl::parse(&bare.url).expect("url"), Credentials::from_user_pass("ci:pw").expect("creds")),
        &ClientOptions::default(),
    )
    .expect("client");
    client.ping().await.expect("ping learns the challenge");
    let repo: RepoName = "app/web".parse().expect("repo");
    let tags = || Request::new(Method::GET, client.endpoint_url("/v2/app/web/tags/list"), Scopes::pull(&repo));
    client.send(&tags()).await.expect("tags with a fresh token");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.send(&tags()).await.expect("a bare 401 re-uses the known challenge");
    assert!(bare.count("GET", "/v2/app/web/tags/list", Some(401)) >= 1, "the expired token must have been refused");
    let lines = bare.access_lines();
    assert!(!lines.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_push_says_so() {
    let tokens = TokenServer::start(&[("robot", "robot-pw")]);
    let src = TestRegistry::start();
    let dst = token_registry(&tokens);
    let s = Registry::new(&src.url, Access::Anonymous);
    push_tags(&s, "app/web", &["v1"], "pull").await;
    tokens.grant_pull_only("app/web");

    let scratch = Scratch::new();
    let state = scratch.state();
    let run = regferry(
        &scratch,
        &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &state, "--json"],
        &[("REGFERRY_TO_CREDS", "robot:robot-pw")],
    )
    .await;
    assert_ne!(run.code, 0);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains(&format!("the token service http://127.0.0.1:{} granted pull only on app/web", tokens.port)), "{all}");
    assert!(all.contains("lack push rights") && all.contains("library/NAME"), "{all}");
    assert!(!all.contains("check the clocks"), "{all}");
    assert!(!all.contains("robot-pw"), "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_whose_tokens_expired_together_wait_for_one_fetch() {
    let tokens = TokenServer::start(&[("ci", "pw")]);
    let reg = token_registry(&tokens);
    let r = Registry::new(&reg.url, Access::Token(tokens.clone()));
    push_tags(&r, "app/web", &["v1"], "one").await;
    push_tags(&r, "app/other", &["v1"], "one").await;
    // Tokens say they live one second (and really live five minutes).
    tokens.advertised.store(1, Ordering::Relaxed);
    let client = Arc::new(
        RegistryClient::new(
            &Endpoint::new(RegistryUrl::parse(&reg.url).expect("url"), Credentials::from_user_pass("ci:pw").expect("creds")),
            &ClientOptions::default(),
        )
        .expect("client"),
    );
    client.ping().await.expect("ping");
    let web: RepoName = "app/web".parse().expect("repo");
    let other: RepoName = "app/other".parse().expect("repo");
    let fetches = |scope: &str| tokens.issued().iter().filter(|i| i.scopes.iter().any(|s| s == scope)).count();
    let burst = |repo: RepoName| {
        let client = client.clone();
        async move {
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let client = client.clone();
                    let url = client.endpoint_url(&format!("/v2/{repo}/tags/list"));
                    let scopes = Scopes::pull(&repo);
                    tokio::spawn(async move { client.send(&Request::new(Method::GET, url, scopes)).await.map(|_| ()) })
                })
                .collect();
            for t in tasks {
                t.await.expect("task").expect("request");
            }
        }
    };
    tokens.delay_ms.store(300, Ordering::Relaxed);
    burst(web.clone()).await;
    assert_eq!(fetches("repository:app/web:pull"), 1, "16 tasks, one token fetch");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    burst(web.clone()).await;
    assert_eq!(fetches("repository:app/web:pull"), 2, "16 tasks whose token expired together, one more fetch");

    // A slow token service does not stall requests that hold a token for
    // other scopes.
    tokens.advertised.store(300, Ordering::Relaxed);
    burst(other.clone()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // web's 1 s token is now stale
    tokens.delay_ms.store(4000, Ordering::Relaxed);
    let received = tokens.received.load(Ordering::Relaxed);
    let slow = tokio::spawn(burst(web.clone()));
    wait_until(Duration::from_secs(10), "the slow token request to arrive", async || tokens.received.load(Ordering::Relaxed) > received).await;
    burst(other.clone()).await;
    assert!(!slow.is_finished(), "requests for app/other must not wait for app/web's token");
    slow.await.expect("slow burst");
    assert_eq!(fetches("repository:app/web:pull"), 3);
    assert_eq!(fetches("repository:app/other:pull"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_client_certificates() {
    let pki = testkit::tls::Pki::new();
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    push_tags(&s, "app/web", &["v1"], "mtls").await;
    let front = Nginx::start(
        &format!("http://127.0.0.1:{}", src.port),
        Front {
            tls: Some((pki.cert.clone(), pki.key.clone())),
            extra: format!("ssl_client_certificate {};\n    ssl_verify_client on;\n", pki.ca.display()),
            ..Front::default()
        },
    );
    let scratch = Scratch::new();
    let state = scratch.state();
    let (ca, cert, key) = (pki.ca.to_string_lossy(), pki.client_cert.to_string_lossy(), pki.client_key.to_string_lossy());

    // Without a client certificate nginx refuses.
    let run = regferry(&scratch, &["migrate", "--from", &front.url, "--to", &dst.url, "--state", &state, "--from-ca", &ca], &[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    // …and the error says what to do about it.
    assert!(run.stderr.contains("No required SSL certificate was sent"), "{}", run.stderr);
    assert!(run.stderr.contains("the registry requires a client certificate (--from-cert/--from-key"), "{}", run.stderr);

    let run = regferry(
        &scratch,
        &["migrate", "--from", &front.url, "--to", &dst.url, "--state", &state, "--from-ca", &ca, "--from-cert", &cert, "--from-key", &key],
        &[],
    )
    .await;
    run.assert_ok();
    assert_eq!(d.head("app/web", "v1").await, s.head("app/web", "v1").await);
    let key_pem = std::fs::read_to_string(&pki.client_key).expect("key");
    let body = key_pem.lines().nth(1).unwrap_or("never");
    assert!(!run.stderr.contains(body) && !run.stdout.contains(body), "the client key leaked");

    // Half a pair, or a key that is not one: bad input, named.
    let run = regferry(&scratch, &["migrate", "--from", &front.url, "--to", &dst.url, "--state", &state, "--from-cert", &cert], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--from-cert and --from-key go together"), "{}", run.stderr);
    let run = regferry(
        &scratch,
        &["migrate", "--from", &front.url, "--to", &dst.url, "--state", &state, "--from-cert", &cert, "--from-key", &ca],
        &[],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("holds no PEM private key"), "{}", run.stderr);

    // docker's certs.d convention: ~/.config/containers/certs.d/HOST:PORT/
    // with ca.crt, client.cert and client.key (HOME is the scratch directory).
    let certs_d = scratch.path(&format!(".config/containers/certs.d/{}", front.host()));
    std::fs::create_dir_all(&certs_d).expect("certs.d");
    std::fs::copy(&pki.ca, certs_d.join("ca.crt")).expect("ca.crt");
    std::fs::copy(&pki.client_cert, certs_d.join("client.cert")).expect("client.cert");
    std::fs::copy(&pki.client_key, certs_d.join("client.key")).expect("client.key");
    let run = regferry(&scratch, &["migrate", "--from", &front.url, "--to", &format!("{}/certsd", dst.url), "--state", &state], &[]).await;
    run.assert_ok();
    assert_eq!(d.head("certsd/app/web", "v1").await, s.head("app/web", "v1").await);
    std::fs::remove_dir_all(&certs_d).expect("remove certs.d");

    // The same from a policy.
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: m\nsource:\n  registry: '{}'\n  ca_file: '{ca}'\n  client_cert: '{cert}'\n  client_key: '{key}'\n\
             destinations:\n  - registry: '{}/pol'\n",
            front.url, dst.url
        ),
    );
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).await;
    run.assert_ok();
    assert_eq!(d.head("pol/app/web", "v1").await, s.head("app/web", "v1").await);
}

/// A real forward proxy (Debian's `tinyproxy`) on a free loopback port,
/// logging every request; stopped when dropped.
struct Tinyproxy {
    child: std::process::Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Tinyproxy {
    fn start() -> Tinyproxy {
        let dir = tempfile::Builder::new().prefix("regferry-tinyproxy-").tempdir().expect("temp dir");
        let port = testkit::free_port();
        let conf = dir.path().join("tinyproxy.conf");
        let user = if unsafe { libc::geteuid() } == 0 { "User root\nGroup root\n" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "{user}Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 64\nLogLevel Info\nLogFile \"{log}\"\nAllow 127.0.0.1\n",
                log = dir.path().join("access.log").display()
            ),
        )
        .expect("tinyproxy config");
        let binary = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("tinyproxy is not installed: run scripts/deps.sh");
        let child = std::process::Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tinyproxy did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Tinyproxy { child, dir, url: format!("http://127.0.0.1:{port}") }
    }

    /// Requests the proxy forwarded to `host` (`127.0.0.1:PORT`).
    fn requests_to(&self, host: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("Request (file descriptor") && l.contains(&format!("http://{host}/"))).count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_from_the_environment_and_per_registry() {
    let proxy = Tinyproxy::start();
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    push_tags(&s, "app/web", &["v1"], "proxy").await;
    let scratch = Scratch::new();
    let state = scratch.state();

    // HTTP_PROXY from the environment: every request goes through it.
    let run = regferry(
        &scratch,
        &["migrate", "--from", &src.url, "--to", &format!("{}/env", dst.url), "--state", &state],
        &[("HTTP_PROXY", proxy.url.as_str()), ("NO_PROXY", "")],
    )
    .await;
    run.assert_ok();
    assert_eq!(d.head("env/app/web", "v1").await, s.head("app/web", "v1").await);
    assert!(proxy.requests_to(&src.host()) > 0 && proxy.requests_to(&dst.host()) > 0, "the proxy saw no request");

    // A policy's proxy for the source only; `proxy: none` for the destination
    // beats an environment proxy that leads nowhere.
    let src_before = proxy.requests_to(&src.host());
    let dst_before = proxy.requests_to(&dst.host());
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: px\nsource:\n  registry: '{}'\n  proxy: '{}'\ndestinations:\n  - registry: '{}/pol'\n    proxy: none\n",
            src.url, proxy.url, dst.url
        ),
    );
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[("HTTP_PROXY", "http://127.0.0.1:1")]).await;
    run.assert_ok();
    assert_eq!(d.head("pol/app/web", "v1").await, s.head("app/web", "v1").await);
    assert!(proxy.requests_to(&src.host()) > src_before, "the source's proxy was not used");
    assert_eq!(proxy.requests_to(&dst.host()), dst_before, "the destination must go direct");

    // A proxy URL that is not one is bad input, without its password.
    let policies = crate::policies::write(
        &scratch,
        "bad",
        "p.yaml",
        &format!("name: px\nsource:\n  registry: '{}'\n  proxy: 'socks9://u:hunter2@p'\ndestinations:\n  - registry: '{}'\n", src.url, dst.url),
    );
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("proxy") && !run.stderr.contains("hunter2"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_auth_files_and_namespaced_keys() {
    let src = TestRegistry::start_with(Options {
        auth: testkit::Auth::Htpasswd { user: "team".into(), password: "team-pw".into() },
        ..Options::default()
    });
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Basic("team".into(), "team-pw".into()));
    let d = Registry::new(&dst.url, Access::Anonymous);
    push_tags(&s, "org-a/app", &["v1"], "podman").await;
    let scratch = Scratch::new();
    let state = scratch.state();
    let enc = |s: &str| testkit::client::basic(s.split(':').next().unwrap_or(""), s.split(':').nth(1).unwrap_or("")).trim_start_matches("Basic ").to_string();
    // The host-wide key holds a wrong password; the namespaced one the right one.
    let json = format!(
        r#"{{"auths":{{"{h}":{{"auth":"{wrong}"}},"{h}/org-a":{{"auth":"{right}"}},"{h}/org-a/app/deeper":{{"auth":"{wrong}"}},"{h}/org":{{"auth":"{wrong}"}}}}}}"#,
        h = src.host(),
        wrong = enc("team:wrong-pw"),
        right = enc("team:team-pw")
    );
    let runtime = scratch.path("run");
    std::fs::create_dir_all(runtime.join("containers")).expect("runtime dir");
    std::fs::write(runtime.join("containers/auth.json"), &json).expect("auth.json");
    let from = format!("{}/org-a", src.url);
    let run = regferry(
        &scratch,
        &["migrate", "--from", &from, "--to", &format!("{}/p", dst.url), "--state", &state, "--repo", "app"],
        &[("XDG_RUNTIME_DIR", runtime.to_str().unwrap_or_default())],
    )
    .await;
    run.assert_ok();
    assert_eq!(d.head("p/app", "v1").await, s.head("org-a/app", "v1").await);

    // --authfile names the file; the host-wide key alone is the wrong password.
    let file = scratch.path("elsewhere.json");
    std::fs::write(&file, &json).expect("authfile");
    let run = regferry(
        &scratch,
        &["migrate", "--from", &src.url, "--to", &format!("{}/q", dst.url), "--state", &state, "--authfile", file.to_str().unwrap_or_default(), "--repo", "org-a/app"],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("username or password rejected"), "{}", run.stderr);
    let run = regferry(
        &scratch,
        &["migrate", "--from", &from, "--to", &format!("{}/q", dst.url), "--state", &state, "--authfile", file.to_str().unwrap_or_default(), "--repo", "app"],
        &[],
    )
    .await;
    run.assert_ok();

    // A policy's auth_file.
    let policies = crate::policies::write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: pa
source:
  registry: '{from}'
  credentials: {{ auth_file: '{}' }}
  repositories: [app]
destinations:
  - registry: '{}/r'
",
            file.display(),
            dst.url
        ),
    );
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).await;
    run.assert_ok();
    assert_eq!(d.head("r/app", "v1").await, s.head("org-a/app", "v1").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_http_realm_for_an_https_registry_is_refused_unless_insecure() {
    let pki = testkit::tls::Pki::new();
    let tokens = TokenServer::start(&[("ci", "pw")]);
    let src = token_registry(&tokens);
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Token(tokens.clone()));
    push_tags(&s, "app/web", &["v1"], "realm").await;
    // HTTPS in front of a registry whose token service is plain HTTP.
    let front = Nginx::start(&format!("http://127.0.0.1:{}", src.port), Front { tls: Some((pki.cert.clone(), pki.key.clone())), ..Front::default() });
    let scratch = Scratch::new();
    let state = scratch.state();
    let ca = pki.ca.to_string_lossy();
    let creds = [("REGFERRY_FROM_CREDS", "ci:pw")];
    let run = regferry(&scratch, &["migrate", "--from", &front.url, "--to", &dst.url, "--state", &state, "--from-ca", &ca], &creds).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("the token service http://127.0.0.1:{} is not HTTPS", tokens.port)), "{}", run.stderr);
    assert!(tokens.issued().is_empty(), "no credentials may travel to the plain-HTTP realm");
    let run = regferry(&scratch, &["migrate", "--from", &front.url, "--to", &dst.url, "--state", &state, "--from-insecure"], &creds).await;
    run.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_are_read_again_from_their_file_within_one_client() {
    let tokens = TokenServer::start(&[("ci", "pw-one")]);
    let reg = token_registry(&tokens);
    let r = Registry::new(&reg.url, Access::Token(tokens.clone()));
    push_tags(&r, "app/web", &["v1"], "reread").await;
    let scratch = Scratch::new();
    let file = scratch.path("auth.json");
    let write = |pw: &str| {
        std::fs::write(&file, format!(r#"{{"auths":{{"{}":{{"username":"ci","password":"{pw}"}}}}}}"#, reg.host())).expect("auth.json")
    };
    write("pw-one");
    tokens.advertised.store(1, Ordering::Relaxed);
    let mut endpoint = Endpoint::new(RegistryUrl::parse(&reg.url).expect("url"), Credentials::Anonymous);
    endpoint.credentials = regferry::registry::CredentialSource::ConfigFiles { files: vec![file.clone()] };
    let client = RegistryClient::new(&endpoint, &ClientOptions::default()).expect("client");
    let repo: RepoName = "app/web".parse().expect("repo");
    let tags = || Request::new(Method::GET, client.endpoint_url("/v2/app/web/tags/list"), Scopes::pull(&repo));
    client.send(&tags()).await.expect("with the first password");

    // Rotated at the token service and in the file; the cached token expires.
    tokens.set_password("ci", "pw-two");
    write("pw-two");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let refused = tokens.refused();
    client.send(&tags()).await.expect("the file is read again after the refusal");
    assert_eq!(tokens.refused(), refused + 1, "one refusal of the old password, then the new one");
    assert_eq!(tokens.issued().last().and_then(|i| i.user.clone()).as_deref(), Some("ci"));
}

/// Registry settings: htpasswd with the one user `ci` and `password`.
fn htpasswd(password: &str) -> Options {
    Options { auth: testkit::Auth::Htpasswd { user: "ci".into(), password: password.into() }, ..Options::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_follows_htpasswd_passwords_rotated_by_restarting_the_registries() {
    let mut src = TestRegistry::start_with(htpasswd("pw-one"));
    let mut dst = TestRegistry::start_with(htpasswd("pw-one"));
    let s = Registry::new(&src.url, Access::Basic("ci".into(), "pw-one".into()));
    let d = Registry::new(&dst.url, Access::Basic("ci".into(), "pw-one".into()));
    push_tags(&s, "app/web", &["v1"], "htrot").await;

    let scratch = Scratch::new();
    let HelperDaemon { bin, child: mut daemon, .. } = start_helper_daemon(&scratch, "htrot", &src, &dst);
    let log = || std::fs::read_to_string(scratch.path("daemon.log")).unwrap_or_default();
    wait_until(Duration::from_secs(30), "the first pass to copy v1", async || d.head("app/web", "v1").await.is_some()).await;
    let v1 = s.head("app/web", "v1").await;

    // The password is rotated on both registries: each is restarted on its
    // port and storage with a new htpasswd file, and the helper answers the
    // new password. No SIGHUP, no restart of the daemon.
    std::fs::write(bin.join("secret"), "pw-two").expect("rotate");
    src.restart_with(htpasswd("pw-two"));
    dst.restart_with(htpasswd("pw-two"));
    let calls_before = helper_calls(&bin).len();
    assert_eq!(s.head("app/web", "v1").await, None, "the old password must be refused now");
    let s = Registry::new(&src.url, Access::Basic("ci".into(), "pw-two".into()));
    let d = Registry::new(&dst.url, Access::Basic("ci".into(), "pw-two".into()));
    assert_eq!(s.head("app/web", "v1").await, v1, "the restarted registry keeps its storage");
    push_tags(&s, "app/web", &["v2"], "htrot").await;
    wait_until(Duration::from_secs(30), "a pass after the rotation to copy v2", async || d.head("app/web", "v2").await.is_some()).await;
    assert_eq!(d.head("app/web", "v2").await, s.head("app/web", "v2").await);
    let asked_after: Vec<String> = helper_calls(&bin).into_iter().skip(calls_before).collect();
    assert!(
        asked_after.contains(&src.host()) && asked_after.contains(&dst.host()),
        "the helper must be asked again for both registries after the rotation: {asked_after:?}"
    );

    let pid = daemon.id().expect("daemon pid") as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await.expect("daemon stops").expect("reap daemon");
    assert_eq!(status.code(), Some(0), "{}", log());
    assert!(!log().contains("pw-one") && !log().contains("pw-two"), "a password leaked into the daemon's log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_basic_password_is_read_again_within_one_client() {
    let mut reg = TestRegistry::start_with(htpasswd("pw-one"));
    let r = Registry::new(&reg.url, Access::Basic("ci".into(), "pw-one".into()));
    push_tags(&r, "app/web", &["v1"], "basic-reread").await;
    let scratch = Scratch::new();
    let file = scratch.path("auth.json");
    let host = reg.host();
    let write = |pw: &str| {
        std::fs::write(&file, format!(r#"{{"auths":{{"{host}":{{"username":"ci","password":"{pw}"}}}}}}"#)).expect("auth.json")
    };
    write("pw-one");
    let mut endpoint = Endpoint::new(RegistryUrl::parse(&reg.url).expect("url"), Credentials::Anonymous);
    endpoint.credentials = regferry::registry::CredentialSource::ConfigFiles { files: vec![file.clone()] };
    let client = RegistryClient::new(&endpoint, &ClientOptions::default()).expect("client");
    let repo: RepoName = "app/web".parse().expect("repo");
    let tags = || Request::new(Method::GET, client.endpoint_url("/v2/app/web/tags/list"), Scopes::pull(&repo));
    client.send(&tags()).await.expect("with the first password");

    // Rotated: the registry restarts with the new password, the file holds it.
    write("pw-two");
    reg.restart_with(htpasswd("pw-two"));
    let refusals = || reg.access_lines().iter().filter(|l| l.contains("/v2/app/web/tags/list") && l.contains("\" 401 ")).count();
    let refused = refusals();
    client.send(&tags()).await.expect("the file is read again after the refusal");
    let refused_now = refusals();
    assert_eq!(refused_now, refused + 1, "one refusal of the old password, then the new one: {:?}", reg.access_lines());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_writes_asks_for_push_first_and_read_only_commands_for_pull() {
    let tokens = TokenServer::start(&[("ci", "pw")]);
    let src = TestRegistry::start();
    let dst = token_registry(&tokens);
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Token(tokens.clone()));
    // v1 is at the destination already (same seed, same digest), v2 is not:
    // the run lists and HEADs the destination before it writes there.
    push_tags(&s, "app/web", &["v1", "v2"], "push-first").await;
    push_tags(&d, "app/web", &["v1"], "push-first").await;
    let scratch = Scratch::new();
    let state = scratch.state();
    let creds = [("REGFERRY_TO_CREDS", "ci:pw")];
    let asked = |since: usize| -> Vec<String> {
        tokens.issued().into_iter().skip(since).flat_map(|i| i.scopes).filter(|s| s.starts_with("repository:app/web:")).collect()
    };

    // Read-only commands never ask for push.
    let before = tokens.issued().len();
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &state, "--dry-run"], &creds).await;
    run.assert_ok();
    let before_verify = tokens.issued().len();
    let run = regferry(&scratch, &["verify", "--from", &src.url, "--to", &dst.url], &creds).await;
    assert_eq!(run.code, 1, "v2 is missing: {}\n{}", run.stdout, run.stderr);
    let read_only = asked(before);
    assert!(!read_only.is_empty() && read_only.iter().all(|s| s == "repository:app/web:pull"), "{read_only:?}");
    assert!(asked(before_verify).len() == 1, "verify: one pull token: {:?}", asked(before_verify));
    assert_eq!(d.head("app/web", "v2").await, None, "the dry run wrote");

    // A run that writes asks for push,pull at its first request to the
    // repository (the tag listing), and never fetches a second token for it.
    let before = tokens.issued().len();
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &state], &creds).await;
    run.assert_ok();
    assert_eq!(d.head("app/web", "v2").await, s.head("app/web", "v2").await);
    assert_eq!(asked(before), vec!["repository:app/web:pull,push".to_string()], "one token per repository, push first");

    // An account without push whose run has nothing to write still
    // succeeds: the token service grants what it may (pull), and only a
    // write would need more.
    tokens.grant_pull_only("app/web");
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &state], &creds).await;
    run.assert_ok();
}
