//! Image pushes without a registry (`ImageService.PushImage`): which nodes
//! get an archive, and one node's transfer: the archive read from where
//! the scheduler keeps it (the bus's object store) from the offset the
//! agent already holds, sent down a flow-controlled pipe
//! (`AgentLink::open_import`), then loaded by the agent's engine.
//!
//! ```text
//!  object store --open(offset)--> push_on --down: archive[offset..]--> agent --> file --> docker load
//!                                         <--up: progress, outcome-----
//! ```
//!
//! A transfer cut by the agent's loss (its pipe falls silent, its node goes
//! down) is tried again once the node is ready: the agent answers with the
//! bytes it kept, and only the rest is sent.

use std::time::{Duration, Instant};

use devctl_proto::{
    pb,
    pipe::PipeError,
    validate::{self, InvalidField, limits},
};
use futures::future::BoxFuture;
use tokio::{io::AsyncReadExt, sync::mpsc};
use tokio_util::sync::CancellationToken;

use super::{Cluster, Error, link::TunnelPipes};

/// Where the archive of a push is read from.
pub(crate) trait ArchiveSource: std::fmt::Debug + Send + Sync {
    /// The archive from byte `offset` on.
    fn open(
        &self,
        offset: u64,
    ) -> BoxFuture<'_, Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, String>>;
}

/// One push, as every node it goes to gets it.
#[derive(Debug, Clone)]
pub struct PushJob {
    /// The image as the user named it.
    pub image: String,
    /// Its id ("sha256:…").
    pub image_id: String,
    /// Lower-case hex SHA-256 of the archive.
    pub sha256: String,
    /// The archive's size.
    pub size: u64,
    /// Who asked for it (for the event history).
    pub actor: String,
}

/// How long a push waits for a node whose agent went away mid-transfer.
const NODE_RETURN_WAIT: Duration = Duration::from_secs(120);
/// How many times one node's transfer is opened before it fails.
const MAX_ATTEMPTS: u32 = 5;
/// How often progress is reported while bytes flow.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// The size of the pieces sent down the pipe.
const PIECE: usize = 256 << 10;

/// Checks a push's start message.
pub fn check_push(start: &pb::PushImageStart) -> Result<(), Error> {
    validate::max_len("start.image", &start.image, limits::MAX_IMAGE_LEN)?;
    validate::no_control("start.image", &start.image)?;
    if !is_sha256_hex(&start.sha256) {
        return Err(InvalidField::new(
            "start.sha256",
            "must be the archive's SHA-256 as 64 lower-case hex digits",
        )
        .into());
    }
    let id_hex = start.image_id.strip_prefix("sha256:").unwrap_or_default();
    if !is_sha256_hex(id_hex) {
        return Err(InvalidField::new(
            "start.image_id",
            format!(
                "{:?} is not an image id (sha256: and 64 hex digits, from the archive's manifest.json)",
                start.image_id
            ),
        )
        .into());
    }
    if start.size_bytes == 0 {
        return Err(InvalidField::new(
            "start.size_bytes",
            "is 0: an image archive (docker save) is never empty",
        )
        .into());
    }
    validate::max_count("start.tags", start.tags.len(), limits::MAX_ENV)?;
    for (i, tag) in start.tags.iter().enumerate() {
        let at = format!("start.tags[{i}]");
        validate::max_len(&at, tag, limits::MAX_IMAGE_LEN)?;
        if tag.is_empty() || tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidField::new(at, format!("{tag:?} is not an image tag")).into());
        }
    }
    Ok(())
}

/// Whether `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// How one attempt at a node's transfer ended.
enum Attempt {
    /// The image is loaded: the engine's report, and the bytes sent.
    Loaded(Vec<String>, u64),
    /// The agent went away mid-transfer: worth another attempt once the
    /// node is back; `sent` bytes went out this time.
    Lost(String, u64),
    /// The agent did not answer (not connected, restarting, stopping): worth
    /// another attempt once the node is back, without counting against
    /// [`MAX_ATTEMPTS`] (the wait for the node bounds it).
    Unanswered(String),
    /// Failed for good (the agent refused, the archive is bad, the load
    /// failed).
    Failed(String),
}

impl Cluster {
    /// The nodes a push goes to (as a build's: `node`, every ready node,
    /// or the one placement chooses), and those skipped because they hold
    /// `image_id` with every one of `tags` (unless `force`).
    pub fn push_targets(
        &self,
        node: &str,
        all: bool,
        image_id: &str,
        tags: &[String],
        force: bool,
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        let nodes = self.build_nodes(node, all)?;
        if force {
            return Ok((nodes, Vec::new()));
        }
        let (mut send, mut skip) = (Vec::new(), Vec::new());
        for n in nodes {
            let held = self.shared.images.images_of(&n).is_some_and(|images| {
                images
                    .iter()
                    .any(|i| i.id == image_id && tags.iter().all(|t| super::images::matches(i, t)))
            });
            if held { skip.push(n) } else { send.push(n) }
        }
        Ok((send, skip))
    }

