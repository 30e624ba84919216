//! Start, stop and restart: who asks ([`Cause`]), which of the three
//! ([`Lifecycle`]), the one path that runs them, and what a successful one
//! changes beyond the observed state.

use devctl_proto::container::ContainerExt;
use std::time::SystemTime;

use devctl_proto::{
    pb::{self, agent_command::Command, agent_reply::Result as Reply},
    validate::InvalidField,
};

use super::{
    Cluster, Error, ErrorKind,
    delete::removal_pending_message,
    error::{self, agent_error},
    lease_from_now, now,
    observe::apply_status,
};
use crate::events::Op;

/// Who wants a lifecycle change: a user, or the scheduler for a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// A user's request.
    User,
    /// The lease ran out.
    Lease,
    /// Unused for the idle window.
    Idle,
    /// The health check failed.
    Health,
    /// Its node is drained.
    Drain,
}

impl Cause {
    /// The reason word of the events this causes.
    pub(super) fn word(self) -> &'static str {
        match self {
            Cause::User => "manual",
            Cause::Lease => "lease_expired",
            Cause::Idle => "inactivity",
            Cause::Health => "unhealthy",
            Cause::Drain => "drained",
        }
    }

    /// The stop reason it records.
    pub(super) fn stop_reason(self) -> pb::StopReason {
        match self {
            Cause::User => pb::StopReason::Manual,
            Cause::Lease => pb::StopReason::LeaseExpired,
            Cause::Idle => pb::StopReason::Inactivity,
            Cause::Health => pb::StopReason::Unhealthy,
            Cause::Drain => pb::StopReason::Drained,
        }
    }
}

/// Which lifecycle change is asked for. Each is matched exhaustively: no
/// other operation can reach [`Cluster::lifecycle`] and become a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// StartContainer (or a re-placement when the node is cordoned).
    Start,
    /// StopContainer.
    Stop,
    /// RestartContainer.
    Restart,
}

impl Lifecycle {
    /// The operation its intent records (what its engine events mean).
    fn op(self) -> Op {
        match self {
            Lifecycle::Start => Op::Start,
            Lifecycle::Stop => Op::Stop,
            Lifecycle::Restart => Op::Restart,
        }
    }

    /// The agent command that carries it out on container `id`.
    fn command(self, id: String, stop_timeout: i32) -> Command {
        match self {
            Lifecycle::Start => Command::Start(pb::StartCommand { id }),
            Lifecycle::Stop => Command::Stop(pb::StopCommand {
                id,
                timeout_seconds: stop_timeout,
            }),
            Lifecycle::Restart => Command::Restart(pb::RestartCommand {
                id,
                timeout_seconds: stop_timeout,
            }),
        }
    }

    /// The desired state it records once the node confirmed it.
    fn desired(self) -> pb::DesiredState {
        match self {
            Lifecycle::Stop => pb::DesiredState::Stopped,
            Lifecycle::Start | Lifecycle::Restart => pb::DesiredState::Running,
        }
    }
}

/// A check that the reason for an action still holds, made under the
/// container's lock.
pub(super) type Precheck = Box<dyn FnOnce(&pb::Container) -> bool + Send>;

impl Cluster {
    /// Fails unless `c`'s node is ready (waiting for it while its state is
    /// unknown), or `c` is being removed.
    async fn node_must_be_ready(&self, c: &pb::Container) -> Result<(), Error> {
        must_not_be_removing(c)?;
        if !self.settles_ready(&c.status().node).await {
            return Err(error::node_not_ready(
                &c.status().node,
                format!(
                    "node {:?} of container {:?} is down; retry when it is back (`devctl nodes`)",
                    c.status().node,
                    c.name
                ),
            ));
        }
        Ok(())
    }

