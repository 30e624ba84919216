//! What engine events mean for the cluster: which [`pb::Event`] to record,
//! who caused it, and how a change devctl did not request changes the
//! container's observed state. Pure, apart from the clock in [`Intents`].
//!
//! One file on purpose (one concern): turning engine events into recorded
//! state and history; its size is the table of engine actions and its tests.
//!
//! Every devctl operation registers an *intent* (who asked for what) for
//! its container while it runs and a few seconds after, so the engine events
//! it causes are attributed to that identity. Engine events without an
//! intent come from outside devctl (a process that exited, `docker kill`):
//! their actor is `system`, and they change the recorded state, since no
//! operation will.

use devctl_proto::container::ContainerExt;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use devctl_proto::pb::{self, EventType};

/// How long an intent outlives its operation: engine events are delivered
/// asynchronously and may arrive after the operation's reply.
const INTENT_GRACE: Duration = Duration::from_secs(5);
/// How long an `oom` event colours the `die` that follows it.
const OOM_WINDOW: Duration = Duration::from_secs(10);

/// A devctl operation on a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// CreateContainer.
    Create,
    /// StartContainer.
    Start,
    /// StopContainer.
    Stop,
    /// RestartContainer.
    Restart,
    /// DeleteContainer.
    Remove,
}

/// Who asked for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The identity's name.
    pub actor: String,
    /// The operation.
    pub op: Op,
    /// Why, as recorded in its events: "manual" for a user's request,
    /// else what made devctl act ("lease_expired", "unhealthy", ...).
    pub reason: &'static str,
}

#[derive(Debug)]
struct Entry {
    intent: Intent,
    // None while the operation runs.
    until: Option<Instant>,
}

/// Intents by container id, and recent OOM kills.
#[derive(Debug, Default)]
pub struct Intents {
    // std lock: map operations only, never held across an await.
    entries: Mutex<HashMap<String, Entry>>,
    ooms: Mutex<HashMap<String, Instant>>,
}

/// Ends an intent's operation when dropped (the intent then lingers for
/// [`INTENT_GRACE`]).
#[derive(Debug)]
pub struct IntentGuard {
    intents: Arc<Intents>,
    id: String,
}

impl Drop for IntentGuard {
    fn drop(&mut self) {
        let mut entries = self.intents.entries.lock().expect("intents poisoned");
        if let Some(e) = entries.get_mut(&self.id) {
            e.until = Some(Instant::now() + INTENT_GRACE);
        }
    }
}

impl Intents {
    /// Records that `actor` runs `op` on container `id` on request.
    pub fn begin(self: &Arc<Self>, id: &str, actor: &str, op: Op) -> IntentGuard {
        self.begin_for(id, actor, op, "manual")
    }

    /// Records that `actor` runs `op` on container `id` for `reason`.
    pub fn begin_for(
        self: &Arc<Self>,
        id: &str,
        actor: &str,
        op: Op,
        reason: &'static str,
    ) -> IntentGuard {
        let mut entries = self.entries.lock().expect("intents poisoned");
        let now = Instant::now();
        entries.retain(|_, e| e.until.is_none_or(|u| u > now));
        entries.insert(
            id.to_string(),
            Entry {
                intent: Intent {
                    actor: actor.to_string(),
                    op,
                    reason,
                },
                until: None,
            },
        );
        IntentGuard {
            intents: Arc::clone(self),
            id: id.to_string(),
        }
    }

    /// The intent behind events of container `id` now, if any.
    pub fn get(&self, id: &str) -> Option<Intent> {
        let entries = self.entries.lock().expect("intents poisoned");
        entries
            .get(id)
            .filter(|e| e.until.is_none_or(|u| u > Instant::now()))
            .map(|e| e.intent.clone())
    }

    /// Notes an OOM kill in container `id`.
    pub fn oom(&self, id: &str) {
        let mut ooms = self.ooms.lock().expect("intents poisoned");
        let now = Instant::now();
        ooms.retain(|_, t| now.duration_since(*t) < OOM_WINDOW);
        ooms.insert(id.to_string(), now);
    }

    /// Whether container `id` was OOM-killed just now (forgets it).
    pub fn take_oom(&self, id: &str) -> bool {
        let mut ooms = self.ooms.lock().expect("intents poisoned");
        ooms.remove(id).is_some_and(|t| t.elapsed() < OOM_WINDOW)
    }
}

