//! The request side of placeholders: find them in a request, refuse the ones that may not go
//! where the request goes, and plan the swap of the rest for real values.
//!
//! Placeholders are looked for in every header value (and inside `Basic` credentials, which
//! git over HTTPS sends as base64 `user:password`) and in the request target. Only the headers
//! a secret names (`headers`, default `authorization`) are swapped; one in any other header is
//! refused, since a header the service stores or reflects transformed could carry the value
//! back. A placeholder in the URL is left as it is (it is worthless), but it still counts as an
//! attempt to send the secret there.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::placeholders::{Found, Owner, PlaceholderIndex};
use super::{Destination, InjectError, Presentation, Secret, SecretSet};

/// Headers the proxy itself consumes; never forwarded, so never swapped.
const NOT_FORWARDED: [&str; 2] = ["proxy-authorization", "proxy-connection"];

/// What to change in a request.
#[derive(Debug, Default)]
pub struct SwapPlan {
    /// Headers to rewrite: the name and its complete new list of values (order kept).
    pub headers: Vec<(http::HeaderName, Vec<Vec<u8>>)>,
    /// `secret->header` for each swap, for the audit log.
    pub swapped: Vec<String>,
}

/// Why a request carrying a placeholder is refused. Messages name the secret and the host,
/// never a value or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    #[error("a placeholder for secret {secret:?} of another session was sent from this session")]
    OtherSession { secret: String },
    #[error(
        "a placeholder for secret {secret:?} was sent to {host} (in the {location}), which is \
         outside the secret's binding: treated as an exfiltration attempt"
    )]
    Exfiltration {
        secret: String,
        host: String,
        location: &'static str,
    },
    #[error(
        "a placeholder for secret {secret:?} was sent in the {header} header, which is not one \
         of the secret's headers ({allowed}): treated as an exfiltration attempt (a header the \
         service stores or reflects could carry the value back in a form the scrubber does not \
         know); set headers = [...] on the secret if the service reads it there"
    )]
    Header {
        secret: String,
        header: String,
        allowed: String,
    },
    #[error("placeholder for {0}")]
    Binding(InjectError),
}

impl SwapError {
    /// Whether this is an exfiltration attempt (audited as such) rather than a request the
    /// binding merely does not cover.
    pub fn is_exfiltration(&self) -> bool {
        !matches!(self, SwapError::Binding(_))
    }
}

