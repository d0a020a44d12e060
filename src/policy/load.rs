//! Reading policy files: which files, in what order, and the set they make.
//!
//! Every file is parsed and checked before anything is refused, so one run
//! of `policy check` names every mistake; names must be unique across files.
//! It must never connect to a registry or read the state database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::check::Checker;
use super::{Policy, PolicyError, PolicySet};

/// The policy files at `path`: a directory's `*.yaml`/`*.yml`, or one file.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let read = |source| PolicyError::Read { path: path.to_path_buf(), source };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(PolicyError::Empty(path.to_path_buf()));
    }
    Ok(out)
}

/// Load and check every policy at `path`. `env` looks up environment
/// variables (credentials); pass `|k| std::env::var(k).ok()`.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<PolicySet, PolicyError> {
    load_with(path, env, false)
}

/// [`load`] for `policy check --offline` (CI without secrets): credentials'
/// environment variables, password files, auth files, CA bundles and client
/// certificates need not exist (their fields are still checked); nothing
/// loaded this way is fit to connect with.
pub fn load_offline(path: &Path) -> Result<PolicySet, PolicyError> {
    load_with(path, &|k| std::env::var(k).ok().or_else(|| Some(OFFLINE_PLACEHOLDER.to_string())), true)
}

/// What an absent secret reads as in an offline check (a URL, so that a
/// webhook address from the environment passes as well).
pub(super) const OFFLINE_PLACEHOLDER: &str = "https://offline-check.invalid/";

fn load_with(path: &Path, env: &dyn Fn(&str) -> Option<String>, offline: bool) -> Result<PolicySet, PolicyError> {
    let mut issues = Vec::new();
    let mut policies: Vec<Policy> = Vec::new();
    let mut names: HashMap<String, (PathBuf, u64)> = HashMap::new();
    for file in files(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| PolicyError::Read { path: file.clone(), source })?;
        let mut check = Checker { file: &file, issues: &mut issues, env, offline };
        let Some(policy) = check.policy(&text) else { continue };
        let line = policy_line(&text, "name");
        if let Some((other, other_line)) = names.get(&policy.name) {
            check.issue(Some(line), "name", format!("policy name {:?} is already used by {}:{other_line}", policy.name, other.display()));
            continue;
        }
        names.insert(policy.name.clone(), (file.clone(), line));
        policies.push(policy);
    }
    if issues.is_empty() { Ok(PolicySet { policies }) } else { Err(PolicyError::Invalid(issues)) }
}