    /// Pushes `job`'s archive (from `source`) to `node` and has it loaded,
    /// reporting progress to `out`; tries again from where the agent
    /// stopped when it goes away mid-transfer. Ends early when `stop` is
    /// cancelled (the client went away, the server stops).
    pub(crate) async fn push_on(
        &self,
        node: &str,
        job: &PushJob,
        source: &dyn ArchiveSource,
        out: &mpsc::Sender<pb::PushProgress>,
        stop: &CancellationToken,
    ) -> pb::PushResult {
        let started = Instant::now();
        let mut sent_total = 0u64;
        let mut attempt = 0;
        // Since when the agent has not answered (reset by an answer).
        let mut unanswered: Option<Instant> = None;
        let outcome = loop {
            let result = tokio::select! {
                _ = stop.cancelled() => break Err("the push was cancelled".to_string()),
                r = self.push_attempt(node, job, source, out) => r,
            };
            let why = match result {
                Attempt::Loaded(loaded, sent) => break Ok((loaded, sent_total + sent)),
                Attempt::Failed(e) => break Err(e),
                Attempt::Unanswered(why) => {
                    let since = *unanswered.get_or_insert_with(Instant::now);
                    if since.elapsed() >= NODE_RETURN_WAIT {
                        break Err(format!(
                            "{why}; node {node:?} did not answer within {NODE_RETURN_WAIT:?}"
                        ));
                    }
                    why
                }
                Attempt::Lost(why, sent) => {
                    unanswered = None;
                    attempt += 1;
                    sent_total += sent;
                    if attempt >= MAX_ATTEMPTS {
                        break Err(format!("{why} (gave up after {attempt} cut transfers)"));
                    }
                    why
                }
            };
            tracing::info!(node, sha256 = %job.sha256, error = %why, "image transfer cut; waiting for the node to come back");
            let _ = out
                .send(pb::PushProgress {
                    node: node.to_string(),
                    phase: pb::PushPhase::Waiting as i32,
                    bytes_total: job.size,
                    message: why.clone(),
                    ..Default::default()
                })
                .await;
            if !self.wait_ready_again(node, stop).await {
                break Err(format!(
                    "{why}; node {node:?} did not come back within {NODE_RETURN_WAIT:?}"
                ));
            }
        };
        let result = match outcome {
            Ok((loaded, sent)) => {
                tracing::info!(node, sha256 = %job.sha256, image = %job.image, took = ?started.elapsed(), sent, "image pushed");
                pb::PushResult {
                    node: node.to_string(),
                    error: String::new(),
                    loaded,
                    bytes_sent: sent,
                }
            }
            Err(error) => pb::PushResult {
                node: node.to_string(),
                error,
                loaded: Vec::new(),
                bytes_sent: sent_total,
            },
        };
        self.push_event(node, job, &result).await;
        result
    }

