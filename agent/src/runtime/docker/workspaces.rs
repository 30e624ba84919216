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
    models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest},
    query_parameters::{
        CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
        ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions, UploadToContainerOptions,
    },
};
use bytes::Bytes;
use devctl_proto::{labels, pb};
use futures::StreamExt;

use super::{RuntimeError, engine};
use crate::runtime::{OutputChunks, WorkspaceData};

/// The image of the helper containers a workspace's data is copied
/// through: empty (imported from an empty archive by the agent itself, as
/// nothing can be pulled), never started. Docker's archive API reads and
/// writes a volume mounted in a created container, so no process runs and
/// no host path is needed: it works with an engine on another host too.
const HELPER_REPO: &str = "devctl/workspace-helper";
const HELPER_TAG: &str = "1";
/// Where a helper mounts the volume.
const HELPER_MOUNT: &str = "/ws";
/// On a helper container: the volume it serves.
const HELPER_LABEL: &str = "io.devctl.workspace-helper";

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

    /// Makes sure the helper image exists on the engine.
    async fn helper_image(&self) -> Result<String, RuntimeError> {
        let image = format!("{HELPER_REPO}:{HELPER_TAG}");
        match self.docker.inspect_image(&image).await {
            Ok(_) => return Ok(image),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(engine(e)),
        }
        // An empty tar archive: two zero blocks.
        let empty = bollard::body_full(Bytes::from(vec![0u8; 1024]));
        let mut progress = self.docker.create_image(
            Some(CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some(HELPER_REPO.into()),
                tag: Some(HELPER_TAG.into()),
                changes: vec![format!("LABEL {}=true", labels::MANAGED)],
                ..Default::default()
            }),
            Some(empty),
            None,
        );
        while let Some(step) = progress.next().await {
            step.map_err(engine)?;
        }
        tracing::info!(image, "workspace helper image made");
        Ok(image)
    }

    /// A created (never started) helper container with `volume` at
    /// [`HELPER_MOUNT`], named after the volume and `what` (a leftover of
    /// an interrupted copy is replaced).
    async fn helper(&self, volume: &str, what: &str) -> Result<Helper, RuntimeError> {
        let image = self.helper_image().await?;
        let name = format!("{volume}-{what}");
        let _ = self
            .docker
            .remove_container(
                &name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(image),
                    cmd: Some(vec!["/never-started".into()]),
                    labels: Some(HashMap::from([(
                        HELPER_LABEL.to_string(),
                        volume.to_string(),
                    )])),
                    network_disabled: Some(true),
                    host_config: Some(HostConfig {
                        network_mode: Some("none".into()),
                        mounts: Some(vec![Mount {
                            target: Some(HELPER_MOUNT.into()),
                            source: Some(volume.to_string()),
                            typ: Some(MountType::VOLUME),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .map_err(engine)?;
        Ok(Helper {
            docker: self.docker.clone(),
            id: created.id,
        })
    }

    /// Workspace `name`'s data as a tar archive (entries under `ws/`).
    pub(super) async fn send(&self, name: &str) -> Result<OutputChunks, RuntimeError> {
        let volume = self.volume(name);
        match self.docker.inspect_volume(&volume).await {
            Ok(_) => {}
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(RuntimeError::NotFound(format!("workspace {name}"))),
            Err(e) => return Err(engine(e)),
        }
        let helper = self.helper(&volume, "send").await?;
        let archive = self.docker.download_from_container(
            &helper.id,
            Some(DownloadFromContainerOptions {
                path: HELPER_MOUNT.into(),
            }),
        );
        tracing::info!(workspace = name, volume, "sending workspace");
        // The helper lives as long as the stream: dropped (ended or
        // cancelled), it is removed.
        Ok(archive
            .map(move |part| {
                let _ = &helper;
                part.map(|b| (pb::OutputStream::Stdout, b.to_vec()))
                    .map_err(engine)
            })
            .boxed())
    }

    /// Makes workspace `w`'s volume here and unpacks `data` (an archive
    /// from [`Workspaces::send`]) into it. A volume of the same name left
    /// from an earlier copy is replaced; on failure the new one is deleted.
    pub(super) async fn receive(
        &self,
        w: &pb::WorkspaceAttach,
        data: WorkspaceData,
    ) -> Result<(), RuntimeError> {
        let volume = self.volume(&w.name);
        match self.remove(&w.name).await {
            Ok(()) => {
                tracing::warn!(workspace = %w.name, volume, "replaced a leftover volume of this workspace")
            }
            Err(RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let attach = pb::WorkspaceAttach {
            must_exist: false,
            ..w.clone()
        };
        self.ensure(&attach).await?;
        let copied = async {
            let helper = self.helper(&volume, "receive").await?;
            self.docker
                .upload_to_container(
                    &helper.id,
                    Some(UploadToContainerOptions {
                        path: "/".into(),
                        copy_uidgid: Some("true".into()),
                        ..Default::default()
                    }),
                    bollard::body_try_stream(data.map(|r| r.map(Bytes::from))),
                )
                .await
                .map_err(engine)
        }
        .await;
        if let Err(e) = copied {
            if let Err(r) = self.remove(&w.name).await {
                tracing::warn!(error = %r, volume, "deleting the volume of a failed copy");
            }
            return Err(e);
        }
        tracing::info!(workspace = %w.name, volume, "workspace received");
        Ok(())
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

/// A helper container, removed when dropped.
#[derive(Debug)]
struct Helper {
    docker: Docker,
    id: String,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let (docker, id) = (self.docker.clone(), std::mem::take(&mut self.id));
        // Owned by the runtime; ends with the removal.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let options = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                if let Err(e) = docker.remove_container(&id, Some(options)).await {
                    tracing::warn!(error = %e, id, "removing a workspace helper container");
                }
            });
        }
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
