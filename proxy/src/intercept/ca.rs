//! The interception certificate authority and the leaves it mints.
//!
//! One CA (generated into the state directory on first start unless configured) signs a leaf
//! per server name. Every leaf shares one P-256 key, generated at startup and never written to
//! disk: signing a leaf is then one ECDSA signature (tens of microseconds) instead of a key
//! generation. Each leaf gets a random serial, because rcgen's default serial derives from the
//! public key, and a shared key would give every leaf the same issuer+serial pair, which
//! browsers reject as a reissued certificate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::{CertifiedKey, SigningKey};

/// How long the generated CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves are back-dated by this much to tolerate clock skew between gateway and sandbox.
const LEAF_BACKDATE: Duration = Duration::from_secs(3600);

/// Why the CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum CaLoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "only one of the CA files exists ({present} is there, {missing} is not); restore the \
         missing one, or remove both to have a new CA generated"
    )]
    HalfPresent { present: PathBuf, missing: PathBuf },
    #[error("{path} is not a usable CA {what}: {reason}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("cannot create the CA: {0}")]
    Generate(String),
}

/// Why a leaf could not be minted.
#[derive(Debug, thiserror::Error)]
#[error("cannot mint a certificate for {name:?}: {reason}")]
pub struct MintError {
    pub name: String,
    pub reason: String,
}

/// The CA plus the shared leaf key.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_signing_key: Arc<dyn SigningKey>,
    leaf_validity: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("leaf_validity", &self.leaf_validity)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA from `cert_path`/`key_path`, or generates one there when both are absent.
    pub fn load_or_generate(
        cert_path: &Path,
        key_path: &Path,
        leaf_validity: Duration,
    ) -> Result<Self, CaLoadError> {
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {}
            (false, false) => generate_files(cert_path, key_path)?,
            (true, false) => {
                return Err(CaLoadError::HalfPresent {
                    present: cert_path.into(),
                    missing: key_path.into(),
                });
            }
            (false, true) => {
                return Err(CaLoadError::HalfPresent {
                    present: key_path.into(),
                    missing: cert_path.into(),
                });
            }
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaLoadError::Read {
                path: path.into(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Self::from_pem(&cert_pem, &key_pem, leaf_validity).map_err(|(what, reason)| {
            CaLoadError::Invalid {
                path: if what == "key" { key_path } else { cert_path }.into(),
                what,
                reason,
            }
        })
    }

    /// Builds the CA from PEM text. The error names which half is bad.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        leaf_validity: Duration,
    ) -> Result<Self, (&'static str, String)> {
        let ca_key = KeyPair::from_pem(key_pem).map_err(|e| ("key", e.to_string()))?;
        let cert_der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e: rustls::pki_types::pem::Error| ("certificate", e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, ca_key)
            .map_err(|e| ("certificate", e.to_string()))?;
        if issuer.key().public_key_raw() != public_key_of(&cert_der)?.as_slice() {
            return Err(("key", "does not belong to the CA certificate".to_string()));
        }
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ("key", format!("cannot generate the leaf key: {e}")))?;
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&leaf_der)
            .map_err(|e| ("key", format!("cannot use the leaf key: {e}")))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
            leaf_key,
            leaf_signing_key,
            leaf_validity,
        })
    }

    /// The CA certificate, PEM: what sandboxes must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// How long a minted leaf is valid.
    pub fn leaf_validity(&self) -> Duration {
        self.leaf_validity
    }

    /// Mints a leaf for `name` (a DNS name, or an IP address for clients without SNI), chained
    /// to the CA.
    pub fn mint(&self, name: &str) -> Result<Arc<CertifiedKey>, MintError> {
        let fail = |reason: String| MintError {
            name: name.to_string(),
            reason,
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // rcgen accepts any IA5 string; rustls's DnsName enforces DNS syntax.
                rustls::pki_types::DnsName::try_from(name)
                    .map_err(|e| fail(format!("not a valid DNS name: {e}")))?;
                SanType::DnsName(
                    name.to_string()
                        .try_into()
                        .map_err(|e| fail(format!("not a valid DNS name: {e}")))?,
                )
            }
        }];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + self.leaf_validity;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            self.leaf_signing_key.clone(),
        )))
    }
}

/// The raw public key bits of a certificate, to check a key file belongs to it.
fn public_key_of(cert_der: &CertificateDer<'_>) -> Result<Vec<u8>, (&'static str, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| ("certificate", e.to_string()))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as RFC 5280 DER integers want.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Generates a CA into the two paths; the key file is created 0600.
fn generate_files(cert_path: &Path, key_path: &Path) -> Result<(), CaLoadError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaLoadError::Generate(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Cordon Interception CA");
    dn.push(DnType::OrganizationName, "Cordon");
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - LEAF_BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaLoadError::Generate(e.to_string()))?;
    write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaLoadError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CaLoadError::Write {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// A CA generated into a temporary directory (kept alive by the returned guard).
    fn fresh_ca() -> (tempfile::TempDir, CertificateAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_generate(
            &dir.path().join("ca.pem"),
            &dir.path().join("k.pem"),
            DAY,
        )
        .unwrap();
        (dir, ca)
    }

    #[test]
    fn generates_a_ca_once_and_loads_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
        let first = CertificateAuthority::load_or_generate(&cert, &key, DAY).unwrap();
        let second = CertificateAuthority::load_or_generate(&cert, &key, DAY).unwrap();
        assert_eq!(first.cert_pem(), second.cert_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_a_lone_certificate_or_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
        CertificateAuthority::load_or_generate(&cert, &key, DAY).unwrap();
        std::fs::remove_file(&key).unwrap();
        let err = CertificateAuthority::load_or_generate(&cert, &key, DAY).unwrap_err();
        assert!(matches!(err, CaLoadError::HalfPresent { .. }), "{err}");
    }

    #[test]
    fn refuses_a_key_that_is_not_the_certificates() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let paths = |d: &tempfile::TempDir| (d.path().join("ca.pem"), d.path().join("k.pem"));
        let (cert_a, key_a) = paths(&a);
        let (cert_b, key_b) = paths(&b);
        CertificateAuthority::load_or_generate(&cert_a, &key_a, DAY).unwrap();
        CertificateAuthority::load_or_generate(&cert_b, &key_b, DAY).unwrap();
        let err = CertificateAuthority::load_or_generate(&cert_a, &key_b, DAY).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn minted_leaves_verify_against_the_ca_and_have_distinct_serials() {
        let (_dir, ca) = fresh_ca();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let mut serials = std::collections::HashSet::new();
        for name in ["pypi.org", "api.github.com", "pypi.org"] {
            let leaf = ca.mint(name).unwrap();
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &server_name, &[], now)
                .unwrap();
            let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
            assert!(
                serials.insert(parsed.raw_serial().to_vec()),
                "serial reused"
            );
        }
        let other = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
        let leaf = ca.mint("pypi.org").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &other, &[], now)
                .is_err()
        );
    }

    #[test]
    fn mints_ip_address_leaves_and_rejects_bad_names() {
        let (_dir, ca) = fresh_ca();
        assert!(ca.mint("192.0.2.7").is_ok());
        assert!(ca.mint("bad name with spaces").is_err());
    }
}
