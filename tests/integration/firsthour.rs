//! A user's first hour (#23): `copy` of one image, `migrate --tag/--semver/
//! --latest/--rename`, renames that survive failover and failback, `run
//! --dry-run` with its deletions and the guard's verdict, `policy check
//! --offline`, the state's default location, planning progress on a
//! terminal, and a failing policy that says why — against real registries.

use std::time::Duration;

use testkit::image::{self, Flavor};
use testkit::{Access, Registry, TestRegistry, free_port};

use crate::policies::{push_tags, write};
use crate::support::{Scratch, command, daemon_command, in_terminal, migrate, policy_verb, regferry, stop_daemon, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn copy_one_image_and_migrate_by_tag_rules_and_renames() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let amd = image::image(Flavor::Oci, "amd", vec![image::layer(Flavor::Oci, "amd-layer", 500)]);
    let arm = image::image(Flavor::Oci, "arm", vec![image::layer(Flavor::Oci, "arm-layer", 500)]);
    let multi = image::index(Flavor::Oci, vec![(amd, "amd64"), (arm, "arm64")]);
    s.push("team/app", "multi", &multi).await;
    // Its cosign signature travels with it, as with migrate.
    let sig = image::signature_tag(&multi.digest);
    s.push("team/app", &sig, &image::signature(&multi)).await;
    push_tags(&s, "team/app", &["v1", "1.2.0", "1.3.0", "2.0.0", "dev"], "app").await;
    push_tags(&s, "other/app", &["v1"], "other").await;
    let scratch = Scratch::new();
    let state = scratch.state();

    // One image, all platforms, into another name: exactly that tag.
    let copy = |from: String, to: String, extra: &'static [&'static str]| {
        let (scratch, state) = (&scratch, state.clone());
        async move {
            let mut args = vec!["copy".to_string(), from, to, "--state".into(), state, "--json".into()];
            args.extend(extra.iter().map(|s| s.to_string()));
            regferry(scratch, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await
        }
    };
    let run = copy(format!("{}/team/app:multi", src.url), format!("{}/mirror/app", dst.url), &[]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"].as_u64(), Some(2), "the tag and its signature: {}", run.stdout);
    assert_eq!(d.head("mirror/app", "multi").await, s.head("team/app", "multi").await, "same digest and media type");
    let mut tags = d.tags("mirror/app").await;
    tags.sort();
    assert_eq!(tags, ["multi".to_string(), sig.clone()], "the one tag and its signature");
    assert_eq!(d.head("mirror/app", &sig).await, s.head("team/app", &sig).await);
    assert!(d.missing_content("mirror/app", &s.head("team/app", "multi").await.expect("multi").0).await.is_empty(), "every platform pullable");
    // Again: nothing to do. A DEST tag that is the source's is fine.
    let run = copy(format!("{}/team/app:multi", src.url), format!("{}/mirror/app:multi", dst.url), &[]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"].as_u64(), Some(0), "{}", run.stdout);
    // A tag the source does not have fails (1); a different DEST tag is bad input (2).
    let run = copy(format!("{}/team/app:nope", src.url), format!("{}/mirror/app", dst.url), &[]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    // A named tag is asked for directly (no listing, #21): the plan says it does not exist.
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("team/app:nope (named by the tag rules) does not exist") || said.contains("team/app:nope not found at the source"), "{said}");
    // A DEST digest is bad input (2): the digest is the source's.
    let run = copy(format!("{}/team/app:v1", src.url), format!("{}/mirror/app@sha256:{}", dst.url, "a".repeat(64)), &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("name a tag, not a digest"), "{}", run.stderr);
    // One platform of the index.
    let run = copy(format!("{}/team/app:multi", src.url), format!("{}/amd/app", dst.url), &["--platform", "linux/amd64"]).await;
    run.assert_ok();
    let (bytes, _) = d.get_manifest("amd/app", "multi").await.expect("narrowed index");
    let index: serde_json::Value = serde_json::from_slice(&bytes).expect("index JSON");
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1), "{index}");

    // migrate --tag: only matching tags (whole-tag regexes), repeatable.
    let run = migrate(&scratch, &src.url, &format!("{}/bytag", dst.url), &["--repo", "team/app", "--tag", r"v\d+", "--tag", "dev"]).await;
    run.assert_ok();
    let mut tags = d.tags("bytag/team/app").await;
    tags.sort();
    assert_eq!(tags, ["dev", "v1"]);
    // --semver and --latest: the newest version in the range (non-versions left out by --tag).
    let run = migrate(&scratch, &src.url, &format!("{}/bysemver", dst.url), &["--repo", "team/app", "--tag", r"\d.*", "--semver", ">=1.2, <2", "--latest", "1"]).await;
    run.assert_ok();
    assert_eq!(d.tags("bysemver/team/app").await, ["1.3.0"]);

    // --rename: first rule that matches wins; other names are kept.
    let run = migrate(&scratch, &src.url, &format!("{}/renamed", dst.url), &["--tag", "v1", "--rename", "team/(.*)=flat-$1", "--rename", "(.*)/app=$1-app"]).await;
    run.assert_ok();
    assert_eq!(d.head("renamed/flat-app", "v1").await, s.head("team/app", "v1").await);
    assert_eq!(d.head("renamed/other-app", "v1").await, s.head("other/app", "v1").await);
    // Two names renamed to one: both refused, both named; nothing copied for them.
    let run = migrate(&scratch, &src.url, &format!("{}/collide", dst.url), &["--tag", "v1", "--rename", "[a-z]+/app=app"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("repositories other/app and team/app would both be renamed to app"), "{}", run.stdout);
    assert!(d.head("collide/app", "v1").await.is_none());
}

/// `copy SOURCE@DIGEST DEST:TAG` and `copy SRC:TAG DEST:OTHER`: the manifest the
/// source has under that reference, exact bytes and media type, under the
/// destination tag only, with its signature; a rerun is a no-op.
#[tokio::test(flavor = "multi_thread")]
async fn copy_by_digest_and_under_another_tag() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let amd = image::image(Flavor::Oci, "pin-amd", vec![image::layer(Flavor::Oci, "pin-amd-layer", 400)]);
    let arm = image::image(Flavor::Oci, "pin-arm", vec![image::layer(Flavor::Oci, "pin-arm-layer", 400)]);
    let multi = image::index(Flavor::Oci, vec![(amd, "amd64"), (arm, "arm64")]);
    s.push("team/app", "build-41", &multi).await;
    let sig = image::signature_tag(&multi.digest);
    s.push("team/app", &sig, &image::signature(&multi)).await;
    // The tag moves on: the digest still names the first build.
    let later = image::image(Flavor::Oci, "pin-later", vec![image::layer(Flavor::Oci, "pin-later-layer", 400)]);
    s.push("team/app", "build-41", &later).await;
    let v1 = image::image(Flavor::Docker, "pin-docker", vec![image::layer(Flavor::Docker, "pin-docker-layer", 400)]);
    s.push("team/app", "v1", &v1).await;
    let scratch = Scratch::new();
    let state = scratch.state();
    let copy = |from: String, to: String| {
        let (scratch, state) = (&scratch, state.clone());
        async move { regferry(scratch, &["copy", &from, &to, "--state", &state, "--json"], &[]).await }
    };

    // By digest, tagged at the destination.
    let by_digest = format!("{}/team/app@{}", src.url, multi.digest);
    let run = copy(by_digest.clone(), format!("{}/mirror/app:stable", dst.url)).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"].as_u64(), Some(2), "the manifest and its signature: {}", run.stdout);
    let head = d.head("mirror/app", "stable").await;
    assert_eq!(head, s.head("team/app", &multi.digest).await, "same digest and media type");
    assert_eq!(head.as_ref().map(|h| h.0.as_str()), Some(multi.digest.as_str()));
    assert_eq!(d.get_manifest("mirror/app", "stable").await.map(|m| m.0), Some(multi.bytes.to_vec()), "the exact bytes");
    assert_eq!(d.tags("mirror/app").await, [sig.clone(), "stable".to_string()], "only the named tag and the digest's signature");
    assert_eq!(d.head("mirror/app", &sig).await, s.head("team/app", &sig).await);
    assert!(d.missing_content("mirror/app", &multi.digest).await.is_empty(), "every platform pullable");
    let run = copy(by_digest.clone(), format!("{}/mirror/app:stable", dst.url)).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"].as_u64(), Some(0), "a rerun is a no-op: {}", run.stdout);

    // A dry run names the destination tag and what it would copy there, changing nothing.
    let dry = regferry(&scratch, &["copy", &format!("{}/team/app:v1", src.url), &format!("{}/mirror/app:release", dst.url), "--dry-run"], &[]).await;
    dry.assert_ok();
    let short = &v1.digest[..19];
    assert!(dry.stdout.contains(&format!("copy  mirror/app:release  (missing)  from team/app:v1 ({short}")), "{}", dry.stdout);
    let dry = regferry(&scratch, &["copy", &format!("{}/team/app:v1", src.url), &format!("{}/mirror/app:release", dst.url), "--dry-run", "--json"], &[]).await;
    let item = &dry.json()["items"][0];
    assert_eq!((&item["tag"], &item["source_reference"], &item["source_digest"]), (&"release".into(), &"v1".into(), &v1.digest.as_str().into()), "{}", dry.stdout);
    assert!(d.head("mirror/app", "release").await.is_none(), "a dry run copies nothing");

    // A tag under another name: a Docker v2 manifest keeps its media type.
    let run = copy(format!("{}/team/app:v1", src.url), format!("{}/mirror/app:release", dst.url)).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"].as_u64(), Some(1), "{}", run.stdout);
    let head = d.head("mirror/app", "release").await;
    assert_eq!(head, s.head("team/app", "v1").await, "same digest and media type");
    assert_eq!(head.map(|h| h.1), Some("application/vnd.docker.distribution.manifest.v2+json".to_string()));
    assert!(d.head("mirror/app", "v1").await.is_none(), "the source tag is not created at the destination");
    let run = copy(format!("{}/team/app:v1", src.url), format!("{}/mirror/app:release", dst.url)).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"].as_u64(), Some(0), "a rerun is a no-op: {}", run.stdout);
    // The source's tag moved to another manifest: the destination tag follows it.
    let run = copy(format!("{}/team/app:build-41", src.url), format!("{}/mirror/app:stable", dst.url)).await;
    run.assert_ok();
    assert_eq!(d.head("mirror/app", "stable").await.map(|h| h.0), Some(later.digest.clone()));

    // A digest the source does not have fails (1); a digest without a DEST tag is bad input (2).
    let missing = format!("sha256:{}", "0".repeat(64));
    let run = copy(format!("{}/team/app@{missing}", src.url), format!("{}/mirror/app:x", dst.url)).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(format!("{}{}", run.stdout, run.stderr).contains(&format!("team/app@{missing}")), "{}\n{}", run.stdout, run.stderr);
    assert!(d.head("mirror/app", "x").await.is_none());
    let run = copy(by_digest, format!("{}/mirror/app", dst.url)).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("DEST must name the tag"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn renamed_policy_round_trips_through_failover_and_failback() {
    let primary = TestRegistry::start();
    let dr = TestRegistry::start();
    let p = Registry::new(&primary.url, Access::Anonymous);
    let d = Registry::new(&dr.url, Access::Anonymous);
    push_tags(&p, "team/a/web", &["v1"], "web").await;
    push_tags(&p, "base", &["v1"], "base").await;
    let scratch = Scratch::new();
    let policy = |rule: &str| {
        format!(
            "name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\n\
             repositories:\n  include: ['team/**', 'base']\n  rename:\n{rule}trigger: {{ interval: 1h }}\n",
            primary.url, dr.url
        )
    };
    // A rule that cannot be mapped back is refused by `policy check`, with its line.
    let policies = write(&scratch, "policies", "p.yaml", &policy("    - { from: 'team/.*/(.*)', to: 'x-$1' }\n"));
    let check = regferry(&scratch, &["policy", "check", &policies], &[]).await;
    assert_eq!(check.code, 2, "{}\n{}", check.stdout, check.stderr);
    assert!(check.stderr.contains("p.yaml:9: repositories.rename[0]") && check.stderr.contains("cannot be mapped back"), "{}", check.stderr);

    // Flatten team/a/web → team-a-web, suffix base → base-dr.
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &policy("    - { from: 'team/([^/]+)/([^/]+)', to: 'team-$1-$2' }\n    - { from: '(base)', to: '$1-dr' }\n"),
    );
    regferry(&scratch, &["policy", "check", &policies], &[]).await.assert_ok();
    let state = scratch.state();
    let cmd = |verb: &'static str, extra: &'static [&'static str]| policy_verb(&scratch, &policies, &state, "dr", verb, extra);
    cmd("run", &[]).await.assert_ok();
    assert_eq!(d.head("mirror/team-a-web", "v1").await, p.head("team/a/web", "v1").await);
    assert_eq!(d.head("mirror/base-dr", "v1").await, p.head("base", "v1").await);
    let verify = cmd("verify", &[]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);

    // Failover; work continues at DR under the renamed names and maps back exactly.
    cmd("failover", &[]).await.assert_ok();
    push_tags(&d, "mirror/team-a-web", &["v2"], "dr-web").await;
    push_tags(&d, "mirror/base-dr", &["v2"], "dr-base").await;
    cmd("run", &[]).await.assert_ok();
    assert_eq!(p.head("team/a/web", "v2").await, d.head("mirror/team-a-web", "v2").await);
    assert_eq!(p.head("base", "v2").await, d.head("mirror/base-dr", "v2").await);
    let verify = cmd("verify", &["--json"]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert_eq!(verify.json()["results"][0]["reversed"], true);
    let mut names: Vec<String> = p.catalog().await.into_iter().filter(|n| n != "regferry-fence").collect();
    names.sort();
    assert_eq!(names, ["base", "team/a/web"], "nothing arrived under a DR name at the primary");

    // Failback: DR's last change goes home, the direction is restored.
    push_tags(&d, "mirror/team-a-web", &["v3"], "dr-web").await;
    cmd("failback", &[]).await.assert_ok();
    assert_eq!(p.head("team/a/web", "v3").await, d.head("mirror/team-a-web", "v3").await);
    cmd("run", &[]).await.assert_ok();
    let verify = cmd("verify", &["--deep"]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("5 identical"), "{}", verify.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_check_refuses_renames_that_merge_names_from_the_rules_alone() {
    let scratch = Scratch::new();
    let policy = |rules: &str| {
        format!(
            "name: m\nsource: {{ registry: 'http://127.0.0.1:1' }}\ndestinations:\n  - registry: 'http://127.0.0.1:2'\n\
             repositories:\n  rename:\n{rules}"
        )
    };
    // A template without a group: every name the pattern matches gets one name.
    let policies = write(&scratch, "one", "p.yaml", &policy("    - { from: '[a-z]+/app', to: 'app' }\n"));
    let check = regferry(&scratch, &["policy", "check", "--offline", &policies], &[]).await;
    assert_eq!(check.code, 2, "{}\n{}", check.stdout, check.stderr);
    assert!(check.stderr.contains("p.yaml:7: repositories.rename[0]") && check.stderr.contains("to the one name \"app\""), "{}", check.stderr);
    // Two rules giving names of one form: named, with two names that collide.
    let rules = "    - { from: 'a/(.*)', to: 'x-$1' }\n    - { from: 'b/(.*)', to: 'x-$1' }\n";
    let policies = write(&scratch, "two", "p.yaml", &policy(rules));
    let check = regferry(&scratch, &["policy", "check", "--offline", &policies], &[]).await;
    assert_eq!(check.code, 2, "{}\n{}", check.stdout, check.stderr);
    assert!(check.stderr.contains("p.yaml:8: repositories.rename[1]") && check.stderr.contains("a/app and b/app would both become x-app"), "{}", check.stderr);
    // Distinct forms pass.
    let rules = "    - { from: 'a/(.*)', to: 'x-$1' }\n    - { from: 'b/(.*)', to: 'y-$1' }\n";
    let policies = write(&scratch, "ok", "p.yaml", &policy(rules));
    regferry(&scratch, &["policy", "check", "--offline", &policies], &[]).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn run_dry_run_shows_copies_deletions_and_the_guard() {
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    push_tags(&s, "team/app", &["v1", "v2", "v3"], "app").await;
    let scratch = Scratch::new();
    let policy = |max: &str| {
        format!("name: del\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ndelete: true\nmax_delete: {max}\n", src.url, dst.url)
    };
    let policies = write(&scratch, "policies", "p.yaml", &policy("50%"));
    let state = scratch.state();
    let run = |extra: &'static [&'static str]| {
        let (scratch, policies, state) = (&scratch, policies.clone(), state.clone());
        async move {
            let mut args = vec!["run", "--policies", policies.as_str(), "--state", state.as_str()];
            args.extend_from_slice(extra);
            regferry(scratch, &args, &[]).await
        }
    };
    // Before the first pass: everything would be copied, nothing deleted.
    let dry = run(&["--dry-run"]).await;
    dry.assert_ok();
    assert!(dry.stdout.contains("3 to copy"), "{}", dry.stdout);
    assert!(dry.stdout.contains("deletion guard: allows 0 deletion(s)"), "{}", dry.stdout);
    assert!(d.catalog().await.is_empty(), "a dry run copies nothing");
    run(&[]).await.assert_ok();

    let v2 = s.head("team/app", "v2").await.expect("v2").0;
    s.delete_manifest("team/app", &v2).await;
    push_tags(&s, "team/app", &["v4"], "app").await;
    let dry = run(&["--dry-run"]).await;
    dry.assert_ok();
    assert!(dry.stdout.contains("would delete  team/app:v2"), "{}", dry.stdout);
    assert!(dry.stdout.contains("1 to copy"), "{}", dry.stdout);
    assert!(dry.stdout.contains("deletion guard: allows 1 deletion(s) of 3 in-scope tag(s)"), "{}", dry.stdout);
    let json = run(&["--dry-run", "--json"]).await;
    json.assert_ok();
    assert_eq!(json.json()[0]["destinations"][0]["would_delete"], serde_json::json!(["team/app:v2"]), "{}", json.stdout);
    assert!(d.head("team/app", "v2").await.is_some() && d.head("team/app", "v4").await.is_none(), "a dry run changes nothing");

    // The guard's verdict when it would refuse.
    let v3 = s.head("team/app", "v3").await.expect("v3").0;
    s.delete_manifest("team/app", &v3).await;
    write(&scratch, "policies", "p.yaml", &policy("10%"));
    let dry = run(&["--dry-run"]).await;
    assert!(dry.stdout.contains("deletion guard: WOULD REFUSE not deleting 2 of 3 in-scope tag(s)"), "{}\n{}", dry.stdout, dry.stderr);
    assert!(d.head("team/app", "v2").await.is_some() && d.head("team/app", "v3").await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_check_state_location_and_progress_on_a_terminal() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let s = Registry::new(&src.url, Access::Anonymous);
    push_tags(&s, "team/app", &["v1", "v2"], "app").await;
    let scratch = Scratch::new();

    // policy check without the secrets: offline passes, the default names the missing variable.
    let text = format!(
        "name: ci\nsource:\n  registry: '{}'\n  credentials: {{ username: bot, password_env: CI_ONLY_SECRET }}\ndestinations:\n  - registry: '{}'\n    credentials: {{ username: bot, password_file: /nonexistent/secret }}\n\
         notify:\n  - {{ url_env: CI_ONLY_HOOK }}\n  - {{ url_file: /nonexistent/hook }}\n",
        src.url, dst.url
    );
    let policies = write(&scratch, "policies", "p.yaml", &text);
    let check = regferry(&scratch, &["policy", "check", &policies], &[]).await;
    assert_eq!(check.code, 2, "{}", check.stderr);
    assert!(check.stderr.contains("CI_ONLY_SECRET is not set"), "{}", check.stderr);
    let check = regferry(&scratch, &["policy", "check", "--offline", &policies], &[]).await;
    check.assert_ok();
    assert!(check.stdout.contains("1 policies valid"), "{}", check.stdout);

    // The default state is absolute ($XDG_STATE_HOME here), wherever the command runs.
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--json"], &[]).await;
    run.assert_ok();
    assert!(scratch.path("xdg-state/regferry/regferry.db").exists(), "{}", run.stderr);
    // A relative --state is resolved against the current directory and said.
    let out = command(&scratch, &["jobs", "list", "--state", "rel/state.db"], &[]).current_dir(scratch.dir.path()).output().await.expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let absolute = scratch.path("rel/state.db");
    assert!(stderr.contains(&format!("state database {}", absolute.display())), "{stderr}");
    assert!(absolute.exists());

    // Progress on a terminal (a pseudo-terminal from script(1)); none with --json.
    let tty = |args: String| {
        let scratch = &scratch;
        async move { in_terminal(scratch, &args).await }
    };
    let state = scratch.state();
    let (ok, shown) = tty(format!("migrate --from {} --to {}/tty --state {state}", src.url, dst.url)).await;
    assert!(ok, "{shown}");
    assert!(shown.contains("planning: repositories listed 1/1 · tags found 2 · compared 2"), "{shown}");
    let (ok, shown) = tty(format!("migrate --from {} --to {}/tty2 --state {state} --json", src.url, dst.url)).await;
    assert!(ok, "{shown}");
    assert!(!shown.contains("repositories listed"), "JSON output has no progress: {shown}");
    // verify --deep: the manifests and blobs checked so far.
    let (ok, shown) = tty(format!("verify --from {} --to {}/tty --deep", src.url, dst.url)).await;
    assert!(ok, "{shown}");
    assert!(shown.contains("verify --deep: repositories listed") && shown.contains("verify --deep: deep: 6 manifests and blobs checked"), "{shown}");
    // run: planning, then the transfer.
    let text = format!("name: tty\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}/tty3'\n", src.url, dst.url);
    let policies = write(&scratch, "tty-policies", "p.yaml", &text);
    let (ok, shown) = tty(format!("run --policies {policies} --state {state}")).await;
    assert!(ok, "{shown}");
    assert!(shown.contains("pass tty: repositories listed") && shown.contains("pass tty: copying: 2/2 tags · 2 copied"), "{shown}");
    let (ok, shown) = tty(format!("run --policies {policies} --state {state} -q")).await;
    assert!(ok, "{shown}");
    assert!(!shown.contains("repositories listed"), "quiet: no progress: {shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_and_failback_show_progress_on_a_terminal_only() {
    let (primary, dr) = (TestRegistry::start(), TestRegistry::start());
    let p = Registry::new(&primary.url, Access::Anonymous);
    push_tags(&p, "team/app", &["v1", "v2"], "app").await;
    let scratch = Scratch::new();
    let text = format!("name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ntrigger: {{ interval: 1h }}\n", primary.url, dr.url);
    let policies = write(&scratch, "policies", "p.yaml", &text);
    let state = scratch.state();
    policy_verb(&scratch, &policies, &state, "dr", "run", &[]).await.assert_ok();
    let verb = |verb: &str, extra: &str| format!("{verb} --policy dr --policies {policies} --state {state} {extra}");
    // With --json on a terminal: no progress.
    let (ok, shown) = in_terminal(&scratch, &verb("failover", "--dry-run --json")).await;
    assert!(ok, "{shown}");
    assert!(!shown.contains("repositories listed") && !shown.contains("manifests and blobs checked"), "JSON output has no progress: {shown}");
    // On a terminal: the sync pass's planning, then the deep verification of DR.
    let (ok, shown) = in_terminal(&scratch, &verb("failover", "")).await;
    assert!(ok, "{shown}");
    assert!(shown.contains("failover dr: repositories listed 1/1 · tags found 2"), "{shown}");
    assert!(shown.contains("failover dr: deep: ") && shown.contains("manifests and blobs checked"), "{shown}");
    // Not a terminal: the report only.
    let back = policy_verb(&scratch, &policies, &state, "dr", "failback", &[]).await;
    back.assert_ok();
    assert!(back.stdout.contains("failback dr: done"), "{}", back.stdout);
    assert!(!back.stderr.contains("repositories listed") && !back.stderr.contains("manifests and blobs checked"), "{}", back.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_policy_says_why_without_an_execution() {
    let src = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    push_tags(&s, "team/app", &["v1"], "app").await;
    let scratch = Scratch::new();
    // Nothing listens at the destination.
    let down = format!("http://127.0.0.1:{}", free_port());
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: down\nsource: {{ registry: '{}', aliases: ['registry.example.com:5000'] }}\ndestinations:\n  - registry: '{down}'\ntrigger: {{ interval: 1h }}\n",
            src.url
        ),
    );
    let state = scratch.state();
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let list = regferry(&scratch, &["jobs", "list", "--state", &state], &[]).await;
    list.assert_ok();
    assert!(list.stdout.contains("no executions match"), "{}", list.stdout);
    let why = list.stdout.lines().find(|l| l.contains("down → ")).unwrap_or_default();
    // The fence at the destination is read first, and a fence that cannot be
    // read refuses the pass (#19): either way the line names the destination.
    assert!((why.contains("pass failed: ") || why.contains("pass refused by the failover fence")) && why.contains(&format!("cannot reach {down}")), "{}", list.stdout);

    // The daemon serves it with the policy (API and status page).
    let port = free_port();
    let token = "Bearer firsthour-events";
    let mut daemon = daemon_command(&scratch, &policies, port);
    let child = daemon.env("REGFERRY_EVENTS_TOKEN", token).spawn().expect("daemon");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/v1/policies/down");
    let mut body = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "the policy's error in the API", async || {
        let Ok(r) = client.get(&url).send().await else { return false };
        body = r.json().await.unwrap_or_default();
        body["health"]["failing"] == true && body["last_errors"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    let e = &body["last_errors"][0];
    assert!(e["error"].as_str().is_some_and(|m| m.contains("cannot reach")), "{body}");
    assert!(e["at"].as_i64().is_some_and(|t| t > 0), "{body}");
    assert_eq!(e["destination"].as_str(), Some(down.as_str()), "{body}");
    assert_eq!(body["latest_executions"].as_array().map(Vec::len), Some(0), "refused before it started: {body}");
    let page = client.get(format!("http://127.0.0.1:{port}/")).send().await.expect("page").text().await.expect("text");
    assert!(page.contains("Why it fails") && page.contains("cannot reach"), "{page}");

    // A push event naming the source by another of its names matches through `aliases:`.
    let harbor = |host: &str| {
        format!(
            r#"{{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"admin","event_data":{{"resources":[{{"digest":"sha256:00","tag":"v2","resource_url":"{host}/team/app:v2"}}],"repository":{{"name":"app","namespace":"team","repo_full_name":"team/app","repo_type":"private"}}}}}}"#
        )
    };
    let post = |host: &str| {
        let (client, body) = (client.clone(), harbor(host));
        async move {
            let r = client.post(format!("http://127.0.0.1:{port}/events/harbor")).header("Authorization", token).body(body).send().await.expect("post");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    let (code, body) = post("registry.example.com:5000").await;
    assert_eq!((code, body.contains(r#""policies":["down"]"#)), (202, true), "{body}");
    let (code, body) = post("elsewhere.example.com").await;
    assert_eq!((code, body.contains(r#""policies":[]"#)), (202, true), "{body}");
    let log = stop_daemon(child, &scratch.path("daemon.log")).await;
    assert!(log.contains("matched no policy") && log.contains("elsewhere.example.com"), "{log}");
}
