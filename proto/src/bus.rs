//! Subjects of the scheduler ↔ agent bus.
//!
//! ```text
//! devctl.node.<node>.cmd                  scheduler -> agent  request/reply  AgentCommand -> AgentReply
//! devctl.node.<node>.heartbeat            agent -> scheduler  publish        Heartbeat
//! devctl.node.<node>.stats                agent -> scheduler  publish        StatsReport
//! devctl.node.<node>.events               agent -> JetStream  publish, acked EngineEvent
//! devctl.node.<node>.renew                agent -> scheduler  request/reply  (certificate renewal)
//! devctl.node.<node>.stream.<id>.data     agent -> scheduler  publish        StreamChunk
//! devctl.node.<node>.stream.<id>.control  scheduler -> agent  publish        StreamControl
//! devctl.node.<node>.stream.<id>.input    scheduler -> agent  publish        ExecInput
//! devctl.node.<node>.stream.<id>.down     scheduler -> agent  publish        StreamChunk (tunnels)
//! devctl.node.<node>.stream.<id>.credit   agent -> scheduler  publish        StreamControl (tunnels)
//! _INBOX.node.<node>.>                    replies to the agent (JetStream acks)
//! _INBOX.scheduler.>                      replies to the scheduler
//! ```
//!
//! Everything an agent sends or receives is under its own node's subjects
//! (or its own inbox), so the bus can confine each agent to them:
//! [`agent_permissions`] is the one place that says what an agent may do;
//! the scheduler renders it into nats-server's configuration.
//!
//! Node names are DNS labels (see [`crate::validate::dns_label`]), so they never
//! contain the NATS separators `.`, `*` or `>`.

/// Root of every devctl subject.
pub const ROOT: &str = "devctl";

/// Commands for one node's agent.
pub fn command_subject(node: &str) -> String {
    format!("{ROOT}.node.{node}.cmd")
}

/// Heartbeats of one node.
pub fn heartbeat_subject(node: &str) -> String {
    format!("{ROOT}.node.{node}.heartbeat")
}

/// Engine events of one node (JetStream stream [`NODE_EVENTS_STREAM`]).
pub fn engine_events_subject(node: &str) -> String {
    format!("{ROOT}.node.{node}.events")
}

/// The JetStream stream of every node's engine events (a work queue the
/// scheduler consumes).
pub const NODE_EVENTS_STREAM: &str = "DEVCTL_NODE_EVENTS";
/// Its subjects.
pub const ALL_ENGINE_EVENTS: &str = "devctl.node.*.events";

/// The action of the engine event an agent publishes after it dropped
/// engine events (its queue overflowed): the scheduler then re-reads the
/// node's inventory and records [`RESYNC_REASON`] in the history.
pub const RESYNC_ACTION: &str = "resync";
/// The history reason of that resynchronisation.
pub const RESYNC_REASON: &str = "events_dropped_resync";

/// The JetStream stream of the cluster's event history.
pub const EVENTS_STREAM: &str = "DEVCTL_EVENTS";
/// Its subjects.
pub const ALL_EVENTS: &str = "devctl.events.>";

/// Subject of a container's events: `devctl.events.<node>.container.<name>`.
pub fn container_event_subject(node: &str, name: &str) -> String {
    format!("{ROOT}.events.{node}.container.{name}")
}

/// Subject of a node's own events: `devctl.events.<node>.node`.
pub fn node_event_subject(node: &str) -> String {
    format!("{ROOT}.events.{node}.node")
}

/// The subject filter selecting the events of `node` and/or `container`
/// (each `None` for any).
pub fn event_filter(node: Option<&str>, container: Option<&str>) -> String {
    match (node, container) {
        (None, None) => ALL_EVENTS.to_string(),
        (Some(n), None) => format!("{ROOT}.events.{n}.>"),
        (None, Some(c)) => format!("{ROOT}.events.*.container.{c}"),
        (Some(n), Some(c)) => container_event_subject(n, c),
    }
}

/// Chunks an agent may send before it waits for credit.
pub const STREAM_WINDOW: u32 = 64;
/// Largest chunk payload an agent sends (well under NATS's 1 MiB default).
pub const STREAM_CHUNK_MAX: usize = 64 * 1024;
/// How often a reading scheduler sends a keepalive.
pub const STREAM_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long an agent keeps a stream without hearing from its reader.
pub const STREAM_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Input subject of exec session `id` on `node`.
pub fn exec_input_subject(node: &str, id: &str) -> String {
    format!("{ROOT}.node.{node}.stream.{id}.input")
}

/// Data and control subjects of the scheduler-to-agent half of tunnel `id`
/// on `node`: the scheduler publishes chunks on the first, the agent credit
/// on the second.
pub fn down_subjects(node: &str, id: &str) -> (String, String) {
    (
        format!("{ROOT}.node.{node}.stream.{id}.down"),
        format!("{ROOT}.node.{node}.stream.{id}.credit"),
    )
}

