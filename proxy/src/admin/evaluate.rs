//! `POST /evaluate`: decide a request a session's sandbox could send, exactly as the proxy
//! would decide it, without sending it.
//!
//! The request is given as JSON (`request.rs`) and assumed to arrive on the connection a
//! sandbox of the session would open for its URL (`connection.rs`). From there it meets the
//! same code as a real request: the connect-stage decision, the no-SNI rule, then the
//! request checks of `crate::authorize` (size, host, session, host pinning, placeholders,
//! the body when the policy reads it, the policy, report mode, credential bindings) and the
//! SSRF guard for what needs no DNS lookup (`[upstream] connect_to` overrides and IP
//! literals).
//!
//! What it never does: connect anywhere, resolve a name, mint a placeholder, write an audit
//! record, or count anything in the request metrics or the session's egress counts. What that
//! leaves unchecked is named in the answer's `not_checked`.

mod connection;
mod request;

use std::sync::Arc;

use cordon_policy::{Decision, HttpProtocol, Stage, TlsHandling};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::authorize::{Authorizer, RequestHead, body};
use crate::config::{ConnectStage, NoSniAction};
use crate::connection::ConnectionContext;
use crate::respond::Refusal;
use crate::state::GatewayState;
use request::{EvaluateError, EvaluateRequest};

/// The answer: what the proxy would do with the request.
#[derive(Debug, Serialize)]
struct Evaluation {
    /// `allow` or `deny`.
    decision: &'static str,
    /// The stage that decided: `connect` (a connection-level refusal or a splice) or `request`.
    stage: &'static str,
    /// The audit record's `reason_class`.
    reason_class: &'static str,
    reason: String,
    /// The status the client would get; absent for an allow, and for a refusal that closes
    /// the connection without an HTTP answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    policy_generation: String,
    /// `secret->header` for each credential injected on an allow (names, never values).
    credentials: Vec<String>,
    /// `secret->header` for each placeholder the request carries that would be swapped.
    placeholders: Vec<String>,
    /// Present when report mode applies to the session: the policy denied and the request
    /// goes through anyway.
    #[serde(skip_serializing_if = "Option::is_none")]
    would_deny: Option<bool>,
    /// The connect stage said `mitm: false`: the connection is spliced, uninspected.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    spliced: bool,
    /// The connection the request was assumed to arrive on.
    connection: serde_json::Value,
    /// The checks a real request would also meet that cannot be decided from the request alone.
    not_checked: Vec<NotChecked>,
}

#[derive(Debug, Serialize)]
struct NotChecked {
    check: &'static str,
    reason: String,
}

/// What the evaluation found so far; turned into the answer once a stage decides.
struct Run<'a> {
    state: &'a Arc<GatewayState>,
    conn: Arc<ConnectionContext>,
    would_deny: bool,
    not_checked: Vec<NotChecked>,
}

/// Answers `POST /evaluate` for the admin request body `body` (`Err`: it could not be read).
pub(super) fn evaluate(
    state: &Arc<GatewayState>,
    body: Result<Vec<u8>, String>,
) -> Response<Vec<u8>> {
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            return super::error(
                StatusCode::BAD_REQUEST,
                format!("{e}; expected {}", request::SHAPE),
            );
        }
    };
    match answer(state, &body) {
        Ok(evaluation) => super::json(
            StatusCode::OK,
            serde_json::to_value(evaluation).unwrap_or_default(),
        ),
        Err(e) => super::error(e.status(), e.message()),
    }
}

