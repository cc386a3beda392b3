//! The work queue as CMA serves it (../shared/CMA.md, "Work queue"): poll, ack, heartbeat
//! with leases and 412s, stop, get; and who may call what.
//!
//! A lease that runs out without a heartbeat puts the item back in the queue (another poll
//! gets it), and the old holder's next heartbeat is a 412: it must stop serving.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::world::{ApiError, Inner, Lease, Scope, WorkItem, WorkState, World, now, random_token};

/// The beta every CMA call must name.
pub const BETA: &str = "managed-agents-2026-04-01";

/// The literal a first heartbeat sends to claim a lease.
pub const NO_HEARTBEAT: &str = "NO_HEARTBEAT";

impl World {
    /// Checks a request's credential and headers for `scope`.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
        beta: Option<&str>,
        version: Option<&str>,
        scope: Scope<'_>,
    ) -> Result<(), ApiError> {
        self.outage()?;
        let bearer = authorization.and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some() && api_key.is_some() {
            return Err(ApiError::new(
                401,
                "authentication_error",
                "send one credential: Authorization: Bearer or x-api-key, not both",
            ));
        }
        let Some(key) = bearer else {
            return Err(ApiError::new(
                401,
                "authentication_error",
                "missing Authorization: Bearer <environment key or sessions token>",
            ));
        };
        if !beta.is_some_and(|b| b.split(',').any(|b| b.trim() == BETA)) {
            return Err(ApiError::invalid(format!(
                "this endpoint needs the anthropic-beta header {BETA}"
            )));
        }
        if version.is_none() {
            return Err(ApiError::invalid("missing the anthropic-version header"));
        }
        if key == self.config.environment_key {
            return Ok(());
        }
        let inner = self.lock();
        let token_ok = match scope {
            Scope::Environment => false,
            Scope::Work(id) => inner
                .work
                .iter()
                .any(|w| w.id == id && w.sessions_token.as_deref() == Some(key)),
            Scope::Session(id) => inner
                .work
                .iter()
                .any(|w| w.session == id && w.sessions_token.as_deref() == Some(key)),
        };
        if token_ok {
            Ok(())
        } else {
            Err(ApiError::new(
                401,
                "authentication_error",
                "this credential is not valid for this call",
            ))
        }
    }

    /// `GET .../work/poll`: the next claimable item, waiting up to `block` for one.
    pub async fn poll(
        &self,
        block: Duration,
        reclaim_older_than: Option<Duration>,
    ) -> Result<Value, ApiError> {
        {
            let mut inner = self.lock();
            if inner.faults.poll_errors > 0 {
                inner.faults.poll_errors -= 1;
                return Err(ApiError::new(503, "overloaded_error", "injected fault"));
            }
        }
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notified = self.queue_changed.notified();
            if let Some(work) = self.claim_next(reclaim_older_than) {
                self.progress.notify_waiters();
                return Ok(work);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Value::Null);
            }
        }
    }

    fn claim_next(&self, reclaim_older_than: Option<Duration>) -> Option<Value> {
        let mut inner = self.lock();
        expire_leases(&mut inner);
        let now_instant = Instant::now();
        let unacked = self.config.unacked_timeout;
        let pick = inner.work.iter().position(|w| {
            let queued = w.state == WorkState::Queued
                && w.handed_out.is_none_or(|at| at.elapsed() >= unacked);
            // `reclaim_older_than_ms`: an item whose holder has been silent that long.
            let stale = reclaim_older_than.is_some_and(|age| {
                matches!(w.state, WorkState::Starting | WorkState::Active)
                    && w.lease.as_ref().is_none_or(|l| l.beat.elapsed() >= age)
            });
            queued || stale
        })?;
        let item = &mut inner.work[pick];
        if item.state != WorkState::Queued {
            item.state = WorkState::Queued;
            item.lease = None;
        }
        item.handed_out = Some(now_instant);
        Some(work_json(item, &self.environment_id))
    }

    /// `POST .../work/{id}/ack`: queued -> starting.
    pub fn ack(&self, id: &str) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let item = find(&mut inner, id)?;
        if item.state != WorkState::Queued {
            return Err(ApiError::new(
                409,
                "invalid_request_error",
                format!("work {id} is {}, not queued", item.state.as_str()),
            ));
        }
        item.state = WorkState::Starting;
        item.acknowledged_at = Some(now());
        Ok(work_json(item, &self.environment_id))
    }

    /// `POST .../work/{id}/heartbeat?expected_last_heartbeat=..&desired_ttl_seconds=..`.
    pub fn heartbeat(&self, id: &str, expected: &str, desired_ttl: u64) -> Result<Value, ApiError> {
        let max_ttl = self.config.max_ttl.as_secs();
        let mut inner = self.lock();
        expire_leases(&mut inner);
        let item = find(&mut inner, id)?;
        item.heartbeats += 1;
        match item.state {
            WorkState::Queued => {
                // Never acknowledged, or put back after its lease ran out: whoever held it
                // does not any more.
                item.lease_conflicts += 1;
                return Err(lease_conflict(
                    id,
                    "the item is queued; no one holds its lease",
                ));
            }
            WorkState::Stopping | WorkState::Stopped => {
                return Ok(json!({
                    "type": "work_heartbeat",
                    "last_heartbeat": item.lease.as_ref().map(|l| l.token.clone()).unwrap_or_default(),
                    "lease_extended": false,
                    "state": item.state.as_str(),
                    "ttl_seconds": 0,
                }));
            }
            WorkState::Starting | WorkState::Active => {}
        }
        let holds = match &item.lease {
            Some(lease) => lease.token == expected,
            None => expected == NO_HEARTBEAT,
        };
        if !holds {
            item.lease_conflicts += 1;
            return Err(lease_conflict(
                id,
                "expected_last_heartbeat does not match the lease: another worker holds it",
            ));
        }
        let ttl = desired_ttl.clamp(1, max_ttl.max(1));
        let token = random_token("hb_");
        item.lease = Some(Lease {
            token: token.clone(),
            expires: Instant::now() + Duration::from_secs(ttl),
            beat: Instant::now(),
        });
        item.state = WorkState::Active;
        let stamp = now();
        item.started_at.get_or_insert_with(|| stamp.clone());
        item.latest_heartbeat_at = Some(stamp);
        Ok(json!({
            "type": "work_heartbeat",
            "last_heartbeat": token,
            "lease_extended": true,
            "state": "active",
            "ttl_seconds": ttl,
        }))
    }

    /// `POST .../work/{id}/stop` `{force}`.
    pub fn stop(&self, id: &str, force: bool) -> Result<Value, ApiError> {
        let mut session = None;
        let result = {
            let mut inner = self.lock();
            let item = find(&mut inner, id)?;
            if item.state == WorkState::Stopped {
                return Err(ApiError::new(
                    409,
                    "invalid_request_error",
                    format!("work {id} is already stopped"),
                ));
            }
            let stamp = now();
            item.stop_requested_at.get_or_insert_with(|| stamp.clone());
            if force {
                item.state = WorkState::Stopped;
                item.stopped_at = Some(stamp);
                item.force_stopped = true;
                item.lease = None;
                session = Some(item.session.clone());
            } else {
                item.state = WorkState::Stopping;
            }
            work_json(item, &self.environment_id)
        };
        if let Some(session) = session {
            self.work_stopped(&session);
        }
        self.progress.notify_waiters();
        Ok(result)
    }

    /// `GET .../work/{id}`.
    pub fn get_work(&self, id: &str) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        expire_leases(&mut inner);
        let item = find(&mut inner, id)?;
        Ok(work_json(item, &self.environment_id))
    }
}

