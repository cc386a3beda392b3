//! The warm pool: `[sandbox] warm = N` keeps N sandboxes per configured image started and idle,
//! with no session bound: namespace, firewall entry, workspace, container and agent ready.
//!
//! A warm sandbox is unknown to the proxy (its address is no session's: its traffic is the
//! `unknown` session's, which the policy decides on, and which Cordon's example policies
//! refuse) and nothing runs in it but the agent, which answers only its token. A session claims one (store/pool.rs: one transaction that renames the record to the
//! session and takes it out of the pool) and then registers its address with the proxy under
//! the session's id; the claimed sandbox's fresh, empty workspace becomes the session's. A
//! claimed sandbox is stopped when its session's work ends, like any other: it never serves a
//! second session. A session that already has a workspace starts cold, because a gVisor
//! sandbox's mounts are fixed when it is created (docs/SANDBOXES.md, "Warm pool").

use std::time::{Duration, Instant};

use super::names::new_warm_id;
use super::{RootChoice, Runtime, SandboxError, SessionNames, Started};

/// How often the pool is topped up when nothing wakes it.
const REFILL_INTERVAL: Duration = Duration::from_secs(30);

impl Runtime {
    /// Claims a running warm sandbox on `root`'s image for session `id` (whose lock the caller
    /// holds), if there is one; `None`: start cold.
    pub(super) async fn claim_warm(
        &self,
        id: &str,
        root: &RootChoice,
        started: Instant,
    ) -> Result<Option<Started>, SandboxError> {
        if self.config.warm == 0 {
            return Ok(None);
        }
        let RootChoice::Image(image) = root else {
            return Ok(None);
        };
        loop {
            let Some(record) = self.store.claim_warm(id, &image.digest)? else {
                return Ok(None);
            };
            self.refill.notify_one();
            let names = self.names(&record);
            let agent = std::net::SocketAddr::from((names.sandbox_addr, self.config.agent_port));
            // A warm sandbox may have died while it waited (killed by a limit, the host's OOM
            // killer): a session never gets one that does not answer.
            if let Err(e) = self.agent_health(agent).await {
                tracing::warn!(sandbox = %record.sandbox_id, error = %e, "a warm sandbox did not answer; removing it");
                self.discard_claimed(
                    &record,
                    &names,
                    &format!("warm sandbox did not answer: {e}"),
                )
                .await;
                continue;
            }
            if let Err(e) = self.register(id, names.sandbox_addr).await {
                self.discard_claimed(&record, &names, &e.to_string()).await;
                return Err(e);
            }
            tracing::info!(
                session = id,
                sandbox = %record.sandbox_id,
                address = %names.sandbox_addr,
                image = %image.name,
                "warm sandbox claimed"
            );
            return Ok(Some(Started {
                id: id.to_string(),
                sandbox_address: names.sandbox_addr,
                agent,
                support: self
                    .support
                    .get()
                    .copied()
                    .unwrap_or(super::runsc::HostSupport {
                        // What an earlier controller probed; these are runsc's usual answers.
                        network: super::runsc::NetworkMode::Sandbox,
                        cgroups: true,
                    }),
                image: image.name.clone(),
                warm: true,
                elapsed: started.elapsed(),
            }));
        }
    }

    /// Tears down a claimed warm sandbox that cannot serve its session. Its workspace, new and
    /// never written by the session, goes with it, so the session can still claim another
    /// warm sandbox (one with a workspace of its own would start cold).
    async fn discard_claimed(
        &self,
        record: &crate::store::SessionRecord,
        names: &SessionNames,
        why: &str,
    ) {
        if let Err(e) = self.tear_down(record, names).await {
            tracing::error!(session = %record.id, error = %e, "removing a claimed warm sandbox");
        }
        self.record_end(record, Some(why)).await;
        let workspaces = self.workspaces.clone();
        let dir = record.sandbox_id.clone();
        match super::blocking(move || workspaces.remove(&dir)).await {
            Ok(()) => {
                if let Err(e) = self.store.forget_workspace(&record.id) {
                    tracing::error!(session = %record.id, error = %e, "forgetting a discarded workspace");
                }
            }
            Err(e) => {
                tracing::error!(session = %record.id, error = %e, "removing a discarded workspace")
            }
        }
        if let Err(e) = self.apply_firewall().await {
            tracing::error!(session = %record.id, error = %e, "firewall after a failed claim");
        }
    }

