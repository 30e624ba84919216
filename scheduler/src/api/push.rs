//! `ImageService.PushImage`: an image archive from the client, kept in the
//! bus's object store, loaded on each chosen node.
//!
//! ```text
//! client --start--> check, plan (nodes, skipped, upload offset) --plan--> client
//! client --data..end--> DATA/uploads/<sha256>.part --(SHA-256 checked)--> object store
//! object store --(one task per node: Cluster::push_on)--> agents; progress, results --> client
//! ```
//!
//! The upload is spooled to a file first: a client that goes away midway
//! leaves no half-made object (and the next push of the same archive
//! continues the file). Each node's transfer reads the stored object.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use devctl_proto::{
    pb::{self, push_image_input::Input, push_image_output::Output},
    validate::InvalidField,
};
use futures::future::BoxFuture;
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use super::{StreamApi, audit, auth::may_write, send_or_stop};
use crate::{
    bus::ImageArchives,
    cluster::{ArchiveSource, Error, PushJob, check_push},
};

/// What pushes need beside the cluster: where archives are kept.
#[derive(Debug, Clone)]
pub struct Pushes {
    archives: ImageArchives,
    uploads: PathBuf,
    /// Archives being uploaded now (one upload per archive at a time).
    uploading: Arc<Mutex<HashSet<String>>>,
}

impl Pushes {
    /// Pushes keeping archives in `archives`, spooling uploads in
    /// `uploads` (made 0700 if missing; parts older than a day deleted).
    pub fn new(archives: ImageArchives, uploads: PathBuf) -> Result<Self, std::io::Error> {
        devctl_proto::pki::create_private_dir(&uploads).map_err(std::io::Error::other)?;
        devctl_proto::archive::remove_stale(&uploads, std::time::Duration::from_secs(24 * 3600));
        Ok(Self {
            archives,
            uploads,
            uploading: Arc::default(),
        })
    }

    fn part(&self, sha256: &str) -> PathBuf {
        self.uploads.join(format!("{sha256}.part"))
    }
}

/// Marks an archive as uploading while it lives.
struct Uploading {
    set: Arc<Mutex<HashSet<String>>>,
    sha256: String,
}

impl Drop for Uploading {
    fn drop(&mut self) {
        self.set.lock().expect("uploads lock").remove(&self.sha256);
    }
}

/// Reads an archive from the object store.
#[derive(Debug)]
struct StoreSource {
    archives: ImageArchives,
    sha256: String,
}

