//! The README's install command (#23), run as a new user would: a fresh
//! `git clone` of this checkout, then the very `cargo install --locked
//! --path …` line the README's "Install" section shows (read from
//! README.md), then the installed `regferry --version` and `--help`.
//!
//! Two liberties, both so that it does not rebuild the world on every test
//! run: `--debug`, and `CARGO_TARGET_DIR` pointing at this build's target
//! directory (the dependencies are reused; only regferry itself compiles,
//! from the clone). The clone holds the committed tree only: uncommitted
//! changes are not what a user installs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Scratch, binary};

/// The install line of the README's "Install" section, as words.
fn readme_install_command(readme: &str) -> Vec<String> {
    let section = readme.split("\n## Install").nth(1).expect("README.md has an \"## Install\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let line = section
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo install") && l.contains("--path"))
        .expect("the Install section shows a `cargo install … --path` line");
    line.split_whitespace().map(str::to_string).collect()
}

/// The target directory this test binary was built in (`…/target`).
fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp` for integration tests.
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").to_path_buf()
}

#[test]
fn readme_install_command_works_from_a_fresh_clone() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    let words = readme_install_command(&readme);
    assert_eq!(words.join(" "), "cargo install --locked --path .", "the README's install line changed: update this test with it");

    let scratch = Scratch::new();
    // One clone path for every run: what it builds in the shared target
    // directory is replaced by the next run instead of piling up.
    let clone = Path::new(env!("CARGO_TARGET_TMPDIR")).join("install-test-clone");
    let _ = std::fs::remove_dir_all(&clone);
    let git = Command::new("git").arg("clone").arg("--quiet").arg(repo).arg(&clone).output().expect("run git clone");
    assert!(git.status.success(), "git clone: {}", String::from_utf8_lossy(&git.stderr));

    // The README's words, `.` being the clone (the user runs it from there).
    let root = scratch.path("root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut install = Command::new(cargo);
    install.args(&words[1..]).current_dir(&clone).arg("--root").arg(&root).arg("--debug").env("CARGO_TARGET_DIR", target_dir());
    // Installing through this target directory replaces its debug
    // `regferry` with the clone's build for a moment: keep this build's
    // binary (a hard link, no copy) and put it back (an atomic rename), so
    // that tests running beside this one keep the binary under test.
    let under_test = PathBuf::from(binary());
    let kept = under_test.with_extension("install-test-kept");
    let _ = std::fs::remove_file(&kept);
    let keep = std::fs::hard_link(&under_test, &kept).is_ok();
    let out = install.output().expect("run cargo install");
    if keep {
        std::fs::rename(&kept, &under_test).expect("put the binary under test back");
    }
    let _ = std::fs::remove_dir_all(&clone);
    assert!(out.status.success(), "{} failed:\n{}", words.join(" "), String::from_utf8_lossy(&out.stderr));

    let installed = root.join("bin/regferry");
    let version = Command::new(&installed).arg("--version").output().expect("run the installed regferry");
    assert!(version.status.success());
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with(&format!("regferry {}", env!("CARGO_PKG_VERSION"))), "{version}");
    let help = Command::new(&installed).arg("--help").output().expect("run the installed regferry");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for verb in ["copy", "migrate", "run", "failover", "verify"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(verb)), "--help lists {verb}:\n{help}");
    }
}
