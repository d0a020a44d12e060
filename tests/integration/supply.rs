//! Supply-chain content (issue 22) against real distribution registries:
//! referrers and signatures survive a platform filter (referrers indexes
//! and fallback tags are not image indexes), `verify` names each missing
//! referrer, and the signature gate (`require: signed_by / referrer_types`)
//! holds back what is not signed and copies it once it is.

use serde_json::Value;
use testkit::image::{self, Flavor, Manifest};
use testkit::referrers::{self as refs, artifact, fallback_tag};
use testkit::{Access, Registry, TestRegistry};

use crate::policies::write;
use crate::support::{Scratch, policy_verb, regferry, registries};

const SPDX: &str = "application/spdx+json";
const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const REPO: &str = "team/app";

fn child(seed: &str) -> Manifest {
    image::image(Flavor::Oci, seed, vec![image::layer(Flavor::Oci, seed, 200)])
}

/// The digest of the child of `index` for `platform` (`linux/amd64`).
fn child_of(index: &Manifest, platform: &str) -> String {
    let v: Value = serde_json::from_slice(&index.bytes).expect("index json");
    let found = v["manifests"].as_array().expect("manifests").iter().find(|d| {
        format!("{}/{}", d["platform"]["os"].as_str().unwrap_or(""), d["platform"]["architecture"].as_str().unwrap_or("")) == platform
    });
    found.and_then(|d| d["digest"].as_str()).expect("platform in index").to_string()
}

/// Put `key`'s public half where the policies' `signed_by: [cosign.pub]` finds it.
fn trust(scratch: &Scratch, key: &testkit::cosign::CosignKey) {
    let dir = scratch.path("policies");
    std::fs::create_dir_all(&dir).expect("policy dir");
    std::fs::write(dir.join("cosign.pub"), key.public_pem()).expect("key file");
}

/// Three `run` passes of `policies`, each without a failed tag: what they logged.
async fn three_passes(scratch: &Scratch, policies: &str, state: &str) -> String {
    let mut said = String::new();
    for n in 1..=3 {
        let run = regferry(scratch, &["run", "--policies", policies, "--state", state, "--json"], &[]).await;
        assert_eq!(run.code, 0, "pass {n}\n{}\n{}", run.stdout, run.stderr);
        assert_eq!(run.json()[0]["destinations"][0]["report"]["counts"]["tags_failed"], 0, "pass {n}: {}", run.stdout);
        said.push_str(&run.stderr);
    }
    said
}