fn answer(state: &Arc<GatewayState>, body: &[u8]) -> Result<Evaluation, EvaluateError> {
    let request = EvaluateRequest::parse(body)?;
    let records = state.sessions.records_of(&request.session);
    if records.is_empty() {
        return Err(EvaluateError::UnknownSession(request.session));
    }
    let record = match request.source {
        None => records.into_iter().next(),
        Some(address) => Some(
            records
                .into_iter()
                .find(|r| r.source == address.to_canonical())
                .ok_or_else(|| EvaluateError::NotASource {
                    session: request.session.clone(),
                    address,
                })?,
        ),
    }
    .ok_or_else(|| EvaluateError::UnknownSession(request.session.clone()))?;
    let mode = request
        .mode
        .unwrap_or_else(|| connection::default_mode(state));
    let assumed = connection::assume(state, &record, mode, &request)?;
    let mut run = Run {
        state,
        conn: Arc::new(assumed.context),
        would_deny: false,
        not_checked: vec![NotChecked {
            check: "upstream",
            reason: "nothing is sent: the upstream's reachability, its certificate and its \
                     response (and the scrubbing of secrets it echoes) are not checked"
                .into(),
        }],
    };
    if assumed.destination_unknown {
        run.not_checked.push(NotChecked {
            check: "original_destination",
            reason: format!(
                "the address a sandbox would dial for {} is known only once the DNS stub answers \
                 for it; the policy saw no original destination",
                request.destination.host
            ),
        });
    }
    let evaluation = run.decide(&request);
    tracing::debug!(
        session = %record.id,
        host = %request.destination.host,
        decision = evaluation.decision,
        "evaluated a request for the admin API"
    );
    Ok(evaluation)
}

impl Run<'_> {
    fn decide(mut self, request: &EvaluateRequest) -> Evaluation {
        if let Some(evaluation) = self.connect_stage(request) {
            return evaluation;
        }
        // The request stage, through the same checks as a live request.
        let conn = &self.conn.clone();
        let authorizer = Authorizer {
            state: self.state.clone(),
        };
        let mut ctx = authorizer.context(Some(conn.clone()));
        let head = RequestHead {
            method: &request.method,
            uri: &request.uri,
            headers: &request.headers,
            protocol: HttpProtocol::Http11,
        };
        let admission = match authorizer.check_request(conn, &head, &mut ctx) {
            Ok(admission) => admission,
            Err(refusal) => return self.refused(Stage::Request, &refusal, None),
        };
        let body = match admission.body_config() {
            Some(config) => {
                let given = request.body.as_deref().unwrap_or_default();
                match body::given(config, &admission.request, given) {
                    Ok(body) => Some(body),
                    Err(refusal) => return self.refused(Stage::Request, &refusal, None),
                }
            }
            None => None,
        };
        let decided = authorizer.decide(conn, &admission, body.as_ref(), &mut ctx);
        self.would_deny |= ctx.would_deny();
        if let Err(refusal) = decided {
            let mut evaluation = self.refused(Stage::Request, &refusal, ctx.decision());
            evaluation.placeholders = ctx.placeholders().to_vec();
            return evaluation;
        }
        if let Err(refusal) = self.guard(&admission.destination) {
            return self.refused(Stage::Request, &refusal, ctx.decision());
        }
        let decision = ctx.decision();
        let failure = decision.is_some_and(|d| d.failure.is_some());
        // As the audit record names an allow that report mode let through.
        let class = if self.would_deny && failure {
            "policy_failure"
        } else {
            "policy"
        };
        let mut evaluation = self.allowed(
            Stage::Request,
            class,
            decision.map(|d| d.reason.clone()).unwrap_or_default(),
            decision,
        );
        evaluation.credentials = ctx.credentials();
        evaluation.placeholders = ctx.placeholders().to_vec();
        evaluation
    }
}