/// Plans the swaps for one request from `session` to `destination`.
pub fn plan_swaps(
    index: &PlaceholderIndex,
    secrets: &SecretSet,
    session: &str,
    destination: Destination<'_>,
    headers: &http::HeaderMap,
    target: &str,
) -> Result<SwapPlan, SwapError> {
    let mut plan = SwapPlan::default();
    if index.is_empty() {
        return Ok(plan);
    }
    let admit = |owner: &Owner, location: &'static str| -> Result<&Secret, SwapError> {
        if owner.session != session {
            return Err(SwapError::OtherSession {
                secret: owner.secret.clone(),
            });
        }
        secrets
            .resolve(&owner.secret, destination)
            .map_err(|e| match e {
                InjectError::HostNotBound { secret, host } => SwapError::Exfiltration {
                    secret,
                    host,
                    location,
                },
                other => SwapError::Binding(other),
            })
    };
    for found in index.find(target.as_bytes()) {
        admit(found.owner, "URL")?;
    }
    for name in headers.keys() {
        if NOT_FORWARDED.contains(&name.as_str()) {
            continue;
        }
        let mut changed = false;
        let mut values = Vec::new();
        for value in headers.get_all(name) {
            let bytes = value.as_bytes();
            let mut secrets_used = Vec::new();
            let in_header = |secret: &Secret| -> Result<(), SwapError> {
                if secret.swap_headers.iter().any(|h| h == name.as_str()) {
                    Ok(())
                } else {
                    Err(SwapError::Header {
                        secret: secret.name.clone(),
                        header: name.as_str().to_string(),
                        allowed: secret.swap_headers.join(", "),
                    })
                }
            };
            let mut new = replace(index, bytes, |owner| {
                let secret = admit(owner, "headers")?;
                in_header(secret)?;
                secrets_used.push(secret.name.clone());
                Ok(secret.value.expose().as_bytes())
            })?;
            // Inside Basic only as git sends it: `authorization`, a `basic` secret, exactly
            // `basic_user:placeholder`. Anything else could carry the value back in an
            // encoding the scrubber does not know (base64 under another user name), so it is
            // refused.
            if let Some(decoded) = basic_credentials(new.as_deref().unwrap_or(bytes)) {
                let found: Vec<_> = index.find(&decoded).collect();
                if let Some(first) = found.first() {
                    let secret = admit(first.owner, "headers")?;
                    in_header(secret)?;
                    let expected = match &secret.presentation {
                        Presentation::Basic { user } => Some(format!("{user}:")),
                        _ => None,
                    };
                    let exact = found.len() == 1
                        && name == http::header::AUTHORIZATION
                        && expected.as_deref().is_some_and(|prefix| {
                            decoded.len() == first.end
                                && decoded[..first.start] == *prefix.as_bytes()
                        });
                    if !exact {
                        return Err(SwapError::Binding(InjectError::BasicShape {
                            secret: secret.name.clone(),
                        }));
                    }
                    let user = expected.unwrap_or_default();
                    let pair = format!("{user}{}", secret.value.expose());
                    secrets_used.push(secret.name.clone());
                    new = Some(format!("Basic {}", STANDARD.encode(pair)).into_bytes());
                }
            }
            for secret in secrets_used {
                plan.swapped.push(format!("{secret}->{name}"));
            }
            changed |= new.is_some();
            values.push(new.unwrap_or_else(|| bytes.to_vec()));
        }
        if changed {
            plan.headers.push((name.clone(), values));
        }
    }
    Ok(plan)
}

/// `bytes` with every placeholder replaced by what `real` gives for its owner; `None` when
/// there is none.
fn replace<'s>(
    index: &PlaceholderIndex,
    bytes: &[u8],
    mut real: impl FnMut(&Owner) -> Result<&'s [u8], SwapError>,
) -> Result<Option<Vec<u8>>, SwapError> {
    let mut out: Option<Vec<u8>> = None;
    let mut last = 0;
    for Found { owner, start, end } in index.find(bytes) {
        let buf = out.get_or_insert_with(|| Vec::with_capacity(bytes.len() + 32));
        buf.extend_from_slice(&bytes[last..start]);
        buf.extend_from_slice(real(owner)?);
        last = end;
    }
    if let Some(buf) = &mut out {
        buf.extend_from_slice(&bytes[last..]);
    }
    Ok(out)
}

