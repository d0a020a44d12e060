//! Protocol corners seen in the field, against real registries: a catalog
//! page limit below regferry's page size, a non-distributable layer
//! without `urls`, a destination name too long for the registry, a
//! registry mirrored into its own namespace, a destination reporting
//! another media type for the same digest, and a multi-threaded run over
//! TLS on both sides.

use testkit::dataset;
use testkit::image::{self, Blob, Flavor};
use testkit::tls::Pki;
use testkit::{Access, Canned, FaultProxy, Faults, Options, Registry, TestRegistry};

use crate::support::{Scratch, assert_mirrored, migrate, plain_images, regferry, repos_of};

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_that_refuses_the_page_size_is_asked_again() {
    // distribution refuses `n` above `catalog: maxentries` with 400
    // PAGINATION_NUMBER_INVALID; regferry asks for 1000.
    let src = TestRegistry::start_with(Options { catalog_max_entries: Some(2), ..Options::default() });
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let pushed = dataset::fill(&s, &plain_images(5, 1)).await;
    let repos = repos_of(&pushed);
    assert_eq!(repos.len(), 5);

    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dst.url, &[]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], 5);
    assert_mirrored(&s, &d, &repos, "").await;
    // The registry really refused the first page size, and the listing
    // went on in pages it accepts (5 repositories, at most 2 a page).
    let catalog: Vec<String> = src.lines_by("regferry/").into_iter().filter(|l| l.contains("/v2/_catalog")).collect();
    assert!(catalog.iter().any(|l| l.contains("n=1000") && l.contains("\" 400 ")), "{catalog:#?}");
    assert!(catalog.iter().filter(|l| l.contains("\" 200 ")).count() >= 3, "{catalog:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_distributable_layer_without_urls_is_copied() {
    let (src, dst, s, d) = crate::support::registries();
    let layer = Blob::new("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", image::random_bytes("nondist", 50_000));
    let img = image::image(Flavor::Oci, "nondist", vec![layer.clone()]);
    s.push("team/windows", "v1", &img).await;

    let scratch = Scratch::new();
    let run = migrate(&scratch, &src.url, &dst.url, &[]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], 1);
    assert!(d.blob_exists("team/windows", &layer.digest).await, "the layer itself was copied");
    assert_mirrored(&s, &d, &["team/windows".to_string()], "").await;
    assert_eq!(dst.count("PUT", "/v2/team/windows/manifests/v1"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_name_too_long_fails_its_repository_loudly() {
    let (src, dst, s, _d) = crate::support::registries();
    // 250 characters: valid at the source, 257 with `mirror/` in front.
    let long = format!("team/{}", "a".repeat(245));
    assert_eq!(long.len(), 250);
    let img = image::image(Flavor::Oci, "long", vec![image::layer(Flavor::Oci, "long", 1000)]);
    s.push(&long, "v1", &img).await;
    s.push("team/short", "v1", &img).await;

    let scratch = Scratch::new();
    let to = format!("{}/mirror", dst.url);
    let run = migrate(&scratch, &src.url, &to, &[]).await;
    assert_eq!(run.code, 1, "a repository that cannot be replicated fails the run\n{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["counts"]["tags_copied"], 1, "the other repository is copied");
    let failures = report["failures"].as_array().expect("failures").clone();
    assert_eq!(failures.len(), 1, "{failures:#?}");
    let error = failures[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&long) && error.contains("257 characters") && error.contains("255"), "{error}");

    let verify = regferry(&scratch, &["verify", "--from", &src.url, "--to", &to], &[]).await;
    assert_eq!(verify.code, 1, "verify must not call it identical\n{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("DIFFERENT") && verify.stdout.contains("257 characters"), "{}", verify.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_mirrored_into_its_own_prefix_mounts_and_never_nests() {
    let reg = TestRegistry::start();
    let r = Registry::new(&reg.url, Access::Anonymous);
    let pushed = dataset::fill(&r, &plain_images(3, 2)).await;
    let repos = repos_of(&pushed);
    let to = format!("{}/mirror", reg.url);

    let scratch = Scratch::new();
    let before = reg.access_lines().len();
    let first = migrate(&scratch, &reg.url, &to, &[]).await;
    first.assert_ok();
    let report = first.json();
    assert_eq!(report["counts"]["tags_copied"], pushed.len() as u64);
    assert_eq!(report["counts"]["bytes_uploaded"], 0, "nothing streamed within one registry");
    assert_mirrored(&r, &r, &repos, "mirror").await;
    let lines: Vec<String> = reg.access_lines().into_iter().skip(before).filter(|l| l.contains("\"regferry/")).collect();
    let mounts = lines.iter().filter(|l| l.contains("\"POST /v2/mirror/") && l.contains("mount=") && l.contains("\" 201 ")).count();
    assert!(mounts > 0, "blobs are mounted from the source repositories");
    assert_eq!(report["counts"]["blobs_mounted"], mounts as u64);
    let blob_gets: Vec<&String> = lines.iter().filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:")).collect();
    assert!(blob_gets.is_empty(), "no blob was downloaded: {blob_gets:#?}");
    assert_eq!(lines.iter().filter(|l| l.contains("/blobs/uploads/") && l.contains("\"PUT ")).count(), 0);

    // Again: the mirror is not mirrored into itself.
    let second = migrate(&scratch, &reg.url, &to, &[]).await;
    second.assert_ok();
    assert_eq!(second.json()["counts"]["tags_copied"], 0);
    let catalog = r.catalog().await;
    assert!(catalog.iter().all(|c| !c.starts_with("mirror/mirror")), "{catalog:?}");
    assert_eq!(catalog.len(), 2 * repos.len(), "{catalog:?}");
    let verify = regferry(&scratch, &["verify", "--from", &reg.url, "--to", &to], &[]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains(&format!("{} repositories", repos.len())), "{}", verify.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_media_type_for_the_same_digest_is_not_copied_again() {
    let (src, dst, s, d) = crate::support::registries();
    let img = image::image(Flavor::Oci, "mt", vec![image::layer(Flavor::Oci, "mt", 2000)]);
    s.push("team/app", "v1", &img).await;
    let proxy = FaultProxy::start(&dst.url, Faults::default());

    let scratch = Scratch::new();
    migrate(&scratch, &src.url, &proxy.url, &[]).await.assert_ok();
    let (bytes, media_type) = d.get_manifest("team/app", "v1").await.expect("copied");
    assert_eq!(media_type, image::OCI_MANIFEST);
    // The destination (a front, say) now reports another Content-Type for
    // the same bytes, hence the same digest.
    proxy.answer("/v2/team/app/manifests/v1", Canned::manifest(image::DOCKER_MANIFEST, bytes));
    for _ in 0..2 {
        let run = migrate(&scratch, &src.url, &proxy.url, &[]).await;
        run.assert_ok();
        let report = run.json();
        assert_eq!(report["counts"]["tags_copied"], 0, "{}", run.stderr);
        assert_eq!(report["counts"]["tags_skipped"], 1);
        assert_eq!(run.stderr.matches("another media type for the same manifest digest").count(), 1, "warned once:\n{}", run.stderr);
    }
    assert_eq!(dst.count("PUT", "/manifests/"), 1, "the manifest was pushed once, on the first run");
    assert!(proxy.counters.injected("canned") >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn several_threads_copy_exactly_over_tls_on_both_sides() {
    let pki = Pki::new();
    let tls = || Options { tls: Some((pki.cert.clone(), pki.key.clone())), ..Options::default() };
    let src = TestRegistry::start_with(tls());
    let dst = TestRegistry::start_with(tls());
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let spec = dataset::Spec { repos: 3, tags_per_repo: 2, multi_arch_every: 2, ..dataset::Spec::default() };
    let pushed = dataset::fill(&s, &spec).await;
    let repos = repos_of(&pushed);

    let scratch = Scratch::new();
    let ca = pki.ca.to_string_lossy().into_owned();
    let to = format!("{}/mirror", dst.url);
    let run = migrate(&scratch, &src.url, &to, &["--threads", "2", "--from-ca", &ca, "--to-ca", &ca]).await;
    run.assert_ok();
    let report = run.json();
    assert_eq!(report["counts"]["tags_copied"], pushed.len() as u64);
    assert_eq!(report["counts"]["bytes_uploaded"], dataset::distinct_blob_bytes(&pushed));
    assert_eq!(assert_mirrored(&s, &d, &repos, "mirror").await, pushed.len());
    // --threads is global: also accepted before the command, and 0 is bad input.
    let again = regferry(&scratch, &["--threads", "2", "verify", "--from", &src.url, "--to", &to, "--from-ca", &ca, "--to-ca", &ca], &[]).await;
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let zero = regferry(&scratch, &["--threads", "0", "verify", "--from", &src.url, "--to", &to], &[]).await;
    assert_eq!(zero.code, 2, "{}", zero.stderr);
}