    /// Waits until `node` is ready after its agent went away (its
    /// heartbeats stopped, then resumed): first for the scheduler to
    /// notice, then for the node to be ready. `false` when it is not
    /// within [`NODE_RETURN_WAIT`] or `stop` is cancelled.
    async fn wait_ready_again(&self, node: &str, stop: &CancellationToken) -> bool {
        let deadline = Instant::now() + NODE_RETURN_WAIT;
        // An agent that restarts quickly may never be seen as down: give
        // it a moment to go (or to answer) before trying again.
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        while Instant::now() < deadline {
            if self.node_ready(node) {
                return true;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        false
    }

    /// One attempt: open the transfer, send the rest of the archive, read
    /// the agent's progress and outcome.
    async fn push_attempt(
        &self,
        node: &str,
        job: &PushJob,
        source: &dyn ArchiveSource,
        out: &mpsc::Sender<pb::PushProgress>,
    ) -> Attempt {
        let command = pb::ImportImageCommand {
            sha256: job.sha256.clone(),
            size_bytes: job.size,
            image_id: job.image_id.clone(),
            up: None,
            down: None,
            session: uuid::Uuid::new_v4().simple().to_string(),
        };
        let timeout = self.shared.settings.command_timeout;
        let TunnelPipes {
            mut up,
            mut down,
            opened,
        } = match self.shared.link.open_import(node, command, timeout).await {
            Ok(pipes) => pipes,
            Err(Ok(pb::agent_reply::Result::Error(e)))
                if e.code == pb::AgentErrorCode::BadCommand as i32 =>
            {
                return Attempt::Failed(format!(
                    "the agent of node {node:?} did not take the image ({}); an agent older than the scheduler cannot load pushed images: upgrade it",
                    e.message
                ));
            }
            // Stopping; or still holding the archive for an earlier attempt
            // it has not yet seen abandoned (it lets go once that pipe falls
            // silent): both worth asking again.
            Err(Ok(pb::agent_reply::Result::Error(e)))
                if e.code == pb::AgentErrorCode::ShuttingDown as i32
                    || e.code == pb::AgentErrorCode::Conflict as i32 =>
            {
                return Attempt::Unanswered(format!("node {node:?}: {}", e.message));
            }
            Err(Ok(pb::agent_reply::Result::Error(e))) => {
                return Attempt::Failed(format!("node {node:?}: {}", e.message));
            }
            Err(Ok(other)) => {
                return Attempt::Failed(format!(
                    "the agent of node {node:?} sent an unexpected reply: {other:?}"
                ));
            }
            Err(Err(e)) => return Attempt::Unanswered(Error::from(e).to_string()),
        };
        let offset = opened.offset.min(job.size);
        let progress = |phase: pb::PushPhase, done: u64, message: String| pb::PushProgress {
            node: node.to_string(),
            phase: phase as i32,
            bytes_done: done,
            bytes_total: job.size,
            resumed_from: offset,
            message,
        };
        if offset > 0 {
            tracing::info!(node, sha256 = %job.sha256, offset, "resuming an image transfer");
        }
        let _ = out
            .send(progress(pb::PushPhase::Sending, offset, String::new()))
            .await;

        // Sends the rest of the archive; gives `down` back (to hear the
        // agent's loss while it loads) with the bytes sent.
        let send = async move {
            let mut sent = 0u64;
            let result = send_archive(&mut down, source, offset, job.size, &mut sent, |done| {
                let _ = out.try_send(progress(pb::PushPhase::Sending, done, String::new()));
            })
            .await;
            (result, down, sent)
        };
        let mut loaded = Vec::new();
        let recv = async {
            loop {
                match up.recv().await {
                    Some(Ok(data)) => {
                        for line in String::from_utf8_lossy(&data).lines() {
                            let line = line.trim();
                            if line.is_empty() {
                                continue;
                            }
                            if let Some(image) = line.strip_prefix("Loaded image") {
                                loaded.push(format!("Loaded image{image}"));
                            }
                            let _ = out
                                .send(progress(pb::PushPhase::Loading, job.size, line.to_string()))
                                .await;
                        }
                    }
                    Some(Err(PipeError::Remote(e))) => return Err(Ok(e)),
                    Some(Err(e)) => return Err(Err(e.to_string())),
                    None => return Ok(()),
                }
            }
        };
        // The agent's outcome ends `up` (a failed load ends it with the
        // engine's error, even while the archive is still being sent). An
        // agent that dies stops granting credit (the send fails after the
        // idle limit) or, once all is sent, stops its `down` end's
        // keepalive (heard here as silence).
        let (sent, outcome) = {
            tokio::pin!(send, recv);
            let mut sent = 0u64;
            let mut down: Option<Box<dyn super::TunnelSink>> = None;
            let mut agent_done = false;
            let outcome = loop {
                tokio::select! {
                    // The send first: its end precedes the agent's outcome.
                    biased;
                    (result, back, n) = &mut send, if down.is_none() => {
                        sent = n;
                        match result {
                            Ok(()) => {
                                down = Some(back);
                                let _ = out
                                    .send(progress(pb::PushPhase::Loading, job.size, String::new()))
                                    .await;
                            }
                            Err(Ok(pipe)) => break Err(Ok(format!(
                                "sending the archive to node {node:?}: {pipe}"
                            ))),
                            Err(Err(local)) => break Err(Err(local)),
                        }
                    }
                    r = &mut recv => break match r {
                        Ok(()) if down.is_some() => Ok(()),
                        Ok(()) => Err(Err(format!(
                            "the agent of node {node:?} ended the transfer before it had the archive"
                        ))),
                        // Stopping, it kept what it received: resume.
                        Err(Ok(remote)) if remote == devctl_proto::bus::AGENT_STOPPING => {
                            Err(Ok(format!("node {node:?}: {remote}")))
                        }
                        Err(Ok(remote)) => Err(Err(remote)),
                        Err(Err(pipe)) => Err(Ok(format!(
                            "node {node:?} went away: {pipe}"
                        ))),
                    },
                    e = silence(down.as_mut(), agent_done) => match e {
                        // The agent ends its end once it is done: its
                        // outcome follows on `up`.
                        PipeError::Cancelled => agent_done = true,
                        other => break Err(Ok(format!(
                            "node {node:?} went away while loading: {other}"
                        ))),
                    },
                }
            };
            (sent, outcome)
        };
        up.cancel().await;
        match outcome {
            Ok(()) => Attempt::Loaded(loaded, sent),
            Err(Ok(lost)) => Attempt::Lost(lost, sent),
            Err(Err(failed)) => Attempt::Failed(failed),
        }
    }

    /// Records a push's outcome on `node` in the event history.
    async fn push_event(&self, node: &str, job: &PushJob, result: &pb::PushResult) {
        let (ty, message) = if result.error.is_empty() {
            (
                pb::EventType::ImagePushed,
                format!("image {} pushed to node {node} by {}", job.image, job.actor),
            )
        } else {
            (
                pb::EventType::ImagePushFailed,
                format!(
                    "push of image {} to node {node} by {} failed: {}",
                    job.image, job.actor, result.error
                ),
            )
        };
        let mut event = crate::events::node_event(node, ty, "push");
        event.actor = job.actor.clone();
        event.message = message;
        event.image = job.image.clone();
        let _ = self.emit(event, uuid::Uuid::new_v4().to_string()).await;
    }
}

/// Sends `source`'s archive from `offset` down `down` (`size` bytes in
/// all), counting into `sent` and calling `tick` with the bytes the node
/// holds about every [`PROGRESS_EVERY`]. `Err(Ok(e))`: the pipe failed
/// (the agent's loss); `Err(Err(e))`: the archive is unreadable or of the
/// wrong size (the agent is told).
async fn send_archive(
    down: &mut Box<dyn super::TunnelSink>,
    source: &dyn ArchiveSource,
    offset: u64,
    size: u64,
    sent: &mut u64,
    mut tick: impl FnMut(u64),
) -> Result<(), Result<PipeError, String>> {
    let mut reader = match source.open(offset).await {
        Ok(r) => r,
        Err(e) => {
            let e = format!("the scheduler cannot read the archive: {e}");
            down.finish(Some(e.clone())).await;
            return Err(Err(e));
        }
    };
    let mut buf = vec![0u8; PIECE];
    let mut last = Instant::now();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let e = format!("the stored archive cannot be read: {e}");
                down.finish(Some(e.clone())).await;
                return Err(Err(e));
            }
        };
        down.send(&buf[..n]).await.map_err(Ok)?;
        *sent += n as u64;
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            tick(offset + *sent);
        }
    }
    if offset + *sent != size {
        let e = format!(
            "the stored archive has {} bytes, not {size}",
            offset + *sent
        );
        down.finish(Some(e.clone())).await;
        return Err(Err(e));
    }
    down.finish(None).await;
    Ok(())
}

