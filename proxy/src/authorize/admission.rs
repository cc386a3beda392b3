//! The request checks that need nothing but the request head, its connection's facts and the
//! proxy's state: limits, host, session, host pinning, placeholders, the policy input and
//! decision, report mode and credential bindings. `Authorizer::authorize` runs them on a live
//! request, around the parts that need the client (reading a body) or the network
//! (resolving); the admin API's evaluate (`crate::admin::evaluate`) runs the same functions on
//! a request it is given, so what it answers is what a real request would meet.
//!
//! Nothing here counts metrics or writes audit records: the live caller does, after.

use std::sync::Arc;
use std::time::Instant;

use cordon_policy::input::{Authority, parse_authority};
use cordon_policy::{
    BodyInput, Generation, HttpProtocol, RequestBodyConfig, RequestInput, SessionInput,
};

use super::{Authorizer, Injection, MAX_REQUEST_HEADER_BYTES, RequestContext};
use crate::connection::ConnectionContext;
use crate::credentials::{Destination, SecretSet, plan_swaps};
use crate::respond::{Refusal, RefusalClass};
use crate::upstream::UpstreamError;

/// A request head as the checks read it: Pingora's, or one the admin API built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestHead<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
    pub protocol: HttpProtocol,
}

/// A request that passed the checks before the policy, ready to be decided.
#[derive(Debug)]
pub(crate) struct Admission {
    pub destination: Authority,
    pub request: RequestInput,
    /// A WebSocket (HTTP/1 `Upgrade`, or HTTP/2's extended CONNECT): its stream is not
    /// scrubbed, so secrets go on it only where their binding says so, and it has no body.
    pub upgrade: bool,
    /// The path without its query string, as bindings match it.
    bare_path: String,
    secrets: Arc<SecretSet>,
    /// The generation current when the request arrived; it decides the request.
    pub generation: Arc<Generation>,
}

impl Admission {
    /// The policy's body settings, when it reads this request's body. An upgrade has no body
    /// to read: what follows it is the upgraded stream.
    pub(crate) fn body_config(&self) -> Option<&RequestBodyConfig> {
        self.generation
            .request_body()
            .filter(|config| !self.upgrade && config.wants(&self.destination.host))
    }

    /// The secret store as it was when the request was admitted.
    pub(crate) fn secrets(&self) -> &Arc<SecretSet> {
        &self.secrets
    }

    fn to(&self, conn: &ConnectionContext) -> Destination<'_> {
        Destination {
            host: &self.destination.host,
            method: &self.request.method,
            path: &self.bare_path,
            tls: conn.tls,
            upgrade: self.upgrade,
        }
    }
}

impl Authorizer {
    /// The checks before the policy, in the order the request lifecycle lists them (size, host,
    /// session, pinning, placeholders), and the policy's input. Records what it learns in
    /// `ctx` as it goes, so a refusal's audit record names the host.
    pub(crate) fn check_request(
        &self,
        conn: &ConnectionContext,
        head: &RequestHead<'_>,
        ctx: &mut RequestContext,
    ) -> Result<Admission, Refusal> {
        let header_bytes: usize = head
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > MAX_REQUEST_HEADER_BYTES {
            return Err(Refusal::new(
                431,
                RefusalClass::BadRequest,
                format!(
                    "request headers total {header_bytes} bytes; the limit is {MAX_REQUEST_HEADER_BYTES}"
                ),
            ));
        }
        let scheme = if conn.tls { "https" } else { "http" };
        let authority = head
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                head.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .ok_or_else(|| {
                Refusal::new(400, RefusalClass::BadRequest, "the request names no host")
            })?;
        let default_port = if conn.tls { 443 } else { 80 };
        let destination = parse_authority(&authority, default_port).ok_or_else(|| {
            Refusal::new(
                400,
                RefusalClass::BadRequest,
                format!("{authority:?} is not a valid host"),
            )
        })?;
        let path = head
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let bare_path = path.split('?').next().unwrap_or("/").to_string();
        ctx.method = Some(head.method.as_str().to_string());
        ctx.path = Some(bare_path.clone());
        ctx.protocol = Some(head.protocol);
        ctx.host = Some(destination.host.clone());
        ctx.port = Some(destination.port);

        // A connection outliving its session (a stopped sandbox's address reused, a session
        // ended by its controller) would otherwise go on with the old session's identity and
        // credentials: each request checks the registration still stands.
        if conn.session.id != SessionInput::UNKNOWN_ID
            && !self
                .state
                .sessions
                .still_holds(conn.input.source.ip(), &conn.session.id)
        {
            return Err(Refusal::new(
                403,
                RefusalClass::SessionEnded,
                format!(
                    "session {} ended after this connection was opened; open a new connection",
                    conn.session.id
                ),
            ));
        }

        // No domain fronting: the TLS server name and the CONNECT target pin the host.
        if let Some(sni) = &conn.input.sni
            && *sni != destination.host
        {
            return Err(Refusal::new(
                421,
                RefusalClass::Fronting,
                format!(
                    "request for {} on a TLS connection to {sni}",
                    destination.host
                ),
            ));
        }
        if let Some(target) = conn
            .input
            .connect_target
            .as_deref()
            .filter(|_| conn.tunnel)
            .and_then(|t| parse_authority(t, 443))
            && target.host != destination.host
        {
            return Err(Refusal::new(
                421,
                RefusalClass::Fronting,
                format!(
                    "request for {} in a CONNECT tunnel to {}",
                    destination.host, target.host
                ),
            ));
        }

        let upgrade = head.headers.contains_key(http::header::UPGRADE)
            || *head.method == http::Method::CONNECT;
        let request = RequestInput {
            id: Some(ctx.id.clone()),
            method: head.method.as_str().to_string(),
            scheme: scheme.to_string(),
            authority,
            path,
            protocol: head.protocol,
            headers: head
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        };
        let admission = Admission {
            destination,
            request,
            upgrade,
            bare_path,
            secrets: self.state.secrets.current(),
            generation: self.state.policy.generation(),
        };

        // Placeholders: one sent outside its secret's binding, or by another session, is refused
        // before the policy runs; the rest are swapped for real values upstream.
        let index = self.state.placeholders.index();
        if !index.is_empty() {
            ctx.swaps = plan_swaps(
                &index,
                &admission.secrets,
                &conn.session.id,
                admission.to(conn),
                head.headers,
                &admission.request.path,
            )
            .map_err(|e| {
                let class = if e.is_exfiltration() {
                    RefusalClass::Exfiltration
                } else {
                    RefusalClass::Credential
                };
                Refusal::new(403, class, e.to_string())
            })?;
        }
        Ok(admission)
    }

