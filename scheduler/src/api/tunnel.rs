//! `devctl.v1.TunnelService`: bytes between a client and a container's SSH
//! server or TCP port, relayed between the gRPC stream and the tunnel's two
//! pipes on the bus (`cluster/tunnels.rs` opens them).
//!
//! ```text
//! client --TunnelRequest.data---> down --TunnelSink.send-----> agent
//! client <--TunnelResponse.data-- up   <--TunnelSource.recv--- agent
//! ```
//!
//! Each direction runs on its own, as its own future: one never waits for
//! the other (the two directions of an SSH connection depend on each
//! other). Both hold back rather than buffer: the next request is read only
//! once the previous data went into the pipe (which waits for the agent's
//! credit), and the pipe is read only as fast as the client takes the
//! bounded response channel. Both futures run in one task of the server's
//! stream tracker and end together: when both directions are done (a
//! `close_write` each way; the client's end of its stream counts as its
//! `close_write`), or at the first failure (the status says whose end
//! failed), at the server's shutdown, or when the caller's credential is
//! revoked. The agent closing its reading end (the container's side closed
//! the connection) ends the down direction quietly, as a TCP peer's close.
//!
//! The task holds both pipe ends until the whole tunnel is over, whichever
//! direction ends first, because liveness rides on them: the up pipe's
//! receiver keeps telling the agent that the scheduler lives (its
//! keepalive), and the down pipe's sender, finished or not, keeps hearing
//! the agent's receiver, whose silence (the agent died) fails the tunnel.
//! The agent cancelling the down pipe after its end means the agent ended
//! the tunnel: a normal end, which the relay reaches with the up pipe's end
//! (sent by the agent around its cancel, last bytes included). A tunnel
//! cut short cancels the up pipe and finishes the down pipe with the
//! reason, where they are still open.

use std::sync::Mutex;