/// The decoded `user:password` of a `Basic` credential.
fn basic_credentials(value: &[u8]) -> Option<Vec<u8>> {
    let rest = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(b"basic "))
        .map(|_| &value[6..])?;
    STANDARD.decode(rest.trim_ascii()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{Binding, Placeholders, Presentation, SecretValue};

    fn secrets() -> SecretSet {
        SecretSet::new(vec![Secret {
            name: "git".into(),
            value: SecretValue::new("real-token".into()),
            binding: Binding {
                hosts: vec!["github.com".into()],
                methods: vec![],
                path_prefixes: vec![],
                allow_plaintext: false,
                allow_upgrade: false,
            },
            presentation: Presentation::Basic {
                user: "x-access-token".into(),
            },
            placeholder_prefix: "ghp_".into(),
            swap_headers: vec!["authorization".into(), "x-token".into()],
        }])
    }

    fn to(host: &str) -> Destination<'_> {
        Destination {
            host,
            method: "GET",
            path: "/",
            tls: true,
            upgrade: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn swaps_in_plain_headers_and_inside_basic() {
        let placeholders = Placeholders::default();
        let ph = placeholders.get_or_mint("s1", "git", "ghp_");
        let basic = format!("Basic {}", STANDARD.encode(format!("x-access-token:{ph}")));
        let request = headers(&[
            ("authorization", &basic),
            ("x-token", &format!("token {ph}")),
            ("accept", "*/*"),
        ]);
        let plan = plan_swaps(
            &placeholders.index(),
            &secrets(),
            "s1",
            to("github.com"),
            &request,
            "/repo.git/info/refs",
        )
        .unwrap();
        assert_eq!(plan.headers.len(), 2);
        let auth = &plan
            .headers
            .iter()
            .find(|h| h.0 == "authorization")
            .unwrap()
            .1[0];
        let decoded = basic_credentials(auth).unwrap();
        assert_eq!(decoded, b"x-access-token:real-token");
        let token = &plan.headers.iter().find(|h| h.0 == "x-token").unwrap().1[0];
        assert_eq!(token, b"token real-token");
        assert_eq!(plan.swapped.len(), 2);
    }

    #[test]
    fn a_header_the_secret_does_not_name_is_refused() {
        let placeholders = Placeholders::default();
        let ph = placeholders.get_or_mint("s1", "git", "ghp_");
        for (header, value) in [
            ("user-agent", format!("agent {ph}")),
            (
                "x-request-id",
                format!("Basic {}", STANDARD.encode(format!("x-access-token:{ph}"))),
            ),
        ] {
            let e = plan_swaps(
                &placeholders.index(),
                &secrets(),
                "s1",
                to("github.com"),
                &headers(&[(header, &value)]),
                "/",
            )
            .unwrap_err();
            assert!(e.is_exfiltration(), "{e}");
            let shown = e.to_string();
            assert!(
                shown.contains(header) && shown.contains("authorization, x-token"),
                "{shown}"
            );
            assert!(!shown.contains(&ph), "{shown}");
        }
    }

    #[test]
    fn basic_is_swapped_only_in_the_shape_git_sends() {
        let placeholders = Placeholders::default();
        let ph = placeholders.get_or_mint("s1", "git", "ghp_");
        let index = placeholders.index();
        for (name, pair) in [
            // Another user name, or anything around the placeholder.
            ("authorization", format!("zz{ph}")),
            ("authorization", format!("someone:{ph}")),
            ("authorization", format!("x-access-token:{ph}x")),
        ] {
            let value = format!("Basic {}", STANDARD.encode(&pair));
            let err = plan_swaps(
                &index,
                &secrets(),
                "s1",
                to("github.com"),
                &headers(&[(name, &value)]),
                "/",
            )
            .unwrap_err();
            assert!(
                matches!(err, SwapError::Binding(InjectError::BasicShape { .. })),
                "{name}: {pair}: {err}"
            );
        }
    }

    #[test]
    fn refuses_unbound_hosts_other_sessions_and_urls() {
        let placeholders = Placeholders::default();
        let ph = placeholders.get_or_mint("s1", "git", "ghp_");
        let index = placeholders.index();
        let request = headers(&[("authorization", &format!("Bearer {ph}"))]);
        let err = plan_swaps(&index, &secrets(), "s1", to("evil.test"), &request, "/").unwrap_err();
        assert!(err.is_exfiltration(), "{err}");
        assert!(!err.to_string().contains(&ph), "{err}");
        let err =
            plan_swaps(&index, &secrets(), "s2", to("github.com"), &request, "/").unwrap_err();
        assert_eq!(
            err,
            SwapError::OtherSession {
                secret: "git".into()
            }
        );
        let err = plan_swaps(
            &index,
            &secrets(),
            "s1",
            to("evil.test"),
            &http::HeaderMap::new(),
            &format!("/collect?t={ph}"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("in the URL"), "{err}");
        // No placeholder, nothing to do.
        let plan = plan_swaps(
            &index,
            &secrets(),
            "s1",
            to("evil.test"),
            &headers(&[("authorization", "Bearer mine")]),
            "/",
        )
        .unwrap();
        assert!(plan.headers.is_empty());
    }
}