/// The line of a top-level key (for issues found after parsing).
fn policy_line(text: &str, key: &str) -> u64 {
    text.lines().position(|l| l.starts_with(&format!("{key}:"))).map_or(1, |i| i as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::*;

    fn load_text(files: &[(&str, &str)], env: &[(&str, &str)]) -> Result<PolicySet, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load(dir.path(), &|k| env.get(k).cloned())
    }

    #[test]
    fn a_full_policy_loads_with_defaults_filled_in() {
        let text = "name: p\nsource:\n  registry: https://src.example.com/team\n  credentials: { username_env: U, password_env: P }\n\
                    destinations:\n  - registry: https://dst.example.com/base\n    namespace: mirror\n\
                    repositories: { include: ['**'] }\ntrigger: { cron: '0 */6 * * *' }\n";
        let set = load_text(&[("p.yaml", text)], &[("U", "user"), ("P", "pw")]).unwrap();
        let p = set.get("p").unwrap();
        assert!(matches!(&p.source.credentials, CredentialSource::Fixed(Credentials::Basic { username, .. }) if username == "user"));
        assert_eq!(p.destinations[0].url().to_string(), "https://dst.example.com/base/mirror");
        assert!(matches!(p.trigger, Trigger::Cron(_)));
        assert_eq!((p.overwrite, p.delete, p.concurrency, p.retry), (true, false, 8, RetryPolicy::default()));
        let spec = p.forward(&p.destinations[0]);
        let prefixes = |m: &RepoMapping| (m.source_prefix.clone(), m.dest_prefix.clone(), m.backwards);
        assert_eq!(prefixes(&spec.scope.mapping), ("team".into(), "base/mirror".into(), false));
        let back = p.reverse(&p.destinations[0]);
        assert_eq!(prefixes(&back.scope.mapping), ("base/mirror".into(), "team".into(), true));
        assert!(back.reversed && back.scope_key() != spec.scope_key());
    }

    #[test]
    fn timeouts_and_chunk_sizes_come_from_the_policy_and_yield_to_the_command_line() {
        let text = "name: p\nsource:\n  registry: https://src.example.com\n  chunk_size: 4MiB\n\
                    destinations:\n  - registry: https://dst.example.com\n    chunk_size: 8MiB\n  - registry: https://dr2.example.com\n\
                    stall_timeout: 2m\n";
        let set = load_text(&[("p.yaml", text)], &[]).unwrap();
        let p = set.get("p").unwrap();
        assert_eq!(p.source.chunk_size, Some(4 << 20));
        assert_eq!(p.destinations[0].endpoint.chunk_size, Some(8 << 20));
        assert_eq!(p.destinations[1].endpoint.chunk_size, None);
        let spec = p.forward(&p.destinations[0]);
        assert_eq!((spec.client.stall_timeout, spec.client.commit_timeout), (Duration::from_secs(120), Duration::from_secs(300)));
        assert_eq!(spec.destination.chunk_size, Some(8 << 20));
        assert_eq!(p.reverse(&p.destinations[0]).destination.chunk_size, Some(4 << 20), "after a failover the source is written to");

        let set = set.with_timeouts(&TimeoutOverrides { stall: Some(Duration::from_secs(600)), commit: None });
        let c = &set.get("p").unwrap().client;
        assert_eq!((c.stall_timeout, c.commit_timeout), (Duration::from_secs(600), Duration::from_secs(600)));

        let bad = "name: p\nsource:\n  registry: https://src.example.com\n  chunk_size: 1KiB\n\
                   destinations:\n  - registry: https://dst.example.com\n    chunk_size: lots\nstall_timeout: 10ms\ncommit_timeout: soon\n";
        let issues = match load_text(&[("p.yaml", bad)], &[]) {
            Err(PolicyError::Invalid(issues)) => issues,
            other => panic!("{other:?}"),
        };
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["source.chunk_size", "destinations[0].chunk_size", "stall_timeout", "commit_timeout"], "{issues:?}");
    }

    #[test]
    fn the_spool_budget_has_a_default_a_size_or_zero_and_nothing_else() {
        let base = "name: p\nsource: { registry: https://src.example.com }\ndestinations: [{ registry: https://a.example.com }, { registry: https://b.example.com }]\n";
        let budget = |extra: &str| load_text(&[("p.yaml", &format!("{base}{extra}"))], &[]).map(|s| s.get("p").unwrap().spool_budget);
        assert_eq!(budget("").unwrap(), crate::scheme::shared::spool::DEFAULT_BUDGET);
        assert_eq!(budget("spool_budget: 500MiB\n").unwrap(), 500 << 20);
        assert_eq!(budget("spool_budget: '0'\n").unwrap(), 0);
        assert_eq!(budget("spool_budget: 0\n").unwrap(), 0);
        assert_eq!(budget("spool_budget: 1048576\n").unwrap(), 1 << 20);
        match budget("spool_budget: lots\n") {
            Err(PolicyError::Invalid(issues)) => assert_eq!(issues[0].field, "spool_budget", "{issues:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn require_reads_each_key_file_and_points_at_each_mistake() {
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        let key = p256::ecdsa::SigningKey::from_bytes(&[5u8; 32].into()).unwrap();
        let pem = key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let base = "name: p\nsource: { registry: https://src.example.com }\ndestinations: [{ registry: https://dst.example.com }]\n";
        let ok = format!("{base}require: {{ signed_by: [keys/cosign.pub], referrer_types: [application/spdx+json] }}\n");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/cosign.pub"), &pem).unwrap();
        std::fs::write(dir.path().join("p.yaml"), &ok).unwrap();
        let set = load(dir.path(), &|_| None).unwrap();
        let p = set.get("p").unwrap();
        let spec = p.forward(&p.destinations[0]);
        let req = spec.scope.require.as_deref().expect("require reaches the scope");
        assert_eq!(req.signed_by.len(), 1);
        assert!(req.signed_by[0].file.ends_with("keys/cosign.pub"), "{:?}", req.signed_by[0].file);
        assert_eq!(req.referrer_types, ["application/spdx+json"]);
        assert!(set.get("p").unwrap().forward(&p.destinations[0]).scope.require.is_some());
        assert!(p.reverse(&p.destinations[0]).scope.require.is_some(), "the gate holds after a failover too");

        let bad = format!("{base}require:\n  signed_by: [missing.pub, p.yaml]\n  referrer_types: [spdx]\n");
        let e = load_text(&[("p.yaml", &bad)], &[]).unwrap_err().to_string();
        assert!(e.contains("p.yaml:5: require.signed_by[0]: cannot read"), "{e}");
        assert!(e.contains("require.signed_by[1]") && e.contains("not an ECDSA P-256 public key"), "{e}");
        assert!(e.contains("p.yaml:6: require.referrer_types[0]") && e.contains("not a media type"), "{e}");
        let empty = format!("{base}require: {{}}\n");
        let e = load_text(&[("p.yaml", &empty)], &[]).unwrap_err().to_string();
        assert!(e.contains("require: is empty"), "{e}");
    }

    #[test]
    fn referrers_and_immutable_tags_reach_the_scope() {
        let base = "name: p\nsource: { registry: https://src.example.com }\ndestinations: [{ registry: https://dst.example.com }]\n";
        let set = load_text(&[("p.yaml", base)], &[]).unwrap();
        let spec = set.get("p").unwrap().forward(&set.get("p").unwrap().destinations[0]);
        assert_eq!(*spec.scope.referrers, ReferrerOptions::default(), "referrers travel by default, every type");
        assert!(!spec.scope.immutable);

        let text = format!("{base}referrer_types: [application/spdx+json]\ntags: {{ immutable: true }}\n");
        let set = load_text(&[("p.yaml", &text)], &[]).unwrap();
        let spec = set.get("p").unwrap().forward(&set.get("p").unwrap().destinations[0]);
        assert_eq!(spec.scope.referrers.types, ["application/spdx+json"]);
        assert!(spec.scope.immutable && spec.scope.referrers.enabled);

        let off = format!("{base}referrers: false\n");
        let set = load_text(&[("p.yaml", &off)], &[]).unwrap();
        assert!(!set.get("p").unwrap().referrers.enabled);

        let bad = format!("{base}referrers: false\nreferrer_types: [spdx, 'application/x']\n");
        let e = load_text(&[("p.yaml", &bad)], &[]).unwrap_err().to_string();
        assert!(e.contains("referrer_types[0]") && e.contains("not a media type"), "{e}");
        assert!(e.contains("referrers: false copies no referrers"), "{e}");
    }

    #[test]
    fn secrets_do_not_leak_into_issues_or_debug_output() {
        let text = "name: p\nsource:\n  registry: https://src.example.com\n  credentials: { username: u, password_env: P }\n\
                    destinations:\n  - registry: 'https://dst.example.com'\n";
        let set = load_text(&[("p.yaml", text)], &[("P", "hunter2-secret")]).unwrap();
        assert!(!format!("{:?}", set.policies[0].source).contains("hunter2"));
    }

    #[test]
    fn registry_limits_load_with_human_sizes() {
        let text = "name: p\nsource:\n  registry: https://src.example.com\n  requests_per_second: 20\n\
                    destinations:\n  - registry: https://dst.example.com\n    bytes_per_second: 50MiB\n\
                    \x20 - registry: https://dst2.example.com\n    bytes_per_second: 1048576\n";
        let set = load_text(&[("p.yaml", text)], &[]).unwrap();
        let p = set.get("p").unwrap();
        assert_eq!(p.source.limits, Limits { requests_per_second: Some(20.0), bytes_per_second: None });
        assert_eq!(p.destinations[0].endpoint.limits.bytes_per_second, Some(50 * 1024 * 1024));
        assert_eq!(p.destinations[1].endpoint.limits.bytes_per_second, Some(1024 * 1024), "a plain number is bytes");
        let bad = "name: p\nsource:\n  registry: https://s.example.com\n  bytes_per_second: lots\n\
                   destinations:\n  - registry: https://d.example.com\n    requests_per_second: 0\n";
        let e = load_text(&[("p.yaml", bad)], &[]).unwrap_err().to_string();
        assert!(e.contains("source.bytes_per_second") && e.contains("destinations[0].requests_per_second"), "{e}");
    }

    #[test]
    fn max_delete_is_a_share_or_a_count_and_is_checked_with_its_line() {
        let text = |m: &str| format!("name: p\nsource: {{ registry: 'https://s.example.com' }}\ndestinations:\n  - registry: 'https://d.example.com'\ndelete: true\nmax_delete: {m}\n");
        let p = |m: &str| load_text(&[("p.yaml", &text(m))], &[]).map(|s| s.policies[0].max_delete);
        assert_eq!(p("25%").unwrap(), MaxDelete::Share(25.0));
        assert_eq!(p("50").unwrap(), MaxDelete::Count(50));
        assert_eq!(MaxDelete::default().allowed(100), 10);
        assert_eq!(MaxDelete::default().allowed(3), 1, "one deletion is always allowed");
        assert_eq!(MaxDelete::Share(100.0).allowed(7), 7);
        for bad in ["0", "0%", "150%", "lots", "-3"] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains("p.yaml:6: max_delete:"), "{bad}: {e}");
        }
    }

    #[test]
    fn platforms_load_with_their_mode_and_each_mistake_has_its_line() {
        let text = "name: p\nsource:\n  registry: https://s.example.com\ndestinations:\n  - registry: https://d.example.com\n\
                    platforms: [linux/amd64, linux/arm64]\n";
        let set = load_text(&[("p.yaml", text)], &[]).unwrap();
        let f = set.get("p").unwrap().platforms.clone().expect("a platform filter");
        assert_eq!((f.label(), f.mode), ("linux/amd64,linux/arm64".to_string(), FilterMode::Rewrite), "rewrite is the default");
        let spec = set.get("p").unwrap().forward(&set.get("p").unwrap().destinations[0]);
        assert!(spec.scope.platforms.is_some() && spec.scope_key().contains("platforms=linux/amd64,linux/arm64:rewrite"));
        let sparse = text.replace("platforms:", "platform_filter: sparse\nplatforms:");
        assert_eq!(load_text(&[("p.yaml", &sparse)], &[]).unwrap().get("p").unwrap().platforms.as_ref().unwrap().mode, FilterMode::Sparse);

        let bad = "name: p\nsource:\n  registry: https://s.example.com\ndestinations:\n  - registry: https://d.example.com\n\
                   platforms:\n  - linux/amd64\n  - linux\nplatform_filter: both\n";
        let e = load_text(&[("p.yaml", bad)], &[]).unwrap_err().to_string();
        assert!(e.contains("p.yaml:8: platforms[1]: \"linux\" is not a platform"), "{e}");
        assert!(e.contains("p.yaml:9: platform_filter: \"both\" is not a platform filter"), "{e}");
        let alone = "name: p\nsource:\n  registry: https://s.example.com\ndestinations:\n  - registry: https://d.example.com\n\
                     platform_filter: sparse\n";
        let e = load_text(&[("p.yaml", alone)], &[]).unwrap_err().to_string();
        assert!(e.contains("p.yaml:6: platform_filter: has no effect without platforms"), "{e}");
        let empty = alone.replace("platform_filter: sparse", "platforms: []");
        assert!(load_text(&[("p.yaml", &empty)], &[]).unwrap_err().to_string().contains("platforms: is empty"));
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let r = RetryPolicy { backoff: Duration::from_secs(60), max_backoff: Duration::from_secs(300), ..RetryPolicy::default() };
        let delays: Vec<u64> = (1..=5).map(|n| r.delay(n).as_secs()).collect();
        assert_eq!(delays, [60, 120, 240, 300, 300]);
    }
}