/// Item 1: with `platforms:` set, the referrers of every kept manifest
/// (fallback-tag SBOMs, a signature of an SBOM, cosign `.sig` tags of a
/// single image and of a kept child) travel; `verify` is clean; a second
/// pass writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_platform_filter_keeps_every_referrer_of_what_it_copies() {
    let (src, dst, s, d) = registries();
    let single = child("supply-single");
    s.push(REPO, "single", &single).await;
    let sbom = artifact(&single, SPDX, r#"{"spdxVersion":"SPDX-2.3","name":"single"}"#);
    s.attach(REPO, &single.digest, &sbom, SPDX).await;
    let sbom_sig = artifact(&sbom, SIG, "signature of the sbom");
    s.attach(REPO, &sbom.digest, &sbom_sig, SIG).await;
    s.push(REPO, &image::signature_tag(&single.digest), &image::signature(&single)).await;
    let multi = image::platform_index(
        Flavor::Oci,
        vec![(child("supply-amd64"), "linux/amd64"), (child("supply-arm64"), "linux/arm64"), (child("supply-s390x"), "linux/s390x")],
    );
    s.push(REPO, "multi", &multi).await;
    let amd64 = multi.children.iter().find(|c| c.digest == child_of(&multi, "linux/amd64")).expect("amd64 child").clone();
    let arm64 = multi.children.iter().find(|c| c.digest == child_of(&multi, "linux/arm64")).expect("arm64 child").clone();
    let amd64_sbom = artifact(&amd64, SPDX, r#"{"spdxVersion":"SPDX-2.3","name":"amd64"}"#);
    s.attach(REPO, &amd64.digest, &amd64_sbom, SPDX).await;
    s.push(REPO, &image::signature_tag(&amd64.digest), &image::signature(&amd64)).await;
    // The dropped platform's referrers stay behind with it.
    let arm64_sbom = artifact(&arm64, SPDX, r#"{"spdxVersion":"SPDX-2.3","name":"arm64"}"#);
    s.attach(REPO, &arm64.digest, &arm64_sbom, SPDX).await;

    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: arches\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: dr\n\
             platforms: [linux/amd64]\nretry: {{ attempts: 1 }}\n",
            src.url, dst.url
        ),
    );
    let state = scratch.state();
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    run.assert_ok();
    let out = run.json();
    assert_eq!(out[0]["destinations"][0]["report"]["status"], "succeeded", "{out}");
    assert!(!run.stderr.contains("it has )"), "a referrers index was filtered as an image index: {}", run.stderr);

    let dr = "dr/team/app";
    let listed = |l: Vec<Value>| refs::digests(&l);
    assert_eq!(listed(d.referrers(dr, &single.digest).await), vec![sbom.digest.clone()], "the SBOM of the single image");
    assert_eq!(listed(d.referrers(dr, &sbom.digest).await), vec![sbom_sig.digest.clone()], "the signature of the SBOM");
    assert_eq!(listed(d.referrers(dr, &amd64.digest).await), vec![amd64_sbom.digest.clone()], "the SBOM of the kept child");
    for m in [&sbom, &sbom_sig, &amd64_sbom] {
        assert!(d.head(dr, &m.digest).await.is_some(), "{} at the destination", m.digest);
    }
    assert_eq!(d.head(dr, &image::signature_tag(&single.digest)).await, s.head(REPO, &image::signature_tag(&single.digest)).await);
    assert_eq!(d.head(dr, &image::signature_tag(&amd64.digest)).await, s.head(REPO, &image::signature_tag(&amd64.digest)).await);
    assert_eq!(d.head(dr, &arm64.digest).await, None, "arm64 is not selected");
    assert_eq!(d.head(dr, &fallback_tag(&arm64.digest)).await, None, "nor its SBOM");
    assert_eq!(d.head(dr, &arm64_sbom.digest).await, None, "nor its SBOM");

    let verify = regferry(&scratch, &["verify", "--policies", &policies, "--state", &state], &[]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);

    let before = dst.lines_by("regferry/").len();
    let again = regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    again.assert_ok();
    let counts = &again.json()[0]["destinations"][0]["report"]["counts"];
    assert_eq!(counts["tags_copied"], 0, "{counts}");
    let writes: Vec<String> = dst.lines_by("regferry/").into_iter().skip(before).filter(|l| l.contains("\"PUT ") || l.contains("\"POST ")).collect();
    assert!(writes.is_empty(), "a no-op pass wrote: {writes:?}");

    // Item 2: one attestation dropped from the destination's referrers index
    // is named by verify: its digest, artifactType and the subject's tag.
    let (bytes, _) = d.get_manifest(dr, &fallback_tag(&single.digest)).await.expect("fallback index at the destination");
    let mut index: Value = serde_json::from_slice(&bytes).expect("json");
    index["manifests"] = Value::Array(Vec::new());
    let emptied = serde_json::to_vec(&index).expect("json");
    let resp = d.put_manifest(dr, &fallback_tag(&single.digest), image::OCI_INDEX, &emptied).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let verify = regferry(&scratch, &["verify", "--policies", &policies, "--state", &state], &[]).await;
    assert_ne!(verify.code, 0, "{}", verify.stdout);
    let line = verify.stdout.lines().find(|l| l.contains(&fallback_tag(&single.digest))).unwrap_or_else(|| panic!("{}", verify.stdout));
    assert!(line.contains("referrers missing") && line.contains(&sbom.digest) && line.contains(SPDX) && line.contains("team/app:single"), "{line}");
}

