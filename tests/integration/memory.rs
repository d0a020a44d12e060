//! Streaming, not buffering: a 1 GiB layer goes through with flat memory.

use std::process::{Command, Stdio};

use testkit::image::{self, Flavor};
use testkit::{Access, Registry, TestRegistry};

use crate::support::{Scratch, binary};

/// Peak resident set of a finished child, in KiB (wait4's ru_maxrss).
fn wait_peak_rss(child: std::process::Child) -> (i32, i64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, zero is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, status and usage are valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (code, usage.ru_maxrss)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_1_gib_layer_streams_with_flat_memory() {
    const SIZE: u64 = 1 << 30;
    let src = TestRegistry::start();
    let dst = TestRegistry::start();
    let s = Registry::new(&src.url, Access::Anonymous);
    let d = Registry::new(&dst.url, Access::Anonymous);
    let layer = s.push_random_blob("big/layer", "one-gib", SIZE).await;
    let img = image::image_with_external_layers(Flavor::Oci, "big", &[(layer.clone(), SIZE)]);
    s.push("big/layer", "v1", &img).await;

    let scratch = Scratch::new();
    let child = Command::new(binary())
        .args(["-q", "migrate", "--from", &src.url, "--to", &dst.url, "--state", &scratch.state()])
        .env("DOCKER_CONFIG", scratch.path("none"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start regferry");
    let (code, peak_kib) = tokio::task::spawn_blocking(move || wait_peak_rss(child)).await.expect("wait");
    assert_eq!(code, 0);
    eprintln!("peak RSS copying a 1 GiB layer: {} MiB", peak_kib / 1024);
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB: blobs must stream, not buffer");
    assert!(d.blob_exists("big/layer", &layer).await);
    assert_eq!(d.head("big/layer", "v1").await, s.head("big/layer", "v1").await);
}
