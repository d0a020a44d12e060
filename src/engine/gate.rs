//! The signature gate (policy `require:`): a tag is copied only when its
//! manifest at the source is signed by one of the trusted keys
//! (`signed_by`, cosign key-pair signatures: the `sha256-<hex>.sig` tag or a
//! referrer of type [`SIGNATURE_ARTIFACT`]) and has a referrer of each
//! required `artifactType` (`referrer_types`, e.g. an SBOM). A tag that
//! does not is held back ([`SkipReason::Unsigned`], with its reason in
//! [`Plan::refused`]) and judged again on every pass until it does.
//!
//! Only tags about to be copied are judged, so a pass with nothing to
//! copy costs nothing here; each judged tag costs the `.sig` `GET`, one
//! referrers listing (API, else the fallback tag) and one small blob `GET`
//! per signature layer. Tags that exist for another manifest (signatures,
//! fallback tags) are never judged: they travel with their subject.
//!
//! This module reads the source and changes plan items; it never writes
//! anywhere, and a signature it cannot read (a network error) is a problem
//! of the tag (retried), never a pass.

use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;

use super::cosign::{MAX_PAYLOAD, SIGNATURE_ANNOTATION, SIGNATURE_ARTIFACT, TrustedKey, Verdict, judge};
use super::plan::{Action, CopyReason, Plan, Problem, SkipReason};
use crate::registry::referrers::{self as verbs, ApiAnswer, ReferrerEntry, fallback_tag, subject_of_tag};
use crate::registry::{Digest, Reference, RegistryError, RepoName, Scopes, Tag};
use crate::scheme::Scheme;

/// What a tag must have to be copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// A cosign signature by one of these keys (none: no signature needed).
    pub signed_by: Vec<TrustedKey>,
    /// A referrer of each of these `artifactType`s.
    pub referrer_types: Vec<String>,
}

impl Requirement {
    pub fn is_empty(&self) -> bool {
        self.signed_by.is_empty() && self.referrer_types.is_empty()
    }

    /// The words this requirement adds to a job's resume key.
    pub fn scope_word(&self) -> String {
        let keys: Vec<String> = self.signed_by.iter().map(|k| k.file.display().to_string()).collect();
        format!("require=signed_by:{};types:{}", keys.join("+"), self.referrer_types.join("+"))
    }
}

/// Judge the manifest `repo@digest` at `src`: `Ok(None)` when it meets
/// `req`, `Ok(Some(reason))` when it does not, `Err` when that cannot be
/// told (the source could not be read).
pub async fn judge_manifest(src: &Arc<dyn Scheme>, repo: &RepoName, digest: &Digest, req: &Requirement) -> Result<Option<String>, RegistryError> {
    let referrers = if req.referrer_types.is_empty() && req.signed_by.is_empty() { Vec::new() } else { list_referrers(&**src, repo, digest).await? };
    let mut reasons = Vec::new();
    if !req.signed_by.is_empty()
        && let Some(why) = signature_verdict(src, repo, digest, &referrers, &req.signed_by).await?
    {
        reasons.push(why);
    }
    for t in &req.referrer_types {
        if !referrers.iter().any(|e| e.artifact_type.as_deref() == Some(t.as_str())) {
            reasons.push(format!("no referrer of type {t}"));
        }
    }
    Ok((!reasons.is_empty()).then(|| reasons.join("; ")))
}