/// Item 6: `require: { signed_by: [cosign.pub] }`. Signed tags (a `.sig`
/// tag, or a signature referrer) are copied with their signatures; a tag
/// without a signature, signed with another key, with a tampered payload,
/// or with a signature of another digest is held back as `unsigned`, each
/// with its reason, and copied on a later pass once it is signed. `verify`
/// reports a destination tag whose signature there does not hold.
#[tokio::test(flavor = "multi_thread")]
async fn the_signature_gate_copies_only_what_a_trusted_key_signed() {
    use testkit::cosign::{self, CosignKey};
    let (src, dst, s, d) = registries();
    let trusted = CosignKey::generate();
    let stranger = CosignKey::generate();
    let img = |name: &str| child(&format!("gate-{name}"));
    let reference = |tag: &str| format!("{}/{REPO}:{tag}", src.host());

    let good = img("good");
    s.push(REPO, "good", &good).await;
    s.push(REPO, &image::signature_tag(&good.digest), &cosign::sign_image(&trusted, &reference("good"), &good)).await;
    let by_referrer = img("referrer");
    s.push(REPO, "referrer", &by_referrer).await;
    let body = cosign::payload(&reference("referrer"), &by_referrer.digest);
    let as_referrer = cosign::signature_manifest(body.clone(), &trusted.sign(&body), Some(&by_referrer));
    s.attach(REPO, &by_referrer.digest, &as_referrer, cosign::SIGNATURE_ARTIFACT).await;
    let unsigned = img("unsigned");
    s.push(REPO, "unsigned", &unsigned).await;
    let other_key = img("other-key");
    s.push(REPO, "other-key", &other_key).await;
    s.push(REPO, &image::signature_tag(&other_key.digest), &cosign::sign_image(&stranger, &reference("other-key"), &other_key)).await;
    let tampered = img("tampered");
    s.push(REPO, "tampered", &tampered).await;
    let signed_body = cosign::payload(&reference("tampered"), &tampered.digest);
    let mut altered = signed_body.clone();
    altered.splice(0..0, b" ".iter().copied()); // one byte more: the same claims, other bytes
    s.push(REPO, &image::signature_tag(&tampered.digest), &cosign::signature_manifest(altered, &trusted.sign(&signed_body), None)).await;
    let replayed = img("replayed");
    s.push(REPO, "replayed", &replayed).await;
    // A valid signature by the trusted key, of `good`, put where `replayed`'s belongs.
    s.push(REPO, &image::signature_tag(&replayed.digest), &cosign::sign_image(&trusted, &reference("good"), &good)).await;

    let scratch = Scratch::new();
    trust(&scratch, &trusted);
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: signed\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: dr\n\
             require: {{ signed_by: [cosign.pub] }}\nretry: {{ attempts: 1 }}\n",
            src.url, dst.url
        ),
    );
    let state = scratch.state();
    regferry(&scratch, &["policy", "check", &policies], &[]).await.assert_ok();
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    run.assert_ok();
    let out = run.json();
    let report = &out[0]["destinations"][0]["report"];
    assert_eq!(report["status"], "succeeded", "{out}");
    let held: std::collections::BTreeMap<String, String> = report["unsigned"]
        .as_array()
        .expect("unsigned list")
        .iter()
        .map(|u| (u["tag"].as_str().unwrap_or("").to_string(), u["reason"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(held.keys().map(String::as_str).collect::<Vec<_>>(), vec!["other-key", "replayed", "tampered", "unsigned"], "{out}");
    assert!(held["unsigned"].starts_with("not signed"), "{held:?}");
    assert!(held["other-key"].contains("no key of signed_by verifies"), "{held:?}");
    assert!(held["tampered"].contains("no key of signed_by verifies"), "{held:?}");
    assert!(held["replayed"].contains(&format!("of another manifest ({})", good.digest)), "{held:?}");

    let dr = "dr/team/app";
    assert_eq!(d.head(dr, "good").await, s.head(REPO, "good").await);
    assert_eq!(d.head(dr, &image::signature_tag(&good.digest)).await, s.head(REPO, &image::signature_tag(&good.digest)).await, "its signature travels");
    assert_eq!(d.head(dr, "referrer").await, s.head(REPO, "referrer").await);
    assert_eq!(refs::digests(&d.referrers(dr, &by_referrer.digest).await), vec![as_referrer.digest.clone()], "the signature referrer travels");
    for (tag, m) in [("unsigned", &unsigned), ("other-key", &other_key), ("tampered", &tampered), ("replayed", &replayed)] {
        assert_eq!(d.head(dr, tag).await, None, "{tag} must not be copied");
        assert_eq!(d.head(dr, &image::signature_tag(&m.digest)).await, None, "nor its signature ({tag})");
    }

    // jobs show says unsigned, and why.
    let id = report["execution"].as_i64().expect("execution id").to_string();
    let show = regferry(&scratch, &["jobs", "show", &id, "--state", &state, "--json"], &[]).await;
    show.assert_ok();
    let shown = show.json();
    let task = shown["tasks"].as_array().expect("tasks").iter().find(|t| t["tag"] == "unsigned").cloned().expect("task");
    assert_eq!(task["status"], "unsigned", "{task}");
    assert!(task["last_error"].as_str().unwrap_or("").starts_with("not signed"), "{task}");

    // Signed now: the next pass copies it (and its signature).
    s.push(REPO, &image::signature_tag(&unsigned.digest), &cosign::sign_image(&trusted, &reference("unsigned"), &unsigned)).await;
    let again = regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    again.assert_ok();
    let out = again.json();
    let report = &out[0]["destinations"][0]["report"];
    assert_eq!(report["unsigned"].as_array().map(Vec::len), Some(3), "{out}");
    assert_eq!(d.head(dr, "unsigned").await, s.head(REPO, "unsigned").await, "copied once signed");
    assert!(d.head(dr, &image::signature_tag(&unsigned.digest)).await.is_some());
    // Nothing new: the pass adds no execution (the held-back tags are recorded already).
    let second = report["execution"].as_i64();
    let third = regferry(&scratch, &["run", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    third.assert_ok();
    let out = third.json();
    let report = &out[0]["destinations"][0]["report"];
    assert_eq!(report["execution"].as_i64(), second, "{out}");
    assert_eq!(report["unsigned"].as_array().map(Vec::len), Some(3), "{out}");
    assert_eq!(report["counts"]["tags_copied"], 0, "{out}");

    // verify: clean for what was copied; a destination signature that no
    // longer holds (replaced by a stranger's) makes its tag `unsigned`.
    let verify = regferry(&scratch, &["verify", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    let v = verify.json();
    let problems = v["results"][0]["report"]["problems"].as_array().cloned().unwrap_or_default();
    assert!(problems.iter().all(|p| p["kind"] == "missing"), "only the held-back tags are missing: {v}");
    d.push(dr, &image::signature_tag(&good.digest), &cosign::sign_image(&stranger, &reference("good"), &good)).await;
    let verify = regferry(&scratch, &["verify", "--policies", &policies, "--state", &state, "--json"], &[]).await;
    assert_ne!(verify.code, 0);
    let v = verify.json();
    let problems = v["results"][0]["report"]["problems"].as_array().cloned().unwrap_or_default();
    let bad = problems.iter().find(|p| p["tag"] == "good").unwrap_or_else(|| panic!("good is reported: {v}"));
    assert_eq!(bad["kind"], "unsigned", "{v}");
    assert!(bad["error"].as_str().unwrap_or("").contains("no key of signed_by verifies"), "{v}");
}

/// Item 6: `require: { referrer_types: [application/spdx+json] }`: only
/// tags with an SBOM attached are copied.
#[tokio::test(flavor = "multi_thread")]
async fn a_required_referrer_type_holds_back_what_lacks_it() {
    let (src, dst, s, d) = registries();
    let with = child("sbom-with");
    s.push(REPO, "with", &with).await;
    let sbom = artifact(&with, SPDX, r#"{"spdxVersion":"SPDX-2.3"}"#);
    s.attach(REPO, &with.digest, &sbom, SPDX).await;
    let without = child("sbom-without");
    s.push(REPO, "without", &without).await;
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: sbom\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n\
             require: {{ referrer_types: [{SPDX}] }}\nretry: {{ attempts: 1 }}\n",
            src.url, dst.url
        ),
    );
    let state = scratch.state();
    let run = regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).await;
    run.assert_ok();
    assert!(run.stdout.contains(&format!("{REPO}:without: unsigned: no referrer of type {SPDX}")), "{}", run.stdout);
    assert_eq!(d.head(REPO, "with").await, s.head(REPO, "with").await);
    assert_eq!(refs::digests(&d.referrers(REPO, &with.digest).await), vec![sbom.digest.clone()]);
    assert_eq!(d.head(REPO, "without").await, None);
}

/// Item 5: `verify --deep` asks only for the selected children of a
/// narrowed index: a sparse export (an OCI layout keeps the index's digest
/// with only the selected children) verifies clean, and a rewrite DR site
/// fails over without `--force` while its primary is down.
#[tokio::test(flavor = "multi_thread")]
async fn deep_verify_and_failover_accept_narrowed_indexes() {
    let src = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let multi = image::platform_index(Flavor::Oci, vec![(child("deep-amd64"), "linux/amd64"), (child("deep-arm64"), "linux/arm64")]);
    s.push(REPO, "multi", &multi).await;

    let scratch = Scratch::new();
    let to = format!("oci:{}", scratch.path("export").display());
    let narrow = ["--platform", "linux/amd64", "--platform-filter", "sparse"];
    let copy = crate::support::migrate(&scratch, &src.url, &to, &narrow).await;
    copy.assert_ok();
    let mut args = vec!["verify", "--from", src.url.as_str(), "--to", to.as_str(), "--deep"];
    args.extend(narrow);
    let verify = regferry(&scratch, &args, &[]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("checked 2 manifests"), "the index and its selected child: {}", verify.stdout);

    let mut primary = src;
    let dr = TestRegistry::start();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: dr\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: mirror\n\
             platforms: [linux/amd64]\ntrigger: {{ interval: 1h }}\n",
            primary.url, dr.url
        ),
    );
    let state = scratch.state();
    regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).await.assert_ok();
    primary.stop();
    let failover = regferry(&scratch, &["failover", "--policies", &policies, "--state", &state, "--policy", "dr"], &[]).await;
    assert_eq!(failover.code, 0, "{}\n{}", failover.stdout, failover.stderr);
}

/// Item 4: `migrate` copies every tag, signature tags whose subject is no
/// longer tagged at the source included (the subject travels by digest
/// with them), so the destination equals the source; `verify --from --to`
/// agrees. A policy keeps "a signature never travels alone".
#[tokio::test(flavor = "multi_thread")]
async fn migrate_copies_signatures_of_untagged_manifests() {
    let (src, dst, s, d) = registries();
    let old = child("orphan-old");
    s.push(REPO, "app", &old).await;
    let sig = image::signature(&old);
    s.push(REPO, &image::signature_tag(&old.digest), &sig).await;
    // The tag moves on: the old manifest is untagged, its signature tag stays.
    let new = child("orphan-new");
    s.push(REPO, "app", &new).await;

    let scratch = Scratch::new();
    let copy = crate::support::migrate(&scratch, &src.url, &dst.url, &[]).await;
    copy.assert_ok();
    assert_eq!(d.head(REPO, "app").await, s.head(REPO, "app").await);
    assert_eq!(d.head(REPO, &image::signature_tag(&old.digest)).await, s.head(REPO, &image::signature_tag(&old.digest)).await, "the signature tag is copied");
    assert!(d.head(REPO, &old.digest).await.is_some(), "with its subject, by digest");
    let verify = regferry(&scratch, &["verify", "--from", &src.url, "--to", &dst.url], &[]).await;
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);

    // A policy does not copy a signature without its subject.
    let dst2 = TestRegistry::start();
    let d2 = Registry::new(&dst2.url, Access::Anonymous);
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!("name: p\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n", src.url, dst2.url),
    );
    regferry(&scratch, &["run", "--policies", &policies, "--state", &scratch.state()], &[]).await.assert_ok();
    assert!(d2.head(REPO, "app").await.is_some());
    assert_eq!(d2.head(REPO, &image::signature_tag(&old.digest)).await, None);
}

