//! `regferry copy SOURCE[:TAG|@DIGEST] DEST[:TAG]`: one image (all its
//! platforms, or those named), with its signatures and referrers, as
//! `migrate` copies it — same engine, same state, same summary, `--json` and
//! exit codes. A digest, or a DEST tag other than the source's, pins the one
//! planned tag to that source reference (see [`regferry::engine::plan::Pin`]).
//!
//! Only parses image references and builds a one-repository, one-tag job;
//! it never copies by itself (see [`super::migrate::run_job`]).

use std::sync::Arc;

use clap::Args;

use regferry::engine::discover::{RepoFilter, Scope};
use regferry::engine::execute::ExecuteOptions;
use regferry::engine::plan::{Pin, RepoMapping};
use regferry::engine::platforms::{FilterMode, PlatformFilter};
use regferry::engine::referrers::ReferrerOptions;
use regferry::engine::rename::{Rename, RenameRule};
use regferry::job::JobSpec;
use regferry::policy::TagFilter;
use regferry::registry::{Digest, Reference, RepoName, Tag};

use super::migrate::{Output, run_job};
use super::{AccessArgs, CliError, StateArgs, TimeoutArgs};

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The image: [http://|https://]HOST[:PORT]/REPOSITORY[:TAG|@DIGEST] (tag `latest` when
    /// none; a name without a registry host is Docker Hub's, `nginx` = docker.io/library/nginx).
    #[arg(value_name = "SOURCE")]
    pub source: String,

    /// Where it goes: [http://|https://]HOST[:PORT]/REPOSITORY[:TAG]. Without a tag it keeps
    /// the source's; a tag is required when SOURCE names a digest.
    #[arg(value_name = "DEST")]
    pub destination: String,

    #[command(flatten)]
    pub access: AccessArgs,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    /// Copy only these platforms of a multi-platform image (os/arch[/variant]). Repeatable.
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,

    /// With --platform: rewrite (a new index of those platforms) or sparse (the original index).
    #[arg(long, value_name = "MODE", requires = "platforms", value_parser = parse_filter_mode, default_value = "rewrite")]
    pub platform_filter: FilterMode,

    /// Do not copy OCI referrers (signatures, SBOMs, attestations) nor their fallback tags.
    #[arg(long)]
    pub no_referrers: bool,

    /// Print what would be copied and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the plan (with --dry-run) or the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Attempts, with exponential backoff between them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100), value_name = "N")]
    pub attempts: u32,
}

fn parse_filter_mode(s: &str) -> Result<FilterMode, String> {
    s.parse()
}

/// An image reference taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `scheme://host[:port]`, or the bare host (https).
    pub registry: String,
    pub repository: RepoName,
    pub tag: Option<Tag>,
    /// `@sha256:…`: the manifest by digest (a tag given too is ignored, as docker does).
    pub digest: Option<Digest>,
}

/// Parse `[scheme://]HOST[:PORT]/REPO[:TAG|@DIGEST]`; a first component
/// without a `.` or `:` (and not `localhost`) is a Docker Hub name.
pub fn parse_image(input: &str, what: &str) -> Result<ImageRef, String> {
    let bad = |why: &str| format!("{what} {input:?}: {why} (expected [https://]HOST[:PORT]/REPOSITORY[:TAG|@DIGEST])");
    let (scheme, rest) = match input.split_once("://") {
        Some((s, rest)) => (Some(s), rest),
        None => (None, input),
    };
    let (rest, digest) = match rest.split_once('@') {
        Some((rest, d)) => (rest, Some(d.parse::<Digest>().map_err(|e| bad(&format!("digest: {e}")))?)),
        None => (rest, None),
    };
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) if scheme.is_some() || h.contains(['.', ':']) || h == "localhost" => (h.to_string(), p.to_string()),
        _ if scheme.is_some() => return Err(bad("no repository")),
        _ => {
            let path = if rest.contains('/') { rest.to_string() } else { format!("library/{rest}") };
            ("docker.io".to_string(), path)
        }
    };
    // The tag is after the last ':' of the last path component.
    let last = path.rsplit('/').next().unwrap_or("");
    let (repo, tag) = match last.rfind(':') {
        Some(i) => {
            let cut = path.len() - last.len() + i;
            (&path[..cut], Some(&path[cut + 1..]))
        }
        None => (path.as_str(), None),
    };
    let repository: RepoName = repo.parse().map_err(|e: regferry::registry::name::NameError| bad(&e.to_string()))?;
    let tag = match tag {
        Some(t) => Some(t.parse::<Tag>().map_err(|e| bad(&e.to_string()))?),
        None => None,
    };
    let registry = match scheme {
        Some(s) => format!("{s}://{host}"),
        None => host,
    };
    Ok(ImageRef { registry, repository, tag, digest })
}

