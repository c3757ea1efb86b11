//! Mutual TLS the way a ztunnel peer speaks it (TLS 1.3, AES-GCM, ALPN `h2`, no
//! SNI), from PEM files, with SPIFFE identities read from the URI SANs by a small
//! DER reader of our own (no certificate library shared with the product).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read PEM file {path}: {source}")]
    Pem { path: String, source: rustls_pki_types::pem::Error },
    #[error("{0} holds no certificate")]
    Empty(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// One identity's PEM files and the mesh root that every peer is checked against.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Leaf certificate (chain) PEM.
    pub cert: PathBuf,
    /// PKCS#8 private key PEM.
    pub key: PathBuf,
    /// Trust root PEM.
    pub root: PathBuf,
}

impl TlsFiles {
    /// host-shim's CA layout (`<dir>/root.pem`, `<dir>/<ns>.<sa>.cert.pem`, `<dir>/<ns>.<sa>.key.pem`),
    /// written out here rather than asked of host-shim.
    pub fn in_ca_dir(dir: &Path, namespace: &str, service_account: &str) -> Self {
        Self {
            cert: dir.join(format!("{namespace}.{service_account}.cert.pem")),
            key: dir.join(format!("{namespace}.{service_account}.key.pem")),
            root: dir.join("root.pem"),
        }
    }
}

/// ztunnel's suites: TLS 1.3 with AES-GCM only.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(provider)
}

struct Loaded {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| pem_error(&files.key, source))?;
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&files.root)? {
        roots.add(cert)?;
    }
    Ok(Loaded { chain, key, roots: Arc::new(roots) })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem_error(path, source))?;
    if certs.is_empty() {
        return Err(TlsError::Empty(path.display().to_string()));
    }
    Ok(certs)
}

fn pem_error(path: &Path, source: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), source }
}

/// A destination's side: its own certificate; a client certificate chaining to the root is required.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let loaded = load(files)?;
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(loaded.roots, provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(loaded.chain, loaded.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client's side: its own certificate; the server's chain must reach the root and,
/// when `server_identity` is set, one of its URI SANs must equal it.
pub fn client_config(files: &TlsFiles, server_identity: Option<&str>) -> Result<Arc<ClientConfig>, TlsError> {
    let loaded = load(files)?;
    let provider = provider();
    let verifier = Arc::new(IdentityVerifier {
        roots: loaded.roots,
        expected: server_identity.map(str::to_owned),
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(loaded.chain, loaded.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The name handed to rustls: unused (no SNI; identities are URI SANs).
pub(crate) fn unused_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The URI SANs of the peer's leaf certificate on an established connection.
pub(crate) fn peer_uris(state: &rustls::CommonState) -> Vec<String> {
    state.peer_certificates().and_then(|certs| certs.first()).map(|leaf| uri_sans(leaf)).unwrap_or_default()
}

#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for IdentityVerifier {
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
        match &self.expected {
            Some(expected) if !uri_sans(end_entity).iter().any(|uri| uri == expected) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            }
            _ => Ok(ServerCertVerified::assertion()),
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

/// One DER TLV: (tag, contents, rest). Definite lengths up to 4 bytes; anything else is `None`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (bytes.iter().fold(0usize, |len, b| (len << 8) | usize::from(*b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

const SEQUENCE: u8 = 0x30;
const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT in TBSCertificate
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const URI_NAME: u8 = 0x86; // GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String
const SUBJECT_ALT_NAME: [u8; 3] = [0x55, 0x1d, 0x11]; // 2.5.29.17

/// The URI SANs of a DER certificate, in order (a malformed certificate has none).
pub fn uri_sans(cert: &[u8]) -> Vec<String> {
    sans(cert).unwrap_or_default()
}

fn sans(cert: &[u8]) -> Option<Vec<String>> {
    let (SEQUENCE, certificate, _) = tlv(cert)? else { return None };
    let (SEQUENCE, mut tbs, _) = tlv(certificate)? else { return None };
    while !tbs.is_empty() {
        let (tag, contents, rest) = tlv(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (SEQUENCE, mut extensions, _) = tlv(contents)? else { return None };
        while !extensions.is_empty() {
            let (SEQUENCE, extension, rest) = tlv(extensions)? else { return None };
            extensions = rest;
            let (OID, oid, mut fields) = tlv(extension)? else { return None };
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            let (mut tag, mut value, rest) = tlv(fields)?;
            if tag == BOOLEAN {
                fields = rest;
                (tag, value, _) = tlv(fields)?;
            }
            if tag != OCTET_STRING {
                return None;
            }
            let (SEQUENCE, mut names, _) = tlv(value)? else { return None };
            let mut uris = Vec::new();
            while !names.is_empty() {
                let (tag, name, rest) = tlv(names)?;
                names = rest;
                if tag == URI_NAME {
                    uris.push(String::from_utf8_lossy(name).into_owned());
                }
            }
            return Some(uris);
        }
    }
    Some(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_or_garbage_der_has_no_sans() {
        assert!(uri_sans(&[]).is_empty());
        assert!(uri_sans(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(uri_sans(&[0x30, 0x02, 0x30]).is_empty());
    }

    #[test]
    fn a_hand_built_san_extension_is_read() {
        // SEQUENCE { SEQUENCE { [3] { SEQUENCE { SEQUENCE { OID 2.5.29.17, BOOLEAN true,
        //   OCTET STRING { SEQUENCE { [6] "spiffe://a/ns/b/sa/c", [2] "dns" } } } } } } }
        let uri = b"spiffe://a/ns/b/sa/c";
        let mut names = vec![URI_NAME, uri.len() as u8];
        names.extend_from_slice(uri);
        names.extend_from_slice(&[0x82, 3, b'd', b'n', b's']);
        let wrap = |tag: u8, body: &[u8]| {
            let mut out = vec![tag, body.len() as u8];
            out.extend_from_slice(body);
            out
        };
        let general_names = wrap(SEQUENCE, &names);
        let mut extension = wrap(OID, &SUBJECT_ALT_NAME);
        extension.extend(wrap(BOOLEAN, &[0xff]));
        extension.extend(wrap(OCTET_STRING, &general_names));
        let extensions = wrap(EXTENSIONS, &wrap(SEQUENCE, &wrap(SEQUENCE, &extension)));
        let mut tbs = wrap(0x02, &[1]);
        tbs.extend(extensions);
        let cert = wrap(SEQUENCE, &wrap(SEQUENCE, &tbs));
        assert_eq!(uri_sans(&cert), vec!["spiffe://a/ns/b/sa/c".to_owned()]);
    }
}