/// Item 3 of the follow-up: `failover` runs the `require:` gate against
/// the DR site before promoting it. A DR tag whose signature there does
/// not hold (replaced by a stranger's) is named, and failover refuses with
/// what to do; once the DR site holds a valid signature again, it fails over.
#[tokio::test(flavor = "multi_thread")]
async fn failover_refuses_a_dr_site_the_signature_gate_would_refuse() {
    use testkit::cosign::{self, CosignKey};
    let (mut primary, dr_site, s, d) = registries();
    let trusted = CosignKey::generate();
    let stranger = CosignKey::generate();
    let reference = |tag: &str| format!("{}/{REPO}:{tag}", primary.host());
    let good = child("failover-good");
    s.push(REPO, "good", &good).await;
    s.push(REPO, &image::signature_tag(&good.digest), &cosign::sign_image(&trusted, &reference("good"), &good)).await;
    let also = child("failover-also");
    s.push(REPO, "also", &also).await;
    s.push(REPO, &image::signature_tag(&also.digest), &cosign::sign_image(&trusted, &reference("also"), &also)).await;

    let scratch = Scratch::new();
    trust(&scratch, &trusted);
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: gated\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{}'\n    namespace: dr\n\
             require: {{ signed_by: [cosign.pub] }}\ntrigger: {{ interval: 1h }}\nretry: {{ attempts: 1 }}\n",
            primary.url, dr_site.url
        ),
    );
    let state = scratch.state();
    regferry(&scratch, &["run", "--policies", &policies, "--state", &state], &[]).await.assert_ok();
    let dr = "dr/team/app";
    assert_eq!(d.head(dr, "good").await, s.head(REPO, "good").await);
    // At the DR site, good's signature is replaced by one of another key.
    let valid_there = d.get_manifest(dr, &image::signature_tag(&good.digest)).await.expect("signature at DR");
    d.push(dr, &image::signature_tag(&good.digest), &cosign::sign_image(&stranger, &reference("good"), &good)).await;
    primary.stop();

    let failover = policy_verb(&scratch, &policies, &state, "gated", "failover", &[]).await;
    assert_ne!(failover.code, 0, "{}\n{}", failover.stdout, failover.stderr);
    let said = format!("{}\n{}", failover.stdout, failover.stderr);
    let refusal = said.lines().find(|l| l.contains("not switched")).unwrap_or_else(|| panic!("{said}"));
    assert!(refusal.contains("do not meet the policy's require:") && refusal.contains(&format!("{dr}:good")), "{refusal}");
    assert!(!refusal.contains(&format!("{dr}:also")), "only the tag that fails is named: {refusal}");
    assert!(refusal.contains("cosign sign") && refusal.contains("--force"), "says what to do: {refusal}");
    assert!(said.contains("no key of signed_by verifies"), "the verification says why: {said}");

    // Signed validly at the DR site again: failover promotes it.
    let resp = d.put_manifest(dr, &image::signature_tag(&good.digest), &valid_there.1, &valid_there.0).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let failover = policy_verb(&scratch, &policies, &state, "gated", "failover", &[]).await;
    assert_eq!(failover.code, 0, "{}\n{}", failover.stdout, failover.stderr);
}