/// What `down` hears once the archive is sent: the agent's end cancelling
/// (it is done) or falling silent (it is gone). Pending before the
/// archive is sent, and after the cancel was heard.
async fn silence(down: Option<&mut Box<dyn super::TunnelSink>>, heard_cancel: bool) -> PipeError {
    match down {
        Some(d) if !heard_cancel => d.closed().await,
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> pb::PushImageStart {
        pb::PushImageStart {
            image: "team/tool:1".into(),
            image_id: format!("sha256:{}", "a".repeat(64)),
            tags: vec!["team/tool:1".into()],
            size_bytes: 10,
            sha256: "b".repeat(64),
            ..Default::default()
        }
    }

    fn field(s: &pb::PushImageStart) -> Option<String> {
        match check_push(s) {
            Ok(()) => None,
            Err(e) => match e.kind() {
                super::super::ErrorKind::InvalidSpec { field } => Some(field.clone()),
                other => panic!("{other:?}"),
            },
        }
    }

    #[test]
    fn pushes_are_checked_by_field() {
        assert_eq!(field(&start()), None);
        let mut s = start();
        s.sha256 = "B".repeat(64);
        assert_eq!(field(&s).as_deref(), Some("start.sha256"));
        let mut s = start();
        s.image_id = "a".repeat(64);
        assert_eq!(field(&s).as_deref(), Some("start.image_id"));
        let mut s = start();
        s.size_bytes = 0;
        assert_eq!(field(&s).as_deref(), Some("start.size_bytes"));
        let mut s = start();
        s.tags = vec!["a b".into()];
        assert_eq!(field(&s).as_deref(), Some("start.tags[0]"));
        let mut s = start();
        s.image = "x\u{1b}[2J".into();
        assert_eq!(field(&s).as_deref(), Some("start.image"));
    }
}
