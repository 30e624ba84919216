//! Workspace volumes on this node's engine: made (labelled with the
//! workspace and this node) when a container of a new workspace is
//! created, required to exist for one whose workspace has data, listed
//! with their sizes for the scheduler, deleted on request.
//!
//! Sizes: Docker 20.10's `system df` answers in a shape bollard 0.21 no
//! longer reads, and `df` makes the engine walk every volume of the host
//! anyway. The agent instead walks each of its own workspace volumes' data
//! directory (the volume's mountpoint, on this host) itself, at most once
//! per `--workspace-measure-interval` (60 s) per volume, on the blocking pool,
//! within a file bound:
//! the cost is one `lstat` per file of the workspace per interval. When
//! the mountpoint is not reachable (an engine on another host) the size is
//! reported unknown (-1).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    errors::Error as BollardError,
    models::VolumeCreateRequest,
    query_parameters::{ListVolumesOptions, RemoveVolumeOptions},
};
use devctl_proto::{labels, pb};

use super::{RuntimeError, engine};

/// Files walked at most per measure (a bound on its cost): beyond it the
/// size counted so far is reported.
const MAX_FILES: u64 = 2_000_000;

/// This node's workspace volumes.
#[derive(Debug, Clone)]
pub(super) struct Workspaces {
    docker: Docker,
    node: String,
    // std lock: map operations only.
    sizes: Arc<Mutex<HashMap<String, (Instant, i64)>>>,
    measure_every: Duration,
}

impl Workspaces {
    pub(super) fn new(docker: Docker, node: &str) -> Self {
        Self {
            docker,
            node: node.to_string(),
            sizes: Arc::default(),
            measure_every: Duration::from_secs(60),
        }
    }

    /// Measures each volume at most once per `every`.
    pub(super) fn measure_every(mut self, every: Duration) -> Self {
        self.measure_every = every;
        self
    }

    /// The engine volume of workspace `name` on this node.
    pub(super) fn volume(&self, name: &str) -> String {
        labels::workspace_volume(&self.node, name)
    }

    /// Makes sure `w`'s volume exists: it must already when
    /// `w.must_exist` (else [`RuntimeError::WorkspaceMissing`]); otherwise
    /// it is made. Returns the volume's name and whether this call made it.
    pub(super) async fn ensure(
        &self,
        w: &pb::WorkspaceAttach,
    ) -> Result<(String, bool), RuntimeError> {
        let volume = self.volume(&w.name);
        match self.docker.inspect_volume(&volume).await {
            Ok(v) => {
                let id = v
                    .labels
                    .get(labels::WORKSPACE_ID)
                    .cloned()
                    .unwrap_or_default();
                if id != w.id {
                    return Err(RuntimeError::Conflict(format!(
                        "volume {volume} on node {} belongs to another workspace {:?} (id {id}); delete it (docker volume rm {volume}) or choose another workspace name",
                        self.node, w.name
                    )));
                }
                Ok((volume, false))
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) if w.must_exist => Err(RuntimeError::WorkspaceMissing(format!(
                "workspace {:?} has no volume ({volume}) on node {}: it was deleted outside devctl; the container is not started on an empty one",
                w.name, self.node
            ))),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let labels = HashMap::from([
                    (labels::MANAGED.to_string(), "true".to_string()),
                    (labels::NODE.to_string(), self.node.clone()),
                    (labels::WORKSPACE.to_string(), w.name.clone()),
                    (labels::WORKSPACE_ID.to_string(), w.id.clone()),
                    (labels::OWNER.to_string(), w.owner.clone()),
                ]);
                self.docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(volume.clone()),
                        labels: Some(labels),
                        ..Default::default()
                    })
                    .await
                    .map_err(engine)?;
                tracing::info!(workspace = %w.name, volume, "workspace volume made");
                Ok((volume, true))
            }
            Err(e) => Err(engine(e)),
        }
    }

    /// Deletes workspace `name`'s volume; [`RuntimeError::NotFound`] if it
    /// has none, [`RuntimeError::Conflict`] while a container uses it.
    pub(super) async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let volume = self.volume(name);
        match self
            .docker
            .remove_volume(&volume, None::<RemoveVolumeOptions>)
            .await
        {
            Ok(()) => {
                self.sizes.lock().expect("poisoned").remove(&volume);
                tracing::info!(workspace = name, volume, "workspace volume deleted");
                Ok(())
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(RuntimeError::NotFound(format!("workspace {name}"))),
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) => Err(RuntimeError::Conflict(format!(
                "workspace {name} is in use on node {}: {message}",
                self.node
            ))),
            Err(e) => Err(engine(e)),
        }
    }

    /// Every workspace volume of this node, with its size (measured at
    /// most once per `--workspace-measure-interval`).
    pub(super) async fn list(&self) -> Result<Vec<pb::EngineWorkspace>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}=true", labels::MANAGED),
                format!("{}={}", labels::NODE, self.node),
                labels::WORKSPACE.to_string(),
            ],
        )]);
        let list = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(engine)?;
        let mut out = Vec::new();
        for v in list.volumes.unwrap_or_default() {
            let name = v.labels.get(labels::WORKSPACE).cloned().unwrap_or_default();
            let id = v
                .labels
                .get(labels::WORKSPACE_ID)
                .cloned()
                .unwrap_or_default();
            let size_bytes = self.size(&v.name, PathBuf::from(&v.mountpoint)).await;
            out.push(pb::EngineWorkspace {
                name,
                id,
                volume: v.name,
                size_bytes,
            });
        }
        Ok(out)
    }

    async fn size(&self, volume: &str, mountpoint: PathBuf) -> i64 {
        if let Some((at, size)) = self.sizes.lock().expect("poisoned").get(volume)
            && at.elapsed() < self.measure_every
        {
            return *size;
        }
        let size = tokio::task::spawn_blocking(move || du(&mountpoint))
            .await
            .unwrap_or(-1);
        self.sizes
            .lock()
            .expect("poisoned")
            .insert(volume.to_string(), (Instant::now(), size));
        size
    }
}

/// Bytes the files under `root` take (apparent sizes; links not
/// followed); -1 if `root` cannot be read.
fn du(root: &Path) -> i64 {
    if std::fs::symlink_metadata(root).is_err() {
        return -1;
    }
    let (mut total, mut files) = (0i64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            files += 1;
            if files > MAX_FILES {
                return total;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len() as i64;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_counts_files_below_and_says_when_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 24]).unwrap();
        assert_eq!(du(dir.path()), 1024);
        assert_eq!(du(&dir.path().join("nope")), -1);
    }
}