/// Item 3 (the rest): a referrer whose subject will not exist at the
/// destination — an SBOM of a platform the filter drops, the signature of
/// a tag the tag rules exclude — is not copied, and is named once: one
/// warning per referrer over several passes, not one every pass.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_whose_subject_will_not_exist_are_named_once() {
    let (src, dst, s, d) = registries();
    let multi = image::platform_index(Flavor::Oci, vec![(child("orphan-amd64"), "linux/amd64"), (child("orphan-arm64"), "linux/arm64")]);
    s.push(REPO, "multi", &multi).await;
    let arm64 = multi.children.iter().find(|c| c.digest == child_of(&multi, "linux/arm64")).expect("arm64 child").clone();
    let arm64_sbom = artifact(&arm64, SPDX, r#"{"spdxVersion":"SPDX-2.3","name":"arm64"}"#);
    s.attach(REPO, &arm64.digest, &arm64_sbom, SPDX).await;
    let kept = child("orphan-kept");
    s.push(REPO, "v1", &kept).await;
    let excluded = child("orphan-dev");
    s.push(REPO, "dev", &excluded).await;
    let dev_sig = image::signature(&excluded);
    s.push(REPO, &image::signature_tag(&excluded.digest), &dev_sig).await;

    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: orphans\nsource: {{ registry: '{}' }}\ndestinations: [{{ registry: '{}' }}]\n\
             platforms: [linux/amd64]\ntags: {{ include: ['multi', 'v\\d+'] }}\nretry: {{ attempts: 1 }}\n",
            src.url, dst.url
        ),
    );
    let state = scratch.state();
    let said = three_passes(&scratch, &policies, &state).await;
    assert_eq!(d.head(REPO, &arm64_sbom.digest).await, None, "the SBOM of the dropped platform is not copied");
    assert_eq!(d.head(REPO, &fallback_tag(&arm64.digest)).await, None);
    assert_eq!(d.head(REPO, &image::signature_tag(&excluded.digest)).await, None, "the signature of the excluded tag is not copied");
    assert_eq!(d.head(REPO, "v1").await, s.head(REPO, "v1").await);
    let named = |digest: &str| said.lines().filter(|l| l.contains(digest) && l.contains("will not exist at the destination")).count();
    assert_eq!(named(&arm64_sbom.digest), 1, "the SBOM is named once over three passes:\n{said}");
    let sbom_line = said.lines().find(|l| l.contains(&arm64_sbom.digest)).unwrap_or_default();
    assert!(sbom_line.contains(SPDX) && sbom_line.contains(&arm64.digest), "with its artifactType and subject: {sbom_line}");
    assert_eq!(named(&dev_sig.digest), 1, "the signature is named once over three passes:\n{said}");
}

