//! Deployment shapes of production registries, all on loopback: registries
//! on S3 storage (a local `moto_server`; blob `HEAD`/`GET` answer `307` to a
//! presigned storage URL), a source behind a front that redirects its whole
//! `/v2/` API to another origin (which may want a token of its own), and a
//! destination behind a front that refuses `HEAD` on manifests.

use std::sync::Arc;

use testkit::dataset::{self, Spec};
use testkit::{Access, FaultProxy, Faults, Front, Nginx, Options, Registry, S3Storage, TestRegistry, TokenServer};

use crate::support::{Scratch, assert_mirrored, migrate, plain_images, regferry, repos_of};

fn on_s3() -> TestRegistry {
    TestRegistry::start_with(Options { s3: Some(S3Storage::shared()), ..Options::default() })
}

/// `regferry verify --deep --json` between `from` and `to`; asserts that it
/// passed and returns (tags, identical) from the report.
async fn verify_deep(scratch: &Scratch, from: &str, to: &str) -> (u64, u64) {
    let run = regferry(scratch, &["verify", "--from", from, "--to", to, "--deep", "--json"], &[]).await;
    assert_eq!(run.code, 0, "verify --deep failed\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let report = &run.json()["results"][0]["report"];
    assert!(report["problems"].as_array().is_none_or(|p| p.is_empty()), "{report}");
    (report["tags"].as_u64().unwrap_or(0), report["identical"].as_u64().unwrap_or(0))
}

/// The registry's access log shows `method` on `part` answered with `status`.
fn answered(registry: &TestRegistry, method: &str, part: &str, status: u16) -> usize {
    let (m, s) = (format!("\"{method} /v2/"), format!("\" {status} "));
    registry.lines_by("regferry/").iter().filter(|l| l.contains(&m) && l.contains(part) && l.contains(&s)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_on_s3_takes_later_runs_and_verifies_pullable() {
    let src = TestRegistry::start();
    let dst = on_s3();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let first = Spec { repos: 2, tags_per_repo: 2, multi_arch_every: 3, ..Spec::default() };
    let before = dataset::fill(&s, &first).await;
    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dst.url, &[]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], before.len() as u64);

    // New tags that reuse the base and repository layers: the destination
    // answers their blob HEADs with 307 to storage, which means "present".
    let more = Spec { tags_per_repo: 3, ..first.clone() };
    let pushed = dataset::fill(&s, &more).await;
    let again = migrate(&scratch, &src.url, &dst.url, &[]).await;
    again.assert_ok();
    let report = again.json();
    assert_eq!(report["counts"]["tags_copied"], (pushed.len() - before.len()) as u64, "{report}");
    let new_bytes = dataset::distinct_blob_bytes(&pushed) - dataset::distinct_blob_bytes(&before);
    assert_eq!(report["counts"]["bytes_uploaded"], new_bytes, "reused blobs are not uploaded again: {report}");
    assert!(answered(&dst, "HEAD", "/blobs/sha256:", 307) > 0, "the destination redirected blob HEADs to storage");

    let repos = repos_of(&pushed);
    assert_eq!(assert_mirrored(&s, &d, &repos, "").await, pushed.len());
    let (tags, identical) = verify_deep(&scratch, &src.url, &dst.url).await;
    assert_eq!((tags, identical), (pushed.len() as u64, pushed.len() as u64));

    // A third run has nothing to do.
    let third = migrate(&scratch, &src.url, &dst.url, &[]).await;
    third.assert_ok();
    assert_eq!(third.json()["counts"]["tags_copied"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_on_s3_is_read_through_its_storage_redirects() {
    let src = on_s3();
    let dst = on_s3();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let pushed = dataset::fill(&s, &Spec { repos: 2, tags_per_repo: 2, multi_arch_every: 2, ..Spec::default() }).await;
    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &format!("{}/mirror", dst.url), &[]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["bytes_uploaded"], dataset::distinct_blob_bytes(&pushed));
    assert!(answered(&src, "GET", "/blobs/sha256:", 307) > 0, "the source redirected blob downloads to storage");
    assert_eq!(assert_mirrored(&s, &d, &repos_of(&pushed), "mirror").await, pushed.len());
    let (_, identical) = verify_deep(&scratch, &src.url, &format!("{}/mirror", dst.url)).await;
    assert_eq!(identical, pushed.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_whose_whole_api_redirects_is_read_through_the_redirects() {
    let (src, dst, s, d) = crate::support::registries();
    let pushed = dataset::fill(&s, &plain_images(2, 2)).await;
    let front = Nginx::start(&src.url, Front { redirect_to: Some(src.url.clone()), ..Front::default() });
    let scratch = Scratch::new();
    let run = migrate(&scratch, &front.url, &dst.url, &[]).await;
    run.assert_ok();
    assert_eq!(assert_mirrored(&s, &d, &repos_of(&pushed), "").await, pushed.len());
    // Every kind of request met the redirect and was followed to the registry.
    for (method, part) in [("GET", "/v2/_catalog"), ("GET", "/tags/list"), ("GET", "/manifests/"), ("GET", "/blobs/")] {
        assert!(front.count(method, part, Some(307)) > 0, "{method} {part} was not redirected: {:?}", front.access_lines());
        assert!(src.count(method, part) > 0, "{method} {part} never reached the registry");
    }
    assert!(front.access_lines().iter().any(|l| l.starts_with("GET /v2/ 307")), "the ping was redirected too");

    // The next run compares by HEAD through the redirect and copies nothing.
    let again = migrate(&scratch, &front.url, &dst.url, &[]).await;
    again.assert_ok();
    assert_eq!(again.json()["counts"]["tags_copied"], 0);
    assert!(front.count("HEAD", "/manifests/", Some(307)) > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_target_gets_its_own_anonymous_token_and_never_the_registry_credentials() {
    const USER: &str = "alice";
    const PW: &str = "front-Pw-stays-home";
    // A: the registry the user has credentials for (its catalog answers
    // through the front). B: where the front sends tags, manifests and
    // blobs; it has a token service of its own that lets anyone pull.
    let a = TestRegistry::start_with(Options {
        auth: testkit::Auth::Htpasswd { user: USER.into(), password: PW.into() },
        ..Options::default()
    });
    let tokens: Arc<TokenServer> = TokenServer::start(&[("bob", "bob-pw")]);
    let b = TestRegistry::start_with(Options { auth: tokens.registry_auth(), ..Options::default() });
    let dst = TestRegistry::start();
    let spec = plain_images(2, 2);
    let pushed = dataset::fill(&Registry::new(&a.url, Access::Basic(USER.into(), PW.into())), &spec).await;
    let bb = Registry::new(&b.url, Access::Token(tokens.clone()));
    dataset::fill(&bb, &spec).await;
    let b_seen = FaultProxy::start(&b.url, Faults::default());
    let extra = format!("location ~ ^/v2/.+/(manifests|blobs|tags)/ {{ return 307 {}$request_uri; }}\n", b_seen.url);
    let front = Nginx::start(&a.url, Front { extra, ..Front::default() });

    let scratch = Scratch::new();
    let creds = format!("{USER}:{PW}");
    let args = crate::support::migrate_args(&scratch, &front.url, &dst.url, &[]);
    let run = regferry(&scratch, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[("REGFERRY_FROM_CREDS", &creds)]).await;
    run.assert_ok();
    assert_eq!(assert_mirrored(&bb, &Registry::new(&dst.url, Access::Anonymous), &repos_of(&pushed), "").await, pushed.len());

    // The front (A's origin) got A's credentials; B never did.
    assert!(answered(&a, "GET", "_catalog", 200) > 0, "A's catalog was read with A's credentials");
    let seen = b_seen.counters.seen();
    assert!(front.count("GET", "/blobs/", Some(307)) > 0 && seen.iter().any(|r| r.target.contains("/blobs/")), "blobs came from B");
    for r in &seen {
        let auth = r.authorization.as_deref().unwrap_or("");
        assert!(!auth.starts_with("Basic"), "{} {} carried basic credentials to B", r.method, r.target);
    }
    assert!(seen.iter().any(|r| r.authorization.as_deref().is_some_and(|v| v.starts_with("Bearer "))), "B was given its own tokens");
    // B's token service was asked anonymously, only for pull, never with A's password.
    let issued = tokens.issued();
    assert!(!issued.is_empty());
    assert_eq!(tokens.refused(), 0, "A's credentials were offered to B's token service");
    for t in &issued {
        assert_eq!(t.user, None, "B's token service saw a user: {t:?}");
        assert!(t.scopes.iter().all(|s| s.ends_with(":pull")), "{:?}", t.scopes);
    }
    // One token per scope, cached for the origin: not one per request.
    let pulls: std::collections::BTreeSet<&String> = issued.iter().flat_map(|t| &t.scopes).collect();
    assert!(issued.len() <= pulls.len() * 2, "{} tokens for {} scopes", issued.len(), pulls.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn fronts_that_refuse_manifest_head_are_asked_with_get_once_known() {
    let (src, dst, s, d) = crate::support::registries();
    let pushed = dataset::fill(&s, &plain_images(2, 3)).await;
    let src_front = Nginx::start(&src.url, Front { refuse_manifest_head: Some(400), ..Front::default() });
    let dst_front = Nginx::start(&dst.url, Front { refuse_manifest_head: Some(405), ..Front::default() });
    let refused = |n: &Nginx, status: u16| n.count("HEAD", "/manifests/", Some(status));
    let scratch = Scratch::new();

    let run = migrate(&scratch, &src_front.url, &dst_front.url, &[]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], pushed.len() as u64);
    assert!(refused(&src_front, 400) <= 1 && refused(&dst_front, 405) <= 1, "{:?}", dst_front.access_lines());
    assert_eq!(assert_mirrored(&s, &d, &repos_of(&pushed), "").await, pushed.len());

    let (src_before, dst_before, writes_before) = (refused(&src_front, 400), refused(&dst_front, 405), dst.writes());
    let again = migrate(&scratch, &src_front.url, &dst_front.url, &[]).await;
    again.assert_ok();
    let report = again.json();
    assert_eq!(report["counts"]["tags_copied"], 0, "{report}");
    assert_eq!(report["counts"]["tags_skipped"], pushed.len() as u64, "{report}");
    let (src_refused, dst_refused) = (refused(&src_front, 400) - src_before, refused(&dst_front, 405) - dst_before);
    assert_eq!(dst_refused, 1, "one refused HEAD taught the client; the rest were GETs: {:?}", dst_front.access_lines());
    assert!(src_refused <= 1, "{src_refused} refused HEADs at the source");
    assert!(dst_front.count("GET", "/manifests/", Some(200)) >= pushed.len(), "the destination's tags were read with GET");
    assert_eq!(dst.writes(), writes_before, "the second run wrote nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_whose_manifest_head_says_404_for_listed_tags_is_read_with_get() {
    let (src, dst, s, d) = crate::support::registries();
    let pushed = dataset::fill(&s, &plain_images(2, 6)).await;
    // A front (a cache, a CDN) whose manifest HEAD answers 404 for every tag its listing returns.
    let extra = format!("location ~ ^/v2/.+/manifests/ {{ if ($request_method = HEAD) {{ return 404; }} proxy_pass {}; }}\n", src.url);
    let front = Nginx::start(&src.url, Front { extra, ..Front::default() });
    let scratch = Scratch::new();
    migrate(&scratch, &front.url, &dst.url, &[]).await.assert_ok();
    assert_eq!(assert_mirrored(&s, &d, &repos_of(&pushed), "").await, pushed.len());

    // The rerun compares every tag: the first 404 is confirmed with GET, and
    // from then on the source is asked with GET only.
    let lied_before = front.count("HEAD", "/manifests/", Some(404));
    let again = migrate(&scratch, &front.url, &dst.url, &[]).await;
    again.assert_ok();
    let report = again.json();
    assert_eq!(report["counts"]["tags_skipped"], pushed.len() as u64, "{report}");
    assert_eq!(report["counts"]["tags_failed"], 0, "{report}");
    let lied = front.count("HEAD", "/manifests/", Some(404)) - lied_before;
    assert_eq!(lied, 1, "one HEAD taught the client; {} tags", pushed.len());
    assert!(again.stderr.contains("refuses HEAD on manifests"), "the operator is told once: {}", again.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_bounded_and_a_password_is_never_sent_to_another_origin() {
    // A front whose every /v2/ request redirects to itself, with a relative
    // Location: resolved against the answering URL, given up after 8 hops.
    let dst = TestRegistry::start();
    let looping = Nginx::start(&dst.url, Front { extra: "absolute_redirect off;\n    location /v2/ { return 307 $request_uri; }\n".into(), ..Front::default() });
    let scratch = Scratch::new();
    let run = migrate(&scratch, &looping.url, &dst.url, &[]).await;
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("more than 8 redirects"), "{}", run.stderr);
    assert_eq!(looping.count("GET", "/v2/", Some(307)), 9, "the first request and 8 hops: {:?}", looping.access_lines());

    // A front that sends everything to a registry wanting a password: the
    // credentials given for the front are not offered there.
    const USER: &str = "carol";
    const PW: &str = "elsewhere-Pw-never-sent";
    let b = TestRegistry::start_with(Options { auth: testkit::Auth::Htpasswd { user: USER.into(), password: PW.into() }, ..Options::default() });
    let b_seen = FaultProxy::start(&b.url, Faults::default());
    let front = Nginx::start(&b.url, Front { redirect_to: Some(b_seen.url.clone()), ..Front::default() });
    let creds = format!("{USER}:{PW}");
    let args = crate::support::migrate_args(&scratch, &front.url, &dst.url, &[]);
    let run = regferry(&scratch, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[("REGFERRY_FROM_CREDS", &creds)]).await;
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("asks for a password"), "{}", run.stderr);
    let seen = b_seen.counters.seen();
    assert!(!seen.is_empty(), "the redirect was followed");
    assert!(seen.iter().all(|r| r.authorization.is_none()), "credentials crossed to another origin: {seen:?}");
    assert!(!run.stderr.contains(PW) && !run.stdout.contains(PW));
}