use devctl_proto::{
    identity::Identity,
    pb::{
        self, tunnel_request::Request as Req, tunnel_response::Response as Resp,
        tunnel_service_server::TunnelService,
    },
    pipe::PipeError,
    validate::InvalidField,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{
    NODE_CHECK, StreamApi, audit,
    auth::{caller, may_write},
    status::refusal,
};
use crate::cluster::{self, Cluster, TunnelSink, TunnelSource};

/// The method's name in refusals.
const METHOD: &str = "OpenTunnel";

/// Responses buffered per tunnel before the agent's bytes are held back (at
/// most 64 KiB each).
const BUFFER: usize = 16;

/// How long a failure's status may wait for room in the response channel.
const LAST_WORD: std::time::Duration = std::time::Duration::from_secs(5);

/// The responses of one tunnel.
type Responses = mpsc::Receiver<Result<pb::TunnelResponse, Status>>;

#[tonic::async_trait]
impl TunnelService for StreamApi {
    type OpenTunnelStream = ReceiverStream<Result<pb::TunnelResponse, Status>>;

    async fn open_tunnel(
        &self,
        req: Request<Streaming<pb::TunnelRequest>>,
    ) -> Result<Response<Self::OpenTunnelStream>, Status> {
        let id = caller(&req)?;
        let call = audit::call(&req);
        let rx = self.tunnel(id, call, req.into_inner()).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl StreamApi {
    /// Opens the tunnel `inbound`'s first message asks for, as `id`, and
    /// starts relaying: the responses, starting with `opened`.
    pub(super) async fn tunnel<S>(
        &self,
        id: Identity,
        call: Option<audit::Call>,
        mut inbound: S,
    ) -> Result<Responses, Status>
    where
        S: Stream<Item = Result<pb::TunnelRequest, Status>> + Send + Unpin + 'static,
    {
        may_write(&id, METHOD)?;
        let open = match inbound.next().await.transpose()? {
            Some(pb::TunnelRequest {
                request: Some(Req::Open(open)),
            }) => open,
            _ => {
                return Err(invalid(
                    "open",
                    "the first message of OpenTunnel must be `open` (name and kind)",
                ));
            }
        };
        if let Some(call) = &call {
            call.target(&open.name);
        }
        let target = cluster::tunnel_target(&open)?;
        let revocable = self.container_session(&id, METHOD, &target.name)?;
        let tunnel = self.cluster.open_tunnel(target, &id.name).await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let opened = pb::TunnelResponse {
            response: Some(Resp::Opened(pb::TunnelOpened {
                session: tunnel.session().id.clone(),
                node: tunnel.session().node.clone(),
            })),
        };
        tx.try_send(Ok(opened))
            .expect("a new channel has room for the first response");

        let (session, mut up, mut down) = tunnel.into_parts();
        let (cluster, server_stop) = (self.cluster.clone(), self.stop.clone());
        self.streams.spawn(async move {
            // Recorded here, by the task that also records its end.
            cluster.session_started(&session).await;
            let ending = Ending {
                end: revocable.stop().child_token(),
                failure: Mutex::default(),
                session: session.id.clone(),
            };
            let up_over = CancellationToken::new();
            let (down_left, up_left) = tokio::join!(
                client_to_agent(inbound, &mut *down, &ending, &up_over),
                async {
                    let node = &session.node;
                    let left = agent_to_client(&mut *up, &tx, &ending, &cluster, node).await;
                    up_over.cancel();
                    left
                },
            );
            // Both pipe ends lived until now (the up pipe's keepalive, the
            // down pipe's hearing of the agent); a tunnel cut short tells
            // the agent's ends still open why, before they are dropped.
            let over = down_left != DownLeft::Open && up_left == UpLeft::Done;
            if !over {
                if up_left == UpLeft::Open {
                    up.cancel().await;
                }
                if down_left != DownLeft::Finished {
                    down.finish(Some(ending.reason())).await;
                }
            }
            drop((up, down));
            let failure = ending.failure.lock().expect("tunnel lock").take();
            if let Some(status) = failure {
                let _ = tx.send_timeout(Err(status), LAST_WORD).await;
            } else if !over && server_stop.is_cancelled() {
                let _ = tx.try_send(Err(Status::unavailable(
                    "the scheduler is shutting down; the tunnel is closed (reconnect when it is back)",
                )));
            } else {
                revocable.tell_if_revoked(&tx).await;
            }
            cluster.session_ended(&session, None).await;
        });
        Ok(rx)
    }
}

/// An INVALID_ARGUMENT about `field`, with the details every refusal has.
fn invalid(field: &str, problem: &str) -> Status {
    cluster::Error::from(InvalidField::new(field, problem)).into()
}

/// Whose end of a tunnel failed.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Container,
    Node,
}

/// How one tunnel ends: `end` stops both directions (cancelled by the first
/// failure, the server's shutdown or the caller's revocation), and the
/// first failure is the status the client gets.
#[derive(Debug)]
struct Ending {
    end: CancellationToken,
    // std lock: set once, read once, never held across an await.
    failure: Mutex<Option<Status>>,
    session: String,
}

impl Ending {
    /// Ends the tunnel with `status`, unless it failed before.
    fn fail(&self, status: Status) {
        let mut failure = self.failure.lock().expect("tunnel lock");
        if failure.is_none() {
            tracing::info!(session = %self.session, error = %status.message(), "tunnel failed");
            *failure = Some(status);
        }
        drop(failure);
        self.end.cancel();
    }

    /// Ends the tunnel because `side`'s end failed with `why`.
    fn broken(&self, side: Side, why: impl std::fmt::Display) {
        let (code, whose, name) = match side {
            Side::Client => (Code::Cancelled, "the client's end", "client"),
            Side::Container => (Code::Unavailable, "the container's end", "container"),
            Side::Node => (Code::Unavailable, "the container's node", "node"),
        };
        self.fail(refusal(
            code,
            format!("tunnel {}: {whose} failed: {why}", self.session),
            "TUNNEL_BROKEN",
            &[("side", name.into()), ("session", self.session.clone())],
        ));
    }

    /// What the agent is told when the tunnel ends before its time.
    fn reason(&self) -> String {
        match &*self.failure.lock().expect("tunnel lock") {
            Some(status) => status.message().to_string(),
            None => "the scheduler closed the tunnel (shutting down, or the caller's credential was revoked)".into(),
        }
    }
}

/// Where the down direction (client -> agent) stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DownLeft {
    /// Its pipe was finished cleanly (the client's `close_write`).
    Finished,
    /// The agent's reader cancelled: the container's side reads no more,
    /// or the agent ended the tunnel (a close, not a failure).
    Closed,
    /// Cut short with its pipe open.
    Open,
}

/// Client -> agent: each request's data into the down pipe, one at a time;
/// `close_write` (or the end of the client's stream) finishes the pipe.
/// Once the direction is done, keeps hearing the agent's reader until the
/// up direction is over too (`up_over`) or the tunnel ends: its silence
/// means the agent died, and ends the tunnel.
async fn client_to_agent<S>(
    inbound: S,
    sink: &mut dyn TunnelSink,
    ending: &Ending,
    up_over: &CancellationToken,
) -> DownLeft
where
    S: Stream<Item = Result<pb::TunnelRequest, Status>> + Send + Unpin,
{
    let left = forward(inbound, sink, ending).await;
    if left == DownLeft::Open {
        return left;
    }
    loop {
        tokio::select! {
            _ = ending.end.cancelled() => break,
            _ = up_over.cancelled() => break,
            gone = sink.closed() => match gone {
                // The agent ended its tunnel: its up pipe ends too (it
                // finishes it before it lets go), and the relay with it.
                // Still heard meanwhile: the cancel is told once.
                PipeError::Cancelled => continue,
                gone => {
                    ending.broken(Side::Container, gone);
                    break;
                }
            },
        }
    }
    left
}

/// The forwarding part of [`client_to_agent`].
async fn forward<S>(mut inbound: S, sink: &mut dyn TunnelSink, ending: &Ending) -> DownLeft
where
    S: Stream<Item = Result<pb::TunnelRequest, Status>> + Send + Unpin,
{
    loop {
        let msg = tokio::select! {
            _ = ending.end.cancelled() => break,
            gone = sink.closed() => {
                // The agent's reader cancelled: the container's side reads
                // no more (a close, not a failure). Fell silent: it died.
                if gone != PipeError::Cancelled {
                    ending.broken(Side::Container, gone);
                    break;
                }
                return DownLeft::Closed;
            }
            msg = inbound.next() => msg,
        };
        let bytes = match msg {
            Some(Ok(pb::TunnelRequest {
                request: Some(Req::Data(bytes)),
            })) => bytes,
            Some(Ok(pb::TunnelRequest {
                request: Some(Req::CloseWrite(_)),
            }))
            | None => {
                sink.finish(None).await;
                return DownLeft::Finished;
            }
            Some(Ok(pb::TunnelRequest {
                request: Some(Req::Open(_)),
            })) => {
                ending.fail(invalid(
                    "open",
                    "only the first message of OpenTunnel may be `open`",
                ));
                break;
            }
            Some(Ok(pb::TunnelRequest { request: None })) => continue,
            Some(Err(status)) => {
                ending.broken(Side::Client, status.message());
                break;
            }
        };
        let sent = tokio::select! {
            _ = ending.end.cancelled() => break,
            sent = sink.send(&bytes) => sent,
        };
        match sent {
            Ok(()) => {}
            Err(PipeError::Cancelled) => return DownLeft::Closed,
            Err(e) => {
                ending.broken(Side::Container, e);
                break;
            }
        }
    }
    DownLeft::Open
}

/// Where the up direction (agent -> client) stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpLeft {
    /// Its pipe ended cleanly and the client was told.
    Done,
    /// Its pipe ended (nothing to cancel), but the tunnel failed.
    Ended,
    /// Cut short with its pipe open.
    Open,
}

