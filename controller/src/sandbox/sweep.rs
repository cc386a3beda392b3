//! The workspace sweep: workspaces of ended sessions are unmounted, and removed once
//! `workspace_retention_hours` have passed since the session ended.

use super::{Runtime, blocking};

impl Runtime {
    /// Records workspaces found on disk with no record (an older controller's) as ended now.
    /// Only while no other operation runs (`reconcile`): a start records its workspace just
    /// after making it, and must not be taken for an orphan in between.
    pub(super) fn adopt_orphan_workspaces(&self) {
        let recorded = match self.store.workspaces() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the workspace records");
                return;
            }
        };
        for dir in self.workspaces.list() {
            if !recorded.iter().any(|r| r.dir == dir)
                && let Err(e) = self.store.workspace_ended(&dir)
            {
                tracing::error!(workspace = %dir, error = %e, "recording a found workspace");
            }
        }
    }

    /// Removes the workspaces whose session ended more than `workspace_retention_hours` ago,
    /// and unmounts those of ended sessions. Returns the sessions whose workspace went.
    ///
    /// Each workspace is looked at under its session's lock, so a start of that session
    /// (which mounts the workspace again) never races the sweep that unmounts it.
    pub async fn sweep_workspaces(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let now = time::OffsetDateTime::now_utc();
        for listed in self.store.workspaces().unwrap_or_default() {
            if listed.ended_at.is_none() {
                continue;
            }
            let _session = self.locks.lock(&listed.session_id).await;
            // Read again under the lock: a start may have reopened it meanwhile.
            let Ok(Some(record)) = self.store.workspace(&listed.session_id) else {
                continue;
            };
            let Some(ended) = record.ended_at.as_deref().and_then(|e| {
                time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).ok()
            }) else {
                continue;
            };
            let live = self
                .store
                .get(&record.session_id)
                .ok()
                .flatten()
                .is_some_and(|r| r.state.is_live());
            if live {
                continue;
            }
            let age = (now - ended).max(time::Duration::ZERO);
            let workspaces = self.workspaces.clone();
            let dir = record.dir.clone();
            let result = if age >= self.config.workspace_retention {
                blocking(move || workspaces.remove(&dir)).await.map(|()| {
                    let _ = self.store.forget_workspace(&record.session_id);
                    removed.push(record.session_id.clone());
                })
            } else {
                // Kept for retention, but not mounted: nothing runs in it any more.
                blocking(move || workspaces.detach(&dir)).await
            };
            if let Err(e) = result {
                tracing::error!(session = %record.session_id, error = %e, "workspace sweep");
            }
        }
        removed
    }
}