    /// Tops the pool up to `warm` running sandboxes per configured image, one start at a time,
    /// and removes warm sandboxes on images no longer configured (or rebuilt since). Returns
    /// what failed.
    pub async fn fill_warm(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return problems;
        }
        let wanted = self.warm_images(&mut problems);
        let warm = match self.store.warm() {
            Ok(warm) => warm,
            Err(e) => {
                problems.push(e.to_string());
                return problems;
            }
        };
        for record in &warm {
            let current = wanted
                .iter()
                .any(|(_, image)| record.image_digest.as_deref() == Some(image.digest.as_str()));
            if !current && let Err(e) = self.retire(&record.id).await {
                problems.push(e.to_string());
            }
        }
        for (count, image) in &wanted {
            let have = warm
                .iter()
                .filter(|r| r.image_digest.as_deref() == Some(image.digest.as_str()))
                .count();
            // Fewer wanted than waiting (`warm` lowered): the newest extras go.
            for extra in warm
                .iter()
                .rev()
                .filter(|r| r.image_digest.as_deref() == Some(image.digest.as_str()))
                .take(have.saturating_sub(*count as usize))
            {
                if let Err(e) = self.retire(&extra.id).await {
                    problems.push(e.to_string());
                }
            }
            for _ in have..*count as usize {
                let id = new_warm_id();
                let root = RootChoice::Image(Box::new(image.clone()));
                let started = {
                    let _whole = self.whole.read().await;
                    // Checked under the lock: stop_all sets it before it waits for the lock, so
                    // nothing starts after stop_all has stopped everything.
                    if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                        return problems;
                    }
                    let _sandbox = self.locks.lock(&id).await;
                    self.start_sandbox(&id, &root, true, &[], Instant::now())
                        .await
                };
                match started {
                    Ok(started) => self.warm_up(&id, started.agent).await,
                    Err(e) => {
                        // Tried again at the next refill, not in a tight loop.
                        problems.push(format!("a warm sandbox on image {:?}: {e}", image.name));
                        break;
                    }
                }
            }
        }
        problems
    }

    /// Runs the shells the toolset starts once in a new warm sandbox, so their files are in
    /// gVisor's page cache before a session's first call (measured: the first command in a
    /// fresh sandbox is the slowest). Nothing of it stays: the processes exit, and they wrote
    /// nothing.
    async fn warm_up(&self, id: &str, agent: std::net::SocketAddr) {
        let Ok(Some(record)) = self.store.get(id) else {
            return;
        };
        let request = crate::agent::ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "bash -c true >/dev/null 2>&1; true".into(),
            ],
            cwd: Some("/".into()),
            env: Default::default(),
            timeout_ms: Some(10_000),
            stdin: None,
        };
        if let Err(e) =
            crate::agent::exec(&self.http, agent, &record.token, &request, |_, _| {}).await
        {
            tracing::warn!(sandbox = id, error = %e, "warming up a warm sandbox");
        }
    }

    /// The images the pool keeps sandboxes for, each with how many.
    fn warm_images(&self, problems: &mut Vec<String>) -> Vec<(u32, crate::image::Image)> {
        if self.config.warm == 0 || self.config.danger_host_rootfs {
            return Vec::new();
        }
        let store = match crate::image::ImageStore::open(&self.config.images_dir) {
            Ok(store) => store,
            Err(e) => {
                problems.push(e.to_string());
                return Vec::new();
            }
        };
        let mut names: Vec<&str> = self
            .config
            .images()
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| match store.get(name) {
                Ok(image) => Some((self.config.warm, image)),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            })
            .collect()
    }

    /// Takes warm sandbox `id` out of the pool and stops it, unless a session claimed it first.
    async fn retire(&self, id: &str) -> Result<(), SandboxError> {
        let _whole = self.whole.read().await;
        let _sandbox = self.locks.lock(id).await;
        if self.store.retire_warm(id)? {
            self.stop_locked(id).await?;
        }
        Ok(())
    }

    /// Keeps the pool topped up until [`Runtime::stop_all`]: at once, whenever a sandbox is
    /// claimed, and every 30 s. Run it as a task.
    pub async fn keep_warm(self: std::sync::Arc<Self>) {
        while !self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            for problem in self.fill_warm().await {
                tracing::warn!(problem = %problem, "warm pool");
            }
            tokio::select! {
                () = self.refill.notified() => {}
                () = tokio::time::sleep(REFILL_INTERVAL) => {}
            }
        }
    }
}
