//! Streaming, not buffering: a 1 GiB layer goes through with flat memory.

use std::process::{Command, Stdio};

use testkit::image::{self, Flavor};
use testkit::{Access, Registry, TestRegistry};

use crate::support::{Scratch, binary};


/// Peak resident set of a running child in KiB: its `VmHWM`, sampled until
/// it exits. (wait4's `ru_maxrss` would not do: exec carries over the
/// high-water mark of the test process the child was spawned from.)
fn wait_peak_rss(mut child: std::process::Child) -> (i32, i64) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().expect("wait for regferry") {
            return (status.code().unwrap_or(-1), peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
