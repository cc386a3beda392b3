//! Making the host match the records after a crash, and stopping everything.

use std::net::IpAddr;
use std::time::Duration;

use super::names::SessionNames;
use super::{Runtime, SandboxError, blocking, network};
use crate::command::CommandError;
use crate::store::SessionState;

/// What `reconcile` found and did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Host resources with the Cordon prefix that no live session owned: removed.
    pub removed: Vec<String>,
    /// Recorded live sessions whose resources had vanished: marked failed.
    pub failed: Vec<String>,
    /// Removals that failed (the rest went ahead).
    pub problems: Vec<String>,
}

impl Runtime {
    /// Registers again, with the proxy, every running session's sandbox that the proxy does
    /// not list under its id and address (it restarted, and registrations live in its
    /// memory). Until then the proxy treats the sandbox as no session's, so the policy refuses
    /// its traffic: fail closed, but the session cannot work. Returns the ids restored.
    pub async fn restore_registrations(&self) -> Result<Vec<String>, SandboxError> {
        let registered = self.proxy.sessions().await.map_err(SandboxError::Proxy)?;
        let mut restored = Vec::new();
        for record in self.store.live()? {
            if record.warm
                || super::names::is_tool_id(&record.id)
                || record.state != SessionState::Running
            {
                continue;
            }
            let source = IpAddr::V4(self.names(&record).sandbox_addr);
            if registered
                .iter()
                .any(|r| r.id == record.id && r.source == source)
            {
                continue;
            }
            // Under the session's lock, and only if it still runs.
            match self.reregister(&record.id).await {
                Ok(()) => restored.push(record.id),
                Err(SandboxError::NotRunning { .. } | SandboxError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(restored)
    }

    /// [`Runtime::restore_registrations`] every `interval`, forever; what was restored is
    /// logged and counted in `restored`.
    pub async fn keep_registered(
        self: std::sync::Arc<Self>,
        interval: Duration,
        restored: prometheus::IntCounter,
    ) {
        loop {
            tokio::time::sleep(interval).await;
            match self.restore_registrations().await {
                Ok(ids) if !ids.is_empty() => {
                    restored.inc_by(ids.len() as u64);
                    tracing::warn!(sessions = ?ids, "the proxy had lost these sessions' registrations (restarted?); registered them again");
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "checking the proxy's registrations"),
            }
        }
    }

    /// Makes the host match the records: removes prefixed resources no live session owns,
    /// and marks failed (and cleans up) live sessions whose sandbox is gone. Waits until no
    /// other operation runs, and holds every other one off until it is done.
    pub async fn reconcile(&self) -> Result<Reconciled, SandboxError> {
        let _whole = self.whole.write().await;
        let mut report = Reconciled::default();
        for record in self.store.live()? {
            let names = self.names(&record);
            // One failed `runsc state` is not a vanished sandbox: ask again before tearing a
            // session down.
            let mut running = self.container_running(&names).await;
            if !running && names.netns_path().exists() && self.container_exists(&names).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
                running = self.container_running(&names).await;
            }
            if record.state == SessionState::Starting || !running {
                let why = if record.state == SessionState::Starting {
                    "the controller stopped while the sandbox was starting"
                } else {
                    "its sandbox or network namespace disappeared"
                };
                let _ = self.tear_down(&record, &names).await;
                self.record_end(&record, Some(why)).await;
                report.failed.push(record.id);
            }
        }
        let live_records = self.store.live()?;
        let live: Vec<SessionNames> = live_records.iter().map(|r| self.names(r)).collect();
        let (runsc, config) = (self.runsc.clone(), self.config.clone());
        let found = blocking(move || {
            // Every removal is tried; one that fails is reported, and the rest still happen.
            let mut outcomes: Vec<(String, Result<(), CommandError>)> = Vec::new();
            let prefix = format!("{}-", config.name_prefix);
            for (container, _) in runsc.list() {
                if container.starts_with(&prefix) && !live.iter().any(|n| n.container == container)
                {
                    let removed = runsc.remove(&container, None);
                    outcomes.push((format!("container {container}"), removed));
                }
            }
            for netns in network::list(&config.name_prefix) {
                if !live.iter().any(|n| n.netns == netns) {
                    let removed =
                        crate::command::run("ip", ["netns", "delete", &netns]).map(|_| ());
                    outcomes.push((format!("netns {netns}"), removed));
                }
            }
            for iface in network::list_host_interfaces(&config.interface_prefix) {
                if !live.iter().any(|n| n.host_if == iface) {
                    let removed = crate::command::run("ip", ["link", "delete", &iface]).map(|_| ());
                    outcomes.push((format!("interface {iface}"), removed));
                }
            }
            outcomes
        })
        .await;
        for (what, result) in found {
            match result {
                Ok(()) => report.removed.push(what),
                Err(e) => report.problems.push(format!("{what}: {e}")),
            }
        }
        self.apply_firewall().await?;
        self.remove_stale_registrations(&live_records, &mut report)
            .await;
        self.adopt_orphan_workspaces();
        drop(_whole);
        for id in self.sweep_workspaces().await {
            report
                .removed
                .push(format!("workspace {id} (retention passed)"));
        }
        Ok(report)
    }

    /// Whether `runsc state` says the container of `names` runs (one answer; callers that
    /// must not mistake a slow answer for a dead sandbox ask again).
    pub(super) async fn container_running(&self, names: &SessionNames) -> bool {
        let (runsc, names) = (self.runsc.clone(), names.clone());
        blocking(move || runsc.running(&names.container, &names.netns_path())).await
    }

    async fn container_exists(&self, names: &SessionNames) -> bool {
        let (runsc, names) = (self.runsc.clone(), names.clone());
        blocking(move || runsc.exists(&names.container)).await
    }

    /// Proxy registrations of addresses in this pool that no live session holds (a stop
    /// whose DELETE failed): the proxy would refuse that address to the next session.
    async fn remove_stale_registrations(
        &self,
        live_records: &[crate::store::SessionRecord],
        report: &mut Reconciled,
    ) {
        let Ok(registered) = self.proxy.sessions().await else {
            return;
        };
        for session in registered {
            let IpAddr::V4(source) = session.source else {
                continue;
            };
            let ours = self.config.address_pool.contains(&source);
            // A tool call's sandbox is registered under its tool's identity, by address.
            let held = live_records.iter().any(|r| {
                r.id == session.id
                    || (super::names::is_tool_id(&r.id) && self.names(r).sandbox_addr == source)
            });
            if ours && !held {
                match self
                    .proxy
                    .unregister_source(&session.id, session.source)
                    .await
                {
                    Ok(()) => report
                        .removed
                        .push(format!("proxy registration {}", session.id)),
                    Err(e) => report
                        .problems
                        .push(format!("proxy registration {}: {e}", session.id)),
                }
            }
        }
    }

    /// Stops every live session (warm sandboxes included) and removes the firewall table
    /// (tests, decommissioning). Waits until no other operation runs.
    pub async fn stop_all(&self) -> Result<(), SandboxError> {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.refill.notify_one();
        let _whole = self.whole.write().await;
        let mut problems = Vec::new();
        for record in self.store.live()? {
            if let Err(e) = self.stop_locked(&record.id).await {
                problems.push(e.to_string());
            }
        }
        problems.extend(self.remove_firewall().await.err());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SandboxError::Teardown {
                id: "*".into(),
                problems,
            })
        }
    }

    /// Removes the firewall table if no live sandbox needs it (a controller stopping with
    /// nothing left to guard: `make up`'s Ctrl-C); else leaves it. Returns whether it went.
    pub async fn release_firewall_if_idle(&self) -> Result<bool, SandboxError> {
        let _whole = self.whole.write().await;
        if !self.store.live()?.is_empty() {
            return Ok(false);
        }
        self.remove_firewall()
            .await
            .map(|()| true)
            .map_err(|problem| SandboxError::Teardown {
                id: "*".into(),
                problems: vec![problem],
            })
    }

    /// The table goes only when nothing it guards is left: a sandbox interface that
    /// survived a failed stop stays behind its drop rules. The caller holds every lock.
    async fn remove_firewall(&self) -> Result<(), String> {
        let leftovers = network::list_host_interfaces(&self.config.interface_prefix);
        if !leftovers.is_empty() {
            return Err(format!(
                "the firewall table stays: interfaces {} remain",
                leftovers.join(", ")
            ));
        }
        let firewall = self.firewall.clone();
        blocking(move || firewall.remove())
            .await
            .map_err(|e| e.to_string())
    }
}
