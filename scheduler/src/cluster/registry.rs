//! Pulling a container's image before its create (ContainerSpec.
//! pull_policy): the agent pulls with the stored credentials of the image's
//! registry and streams its progress; the scheduler passes the progress on
//! as events (EVENT_TYPE_IMAGE_PULLING, about once a second; the CLI shows
//! them while its create waits) and waits for the end as long as progress
//! keeps coming — a slow pull is not a lost agent, a silent one is.

use std::time::{Duration, Instant};

use devctl_proto::{
    container::ContainerExt,
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    registry::registry_host,
};
use futures::future::BoxFuture;
use prost::Message;

use super::{Cluster, Error, error::agent_error, now};
use crate::bus::{BusError, StreamReader};

/// How long a pull may go without any progress from its agent (which
/// repeats its last progress every few seconds while the engine is busy).
pub(crate) const PULL_SILENCE: Duration = Duration::from_secs(30);
/// Progress events closer together than this are skipped.
const EVENT_EVERY: Duration = Duration::from_secs(1);

/// A pull's progress from its agent.
pub(crate) trait PullSource: std::fmt::Debug + Send {
    /// The next progress; `None` once the stream ended (after `done`).
    fn next(&mut self) -> BoxFuture<'_, Option<Result<pb::PullProgress, BusError>>>;
    /// Tells the agent to stop (the pull is abandoned).
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

impl PullSource for StreamReader {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<pb::PullProgress, BusError>>> {
        Box::pin(async move {
            let (_, data) = match StreamReader::next(self).await? {
                Ok(chunk) => chunk,
                Err(e) => return Some(Err(e)),
            };
            Some(
                pb::PullProgress::decode(data.as_slice())
                    .map_err(|e| BusError::Nats(format!("undecodable pull progress: {e}"))),
            )
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(StreamReader::close(*self))
    }
}

/// "12.3 MB of 45.0 MB, 2 of 5 layers"
fn progress_text(p: &pb::PullProgress) -> String {
    let mb = |b: i64| b as f64 / 1_000_000.0;
    let mut s = if p.total_bytes > 0 {
        format!(
            "{:.1} MB of {:.1} MB",
            mb(p.current_bytes),
            mb(p.total_bytes)
        )
    } else {
        "starting".to_string()
    };
    if p.layers > 0 {
        s.push_str(&format!(", {} of {} layers", p.layers_done, p.layers));
    }
    s
}

impl Cluster {
    /// The id of container `name` if its create is in progress (recorded
    /// `PENDING`, a create intent held): it holds the name's lock for as
    /// long as its image takes to pull, so node-wide passes (inventory
    /// sync, recorded removals) skip it instead of waiting; the create
    /// records its own outcome.
    pub(super) fn being_created(&self, name: &str) -> Option<String> {
        let c = self.store().container(name).ok()??;
        (c.status().state == pb::ContainerState::Pending as i32
            && self
                .shared
                .intents
                .get(&c.id)
                .is_some_and(|i| i.op == crate::events::Op::Create))
        .then_some(c.id)
    }

    /// Pulls `c`'s image on its node as its spec's pull policy asks
    /// (nothing for NEVER), with the stored credentials of the image's
    /// registry. `Err`: the pull failed, and nothing was created.
    pub(super) async fn pull_image(&self, c: &pb::Container) -> Result<(), Error> {
        let spec = c.spec();
        let policy = match spec.pull_policy() {
            pb::PullPolicy::Never => return Ok(()),
            pb::PullPolicy::Unspecified => pb::PullPolicy::Missing,
            p => p,
        };
        let host = registry_host(&spec.image);
        let auth = self.store().registry_auth(&host).map_err(|e| {
            tracing::error!(error = %e, registry = %host, "registry credentials");
            Error::new(
                super::error::ErrorKind::RegistryAuthFailed {
                    node: c.status().node.clone(),
                    host: host.clone(),
                },
                e.to_string(),
            )
        })?;
        let node = c.status().node.clone();
        let command = pb::PullCommand {
            id: c.id.clone(),
            image: spec.image.clone(),
            policy: policy as i32,
            auth,
            stream: None,
        };
        let timeout = self.shared.settings.command_timeout;
        let mut source = match self.shared.link.open_pull(&node, command, timeout).await {
            Ok(s) => s,
            Err(Ok(Reply::Error(e))) if e.code == pb::AgentErrorCode::BadCommand as i32 => {
                return Err(Error::new(
                    super::error::ErrorKind::AgentTooOld { node: node.clone() },
                    format!(
                        "the agent of node {node:?} did not take the pull command ({}); an agent older than the scheduler cannot pull: upgrade it, or create with --pull never",
                        e.message
                    ),
                ));
            }
            Err(Ok(reply)) => return Err(agent_error(reply, c)),
            Err(Err(e)) => return Err(e.into()),
        };
        let mut last_event: Option<Instant> = None;
        let mut events = 0u32;
        loop {
            let item = match tokio::time::timeout(PULL_SILENCE, source.next()).await {
                Ok(item) => item,
                Err(_) => {
                    source.close().await;
                    return Err(Error::from(BusError::Timeout {
                        node: node.clone(),
                        timeout: PULL_SILENCE,
                    })
                    .annotate(&format!(
                        "the pull of {:?} stopped reporting progress",
                        spec.image
                    )));
                }
            };
            let p = match item {
                Some(Ok(p)) => p,
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(Error::internal(format!(
                        "node {node:?} ended the pull of {:?} without a result",
                        spec.image
                    )));
                }
            };
            if p.done {
                if let Some(e) = p.error {
                    tracing::info!(name = %c.name, node, image = %spec.image, error = %e.message, "pull failed");
                    return Err(agent_error(Reply::Error(e), c));
                }
                if p.pulled {
                    tracing::info!(name = %c.name, node, image = %spec.image, "image pulled");
                    let message = format!("pulled image {} ({})", spec.image, progress_text(&p));
                    self.pull_event(c, pb::EventType::ImagePulled, "pulled", message, events)
                        .await;
                }
                return Ok(());
            }
            if p.status == "present" {
                continue;
            }
            if last_event.is_none_or(|t| t.elapsed() >= EVENT_EVERY) {
                last_event = Some(Instant::now());
                let message = format!("pulling image {}: {}", spec.image, progress_text(&p));
                self.pull_event(c, pb::EventType::ImagePulling, "pulling", message, events)
                    .await;
                events += 1;
            }
        }
    }

    async fn pull_event(
        &self,
        c: &pb::Container,
        ty: pb::EventType,
        reason: &str,
        message: String,
        n: u32,
    ) {
        let event = pb::Event {
            time: now(),
            r#type: ty as i32,
            container: c.name.clone(),
            container_id: c.id.clone(),
            node: c.status().node.clone(),
            actor: c.owner.clone(),
            reason: reason.into(),
            message,
            ..Default::default()
        };
        let id = format!("{}-pull-{}-{n}", c.id, ty as i32);
        let _ = self.emit(event, id).await;
    }
}

/// How the bus opens a pull: a stream whose chunks are PullProgress.
pub(crate) async fn open_pull_on_bus(
    bus: &crate::bus::Bus,
    node: &str,
    command: pb::PullCommand,
    timeout: Duration,
) -> Result<Box<dyn PullSource>, super::link::NotOpened> {
    let build = move |setup, _: &str| {
        Command::Pull(pb::PullCommand {
            stream: Some(setup),
            ..command
        })
    };
    let reader = bus.open_stream(node, build, timeout).await?;
    Ok(Box::new(reader))
}
