//! A randomized DR soak against two real docker-registry processes (delete
//! enabled): pushes and tag deletions at whichever site is active (plain
//! version tags under `latest: 3`, multi-arch indexes with a per-arch tag
//! deleted alone, every other one with a third platform the policy's
//! `platforms:` rule leaves out, so DR holds it narrowed), passes, failover and failback at random moments, `kill -9`
//! of a pass or of the daemon that runs beside it all along (trigger every
//! second), a lost state file (the daemon restarted on a fresh one). After
//! every step it checks the invariants:
//!
//! 1. no tag pushed at the active site is lost or overwritten;
//! 2. every tag at either site pulls completely (every child and blob);
//! 3. after a pass the passive site holds every tag of the active one that
//!    the rules select, within two passes: at the same digest, or, for an
//!    index with a platform left out, an index of exactly the selected
//!    platforms' children at DR (the primary, passive, may still hold the
//!    whole index it had: a reversed pass never narrows the primary's).
//!
//! `DR_SOAK_SEED` and `DR_SOAK_STEPS` choose the run (CI: a short seed);
//! the summary line gives steps, switches, invariants checked, violations.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use testkit::image::{self, Flavor};
use testkit::{Access, Registry, TestRegistry};

use crate::policies::write;
use crate::support::{Scratch, command, daemon_command, policy_verb};

/// xorshift64*: a seeded sequence, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const REPOS: [&str; 2] = ["team/a", "team/b"];
const LATEST: usize = 3;
/// The policy's `platforms:` rule; the soak's indexes also carry `ppc64le` every other time.
const PLATFORMS: [&str; 2] = ["amd64", "arm64"];

struct Site<'a> {
    reg: &'a TestRegistry,
    client: Registry,
    /// The repository prefix at this site (`mirror/` at DR).
    prefix: &'static str,
}

impl Site<'_> {
    fn repo(&self, repo: &str) -> String {
        format!("{}{repo}", self.prefix)
    }
}

/// The tags the rules select among `tags`: every `m-*` tag, and the `LATEST` highest `1.0.N`.
fn selected(tags: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut versions: Vec<(u64, &String)> = tags.keys().filter_map(|t| t.strip_prefix("1.0.").and_then(|n| n.parse().ok()).map(|n| (n, t))).collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    let mut out: BTreeSet<String> = versions.into_iter().take(LATEST).map(|(_, t)| t.clone()).collect();
    out.extend(tags.keys().filter(|t| t.starts_with("m-")).cloned());
    out
}

/// The children of an index tag as (architecture, digest); `None` for an image (or nothing).
async fn children(site: &Site<'_>, repo: &str, reference: &str) -> Option<BTreeSet<(String, String)>> {
    let (bytes, _) = site.client.get_manifest(&site.repo(repo), reference).await?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let list = doc["manifests"].as_array()?;
    Some(list.iter().map(|m| (m["platform"]["architecture"].as_str().unwrap_or_default().to_string(), m["digest"].as_str().unwrap_or_default().to_string())).collect())
}

/// How the passive site holds a tag of the active one.
#[derive(PartialEq)]
enum Held {
    Same,
    /// An index with the selected platforms' children only (or, at the primary, a superset).
    Narrowed,
    No,
}

/// How the passive site's `there` holds the active site's tag (digest `have`), as the rules copy it.
async fn holds(active: &Site<'_>, passive: &Site<'_>, passive_is_dr: bool, repo: &str, have: &str, there: Option<&String>) -> Held {
    let Some(there) = there else { return Held::No };
    if there == have {
        return Held::Same;
    }
    let (Some(all), Some(got)) = (children(active, repo, have).await, children(passive, repo, there).await) else { return Held::No };
    let want: BTreeSet<(String, String)> = all.iter().filter(|(a, _)| PLATFORMS.contains(&a.as_str())).cloned().collect();
    // At DR: narrowed only where the active index has a platform left out, and then to exactly the
    // selected children; the primary may hold the whole index it had, narrowed at DR.
    let ok = if passive_is_dr { want.len() < all.len() && got == want } else { want.is_subset(&got) };
    if ok { Held::Narrowed } else { Held::No }
}

async fn tag_map(site: &Site<'_>, repo: &str) -> BTreeMap<String, String> {
    site.client.tag_map(&site.repo(repo)).await.into_iter().map(|(t, (d, _))| (t, d)).collect()
}

