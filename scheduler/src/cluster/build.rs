//! Image builds on nodes (`BuildService`, and a template's derived image
//! before a container of it is created): which nodes build, and one build
//! on one node, its context sent and its output read over the bus at once
//! (`AgentLink::open_build`).

use std::{collections::HashMap, sync::Arc};

use devctl_proto::{
    pb,
    validate::{self, InvalidField, limits},
};
use tokio::sync::mpsc;

use super::{Cluster, Error, ErrorKind, error};
use crate::placement;

/// Default for the largest build context a client may send
/// (`--max-build-context`).
pub const DEFAULT_MAX_BUILD_CONTEXT: u64 = 256 << 20;

/// One build, as every node it runs on gets it.
#[derive(Debug, Clone)]
pub struct BuildJob {
    /// The image reference to tag.
    pub tag: String,
    /// The Dockerfile's path in the context; empty: "Dockerfile".
    pub dockerfile: String,
    /// Build arguments.
    pub build_args: HashMap<String, String>,
    /// The context (a tar archive), shared by the nodes building it.
    pub context: Arc<Vec<u8>>,
    /// Build only where no image is tagged `tag` yet.
    pub skip_if_present: bool,
    /// Who asked for it (for the event history).
    pub actor: String,
    /// Why: "build" (BuildService) or "template" (a template's image).
    pub reason: &'static str,
}

/// What a build on one node reports as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// Build output of `node`.
    Output {
        /// The node.
        node: String,
        /// Its output.
        data: Vec<u8>,
    },
}

/// Checks a build's tag, Dockerfile path and arguments (`field` names the
/// request's message, e.g. "start").
pub fn check_build(
    field: &str,
    tag: &str,
    dockerfile: &str,
    args: &HashMap<String, String>,
) -> Result<(), Error> {
    if tag.is_empty() {
        return Err(InvalidField::new(
            format!("{field}.tag"),
            "is required: the image reference to tag the result with (-t NAME[:TAG])",
        )
        .into());
    }
    validate::max_len(&format!("{field}.tag"), tag, limits::MAX_IMAGE_LEN)?;
    if tag.chars().any(|c| c.is_whitespace() || c.is_control()) || tag.starts_with('-') {
        return Err(InvalidField::new(
            format!("{field}.tag"),
            format!("{tag:?} is not an image reference (e.g. team/tool:1)"),
        )
        .into());
    }
    validate::max_len(
        &format!("{field}.dockerfile"),
        dockerfile,
        limits::MAX_PATH_LEN,
    )?;
    validate::no_control(&format!("{field}.dockerfile"), dockerfile)?;
    if dockerfile.starts_with('/') || dockerfile.split('/').any(|p| p == "..") {
        return Err(InvalidField::new(
            format!("{field}.dockerfile"),
            format!("{dockerfile:?} is not inside the context: give a relative path such as docker/Dockerfile"),
        )
        .into());
    }
    validate::max_count(&format!("{field}.build_args"), args.len(), limits::MAX_ENV)?;
    for (k, v) in args {
        let at = format!("{field}.build_args[{k}]");
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(
                InvalidField::new(at, "an ARG name is letters, digits and underscores").into(),
            );
        }
        validate::no_control(&at, v)?;
        if v.contains('\0') {
            return Err(InvalidField::new(at, "must not contain NUL").into());
        }
    }
    Ok(())
}

impl Cluster {
    /// The largest build context the cluster accepts.
    pub fn max_build_context(&self) -> u64 {
        self.shared.settings.max_build_context
    }

    /// The nodes a build runs on: `node` (which must be ready), every ready
    /// node (`all`), or the one placement would choose for an empty
    /// container.
    pub fn build_nodes(&self, node: &str, all: bool) -> Result<Vec<String>, Error> {
        if !node.is_empty() && all {
            return Err(InvalidField::new(
                "start.node",
                "give a node or all_nodes (--node or --all), not both",
            )
            .into());
        }
        if !node.is_empty() {
            validate::dns_label("start.node", node)?;
            if self.shared.nodes.get(node).is_none() {
                return Err(error::node_not_found(node));
            }
            if !self.node_ready(node) {
                return Err(error::node_not_ready(
                    node,
                    format!("node {node:?} is not ready; nothing can be built there now"),
                ));
            }
            return Ok(vec![node.to_string()]);
        }
        if all {
            let mut nodes = self.shared.nodes.ready_nodes();
            nodes.sort();
            if nodes.is_empty() {
                return Err(Error::new(
                    ErrorKind::NoNodes,
                    "no node is ready to build on",
                ));
            }
            return Ok(nodes);
        }
        let settings = &self.shared.settings;
        let request = placement::Request {
            node: None,
            milli_cpus: 0,
            memory_bytes: 0,
            constraints: HashMap::new(),
            strategy: placement::Strategy::Spread,
            memory_threshold_percent: settings.memory_threshold_percent,
            cpu_overcommit: settings.cpu_overcommit,
            image: String::new(),
            image_required: false,
        };
        Ok(vec![self.place(&request, None)?])
    }