/// The referrers of `repo@digest`: the API's list, else the fallback tag's.
async fn list_referrers(src: &dyn Scheme, repo: &RepoName, digest: &Digest) -> Result<Vec<ReferrerEntry>, RegistryError> {
    if let ApiAnswer::Listed { entries, .. } = src.referrers(repo, digest, None).await? {
        return Ok(entries);
    }
    match src.get_manifest(repo, &Reference::Tag(fallback_tag(digest)), &Scopes::pull(repo)).await {
        Ok(body) => verbs::parse_index(&body.bytes)
            .map_err(|e| RegistryError::Protocol { registry: src.name().to_string(), message: format!("{repo}:{}: {e}", fallback_tag(digest)) }),
        Err(e) if not_found(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn not_found(e: &RegistryError) -> bool {
    e.status() == Some(404) || e.has_code("MANIFEST_UNKNOWN") || e.has_code("NAME_UNKNOWN")
}

/// `None` when one signature layer (of the `.sig` tag or of a signature
/// referrer) is by a trusted key and names `digest`; else why not.
async fn signature_verdict(
    src: &Arc<dyn Scheme>,
    repo: &RepoName,
    digest: &Digest,
    referrers: &[ReferrerEntry],
    keys: &[TrustedKey],
) -> Result<Option<String>, RegistryError> {
    let mut manifests: Vec<(String, bytes::Bytes)> = Vec::new();
    let sig_tag: Tag = match format!("{}.sig", fallback_tag(digest)).parse() {
        Ok(t) => t,
        Err(_) => return Ok(Some("no signature tag can be named for this digest".into())),
    };
    match src.get_manifest(repo, &Reference::Tag(sig_tag.clone()), &Scopes::pull(repo)).await {
        Ok(body) => manifests.push((format!("{repo}:{sig_tag}"), body.bytes)),
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(e),
    }
    for e in referrers.iter().filter(|e| e.artifact_type.as_deref() == Some(SIGNATURE_ARTIFACT)) {
        match src.get_manifest(repo, &Reference::Digest(e.digest.clone()), &Scopes::pull(repo)).await {
            Ok(body) => manifests.push((format!("{repo}@{}", e.digest), body.bytes)),
            Err(err) if not_found(&err) => {}
            Err(err) => return Err(err),
        }
    }
    if manifests.is_empty() {
        return Ok(Some(format!("not signed (no {sig_tag} tag and no referrer of type {SIGNATURE_ARTIFACT})")));
    }
    let mut verdicts: Vec<(String, Verdict)> = Vec::new();
    for (name, bytes) in manifests {
        let layers = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => v["layers"].as_array().cloned().unwrap_or_default(),
            Err(e) => {
                verdicts.push((name, Verdict::Malformed(format!("not JSON: {e}"))));
                continue;
            }
        };
        let signed: Vec<&Value> = layers.iter().filter(|l| l["annotations"][SIGNATURE_ANNOTATION].is_string()).collect();
        if signed.is_empty() {
            verdicts.push((name, Verdict::Malformed(format!("no layer carries {SIGNATURE_ANNOTATION}"))));
            continue;
        }
        for layer in signed {
            let verdict = match read_payload(src, repo, layer).await? {
                Ok(payload) => judge(&payload, layer["annotations"][SIGNATURE_ANNOTATION].as_str().unwrap_or(""), digest, keys),
                Err(why) => Verdict::Malformed(why),
            };
            if matches!(verdict, Verdict::Signed { .. }) {
                return Ok(None);
            }
            verdicts.push((name.clone(), verdict));
        }
    }
    let mut reasons: Vec<String> = verdicts.iter().map(|(name, v)| format!("{name}: {}", v.reason())).collect();
    reasons.dedup();
    Ok(Some(format!("no valid signature by a key of signed_by: {}", reasons.join("; "))))
}

/// The payload blob of a signature layer, checked against its digest;
/// `Ok(Err(why))` when the layer is unusable.
async fn read_payload(src: &Arc<dyn Scheme>, repo: &RepoName, layer: &Value) -> Result<Result<Vec<u8>, String>, RegistryError> {
    let Some(digest) = layer["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else {
        return Ok(Err("a signature layer without a valid digest".into()));
    };
    let size = layer["size"].as_u64();
    if size.is_none_or(|s| s > MAX_PAYLOAD) {
        return Ok(Err(format!("payload {digest} is larger than {MAX_PAYLOAD} bytes or has no size")));
    }
    let (mut stream, _) = match src.clone().open_blob(repo, &digest, size).await {
        Ok(s) => s,
        Err(e) if not_found(&e) || e.has_code("BLOB_UNKNOWN") => return Ok(Err(format!("payload {digest} is not at the source"))),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|message| RegistryError::Protocol { registry: src.name().to_string(), message })?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > MAX_PAYLOAD {
            return Ok(Err(format!("payload {digest} is larger than {MAX_PAYLOAD} bytes")));
        }
    }
    if Digest::sha256_of(&bytes) != digest {
        return Ok(Err(format!("payload bytes do not match {digest}")));
    }
    Ok(Ok(bytes))
}

/// Hold back the tags of `plan` about to be copied that do not meet `req`
/// (see the module doc). A tag whose signature cannot be read becomes a
/// problem of the plan (failed, retried on a later pass).
pub async fn hold_back_unsigned(src: &Arc<dyn Scheme>, plan: &mut Plan, req: &Requirement, concurrency: usize) {
    if req.is_empty() {
        return;
    }
    let wanted: Vec<(usize, RepoName, Digest)> = plan
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.action, Action::Copy(r) if r != CopyReason::ReferrersChanged))
        .filter(|(_, i)| subject_of_tag(&i.tag).is_none())
        .map(|(n, i)| (n, i.source_repo.clone(), i.source.digest.clone()))
        .collect();
    let judged: Vec<(usize, Result<Option<String>, RegistryError>)> = futures::stream::iter(wanted)
        .map(|(n, repo, digest)| async move { (n, judge_manifest(src, &repo, &digest, req).await) })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut held = std::collections::HashSet::new();
    for (n, verdict) in judged {
        let item = &mut plan.items[n];
        match verdict {
            Ok(None) => {}
            Ok(Some(reason)) => {
                held.insert((item.source_repo.clone(), item.source.digest.clone()));
                tracing::info!(repository = %item.source_repo, tag = %item.tag, digest = %item.source.digest, reason = %reason, "held back: it does not meet the policy's require");
                item.action = Action::Skip(SkipReason::Unsigned);
                plan.refused.insert((item.source_repo.clone(), item.tag.clone()), reason);
            }
            Err(e) => failed.push((n, format!("cannot check the signature of {}:{}: {e}", item.source_repo, item.tag))),
        }
    }
    failed.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    for (n, error) in failed {
        let item = plan.items.remove(n);
        plan.problems.push(Problem { source_repo: item.source_repo.to_string(), dest_repo: Some(item.dest_repo.to_string()), tag: Some(item.tag.to_string()), error });
    }
    // The signatures and referrers of a held-back manifest stay behind with
    // it (not planned, so a pass that only holds back copies nothing).
    plan.items.retain(|i| {
        !(matches!(i.action, Action::Copy(_)) && subject_of_tag(&i.tag).is_some_and(|s| held.contains(&(i.source_repo.clone(), s))))
    });
}
