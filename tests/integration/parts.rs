//! A pass over more tags than one part (`REGFERRY_PART_TAGS`, small here)
//! is planned and run in parts of whole repositories: still exact, still one
//! execution, a failed tag in one part does not stop the others, and what
//! every part wrote is remembered, so deletions after the last part cover
//! them all.

use std::time::Duration;

use testkit::dataset::{self, Spec};
use testkit::image::{self, Flavor};
use testkit::{FaultProxy, Faults};

use crate::policies::{push_tags, write};
use crate::support::{Run, Scratch, assert_mirrored, command, migrate_args, regferry, registries, repos_of, wait_until};

const SMALL_PARTS: (&str, &str) = ("REGFERRY_PART_TAGS", "3");

fn text(run: &Run) -> String {
    format!("exit {}\n{}\n{}", run.code, run.stdout, run.stderr)
}

/// How many parts a run planned (its "plan ready" / "pass planned" log lines).
fn parts_planned(run: &Run, line: &str) -> usize {
    run.stderr.lines().filter(|l| l.contains(line)).count()
}

async fn executions(scratch: &Scratch, state: &str, policy: Option<&str>) -> Vec<serde_json::Value> {
    let mut args = vec!["jobs", "list", "--state", state, "--json"];
    if let Some(p) = policy {
        args.extend(["--policy", p]);
    }
    let list = regferry(scratch, &args, &[]).await;
    list.assert_ok();
    list.json().as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migrate_in_parts_is_exact_and_one_execution() {
    let (src, dst, s, d) = registries();
    // Indexes and signature tags (which wait on their images): a part must
    // never split a repository from its signatures.
    let spec = Spec { repos: 5, tags_per_repo: 4, multi_arch_every: 2, ..Spec::default() };
    let pushed = dataset::fill(&s, &spec).await;
    let repos = repos_of(&pushed);
    let scratch = Scratch::new();
    let state = scratch.state();
    let args = migrate_args(&scratch, &src.url, &format!("{}/mirror", dst.url), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let run = regferry(&scratch, &args, &[SMALL_PARTS]).await;
    assert_eq!(run.code, 0, "{}", text(&run));
    assert_eq!(parts_planned(&run, "plan ready"), repos.len(), "one part per repository at 3 tags a part: {}", run.stderr);
    let report = run.json();
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["counts"]["tags_copied"], pushed.len() as u64, "{report}");
    assert_eq!(report["counts"]["tags_total"], pushed.len() as u64, "{report}");
    assert_eq!(assert_mirrored(&s, &d, &repos, "mirror").await, pushed.len());
    // Blobs a part uploaded are mounted by later parts, not uploaded again.
    assert_eq!(report["counts"]["bytes_uploaded"], dataset::distinct_blob_bytes(&pushed), "{report}");
    let listed = executions(&scratch, &state, None).await;
    assert_eq!(listed.len(), 1, "one execution for every part: {listed:?}");
    assert_eq!(listed[0]["status"], "succeeded");

    // Unchanged: every part a no-op.
    let again = regferry(&scratch, &args, &[SMALL_PARTS]).await;
    assert_eq!(again.code, 0, "{}", text(&again));
    let r2 = again.json();
    assert_eq!(r2["counts"]["tags_copied"], 0, "{r2}");
    assert_eq!(r2["counts"]["tags_skipped"], pushed.len() as u64, "{r2}");
    assert_eq!(executions(&scratch, &state, None).await.len(), 2, "one execution per run");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_pass_in_parts_goes_on_past_a_failed_tag_and_deletes_across_all_parts() {
    let (src, dst, s, d) = registries();
    let repos = ["team/a", "team/b", "team/c", "team/d"];
    for repo in repos {
        push_tags(&s, repo, &["1", "2", "3"], repo).await;
    }
    // A tag of the first part that cannot be copied: its layer is gone at the source.
    let layer = image::layer(Flavor::Oci, "broken-layer", 300);
    let broken = image::image(Flavor::Oci, "broken", vec![layer.clone()]);
    s.push("team/a", "broken", &broken).await;
    std::fs::remove_dir_all(src.blob_dir(&layer.digest)).expect("remove the layer at the source");

    let scratch = Scratch::new();
    let state = scratch.state();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: parts\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\ndelete: true\nmax_delete: 100%\nretry: {{ give_up_after: 10 }}\n", src.url, dst.url),
    );
    let args = ["run", "--policies", policies.as_str(), "--state", state.as_str(), "--json"];
    let run = regferry(&scratch, &args, &[SMALL_PARTS]).await;
    assert_eq!(run.code, 1, "the broken tag fails the pass: {}", text(&run));
    assert_eq!(parts_planned(&run, "pass planned"), repos.len(), "{}", run.stderr);
    let dest = &run.json()[0]["destinations"][0];
    let failed: Vec<(&str, &str)> = dest["report"]["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| (f["repository"].as_str().unwrap_or_default(), f["tag"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(failed, [("team/a", "broken")], "only the broken tag failed: {dest}");
    for repo in repos {
        assert_eq!(d.tags(repo).await, ["1", "2", "3"], "{repo}: every part ran, the first part's failure stopped none");
    }
    let listed = executions(&scratch, &state, Some("parts")).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"], "failed", "{listed:?}");

    // Tags deleted at the source in the first and the last part are
    // deleted at the destination after the last part: every part recorded
    // what it wrote.
    for (repo, tag) in [("team/a", "2"), ("team/d", "3")] {
        let digest = s.head(repo, tag).await.expect("tag at the source").0;
        s.delete_manifest(repo, &digest).await;
    }
    let run = regferry(&scratch, &args, &[SMALL_PARTS]).await;
    assert_eq!(run.code, 1, "the broken tag still fails: {}", text(&run));
    let dest = &run.json()[0]["destinations"][0];
    let mut deleted: Vec<String> = dest["deleted"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect();
    deleted.sort();
    assert_eq!(deleted, ["team/a:2", "team/d:3"], "{dest}");
    assert_eq!(d.tags("team/a").await, ["1", "3"]);
    assert_eq!(d.tags("team/d").await, ["1", "2"]);
    assert_eq!(d.tags("team/b").await, ["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_while_the_next_part_is_planned_ends_the_run_and_the_next_run_finishes_it() {
    let (src, dst, s, d) = registries();
    push_tags(&s, "team/a", &["1", "2"], "a").await;
    push_tags(&s, "team/b", &["1", "2"], "b").await;
    // The second part's planning waits: team/b's tag list is held at the source.
    let sp = FaultProxy::start(&src.url, Faults { hold: 1.0, only: vec!["GET /v2/team/b/tags/list".into()], ..Faults::default() });
    let scratch = Scratch::new();
    let state = scratch.state();
    let args = migrate_args(&scratch, &sp.url, &dst.url, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = command(&scratch, &args, &[("REGFERRY_PART_TAGS", "1")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start regferry");
    wait_until(Duration::from_secs(60), "the first part copied while the second is planned", async || {
        sp.counters.injected("hold") >= 1 && d.tags("team/a").await.len() == 2
    })
    .await;
    let pid = child.id().expect("regferry's pid") as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("a stopped run does not wait for the part it is planning")
        .expect("reap regferry");
    let run = Run { code: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into(), stderr: String::from_utf8_lossy(&out.stderr).into() };
    assert_eq!(run.code, 130, "interrupted: {}", text(&run));
    assert_eq!(run.json()["status"], "canceled", "parts were left: not a success: {}", run.stdout);
    assert!(d.tags("team/b").await.is_empty());
    let listed = executions(&scratch, &state, None).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"], "canceled", "{listed:?}");

    // The same command again, the source answering: it resumes that
    // execution and finishes every part.
    sp.release();
    let again = regferry(&scratch, &args, &[("REGFERRY_PART_TAGS", "1")]).await;
    assert_eq!(again.code, 0, "{}", text(&again));
    let report = again.json();
    assert_eq!(report["resumed"], true, "{report}");
    assert_eq!(report["counts"]["tags_copied"], 2, "team/b's tags: {report}");
    assert_eq!(d.tags("team/b").await, ["1", "2"]);
    let listed = executions(&scratch, &state, None).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"], "succeeded", "{listed:?}");
}
