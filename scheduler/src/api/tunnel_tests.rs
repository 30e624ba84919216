//! Unit tests of OpenTunnel against [`FakeLink`](crate::cluster::fake_link)'s
//! scripted agents: who is refused and why, the agent's refusals, and an
//! open tunnel's relay (both directions, half-closes, failures, shutdown,
//! the stream cap) with its session recorded.
//!
//! One file on purpose: every test drives the same relay through the same
//! fixture.

use std::time::{Duration, SystemTime};

use devctl_proto::{
    identity::{Identity, Role},
    pb::{
        self, AgentErrorCode, ContainerState, tunnel_request::Request as Req,
        tunnel_response::Response as Resp,
    },
    pipe::PipeError,
    ssh::{self, ssh_key},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{
    StreamApi,
    auth::{Authenticator, test_identity as identity},
};
use crate::cluster::fake_link::{
    self, Answer, Down, FakeAgentEnd, Fixture, Kind, NODE, opened, refusal,
};

/// A cluster with alice's running container `web` and the streaming API
/// over it.
struct Harness {
    f: Fixture,
    api: StreamApi,
    auth: Authenticator,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with_cap(0).await
}

async fn harness_with_cap(cap: usize) -> Harness {
    let f = fake_link::cluster();
    f.container("web", "alice", ContainerState::Running).await;
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(&dir.path().join("tokens.redb")).unwrap();
    let auth = Authenticator::new(
        crate::tokens::ApiTokens::load(&store).unwrap(),
        crate::revocation::Revocations::open(dir.path().join("revoked")),
    )
    .with_stream_cap(cap);
    let stop = CancellationToken::new();
    let api = StreamApi::new(
        f.cluster.clone(),
        auth.clone(),
        stop.clone(),
        TaskTracker::new(),
    );
    Harness {
        f,
        api,
        auth,
        stop,
        _dir: dir,
    }
}

fn ssh_to(name: &str, host_name: &str) -> pb::TunnelOpen {
    pb::TunnelOpen {
        name: name.into(),
        kind: pb::TunnelKind::Ssh as i32,
        port: 0,
        host_name: host_name.into(),
    }
}

fn tcp_to(name: &str, port: u32) -> pb::TunnelOpen {
    pb::TunnelOpen {
        name: name.into(),
        kind: pb::TunnelKind::Tcp as i32,
        port,
        host_name: String::new(),
    }
}

fn request(r: Req) -> Result<pb::TunnelRequest, Status> {
    Ok(pb::TunnelRequest { request: Some(r) })
}

/// A client's side of a tunnel.
struct Client {
    requests: mpsc::Sender<Result<pb::TunnelRequest, Status>>,
    responses: mpsc::Receiver<Result<pb::TunnelResponse, Status>>,
}

impl Client {
    async fn send(&self, r: Req) {
        self.requests
            .send(request(r))
            .await
            .expect("the relay reads");
    }

    /// The next response (waits up to 5 s); `None`: the stream ended.
    async fn next(&mut self) -> Option<Result<Resp, Status>> {
        let next = tokio::time::timeout(Duration::from_secs(5), self.responses.recv())
            .await
            .expect("no response within 5 s")?;
        Some(next.map(|r| r.response.expect("a response")))
    }

    async fn opened(&mut self) -> pb::TunnelOpened {
        match self.next().await {
            Some(Ok(Resp::Opened(o))) => o,
            other => panic!("not opened: {other:?}"),
        }
    }

    /// The next response, which must be `data`.
    async fn data(&mut self) -> Vec<u8> {
        match self.next().await {
            Some(Ok(Resp::Data(d))) => d,
            other => panic!("not data: {other:?}"),
        }
    }

    /// The next response, which must be the agent's clean end.
    async fn close_write(&mut self) {
        match self.next().await {
            Some(Ok(Resp::CloseWrite(true))) => {}
            other => panic!("not close_write: {other:?}"),
        }
    }

    /// The status the tunnel failed with, and the end of the stream.
    async fn failure(&mut self) -> Status {
        let status = match self.next().await {
            Some(Err(e)) => e,
            other => panic!("not a failure: {other:?}"),
        };
        assert!(self.next().await.is_none(), "the stream ends");
        status
    }
}

/// Waits up to 5 s for `token`.
async fn cancelled(token: &CancellationToken, what: &str) {
    tokio::time::timeout(Duration::from_secs(5), token.cancelled())
        .await
        .unwrap_or_else(|_| panic!("{what} within 5 s"));
}

impl Harness {
    /// `who` asks for `open` (and `first` is the first message, if given).
    async fn open_with(&self, who: Identity, first: Req) -> Result<Client, Status> {
        let (requests, rx) = mpsc::channel(4);
        requests.send(request(first)).await.unwrap();
        let responses = self.api.tunnel(who, None, ReceiverStream::new(rx)).await?;
        Ok(Client {
            requests,
            responses,
        })
    }

    async fn open(&self, who: Identity, open: pb::TunnelOpen) -> Result<Client, Status> {
        self.open_with(who, Req::Open(open)).await
    }

    /// An agent that reports a host key and opens the next tunnel.
    fn agent_opens(&self) -> ssh_key::PrivateKey {
        let host_key = ssh::new_key("node-1").unwrap();
        self.f
            .report_host_key(&host_key.public_key().to_openssh().unwrap());
        self.f.link.answer(Kind::Tunnel, Answer::Reply(opened()));
        host_key
    }

    fn agent_end(&self) -> FakeAgentEnd {
        self.f.link.take_tunnel().expect("a tunnel was opened")
    }

    /// The session events recorded so far: (type, session, actor, message).
    fn session_events(&self) -> Vec<(pb::EventType, String, String, String)> {
        self.f
            .link
            .events()
            .into_iter()
            .filter(|e| !e.session.is_empty())
            .map(|e| (e.r#type(), e.session, e.actor, e.message))
            .collect()
    }
}

fn code_and_reason(s: &Status) -> (Code, String) {
    let info = s.get_error_details().error_info().cloned();
    (s.code(), info.map(|i| i.reason).unwrap_or_default())
}

fn refused_field(s: &Status) -> String {
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let bad = s
        .get_error_details()
        .bad_request()
        .cloned()
        .expect("BadRequest");
    bad.field_violations[0].field.clone()
}

#[tokio::test]
async fn opening_is_refused_to_others_and_for_what_cannot_be_reached() {
    let h = harness().await;
    h.f.container("old", "alice", ContainerState::Stopped).await;
    let alice = || identity("alice", Role::Developer);
    let refused = |r: Result<Client, Status>| r.err().expect("refused");

    let e = refused(
        h.open(identity("bob", Role::Developer), tcp_to("web", 80))
            .await,
    );
    assert_eq!(
        code_and_reason(&e),
        (Code::PermissionDenied, "NOT_OWNER".into())
    );
    let e = refused(
        h.open(identity("val", Role::Viewer), tcp_to("web", 80))
            .await,
    );
    assert_eq!(
        code_and_reason(&e),
        (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into())
    );
    let e = refused(h.open(alice(), tcp_to("old", 80)).await);
    assert_eq!(
        code_and_reason(&e),
        (Code::FailedPrecondition, "WRONG_STATE".into())
    );
    assert!(e.message().contains("devctl start old"), "{}", e.message());
    let e = refused(h.open(alice(), ssh_to("web", "")).await);
    assert_eq!(
        code_and_reason(&e),
        (Code::Unavailable, "NO_SSH_SERVER".into())
    );
    assert_eq!(
        e.message(),
        format!("the agent of node {NODE:?} runs no SSH server (upgrade it)")
    );
    let e = refused(h.open(alice(), tcp_to("gone", 80)).await);
    assert_eq!(code_and_reason(&e), (Code::NotFound, "NOT_FOUND".into()));

    for (open, field) in [
        (tcp_to("web", 0), "open.port"),
        (tcp_to("web", 70_000), "open.port"),
        (ssh_to("web", "api.devctl"), "open.host_name"),
        (
            pb::TunnelOpen {
                kind: pb::TunnelKind::Unspecified as i32,
                ..tcp_to("web", 80)
            },
            "open.kind",
        ),
    ] {
        let e = refused(h.open(alice(), open.clone()).await);
        assert_eq!(refused_field(&e), field, "{open:?}");
    }
    let e = refused(h.open_with(alice(), Req::Data(b"hi".to_vec())).await);
    assert_eq!(refused_field(&e), "open");

    // None of it reached an agent, and no session was recorded.
    assert_eq!(h.f.link.kinds(), [Kind::Create, Kind::Create]);
    assert!(h.session_events().is_empty());
}

#[tokio::test]
async fn the_agents_refusals_say_what_they_mean_for_a_tunnel() {
    let h = harness().await;
    let alice = || identity("alice", Role::Developer);
    let cases = [
        (AgentErrorCode::Conflict, "not running", "WRONG_STATE"),
        (
            AgentErrorCode::Invalid,
            "nothing listens on port 5432 in container web",
            "TUNNEL_REFUSED",
        ),
        (
            AgentErrorCode::ContainerNotFound,
            "no such container",
            "MISSING_ON_NODE",
        ),
    ];
    for (code, message, reason) in cases {
        h.f.link
            .answer(Kind::Tunnel, Answer::Reply(refusal(code, message)));
        let e = h.open(alice(), tcp_to("web", 5432)).await.err().unwrap();
        assert_eq!(
            code_and_reason(&e),
            (Code::FailedPrecondition, reason.into()),
            "{code:?}"
        );
        if code == AgentErrorCode::Invalid {
            assert_eq!(e.message(), message, "the agent's words");
        }
    }
    assert!(h.session_events().is_empty());
}

#[tokio::test]
async fn an_ssh_tunnel_relays_both_ways_and_records_its_session() {
    let h = harness().await;
    let host_key = h.agent_opens();
    let mut client = h
        .open(identity("alice", Role::Developer), ssh_to("web", ""))
        .await
        .expect("opened");
    let opened = client.opened().await;
    assert_eq!(opened.node, NODE);
    let mut agent = h.agent_end();

    // What the agent was given: the session, and SSH access for alice with
    // a host certificate for the name she dialled.
    let cmd = &agent.command;
    assert_eq!(cmd.session, opened.session);
    assert_eq!(cmd.kind(), pb::TunnelKind::Ssh);
    let access = cmd.ssh.clone().expect("SSH access");
    assert_eq!(access.principal, "alice");
    assert_eq!(access.ca_public_key, h.f.cluster.ssh_ca_public_key());
    let cert = ssh_key::Certificate::from_openssh(&access.host_certificate).unwrap();
    let ca = ssh::parse_public_key(&access.ca_public_key).unwrap();
    cert.validate([&ca.fingerprint(ssh_key::HashAlg::Sha256)])
        .expect("signed by the cluster's SSH CA, valid now");
    assert_eq!(cert.cert_type(), ssh_key::certificate::CertType::Host);
    assert_eq!(cert.valid_principals(), ["web.devctl"]);
    assert_eq!(cert.public_key(), host_key.public_key().key_data());
    assert_eq!(
        cert.valid_before() - cert.valid_after(),
        (crate::cluster::HOST_CERT_TTL + ssh::CLOCK_SKEW).as_secs()
    );

    // Bytes both ways.
    client
        .send(Req::Data(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()))
        .await;
    assert_eq!(
        agent.next_down().await,
        Some(Down::Data(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()))
    );
    let up = agent.up.take().unwrap();
    up.send(Ok(b"SSH-2.0-devctl\r\n".to_vec())).await.unwrap();
    match client.next().await {
        Some(Ok(Resp::Data(d))) => assert_eq!(d, b"SSH-2.0-devctl\r\n"),
        other => panic!("{other:?}"),
    }
    // The client is done sending; the agent's end still sends.
    client.send(Req::CloseWrite(true)).await;
    assert_eq!(agent.next_down().await, Some(Down::End(None)));
    up.send(Ok(b"bye".to_vec())).await.unwrap();
    assert!(matches!(client.next().await, Some(Ok(Resp::Data(_)))));
    // Its clean end: close_write, then the end of the stream (no error).
    drop(up);
    assert!(matches!(
        client.next().await,
        Some(Ok(Resp::CloseWrite(true)))
    ));
    assert!(
        client.next().await.is_none(),
        "the stream ends without error"
    );

    let events = h.session_events();
    let types: Vec<_> = events.iter().map(|e| e.0).collect();
    assert_eq!(types, [pb::EventType::SshStarted, pb::EventType::SshEnded]);
    for (_, session, actor, message) in &events {
        assert_eq!(
            (session.as_str(), actor.as_str()),
            (opened.session.as_str(), "alice")
        );
        assert!(message.starts_with("SSH session"), "{message}");
    }
    assert_eq!(
        h.f.link.events().last().unwrap().container,
        "web",
        "events are the container's"
    );
}

#[tokio::test]
async fn a_failure_of_the_containers_end_ends_the_tunnel_with_a_status_naming_it() {
    let h = harness().await;
    h.agent_opens();
    // An admin may reach anyone's container.
    let mut client = h
        .open(identity("root", Role::Admin), tcp_to("web", 5432))
        .await
        .expect("opened");
    let opened = client.opened().await;
    let mut agent = h.agent_end();
    assert_eq!(
        (
            agent.command.kind(),
            agent.command.port,
            agent.command.ssh.is_none()
        ),
        (pb::TunnelKind::Tcp, 5432, true)
    );
    let up = agent.up.take().unwrap();
    up.send(Err(PipeError::Remote("connection reset by peer".into())))
        .await
        .unwrap();
    let e = match client.next().await {
        Some(Err(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        code_and_reason(&e),
        (Code::Unavailable, "TUNNEL_BROKEN".into())
    );
    assert!(
        e.message()
            .contains("the container's end failed: connection reset by peer"),
        "{}",
        e.message()
    );
    let meta = e.get_error_details().error_info().unwrap().metadata.clone();
    assert_eq!(
        (meta["side"].as_str(), meta["session"].as_str()),
        ("container", opened.session.as_str())
    );
    assert!(client.next().await.is_none());
    // The agent's other pipe is told why.
    match agent.next_down().await {
        Some(Down::End(Some(why))) => assert!(why.contains("connection reset"), "{why}"),
        other => panic!("{other:?}"),
    }
    let events = h.session_events();
    let types: Vec<_> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        types,
        [
            pb::EventType::PortForwardStarted,
            pb::EventType::PortForwardEnded
        ]
    );
    assert!(events[0].3.contains("port 5432"), "{}", events[0].3);
    assert_eq!(events[1].2, "root");
}

#[tokio::test]
async fn the_containers_end_closing_ends_the_tunnel_cleanly() {
    let h = harness().await;
    h.agent_opens();
    let mut client = h
        .open(identity("alice", Role::Developer), tcp_to("web", 80))
        .await
        .unwrap();
    client.opened().await;
    let mut agent = h.agent_end();
    // The server closed the connection: the agent ends its pipe and stops
    // reading the other.
    drop(agent.up.take());
    agent.reader_gone.cancel();
    assert!(matches!(
        client.next().await,
        Some(Ok(Resp::CloseWrite(true)))
    ));
    assert!(client.next().await.is_none(), "no error");
    assert_eq!(h.session_events().len(), 2);
}

/// Alice's open TCP tunnel: her end and the agent's.
async fn tcp_tunnel(h: &Harness) -> (Client, FakeAgentEnd) {
    h.agent_opens();
    let mut client = h
        .open(identity("alice", Role::Developer), tcp_to("web", 80))
        .await
        .unwrap();
    client.opened().await;
    (client, h.agent_end())
}

/// The up pipe's receiver is kept, neither cancelled nor dropped (its
/// keepalive tells the agent that the scheduler lives).
fn up_kept(agent: &FakeAgentEnd) {
    assert!(
        !agent.up_cancelled.is_cancelled(),
        "the up pipe is not cancelled"
    );
    assert!(
        !agent.up_dropped.is_cancelled(),
        "the up pipe's receiver is kept"
    );
}

#[tokio::test]
async fn a_half_closed_tunnel_ends_cleanly_once_the_other_direction_ends() {
    // The client is done sending; the agent's end sends for a while.
    let h = harness().await;
    let (mut client, mut agent) = tcp_tunnel(&h).await;
    client.send(Req::CloseWrite(true)).await;
    assert_eq!(agent.next_down().await, Some(Down::End(None)));
    let up = agent.up.take().unwrap();
    for _ in 0..3 {
        up.send(Ok(b"response".to_vec())).await.unwrap();
        assert_eq!(client.data().await, b"response");
        up_kept(&agent);
    }
    drop(up);
    client.close_write().await;
    assert!(client.next().await.is_none(), "no error");
    cancelled(&agent.up_dropped, "the up pipe dropped at the end").await;
    assert!(!agent.up_cancelled.is_cancelled(), "its stream had ended");
    assert_eq!(agent.next_down().await, None, "nothing more sent down");

    // The agent's end is done sending; the client sends for a while.
    let (mut client, mut agent) = tcp_tunnel(&h).await;
    drop(agent.up.take());
    client.close_write().await;
    for _ in 0..3 {
        client.send(Req::Data(b"request".to_vec())).await;
        assert_eq!(
            agent.next_down().await,
            Some(Down::Data(b"request".to_vec()))
        );
        up_kept(&agent);
    }
    client.send(Req::CloseWrite(true)).await;
    assert_eq!(agent.next_down().await, Some(Down::End(None)));
    assert!(client.next().await.is_none(), "no error");
    assert!(!agent.up_cancelled.is_cancelled());
    assert_eq!(h.session_events().len(), 4, "both sessions recorded");
}

#[tokio::test]
async fn a_half_closed_tunnel_ends_when_the_agent_falls_silent() {
    // The client is done sending, the agent's end still sends...
    let h = harness().await;
    let (mut client, mut agent) = tcp_tunnel(&h).await;
    client.send(Req::CloseWrite(true)).await;
    assert_eq!(agent.next_down().await, Some(Down::End(None)));
    let up = agent.up.take().unwrap();
    up.send(Ok(b"response".to_vec())).await.unwrap();
    assert_eq!(client.data().await, b"response");
    // ...when the agent dies: the reader of the finished down pipe falls
    // silent.
    agent.reader_silent.cancel();
    let e = client.failure().await;
    assert_eq!(
        code_and_reason(&e),
        (Code::Unavailable, "TUNNEL_BROKEN".into())
    );
    assert!(
        e.message()
            .contains("the container's end failed: the other end fell silent"),
        "{}",
        e.message()
    );
    assert!(
        agent.up_cancelled.is_cancelled(),
        "the up pipe is cancelled"
    );
    assert_eq!(agent.next_down().await, None, "finished once, cleanly");
    assert_eq!(h.session_events().len(), 2, "its end is recorded");

    // The agent's end is done sending, the client still sends, when the
    // agent dies.
    let (mut client, mut agent) = tcp_tunnel(&h).await;
    drop(agent.up.take());
    client.close_write().await;
    client.send(Req::Data(b"request".to_vec())).await;
    assert_eq!(
        agent.next_down().await,
        Some(Down::Data(b"request".to_vec()))
    );
    up_kept(&agent);
    agent.reader_silent.cancel();
    let e = client.failure().await;
    assert!(e.message().contains("fell silent"), "{}", e.message());
    match agent.next_down().await {
        Some(Down::End(Some(why))) => assert!(why.contains("fell silent"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(
        !agent.up_cancelled.is_cancelled(),
        "its stream had ended: nothing to cancel"
    );
}

#[tokio::test]
async fn the_agent_ending_the_tunnel_after_the_clients_close_write_is_a_normal_end() {
    let h = harness().await;
    let (mut client, mut agent) = tcp_tunnel(&h).await;
    client.send(Req::CloseWrite(true)).await;
    assert_eq!(agent.next_down().await, Some(Down::End(None)));
    // The SSH server ended: the agent cancels the (finished) down pipe,
    // and its up pipe's last bytes and end may come after the cancel.
    agent.reader_gone.cancel();
    let up = agent.up.take().unwrap();
    up.send(Ok(b"last words".to_vec())).await.unwrap();
    assert_eq!(client.data().await, b"last words");
    drop(up);
    client.close_write().await;
    assert!(client.next().await.is_none(), "no error");
    assert!(!agent.up_cancelled.is_cancelled());
}

#[tokio::test]
async fn a_second_open_is_refused_mid_tunnel() {
    let h = harness().await;
    h.agent_opens();
    let mut client = h
        .open(identity("alice", Role::Developer), tcp_to("web", 80))
        .await
        .unwrap();
    client.opened().await;
    let mut agent = h.agent_end();
    client.send(Req::Open(tcp_to("web", 81))).await;
    let e = match client.next().await {
        Some(Err(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(refused_field(&e), "open");
    assert!(matches!(agent.next_down().await, Some(Down::End(Some(_)))));
    tokio::time::timeout(Duration::from_secs(5), agent.up_cancelled.cancelled())
        .await
        .expect("the agent's sending end is cancelled");
}

#[tokio::test]
async fn tunnels_count_as_streams_and_end_at_shutdown_and_revocation() {
    let h = harness_with_cap(1).await;
    let alice = identity("alice", Role::Developer);
    h.agent_opens();
    let mut first = h.open(alice.clone(), tcp_to("web", 80)).await.unwrap();
    first.opened().await;
    let mut agent = h.agent_end();
    let e = h
        .open(alice.clone(), tcp_to("web", 80))
        .await
        .err()
        .unwrap();
    assert_eq!(
        code_and_reason(&e),
        (Code::ResourceExhausted, "TOO_MANY_STREAMS".into())
    );

    h.stop.cancel();
    match first.next().await {
        Some(Err(e)) => {
            assert_eq!(e.code(), Code::Unavailable);
            assert!(e.message().contains("shutting down"), "{}", e.message());
        }
        other => panic!("{other:?}"),
    }
    assert!(first.next().await.is_none());
    assert!(matches!(agent.next_down().await, Some(Down::End(Some(_)))));
    assert!(agent.up_cancelled.is_cancelled());
    assert_eq!(h.session_events().len(), 2, "its end is recorded");

    // A credential that runs out ends its tunnels too.
    let h = harness().await;
    h.agent_opens();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expiring = Identity {
        expires_at: now + 60,
        ..identity("alice", Role::Developer)
    };
    let mut client = h.open(expiring, tcp_to("web", 80)).await.unwrap();
    client.opened().await;
    h.auth
        .close_expired(SystemTime::now() + Duration::from_secs(120));
    match client.next().await {
        Some(Err(e)) => assert_eq!(e.code(), Code::Unauthenticated),
        other => panic!("{other:?}"),
    }
    assert!(client.next().await.is_none());
}
