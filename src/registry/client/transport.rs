//! Building a [`RegistryClient`]: the process-wide rustls provider, the
//! CA bundle, and its two HTTP clients (ordinary requests, with the stall
//! timeout as read timeout; streamed bodies, without one). And naming what
//! went wrong on the way to a registry: [`describe`] gives a reqwest
//! error's chain of causes, [`RegistryClient::transport_error`] tells a
//! refused certificate or a server that does not speak TLS (which trying
//! again cannot help, so they come with a hint) from an ordinary connection
//! or transport failure.
//!
//! This module never sends a request, never logs a header value and never
//! puts a query string into an error: a failed request is named by its
//! registry, method and path, and [`describe`] drops the URLs reqwest puts
//! into its messages.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use reqwest::Method;
use url::Url;

use super::{ClientOptions, RegistryClient};
use crate::registry::authn::Authenticator;
use crate::registry::endpoint::Endpoint;
use crate::registry::error::RegistryError;
use crate::registry::gate::Gate;
use crate::registry::usage::Usage;

static CRYPTO: Once = Once::new();

/// Install the process-wide rustls crypto provider (ring) once.
fn ensure_crypto_provider() {
    CRYPTO.call_once(|| {
        // An error only means a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Build the message of a reqwest error: its chain of causes, without URLs.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = if let Some(re) = err.downcast_ref::<reqwest::Error>() {
            let mut s = re.to_string();
            if let Some(url) = re.url() {
                s = s.replace(&format!(" for url ({url})"), "").replace(&format!(" ({url})"), "");
            }
            s
        } else {
            err.to_string()
        };
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    if e.is_timeout() && !parts.iter().any(|p| p.contains("timed out")) {
        parts.push("timed out".into());
    }
    parts.join(": ")
}

/// Why a TLS handshake failed, when trying again cannot help.
enum TlsFailure {
    /// The server's certificate was refused.
    Untrusted,
    /// The server answered with something that is not TLS.
    NotTls,
}

fn tls_failure(e: &reqwest::Error) -> Option<TlsFailure> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        // rustls errors travel inside (nested) io::Errors, whose `source`
        // skips the error they wrap.
        let mut inner: &(dyn std::error::Error + 'static) = err;
        while let Some(wrapped) = inner.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            inner = wrapped;
        }
        match inner.downcast_ref::<rustls::Error>() {
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => return Some(TlsFailure::Untrusted),
            Some(rustls::Error::InvalidMessage(_)) => return Some(TlsFailure::NotTls),
            _ => {}
        }
        current = err.source();
    }
    None
}

impl RegistryClient {
    /// Build a client for `endpoint`. Fails only on an unreadable CA bundle.
    pub fn new(endpoint: &Endpoint, options: &ClientOptions) -> Result<RegistryClient, RegistryError> {
        ensure_crypto_provider();
        let name = endpoint.url.base().as_str().trim_end_matches('/').to_string();
        let protocol = |message: String| RegistryError::Protocol { registry: name.clone(), message };
        let roots = match &endpoint.tls.ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| protocol(format!("cannot read CA bundle {}: {e}", ca.display())))?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| protocol(format!("CA bundle {} is not PEM: {e}", ca.display())))?
            }
            None => Vec::new(),
        };
        let build = |read_timeout: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("regferry/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(options.connect_timeout)
                .pool_max_idle_per_host(options.max_idle_per_host)
                .pool_idle_timeout(Duration::from_secs(50))
                .tcp_nodelay(true);
            if let Some(t) = read_timeout {
                builder = builder.read_timeout(t);
            }
            if endpoint.tls.insecure_skip_verify {
                builder = builder.danger_accept_invalid_certs(true);
            }
            builder = endpoint.configure_transport(builder).map_err(protocol)?;
            for cert in &roots {
                builder = builder.add_root_certificate(cert.clone());
            }
            builder.build().map_err(|e| protocol(format!("HTTP client: {}", describe(&e))))
        };
        let http = build(Some(options.stall_timeout))?;
        let upload_http = build(None)?;
        Ok(RegistryClient {
            authn: Authenticator::new(endpoint, &name, http.clone(), options.retry.clone()),
            http,
            upload_http,
            stall_timeout: options.stall_timeout,
            commit_timeout: options.commit_timeout.max(options.stall_timeout),
            chunk_size: endpoint.chunk_size,
            monolithic_refused: AtomicBool::new(false),
            chunk_limit: AtomicU64::new(0),
            url: endpoint.url.clone(),
            retry: options.retry.clone(),
            requests: AtomicU64::new(0),
            foreign: Default::default(),
            manifest_head: Default::default(),
            gate: Gate::new(name.clone(), &endpoint.limits),
            usage: Usage::default(),
            quota_probe: tokio::sync::Mutex::new(()),
            insecure: endpoint.tls.insecure_skip_verify,
            name,
        })
    }

    pub(crate) fn transport_error(&self, method: &Method, url: &Url, e: &reqwest::Error) -> RegistryError {
        let message = describe(e);
        if e.is_connect() {
            let hint = match tls_failure(e) {
                Some(TlsFailure::Untrusted) => Some(
                    "the registry's TLS certificate is not trusted: give its CA bundle (--from-ca/--to-ca, or a policy's \
                     ca_file), or turn verification off for this registry explicitly (--from-insecure/--to-insecure, or \
                     insecure: true)",
                ),
                Some(TlsFailure::NotTls) => {
                    Some("the server does not speak TLS there; if it is a plain-HTTP registry, say so with an http:// URL")
                }
                None => None,
            };
            if let Some(hint) = hint {
                return RegistryError::Tls { registry: self.name.clone(), message: format!("{message}; {hint}") };
            }
            RegistryError::Connect { registry: self.name.clone(), message }
        } else {
            RegistryError::Transport {
                registry: self.name.clone(),
                method: method.to_string(),
                path: url.path().to_string(),
                message,
            }
        }
    }
}
