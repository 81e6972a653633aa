//! The stand-in's optional HTTPS listener: what a pod's in-cluster client needs. kube-rs (like
//! client-go) builds its in-cluster config from `KUBERNETES_SERVICE_HOST`/`_PORT` and the
//! service account directory, always speaks `https://` and sends the account's token as a
//! bearer token. So the listener serves TLS with a certificate from a per-run CA (whose
//! certificate becomes the pods' `ca.crt`), with the listener's IP addresses as subject
//! alternative names (kube-rs connects by IP and verifies it), and refuses any request that
//! does not carry the token.

use anyhow::{Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio_rustls::rustls;

/// A CA made for one run and the server certificate it signed.
pub struct ClusterCa {
    /// The CA certificate, PEM: what pods get as `ca.crt`.
    pub ca_pem: String,
    /// The same, DER.
    pub ca_der: Vec<u8>,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl ClusterCa {
    /// A fresh CA and a server certificate valid for `ips` (the addresses clients use).
    pub fn generate(ips: &[IpAddr]) -> Result<ClusterCa> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "palisade netns cluster CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().context("generate the CA key")?;
        let ca_cert = ca_params.self_signed(&ca_key).context("sign the CA")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let sans: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "palisade-apiserver");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generate the server key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .context("sign the server certificate")?;
        Ok(ClusterCa {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }

    fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(vec![self.cert_der.clone()], key)
        .context("TLS server certificate")?;
        // The stand-in speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// An HTTPS listener beside the plain one: same store, same API, but every request must
/// carry `Authorization: Bearer <bearer_token>`.
#[derive(Clone)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub ca: Arc<ClusterCa>,
    pub bearer_token: String,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    pub(crate) fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor> {
        Ok(tokio_rustls::TlsAcceptor::from(self.ca.server_config()?))
    }
}

/// Whether a request's `Authorization` header carries exactly `token` as a bearer token.
pub(crate) fn bearer_matches(header: Option<&hyper::header::HeaderValue>, token: &str) -> bool {
    header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match() {
        use hyper::header::HeaderValue;
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(bearer_matches(Some(&ok), "s3cret"));
        assert!(!bearer_matches(Some(&ok), "other"));
        assert!(!bearer_matches(
            Some(&HeaderValue::from_static("Basic s3cret")),
            "s3cret"
        ));
        assert!(!bearer_matches(None, "s3cret"));
    }
}
