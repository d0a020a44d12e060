//! Bad input and unusable registries end in one clear line and the right
//! exit code: no panic, no stack trace, no secret.

use testkit::image::{self, Flavor};
use testkit::{Access, Registry, TestRegistry};

use crate::support::{Scratch, regferry};

fn assert_one_clear_line(stderr: &str) {
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    let errors = stderr.lines().filter(|l| l.starts_with("regferry: ") || l.starts_with("error: ")).count();
    assert_eq!(errors, 1, "exactly one error line expected: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_exit_code_2() {
    let scratch = Scratch::new();
    let state = scratch.state();
    // A CA bundle that is not PEM: refused before any request.
    let not_pem = scratch.path("not-a-ca.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").expect("write");
    let not_pem = not_pem.to_string_lossy().into_owned();
    let missing = scratch.path("missing-ca.pem").to_string_lossy().into_owned();
    let cases: &[(&[&str], &str)] = &[
        (&["migrate", "--from", "https://h", "--to", "http://127.0.0.1:1", "--from-ca", &not_pem], "holds no PEM certificate"),
        (&["migrate", "--from", "https://h", "--to", "http://127.0.0.1:1", "--to-ca", &missing], "--to-ca"),
        (&["migrate", "--from", "http://exa mple.com", "--to", "http://127.0.0.1:1"], "--from"),
        (&["migrate", "--from", "ftp://x", "--to", "http://127.0.0.1:1"], "scheme"),
        (&["migrate", "--from", "http://h/../etc", "--to", "http://127.0.0.1:1"], "repository prefix"),
        (&["migrate", "--from", "http://user:hunter2@h", "--to", "http://127.0.0.1:1"], "credentials in the URL"),
        (&["migrate", "--from", "http://h", "--to", "http://127.0.0.1:1", "--repo", "a/[b"], "invalid repository glob"),
        (&["migrate", "--from", "http://h", "--to", "http://127.0.0.1:1", "--to-creds", "nocolon"], "USER:PASSWORD"),
        (&["migrate", "--from", "http://h", "--to", "http://127.0.0.1:1", "--concurrency", "0"], "concurrency"),
    ];
    for (args, needle) in cases {
        let mut a = args.to_vec();
        a.extend(["--state", &state]);
        let run = regferry(&scratch, &a, &[]).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: expected {needle:?} in {}", run.stderr);
        assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
        assert_one_clear_line(&run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_registries_and_missing_repositories_fail_clearly() {
    let scratch = Scratch::new();
    let state = scratch.state();
    let src = TestRegistry::start();
    let nothing = format!("http://127.0.0.1:{}", testkit::registry::free_port());
    let run = regferry(&scratch, &["migrate", "--from", &nothing, "--to", &src.url, "--state", &state], &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains(&format!("source cannot reach {nothing}")), "{}", run.stderr);
    assert_one_clear_line(&run.stderr);

    // A repository that does not exist.
    let s = Registry::new(&src.url, Access::Anonymous);
    s.push("real/app", "v1", &image::image(Flavor::Oci, "r", vec![])).await;
    let dst = TestRegistry::start();
    let run = regferry(&scratch, &["migrate", "--from", &src.url, "--to", &dst.url, "--state", &state, "--repo", "no/such"], &[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.contains("repository no/such not found in the catalog"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn help_teaches_and_hides_secrets() {
    let scratch = Scratch::new();
    let run = regferry(&scratch, &["migrate", "--help"], &[("REGFERRY_TO_CREDS", "admin:s3cr3t-value")]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("--dry-run") && run.stdout.contains("Examples:"), "{}", run.stdout);
    assert!(!run.stdout.contains("s3cr3t-value"), "--help printed a secret");
}
