//! A session's workspace opened for the file browser (the dashboard's and the admin API's):
//! while the session lives, and after it ended until `workspace_retention_hours` remove it.

use super::{Runtime, blocking};
use crate::files::{FilesError, Workspace};

impl Runtime {
    /// Opens session `id`'s workspace from the host, as it is (nothing is created). A workspace
    /// unmounted since its session ended is mounted again (the sweep unmounts it later; an open directory keeps its
    /// mount usable until it is closed). It takes uploads only while the session has not ended.
    ///
    /// Under the session's lock: a start or the sweep never races the mount and the open.
    pub async fn open_workspace(&self, id: &str) -> Result<Workspace, FilesError> {
        if !super::names::valid_session_id(id) {
            return Err(FilesError::NoWorkspace(id.to_string()));
        }
        let _whole = self.whole.read().await;
        let _session = self.locks.lock(id).await;
        let record = self
            .store
            .workspace(id)
            .ok()
            .flatten()
            .filter(|r| self.workspaces.exists(&r.dir))
            .ok_or_else(|| FilesError::NoWorkspace(id.to_string()))?;
        let workspaces = self.workspaces.clone();
        let ended_at = record.ended_at.clone();
        let session = id.to_string();
        blocking(move || {
            let dir = workspaces
                .attach_existing(&record.dir)
                .map_err(|e| FilesError::Io {
                    path: crate::files::WorkspacePath::root(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            let quota = workspaces.image_len(&record.dir);
            let workspace =
                Workspace::open(&dir, quota.is_some(), ended_at.is_none()).map_err(|source| {
                    FilesError::Io {
                        path: crate::files::WorkspacePath::root(),
                        source,
                    }
                })?;
            let workspace = match quota {
                Some(bytes) => workspace.quota_bytes(bytes),
                None => workspace,
            };
            Ok(match ended_at {
                Some(at) => workspace.ended(&session, &at),
                None => workspace,
            })
        })
        .await
    }
}