    /// Runs a start/stop/restart command and records its outcome. `cause`
    /// says who wanted it: a user, or the scheduler itself (lease, idle,
    /// health, drain); `still` is checked under the container's lock first,
    /// and a container it rejects is returned unchanged (the reason to act
    /// went away meanwhile).
    pub(super) async fn lifecycle(
        &self,
        name: &str,
        op: Lifecycle,
        stop_timeout: i32,
        actor: &str,
        cause: Cause,
        still: Option<Precheck>,
    ) -> Result<pb::Container, Error> {
        let (this, name, actor) = (self.clone(), name.to_string(), actor.to_string());
        self.detached(async move {
            let _lock = this.shared.locks.lock(&name).await;
            let mut c = this.record(&name)?;
            if still.is_some_and(|f| !f(&c)) {
                return Ok(c);
            }
            // A container keeps to its workspace's node: refused when that
            // node is cordoned or down, placed there after a move.
            if op == Lifecycle::Start
                && let Some(node) = this.workspace_start_check(&c).await?
            {
                return this.replace_and_start(c, &actor, Some(node)).await;
            }
            // A stopped container whose node is cordoned (drained, maybe
            // powered off since) starts elsewhere; a running one stays.
            if op == Lifecycle::Start
                && c.status().state != pb::ContainerState::Running as i32
                && this
                    .shared
                    .nodes
                    .get(&c.status().node)
                    .is_some_and(|n| n.cordoned)
            {
                return this.replace_and_start(c, &actor, None).await;
            }
            this.node_must_be_ready(&c).await?;
            let _intent = this
                .shared
                .intents
                .begin_for(&c.id, &actor, op.op(), cause.word());
            let command = op.command(c.id.clone(), stop_timeout);
            let was_running = c.status().state == pb::ContainerState::Running as i32;
            let result = this.send(&c.status().node, command, stop_timeout).await;
            // Only an outcome the node confirmed changes the desired state:
            // a stop that timed out still reserves, and is retried.
            let desired = op.desired() as i32;
            c.update_time = now();
            let default_ttl = this.shared.settings.leases.default_seconds();
            let outcome = match result {
                Ok(Reply::Status(status)) => {
                    c.spec_mut().desired_state = desired;
                    apply_status(&mut c, &status);
                    after_lifecycle(&mut c, op, cause, was_running, default_ttl);
                    Ok(())
                }
                Ok(reply) => {
                    let err = agent_error(reply, &c);
                    if matches!(err.kind(), ErrorKind::MissingOnNode { .. }) {
                        c.spec_mut().desired_state = desired;
                        c.status_mut().state = pb::ContainerState::Failed as i32;
                        // Nothing left to stop when the lease runs out.
                        c.status_mut().lease_expire_time = None;
                    }
                    c.status_mut().last_error = err.to_string();
                    Err(err)
                }
                Err(err) => Err(err),
            };
            this.store().update_container(c.clone()).await?;
            match (&outcome, op) {
                // Stopped: its next start opens a fresh idle window.
                (Ok(()), Lifecycle::Stop) => this.shared.activity.forget(&c.name),
                (Ok(()), Lifecycle::Start | Lifecycle::Restart) => {
                    this.shared.activity.touch(&c.name, SystemTime::now())
                }
                (Err(_), _) => {}
            }
            outcome.map(|()| this.decorate(c))
        })
        .await
    }

    /// Starts a container (on another node if its own is cordoned).
    pub async fn start(&self, name: &str, actor: &str) -> Result<pb::Container, Error> {
        tracing::info!(name, actor, "start");
        self.lifecycle(name, Lifecycle::Start, 0, actor, Cause::User, None)
            .await
    }

    /// Stops a container at a user's request.
    pub async fn stop(
        &self,
        name: &str,
        timeout: Option<i32>,
        actor: &str,
    ) -> Result<pb::Container, Error> {
        let t = self.stop_timeout(timeout)?;
        tracing::info!(name, actor, timeout = t, "stop");
        self.lifecycle(name, Lifecycle::Stop, t, actor, Cause::User, None)
            .await
    }

    /// Restarts a container at a user's request.
    pub async fn restart(
        &self,
        name: &str,
        timeout: Option<i32>,
        actor: &str,
    ) -> Result<pb::Container, Error> {
        let t = self.stop_timeout(timeout)?;
        tracing::info!(name, actor, timeout = t, "restart");
        self.lifecycle(name, Lifecycle::Restart, t, actor, Cause::User, None)
            .await
    }

    pub(super) fn stop_timeout(&self, timeout: Option<i32>) -> Result<i32, Error> {
        match timeout {
            None => Ok(self.shared.settings.default_stop_timeout),
            Some(t) if (0..=3600).contains(&t) => Ok(t),
            Some(_) => {
                Err(InvalidField::new("timeout_seconds", "must be between 0 and 3600").into())
            }
        }
    }
}

/// Fails if `c` is awaiting removal (it cannot be started, stopped or
/// reached any more).
fn must_not_be_removing(c: &pb::Container) -> Result<(), Error> {
    if c.spec().desired_state == pb::DesiredState::Removed as i32 {
        return Err(error::wrong_state(
            &c.name,
            format!(
                "container {:?} is being removed ({}); create a new one with another name",
                c.name,
                removal_pending_message(c)
            ),
        ));
    }
    Ok(())
}

/// What a successful start/stop/restart changes beyond the observed state.
pub(super) fn after_lifecycle(
    c: &mut pb::Container,
    op: Lifecycle,
    cause: Cause,
    was_running: bool,
    default_ttl: i64,
) {
    match op {
        Lifecycle::Stop => {
            // A container that had already stopped keeps its own reason.
            if was_running || c.status().stop_reason == pb::StopReason::Unspecified as i32 {
                c.status_mut().stop_reason = cause.stop_reason() as i32;
            }
            c.status_mut().lease_expire_time = None;
            c.status_mut().health = pb::HealthStatus::Unspecified as i32;
            if cause == Cause::Health {
                c.status_mut().state = pb::ContainerState::Failed as i32;
                c.status_mut().last_error = "the health check kept failing after an automatic restart; the container is left stopped for inspection (devctl logs, then devctl start)".into();
            }
        }
        Lifecycle::Start | Lifecycle::Restart => {
            if c.status().state == pb::ContainerState::Running as i32 {
                c.status_mut().stop_reason = pb::StopReason::Unspecified as i32;
            }
            if cause == Cause::Health {
                c.status_mut().health_restarts += 1;
            }
            // A user's start renews the lease and the health restart.
            if cause == Cause::User {
                c.status_mut().health_restarts = 0;
                if op == Lifecycle::Start || c.status().lease_expire_time.is_none() {
                    // Records from before leases existed get the default.
                    let ttl = *c.spec_mut().ttl_seconds.get_or_insert(default_ttl);
                    c.status_mut().lease_expire_time = lease_from_now(ttl);
                }
            }
        }
    }
}
