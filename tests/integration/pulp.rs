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
use testkit::{Access, PulpAuth, PulpOptions, Registry, TestPulp, TestRegistry};

use crate::support::{Scratch, assert_mirrored, migrate, regferry, repos_of};

/// The lines of the front's access log after the first `from`.
fn since(lines: Vec<String>, from: usize) -> Vec<String> {
    lines.into_iter().skip(from).collect()
}

/// Pulp behind nginx with basic auth: the first migrate into a fresh Pulp
/// (several times, each into new repositories: it failed 6 of 8 before
/// regferry learned to converge), a no-op rerun with its request counts,
/// `verify --deep`, and the way back out of Pulp anonymously (`/v2/`
/// refuses anonymous clients, the repositories do not).
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
}

/// Pulp without a front (blob redirects to the content app's own port:
/// another origin) with token auth: into Pulp, back out of it with
/// credentials, and a repository that is not there named in the error.
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
}