    /// Builds `job` on `node`, sending its output to `out` as it comes.
    /// `Err(message)`: the build failed (the engine's error, or the node's
    /// loss), or `out`'s reader went away.
    pub async fn build_on(
        &self,
        node: &str,
        job: &BuildJob,
        out: &mpsc::Sender<BuildEvent>,
    ) -> Result<(), String> {
        let command = pb::BuildCommand {
            tag: job.tag.clone(),
            dockerfile: job.dockerfile.clone(),
            build_args: job.build_args.clone(),
            up: None,
            down: None,
            session: uuid::Uuid::new_v4().simple().to_string(),
            context_size: job.context.len() as u64,
            skip_if_present: job.skip_if_present,
        };
        tracing::info!(node, tag = %job.tag, bytes = job.context.len(), "build");
        let timeout = self.shared.settings.command_timeout;
        let pipes = match self.shared.link.open_build(node, command, timeout).await {
            Ok(pipes) => pipes,
            Err(Ok(reply)) => {
                return Err(refusal(reply, node));
            }
            Err(Err(e)) => return Err(Error::from(e).to_string()),
        };
        let (mut up, mut down) = (pipes.up, pipes.down);
        let send = async {
            for piece in job.context.chunks(1 << 20) {
                down.send(piece).await?;
            }
            down.finish(None).await;
            Ok::<(), devctl_proto::pipe::PipeError>(())
        };
        // What the agent says when `skip_if_present` found the image (see
        // agent/src/build.rs): nothing was built, nothing is recorded.
        let present = format!("image {} is already on this node\n", job.tag);
        let mut skipped = false;
        let recv = async {
            let mut first = true;
            loop {
                match up.recv().await {
                    Some(Ok(data)) => {
                        if std::mem::take(&mut first) && job.skip_if_present {
                            skipped = data == present.as_bytes();
                        }
                        let event = BuildEvent::Output {
                            node: node.to_string(),
                            data,
                        };
                        if out.send(event).await.is_err() {
                            up.cancel().await;
                            return Err("the client went away".to_string());
                        }
                    }
                    Some(Err(devctl_proto::pipe::PipeError::Remote(e))) => return Err(e),
                    Some(Err(e)) => return Err(format!("node {node:?}: {e}")),
                    None => return Ok(()),
                }
            }
        };
        let (sent, built) = tokio::join!(send, recv);
        let outcome = match (sent, built) {
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(format!("sending the context to node {node:?}: {e}")),
            (Ok(()), Ok(())) => {
                tracing::info!(node, tag = %job.tag, "built");
                Ok(())
            }
        };
        if !(skipped && outcome.is_ok()) {
            self.build_event(node, job, &outcome).await;
        }
        outcome
    }

    /// Records a build's outcome in the event history.
    async fn build_event(&self, node: &str, job: &BuildJob, outcome: &Result<(), String>) {
        let (ty, message) = match outcome {
            Ok(()) => (
                pb::EventType::ImageBuilt,
                format!("image {} built on node {node} for {}", job.tag, job.actor),
            ),
            Err(e) => (
                pb::EventType::ImageBuildFailed,
                format!(
                    "build of image {} on node {node} for {} failed: {e}",
                    job.tag, job.actor
                ),
            ),
        };
        let mut event = crate::events::node_event(node, ty, job.reason);
        event.actor = job.actor.clone();
        event.message = message;
        event.image = job.tag.clone();
        if outcome.is_ok() {
            event.base_image = job.base_image().unwrap_or_default();
        }
        let _ = self.emit(event, uuid::Uuid::new_v4().to_string()).await;
    }
}