/// Data and control subjects of stream `id` from `node`.
pub fn stream_subjects(node: &str, id: &str) -> (String, String) {
    (
        format!("{ROOT}.node.{node}.stream.{id}.data"),
        format!("{ROOT}.node.{node}.stream.{id}.control"),
    )
}

/// Certificate renewal requests of one node's agent.
pub fn renew_subject(node: &str) -> String {
    format!("{ROOT}.node.{node}.renew")
}

/// Renewal requests of every node (for the scheduler's subscription).
pub const ALL_RENEW: &str = "devctl.node.*.renew";

/// Inbox prefix of `node`'s agent (replies to its requests, JetStream acks).
pub fn agent_inbox_prefix(node: &str) -> String {
    format!("_INBOX.node.{node}")
}

/// Inbox prefix of the scheduler.
pub const SCHEDULER_INBOX_PREFIX: &str = "_INBOX.scheduler";

/// What one bus user may publish and subscribe to; everything else is
/// denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects (NATS wildcards allowed) it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may publish one reply to each request it received
    /// (nats-server's `allow_responses`), whatever the reply subject.
    pub allow_responses: bool,
}

/// What `node`'s agent may do: receive its own commands, stream control,
/// exec input and tunnel data, and replies on its own inbox; publish its own
/// heartbeats, stats, engine events, stream data, tunnel credit and renewal
/// requests, and answer the commands it received.
pub fn agent_permissions(node: &str) -> Permissions {
    let (data, control) = stream_subjects(node, "*");
    let (down, credit) = down_subjects(node, "*");
    Permissions {
        publish: vec![
            heartbeat_subject(node),
            stats_subject(node),
            engine_events_subject(node),
            data,
            credit,
            renew_subject(node),
        ],
        subscribe: vec![
            command_subject(node),
            control,
            exec_input_subject(node, "*"),
            down,
            format!("{}.>", agent_inbox_prefix(node)),
        ],
        allow_responses: true,
    }
}

/// How an agent ends a transfer (an image import) it drops because it is
/// shutting down: the scheduler resumes it once the agent is back.
pub const AGENT_STOPPING: &str = "the agent is stopping";

/// The JetStream object store bucket of pushed image archives (the
/// scheduler's alone: agents get archives through pipes).
pub const IMAGE_BUCKET: &str = "devctl-images";

/// What the scheduler may do: every devctl subject, the JetStream API
/// (streams, consumers, acknowledgements), the image archive bucket's
/// chunks and metadata, and its own inbox.
pub fn scheduler_permissions() -> Permissions {
    Permissions {
        publish: vec![
            format!("{ROOT}.>"),
            "$JS.API.>".into(),
            format!("$O.{IMAGE_BUCKET}.>"),
            "$JS.ACK.>".into(),
            "$JS.FC.>".into(),
            // Renewal answers: a reload between a request and its answer
            // resets allow_responses' record of it.
            "_INBOX.node.*.>".into(),
        ],
        subscribe: vec![format!("{ROOT}.>"), format!("{SCHEDULER_INBOX_PREFIX}.>")],
        allow_responses: true,
    }
}

/// Stats reports of one node.
pub fn stats_subject(node: &str) -> String {
    format!("{ROOT}.node.{node}.stats")
}

/// Stats reports of every node.
pub const ALL_STATS: &str = "devctl.node.*.stats";

/// Heartbeats of every node (for the scheduler's subscription).
pub const ALL_HEARTBEATS: &str = "devctl.node.*.heartbeat";

/// The node name in a subject of the form `devctl.node.<node>.…`.
pub fn node_of_subject(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ROOT), Some("node"), Some(node)) if !node.is_empty() => Some(node),
        _ => None,
    }
}

/// What a bus server speaks, from the INFO line it sends on connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// It requires or offers TLS.
    Tls,
    /// Plain text only: a devctl client (which requires TLS) cannot talk
    /// to it.
    Plain,
}

/// Reads the INFO line of the server at `url` (`tls://HOST:PORT`,
/// `nats://HOST:PORT` or `HOST:PORT`; port 4222 if none) to tell what it
/// speaks. `None` when nothing answered like a NATS server within
/// `timeout` (not up, not reachable).
pub async fn probe_transport(url: &str, timeout: std::time::Duration) -> Option<Transport> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let addr = url.split_once("://").map_or(url, |(_, rest)| rest);
    let addr = addr.rsplit_once('@').map_or(addr, |(_, host)| host);
    let addr = addr.split(['/', ',']).next().unwrap_or(addr);
    let addr = if addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:4222")
    };
    let line = tokio::time::timeout(timeout, async {
        let stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stream).take(64 * 1024);
        reader.read_line(&mut line).await.ok()?;
        Some(line)
    })
    .await
    .ok()??;
    info_transport(&line)
}

