//! OCI image layouts (`oci:/path`) as source and destination, for
//! air-gapped sites: an export that Debian's skopeo (a real client) reads,
//! a second export of an unchanged source that writes nothing, an
//! incremental export that writes only what is new, an import into a
//! registry that ends identical (and `verify` from the layout agrees), and
//! a `kill -9` mid-export that leaves the layout valid.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::Digest as _;
use testkit::dataset::{self, Spec};
use testkit::image::{self, Flavor};
use testkit::{FaultProxy, Faults};

use crate::support::{Scratch, assert_mirrored, command, migrate, migrate_args, regferry, registries, repos_of, wait_until};

/// Every file below `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (meta.len(), meta.modified().expect("mtime")));
            }
        }
    }
    out
}

/// The layouts below `root` (directories with an `oci-layout` file),
/// relative names.
fn layouts(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = snapshot(root)
        .keys()
        .filter(|p| p.file_name().is_some_and(|n| n == "oci-layout"))
        .filter_map(|p| p.parent()?.strip_prefix(root).ok().map(|r| r.to_string_lossy().into_owned()))
        .collect();
    out.sort();
    out
}

/// tag → (digest, media type) from a layout's `index.json`.
fn layout_tags(layout: &Path) -> BTreeMap<String, (String, String)> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json")).expect("index.json parses");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|d| {
            let tag = d["annotations"]["org.opencontainers.image.ref.name"].as_str()?;
            Some((tag.to_string(), (d["digest"].as_str()?.to_string(), d["mediaType"].as_str()?.to_string())))
        })
        .collect()
}

/// Every layout below `root` is valid: `oci-layout` and `index.json` parse,
/// every file under `blobs/` hashes to its name, every descriptor of
/// `index.json` and everything the manifests reference (recursively) is
/// there. Returns the number of blobs checked.
fn assert_layouts_valid(root: &Path) -> usize {
    let mut checked = 0;
    for rel in layouts(root) {
        let layout = root.join(&rel);
        let version: Value = serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).expect("oci-layout")).expect("oci-layout parses");
        assert_eq!(version["imageLayoutVersion"], "1.0.0");
        let blobs = layout.join("blobs/sha256");
        for e in std::fs::read_dir(&blobs).expect("blobs/sha256").flatten() {
            let bytes = std::fs::read(e.path()).expect("blob");
            let name = e.file_name().to_string_lossy().into_owned();
            assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), name, "{} does not match its digest", e.path().display());
            checked += 1;
        }
        let mut todo: Vec<String> = layout_tags(&layout).into_values().map(|(d, _)| d).collect();
        while let Some(digest) = todo.pop() {
            let path = blobs.join(digest.trim_start_matches("sha256:"));
            let bytes = std::fs::read(&path).unwrap_or_else(|_| panic!("{rel}: {digest} is referenced but missing"));
            let Ok(m) = serde_json::from_slice::<Value>(&bytes) else { continue };
            for d in m["manifests"].as_array().into_iter().flatten().chain(m["layers"].as_array().into_iter().flatten()).chain([&m["config"]]) {
                if let Some(child) = d["digest"].as_str() {
                    todo.push(child.to_string());
                }
            }
        }
    }
    checked
}