fn find<'a>(inner: &'a mut Inner, id: &str) -> Result<&'a mut WorkItem, ApiError> {
    inner
        .work
        .iter_mut()
        .find(|w| w.id == id)
        .ok_or_else(|| ApiError::not_found(&format!("work {id}")))
}

fn lease_conflict(id: &str, why: &str) -> ApiError {
    ApiError {
        status: 412,
        kind: "invalid_request_error",
        message: format!("work {id}: {why}"),
        code: Some("heartbeat_precondition_failed"),
    }
}

/// Leases that ran out put their items back in the queue.
fn expire_leases(inner: &mut Inner) {
    let now_instant = Instant::now();
    for item in &mut inner.work {
        let lapsed = item
            .lease
            .as_ref()
            .is_some_and(|l| l.expires <= now_instant);
        if lapsed && matches!(item.state, WorkState::Starting | WorkState::Active) {
            tracing::info!(work = %item.id, "lease ran out; the item is queued again");
            item.state = WorkState::Queued;
            item.lease = None;
            item.handed_out = None;
            item.lease_expiries += 1;
        }
    }
}

pub(crate) fn work_json(item: &WorkItem, environment_id: &str) -> Value {
    let secret = item
        .sessions_token
        .as_ref()
        .map(|token| URL_SAFE_NO_PAD.encode(json!({ "sessions_token": token }).to_string()));
    json!({
        "type": "work",
        "id": item.id,
        "environment_id": environment_id,
        "data": {"type": "session", "id": item.session},
        "state": item.state.as_str(),
        "created_at": item.created_at,
        "acknowledged_at": item.acknowledged_at,
        "started_at": item.started_at,
        "latest_heartbeat_at": item.latest_heartbeat_at,
        "stop_requested_at": item.stop_requested_at,
        "stopped_at": item.stopped_at,
        "metadata": {},
        "secret": secret,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::scenario::Scenario;
    use crate::world::WorldConfig;

    fn world(max_ttl: Duration) -> std::sync::Arc<World> {
        let scenario = Scenario::parse(
            "[[sessions]]\nid = \"s1\"\n[[sessions.steps]]\ntool = \"bash\"\ninput = { command = \"true\" }\n",
        )
        .unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let world = World::new(
            &scenario,
            WorldConfig {
                max_ttl,
                ..WorldConfig::default()
            },
            tx,
        );
        world.open_sessions();
        world
    }

    #[tokio::test]
    async fn leases_are_exclusive_and_lapse_back_into_the_queue() {
        let w = world(Duration::from_secs(1));
        let item = w.poll(Duration::from_millis(1), None).await.unwrap();
        let id = item["id"].as_str().unwrap().to_string();
        assert_eq!(item["state"], "queued");
        assert!(item["secret"].is_string(), "a sessions token by default");
        // Handed out and not acked: invisible to the next poll.
        assert!(
            w.poll(Duration::from_millis(1), None)
                .await
                .unwrap()
                .is_null()
        );
        // Heartbeat before ack: no lease to hold.
        assert_eq!(w.heartbeat(&id, NO_HEARTBEAT, 60).unwrap_err().status, 412);
        w.ack(&id).unwrap();
        assert_eq!(w.ack(&id).unwrap_err().status, 409);
        let first = w.heartbeat(&id, NO_HEARTBEAT, 60).unwrap();
        assert_eq!(first["ttl_seconds"], 1, "capped at max_ttl");
        let token = first["last_heartbeat"].as_str().unwrap().to_string();
        // A second claimer, or a stale echo, is refused with CMA's error code.
        let conflict = w.heartbeat(&id, NO_HEARTBEAT, 60).unwrap_err();
        assert_eq!(
            (conflict.status, conflict.code),
            (412, Some("heartbeat_precondition_failed"))
        );
        let second = w.heartbeat(&id, &token, 60).unwrap();
        assert_ne!(second["last_heartbeat"], token.as_str());
        assert_eq!(w.heartbeat(&id, &token, 60).unwrap_err().status, 412);
        // The lease lapses: the item is queued again and the old holder has lost it.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let again = w.poll(Duration::from_millis(1), None).await.unwrap();
        assert_eq!(again["id"], id.as_str());
        let old = second["last_heartbeat"].as_str().unwrap();
        assert_eq!(w.heartbeat(&id, old, 60).unwrap_err().status, 412);
        let report = w.report();
        assert_eq!(report.work[0].lease_expiries, 1);
        assert_eq!(report.work[0].lease_conflicts, 4);
        // Stop: force ends it, a second stop is 409, a heartbeat says stop serving.
        w.ack(&id).unwrap();
        w.stop(&id, true).unwrap();
        assert_eq!(w.stop(&id, true).unwrap_err().status, 409);
        let after = w.heartbeat(&id, NO_HEARTBEAT, 60).unwrap();
        assert_eq!(
            (after["state"].as_str(), after["lease_extended"].as_bool()),
            (Some("stopped"), Some(false))
        );
    }

    #[test]
    fn credentials_are_checked_per_call() {
        let w = world(Duration::from_secs(60));
        let key = w.config.environment_key.clone();
        let bearer = format!("Bearer {key}");
        let ok = |auth: Option<&str>, api_key: Option<&str>, scope| {
            w.authorize(auth, api_key, Some(BETA), Some("2026-10-21"), scope)
        };
        assert!(ok(Some(&bearer), None, Scope::Environment).is_ok());
        assert_eq!(
            ok(Some(&bearer), Some(&key), Scope::Environment)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            ok(None, Some(&key), Scope::Environment).unwrap_err().status,
            401
        );
        assert_eq!(
            ok(Some("Bearer wrong"), None, Scope::Session("s1"))
                .unwrap_err()
                .status,
            401
        );
        let missing_beta = w.authorize(Some(&bearer), None, None, Some("v"), Scope::Environment);
        assert_eq!(missing_beta.unwrap_err().status, 400);
        // The sessions token is good for its session, never for polling.
        let token = w.lock().work[0].sessions_token.clone().unwrap();
        let token = format!("Bearer {token}");
        assert!(ok(Some(&token), None, Scope::Session("s1")).is_ok());
        assert_eq!(
            ok(Some(&token), None, Scope::Environment)
                .unwrap_err()
                .status,
            401
        );
    }
}
