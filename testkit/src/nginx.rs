//! Real nginx processes (Debian package `nginx-light`) in front of a real
//! registry, on free loopback ports, in the shapes production fronts take:
//! TLS termination, a request body limit (`client_max_body_size`), a
//! download rate limit (`limit_rate`), a front that answers every `/v2/`
//! request with a redirect to another address, and a front that refuses
//! `HEAD` on manifests.
//!
//! Each [`Nginx`] stops its process when dropped. Its access log (with the
//! status and body size of every request) is kept so tests can count what
//! the front really saw. Nothing here is used by regferry itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::registry::{free_port, wait_listening};

/// What the front does besides proxying to its upstream.
#[derive(Debug, Clone, Default)]
pub struct Front {
    /// Terminate TLS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `client_max_body_size` (e.g. `"8m"`); `None` means unlimited.
    pub max_body: Option<String>,
    /// `limit_rate` on responses (e.g. `"1m"` = 1 MiB/s per connection).
    /// Beware: this front proxies with `proxy_buffering off`, and an
    /// unbuffered proxied response was measured not to be slowed by it (a
    /// 1.2 MB blob in ~0.1 s at "300k"); for a slow link use the fault
    /// proxy's `Faults::bandwidth`, or an `extra` location with
    /// `proxy_buffering on` as operations.rs does.
    pub limit_rate: Option<String>,
    /// Answer `HEAD` on `/v2/<name>/manifests/<ref>` with this status
    /// (e.g. 405 or 400) instead of proxying it.
    pub refuse_manifest_head: Option<u16>,
    /// Answer every `/v2/` request with `307` to this base URL (scheme,
    /// host and port; the request path and query are appended) instead of
    /// proxying it.
    pub redirect_to: Option<String>,
    /// Extra directives placed inside the `server` block.
    pub extra: String,
    /// Do not pass `X-Forwarded-Proto` upstream (a TLS front set up that
    /// way makes distribution hand out `http://` upload locations).
    pub no_forwarded_proto: bool,
}

/// A running nginx.
pub struct Nginx {
    child: Child,
    dir: TempDir,
    pub port: u16,
    /// `http://127.0.0.1:PORT` or `https://…` with TLS.
    pub url: String,
}

/// The path of the nginx binary.
pub fn nginx_binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("nginx is not installed: run `apt-get install -y nginx-light` (the test script does this)");
}