#[derive(Default)]
struct Tally {
    steps: usize,
    passes: usize,
    failovers: usize,
    failbacks: usize,
    kills: usize,
    lost_states: usize,
    fenced: usize,
    checks: usize,
    /// Tags found held narrowed by the `platforms:` rule (invariant 3).
    narrowed: usize,
    violations: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn dr_soak_short_seed() {
    let seed: u64 = std::env::var("DR_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let steps: usize = std::env::var("DR_SOAK_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let primary_reg = TestRegistry::start();
    let dr_reg = TestRegistry::start();
    let sites = [
        Site { reg: &primary_reg, client: Registry::new(&primary_reg.url, Access::Anonymous), prefix: "" },
        Site { reg: &dr_reg, client: Registry::new(&dr_reg.url, Access::Anonymous), prefix: "mirror/" },
    ];
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: soak\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\n\
             tags: {{ latest: {LATEST} }}\nplatforms: [linux/amd64, linux/arm64]\ndelete: true\nmax_delete: 100%\ntrigger: {{ interval: 1s }}\n",
            primary_reg.url, dr_reg.url
        ),
    );
    let state = scratch.state();
    let start_daemon = || daemon_command(&scratch, &policies, testkit::free_port()).spawn().expect("start the daemon");
    let mut daemon = start_daemon();
    let mut active = 0usize; // 0: primary, 1: DR
    // Tags the soak pushed at the active site since it became active (and did not delete).
    let mut pushed: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut n = 0u64;
    let mut t = Tally::default();
    let mut log = Vec::new();