/// What ended a wait for the agent's next bytes.
enum Next {
    Bytes(Option<Result<Vec<u8>, PipeError>>),
    Stop,
}

/// Agent -> client: the up pipe's bytes as `data` responses, then
/// `close_write` at its clean end. Watches the node meanwhile (a node that
/// went down sends nothing more, ever).
async fn agent_to_client(
    source: &mut dyn TunnelSource,
    tx: &mpsc::Sender<Result<pb::TunnelResponse, Status>>,
    ending: &Ending,
    cluster: &Cluster,
    node: &str,
) -> UpLeft {
    let mut alive = tokio::time::interval(NODE_CHECK);
    loop {
        // The same receive is awaited across node checks: dropping it could
        // lose bytes, so only the tunnel's end does.
        let next = {
            let mut recv = source.recv();
            loop {
                tokio::select! {
                    _ = ending.end.cancelled() => break Next::Stop,
                    _ = tx.closed() => {
                        ending.broken(Side::Client, "it went away");
                        break Next::Stop;
                    }
                    _ = alive.tick() => {
                        if !cluster.node_ready(node) {
                            ending.broken(Side::Node, format_args!("node {node:?} went down"));
                            break Next::Stop;
                        }
                    }
                    next = &mut recv => break Next::Bytes(next),
                }
            }
        };
        let response = match next {
            Next::Stop => return UpLeft::Open,
            Next::Bytes(Some(Ok(data))) => Resp::Data(data),
            Next::Bytes(None) => Resp::CloseWrite(true),
            Next::Bytes(Some(Err(e))) => {
                ending.broken(Side::Container, e);
                return UpLeft::Ended;
            }
        };
        let last = matches!(response, Resp::CloseWrite(_));
        let item = Ok(pb::TunnelResponse {
            response: Some(response),
        });
        let sent = tokio::select! {
            _ = ending.end.cancelled() => false,
            sent = tx.send(item) => {
                if sent.is_err() {
                    ending.broken(Side::Client, "it went away");
                }
                sent.is_ok()
            }
        };
        match (sent, last) {
            (true, true) => return UpLeft::Done,
            (true, false) => {}
            (false, true) => return UpLeft::Ended,
            (false, false) => return UpLeft::Open,
        }
    }
}
