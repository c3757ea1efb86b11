//! The mesh CA: one root and one key + certificate per SPIFFE identity, made at
//! run time so nothing secret is ever committed.
//!
//! Layout of the output directory (what Envoy configs point at):
//! - `root.pem`: the root certificate, the trust anchor of every peer;
//! - `<ns>.<sa>.cert.pem`: the leaf for `spiffe://<td>/ns/<ns>/sa/<sa>`;
//! - `<ns>.<sa>.key.pem`: its PKCS#8 private key (mode 0600).
//!
//! The root key is never written: re-run `host-shim ca` to issue more identities.
//! Leaves are ECDSA P-256 like Istio's, with the identity as their only (URI) SAN,
//! an empty subject (so the SAN is critical) and both server and client auth.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use waypoint_core::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0:?} is not a SPIFFE identity spiffe://<trust domain>/ns/<ns>/sa/<sa>")]
    NotSpiffe(String),
    #[error("two identities share the file name {0}.*.pem")]
    SameFileName(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// Where the CA puts (and the shim and Envoy find) each file.
#[derive(Debug, Clone)]
pub struct CertDir(pub PathBuf);

impl CertDir {
    pub fn root(&self) -> PathBuf {
        self.0.join("root.pem")
    }

    pub fn cert(&self, identity: &str) -> Result<PathBuf, CaError> {
        Ok(self.0.join(format!("{}.cert.pem", file_stem(identity)?)))
    }

    pub fn key(&self, identity: &str) -> Result<PathBuf, CaError> {
        Ok(self.0.join(format!("{}.key.pem", file_stem(identity)?)))
    }
}

fn file_stem(identity: &str) -> Result<String, CaError> {
    let id = SpiffeId::parse(identity).ok_or_else(|| CaError::NotSpiffe(identity.to_owned()))?;
    Ok(format!("{}.{}", id.namespace, id.service_account))
}

/// Writes a fresh root and one leaf per identity into `dir` (created if missing).
pub fn generate(dir: &Path, identities: &[String]) -> Result<CertDir, CaError> {
    let out = CertDir(dir.to_owned());
    let mut stems = std::collections::HashSet::new();
    for identity in identities {
        let stem = file_stem(identity)?;
        if !stems.insert(stem.clone()) {
            return Err(CaError::SameFileName(stem));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CaError::Write { path: dir.display().to_string(), source })?;

    let root_key = KeyPair::generate()?;
    let mut root = CertificateParams::default();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    root.distinguished_name.push(DnType::OrganizationName, "host-shim");
    root.distinguished_name.push(DnType::CommonName, "host-shim mesh root");
    write(&out.root(), root.self_signed(&root_key)?.pem().as_bytes(), false)?;
    let issuer = Issuer::new(root, root_key);

    for identity in identities {
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::default();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        leaf.use_authority_key_identifier_extension = true;
        let cert = leaf.signed_by(&key, &issuer)?;
        write(&out.cert(identity)?, cert.pem().as_bytes(), false)?;
        write(&out.key(identity)?, key.serialize_pem().as_bytes(), true)?;
    }
    Ok(out)
}

fn write(path: &Path, contents: &[u8], secret: bool) -> Result<(), CaError> {
    let fail = |source| CaError::Write { path: path.display().to_string(), source };
    let mode = if secret { 0o600 } else { 0o644 };
    // `mode` applies only to a file this call creates; an existing file keeps its own,
    // so set it on the open file too, truncated and before the key is written into it.
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(fail)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    file.write_all(contents).map_err(fail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const CURL: &str = "spiffe://cluster.local/ns/default/sa/curl";

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_key_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = generate(dir.path(), &[CURL.to_owned()]).unwrap();
        assert_eq!(mode(&out.key(CURL).unwrap()), 0o600);
        assert_eq!(mode(&out.cert(CURL).unwrap()), 0o644);
    }

    #[test]
    fn an_existing_key_file_with_another_mode_becomes_private_when_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("default.curl.key.pem");
        std::fs::write(&key, "old key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(mode(&key), 0o644);
        generate(dir.path(), &[CURL.to_owned()]).unwrap();
        assert_eq!(mode(&key), 0o600);
        assert!(std::fs::read_to_string(&key).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    }
}