    /// Asks the policy (with the body's fields when it read the body), then applies report
    /// mode and the credential bindings. The decision, the time it took and the credentials
    /// to inject are recorded in `ctx`; metrics are the caller's.
    pub(crate) fn decide(
        &self,
        conn: &ConnectionContext,
        admission: &Admission,
        body: Option<&BodyInput>,
        ctx: &mut RequestContext,
    ) -> Result<(), Refusal> {
        let generation = &admission.generation;
        let started = Instant::now();
        let decision = match body {
            Some(body) => {
                generation.decide_request_with_body(&conn.document, &admission.request, body)
            }
            None => generation.decide_request(&conn.document, &admission.request),
        };
        ctx.policy_time = started.elapsed();
        if !decision.is_allowed() && self.state.config.reports(&conn.session) {
            // Report mode: recorded as would-deny and let through, with nothing the decision
            // named injected (the policy granted nothing). Every other check still applies.
            ctx.would_deny = true;
        } else if !decision.is_allowed() {
            let refusal = Refusal {
                status: decision.deny_status(),
                class: if decision.failure.is_some() {
                    RefusalClass::PolicyFailure
                } else {
                    RefusalClass::Policy
                },
                reason: decision.reason.clone(),
                headers: decision.headers.clone(),
                body: decision.body.clone(),
                logged_reason: None,
            };
            ctx.decision = Some(decision);
            return Err(refusal);
        }
        // A denial let through in report mode grants nothing: no credential is injected.
        let inject: &[_] = if ctx.would_deny {
            &[]
        } else {
            &decision.inject
        };
        // Credentials named by the decision: each must be in the store and bound to this
        // destination (the binding is a second lock the policy cannot open). Any refusal
        // refuses the request: it is never forwarded without the credential it asked for.
        let mut refused = None;
        for credential in inject {
            match admission
                .secrets
                .resolve(&credential.secret, admission.to(conn))
            {
                Ok(secret) => ctx.injections.push(Injection {
                    secret: credential.secret.clone(),
                    header: credential.header.clone(),
                    value: crate::credentials::SecretValue::new(secret.header_value()),
                }),
                Err(e) => {
                    refused = Some(Refusal::new(403, RefusalClass::Credential, e.to_string()));
                    break;
                }
            }
        }
        ctx.decision = Some(decision);
        if let Some(refusal) = refused {
            ctx.injections.clear();
            return Err(refusal);
        }
        Ok(())
    }
}

/// The refusal for a destination that cannot be reached: the sandbox is told the class, the
/// audit log the address or resolver error too.
pub(crate) fn unreachable(e: UpstreamError) -> Refusal {
    let (status, class) = match e {
        UpstreamError::Forbidden { .. } => (403, RefusalClass::Ssrf),
        UpstreamError::Resolve { .. } => (502, RefusalClass::Resolve),
    };
    let mut refusal = Refusal::new(status, class, e.public_reason());
    refusal.logged_reason = Some(e.to_string());
    refusal
}
