//! Streams to a container on its node: its output (logs), exec sessions
//! (recorded as events and counted as use), and the event history.

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
    /// report its end with [`Cluster::exec_ended`]).
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
        if c.status().state != pb::ContainerState::Running as i32 {
            return Err(error::wrong_state(
                &c.name,
                format!(
                    "container {:?} is not running; start it first (devctl start {})",
                    c.name, c.name
                ),
            ));
        }
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
        let command_line = start.command.join(" ");
        let session = Session {
            id: String::new(),
            container: c.name.clone(),
            container_id: c.id.clone(),
            node: c.status().node.clone(),
            actor: actor.to_string(),
            command: command_line,
        };
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
        tracing::info!(session = %session.id, container = %session.container, actor, "exec session started");
        self.record_session(&session, pb::EventType::ExecStarted, None)
            .await;
        Ok((reader, input, session))
    }

    /// Records the end of an exec session.
    pub async fn exec_ended(&self, session: &Session, exit_code: Option<i32>) {
        tracing::info!(session = %session.id, container = %session.container, ?exit_code, "exec session ended");
        self.record_session(session, pb::EventType::ExecEnded, exit_code)
            .await;
    }

    /// Counts an exec session's start or end as use of its container, and
    /// records it as an event.
    async fn record_session(&self, session: &Session, ty: pb::EventType, exit_code: Option<i32>) {
        let (activity, now) = (&self.shared.activity, SystemTime::now());
        let id = if ty == pb::EventType::ExecStarted {
            activity.session_opened(&session.container, SessionKind::Exec, now);
            format!("exec-start-{}", session.id)
        } else {
            activity.session_closed(&session.container, SessionKind::Exec, now);
            format!("exec-end-{}", session.id)
        };
        let _ = self.emit(session.event(ty, exit_code), id).await;
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

/// One exec session: who ran what, where.
#[derive(Debug, Clone)]
pub struct Session {
    /// Unique id.
    pub id: String,
    /// Container name and id, and its node.
    pub container: String,
    /// The container's id.
    pub container_id: String,
    /// The container's node.
    pub node: String,
    /// Who ran it.
    pub actor: String,
    /// The command line.
    pub command: String,
}

impl Session {
    fn event(&self, ty: pb::EventType, exit_code: Option<i32>) -> pb::Event {
        let what = if ty == pb::EventType::ExecStarted {
            "started"
        } else {
            "ended"
        };
        pb::Event {
            time: now(),
            r#type: ty as i32,
            container: self.container.clone(),
            container_id: self.container_id.clone(),
            node: self.node.clone(),
            actor: self.actor.clone(),
            reason: "exec".into(),
            exit_code,
            message: format!("exec session {} {what}: {}", self.id, self.command),
            session: self.id.clone(),
            ..Default::default()
        }
    }
}
