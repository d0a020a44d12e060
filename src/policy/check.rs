//! Checking one policy file: raw fields in, a [`Policy`] or its issues out.
//!
//! Each mistake is recorded with its file, line and field and checking goes
//! on, so that one pass names them all. It must never connect to a registry;
//! offline it must not require secrets or TLS files to exist.

use super::*;
use super::load::OFFLINE_PLACEHOLDER;

/// A registry's TLS and proxy fields in a policy file.
struct TlsFields<'a> {
    ca_file: Option<&'a At<String>>,
    client_cert: Option<&'a At<String>>,
    client_key: Option<&'a At<String>>,
    proxy: Option<&'a At<String>>,
}

/// Collects the issues of one file while building its policy.
pub(super) struct Checker<'a> {
    pub(super) file: &'a Path,
    pub(super) issues: &'a mut Vec<PolicyIssue>,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    /// Files holding secrets (and TLS files) need not exist.
    pub(super) offline: bool,
}

fn line<T>(v: &At<T>) -> Option<u64> {
    Some(v.referenced.line()).filter(|&l| l > 0)
}

fn duration(v: &At<String>) -> Result<Duration, String> {
    humantime::parse_duration(v.value.trim())
        .map_err(|e| format!("{:?} is not a duration ({e}); write e.g. 90s, 10m, 6h", v.value))
        .and_then(|d| if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(d) })
}