/// How long [`Whereabouts`] remembers where a container was.
const WHEREABOUTS_KEPT: Duration = Duration::from_secs(600);
/// Containers [`Whereabouts`] remembers at most (the oldest go first).
const WHEREABOUTS_MAX: usize = 10_000;

/// Nodes a container was on besides the one its record names now (removed
/// containers, containers moving to another node), for a while: engine
/// events about them, delivered late, are still about a container the
/// scheduler placed there. Memory only: after a restart, only the records
/// count.
#[derive(Debug, Default)]
pub struct Whereabouts {
    // std lock: map operations only. (id, node) -> (name, when noted).
    entries: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl Whereabouts {
    /// Notes that container `id`, named `name`, is or was on `node`.
    pub fn note(&self, id: &str, node: &str, name: &str) {
        let mut entries = self.entries.lock().expect("whereabouts poisoned");
        let now = Instant::now();
        entries.retain(|_, (_, at)| now.duration_since(*at) < WHEREABOUTS_KEPT);
        if entries.len() >= WHEREABOUTS_MAX
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert((id.to_string(), node.to_string()), (name.to_string(), now));
    }

    /// The name of container `id` if it was on `node` lately.
    pub fn name_on(&self, id: &str, node: &str) -> Option<String> {
        let entries = self.entries.lock().expect("whereabouts poisoned");
        entries
            .get(&(id.to_string(), node.to_string()))
            .filter(|(_, at)| at.elapsed() < WHEREABOUTS_KEPT)
            .map(|(name, _)| name.clone())
    }
}

/// Warnings one node may cause per [`WARN_WINDOW`] before they are
/// counted instead (and the count said with the next one).
const WARNINGS_PER_WINDOW: u64 = 10;
const WARN_WINDOW: Duration = Duration::from_secs(60);

/// Rate-limits a warning per node: a node that floods the scheduler with
/// refused messages fills the log at a bounded rate.
#[derive(Debug, Default)]
pub struct Throttle {
    // std lock: map operations only. node -> (window start, warnings in
    // it, suppressed since the last one logged).
    nodes: Mutex<HashMap<String, (Instant, u64, u64)>>,
}

impl Throttle {
    /// Whether to log a warning about `node` now: `Some(n)` with the
    /// number of warnings suppressed before it, `None` to suppress this
    /// one.
    pub fn allow(&self, node: &str) -> Option<u64> {
        let mut nodes = self.nodes.lock().expect("throttle poisoned");
        let now = Instant::now();
        if nodes.len() > 10_000 {
            nodes.retain(|_, (start, _, _)| now.duration_since(*start) < WARN_WINDOW);
        }
        let (start, count, suppressed) = nodes.entry(node.to_string()).or_insert((now, 0, 0));
        if now.duration_since(*start) >= WARN_WINDOW {
            (*start, *count) = (now, 0);
        }
        if *count >= WARNINGS_PER_WINDOW {
            *suppressed += 1;
            return None;
        }
        *count += 1;
        Some(std::mem::take(suppressed))
    }
}

/// How an engine event from outside devctl changes the recorded container.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    /// It runs (again).
    Running {
        /// When it started.
        at: Option<prost_types::Timestamp>,
    },
    /// Its main process ended.
    Exited {
        /// Exit code.
        code: Option<i32>,
        /// Killed for lack of memory.
        oom: bool,
    },
    /// It was stopped on its engine (`docker stop`), not by devctl.
    StoppedOutside,
    /// It was removed from its node.
    Removed,
    /// Its health check reported this status.
    Health(pb::HealthStatus),
}