/// Item 3 (the rest), the referrers API side: the referrers of an index
/// the destination holds rewritten to the selected platforms (another
/// digest) have no subject there: not copied, named once, and the API is
/// asked about that index once, not every pass. (Debian's registry 2.8
/// does not serve the API: the proxy in front of it answers it.)
#[tokio::test(flavor = "multi_thread")]
async fn referrers_of_a_rewritten_index_are_named_once() {
    let (src, dst, s, d) = registries();
    let multi = image::platform_index(Flavor::Oci, vec![(child("rewritten-amd64"), "linux/amd64"), (child("rewritten-arm64"), "linux/arm64")]);
    s.push(REPO, "multi", &multi).await;
    let sbom = artifact(&multi, SPDX, r#"{"spdxVersion":"SPDX-2.3","name":"multi"}"#);
    crate::referrers::push_by_digest(&s, &sbom).await;
    let api = testkit::FaultProxy::start(&src.url, testkit::Faults::default());
    api.answer(&format!("/v2/{REPO}/referrers/{}", multi.digest), crate::referrers::api_listing(vec![refs::referrer_descriptor(&sbom, SPDX)]));
    for m in multi.children.iter().chain([&sbom]) {
        api.answer(&format!("/v2/{REPO}/referrers/{}", m.digest), crate::referrers::api_listing(Vec::new()));
    }
    let scratch = Scratch::new();
    let policies = write(
        &scratch,
        "policies",
        "p.yaml",
        &format!(
            "name: rewritten\nsource: {{ registry: '{}' }}\ndestinations: [{{ registry: '{}' }}]\n\
             platforms: [linux/amd64]\nretry: {{ attempts: 1 }}\n",
            api.url, dst.url
        ),
    );
    let state = scratch.state();
    let said = three_passes(&scratch, &policies, &state).await;
    assert!(d.head(REPO, "multi").await.is_some_and(|(digest, _)| digest != multi.digest), "the destination holds the index rewritten");
    assert_eq!(d.head(REPO, &sbom.digest).await, None, "the SBOM of the source index is not copied");
    let named: Vec<&str> = said.lines().filter(|l| l.contains(&sbom.digest) && l.contains("will not exist at the destination")).collect();
    assert_eq!(named.len(), 1, "named once over three passes:\n{said}");
    assert!(named[0].contains(SPDX) && named[0].contains(&multi.digest) && named[0].contains("rewritten"), "{}", named[0]);
    let asked = api.counters.seen().iter().filter(|r| r.target.contains(&format!("/referrers/{}", multi.digest))).count();
    assert_eq!(asked, 1, "the source index's referrers are asked about once");
}