impl Checker<'_> {
    pub(super) fn issue(&mut self, line: Option<u64>, field: &str, message: impl Into<String>) {
        self.issues.push(PolicyIssue { file: self.file.to_path_buf(), line, field: field.into(), message: message.into() });
    }

    /// `Some(value)` when `result` is ok; records the issue otherwise.
    fn ok<T, U>(&mut self, at: &At<U>, field: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.issue(line(at), field, m)).ok()
    }

    pub(super) fn policy(&mut self, text: &str) -> Option<Policy> {
        let raw: RawPolicy = match file::parse(text) {
            Ok(raw) => raw,
            Err((line, message)) => {
                self.issue(line, "", message);
                return None;
            }
        };
        let before = self.issues.len();
        let name = raw.name.value.trim().to_string();
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !name_ok {
            self.issue(line(&raw.name), "name", format!("{name:?} is not a policy name (1-63 letters, digits, '-', '_', '.')"));
        }

        let s = &raw.source;
        let tls = TlsFields { ca_file: s.ca_file.as_ref(), client_cert: s.client_cert.as_ref(), client_key: s.client_key.as_ref(), proxy: s.proxy.as_ref() };
        let source = self.endpoint(&s.registry, s.credentials.as_ref(), tls, s.insecure, "source");
        let limits = self.limits(raw.source.requests_per_second.as_ref(), raw.source.bytes_per_second.as_ref(), "source");
        let source = source.map(|e| Endpoint { limits, ..e });
        let source = source.and_then(|e| self.chunk_size(e, raw.source.chunk_size.as_ref(), "source"));
        let source_repositories: Vec<String> = raw
            .source
            .repositories
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, r)| {
                let name = r.value.trim_matches('/').to_string();
                let ok = name.parse::<crate::registry::RepoName>().map(|_| name).map_err(|e| e.to_string());
                self.ok(r, &format!("source.repositories[{i}]"), ok)
            })
            .collect();

        let source_aliases = self.aliases(&raw.source.aliases, "source");
        if raw.destinations.value.is_empty() {
            self.issue(line(&raw.destinations), "destinations", "at least one destination is required");
        }
        let mut destinations = Vec::new();
        for (i, d) in raw.destinations.value.iter().enumerate() {
            let field = format!("destinations[{i}]");
            let tls = TlsFields { ca_file: d.ca_file.as_ref(), client_cert: d.client_cert.as_ref(), client_key: d.client_key.as_ref(), proxy: d.proxy.as_ref() };
            let endpoint = self.endpoint(&d.registry, d.credentials.as_ref(), tls, d.insecure, &field);
            let limits = self.limits(d.requests_per_second.as_ref(), d.bytes_per_second.as_ref(), &field);
            let endpoint = endpoint.map(|e| Endpoint { limits, ..e });
            let endpoint = endpoint.and_then(|e| self.chunk_size(e, d.chunk_size.as_ref(), &field));
            let namespace = d.namespace.as_ref().map(|n| n.value.trim_matches('/').to_string()).unwrap_or_default();
            if let Some(n) = &d.namespace
                && !namespace.is_empty() {
                    let ok = namespace.parse::<crate::registry::RepoName>().map(|_| ()).map_err(|e| format!("bad namespace: {e}"));
                    self.ok(n, &format!("{field}.namespace"), ok);
                }
            if let Some(endpoint) = endpoint {
                let aliases = self.aliases(&d.aliases, &field);
                destinations.push(Destination { endpoint, namespace, aliases });
            }
        }

        let (include, exclude) = match &raw.repositories {
            Some(r) => (r.include.as_slice(), r.exclude.as_slice()),
            None => (&[][..], &[][..]),
        };
        for (list, kind) in [(include, "include"), (exclude, "exclude")] {
            for (i, g) in list.iter().enumerate() {
                let ok = globset::Glob::new(&g.value).map(|_| ()).map_err(|e| format!("bad glob {:?}: {}", g.value, e.kind()));
                self.ok(g, &format!("repositories.{kind}[{i}]"), ok);
            }
        }
        let values = |l: &[At<String>]| l.iter().map(|g| g.value.clone()).collect::<Vec<_>>();
        let repos = RepoFilter::new(&values(include), &values(exclude)).ok();
        // Renames must map back exactly (failover and failback use the inverse).
        // Two names renamed to one are refused from the rules where they can be
        // (the catalog check at run time finds the rest).
        let mut rename_rules = Vec::new();
        let mut rename_at = Vec::new();
        for (i, r) in raw.repositories.iter().flat_map(|r| r.rename.iter()).enumerate() {
            let ok = RenameRule::new(&r.value.from, &r.value.to).map_err(|e| e.to_string()).and_then(|rule| {
                match crate::engine::rename_collisions::merges_names(&rule) {
                    Some(why) => Err(why),
                    None => rule.inverse().map(|_| rule).map_err(|e| e.to_string()),
                }
            });
            if let Some(rule) = self.ok(r, &format!("repositories.rename[{i}]"), ok) {
                rename_rules.push(rule);
                rename_at.push((i, r));
            }
        }
        for (_, j, why) in crate::engine::rename_collisions::same_form(&rename_rules) {
            let (i, at) = rename_at[j];
            self.issue(line(at), &format!("repositories.rename[{i}]"), why);
        }
        let rename_words: Vec<String> = rename_rules.iter().map(|r| format!("rename:{r}")).collect();
        let rename = Rename::new(rename_rules);

        let signatures = raw.signatures.unwrap_or(true);
        let mut tags = TagFilter { signatures, ..TagFilter::default() };
        if let Some(t) = &raw.tags {
            for (list, kind, out) in [(&t.include, "include", &mut tags.include), (&t.exclude, "exclude", &mut tags.exclude)] {
                for (i, r) in list.iter().enumerate() {
                    let ok = tags::anchored(&r.value).map_err(|e| format!("bad regex {:?}: {}", r.value, one_line(&e.to_string())));
                    if let Some(re) = self.ok(r, &format!("tags.{kind}[{i}]"), ok) {
                        out.push(re);
                    }
                }
            }
            if let Some(s) = &t.semver {
                let ok = semver::VersionReq::parse(&s.value).map_err(|e| format!("bad semver range {:?}: {e}", s.value));
                tags.semver = self.ok(s, "tags.semver", ok);
            }
            if let Some(n) = &t.latest {
                let ok = if n.value == 0 { Err("must be at least 1".to_string()) } else { Ok(n.value as usize) };
                tags.latest = self.ok(n, "tags.latest", ok);
            }
            tags.immutable = t.immutable.unwrap_or(false);
            if let Some(r) = &t.rename {
                let ok = crate::engine::tag_rename::TagRename::parse(&r.value).map_err(|e| e.to_string());
                tags.rename = self.ok(r, "tags.rename", ok).map(Arc::new);
            }
        }

        let mut referrers = ReferrerOptions { enabled: raw.referrers.unwrap_or(true), types: Vec::new(), untagged_subjects: false };
        for (i, t) in raw.referrer_types.iter().flatten().enumerate() {
            let ok = crate::engine::referrers::check_artifact_type(&t.value);
            if self.ok(t, &format!("referrer_types[{i}]"), ok).is_some() {
                referrers.types.push(t.value.clone());
            }
        }
        if let (Some(false), Some(list)) = (raw.referrers, raw.referrer_types.as_ref().filter(|l| !l.is_empty())) {
            self.issue(line(&list[0]), "referrer_types", "referrers: false copies no referrers; remove referrer_types or the false");
        }

        let platforms = self.platforms(raw.platforms.as_ref(), raw.platform_filter.as_ref());
        let require = raw.require.as_ref().and_then(|r| self.require(r));

        let trigger = match &raw.trigger {
            Some(t) => match (&t.interval, &t.cron) {
                (Some(i), None) => self.ok(i, "trigger.interval", duration(i)).map(Trigger::Interval),
                (None, Some(c)) => self.ok(c, "trigger.cron", c.value.parse::<Cron>()).map(Trigger::Cron),
                (Some(i), Some(_)) => {
                    self.issue(line(i), "trigger", "give either interval or cron, not both");
                    None
                }
                (None, None) => Some(Trigger::Interval(Duration::from_secs(3600))),
            },
            None => Some(Trigger::Interval(Duration::from_secs(3600))),
        };

        let mut retry = RetryPolicy::default();
        if let Some(r) = &raw.retry {
            if let Some(a) = &r.attempts {
                let ok = if (1..=100).contains(&a.value) { Ok(a.value) } else { Err("must be between 1 and 100".to_string()) };
                retry.attempts = self.ok(a, "retry.attempts", ok).unwrap_or(retry.attempts);
            }
            if let Some(b) = &r.backoff {
                retry.backoff = self.ok(b, "retry.backoff", duration(b)).unwrap_or(retry.backoff);
            }
            if let Some(b) = &r.max_backoff {
                retry.max_backoff = self.ok(b, "retry.max_backoff", duration(b)).unwrap_or(retry.max_backoff);
            }
            if let Some(g) = &r.give_up_after {
                let ok = if g.value >= 1 { Ok(g.value) } else { Err("must be at least 1".to_string()) };
                retry.give_up_after = self.ok(g, "retry.give_up_after", ok).unwrap_or(retry.give_up_after);
            }
        }
        let max_delete = match &raw.max_delete {
            Some(m) => self.ok(m, "max_delete", m.value.parse::<MaxDelete>()).unwrap_or_default(),
            None => MaxDelete::default(),
        };
        let concurrency = match &raw.concurrency {
            Some(c) => {
                let ok = if (1..=256).contains(&c.value) { Ok(c.value as usize) } else { Err("must be between 1 and 256".to_string()) };
                self.ok(c, "concurrency", ok).unwrap_or(8)
            }
            None => 8,
        };

        let mut receivers = Vec::new();
        for (i, r) in raw.notify.iter().flatten().enumerate() {
            if self.offline && r.value.url_file.as_ref().is_some_and(|f| !Path::new(f).exists()) {
                continue; // a secret file of the deployment, absent in CI
            }
            match notify::check(&r.value, self.env) {
                Ok(receiver) => receivers.push(receiver),
                Err((field, message)) => {
                    let field = if field.is_empty() { format!("notify[{i}]") } else { format!("notify[{i}].{field}") };
                    self.issue(line(r), &field, message);
                }
            }
        }

        let mut client = ClientOptions::default();
        if let Some(t) = &raw.stall_timeout
            && let Some(stall) = self.ok(t, "stall_timeout", duration(t).and_then(at_least_a_second))
        {
            client.stall_timeout = stall;
            client.commit_timeout = ClientOptions::default_commit_timeout(stall);
        }
        if let Some(t) = &raw.commit_timeout
            && let Some(commit) = self.ok(t, "commit_timeout", duration(t).and_then(at_least_a_second))
        {
            client.commit_timeout = commit.max(client.stall_timeout);
        }

        let spool_budget = match &raw.spool_budget {
            Some(b) if b.value.trim() == "0" => 0,
            Some(b) => self.ok(b, "spool_budget", crate::registry::endpoint::parse_size(&b.value)).unwrap_or(0),
            None => crate::scheme::shared::spool::DEFAULT_BUDGET,
        };

        if self.issues.len() > before {
            return None;
        }
        let mut scope_words: Vec<String> = values(include).into_iter().map(|g| format!("+{g}")).collect();
        scope_words.extend(values(exclude).into_iter().map(|g| format!("-{g}")));
        scope_words.extend(platforms.as_ref().map(|p| p.scope_word()));
        scope_words.extend(rename_words);
        scope_words.extend(tags.rename.as_ref().map(|t| format!("tag-rename:{t}")));
        Some(Policy {
            name,
            file: self.file.to_path_buf(),
            source: source?,
            source_repositories,
            source_aliases,
            destinations,
            repos: repos?,
            rename: Arc::new(rename),
            tags: Arc::new(tags),
            platforms: platforms.map(Arc::new),
            referrers: Arc::new(referrers),
            require: require.map(Arc::new),
            overwrite: raw.overwrite.unwrap_or(true),
            delete: raw.delete.unwrap_or(false),
            max_delete,
            force_delete: false,
            ignore_unreadable_fence: false,
            progress: Arc::default(),
            trigger: trigger?,
            retry,
            concurrency,
            notify: receivers,
            client,
            spool_budget,
            scope_words,
        })
    }

    /// `require:`: each key file read now (relative to the policy file's
    /// directory), each type checked on its own line. `None` when empty.
    fn require(&mut self, raw: &At<file::RawRequire>) -> Option<Requirement> {
        let mut req = Requirement::default();
        let dir = self.file.parent().map(Path::to_path_buf).unwrap_or_default();
        for (i, k) in raw.value.signed_by.iter().enumerate() {
            let path = dir.join(&k.value);
            let ok = TrustedKey::load(&path).map_err(|e| e.to_string());
            req.signed_by.extend(self.ok(k, &format!("require.signed_by[{i}]"), ok));
        }
        for (i, t) in raw.value.referrer_types.iter().enumerate() {
            let ok = crate::engine::referrers::check_artifact_type(&t.value).map(|()| t.value.clone());
            req.referrer_types.extend(self.ok(t, &format!("require.referrer_types[{i}]"), ok));
        }
        if raw.value.signed_by.is_empty() && raw.value.referrer_types.is_empty() {
            self.issue(line(raw), "require", "is empty: give signed_by: [cosign.pub, …] and/or referrer_types: [type/subtype, …]");
        }
        (!req.is_empty()).then_some(req)
    }

    /// `platforms:` and `platform_filter:`, each value checked on its own line.
    fn platforms(&mut self, list: Option<&At<Vec<At<String>>>>, mode: Option<&At<String>>) -> Option<PlatformFilter> {
        let mode = match mode {
            Some(m) => {
                if list.is_none() {
                    self.issue(line(m), "platform_filter", "has no effect without platforms: [os/arch, …]");
                }
                // On a bad mode the list is still checked (every mistake in one go).
                self.ok(m, "platform_filter", m.value.parse::<FilterMode>()).unwrap_or_default()
            }
            None => FilterMode::default(),
        };
        let list = list?;
        if list.value.is_empty() {
            self.issue(line(list), "platforms", "is empty: list the platforms to copy (e.g. [linux/amd64, linux/arm64]) or leave it out to copy all");
            return None;
        }
        let mut good = Vec::new();
        for (i, p) in list.value.iter().enumerate() {
            let ok = p.value.parse::<crate::engine::platforms::Platform>().map(|_| p.value.clone());
            good.extend(self.ok(p, &format!("platforms[{i}]"), ok));
        }
        (good.len() == list.value.len()).then(|| PlatformFilter::parse(&good, mode).ok()).flatten()
    }

    /// A registry entry's `aliases:`: `host[:port]` each.
    fn aliases(&mut self, list: &[At<String>], field: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let v = a.value.trim().to_ascii_lowercase();
            let ok = if !v.is_empty() && !v.contains(['/', '@', ' ']) && url::Url::parse(&format!("https://{v}")).is_ok() {
                Ok(v)
            } else {
                Err(format!("{:?} is not a host[:port] (e.g. 10.0.0.5:5000 or harbor.example.com)", a.value))
            };
            out.extend(self.ok(a, &format!("{field}.aliases[{i}]"), ok));
        }
        out
    }

    /// `endpoint` with the registry entry's `chunk_size`, if it gives one.
    fn chunk_size(&mut self, mut endpoint: Endpoint, size: Option<&At<String>>, field: &str) -> Option<Endpoint> {
        if let Some(size) = size {
            let ok = parse_size(&size.value).and_then(check_chunk_size);
            endpoint.chunk_size = Some(self.ok(size, &format!("{field}.chunk_size"), ok)?);
        }
        Some(endpoint)
    }

    fn endpoint(
        &mut self,
        registry: &At<String>,
        credentials: Option<&At<RawCredentials>>,
        fields: TlsFields<'_>,
        insecure: Option<bool>,
        field: &str,
    ) -> Option<Endpoint> {
        let url = self.ok(registry, &format!("{field}.registry"), RegistryUrl::parse(&registry.value).map_err(|e| e.to_string()))?;
        let credentials = match credentials {
            Some(c) => self.credentials(c, &url, &format!("{field}.credentials"))?,
            None => CredentialSource::Fixed(Credentials::Anonymous),
        };
        let (client_cert, client_key) = match (fields.client_cert, fields.client_key) {
            (Some(c), Some(k)) => {
                let (cert, key) = (PathBuf::from(&c.value), PathBuf::from(&k.value));
                if !self.offline {
                    self.ok(c, &format!("{field}.client_cert"), Tls::check_client_identity(&cert, &key))?;
                }
                (Some(cert), Some(key))
            }
            (None, None) => (None, None),
            (Some(at), None) | (None, Some(at)) => {
                self.issue(line(at), field, "client_cert and client_key go together");
                return None;
            }
        };
        let proxy = match fields.proxy {
            Some(p) => self.ok(p, &format!("{field}.proxy"), Proxy::parse(&p.value))?,
            None => Proxy::Environment,
        };
        let ca = match fields.ca_file {
            Some(ca) => {
                let path = PathBuf::from(&ca.value);
                let ok = if self.offline { Ok(path) } else { Tls::check_ca_file(&path).map(|()| path) };
                Some(self.ok(ca, &format!("{field}.ca_file"), ok)?)
            }
            None => None,
        };
        let tls = Tls { insecure_skip_verify: insecure.unwrap_or(false), ca_file: ca, client_cert, client_key };
        Some(Endpoint { url, credentials, tls, proxy, limits: Limits::default(), chunk_size: None })
    }

    /// A registry entry's optional `requests_per_second` / `bytes_per_second`.
    fn limits(&mut self, rps: Option<&At<f64>>, bps: Option<&At<String>>, field: &str) -> Limits {
        let requests_per_second = rps.and_then(|r| {
            let ok = if r.value > 0.0 && r.value.is_finite() { Ok(r.value) } else { Err("must be a number above zero".to_string()) };
            self.ok(r, &format!("{field}.requests_per_second"), ok)
        });
        let bytes_per_second =
            bps.and_then(|b| self.ok(b, &format!("{field}.bytes_per_second"), crate::registry::gate::parse_size(&b.value)));
        Limits { requests_per_second, bytes_per_second }
    }

    fn credentials(&mut self, c: &At<RawCredentials>, _url: &RegistryUrl, field: &str) -> Option<CredentialSource> {
        let raw = &c.value;
        let at = line(c);
        if raw.docker_config == Some(true) || raw.auth_file.is_some() {
            if raw.username.is_some() || raw.username_env.is_some() || raw.password_env.is_some() || raw.password_file.is_some() {
                self.issue(at, field, "docker_config / auth_file cannot be combined with a username or password");
                return None;
            }
            // Read (and helpers run) when a client needs them, each pass;
            // here only check that the files parse.
            let files: Vec<PathBuf> = raw.auth_file.iter().map(PathBuf::from).collect();
            if self.offline {
                return Some(CredentialSource::ConfigFiles { files });
            }
            return docker_config::check(&files).map(|()| CredentialSource::ConfigFiles { files }).map_err(|e| self.issue(at, field, e.to_string())).ok();
        }
        let username = match (&raw.username, &raw.username_env) {
            (Some(u), None) => Some(u.clone()),
            (None, Some(var)) => match (self.env)(var) {
                Some(v) if !v.is_empty() => Some(v),
                _ => {
                    self.issue(at, &format!("{field}.username_env"), format!("environment variable {var} is not set"));
                    return None;
                }
            },
            (Some(_), Some(_)) => {
                self.issue(at, field, "give username or username_env, not both");
                return None;
            }
            (None, None) => None,
        };
        let password = match (&raw.password_env, &raw.password_file) {
            (Some(var), None) => match (self.env)(var) {
                Some(v) => Some(v),
                None => {
                    self.issue(at, &format!("{field}.password_env"), format!("environment variable {var} is not set"));
                    return None;
                }
            },
            (None, Some(_)) if self.offline => Some(OFFLINE_PLACEHOLDER.to_string()),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(v) => Some(v.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) => {
                    self.issue(at, &format!("{field}.password_file"), format!("cannot read {path}: {e}"));
                    return None;
                }
            },
            (Some(_), Some(_)) => {
                self.issue(at, field, "give password_env or password_file, not both");
                return None;
            }
            (None, None) => None,
        };
        match (username, password) {
            (Some(username), Some(password)) => Some(CredentialSource::Fixed(Credentials::Basic { username, password: Secret::new(password) })),
            (None, None) => {
                self.issue(at, field, "say where the credentials come from: username/username_env with password_env/password_file, or docker_config: true");
                None
            }
            _ => {
                self.issue(at, field, "a username needs a password (password_env or password_file) and the other way round");
                None
            }
        }
    }
}

fn at_least_a_second(d: Duration) -> Result<Duration, String> {
    if d < Duration::from_secs(1) { Err("must be at least 1s".into()) } else { Ok(d) }
}

/// A chunk size regferry is willing to use: at least 256 KiB (the smallest
/// chunk it sends), at most 1 GiB (one chunk is held in memory).
pub fn check_chunk_size(size: u64) -> Result<u64, String> {
    use crate::registry::client::MIN_CHUNK_SIZE;
    if !(MIN_CHUNK_SIZE..=1 << 30).contains(&size) {
        return Err("a chunk size must be between 256KiB and 1GiB".into());
    }
    Ok(size)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
