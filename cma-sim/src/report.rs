//! What happened, as JSON: each step's result and verdict, each work item's end, each webhook
//! delivery, and any protocol violation (a call answered twice, a denied call run).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::world::{WorkState, World};

/// The longest result text kept in a report.
const RESULT_KEEP: usize = 2000;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every step passed or was denied, every session ended, every work item was stopped,
    /// every webhook was delivered (when a URL is configured) and nothing was violated.
    pub passed: bool,
    pub environment_id: String,
    pub sessions: Vec<SessionReport>,
    pub work: Vec<WorkReport>,
    pub webhooks: Vec<WebhookReport>,
    pub violations: Vec<String>,
    /// Calls received, by route.
    pub calls: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    pub id: String,
    pub status: String,
    pub ended: bool,
    pub steps: Vec<StepReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub index: usize,
    pub tool: String,
    pub tool_use_id: Option<String>,
    /// `pending`, `passed`, `failed` or `denied`.
    pub outcome: &'static str,
    pub is_error: Option<bool>,
    pub result: Option<String>,
    pub problems: Vec<String>,
}

impl StepReport {
    pub fn pending(index: usize, tool: &str) -> Self {
        Self {
            index: index + 1,
            tool: tool.to_string(),
            tool_use_id: None,
            outcome: "pending",
            is_error: None,
            result: None,
            problems: Vec::new(),
        }
    }

    pub fn record(&mut self, is_error: bool, text: &str, problems: Vec<String>) {
        self.outcome = if problems.is_empty() {
            "passed"
        } else {
            "failed"
        };
        self.is_error = Some(is_error);
        let mut kept: String = text.chars().take(RESULT_KEEP).collect();
        if kept.len() < text.len() {
            kept.push('…');
        }
        self.result = Some(kept);
        self.problems = problems;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkReport {
    pub id: String,
    pub session_id: String,
    pub state: String,
    pub force_stopped: bool,
    pub heartbeats: u64,
    /// 412 answers given.
    pub lease_conflicts: u64,
    /// Leases that ran out (the item went back to the queue).
    pub lease_expiries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookReport {
    pub id: String,
    pub kind: String,
    pub session_id: String,
    pub attempts: u32,
    /// `delivered`, `failed` (all retries answered non-2xx or unreachable), `disabled` (a 3xx).
    pub outcome: String,
    /// The last answer's status, or the transport error.
    pub last: String,
}

impl World {
    /// The report as of now.
    pub fn report(&self) -> Report {
        let inner = self.lock();
        let sessions: Vec<SessionReport> = inner
            .sessions
            .iter()
            .map(|(id, s)| SessionReport {
                id: id.clone(),
                status: s.status.to_string(),
                ended: s.ended,
                steps: s.steps.clone(),
            })
            .collect();
        let work: Vec<WorkReport> = inner
            .work
            .iter()
            .map(|w| WorkReport {
                id: w.id.clone(),
                session_id: w.session.clone(),
                state: w.state.as_str().to_string(),
                force_stopped: w.force_stopped,
                heartbeats: w.heartbeats,
                lease_conflicts: w.lease_conflicts,
                lease_expiries: w.lease_expiries,
            })
            .collect();
        let steps_ok = sessions.iter().all(|s| {
            s.ended
                && s.steps
                    .iter()
                    .all(|step| matches!(step.outcome, "passed" | "denied"))
        });
        let work_ok = inner.work.iter().all(|w| w.state == WorkState::Stopped);
        let webhooks_ok = inner.webhooks.iter().all(|w| w.outcome == "delivered");
        Report {
            passed: steps_ok && work_ok && webhooks_ok && inner.violations.is_empty(),
            environment_id: self.environment_id.clone(),
            sessions,
            work,
            webhooks: inner.webhooks.clone(),
            violations: inner.violations.clone(),
            calls: inner.calls.clone(),
        }
    }

    /// Whether nothing more will change the verdict: every session ended and its work item
    /// stopped, and every webhook settled, or a step failed or something was violated.
    pub fn settled(&self, webhooks_pending: bool) -> bool {
        let inner = self.lock();
        let failed = !inner.violations.is_empty()
            || inner
                .sessions
                .values()
                .any(|s| s.steps.iter().any(|step| step.outcome == "failed"));
        let finished = inner.sessions.values().all(|s| s.ended)
            && inner.work.iter().all(|w| w.state == WorkState::Stopped)
            && !webhooks_pending;
        failed || finished
    }

    /// Records a settled webhook delivery.
    pub fn record_webhook(&self, report: WebhookReport) {
        self.lock().webhooks.push(report);
        self.progress.notify_waiters();
    }
}

impl Report {
    /// A few lines for a person: each step's verdict, the work items, the webhooks.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for s in &self.sessions {
            out.push_str(&format!("session {} ({})\n", s.id, s.status));
            for step in &s.steps {
                out.push_str(&format!(
                    "  step {} {:<6} {:<8}{}\n",
                    step.index,
                    step.tool,
                    step.outcome,
                    if step.problems.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", step.problems.join("; "))
                    }
                ));
            }
        }
        for w in &self.work {
            out.push_str(&format!(
                "work {} {} (force {}; {} heartbeats, {} lease conflicts, {} leases ran out)\n",
                w.id, w.state, w.force_stopped, w.heartbeats, w.lease_conflicts, w.lease_expiries
            ));
        }
        for w in &self.webhooks {
            out.push_str(&format!(
                "webhook {} {} {} after {} attempt(s) ({})\n",
                w.kind, w.session_id, w.outcome, w.attempts, w.last
            ));
        }
        for v in &self.violations {
            out.push_str(&format!("VIOLATION {v}\n"));
        }
        out.push_str(if self.passed { "PASSED\n" } else { "FAILED\n" });
        out
    }
}
