//! Streams to a container on its node: its output (logs), exec sessions,
//! and the event history; and what every session in a container (exec,
//! SSH, port-forward) shares: it is recorded as a start and an end event
//! and counted as use of the container while it lasts.

use devctl_proto::container::ContainerExt;
use std::time::SystemTime;

use devctl_proto::{
    pb::{self, agent_command::Command},
    validate::{self, InvalidField, limits},
};

use super::{
    Cluster, Error,
    error::{self, agent_error},
    now,
};
use crate::activity::SessionKind;

impl Cluster {
    /// Opens `name`'s output on its node.
    pub async fn open_logs(
        &self,
        name: &str,
        req: &pb::StreamLogsRequest,
    ) -> Result<crate::bus::StreamReader, Error> {
        if req.tail.is_some_and(|t| t < 0) {
            return Err(InvalidField::new("tail", "must not be negative").into());
        }
        let c = self.record(name)?;
        if !self.settles_ready(&c.status().node).await {
            return Err(error::node_not_ready(
                &c.status().node,
                format!(
                    "node {:?} of container {name:?} is down; its output cannot be read now",
                    c.status().node
                ),
            ));
        }
        let cmd = pb::LogsCommand {
            id: c.id.clone(),
            follow: req.follow,
            tail: req.tail,
            since: req.since,
            timestamps: req.timestamps,
            stream: None,
        };
        let timeout = self.shared.settings.command_timeout;
        let build = |setup, _: &str| {
            Command::Logs(pb::LogsCommand {
                stream: Some(setup),
                ..cmd
            })
        };
        match self
            .shared
            .link
            .open_stream(&c.status().node, Box::new(build), timeout)
            .await
        {
            Ok(reader) => Ok(reader),
            Err(Ok(reply)) => Err(agent_error(reply, &c)),
            Err(Err(e)) => Err(e.into()),
        }
    }

    /// Starts a command in `start.name` as `actor`: the output stream, the
    /// input sender, and the session (recorded as an exec.started event;
    /// report its end with [`Cluster::session_ended`]).
    pub async fn open_exec(
        &self,
        start: pb::ExecStart,
        actor: &str,
    ) -> Result<
        (
            crate::bus::StreamReader,
            crate::bus::ExecInputSender,
            Session,
        ),
        Error,
    > {
        if start.command.is_empty() {
            return Err(InvalidField::new("start.command", "is required (e.g. [\"sh\"])").into());
        }
        validate::max_count("start.command", start.command.len(), limits::MAX_ARGS)?;
        validate::max_count("start.env", start.env.len(), limits::MAX_ENV)?;
        validate::max_len("start.workdir", &start.workdir, limits::MAX_PATH_LEN)?;
        if let Some(size) = start.size {
            validate::in_range("start.size.rows", size.rows, limits::MAX_TERMINAL_SIZE, "")?;
            validate::in_range("start.size.cols", size.cols, limits::MAX_TERMINAL_SIZE, "")?;
        }
        if start.workdir.contains('\0') {
            return Err(InvalidField::new("start.workdir", "must not contain NUL").into());
        }
        validate::no_control("start.workdir", &start.workdir)?;
        validate::max_len("start.user", &start.user, 256)?;
        validate::no_control("start.user", &start.user)?;
        for (i, a) in start.command.iter().enumerate() {
            validate::no_control(&format!("start.command[{i}]"), a)?;
        }
        for (i, e) in start.env.iter().enumerate() {
            validate::no_control(&format!("start.env[{i}]"), e)?;
        }
        let total: usize = start
            .command
            .iter()
            .chain(&start.env)
            .map(String::len)
            .sum();
        if total > limits::MAX_SPEC_BYTES {
            return Err(InvalidField::new(
                "start",
                format!(
                    "command and env add up to {total} bytes; at most {} are allowed (send large input on stdin)",
                    limits::MAX_SPEC_BYTES
                ),
            )
            .into());
        }
        if start
            .command
            .iter()
            .chain(&start.env)
            .any(|a| a.contains('\0'))
        {
            return Err(InvalidField::new("start.command", "must not contain NUL").into());
        }
        let c = self.record(&start.name)?;
        must_be_running(&c)?;
        if !self.settles_ready(&c.status().node).await {
            return Err(error::node_not_ready(
                &c.status().node,
                format!(
                    "node {:?} of container {:?} is down",
                    c.status().node,
                    c.name
                ),
            ));
        }
        let command = start.command.join(" ");
        let session = Session::new(&c, actor, SessionWhat::Exec { command });
        let container_id = c.id.clone();
        let node = c.status().node.clone();
        let build = |setup, id: &str| {
            Command::Exec(pb::ExecCommand {
                id: container_id,
                start: Some(start),
                stream: Some(setup),
                input_subject: devctl_proto::bus::exec_input_subject(&node, id),
            })
        };
        let mut session_id = String::new();
        let build = |setup, id: &str| {
            session_id = id.to_string();
            build(setup, id)
        };
        let timeout = self.shared.settings.command_timeout;
        let opened = self
            .shared
            .link
            .open_exec(&c.status().node, Box::new(build), timeout)
            .await;
        let (reader, input) = match opened {
            Ok(opened) => opened,
            Err(Ok(reply)) => return Err(agent_error(reply, &c)),
            Err(Err(e)) => return Err(e.into()),
        };
        let session = Session {
            id: session_id,
            ..session
        };
        self.session_started(&session).await;
        Ok((reader, input, session))
    }

