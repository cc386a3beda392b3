//! The run's certificates, made fresh each run: a CA for the fake upstream with one leaf for
//! every name the scenarios use, and one interception CA that every proxy signs its leaves
//! with (P-256, as Cordon's own), so the load generator trusts exactly one root per route.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};

/// Names the upstream's certificate covers: the plain host, the unique hosts of scenario 3,
/// and the API host of the injection scenario.
pub(crate) const UPSTREAM_NAMES: &[&str] = &["bench.test", "*.bench.test", "api.github.com"];

#[derive(Debug)]
pub(crate) struct Pki {
    pub upstream_ca: PathBuf,
    pub upstream_cert: PathBuf,
    pub upstream_key: PathBuf,
    pub intercept_ca: PathBuf,
    pub intercept_key: PathBuf,
}

pub(crate) fn create(dir: &Path) -> anyhow::Result<Pki> {
    let (upstream_ca_params, upstream_ca_key, upstream_ca_pem) = ca("Cordon bench upstream CA")?;
    let issuer = Issuer::new(upstream_ca_params, upstream_ca_key);
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("leaf key")?;
    let mut leaf = CertificateParams::new(
        UPSTREAM_NAMES
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>(),
    )
    .context("leaf names")?;
    leaf.distinguished_name
        .push(DnType::CommonName, "bench.test");
    let leaf = leaf
        .signed_by(&leaf_key, &issuer)
        .context("signing the leaf")?;
    let (_, intercept_key, intercept_pem) = ca("Cordon bench interception CA")?;
    let pki = Pki {
        upstream_ca: dir.join("upstream-ca.pem"),
        upstream_cert: dir.join("upstream.pem"),
        upstream_key: dir.join("upstream-key.pem"),
        intercept_ca: dir.join("intercept-ca.pem"),
        intercept_key: dir.join("intercept-ca-key.pem"),
    };
    write(&pki.upstream_ca, &upstream_ca_pem)?;
    write(&pki.upstream_cert, &leaf.pem())?;
    write(&pki.upstream_key, &leaf_key.serialize_pem())?;
    write(&pki.intercept_ca, &intercept_pem)?;
    write(&pki.intercept_key, &intercept_key.serialize_pem())?;
    Ok(pki)
}

fn ca(name: &str) -> anyhow::Result<(CertificateParams, KeyPair, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).context("self-signing the CA")?;
    Ok((params, key, cert.pem()))
}

fn write(path: &Path, pem: &str) -> anyhow::Result<()> {
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))
}
