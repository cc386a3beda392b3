//! Behind an authenticating proxy (Cloudflare Access, oauth2-proxy, an OIDC gateway): every
//! request carries a JWT assertion, verified here against the issuer's keys (a JWKS file), its
//! issuer, audience and expiry. A bare "trusted" user name header is never accepted: anyone who
//! reaches the listener past the proxy could send one.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::config::JwtConfig;
use super::users::Role;

/// Asymmetric algorithms only: a JWKS holds public keys, and accepting an HMAC algorithm
/// would let a token be "signed" with a public key as the shared secret.
const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Checks assertions; the JWKS file is read again when it changes (keys rotate).
#[derive(Debug)]
pub struct JwtVerifier {
    config: JwtConfig,
    keys: Mutex<Option<(Option<SystemTime>, JwkSet)>>,
}

/// Why an assertion was refused: logged, never shown (the answer is a bare 401).
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("no {0} header")]
    Missing(String),
    #[error("cannot read the JWKS file {path}: {message}")]
    Keys { path: PathBuf, message: String },
    #[error("the token names no key of the JWKS (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("algorithm {0:?} is not accepted (asymmetric algorithms only)")]
    Algorithm(Algorithm),
    #[error("the token does not verify: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token has no {0:?} claim naming the user (letters, digits and . _ @ -)")]
    NoUser(String),
}

impl JwtVerifier {
    pub fn new(config: JwtConfig) -> Self {
        Self {
            config,
            keys: Mutex::new(None),
        }
    }

    pub fn header(&self) -> &str {
        &self.config.header
    }

    fn keys(&self) -> Result<JwkSet, JwtError> {
        let path = &self.config.jwks_file;
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cached = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, keys)) = cached.as_ref()
            && *seen == stamp
            && stamp.is_some()
        {
            return Ok(keys.clone());
        }
        let bad = |message: String| JwtError::Keys {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let keys: JwkSet = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        *cached = Some((stamp, keys.clone()));
        Ok(keys)
    }

    /// The user and role an assertion stands for.
    pub fn verify(&self, token: &str) -> Result<(String, Role), JwtError> {
        let header = jsonwebtoken::decode_header(token)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(JwtError::Algorithm(header.alg));
        }
        let keys = self.keys()?;
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            // One key and no kid: that key.
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| JwtError::UnknownKey(header.kid.clone()))?;
        let key = DecodingKey::from_jwk(jwk)?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)?.claims;
        let user = claims
            .get(&self.config.user_claim)
            .and_then(|v| v.as_str())
            // Shown on pages and written to logs: a name or an email address, nothing else.
            .filter(|u| super::users::valid_name(u))
            .ok_or_else(|| JwtError::NoUser(self.config.user_claim.clone()))?
            .to_string();
        let role = if self.config.operators.iter().any(|o| o == &user) {
            Role::Operator
        } else {
            Role::Viewer
        };
        Ok((user, role))
    }
}