    for step in 0..steps {
        t.steps += 1;
        let op = rng.below(100);
        let site = &sites[active];
        let repo = REPOS[rng.below(REPOS.len() as u64) as usize];
        let mut ran_pass = false;
        let what = if op < 30 {
            n += 1;
            let tag = format!("1.0.{n}");
            let img = image::image(Flavor::Oci, &format!("s{seed}-{n}"), vec![image::layer(Flavor::Oci, &format!("s{seed}-{n}"), 200)]);
            site.client.push(&site.repo(repo), &tag, &img).await;
            pushed.insert((repo.into(), tag.clone()), img.digest.clone());
            format!("push {repo}:{tag} at {}", ["primary", "DR"][active])
        } else if op < 40 {
            n += 1;
            let amd = image::image(Flavor::Oci, &format!("s{seed}-{n}-amd64"), vec![image::layer(Flavor::Oci, &format!("s{seed}-{n}-amd64"), 200)]);
            let arm = image::image(Flavor::Oci, &format!("s{seed}-{n}-arm64"), vec![image::layer(Flavor::Oci, &format!("s{seed}-{n}-arm64"), 200)]);
            let mut kids = vec![(amd.clone(), "amd64"), (arm, "arm64")];
            if n % 2 == 0 {
                // A platform the `platforms:` rule leaves out: DR gets the index narrowed (no draw: the seed's steps stay).
                kids.push((image::image(Flavor::Oci, &format!("s{seed}-{n}-ppc"), vec![image::layer(Flavor::Oci, &format!("s{seed}-{n}-ppc"), 200)]), "ppc64le"));
            }
            let idx = image::index(Flavor::Oci, kids);
            site.client.push(&site.repo(repo), &format!("m-{n}"), &idx).await;
            site.client.push(&site.repo(repo), &format!("m-{n}-amd64"), &amd).await;
            pushed.insert((repo.into(), format!("m-{n}")), idx.digest.clone());
            pushed.insert((repo.into(), format!("m-{n}-amd64")), amd.digest.clone());
            format!("push multi-arch {repo}:m-{n} (+ m-{n}-amd64) at {}", ["primary", "DR"][active])
        } else if op < 52 {
            let here = tag_map(site, repo).await;
            let tags: Vec<&String> = here.keys().collect();
            if tags.is_empty() {
                "nothing to delete".into()
            } else {
                let tag = tags[rng.below(tags.len() as u64) as usize].clone();
                if tag.starts_with("m-") && tag.ends_with("-amd64") {
                    // A per-arch tag deleted alone (as Harbor, ECR, Quay do).
                    let dir = site.reg.storage().join(format!("docker/registry/v2/repositories/{}/_manifests/tags/{tag}", site.repo(repo)));
                    std::fs::remove_dir_all(&dir).expect("remove the tag");
                } else {
                    site.client.delete_manifest(&site.repo(repo), &here[&tag]).await;
                }
                // Deleting by digest takes every tag on it along; the soak's own tags have distinct digests.
                pushed.retain(|(r, tg), _| !(r == repo && *tg == tag));
                format!("delete {repo}:{tag} at {}", ["primary", "DR"][active])
            }
        } else if op < 76 {
            let run = policy_verb(&scratch, &policies, &state, "soak", "run", &[]).await;
            t.passes += 1;
            ran_pass = run.code == 0;
            format!("run: exit {}", run.code)
        } else if op < 84 {
            let verb = if active == 0 { "failover" } else { "failback" };
            let r = policy_verb(&scratch, &policies, &state, "soak", verb, &[]).await;
            if r.code == 0 {
                if active == 0 {
                    t.failovers += 1;
                } else {
                    t.failbacks += 1;
                }
                active = 1 - active;
                pushed.clear();
            }
            format!("{verb}: exit {}", r.code)
        } else if op < 88 {
            let _ = daemon.start_kill();
            let _ = daemon.wait().await;
            daemon = start_daemon();
            t.kills += 1;
            "kill -9 of the daemon, started again".into()
        } else if op < 92 {
            let mut child = command(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("start run");
            let after = rng.below(400);
            tokio::time::sleep(Duration::from_millis(after)).await;
            let _ = child.start_kill();
            let _ = child.wait().await;
            t.kills += 1;
            format!("kill -9 of a pass after {after} ms")
        } else {
            let _ = daemon.start_kill();
            let _ = daemon.wait().await;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{state}{suffix}"));
            }
            t.lost_states += 1;
            // A pass with the fresh state first: when DR is active the fence must refuse it.
            let run = policy_verb(&scratch, &policies, &state, "soak", "run", &[]).await;
            if active == 1 {
                if run.code == 0 {
                    t.violations.push(format!("step {step}: a fresh state ran forward over the failed-over DR site"));
                } else {
                    t.fenced += 1;
                }
                // The operator's explicit word: take the fence's direction over.
                let fo = policy_verb(&scratch, &policies, &state, "soak", "failover", &[]).await;
                if fo.code != 0 {
                    t.violations.push(format!("step {step}: failover could not take the fence's direction over: {}", fo.stdout));
                }
            }
            daemon = start_daemon();
            format!("lost the state file (run after it: exit {}); the daemon started again on a fresh one", run.code)
        };
        log.push(format!("{step}: {what}"));

        // Invariant 1: what was pushed at the active site is there, unchanged.
        let site = &sites[active];
        for ((repo, tag), digest) in &pushed {
            t.checks += 1;
            let now = site.client.head(&site.repo(repo), tag).await.map(|h| h.0);
            if now.as_deref() != Some(digest.as_str()) {
                t.violations.push(format!("step {step} ({what}): {repo}:{tag} pushed at the active site is {now:?}, not {digest}"));
            }
        }
        // Invariant 2: every tag at either site pulls completely.
        for s in &sites {
            for repo in REPOS {
                for tag in s.client.tags(&s.repo(repo)).await {
                    t.checks += 1;
                    let mut missing = s.client.missing_content(&s.repo(repo), &tag).await;
                    if !missing.is_empty() {
                        // The daemon may be deleting it (mirroring a deletion: the registry
                        // removes the manifest, then its tags): look again a moment later.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if !s.client.tags(&s.repo(repo)).await.contains(&tag) {
                            continue;
                        }
                        missing = s.client.missing_content(&s.repo(repo), &tag).await;
                    }
                    if !missing.is_empty() {
                        t.violations.push(format!("step {step} ({what}): {}:{tag} does not pull: {missing:?}", s.repo(repo)));
                    }
                }
            }
        }
        // Invariant 3: after a pass the passive site converges, within two passes.
        if ran_pass {
            let passive = &sites[1 - active];
            for attempt in 0..2 {
                let mut behind = Vec::new();
                for repo in REPOS {
                    let have = tag_map(&sites[active], repo).await;
                    let there = tag_map(passive, repo).await;
                    for tag in selected(&have) {
                        match holds(&sites[active], passive, active == 0, repo, &have[&tag], there.get(&tag)).await {
                            Held::Same => {}
                            Held::Narrowed => t.narrowed += 1,
                            Held::No => behind.push(format!("{repo}:{tag}")),
                        }
                    }
                }
                t.checks += 1;
                if behind.is_empty() {
                    break;
                }
                if attempt == 1 {
                    t.violations.push(format!("step {step}: the passive site did not converge within two passes: {behind:?}"));
                } else {
                    policy_verb(&scratch, &policies, &state, "soak", "run", &[]).await;
                    t.passes += 1;
                }
            }
        }
    }
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;
    eprintln!(
        "dr soak seed {seed}: {} steps, {} passes, {} failovers, {} failbacks, {} kill -9, {} lost states ({} fenced runs), {} invariants checked ({} narrowed indexes), {} violations",
        t.steps,
        t.passes,
        t.failovers,
        t.failbacks,
        t.kills,
        t.lost_states,
        t.fenced,
        t.checks,
        t.narrowed,
        t.violations.len()
    );
    if seed == 4 && steps == 24 {
        // The CI seed pushes indexes with a platform left out: the narrowed copies must be checked.
        assert!(t.narrowed > 0, "the CI seed checked no narrowed index:\n{}", log.join("\n"));
    }
    assert!(t.violations.is_empty(), "violations:\n{}\n\nsteps:\n{}", t.violations.join("\n"), log.join("\n"));
}