impl StateChange {
    /// Applies the change to a record.
    pub fn apply(&self, c: &mut pb::Container) {
        match self {
            StateChange::Running { at } => {
                c.status_mut().state = pb::ContainerState::Running as i32;
                c.status_mut().exit_code = None;
                c.status_mut().start_time = at.or(c.status().start_time);
                c.status_mut().stop_reason = pb::StopReason::Unspecified as i32;
                c.status_mut().last_error.clear();
            }
            StateChange::Health(status) => {
                c.status_mut().health = *status as i32;
            }
            StateChange::Exited { code, oom } => {
                c.status_mut().exit_code = *code;
                c.status_mut().health = pb::HealthStatus::Unspecified as i32;
                c.status_mut().stop_reason = if *oom {
                    pb::StopReason::Oom
                } else {
                    pb::StopReason::Exited
                } as i32;
                let clean = *code == Some(0) && !oom;
                c.status_mut().state = if clean {
                    pb::ContainerState::Stopped
                } else {
                    pb::ContainerState::Failed
                } as i32;
                c.status_mut().last_error = match (oom, code) {
                    (true, _) => "killed for lack of memory (OOM); raise --memory".into(),
                    (false, Some(0)) => String::new(),
                    (false, Some(code)) => {
                        format!("the main process exited with code {code} without a devctl request")
                    }
                    (false, None) => "the main process exited without a devctl request".into(),
                };
            }
            StateChange::StoppedOutside => {
                c.status_mut().state = pb::ContainerState::Stopped as i32;
                c.status_mut().stop_reason = pb::StopReason::Manual as i32;
                c.status_mut().last_error = "stopped on its node outside devctl".into();
            }
            StateChange::Removed => {
                c.status_mut().state = pb::ContainerState::Failed as i32;
                c.status_mut().last_error = format!(
                    "the container was removed from node {:?} outside devctl; remove it with `devctl rm {}`",
                    c.status().node,
                    c.name
                );
            }
        }
    }
}

/// What one engine event means.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Translation {
    /// The event to record, unless it is part of another (a restart's die
    /// and start).
    pub event: Option<pb::Event>,
    /// The state change, for changes devctl did not request.
    pub change: Option<StateChange>,
}

impl Op {
    /// Whether this operation makes the engine emit `action`. Only those
    /// events are the operation's; any other is a change from outside.
    pub fn causes(self, action: &str) -> bool {
        match self {
            // A failed start is cleaned up: destroy (and die, if it ran).
            Op::Create => matches!(action, "create" | "start" | "destroy"),
            Op::Start => action == "start",
            Op::Stop => matches!(action, "die" | "stop"),
            Op::Restart => matches!(action, "die" | "stop" | "start" | "restart"),
            Op::Remove => matches!(action, "die" | "stop" | "destroy"),
        }
    }
}

/// Translates `ev` given the `intent` registered for its container and
/// whether an OOM kill preceded it.
pub fn translate(ev: &pb::EngineEvent, intent: Option<&Intent>, oom: bool) -> Translation {
    let intent = intent.filter(|i| i.op.causes(&ev.action));
    let op = intent.map(|i| i.op);
    let actor = intent.map_or("system", |i| i.actor.as_str()).to_string();
    let requested = |reason: &str| intent.map_or(reason, |i| i.reason).to_string();
    let who = &ev.name;
    let node = &ev.node;
    let (ty, reason, message, change) = match ev.action.as_str() {
        "create" => (
            EventType::ContainerCreated,
            requested("outside_devctl"),
            format!("container {who} created on node {node}"),
            None,
        ),
        "start" if op == Some(Op::Restart) => return Translation::default(),
        "start" => (
            EventType::ContainerStarted,
            requested("outside_devctl"),
            format!("container {who} started on node {node}"),
            intent
                .is_none()
                .then_some(StateChange::Running { at: ev.time }),
        ),
        "die" if op == Some(Op::Restart) => return Translation::default(),
        "die" if matches!(op, Some(Op::Stop | Op::Remove)) => (
            EventType::ContainerStopped,
            requested("manual"),
            format!("container {who} stopped"),
            None,
        ),
        "die" => (
            EventType::ContainerDied,
            if oom { "oom" } else { "exited" }.to_string(),
            match ev.exit_code {
                Some(code) => format!("container {who}: main process exited with code {code}"),
                None => format!("container {who}: main process exited"),
            },
            intent.is_none().then_some(StateChange::Exited {
                code: ev.exit_code,
                oom,
            }),
        ),
        // The engine's own stop (after the die): no event of its own, but a
        // request, not a crash.
        "stop" => {
            return Translation {
                event: None,
                change: intent.is_none().then_some(StateChange::StoppedOutside),
            };
        }
        "oom" => (
            EventType::ContainerOomKilled,
            "oom".to_string(),
            format!("container {who}: a process was killed for lack of memory"),
            None,
        ),
        "restart" => (
            EventType::ContainerRestarted,
            requested("outside_devctl"),
            format!("container {who} restarted"),
            None,
        ),
        "destroy" => (
            EventType::ContainerRemoved,
            requested("outside_devctl"),
            format!("container {who} removed from node {node}"),
            (op != Some(Op::Remove) && op != Some(Op::Create)).then_some(StateChange::Removed),
        ),
        health if health.starts_with("health_status") => {
            let unhealthy = health.ends_with(": unhealthy");
            let status = if unhealthy {
                pb::HealthStatus::Unhealthy
            } else if health.ends_with(": healthy") {
                pb::HealthStatus::Healthy
            } else {
                return Translation::default();
            };
            (
                if unhealthy {
                    EventType::ContainerUnhealthy
                } else {
                    EventType::ContainerHealthy
                },
                if unhealthy { "unhealthy" } else { "healthy" }.to_string(),
                format!(
                    "container {who}: health check {}",
                    if unhealthy { "failing" } else { "passing" }
                ),
                Some(StateChange::Health(status)),
            )
        }
        _ => return Translation::default(),
    };
    Translation {
        event: Some(pb::Event {
            sequence: 0,
            time: ev.time,
            r#type: ty as i32,
            container: ev.name.clone(),
            container_id: ev.id.clone(),
            node: ev.node.clone(),
            actor,
            reason,
            exit_code: if matches!(ty, EventType::ContainerStopped | EventType::ContainerDied) {
                ev.exit_code
            } else {
                None
            },
            message,
            session: String::new(),
            image: String::new(),
            base_image: String::new(),
        }),
        change,
    }
}