pub async fn run(args: CopyArgs, quiet: bool) -> Result<u8, CliError> {
    let src = parse_image(&args.source, "SOURCE").map_err(CliError::usage)?;
    let dst = parse_image(&args.destination, "DEST").map_err(CliError::usage)?;
    if dst.digest.is_some() {
        return Err(CliError::usage(format!("DEST {:?}: name a tag, not a digest (the digest is the source's)", args.destination)));
    }
    let src_tag = match &src.tag {
        Some(t) => t.clone(),
        None => "latest".parse::<Tag>().map_err(|e| CliError::usage(e.to_string()))?,
    };
    // What the source is read under, when it is not the destination tag.
    let (tag, pin) = match (&src.digest, &dst.tag) {
        (Some(_), None) => {
            return Err(CliError::usage(format!("SOURCE names a digest: DEST must name the tag it gets ({}:TAG)", args.destination)));
        }
        (Some(d), Some(t)) => (t.clone(), Some(Pin { tag: t.clone(), from: Reference::Digest(d.clone()) })),
        (None, Some(t)) if t != &src_tag => (t.clone(), Some(Pin { tag: t.clone(), from: Reference::Tag(src_tag.clone()) })),
        (None, _) => (src_tag.clone(), None),
    };
    if pin.is_some() && [&tag, &src_tag].iter().any(|t| regferry::registry::referrers::subject_of_tag(t).is_some()) {
        return Err(CliError::usage(format!(
            "{tag}: a signature or referrers tag exists for another manifest and travels with it; it cannot be copied under another name"
        )));
    }
    let shown_source = match &pin {
        Some(Pin { from: Reference::Digest(d), .. }) => format!("{}@{d}", src.repository),
        _ => format!("{}:{src_tag}", src.repository),
    };
    let (source, destination) = args.access.endpoints(&src.registry, &dst.registry)?;
    let platforms = match args.platforms.is_empty() {
        true => None,
        false => Some(Arc::new(
            PlatformFilter::parse(&args.platforms, args.platform_filter).map_err(|e| CliError::usage(format!("--platform: {e}")))?,
        )),
    };
    let rename = Rename::new(vec![RenameRule::exact(src.repository.as_str(), dst.repository.as_str())]);
    let mapping = RepoMapping::new("", "").with_rename(rename, false);
    let repos = RepoFilter::new(&[src.repository.to_string()], &[]).map_err(|e| CliError::usage(e.to_string()))?;
    let exact = regferry::policy::tags::anchored(&regex::escape(tag.as_str())).map_err(|e| CliError::usage(e.to_string()))?;
    let tags = TagFilter { include: vec![exact], signatures: true, ..TagFilter::default() };
    let mut scope_words = vec![format!("copy:{shown_source}"), format!("to:{}", dst.repository)];
    if pin.is_some() {
        scope_words.push(format!("as:{tag}"));
    }
    scope_words.extend(platforms.as_ref().map(|p| p.scope_word()));
    let spec = JobSpec {
        kind: "copy".into(),
        policy: None,
        scope: Scope {
            explicit: vec![src.repository.to_string()],
            referrers: Arc::new(ReferrerOptions { enabled: !args.no_referrers, types: Vec::new(), untagged_subjects: false }),
            platforms,
            pin,
            ..Scope::new(mapping, repos, Arc::new(tags))
        },
        scope_words,
        source,
        destination,
        overwrite: true,
        reversed: false,
        execute: ExecuteOptions { concurrency: 4, attempts: args.attempts, ..ExecuteOptions::default() },
        client: args.timeouts.client_options(),
    };
    let title = format!("copy {}/{shown_source} → {}/{}:{tag}", spec.source.url, spec.destination.url, dst.repository);
    let out = Output { dry_run: args.dry_run, json: args.json, quiet, title };
    let (repo, wanted) = (src.repository.clone(), tag.clone());
    run_job(spec, &args.state, out, move |plan| {
        let found = plan.items.iter().any(|i| i.source_repo == repo && i.tag == wanted);
        if found || !plan.problems.is_empty() {
            Ok(())
        } else {
            Err(CliError::failed(format!("{shown_source} not found at the source")))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let r = parse_image("http://127.0.0.1:5000/team/app:v1", "SOURCE").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_ref().map(Tag::as_str)), ("http://127.0.0.1:5000", "team/app", Some("v1")));
        let r = parse_image("localhost:5000/app", "SOURCE").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag), ("localhost:5000", "app", None));
        let r = parse_image("nginx:1.25", "SOURCE").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("docker.io", "library/nginx"));
        let r = parse_image("bitnami/redis", "SOURCE").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("docker.io", "bitnami/redis"));
        assert!(parse_image("ghcr.io/a/b@sha256:00", "SOURCE").unwrap_err().contains("digest"));
        let hex = "a".repeat(64);
        let r = parse_image(&format!("localhost:5000/team/app@sha256:{hex}"), "SOURCE").unwrap();
        assert_eq!((r.repository.as_str(), r.tag, r.digest.as_ref().map(Digest::as_str)), ("team/app", None, Some(format!("sha256:{hex}").as_str())));
        let r = parse_image(&format!("http://127.0.0.1:5000/app:v1@sha256:{hex}"), "SOURCE").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_ref().map(Tag::as_str)), ("http://127.0.0.1:5000", "app", Some("v1")));
        assert!(r.digest.is_some());
        assert!(parse_image("http://host", "DEST").is_err());
        assert!(parse_image("ghcr.io/A/b", "DEST").is_err());
    }
}