/// What an `INFO {...}` line says about TLS (nats-server writes compact
/// JSON: `"tls_required":true`, `"tls_available":true`).
fn info_transport(line: &str) -> Option<Transport> {
    let info = line.strip_prefix("INFO ")?;
    let flag = |k: &str| info.contains(&format!("\"{k}\":true"));
    Some(if flag("tls_required") || flag("tls_available") {
        Transport::Tls
    } else {
        Transport::Plain
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_tell_tls_from_plain() {
        assert_eq!(
            info_transport("INFO {\"server_id\":\"x\",\"tls_required\":true,\"port\":1}\r\n"),
            Some(Transport::Tls)
        );
        assert_eq!(
            info_transport("INFO {\"tls_available\":true}\r\n"),
            Some(Transport::Tls)
        );
        assert_eq!(
            info_transport("INFO {\"server_id\":\"x\",\"port\":4222}\r\n"),
            Some(Transport::Plain)
        );
        assert_eq!(info_transport("HTTP/1.1 400 Bad Request\r\n"), None);
    }

    #[test]
    fn subjects_round_trip_the_node_name() {
        assert_eq!(command_subject("node-a"), "devctl.node.node-a.cmd");
        assert_eq!(node_of_subject(&heartbeat_subject("n1")), Some("n1"));
        assert_eq!(node_of_subject("other.node.x.heartbeat"), None);
        assert_eq!(node_of_subject("devctl.node"), None);
        let (data, control) = stream_subjects("n1", "abc");
        assert_eq!(data, "devctl.node.n1.stream.abc.data");
        assert_eq!(node_of_subject(&control), Some("n1"));
        assert_eq!(
            node_of_subject(&exec_input_subject("n1", "abc")),
            Some("n1")
        );
    }

    /// A NATS subject filter match (`*` one token, `>` the rest).
    fn matches(filter: &str, subject: &str) -> bool {
        let mut f = filter.split('.');
        let mut s = subject.split('.');
        loop {
            match (f.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn may(filters: &[String], subject: &str) -> bool {
        filters.iter().any(|f| matches(f, subject))
    }

    #[test]
    fn an_agent_is_confined_to_its_own_node() {
        let p = agent_permissions("node-a");
        let (data, control) = stream_subjects("node-a", "s1");
        let (down, credit) = down_subjects("node-a", "s1");
        for own in [
            heartbeat_subject("node-a"),
            stats_subject("node-a"),
            engine_events_subject("node-a"),
            renew_subject("node-a"),
            data,
            credit,
        ] {
            assert!(may(&p.publish, &own), "{own}");
        }
        for own in [
            command_subject("node-a"),
            control,
            exec_input_subject("node-a", "s1"),
            down.clone(),
            format!("{}.abc.1", agent_inbox_prefix("node-a")),
        ] {
            assert!(may(&p.subscribe, &own), "{own}");
        }
        // The agent reads the scheduler's half of a tunnel, never writes it.
        assert!(!may(&p.publish, &down), "{down}");
        let (other_data, other_control) = stream_subjects("node-b", "s1");
        let (other_down, other_credit) = down_subjects("node-b", "s1");
        for other in [
            heartbeat_subject("node-b"),
            stats_subject("node-b"),
            engine_events_subject("node-b"),
            renew_subject("node-b"),
            command_subject("node-a"),
            other_data,
            other_credit,
            "devctl.events.node-a.node".into(),
            "$JS.API.STREAM.LIST".into(),
            "_INBOX.scheduler.x".into(),
        ] {
            assert!(!may(&p.publish, &other), "{other}");
        }
        for other in [
            command_subject("node-b"),
            other_control,
            other_down,
            exec_input_subject("node-b", "s1"),
            heartbeat_subject("node-a"),
            ALL_HEARTBEATS.into(),
            "_INBOX.>".into(),
            "_INBOX.node.node-b.x".into(),
            "_INBOX.scheduler.x".into(),
            "devctl.>".into(),
        ] {
            assert!(!may(&p.subscribe, &other), "{other}");
        }
        assert!(p.allow_responses);
    }

    #[test]
    fn the_scheduler_reaches_every_node_and_jetstream() {
        let p = scheduler_permissions();
        assert!(may(&p.publish, &command_subject("node-a")));
        assert!(may(&p.publish, "$JS.API.CONSUMER.CREATE.DEVCTL_EVENTS"));
        assert!(may(&p.publish, "$O.devctl-images.C.abc"));
        assert!(!may(&p.publish, "$O.other.C.abc"));
        assert!(may(&p.subscribe, ALL_HEARTBEATS));
        assert!(may(&p.subscribe, "_INBOX.scheduler.abc.1"));
        assert!(!may(&p.subscribe, "_INBOX.node.node-a.x"));
    }
}
