//! A local S3 server (`moto_server` from the PyPI package `moto[server]`)
//! on a free loopback port, so registries can run on object storage the way
//! production ones do: blob `HEAD`/`GET` then answer `307` to a presigned
//! storage URL.
//!
//! One server is shared by every test that runs at the same time (each
//! registry gets a bucket of its own); it stops when the last user drops
//! it. Nothing here talks to anything off the machine, and nothing here is
//! used by regferry itself.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tempfile::TempDir;

use crate::registry::{free_port, wait_listening};

/// A running `moto_server`.
pub struct S3Server {
    child: Mutex<Child>,
    dir: TempDir,
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    buckets: AtomicU64,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server").field("url", &self.url).finish()
    }
}

/// Where a registry keeps its data on the S3 server (its `storage: s3:`).
#[derive(Debug, Clone)]
pub struct S3Storage {
    pub server: Arc<S3Server>,
    pub bucket: String,
    pub rootdirectory: String,
}

/// The `moto_server` executable on `PATH` (a pyenv shim counts).
pub fn moto_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("moto_server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("moto_server is not on PATH: run `pip install 'moto[server]'` (scripts/deps.sh does this)");
}

static SHARED: Mutex<Weak<S3Server>> = Mutex::new(Weak::new());

impl S3Server {
    /// Start a new server on a free port and wait until it answers.
    pub fn start() -> S3Server {
        let dir = tempfile::Builder::new().prefix("regferry-s3-").tempdir().expect("temp dir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("log file");
        let log2 = log.try_clone().expect("log file");
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server ({e}): run `pip install 'moto[server]'`"));
        let server = S3Server { child: Mutex::new(child), dir, port, url: format!("http://127.0.0.1:{port}"), buckets: AtomicU64::new(0) };
        server.wait_ready();
        server
    }

    /// The server every concurrently running test shares (started on first
    /// use, stopped when the last holder drops it).
    pub fn shared() -> Arc<S3Server> {
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slot.upgrade() {
            return s;
        }
        let s = Arc::new(S3Server::start());
        *slot = Arc::downgrade(&s);
        s
    }

    fn wait_ready(&self) {
        let exited = || self.child.lock().unwrap_or_else(|p| p.into_inner()).try_wait().ok().flatten();
        if let Err(why) = wait_listening(self.port, Duration::from_secs(30), exited) {
            panic!("moto_server {why}; log:\n{}", self.log());
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Create a bucket with a plain `PUT /bucket`.
    pub fn create_bucket(&self, name: &str) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto_server");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        let request = format!("PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port);
        stream.write_all(request.as_bytes()).expect("send PUT bucket");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let status = answer.split(' ').nth(1).unwrap_or("");
        assert!(status.starts_with('2'), "creating bucket {name} answered {:?}; log:\n{}", answer.lines().next(), self.log());
    }

    /// A fresh bucket on this server, for one registry.
    pub fn storage(self: &Arc<S3Server>) -> S3Storage {
        let n = self.buckets.fetch_add(1, Ordering::Relaxed);
        let bucket = format!("registry-{}-{n}", std::process::id());
        self.create_bucket(&bucket);
        S3Storage { server: self.clone(), bucket, rootdirectory: "/registry".into() }
    }
}

impl S3Storage {
    /// A bucket of its own on the shared server.
    pub fn shared() -> S3Storage {
        S3Server::shared().storage()
    }

    /// The registry's `storage:` section body (indented for `storage:`).
    pub fn yaml(&self) -> String {
        format!(
            "  s3:\n    region: us-east-1\n    bucket: {}\n    regionendpoint: {}\n    secure: false\n    v4auth: true\n    \
             accesskey: testing\n    secretkey: testing\n    rootdirectory: {}\n",
            self.bucket, self.server.url, self.rootdirectory
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Blob;
    use crate::registry::{Options, TestRegistry};
    use crate::{Access, Registry};

    #[tokio::test]
    async fn a_registry_on_s3_redirects_blob_head_and_get_to_storage() {
        let storage = S3Storage::shared();
        let server = storage.server.clone();
        let registry = TestRegistry::start_with(Options { s3: Some(storage), ..Options::default() });
        let blob = Blob::new("application/octet-stream", b"stored on s3".to_vec());
        Registry::new(&registry.url, Access::Anonymous).push_blob("app", &blob).await;

        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let url = format!("{}/v2/app/blobs/{}", registry.url, blob.digest);
        for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
            let r = c.request(method.clone(), &url).send().await.unwrap();
            assert_eq!(r.status(), 307, "{method} {url}");
            let location = r.headers()["location"].to_str().unwrap().to_string();
            assert!(location.starts_with(&server.url), "{method} redirects to the S3 server: {location}");
            let stored = c.request(method.clone(), &location).send().await.unwrap();
            assert_eq!(stored.status(), 200, "{method} on the presigned URL");
            if method == reqwest::Method::GET {
                assert_eq!(stored.bytes().await.unwrap().as_ref(), b"stored on s3");
            }
        }
        let absent = c.head(format!("{}/v2/app/blobs/sha256:{}", registry.url, "0".repeat(64))).send().await.unwrap();
        assert_eq!(absent.status(), 404, "an absent blob is not redirected");
    }
}