/// `skopeo copy --all oci:LAYOUT:TAG docker://HOST/REPO:TAG` (Debian's
/// skopeo, digests preserved).
async fn skopeo_copy(scratch: &Scratch, layout: &Path, tag: &str, dest: &str) {
    let out = tokio::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .env("HOME", scratch.dir.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run skopeo");
    assert!(out.status.success(), "skopeo could not read {}:{tag}: {}", layout.display(), String::from_utf8_lossy(&out.stderr));
}

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_skopeo_reads_then_an_unchanged_export_writes_nothing_and_a_new_tag_only_its_blobs() {
    let (src, check, s, c) = registries();
    let pushed = dataset::fill(&s, &Spec { repos: 2, tags_per_repo: 2, multi_arch_every: 2, signatures: true, ..Spec::default() }).await;
    let repos = repos_of(&pushed);
    let scratch = Scratch::new();
    let export = scratch.path("export");
    let to = format!("oci:{}", export.display());

    let run = migrate(&scratch, &src.url, &to, &[]).await;
    run.assert_ok();
    let report = run.json();
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["counts"]["tags_copied"], pushed.len() as u64, "{report}");
    assert_eq!(layouts(&export), repos, "one layout per repository");
    assert!(assert_layouts_valid(&export) > 0);
    // Blobs the repositories share are stored once, hard-linked.
    let names = |repo: &str| -> Vec<String> {
        std::fs::read_dir(export.join(repo).join("blobs/sha256")).expect("blobs").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    };
    let shared: Vec<String> = names(&repos[0]).into_iter().filter(|n| names(&repos[1]).contains(n)).collect();
    assert!(!shared.is_empty(), "the data set shares base layers");
    for n in &shared {
        use std::os::unix::fs::MetadataExt;
        let inode = |repo: &str| std::fs::metadata(export.join(repo).join("blobs/sha256").join(n)).expect("blob").ino();
        assert_eq!(inode(&repos[0]), inode(&repos[1]), "shared blob {n} is stored twice");
    }
    assert_eq!(report["counts"]["blobs_mounted"], shared.len() as u64, "{report}");
    let mut read: BTreeMap<String, usize> = BTreeMap::new();
    for repo in &repos {
        let tags = layout_tags(&export.join(repo));
        assert_eq!(tags, s.tag_map(repo).await, "{repo}: the layout's tags are the source's, same digest and media type");
        // A real client reads every OCI-typed tag (indexes with all their
        // platforms). (skopeo's oci: transport looks only at OCI media
        // types in index.json; Docker-typed manifests are kept as they are,
        // digest and all, and travel on with regferry: see the import test.)
        for (tag, (_, media_type)) in &tags {
            if media_type.starts_with("application/vnd.oci.") {
                skopeo_copy(&scratch, &export.join(repo), tag, &format!("{}/{repo}:{tag}", host(&check.url))).await;
                *read.entry(media_type.clone()).or_insert(0) += 1;
            }
        }
    }
    assert!(read.len() == 2, "skopeo read OCI images and indexes: {read:?}");
    for repo in &repos {
        let got = c.tag_map(repo).await;
        for (tag, found) in &got {
            assert_eq!(Some(found), s.tag_map(repo).await.get(tag), "{repo}:{tag} read by skopeo from the layout differs from the source");
            assert!(c.missing_content(repo, &found.0).await.is_empty());
        }
    }

    // Unchanged source: nothing written, not even index.json.
    let before = snapshot(&export);
    let run = migrate(&scratch, &src.url, &to, &[]).await;
    run.assert_ok();
    let report = run.json();
    assert_eq!(report["counts"]["tags_copied"], 0, "{report}");
    assert_eq!(report["counts"]["tags_skipped"], pushed.len() as u64, "{report}");
    assert_eq!(snapshot(&export), before, "a second export of an unchanged source wrote files");

    // A new tag sharing the base layers: its new blobs, its manifest and
    // that repository's index.json, nothing else.
    let repo = &repos[0];
    let fresh = image::layer(Flavor::Oci, "ocidir-new-layer", 40 * 1024);
    let base = pushed
        .iter()
        .find(|p| &p.repo == repo && p.manifest.media_type == Flavor::Oci.manifest_type())
        .or_else(|| pushed.iter().find(|p| &p.repo == repo && p.manifest.children.is_empty()))
        .expect("a single-platform image in the repository");
    // Its layers (blobs after the config), plus one new layer.
    let mut layers: Vec<_> = base.manifest.blobs[1..].to_vec();
    layers.push(fresh);
    let new_image = image::image(Flavor::Oci, "ocidir-new", layers);
    s.push(repo, "v-new", &new_image).await;
    let run = migrate(&scratch, &src.url, &to, &[]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], 1);
    let after = snapshot(&export);
    let changed: Vec<&PathBuf> = after.iter().filter(|(p, v)| before.get(*p) != Some(v)).map(|(p, _)| p).collect();
    let layout = export.join(repo);
    let mut expected: Vec<PathBuf> = vec![layout.join("index.json")];
    // New: the config, the new layer and the manifest.
    let config = &new_image.blobs[0].digest;
    let new_layer = &new_image.blobs[new_image.blobs.len() - 1].digest;
    for blob in [config, new_layer, &new_image.digest] {
        expected.push(layout.join("blobs/sha256").join(blob.trim_start_matches("sha256:")));
    }
    expected.sort();
    let mut changed: Vec<PathBuf> = changed.into_iter().cloned().collect();
    changed.sort();
    assert_eq!(changed, expected, "the incremental export wrote something else than the new tag's new content");
    assert!(before.keys().all(|p| after.contains_key(p)), "nothing is removed");
    assert_eq!(layout_tags(&layout).get("v-new").map(|(d, _)| d.clone()), Some(new_image.digest.clone()));
    assert_layouts_valid(&export);
    drop(check);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_exports_to_a_layout_and_an_import_ends_identical_with_verify_agreeing() {
    let (src, dst, s, d) = registries();
    let pushed = dataset::fill(&s, &Spec { repos: 2, tags_per_repo: 2, multi_arch_every: 2, signatures: true, ..Spec::default() }).await;
    let repos = repos_of(&pushed);
    let scratch = Scratch::new();
    let export = scratch.path("carried");
    let layout = format!("oci:{}", export.display());
    let state = scratch.state();

    // Export by policy (the destination an `oci:` address).
    let policies = scratch.path("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    std::fs::write(policies.join("export.yaml"), format!("name: export\nsource: {{ registry: '{}' }}\ndestinations:\n  - registry: '{layout}'\n", src.url))
        .expect("policy");
    let run = regferry(&scratch, &["run", "--policies", &policies.to_string_lossy(), "--state", &state, "--json"], &[]).await;
    run.assert_ok();
    assert_eq!(layouts(&export), repos);
    assert_layouts_valid(&export);

    // Import into the DR registry: same digests and media types, pullable.
    migrate(&scratch, &layout, &dst.url, &[]).await.assert_ok();
    assert_eq!(assert_mirrored(&s, &d, &repos, "").await, pushed.len());

    // verify agrees, from the layout and to it, deep included.
    for (from, to) in [(layout.as_str(), dst.url.as_str()), (src.url.as_str(), layout.as_str())] {
        let run = regferry(&scratch, &["verify", "--from", from, "--to", to, "--deep", "--json"], &[]).await;
        assert_eq!(run.code, 0, "verify {from} → {to}: {}\n{}", run.stdout, run.stderr);
    }
    // ...and notices a layout that fell behind.
    s.push(&repos[0], "v-late", &image::image(Flavor::Oci, "late", vec![image::layer(Flavor::Oci, "late", 1024)])).await;
    let run = regferry(&scratch, &["verify", "--from", &src.url, "--to", &layout, "--json"], &[]).await;
    assert_ne!(run.code, 0, "verify missed a tag the layout lacks: {}", run.stdout);
    assert!(run.stdout.contains("v-late"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_an_export_leaves_the_layout_valid_and_a_rerun_completes() {
    let (src, _dst, s, _d) = registries();
    dataset::fill(&s, &Spec { repos: 1, tags_per_repo: 2, multi_arch_every: 0, signatures: false, ..Spec::default() }).await;
    const BIG: u64 = 6 << 20;
    let big = s.push_random_blob("bench/repo-0", "ocidir-big", BIG).await;
    s.push("bench/repo-0", "v9-big", &image::image_with_external_layers(Flavor::Oci, "big", &[(big.clone(), BIG)])).await;
    // A slow link from the source: the big layer takes seconds.
    let sp = FaultProxy::start(&src.url, Faults { bandwidth: 1 << 20, ..Faults::default() });
    let scratch = Scratch::new();
    let export = scratch.path("export");
    let to = format!("oci:{}", export.display());
    let args = migrate_args(&scratch, &sp.url, &to, &["--concurrency", "1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = command(&scratch, &args, &[]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("start");
    let partial = export.join("bench/repo-0/.regferry-tmp");
    let growing = || snapshot(&partial).values().any(|(len, _)| *len > 1 << 20);
    wait_until(Duration::from_secs(60), "the big blob to be half written", async || growing()).await;
    child.start_kill().expect("kill -9");
    let status = child.wait().await.expect("reap");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "regferry must die by SIGKILL: {status:?}");
    let blobs = assert_layouts_valid(&export);
    assert!(!layout_tags(&export.join("bench/repo-0")).contains_key("v9-big"), "the tag whose blob was cut off is not in index.json");
    eprintln!("after kill -9: {blobs} blobs, all intact");

    // The same command again (the link now fast) resumes the same
    // execution and finishes it; the partial file is gone.
    sp.set_faults(Faults::default());
    let run = migrate(&scratch, &sp.url, &to, &["--concurrency", "1"]).await;
    run.assert_ok();
    let report = run.json();
    assert_eq!(report["resumed"], true, "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(layout_tags(&export.join("bench/repo-0")), s.tag_map("bench/repo-0").await);
    assert_layouts_valid(&export);
    assert!(snapshot(&partial).is_empty(), "partial files left: {:?}", snapshot(&partial).keys());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layout_skopeo_wrote_is_imported_with_its_digests() {
    let (src, dst, s, d) = registries();
    let img = image::image(Flavor::Oci, "from-skopeo", vec![image::layer(Flavor::Oci, "from-skopeo", 20 * 1024)]);
    s.push("team/app", "v1", &img).await;
    let children = vec![
        (image::image(Flavor::Oci, "multi-a", vec![image::layer(Flavor::Oci, "multi-a", 8 * 1024)]), "linux/amd64"),
        (image::image(Flavor::Oci, "multi-b", vec![image::layer(Flavor::Oci, "multi-b", 8 * 1024)]), "linux/arm64"),
    ];
    let index = image::index(Flavor::Oci, children);
    s.push("team/app", "multi", &index).await;
    let scratch = Scratch::new();
    let carried = scratch.path("by-skopeo");
    std::fs::create_dir_all(carried.join("team")).expect("dir");
    for tag in ["v1", "multi"] {
        let out = tokio::process::Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--all", "--preserve-digests", "--src-tls-verify=false"])
            .arg(format!("docker://{}/team/app:{tag}", host(&src.url)))
            .arg(format!("oci:{}:{tag}", carried.join("team/app").display()))
            .env("HOME", scratch.dir.path())
            .kill_on_drop(true)
            .output()
            .await
            .expect("run skopeo");
        assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    }
    let run = migrate(&scratch, &format!("oci:{}", carried.display()), &dst.url, &[]).await;
    run.assert_ok();
    assert_eq!(run.json()["counts"]["tags_copied"], 2);
    assert_eq!(assert_mirrored(&s, &d, &["team/app".to_string()], "").await, 2);
}

/// A tmpfs mounted for one test (root only), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (`3m`) on `dir`; why not, when it cannot.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).output().expect("run mount");
        assert!(out.status.success(), "remount {}: {}", self.0.display(), String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Blob files below `root` whose content does not hash to their name.
fn bad_blobs(root: &Path) -> Vec<(PathBuf, u64)> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| p.parent().is_some_and(|d| d.ends_with("blobs/sha256")))
        .filter(|(p, _)| {
            let bytes = std::fs::read(p).expect("blob");
            p.file_name().is_none_or(|n| n.to_string_lossy() != hex::encode(sha2::Sha256::digest(&bytes)))
        })
        .map(|(p, (len, _))| (p, len))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_onto_a_full_disk_fails_without_bad_blobs_and_completes_once_there_is_room() {
    let scratch = Scratch::new();
    let mnt = scratch.path("small-disk");
    let disk = match Tmpfs::mount(&mnt, "3m") {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED an_export_onto_a_full_disk…: cannot mount a tmpfs here (needs root): {why}");
            return;
        }
    };
    let (src, check, s, c) = registries();
    let pushed = dataset::fill(&s, &Spec { repos: 3, tags_per_repo: 3, multi_arch_every: 3, signatures: true, ..Spec::default() }).await;
    // ~6 MiB more: four 1.5 MiB layers, one image each.
    const BIG: u64 = 3 << 19;
    for i in 0..4 {
        let repo = format!("bench/repo-{}", i % 3);
        let big = s.push_random_blob(&repo, &format!("full-disk-{i}"), BIG).await;
        s.push(&repo, &format!("v-big-{i}"), &image::image_with_external_layers(Flavor::Oci, &format!("big-{i}"), &[(big, BIG)])).await;
    }
    let mut repos = repos_of(&pushed);
    repos.sort();
    let export = mnt.join("export");
    let to = format!("oci:{}", export.display());
    // The disk is nearly full before the export starts (another file takes
    // all but FREE of it), so it stays full while small blobs are written
    // too, not only while a large one is (whose temporary file, removed
    // when its write fails, would free the space again).
    const FREE: usize = 256 << 10;
    std::fs::write(mnt.join("other-data"), vec![7u8; (3 << 20) - FREE]).expect("fill the disk");

    let run = migrate(&scratch, &src.url, &to, &[]).await;
    assert_ne!(run.code, 0, "an export of ~6.5 MiB onto a 3 MiB disk succeeded?\n{}\n{}", run.stdout, run.stderr);
    let bad_after_failure = bad_blobs(&export);
    eprintln!("after the disk-full run (exit {}): {} blob files, {} not matching their digest: {bad_after_failure:?}", run.code, snapshot(&export).keys().filter(|p| p.parent().is_some_and(|d| d.ends_with("blobs/sha256"))).count(), bad_after_failure.len());

    disk.resize("64m");
    let rerun = migrate(&scratch, &src.url, &to, &[]).await;
    let first_error = serde_json::from_str::<Value>(&rerun.stdout).ok().and_then(|r| r["failures"][0]["error"].as_str().map(String::from));
    eprintln!("the rerun with room: exit {}, first failure: {first_error:?}", rerun.code);
    assert_eq!(bad_after_failure, vec![], "a failed write left blob files under their digest names with the wrong content");
    rerun.assert_ok();
    assert_eq!(rerun.json()["status"], "succeeded");
    let checked = assert_layouts_valid(&export);
    assert!(bad_blobs(&export).is_empty());
    eprintln!("after the rerun: {checked} blob files, every one hashed to its name");
    for repo in &repos {
        let tags = layout_tags(&export.join(repo));
        assert_eq!(tags, s.tag_map(repo).await, "{repo}: the layout's tags are the source's");
        for (tag, (_, media_type)) in &tags {
            if media_type.starts_with("application/vnd.oci.") {
                skopeo_copy(&scratch, &export.join(repo), tag, &format!("{}/{repo}:{tag}", host(&check.url))).await;
                assert!(c.missing_content(repo, &tags[tag].0).await.is_empty());
            }
        }
    }

    // verify --deep checks the layout's blobs by size and digest: all
    // good now; a layer file cut short afterwards (same name) is found.
    let verify_args = ["verify", "--from", src.url.as_str(), "--to", to.as_str(), "--deep", "--json"];
    let run = regferry(&scratch, &verify_args, &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let (layer, len) = snapshot(&export.join(&repos[0]).join("blobs/sha256")).into_iter().map(|(p, (len, _))| (p, len)).max_by_key(|(_, len)| *len).expect("blobs");
    std::fs::write(&layer, &std::fs::read(&layer).expect("layer")[..(len / 2) as usize]).expect("cut the layer short");
    let run = regferry(&scratch, &verify_args, &[]).await;
    assert_ne!(run.code, 0, "verify --deep missed a blob file cut short: {}", run.stdout);
    let name = layer.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    assert!(run.stdout.contains(&name), "verify names the damaged blob {name}: {}", run.stdout);
    drop(disk);
}
