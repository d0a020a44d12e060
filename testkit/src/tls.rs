//! A throwaway private CA and a server certificate for `127.0.0.1` /
//! `localhost`, plus a client certificate for mutual TLS, written as PEM
//! files, for registries served over TLS.

use std::fs;
use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tempfile::TempDir;

/// PEM files of a private CA and a server certificate it signed. The files
/// live as long as this value.
pub struct Pki {
    dir: TempDir,
    /// The CA certificate (what a client must trust).
    pub ca: PathBuf,
    /// The server certificate and its key (what the registry serves).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate signed by the same CA and its key (mTLS).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new().prefix("regferry-pki-").tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.distinguished_name.push(DnType::CommonName, "regferry test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, "regferry test registry");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client_params.distinguished_name.push(DnType::CommonName, "regferry test client");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &issuer).expect("client certificate");

        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            fs::write(&path, pem).expect("write PEM");
            path
        };
        let ca = write("ca.pem", ca_cert.pem());
        let cert_path = write("server.pem", cert.pem());
        let key_path = write("server.key", key.serialize_pem());
        let client_cert = write("client.pem", client.pem());
        let client_key = write("client.key", client_key.serialize_pem());
        Pki { dir, ca, cert: cert_path, key: key_path, client_cert, client_key }
    }

    /// A file in the PKI directory (for decoys such as an unrelated CA).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