/// The most of a Dockerfile read to find its base image.
const MAX_DOCKERFILE: u64 = 1 << 20;

impl BuildJob {
    /// The image the build starts from (its Dockerfile's final `FROM`),
    /// where the context holds a readable Dockerfile that names one.
    pub fn base_image(&self) -> Option<String> {
        use std::io::Read;
        let wanted = if self.dockerfile.is_empty() {
            "Dockerfile"
        } else {
            self.dockerfile.as_str()
        };
        let wanted = std::path::Path::new(wanted.trim_start_matches("./"));
        let mut archive = tar::Archive::new(self.context.as_slice());
        for entry in archive.entries().ok()? {
            let entry = entry.ok()?;
            let path = entry.path().ok()?.into_owned();
            if path.strip_prefix("./").unwrap_or(&path) != wanted {
                continue;
            }
            let mut text = String::new();
            entry.take(MAX_DOCKERFILE).read_to_string(&mut text).ok()?;
            return crate::graph::model::dockerfile_base(&text);
        }
        None
    }
}

/// What an agent's refusal to open a build says.
fn refusal(reply: pb::agent_reply::Result, node: &str) -> String {
    match reply {
        pb::agent_reply::Result::Error(e) if e.code == pb::AgentErrorCode::BadCommand as i32 => {
            format!(
                "the agent of node {node:?} did not take the build command ({}); an agent older than the scheduler cannot build: upgrade it",
                e.message
            )
        }
        pb::agent_reply::Result::Error(e) => format!("node {node:?}: {}", e.message),
        other => format!("the agent of node {node:?} sent an unexpected reply: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(tag: &str, dockerfile: &str, args: &[(&str, &str)]) -> Option<String> {
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match check_build("start", tag, dockerfile, &args) {
            Ok(()) => None,
            Err(e) => match e.kind() {
                ErrorKind::InvalidSpec { field } => Some(field.clone()),
                other => panic!("{other:?}"),
            },
        }
    }

    fn job_with(files: &[(&str, &str)], dockerfile: &str) -> BuildJob {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, text.as_bytes()).unwrap();
        }
        BuildJob {
            tag: "team/tool:1".into(),
            dockerfile: dockerfile.into(),
            build_args: HashMap::new(),
            context: Arc::new(tar.into_inner().unwrap()),
            skip_if_present: false,
            actor: "alice".into(),
            reason: "build",
        }
    }

    #[test]
    fn a_build_knows_its_base_from_the_dockerfile_in_its_context() {
        let files = [
            ("./Dockerfile", "FROM devctl/busybox:latest\nRUN true\n"),
            (
                "docker/Dockerfile.dev",
                "FROM golang:1 AS b\nFROM debian:12\n",
            ),
        ];
        assert_eq!(
            job_with(&files, "").base_image().as_deref(),
            Some("devctl/busybox:latest")
        );
        assert_eq!(
            job_with(&files, "docker/Dockerfile.dev")
                .base_image()
                .as_deref(),
            Some("debian:12")
        );
        assert_eq!(job_with(&files, "missing").base_image(), None);
        assert_eq!(job_with(&[], "").base_image(), None);
    }

    #[test]
    fn builds_are_checked_by_field() {
        assert_eq!(field("team/tool:1", "", &[("V", "1")]), None);
        assert_eq!(field("team/tool:1", "docker/Dockerfile.dev", &[]), None);
        assert_eq!(field("", "", &[]).as_deref(), Some("start.tag"));
        assert_eq!(field("a b", "", &[]).as_deref(), Some("start.tag"));
        assert_eq!(field("--rm", "", &[]).as_deref(), Some("start.tag"));
        assert_eq!(
            field("t", "/etc/passwd", &[]).as_deref(),
            Some("start.dockerfile")
        );
        assert_eq!(
            field("t", "../Dockerfile", &[]).as_deref(),
            Some("start.dockerfile")
        );
        assert_eq!(
            field("t", "a\u{1b}b", &[]).as_deref(),
            Some("start.dockerfile")
        );
        assert_eq!(
            field("t", "", &[("A B", "1")]).as_deref(),
            Some("start.build_args[A B]")
        );
        assert_eq!(
            field("t", "", &[("A", "\u{1b}[2J")]).as_deref(),
            Some("start.build_args[A]")
        );
    }
}