    /// Records the start of `session` (its agent end is open): counted as
    /// use of its container from now on, and an event. Call
    /// [`Cluster::session_ended`] when it is over, whatever happens.
    pub async fn session_started(&self, session: &Session) {
        tracing::info!(session = %session.id, container = %session.container, actor = %session.actor, what = %session.what, "session started");
        let now = SystemTime::now();
        self.shared
            .activity
            .session_opened(&session.container, session.what.activity(), now);
        let _ = self
            .emit(session.event(true, None), session.event_id(true))
            .await;
    }

    /// Records the end of `session` (`exit_code`: an exec's): its container
    /// is no longer in use by it, and an event.
    pub async fn session_ended(&self, session: &Session, exit_code: Option<i32>) {
        tracing::info!(session = %session.id, container = %session.container, what = %session.what, ?exit_code, "session ended");
        let now = SystemTime::now();
        self.shared
            .activity
            .session_closed(&session.container, session.what.activity(), now);
        let _ = self
            .emit(session.event(false, exit_code), session.event_id(false))
            .await;
    }

    /// Reads the event history matching `filter` from `start`.
    pub async fn watch_events(
        &self,
        filter: String,
        start: crate::bus::EventStart,
    ) -> Result<crate::bus::EventReader, Error> {
        self.shared
            .link
            .watch_events(filter, start)
            .await
            .map_err(|e| error::history_unavailable("event history", e))
    }
}

/// One session in a container (an exec, an SSH connection, a forwarded
/// port's connection): who opened what, where.
#[derive(Debug, Clone)]
pub struct Session {
    /// Unique id.
    pub id: String,
    /// The container's name.
    pub container: String,
    /// The container's id.
    pub container_id: String,
    /// The container's node.
    pub node: String,
    /// Who opened it.
    pub actor: String,
    /// What it is.
    pub what: SessionWhat,
}

/// What a session does in its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionWhat {
    /// `devctl exec`: the command line.
    Exec {
        /// The command and its arguments, joined by spaces.
        command: String,
    },
    /// An SSH connection (TunnelService, kind SSH).
    Ssh,
    /// A TCP connection to a port of the container (`devctl port-forward`).
    Forward {
        /// The port in the container.
        port: u16,
    },
}

impl std::fmt::Display for SessionWhat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionWhat::Exec { .. } => f.write_str("exec"),
            SessionWhat::Ssh => f.write_str("ssh"),
            SessionWhat::Forward { port } => write!(f, "port-forward to port {port}"),
        }
    }
}

impl SessionWhat {
    /// How the inactivity stop counts it.
    fn activity(&self) -> SessionKind {
        match self {
            SessionWhat::Exec { .. } => SessionKind::Exec,
            SessionWhat::Ssh | SessionWhat::Forward { .. } => SessionKind::Forward,
        }
    }

    /// Its start and end event types, and the events' reason.
    fn events(&self) -> (pb::EventType, pb::EventType, &'static str) {
        match self {
            SessionWhat::Exec { .. } => {
                (pb::EventType::ExecStarted, pb::EventType::ExecEnded, "exec")
            }
            SessionWhat::Ssh => (pb::EventType::SshStarted, pb::EventType::SshEnded, "ssh"),
            SessionWhat::Forward { .. } => (
                pb::EventType::PortForwardStarted,
                pb::EventType::PortForwardEnded,
                "port_forward",
            ),
        }
    }
}

impl Session {
    /// A session of `what` in `c`, opened by `actor`; whoever opens it
    /// sets its id (the bus's stream id for an exec, the tunnel's own for a
    /// tunnel).
    pub(super) fn new(c: &pb::Container, actor: &str, what: SessionWhat) -> Self {
        Self {
            id: String::new(),
            container: c.name.clone(),
            container_id: c.id.clone(),
            node: c.status().node.clone(),
            actor: actor.to_string(),
            what,
        }
    }

    /// The de-duplicating id of its start or end event.
    fn event_id(&self, start: bool) -> String {
        let (_, _, reason) = self.what.events();
        let edge = if start { "start" } else { "end" };
        format!("{reason}-{edge}-{}", self.id)
    }

    fn event(&self, start: bool, exit_code: Option<i32>) -> pb::Event {
        let (started, ended, reason) = self.what.events();
        let (ty, edge) = if start {
            (started, "started")
        } else {
            (ended, "ended")
        };
        let message = match &self.what {
            SessionWhat::Exec { command } => format!("exec session {} {edge}: {command}", self.id),
            SessionWhat::Ssh => format!("SSH session {} {edge}", self.id),
            SessionWhat::Forward { port } => {
                format!("port-forward session {} to port {port} {edge}", self.id)
            }
        };
        pb::Event {
            time: now(),
            r#type: ty as i32,
            container: self.container.clone(),
            container_id: self.container_id.clone(),
            node: self.node.clone(),
            actor: self.actor.clone(),
            reason: reason.into(),
            exit_code,
            message,
            session: self.id.clone(),
            ..Default::default()
        }
    }
}

/// Fails unless `c` runs (exec and tunnels reach only a running container).
pub(super) fn must_be_running(c: &pb::Container) -> Result<(), Error> {
    if c.status().state != pb::ContainerState::Running as i32 {
        return Err(error::wrong_state(
            &c.name,
            format!(
                "container {:?} is not running; start it first (devctl start {})",
                c.name, c.name
            ),
        ));
    }
    Ok(())
}