impl ArchiveSource for StoreSource {
    fn open(
        &self,
        offset: u64,
    ) -> BoxFuture<'_, Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, String>> {
        Box::pin(async move {
            self.archives
                .open(&self.sha256, offset)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The stream PushImage answers with.
pub type PushStream = ReceiverStream<Result<pb::PushImageOutput, Status>>;

impl StreamApi {
    /// Serves one PushImage call (see the module's documentation).
    pub(super) async fn push_image(
        &self,
        pushes: &Pushes,
        req: Request<Streaming<pb::PushImageInput>>,
    ) -> Result<PushStream, Status> {
        let id = super::auth::caller(&req)?;
        let audit = audit::call(&req);
        may_write(&id, "PushImage")?;
        let mut inbound = req.into_inner();
        let start = match inbound.message().await? {
            Some(pb::PushImageInput {
                input: Some(Input::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of PushImage must be `start` (the image, its archive's size and SHA-256)",
                ));
            }
        };
        if let Some(call) = &audit {
            call.target(&start.image);
        }
        check_push(&start)?;
        let max = pushes.archives.max_bytes();
        if start.size_bytes > max {
            return Err(Error::from(InvalidField::new(
                "start.size_bytes",
                format!(
                    "the archive is {} bytes; this cluster keeps archives of at most {max} (--image-store-size): use a registry for larger images, or raise the limit",
                    start.size_bytes
                ),
            ))
            .into());
        }
        let (nodes, skipped) = self.cluster.push_targets(
            &start.node,
            start.all_nodes,
            &start.image_id,
            &start.tags,
            start.force,
        )?;
        let stored = pushes
            .archives
            .get_info(&start.sha256)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let part = pushes.part(&start.sha256);
        let upload = !nodes.is_empty() && stored.is_none();
        let guard = if upload {
            let mut set = pushes.uploading.lock().expect("uploads lock");
            if !set.insert(start.sha256.clone()) {
                return Err(Status::aborted(format!(
                    "another push is uploading this archive ({}) now: try again once it ends",
                    start.image
                )));
            }
            Some(Uploading {
                set: Arc::clone(&pushes.uploading),
                sha256: start.sha256.clone(),
            })
        } else {
            None
        };
        let upload_offset = if upload {
            match tokio::fs::metadata(&part).await {
                Ok(m) if m.len() <= start.size_bytes => m.len(),
                _ => 0,
            }
        } else {
            start.size_bytes
        };
        let session = self.session(&id)?;
        let stop = session.stop().clone();
        let (tx, rx) = mpsc::channel(32);
        let plan = pb::PushPlan {
            upload_offset,
            nodes: nodes.clone(),
            skipped,
        };
        let job = Arc::new(PushJob {
            image: start.image.clone(),
            image_id: start.image_id.clone(),
            sha256: start.sha256.clone(),
            size: start.size_bytes,
            actor: id.name.clone(),
        });
        let (cluster, archives) = (self.cluster.clone(), pushes.archives.clone());
        self.streams.spawn(async move {
            let out = |o| Ok(pb::PushImageOutput { output: Some(o) });
            if !send_or_stop(&tx, out(Output::Plan(plan)), &stop).await {
                return;
            }
            let stored = if upload {
                let received = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = receive(&mut inbound, &part, upload_offset, &job) => r,
                };
                let stored = match received {
                    Ok(()) => archives
                        .put_file(&job.sha256, &part)
                        .await
                        .map_err(|e| Status::unavailable(e.to_string())),
                    Err(e) => Err(e),
                };
                drop(guard);
                match stored {
                    Ok(_) => {
                        let _ = tokio::fs::remove_file(&part).await;
                        pb::PushImageStored {
                            size_bytes: job.size,
                            uploaded: true,
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            } else {
                // Only `end` is expected.
                match inbound.message().await {
                    Ok(Some(pb::PushImageInput {
                        input: Some(Input::End(_)),
                    })) => {}
                    Ok(_) => {
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "the plan's upload offset is the archive's size: send `end` only",
                            )))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                pb::PushImageStored {
                    size_bytes: job.size,
                    uploaded: false,
                }
            };
            if !send_or_stop(&tx, out(Output::Stored(stored)), &stop).await {
                return;
            }
            fan_out(cluster, archives, job, nodes, &tx, &stop).await;
            session.tell_if_revoked(&tx).await;
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// Sends the archive to every node at once, forwarding their progress and
/// results to `tx` until every node is done (or `stop`).
async fn fan_out(
    cluster: crate::cluster::Cluster,
    archives: ImageArchives,
    job: Arc<PushJob>,
    nodes: Vec<String>,
    tx: &mpsc::Sender<Result<pb::PushImageOutput, Status>>,
    stop: &tokio_util::sync::CancellationToken,
) {
    let (progress_tx, mut progress) = mpsc::channel::<pb::PushProgress>(32);
    let (results_tx, mut results) = mpsc::channel::<pb::PushResult>(nodes.len().max(1));
    let pushes = tokio_util::task::TaskTracker::new();
    let source = Arc::new(StoreSource {
        archives,
        sha256: job.sha256.clone(),
    });
    for node in nodes {
        let (cluster, job, source, progress_tx, results_tx, stop) = (
            cluster.clone(),
            Arc::clone(&job),
            Arc::clone(&source),
            progress_tx.clone(),
            results_tx.clone(),
            stop.clone(),
        );
        pushes.spawn(async move {
            let result = cluster
                .push_on(&node, &job, source.as_ref(), &progress_tx, &stop)
                .await;
            let _ = results_tx.send(result).await;
        });
    }
    pushes.close();
    drop((progress_tx, results_tx));
    let (mut progress_open, mut results_open) = (true, true);
    while progress_open || results_open {
        let item = tokio::select! {
            _ = stop.cancelled() => break,
            p = progress.recv(), if progress_open => match p {
                Some(p) => Output::Progress(p),
                None => { progress_open = false; continue; }
            },
            r = results.recv(), if results_open => match r {
                Some(r) => Output::Result(r),
                None => { results_open = false; continue; }
            },
        };
        if !send_or_stop(tx, Ok(pb::PushImageOutput { output: Some(item) }), stop).await {
            break;
        }
    }
    // The client gone or the server stopping: `stop` ends every node's
    // transfer (the agents keep what they received, for the next push).
    drop(progress);
    pushes.wait().await;
}

/// Appends the client's `data` to `part` (which holds `offset` bytes) until
/// `end`, then checks the size and SHA-256 of the whole. A wrong archive
/// is deleted; a cut one is kept for the next push to continue.
async fn receive(
    inbound: &mut Streaming<pb::PushImageInput>,
    part: &Path,
    offset: u64,
    job: &PushJob,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("{}: {e}", part.display()));
    // Appended to, from `offset` (what the plan told the client).
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .await
        .map_err(io)?;
    file.set_len(offset).await.map_err(io)?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut total = offset;
    loop {
        match inbound.message().await {
            Ok(Some(pb::PushImageInput {
                input: Some(Input::Data(data)),
            })) => {
                total += data.len() as u64;
                if total > job.size {
                    drop(file);
                    let _ = tokio::fs::remove_file(part).await;
                    return Err(Error::from(InvalidField::new(
                        "data",
                        format!(
                            "more bytes arrived than start.size_bytes ({}) announced",
                            job.size
                        ),
                    ))
                    .into());
                }
                file.write_all(&data).await.map_err(io)?;
            }
            Ok(Some(pb::PushImageInput {
                input: Some(Input::End(_)),
            })) => break,
            Ok(Some(_)) => {
                return Err(Status::invalid_argument(
                    "only the first message of PushImage may be `start`",
                ));
            }
            Ok(None) | Err(_) => {
                // Kept: the next push of this archive continues it.
                let _ = file.flush().await;
                return Err(Status::cancelled(
                    "the upload ended without `end` (the client went away?)",
                ));
            }
        }
    }
    file.flush().await.map_err(io)?;
    file.get_ref().sync_all().await.map_err(io)?;
    drop(file);
    if total != job.size {
        let _ = tokio::fs::remove_file(part).await;
        return Err(Error::from(InvalidField::new(
            "data",
            format!(
                "{total} bytes arrived, not the {} start.size_bytes announced",
                job.size
            ),
        ))
        .into());
    }
    let path = part.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || devctl_proto::archive::sha256_file(&path))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(io)?;
    if digest != job.sha256 {
        let _ = tokio::fs::remove_file(part).await;
        return Err(Error::from(InvalidField::new(
            "start.sha256",
            format!(
                "the archive that arrived hashes to {digest}, not {}: it was changed or damaged on the way; push again",
                job.sha256
            ),
        ))
        .into());
    }
    Ok(())
}