/// A node event.
pub fn node_event(node: &str, ty: EventType, reason: &str) -> pb::Event {
    let what = match ty {
        EventType::NodeJoined => "joined the cluster",
        EventType::NodeReady => "is ready",
        EventType::NodeResynced => "was re-read (engine events were lost)",
        EventType::NodeCapacityChanged => "claims another capacity",
        _ => "is down",
    };
    pb::Event {
        time: Some(std::time::SystemTime::now().into()),
        r#type: ty as i32,
        node: node.to_string(),
        actor: "system".into(),
        reason: reason.to_string(),
        message: format!("node {node} {what}"),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str, exit: Option<i32>) -> pb::EngineEvent {
        pb::EngineEvent {
            event_id: "e".into(),
            node: "n1".into(),
            id: "id1".into(),
            name: "web".into(),
            action: action.into(),
            exit_code: exit,
            ..Default::default()
        }
    }

    fn intent(op: Op) -> Intent {
        Intent {
            actor: "alice".into(),
            op,
            reason: "manual",
        }
    }

    #[test]
    fn whereabouts_are_by_id_and_node() {
        let w = Whereabouts::default();
        w.note("id1", "a", "web");
        assert_eq!(w.name_on("id1", "a").as_deref(), Some("web"));
        assert_eq!(w.name_on("id1", "b"), None);
        assert_eq!(w.name_on("id2", "a"), None);
    }

    #[test]
    fn warnings_per_node_are_bounded() {
        let t = Throttle::default();
        for _ in 0..WARNINGS_PER_WINDOW {
            assert_eq!(t.allow("a"), Some(0));
        }
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("b"), Some(0), "another node has its own bound");
    }

    #[test]
    fn system_actions_carry_their_reason_and_health_is_followed() {
        let lease = Intent {
            actor: "system".into(),
            op: Op::Stop,
            reason: "lease_expired",
        };
        let t = translate(&ev("die", Some(137)), Some(&lease), false);
        let e = t.event.unwrap();
        assert_eq!(
            (e.r#type(), &e.reason[..]),
            (EventType::ContainerStopped, "lease_expired")
        );
        assert_eq!(t.change, None);
        let t = translate(&ev("health_status: unhealthy", None), Some(&lease), false);
        assert_eq!(t.event.unwrap().r#type(), EventType::ContainerUnhealthy);
        assert_eq!(
            t.change,
            Some(StateChange::Health(pb::HealthStatus::Unhealthy))
        );
        let t = translate(&ev("health_status: healthy", None), None, false);
        assert_eq!(
            t.change,
            Some(StateChange::Health(pb::HealthStatus::Healthy))
        );
        let mut c = pb::Container::default();
        StateChange::Exited {
            code: Some(137),
            oom: true,
        }
        .apply(&mut c);
        assert_eq!(c.status().stop_reason(), pb::StopReason::Oom);
        StateChange::Running { at: None }.apply(&mut c);
        assert_eq!(c.status().stop_reason(), pb::StopReason::Unspecified);
    }

    #[test]
    fn requested_changes_are_attributed_and_leave_state_to_the_operation() {
        let t = translate(&ev("die", Some(143)), Some(&intent(Op::Stop)), false);
        let e = t.event.unwrap();
        assert_eq!(e.r#type(), EventType::ContainerStopped);
        assert_eq!((e.actor.as_str(), e.reason.as_str()), ("alice", "manual"));
        assert_eq!(e.exit_code, Some(143));
        assert_eq!(t.change, None);
        let t = translate(&ev("start", None), Some(&intent(Op::Start)), false);
        assert_eq!(t.event.unwrap().actor, "alice");
        assert_eq!(t.change, None);
    }

    #[test]
    fn an_intent_only_covers_what_its_operation_causes() {
        // A crash (or `docker kill`) right after a devctl start is not the
        // starter's doing.
        let t = translate(&ev("die", Some(137)), Some(&intent(Op::Start)), false);
        assert_eq!(t.event.as_ref().unwrap().actor, "system");
        assert!(t.change.is_some());
        // Nor is a start right after a devctl stop.
        let t = translate(&ev("start", None), Some(&intent(Op::Stop)), false);
        assert_eq!(t.event.unwrap().actor, "system");
        // A process that dies right after its create is a failure to see.
        let t = translate(&ev("die", Some(127)), Some(&intent(Op::Create)), false);
        assert_eq!(t.event.unwrap().r#type(), EventType::ContainerDied);
        assert!(t.change.is_some());
    }

    #[test]
    fn a_restart_is_one_event() {
        let i = intent(Op::Restart);
        assert_eq!(
            translate(&ev("die", Some(143)), Some(&i), false),
            Translation::default()
        );
        assert_eq!(
            translate(&ev("start", None), Some(&i), false),
            Translation::default()
        );
        let t = translate(&ev("restart", None), Some(&i), false);
        assert_eq!(t.event.unwrap().r#type(), EventType::ContainerRestarted);
    }

    #[test]
    fn changes_from_outside_devctl_are_system_events_that_change_state() {
        let t = translate(&ev("die", Some(137)), None, false);
        let e = t.event.unwrap();
        assert_eq!(e.r#type(), EventType::ContainerDied);
        assert_eq!((e.actor.as_str(), e.reason.as_str()), ("system", "exited"));
        let mut c = pb::Container {
            status: Some(pb::ContainerStatus {
                state: pb::ContainerState::Running as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        t.change.unwrap().apply(&mut c);
        assert_eq!(c.status().state(), pb::ContainerState::Failed);
        assert_eq!(c.status().exit_code, Some(137));
        assert!(c.status().last_error.contains("137"));

        let mut c = pb::Container::default();
        translate(&ev("die", Some(0)), None, false)
            .change
            .unwrap()
            .apply(&mut c);
        assert_eq!(c.status().state(), pb::ContainerState::Stopped);

        let t = translate(&ev("die", Some(137)), None, true);
        assert_eq!(t.event.as_ref().unwrap().reason, "oom");
        let mut c = pb::Container::default();
        t.change.unwrap().apply(&mut c);
        assert!(c.status().last_error.contains("OOM"));

        // `docker stop` by hand: die, then the engine's stop.
        let t = translate(&ev("stop", None), None, false);
        assert_eq!(t.event, None);
        let mut c = pb::Container::default();
        t.change.unwrap().apply(&mut c);
        assert_eq!(c.status().state(), pb::ContainerState::Stopped);
        assert_eq!(
            translate(&ev("stop", None), Some(&intent(Op::Stop)), false),
            Translation::default()
        );

        let t = translate(&ev("destroy", None), None, false);
        assert_eq!(t.event.unwrap().reason, "outside_devctl");
        assert_eq!(t.change, Some(StateChange::Removed));
        // A devctl removal, or the clean-up of a failed create, is not.
        assert_eq!(
            translate(&ev("destroy", None), Some(&intent(Op::Remove)), false).change,
            None
        );
    }

    #[test]
    fn intents_end_after_a_grace_period_and_ooms_are_taken_once() {
        let intents = Arc::new(Intents::default());
        let g = intents.begin("id1", "alice", Op::Stop);
        assert_eq!(intents.get("id1").unwrap().op, Op::Stop);
        drop(g);
        // Still attributed during the grace period.
        assert_eq!(intents.get("id1").unwrap().actor, "alice");
        assert!(intents.get("other").is_none());
        intents.oom("id1");
        assert!(intents.take_oom("id1"));
        assert!(!intents.take_oom("id1"));
    }
}
