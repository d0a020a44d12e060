//! regferry against a second registry implementation: Pulp's container
//! registry (`testkit::pulp`: Django + PostgreSQL, blobs served by a
//! separate content app through signed redirects, repository content
//! committed asynchronously by a task worker), behind an nginx front and
//! without one, with basic and with token auth.
//!
//! Each test starts one Pulp and runs several cases on it, each in its own
//! repositories (a Pulp takes ~10–25 s to start). docs/implementations.md lists
//! which test shows which feature against which implementation.

use testkit::dataset::{self, Spec};
use testkit::image::{self, Flavor};
use testkit::referrers::{self as refs, artifact, fallback_tag};
use testkit::{Access, PulpAuth, PulpOptions, Registry, TestPulp, TestRegistry};

use crate::support::{Scratch, assert_mirrored, migrate, regferry, repos_of};

const SPDX: &str = "application/spdx+json";
const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// The lines of the front's access log after the first `from`.
fn since(lines: Vec<String>, from: usize) -> Vec<String> {
    lines.into_iter().skip(from).collect()
}

/// Pulp behind nginx with basic auth: the first migrate into a fresh Pulp
/// (several times, each into new repositories: it failed 6 of 8 before
/// regferry learned to converge), a no-op rerun with its request counts,
/// `verify --deep`, the way back out of Pulp anonymously (`/v2/`
/// refuses anonymous clients, the repositories do not), deletion sync,
/// and Pulp as the DR site of a policy: referrers through fallback tags
/// into Pulp, failover (the fence written into Pulp), a push at Pulp, the
/// reversed pass, failback.
#[tokio::test(flavor = "multi_thread")]
async fn pulp_behind_a_front_first_migrates_no_op_verify_and_anonymous_pull() {
    let pulp = TestPulp::start(PulpOptions { auth: PulpAuth::Basic, front: true });
    let front = pulp.front().expect("a front");
    let p = Registry::new(&pulp.url, Access::Basic(pulp.user.clone(), pulp.password.clone()));
    let src = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let spec = Spec { prefix: "lab".into(), repos: 2, tags_per_repo: 2, multi_arch_every: 2, ..Spec::default() };
    let pushed = dataset::fill(&s, &spec).await;
    let repos = repos_of(&pushed);
    let creds = pulp.creds();

    // The first migrate into fresh repositories, three times.
    for round in 1..=3 {
        let scratch = Scratch::new();
        let to = format!("{}/first{round}", pulp.url);
        let t = std::time::Instant::now();
        let run = migrate(&scratch, &src.url, &to, &["--to-creds", &creds]).await;
        eprintln!("first migrate into Pulp, round {round}: {:.1}s", t.elapsed().as_secs_f64());
        assert_eq!(run.code, 0, "round {round}: first migrate into fresh Pulp repositories failed\n{}\n{}\n{}", run.stdout, run.stderr, pulp.logs());
        let counts = &run.json()["counts"];
        eprintln!("round {round} counts: {counts}");
        assert_eq!(counts["tags_copied"], pushed.len() as u64, "round {round}");
        assert_eq!(assert_mirrored(&s, &p, &repos, &format!("first{round}")).await, pushed.len(), "round {round}");
    }

    // A no-op rerun: one manifest HEAD per tag and one tag list per
    // repository at Pulp (plus the ping), nothing written.
    let scratch = Scratch::new();
    let to = format!("{}/first1", pulp.url);
    let before = front.access_lines().len();
    let run = migrate(&scratch, &src.url, &to, &["--to-creds", &creds]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], 0, "{}", run.stdout);
    assert_eq!(run.json()["counts"]["tags_skipped"], pushed.len() as u64, "{}", run.stdout);
    let new = since(front.access_lines(), before);
    for line in &new {
        let ok = (line.starts_with("HEAD /v2/first1/") && line.contains("/manifests/"))
            || (line.starts_with("GET /v2/first1/") && line.contains("/tags/list"))
            || line.starts_with("GET /v2/ ");
        assert!(ok, "unexpected request at Pulp on a no-op rerun: {line}\n{new:#?}");
    }
    let heads = new.iter().filter(|l| l.starts_with("HEAD ")).count();
    let lists = new.iter().filter(|l| l.contains("/tags/list")).count();
    assert_eq!(heads, pushed.len(), "{new:#?}");
    assert_eq!(lists, repos.len(), "{new:#?}");
    eprintln!("no-op pass at Pulp: {} requests ({heads} manifest HEADs, {lists} tag lists)", new.len());

    // verify --deep: every tag identical and pullable through Pulp's redirects.
    let run = regferry(&scratch, &["verify", "--from", &src.url, "--to", &to, "--to-creds", &creds, "--deep", "--json"], &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = &run.json()["results"][0]["report"];
    assert_eq!(report["identical"].as_u64(), Some(pushed.len() as u64), "{report}");

    // Out of Pulp with no credentials at all: Pulp answers /v2/ with 401,
    // yet serves the (public) repositories; blobs come through its
    // content app's signed redirects.
    let out = TestRegistry::start();
    let o = Registry::new(&out.url, Access::Anonymous);
    let run = migrate(&scratch, &format!("{}/first2", pulp.url), &out.url, &[]).await;
    assert_eq!(run.code, 0, "anonymous pull from Pulp\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(assert_mirrored(&s, &o, &repos, "").await, pushed.len());
    assert!(front.count("GET", "/pulp/container/", Some(200)) > 0, "blobs were served by the content app: {:?}", front.access_lines());

    // Deletion sync: Pulp deletes by digest with 202 and its worker does it
    // later; the tag is reported deleted only once Pulp stops serving it.
    let gone = pushed.iter().rev().find(|x| !x.tag.ends_with(".sig")).expect("a plain tag");
    let digest = s.head(&gone.repo, &gone.tag).await.expect("at the source").0;
    let policy = format!(
        "name: del\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: first3\n    \
         credentials: {{ username_env: PULP_USER, password_env: PULP_PASS }}\ndelete: true\n",
        src.url, pulp.url
    );
    let dir = scratch.path("policies");
    std::fs::create_dir_all(&dir).expect("policies dir");
    std::fs::write(dir.join("p.yaml"), policy).expect("policy");
    let (dir, state) = (dir.to_string_lossy().into_owned(), scratch.path("del.db").to_string_lossy().into_owned());
    let env = [("PULP_USER", pulp.user.as_str()), ("PULP_PASS", pulp.password.as_str())];
    // A first pass records what regferry holds there (#19: only what it
    // wrote or found identical is ever deleted), then the source deletes.
    let run = regferry(&scratch, &["run", "--policies", &dir, "--state", &state, "--json"], &env).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    s.delete_manifest(&gone.repo, &digest).await;
    let run = regferry(&scratch, &["run", "--policies", &dir, "--state", &state, "--json", "--force-delete"], &env).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let deleted = &run.json()[0]["destinations"][0]["deleted"];
    assert_eq!(deleted, &serde_json::json!([format!("first3/{}:{}", gone.repo, gone.tag)]), "{}", run.stdout);
    let left = p.tags(&format!("first3/{}", gone.repo)).await;
    assert!(!left.contains(&gone.tag), "reported deleted but still listed at Pulp: {left:?}");
    assert!(p.head(&format!("first3/{}", gone.repo), &digest).await.is_none(), "reported deleted but still served by Pulp");

    // Pulp as the DR site of a policy, with referrers through fallback tags:
    // an image with an SBOM and a signature of the SBOM (attached the way
    // `oras attach` does) travels into Pulp, the fallback indexes with it.
    let t = std::time::Instant::now();
    let app = image::image(Flavor::Oci, "dr-app", vec![image::layer(Flavor::Oci, "dr-app", 400)]);
    s.push("ref/app", "v1", &app).await;
    let sbom = artifact(&app, SPDX, r#"{"spdxVersion":"SPDX-2.3"}"#);
    s.attach("ref/app", &app.digest, &sbom, SPDX).await;
    let signature = artifact(&sbom, SIG, "signature of the sbom");
    s.attach("ref/app", &sbom.digest, &signature, SIG).await;
    let policy = format!(
        "name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: dr\n    \
         credentials: {{ username_env: PULP_USER, password_env: PULP_PASS }}\nrepositories: {{ include: ['ref/**'] }}\ntrigger: {{ interval: 1h }}\n",
        src.url, pulp.url
    );
    let dir = scratch.path("dr-policies");
    std::fs::create_dir_all(&dir).expect("policies dir");
    std::fs::write(dir.join("dr.yaml"), policy).expect("policy");
    let (dir, state) = (dir.to_string_lossy().into_owned(), scratch.path("dr.db").to_string_lossy().into_owned());
    let verb = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--policies".to_string(), dir.clone(), "--state".to_string(), state.clone()]);
        let scratch = &scratch;
        async move { regferry(scratch, &all.iter().map(String::as_str).collect::<Vec<_>>(), &env).await }
    };
    let run = verb(&["run", "--json"]).await;
    assert_eq!(run.code, 0, "policy pass into Pulp with referrers\n{}\n{}", run.stdout, run.stderr);
    let tags = p.tags("dr/ref/app").await;
    for digest in [&app.digest, &sbom.digest] {
        assert!(tags.contains(&fallback_tag(digest)), "the fallback tag of {digest} is not at Pulp: {tags:?}");
    }
    let listed = p.referrers("dr/ref/app", &app.digest).await;
    assert_eq!(refs::digests(&listed), vec![sbom.digest.clone()], "the image's referrers at Pulp: {listed:?}");
    assert!(listed.iter().any(|e| e["artifactType"] == SPDX), "the fallback entry keeps its artifactType: {listed:?}");
    assert_eq!(refs::digests(&p.referrers("dr/ref/app", &sbom.digest).await), vec![signature.digest.clone()]);
    for m in [&sbom, &signature] {
        let (bytes, _) = p.get_manifest("dr/ref/app", &m.digest).await.expect("referrer at Pulp");
        assert_eq!(bytes, m.bytes, "same bytes, same digest");
    }
    let run = verb(&["verify", "--deep", "--json"]).await;
    assert_eq!(run.code, 0, "verify --policies against Pulp\n{}\n{}", run.stdout, run.stderr);
    let report = &run.json()["results"][0]["report"];
    assert_eq!(report["referrers_missing"], 0, "{report}");
    assert_eq!(report["problems"].as_array().map(Vec::len), Some(0), "{report}");

    // Failover to Pulp: the fence is written into Pulp (and the reachable primary).
    let fo = verb(&["failover", "--policy", "dr"]).await;
    assert_eq!(fo.code, 0, "failover to Pulp\n{}\n{}", fo.stdout, fo.stderr);
    assert!(fo.stdout.contains("fence written") && fo.stdout.contains("dr/regferry-fence:dr (generation 1)"), "{}", fo.stdout);
    let fence = p.get_manifest("dr/regferry-fence", "dr").await.expect("the fence in Pulp");
    let fence: serde_json::Value = serde_json::from_slice(&fence.0).expect("fence JSON");
    assert_eq!(fence["artifactType"], "application/vnd.regferry.fence.v1", "{fence}");
    assert_eq!(fence["annotations"]["io.regferry.fence.direction"], "reversed", "{fence}");
    assert!(s.head("regferry-fence", "dr").await.is_some(), "the reachable old primary is fenced too");
    // A fresh state (the disk holding it lost) reads the fence back from Pulp and is refused.
    let fresh = scratch.path("fresh.db").to_string_lossy().into_owned();
    let run = regferry(&scratch, &["run", "--policies", &dir, "--state", &fresh, "--json"], &env).await;
    assert_eq!(run.code, 1, "a fresh state must be refused by the fence in Pulp\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()[0]["destinations"][0]["fenced"], true, "{}", run.stdout);
    let err = run.json()[0]["destinations"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("was failed over") && err.contains("regferry failback --policy dr"), "{err}");

    // Work goes on at Pulp; the reversed pass brings it to the primary, names mapped back.
    let v2 = image::image(Flavor::Oci, "dr-v2", vec![image::layer(Flavor::Oci, "dr-v2", 300)]);
    p.push("dr/ref/app", "v2", &v2).await;
    let run = verb(&["run", "--json"]).await;
    assert_eq!(run.code, 0, "reversed pass out of Pulp\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()[0]["destinations"][0]["reversed"], true, "{}", run.stdout);
    assert_eq!(s.head("ref/app", "v2").await.map(|h| h.0), Some(v2.digest.clone()), "Pulp's v2 at the primary");
    assert!(!s.catalog().await.iter().any(|r| r.starts_with("dr/")), "the fence repository is never replicated");

    // Failback: the fence in Pulp says forward again, the forward pass runs, and verify is clean
    // (the fence is neither compared nor reported as only at Pulp).
    let fb = verb(&["failback", "--policy", "dr"]).await;
    assert_eq!(fb.code, 0, "failback from Pulp\n{}\n{}", fb.stdout, fb.stderr);
    assert!(fb.stdout.contains("(generation 2)"), "{}", fb.stdout);
    let fence: serde_json::Value = serde_json::from_slice(&p.get_manifest("dr/regferry-fence", "dr").await.expect("fence").0).expect("JSON");
    assert_eq!(fence["annotations"]["io.regferry.fence.direction"], "forward", "{fence}");
    let run = verb(&["run", "--json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()[0]["destinations"][0]["reversed"], false, "{}", run.stdout);
    let run = verb(&["verify", "--deep", "--json"]).await;
    assert_eq!(run.code, 0, "verify after failback\n{}\n{}", run.stdout, run.stderr);
    let report = &run.json()["results"][0]["report"];
    assert_eq!(report["problems"].as_array().map(Vec::len), Some(0), "{report}");
    eprintln!("Pulp as the DR site (referrers, failover, reversed pass, failback): {:.1}s", t.elapsed().as_secs_f64());
}

/// Pulp without a front (blob redirects to the content app's own port:
/// another origin) with token auth: into Pulp, back out of it with
/// credentials, chunked uploads, an OCI layout import, and a platform
/// `rewrite` into Pulp verified deep.
#[tokio::test(flavor = "multi_thread")]
async fn pulp_with_token_auth_and_cross_origin_redirects_both_ways() {
    let pulp = TestPulp::start(PulpOptions { auth: PulpAuth::Token, front: false });
    let src = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let spec = Spec { prefix: "tok".into(), repos: 2, tags_per_repo: 2, multi_arch_every: 2, ..Spec::default() };
    let pushed = dataset::fill(&s, &spec).await;
    let repos = repos_of(&pushed);
    let creds = pulp.creds();
    let scratch = Scratch::new();

    let to = format!("{}/in", pulp.url);
    let run = migrate(&scratch, &src.url, &to, &["--to-creds", &creds]).await;
    assert_eq!(run.code, 0, "into token-auth Pulp\n{}\n{}\n{}", run.stdout, run.stderr, pulp.logs());
    let run = regferry(&scratch, &["verify", "--from", &src.url, "--to", &to, "--to-creds", &creds, "--deep", "--json"], &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    // Back out, with credentials: blob GETs redirect to the content app's port.
    let out = TestRegistry::start();
    let o = Registry::new(&out.url, Access::Anonymous);
    let run = migrate(&scratch, &format!("{}/in", pulp.url), &out.url, &["--from-creds", &creds]).await;
    assert_eq!(run.code, 0, "out of token-auth Pulp\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(assert_mirrored(&s, &o, &repos, "").await, pushed.len());

    // Chunked uploads into Pulp: a 700 KiB layer in 256 KiB PATCHes.
    let big = image::image(Flavor::Oci, "big", vec![image::layer(Flavor::Oci, "big", 700 * 1024)]);
    s.push("big/app", "v1", &big).await;
    let to = format!("{}/chunked", pulp.url);
    let run = migrate(&scratch, &src.url, &to, &["--repo", "big/app", "--to-creds", &creds, "--to-chunk-size", "256KiB"]).await;
    assert_eq!(run.code, 0, "chunked into Pulp\n{}\n{}", run.stdout, run.stderr);
    let run = regferry(&scratch, &["verify", "--from", &src.url, "--to", &to, "--repo", "big/app", "--to-creds", &creds, "--deep"], &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    // An OCI layout imported into Pulp.
    let layout = format!("oci:{}", scratch.path("layout").display());
    migrate(&scratch, &src.url, &layout, &[]).await.assert_ok();
    let to = format!("{}/layout", pulp.url);
    let run = migrate(&scratch, &layout, &to, &["--to-creds", &creds]).await;
    assert_eq!(run.code, 0, "layout into Pulp\n{}\n{}", run.stdout, run.stderr);
    let run = regferry(&scratch, &["verify", "--from", &src.url, "--to", &to, "--to-creds", &creds, "--deep", "--json"], &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    // Platforms: a policy rewrites a two-platform index to linux/amd64 into
    // Pulp (a new index, a new digest), verify --deep compares through the
    // state's record of the narrowed digest, and the index read back out of
    // Pulp holds only the selected child.
    let t = std::time::Instant::now();
    let kids: Vec<(image::Manifest, &str)> =
        ["amd64", "arm64"].iter().map(|a| (image::image(Flavor::Oci, &format!("plat-{a}"), vec![image::layer(Flavor::Oci, &format!("plat-{a}"), 300)]), *a)).collect();
    let multi = image::index(Flavor::Oci, kids);
    s.push("plat/app", "multi", &multi).await;
    let (amd64, arm64) = (multi.children[0].digest.clone(), multi.children[1].digest.clone());
    let policy = format!(
        "name: arches\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: plat\n    \
         credentials: {{ username_env: PULP_USER, password_env: PULP_PASS }}\nrepositories: {{ include: ['plat/**'] }}\n\
         platforms: [linux/amd64]\nplatform_filter: rewrite\n",
        src.url, pulp.url
    );
    let dir = scratch.path("plat-policies");
    std::fs::create_dir_all(&dir).expect("policies dir");
    std::fs::write(dir.join("p.yaml"), policy).expect("policy");
    let (dir, state) = (dir.to_string_lossy().into_owned(), scratch.path("plat.db").to_string_lossy().into_owned());
    let env = [("PULP_USER", pulp.user.as_str()), ("PULP_PASS", pulp.password.as_str())];
    let run = regferry(&scratch, &["run", "--policies", &dir, "--state", &state, "--json"], &env).await;
    assert_eq!(run.code, 0, "rewrite into Pulp\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()[0]["destinations"][0]["report"]["counts"]["tags_copied"], 1, "{}", run.stdout);
    let verify = regferry(&scratch, &["verify", "--policies", &dir, "--state", &state, "--deep"], &env).await;
    assert_eq!(verify.code, 0, "verify --deep of a rewritten index in Pulp\n{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains(&format!("linux/amd64 of {} (rewritten to sha256:", multi.digest)), "{}", verify.stdout);
    let run = migrate(&scratch, &format!("{}/plat", pulp.url), &format!("{}/platout", out.url), &["--from-creds", &creds]).await;
    assert_eq!(run.code, 0, "the rewritten index out of Pulp\n{}\n{}", run.stdout, run.stderr);
    let (bytes, _) = o.get_manifest("platout/plat/app", "multi").await.expect("the rewritten index");
    let index: serde_json::Value = serde_json::from_slice(&bytes).expect("index JSON");
    let children: Vec<&str> = index["manifests"].as_array().map(|m| m.iter().filter_map(|d| d["digest"].as_str()).collect()).unwrap_or_default();
    assert_eq!(children, vec![amd64.as_str()], "only linux/amd64 went into Pulp: {index}");
    assert_ne!(image::raw(&multi.media_type, bytes).digest, multi.digest, "a rewritten index has a new digest");
    assert!(o.head("platout/plat/app", &arm64).await.is_none(), "linux/arm64 must not have been copied");
    assert!(o.missing_content("platout/plat/app", "multi").await.is_empty(), "the rewritten index is pullable");
    eprintln!("platform rewrite into Pulp: {:.1}s", t.elapsed().as_secs_f64());
}