impl Nginx {
    /// Start nginx in front of `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, front: Front) -> Nginx {
        let dir = tempfile::Builder::new().prefix("regferry-nginx-").tempdir().expect("temp dir");
        let port = free_port();
        let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir_all(dir.path().join(sub)).expect("nginx temp dir");
        }
        // One process (no master), so killing the child stops nginx. As
        // root, nginx would otherwise drop to `nobody`, who cannot write the
        // temporary directories.
        let user = if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" };
        let listen = match &front.tls {
            Some((cert, key)) => format!(
                "listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n",
                cert.display(),
                key.display()
            ),
            None => format!("listen 127.0.0.1:{port};\n"),
        };
        let forwarded_proto = if front.no_forwarded_proto { "" } else { "proxy_set_header X-Forwarded-Proto $scheme;" };
        let max_body = front.max_body.clone().unwrap_or_else(|| "0".into());
        let limit_rate = front.limit_rate.as_ref().map(|r| format!("limit_rate {r};\n")).unwrap_or_default();
        let v2 = match &front.redirect_to {
            Some(target) => format!("location /v2/ {{ return 307 {}$request_uri; }}\n", target.trim_end_matches('/')),
            None => {
                let head = front
                    .refuse_manifest_head
                    .map(|status| {
                        format!(
                            "location ~ ^/v2/.+/manifests/ {{\n      if ($request_method = HEAD) {{ return {status}; }}\n      proxy_pass {upstream};\n    }}\n"
                        )
                    })
                    .unwrap_or_default();
                format!("{head}    location / {{ proxy_pass {upstream}; }}\n")
            }
        };
        let config = format!(
            "{user}worker_processes 1;\n\
             master_process off;\n\
             daemon off;\n\
             pid {pid};\n\
             error_log {error} info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  \
               map $http_authorization $auth_seen {{ \"\" no; default yes; }}\n  \
               log_format front '$request_method $request_uri $status $request_length $bytes_sent auth=$auth_seen tls=$https';\n  \
               access_log {access} front;\n  \
               client_body_temp_path {body};\n  proxy_temp_path {proxy};\n  fastcgi_temp_path {fastcgi};\n  \
               uwsgi_temp_path {uwsgi};\n  scgi_temp_path {scgi};\n  \
               server {{\n    {listen}    \
                 client_max_body_size {max_body};\n    \
                 proxy_request_buffering off;\n    proxy_buffering off;\n    proxy_http_version 1.1;\n    \
                 proxy_set_header Host $http_host;\n    {forwarded_proto}\n    \
                 proxy_read_timeout 900s;\n    proxy_send_timeout 900s;\n    \
                 {limit_rate}    {v2}    {extra}\n  \
               }}\n\
             }}\n",
            pid = p("nginx.pid"),
            error = p("error.log"),
            access = p("access.log"),
            body = p("body"),
            proxy = p("proxy"),
            fastcgi = p("fastcgi"),
            uwsgi = p("uwsgi"),
            scgi = p("scgi"),
            extra = front.extra,
        );
        let conf = dir.path().join("nginx.conf");
        fs::write(&conf, config).expect("nginx config");
        let log = fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .stdin(Stdio::null())
            .spawn()
            .expect("start nginx");
        let scheme = if front.tls.is_some() { "https" } else { "http" };
        let mut nginx = Nginx { child, dir, port, url: format!("{scheme}://127.0.0.1:{port}") };
        nginx.wait_ready();
        nginx
    }

    fn wait_ready(&mut self) {
        if let Err(why) = wait_listening(self.port, Duration::from_secs(20), || self.child.try_wait().ok().flatten()) {
            panic!("nginx {why}; log:\n{}", self.error_log());
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What nginx wrote to its error log and stderr.
    pub fn error_log(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// Access-log lines: `METHOD URI STATUS REQUEST_LENGTH BYTES_SENT
    /// auth=yes|no tls=on|` (whether the request carried `Authorization`,
    /// and whether it came over TLS: a plain-http request to a TLS port is
    /// logged with status 400 and `tls=`).
    pub fn access_lines(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// Requests with `method` whose URI contains `uri_part` and that were
    /// answered with `status` (any status when `None`).
    pub fn count(&self, method: &str, uri_part: &str, status: Option<u16>) -> usize {
        self.access_lines()
            .iter()
            .filter(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() >= 3 && f[0] == method && f[1].contains(uri_part) && status.is_none_or(|s| f[2] == s.to_string())
            })
            .count()
    }

    /// Stop nginx now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TestRegistry;
    use crate::tls::Pki;

    fn client(ca: Option<&Path>) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca {
            for c in reqwest::Certificate::from_pem_bundle(&fs::read(ca).unwrap()).unwrap() {
                b = b.add_root_certificate(c);
            }
        }
        b.build().unwrap()
    }

    #[tokio::test]
    async fn fronts_take_their_shapes() {
        let registry = TestRegistry::start();
        let pki = Pki::new();
        let tls = Nginx::start(
            &registry.url,
            Front { tls: Some((pki.cert.clone(), pki.key.clone())), max_body: Some("1k".into()), refuse_manifest_head: Some(405), ..Front::default() },
        );
        let c = client(Some(&pki.ca));
        let v2 = c.get(format!("{}/v2/", tls.url)).send().await.unwrap();
        assert_eq!(v2.status(), 200, "{}", tls.error_log());
        let head = c.head(format!("{}/v2/x/manifests/latest", tls.url)).send().await.unwrap();
        assert_eq!(head.status(), 405);
        let get = c.get(format!("{}/v2/x/manifests/latest", tls.url)).send().await.unwrap();
        assert_eq!(get.status(), 404, "GET is proxied to the registry");
        let big = c.post(format!("{}/v2/x/blobs/uploads/", tls.url)).body(vec![0u8; 4096]).send().await.unwrap();
        assert_eq!(big.status(), 413);
        assert_eq!(tls.count("HEAD", "/manifests/", Some(405)), 1, "{:?}", tls.access_lines());

        let redirect = Nginx::start(&registry.url, Front { redirect_to: Some(registry.url.clone()), ..Front::default() });
        let r = client(None).get(format!("{}/v2/_catalog?n=5", redirect.url)).send().await.unwrap();
        assert_eq!(r.status(), 307);
        assert_eq!(r.headers()["location"].to_str().unwrap(), format!("{}/v2/_catalog?n=5", registry.url));
    }
}
