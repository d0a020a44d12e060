//! Eventually consistent registries and where credentials go, against real
//! docker-registry processes: manifest pushes refused while the registry
//! catches up (the fault proxy answers what Pulp and Harbor/S3 answer),
//! upload sessions lost right after their `POST`, upload state refused in
//! every session (replicas without a shared `http.secret`), and a TLS front
//! that hands out `http://` upload locations.

use testkit::dataset::{self, Spec};
use testkit::image::{self, Flavor};
use testkit::nginx::{Front, Nginx};
use testkit::{Access, Auth, FaultProxy, Faults, Options, Registry, TestRegistry};

use crate::support::{Scratch, assert_mirrored, migrate, regferry, repos_of};

fn plain(repos: usize, tags: usize) -> Spec {
    Spec { prefix: "conv".into(), repos, tags_per_repo: tags, multi_arch_every: 2, signatures: true, ..Spec::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_refused_while_the_registry_catches_up_converges_within_the_run() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let (s, d) = (Registry::new(&src.url, Access::Anonymous), Registry::new(&dst.url, Access::Anonymous));
    let pushed = dataset::fill(&s, &plain(2, 2)).await;
    // The first four manifest PUTs are refused as MANIFEST_INVALID
    // although everything they reference is there.
    let dp = FaultProxy::start(&dst.url, Faults { manifest_put_invalid: 1.0, limit: 4, ..Faults::default() });
    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dp.url, &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["counts"]["tags_copied"], pushed.len() as u64);
    assert_eq!(dp.counters.injected("manifest_put_invalid"), 4);
    assert_eq!(assert_mirrored(&s, &d, &repos_of(&pushed), "").await, pushed.len());
    // Each refusal was answered by asking for what the manifest references, not by sending it again.
    let seen = dp.counters.seen();
    let blob_writes = seen.iter().filter(|r| r.method == "PUT" && r.target.contains("/blobs/uploads/")).count();
    let distinct: std::collections::HashSet<&str> =
        pushed.iter().flat_map(|p| p.manifest.all_blobs()).map(|b| b.digest.as_str()).collect();
    assert!(blob_writes <= distinct.len(), "blobs were sent again: {blob_writes} uploads for {} blobs", distinct.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_session_not_found_right_after_post_is_replaced() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let (s, d) = (Registry::new(&src.url, Access::Anonymous), Registry::new(&dst.url, Access::Anonymous));
    let pushed = dataset::fill(&s, &Spec { multi_arch_every: 0, signatures: false, ..plain(1, 2) }).await;
    // S3-backed registries behind a load balancer: 404 "Path not found" (no registry error code).
    let dp = FaultProxy::start(&dst.url, Faults { upload_path_not_found: 1.0, limit: 3, ..Faults::default() });
    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dp.url, &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(dp.counters.injected("upload_path_not_found"), 3);
    assert_eq!(assert_mirrored(&s, &d, &repos_of(&pushed), "").await, pushed.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_state_refused_in_every_session_is_reported_as_replicas_without_a_shared_secret() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    s.push("app/one", "v1", &image::image(Flavor::Oci, "one", vec![image::layer(Flavor::Oci, "one", 1000)])).await;
    let dp = FaultProxy::start(&dst.url, Faults { upload_invalid: 1.0, ..Faults::default() });
    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dp.url, &[]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("http.secret"), "{all}");
    assert!(all.contains("BLOB_UPLOAD_INVALID"), "{all}");
    // A bounded number of sessions per blob (not one per whole-tag retry).
    assert!(dp.counters.injected("upload_invalid") <= 4, "{}", dp.counters.injected("upload_invalid"));
}

/// A TLS front that does not pass `X-Forwarded-Proto`: distribution hands
/// out `http://` upload locations on the front's port. regferry refuses the
/// downgrade (naming it) and never sends the password over plain http; a
/// registry marked insecure may use the location, but still without
/// credentials (another origin).
#[tokio::test(flavor = "multi_thread")]
async fn an_http_upload_location_behind_a_tls_front_gets_no_credentials() {
    let pki = testkit::tls::Pki::new();
    let src = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    s.push("app/web", "v1", &image::image(Flavor::Oci, "web", vec![image::layer(Flavor::Oci, "web", 2000)])).await;
    let dst = TestRegistry::start_with(Options { auth: Auth::Htpasswd { user: "ci".into(), password: "ci-secret-pw".into() }, ..Options::default() });
    let front = Nginx::start(
        &dst.url,
        Front { tls: Some((pki.cert.clone(), pki.key.clone())), no_forwarded_proto: true, ..Front::default() },
    );
    let scratch = Scratch::new();
    let ca = pki.ca.to_string_lossy().into_owned();
    let plain_with_auth = |front: &Nginx| front.access_lines().into_iter().filter(|l| l.ends_with(" tls=") && l.contains(" auth=yes")).collect::<Vec<_>>();

    let run = regferry(
        &scratch,
        &["migrate", "--from", &src.url, "--to", &front.url, "--state", &scratch.state(), "--to-ca", &ca, "--to-creds", "ci:ci-secret-pw"],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("plain-http location") && all.contains("X-Forwarded-Proto"), "the error names the downgrade: {all}");
    assert!(!all.contains("ci-secret-pw"));
    assert!(plain_with_auth(&front).is_empty(), "credentials went over plain http: {:?}", front.access_lines());
    assert!(front.access_lines().iter().all(|l| l.ends_with(" tls=on")), "nothing may go over plain http: {:?}", front.access_lines());

    // Marked insecure: the location is used, without the password.
    let run = regferry(
        &scratch,
        &["migrate", "--from", &src.url, "--to", &front.url, "--state", &scratch.state(), "--to-insecure", "--to-creds", "ci:ci-secret-pw"],
        &[],
    )
    .await;
    assert_ne!(run.code, 0, "the plain-http session cannot work through a TLS port\n{}\n{}", run.stdout, run.stderr);
    let plain: Vec<String> = front.access_lines().into_iter().filter(|l| l.ends_with(" tls=")).collect();
    assert!(!plain.is_empty(), "the insecure registry's http location was used: {:?}", front.access_lines());
    assert!(plain_with_auth(&front).is_empty(), "credentials went over plain http: {plain:?}");
}

/// With no credentials, a `401` on `/v2/` no longer ends the run at the
/// probe (Pulp serves public repositories anonymously, see `pulp.rs`); a
/// registry that refuses the repository requests too fails with the request
/// that was refused named.
#[tokio::test(flavor = "multi_thread")]
async fn anonymous_access_refused_beyond_the_probe_names_the_refused_request() {
    let src = TestRegistry::start_with(Options { auth: Auth::Htpasswd { user: "ci".into(), password: "ci-pw".into() }, ..Options::default() });
    let dst = TestRegistry::start();
    let scratch = Scratch::new();
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &scratch.state()], &[]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("GET /v2/_catalog was refused (401)"), "{}", run.stderr);
    assert!(run.stderr.contains("requires credentials and none were given"), "{}", run.stderr);
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--repo", "app/web", "--state", &scratch.state()], &[]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("/v2/app/web/tags/list was refused (401)"), "{all}");
}