impl Run<'_> {
    /// The connection-level part (`crate::gateway`): the connect-stage decision, a splice, the
    /// no-SNI rule. `Some` when it settles the request.
    fn connect_stage(&mut self, request: &EvaluateRequest) -> Option<Evaluation> {
        let state = self.state;
        let conn = self.conn.clone();
        if state.config.connect_stage == ConnectStage::Evaluate {
            let decision = state
                .policy
                .generation()
                .decide_value(conn.document.connect());
            if !decision.is_allowed() && state.config.reports(&conn.session) {
                self.would_deny = true;
            } else if !decision.is_allowed() {
                // Only a plaintext client can be told why; a TLS one is cut off before its
                // handshake.
                let status = (!conn.tls).then(|| decision.deny_status());
                let class = if decision.failure.is_some() {
                    "policy_failure"
                } else {
                    "policy"
                };
                let mut evaluation = self.verdict(
                    Stage::Connect,
                    class,
                    decision.reason.clone(),
                    Some(&decision),
                );
                evaluation.status = status;
                return Some(evaluation);
            }
            if conn.tls && decision.tls == TlsHandling::Passthrough {
                // Spliced to the destination, resolved and guarded like a request.
                if let Err(refusal) = self.guard(&request.destination) {
                    return Some(self.refused(Stage::Connect, &refusal, Some(&decision)));
                }
                let mut evaluation = self.allowed(
                    Stage::Connect,
                    "policy",
                    decision.reason.clone(),
                    Some(&decision),
                );
                evaluation.spliced = true;
                return Some(evaluation);
            }
        }
        let original = conn.input.original_destination.is_some();
        if conn.tls
            && conn.input.sni.is_none()
            && !(state.config.tls.no_sni == NoSniAction::OriginalDestination && original)
        {
            return Some(
                self.verdict(
                    Stage::Connect,
                    "no_sni",
                    "the TLS client sent no server name (SNI); without one the upstream cannot be \
                 verified"
                        .into(),
                    None,
                ),
            );
        }
        None
    }

    /// The SSRF guard for a destination that needs no DNS lookup; a name is noted as not
    /// checked.
    fn guard(&mut self, destination: &cordon_policy::input::Authority) -> Result<(), Refusal> {
        match self
            .state
            .resolver
            .resolve_without_dns(&destination.host, destination.port)
        {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(crate::authorize::unreachable(e)),
            None => {
                self.not_checked.push(NotChecked {
                    check: "ssrf",
                    reason: format!(
                        "{} is a name: the proxy resolves it only for a real request, so the \
                         SSRF guard on its addresses (and whether it resolves at all) is not \
                         checked",
                        destination.host
                    ),
                });
                Ok(())
            }
        }
    }

    fn refused(
        &mut self,
        stage: Stage,
        refusal: &Refusal,
        decision: Option<&Decision>,
    ) -> Evaluation {
        // The operator is told what the audit log would say (internal addresses included).
        let reason = refusal
            .logged_reason
            .clone()
            .unwrap_or_else(|| refusal.reason.clone());
        let mut evaluation = self.verdict(stage, refusal.class.as_str(), reason, decision);
        evaluation.status = Some(refusal.status);
        evaluation
    }

    fn allowed(
        &mut self,
        stage: Stage,
        class: &'static str,
        reason: String,
        decision: Option<&Decision>,
    ) -> Evaluation {
        let reports = self.state.config.reports(&self.conn.session);
        let would_deny = self.would_deny;
        let mut evaluation = self.verdict(stage, class, reason, decision);
        evaluation.decision = "allow";
        evaluation.would_deny = reports.then_some(would_deny);
        evaluation
    }

    /// A deny of `reason_class` (callers make it an allow, add a status).
    fn verdict(
        &mut self,
        stage: Stage,
        reason_class: &'static str,
        reason: String,
        decision: Option<&Decision>,
    ) -> Evaluation {
        let reports = self.state.config.reports(&self.conn.session);
        Evaluation {
            decision: "deny",
            stage: stage.as_str(),
            reason_class,
            reason,
            status: None,
            policy_generation: decision.map_or_else(
                || self.state.policy.generation().info().id.to_string(),
                |d| d.generation.to_string(),
            ),
            credentials: Vec::new(),
            placeholders: Vec::new(),
            // A refused request is recorded as that refusal, not as a would-deny.
            would_deny: reports.then_some(false),
            spliced: false,
            connection: connection::describe(&self.conn.input),
            not_checked: std::mem::take(&mut self.not_checked),
        }
    }
}
