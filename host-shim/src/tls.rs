//! Mutual TLS as ztunnel speaks it: TLS 1.3 only, AES-GCM suites, ALPN `h2`,
//! no SNI; identities are SPIFFE URI SANs. The server accepts any client
//! certificate from the mesh root whose identity is in its trust domain; the
//! client accepts only a server whose identity is one it expects.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use waypoint_core::{Peer, SpiffeId};

use mesh::ca::{CaError, CertDir};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Path(#[from] CaError),
    #[error("cannot read PEM file {path}: {source}")]
    Pem { path: String, source: rustls::pki_types::pem::Error },
    #[error("no certificate loaded for identity {0}")]
    UnknownIdentity(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Why a peer's certificate was refused after its chain verified.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer certificate has no SPIFFE identity in trust domain {0}")]
    ForeignTrustDomain(String),
    #[error("peer identities {found:?} are not any of the expected {expected:?}")]
    Unexpected { found: Vec<String>, expected: Vec<String> },
}

/// A failed handshake, sorted into the causes the refusal counters name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client presented no certificate.
    NoClientCert,
    /// The chain verified but the SPIFFE identity is not acceptable.
    PeerIdentity,
    /// The chain did not verify (unknown CA, expired, wrong key usage ...).
    UntrustedCert,
    /// Anything else: protocol errors, alerts, a timeout, a reset.
    Other,
}

impl HandshakeFailure {
    pub fn classify(err: &std::io::Error) -> Self {
        let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
            return Self::Other;
        };
        match tls {
            rustls::Error::NoCertificatesPresented => Self::NoClientCert,
            rustls::Error::InvalidCertificate(CertificateError::Other(other))
                if other.0.downcast_ref::<PeerIdentityError>().is_some() =>
            {
                Self::PeerIdentity
            }
            rustls::Error::InvalidCertificate(_) => Self::UntrustedCert,
            _ => Self::Other,
        }
    }
}

/// ztunnel's suites: TLS 1.3 with AES-GCM only.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(provider)
}

struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The mesh root and the keys of the identities this process speaks for.
pub struct Credentials {
    trust_domain: String,
    roots: Arc<RootCertStore>,
    identities: HashMap<String, Identity>,
    provider: Arc<CryptoProvider>,
}

impl Credentials {
    /// Loads the root and the given identities from a `host-shim ca` directory.
    pub fn load<'a>(
        dir: &CertDir,
        trust_domain: &str,
        identities: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&dir.root())? {
            roots.add(cert)?;
        }
        let mut loaded = HashMap::new();
        for identity in identities {
            let chain = read_certs(&dir.cert(identity)?)?;
            let key_path = dir.key(identity)?;
            let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|source| pem_error(&key_path, source))?;
            loaded.insert(identity.to_owned(), Identity { chain, key });
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            roots: Arc::new(roots),
            identities: loaded,
            provider: provider(),
        })
    }

    fn identity(&self, identity: &str) -> Result<&Identity, TlsError> {
        self.identities.get(identity).ok_or_else(|| TlsError::UnknownIdentity(identity.to_owned()))
    }

    /// The inbound side of `identity`: client certificates required, from our trust domain.
    pub fn server_config(&self, identity: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let own = self.identity(identity)?;
        let webpki = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone()).build()?;
        let verifier = Arc::new(TrustDomainVerifier { inner: webpki, trust_domain: self.trust_domain.clone() });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(own.chain.clone(), own.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The outbound side of `identity`, accepting only a server presenting one of `expected`.
    pub fn client_config(&self, identity: &str, expected: &[String]) -> Result<Arc<ClientConfig>, TlsError> {
        let own = self.identity(identity)?;
        let verifier = Arc::new(ExpectedIdentityVerifier {
            roots: self.roots.clone(),
            expected: expected.to_vec(),
            provider: self.provider.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(own.chain.clone(), own.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.enable_sni = false;
        Ok(Arc::new(config))
    }
}

/// The server name handed to rustls: unused (no SNI, identities are checked by SAN).
pub fn unused_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem_error(path, source))
}

fn pem_error(path: &Path, source: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), source }
}

/// The URI SANs of a certificate: its SPIFFE identities.
pub fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(cert) else { return Vec::new() };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The identity a certificate stands for: its first URI SAN that is a SPIFFE
/// identity (ztunnel's `identity()`; Istio's filters also take the first).
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    uri_sans(cert).into_iter().find(|uri| SpiffeId::parse(uri).is_some())
}

/// The peer's SPIFFE identity on an established connection.
pub fn peer_identity(conn: &CommonState) -> Option<String> {
    identity_of(conn.peer_certificates()?.first()?)
}

/// What pinning a peer to its verified identity found in its baggage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityCheck {
    /// Baggage named the identity's namespace.
    Agreed,
    /// Baggage named no namespace; the identity's fills it.
    Filled,
    /// Baggage named another namespace; the identity's replaces it (counted).
    Contradicted,
    /// No SPIFFE identity to pin to (nothing verified): baggage stands.
    NoIdentity,
}

/// Makes `identity` the peer's principal and its namespace the peer's namespace:
/// a certificate is verified, baggage is only claimed (PROTOCOL.md §4).
pub fn pin_to_identity(peer: &mut Peer, identity: &str) -> IdentityCheck {
    identity.clone_into(&mut peer.principal);
    let Some(id) = SpiffeId::parse(identity) else { return IdentityCheck::NoIdentity };
    let check = if peer.namespace.is_empty() {
        IdentityCheck::Filled
    } else if peer.namespace == id.namespace {
        IdentityCheck::Agreed
    } else {
        IdentityCheck::Contradicted
    };
    id.namespace.clone_into(&mut peer.namespace);
    check
}

fn refuse(err: PeerIdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Chain verification by webpki, then the trust domain of the client's identity.
#[derive(Debug)]
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        // The identity that will label the peer is the one that must be in our domain.
        let identity = identity_of(end_entity);
        let in_domain =
            identity.as_deref().and_then(SpiffeId::parse).is_some_and(|id| id.trust_domain == self.trust_domain);
        if !in_domain {
            return Err(refuse(PeerIdentityError::ForeignTrustDomain(self.trust_domain.clone())));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// rustls checks DNS names; HBONE checks the URI SAN against the identities the
/// destination may have, after webpki verified the chain to the mesh root.
#[derive(Debug)]
struct ExpectedIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExpectedIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        // The identity that will label the peer must be one we expect, not just any SAN.
        match identity_of(end_entity) {
            Some(identity) if self.expected.contains(&identity) => Ok(ServerCertVerified::assertion()),
            _ => Err(refuse(PeerIdentityError::Unexpected {
                found: uri_sans(end_entity),
                expected: self.expected.clone(),
            })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
