//! Tunnels: one byte stream between a client of the scheduler and a
//! container, carried over the bus as two pipes ([`devctl_proto::pipe`]).
//!
//! One file on purpose (one concern): a tunnel's whole life on the agent,
//! from the command to the last byte, with its tests beside the pump.
//!
//! ```text
//!  scheduler ==down pipe==> agent --> target: a TCP socket inside the
//!            <==up pipe====       <--  container's network namespace, or
//!                                      the agent's SSH server (ssh.rs)
//!                                      over an in-memory duplex
//! ```
//!
//! [`serve`] pumps both ways until both directions have ended, honouring
//! half-close: the end of the down pipe shuts the target's writing side;
//! the target's end of output finishes the up pipe. For an SSH target the
//! end of the server's output ends the whole tunnel (SSH has no half-close
//! below its own channels). A pipe error, an I/O error on the target or
//! the agent's shutdown ends both directions at once, and the up pipe then
//! carries the reason.
//!
//! Both pipe ends are kept until the whole tunnel is over, so a half-closed
//! tunnel still knows the scheduler lives: the down pipe's receiver keeps
//! sending its keepalive (else the scheduler would take this end for dead),
//! and the up pipe's sender, once finished, still hears the scheduler's
//! receiver. Its silence (the scheduler died) or its cancel (the scheduler
//! ended the tunnel) ends the tunnel.

use std::{future::Future, sync::Arc};

use devctl_proto::{
    pb,
    pipe::{PipeError, PipeReceiver, PipeSender},
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::{bus, runtime::RuntimeError, ssh};

/// Bytes buffered each way between the pump and the SSH server.
const DUPLEX_BUFFER: usize = devctl_proto::bus::STREAM_CHUNK_MAX;

/// What a tunnel reaches in its container.
#[derive(Debug)]
pub enum Target {
    /// A connected socket inside the container's network namespace.
    Tcp(tokio::net::TcpStream),
    /// An SSH server for one connection, ready to handshake.
    Ssh(Arc<ssh::ServerSetup>),
}

/// A tunnel the dispatcher has prepared: its target is ready, its pipes
/// are still to be opened (before the command is answered).
#[derive(Debug)]
pub struct OpenedTunnel {
    /// devctl id of the container.
    pub id: String,
    /// The session the scheduler recorded (for the log).
    pub session: String,
    /// Agent -> scheduler.
    pub up: pb::StreamSetup,
    /// Scheduler -> agent.
    pub down: pb::StreamSetup,
    /// The container's end.
    pub target: Target,
}

/// Why a tunnel could not be opened or a connection made.
#[derive(Debug, Error)]
pub enum TunnelError {
    /// The engine refused or failed (no such container, not running).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The command is incomplete.
    #[error("{0}")]
    BadCommand(String),
    /// The request cannot be carried out as asked (nothing listens on the
    /// port, a host name, a host certificate that is not ours).
    #[error("{0}")]
    Invalid(String),
    /// The agent could not reach the container's end.
    #[error("{0}")]
    Failed(String),
}

impl TunnelError {
    /// The bus error code for this error.
    pub fn code(&self) -> pb::AgentErrorCode {
        match self {
            TunnelError::Runtime(e) => e.code(),
            TunnelError::BadCommand(_) => pb::AgentErrorCode::BadCommand,
            TunnelError::Invalid(_) => pb::AgentErrorCode::Invalid,
            TunnelError::Failed(_) => pb::AgentErrorCode::Engine,
        }
    }
}

/// Serves one tunnel until both directions have ended, a pipe fails or
/// `stop` is cancelled (the agent is stopping). Counted in `count` while
/// it runs. `container` is what an SSH session reaches.
pub async fn serve(
    tunnel: OpenedTunnel,
    pipes: bus::TunnelPipes,
    container: Arc<dyn ssh::Container>,
    stop: CancellationToken,
    count: bus::StreamCount,
) {
    let _counted = count.counted();
    let started = std::time::Instant::now();
    let (kind, ended) = match tunnel.target {
        Target::Tcp(tcp) => (
            "tcp",
            pump(tcp, pipes.up, pipes.down, &stop, AtEof::HalfClose).await,
        ),
        Target::Ssh(setup) => {
            let (ours, theirs) = tokio::io::duplex(DUPLEX_BUFFER);
            // The SSH server ends when its stream does (the pump dropped
            // `ours`), and stops its sessions at once when the agent stops.
            let session = ssh::serve(
                setup,
                theirs,
                container,
                stop.child_token(),
                tunnel.session.clone(),
            );
            let (pumped, ()) = tokio::join!(
                pump(ours, pipes.up, pipes.down, &stop, AtEof::EndTunnel),
                session
            );
            ("ssh", pumped)
        }
    };
    let duration =
        humantime::format_duration(std::time::Duration::from_secs(started.elapsed().as_secs()));
    match ended {
        Ok(()) => {
            tracing::info!(id = %tunnel.id, session = %tunnel.session, kind, %duration, "tunnel ended")
        }
        Err(why) => {
            tracing::info!(id = %tunnel.id, session = %tunnel.session, kind, %duration, reason = %why, "tunnel ended early")
        }
    }
}

/// The sending end of a tunnel's pipe (a trait so the pump is tested
/// without a bus).
trait Up: Send {
    fn send(&mut self, data: &[u8]) -> impl Future<Output = Result<(), PipeError>> + Send;
    /// The reader cancelled or fell silent; still heard after `finish`.
    fn closed(&mut self) -> impl Future<Output = PipeError> + Send;
    fn finish(&mut self, error: Option<&str>) -> impl Future<Output = ()> + Send;
}

/// The receiving end of a tunnel's pipe: its keepalive runs as long as it
/// is kept.
trait Down: Send {
    fn recv(&mut self) -> impl Future<Output = Option<Result<Vec<u8>, PipeError>>> + Send;
    fn cancel(&mut self) -> impl Future<Output = ()> + Send;
}

impl Up for PipeSender {
    fn send(&mut self, data: &[u8]) -> impl Future<Output = Result<(), PipeError>> + Send {
        PipeSender::send(self, data)
    }
    fn closed(&mut self) -> impl Future<Output = PipeError> + Send {
        PipeSender::closed(self)
    }
    fn finish(&mut self, error: Option<&str>) -> impl Future<Output = ()> + Send {
        PipeSender::finish(self, error)
    }
}

impl Down for PipeReceiver {
    fn recv(&mut self) -> impl Future<Output = Option<Result<Vec<u8>, PipeError>>> + Send {
        PipeReceiver::recv(self)
    }
    fn cancel(&mut self) -> impl Future<Output = ()> + Send {
        PipeReceiver::cancel(self)
    }
}

/// What the end of the target's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtEof {
    /// Only that it sends no more (TCP half-close): input still flows.
    HalfClose,
    /// That it is gone: the tunnel ends.
    EndTunnel,
}

/// The end of both directions, with the first reason given.
struct Ending {
    token: CancellationToken,
    reason: std::sync::OnceLock<String>,
}

impl Ending {
    fn new() -> Self {
        Self {
            token: CancellationToken::new(),
            reason: std::sync::OnceLock::new(),
        }
    }

    /// Ends both directions because of `why` (unless already ended).
    fn fail(&self, why: String) {
        if !self.token.is_cancelled() {
            let _ = self.reason.set(why);
        }
        self.token.cancel();
    }

    fn reason(&self) -> &str {
        self.reason.get().map_or("the tunnel ended", String::as_str)
    }
}

/// Pumps `target` <-> the pipes until both directions have ended (see
/// the module's documentation); `Err` with the reason when it ended early.
///
/// Both pipe ends live until the whole tunnel is over, whichever direction
/// ends first: the down pipe's receiver keeps granting credit (its
/// keepalive tells the scheduler this end lives), and the up pipe's sender,
/// finished or not, keeps hearing the scheduler's (its silence means the
/// scheduler died). A tunnel that ends early cancels what is still open
/// and finishes the up pipe with the reason.
async fn pump<T, U, D>(
    target: T,
    mut up: U,
    mut down: D,
    stop: &CancellationToken,
    at_eof: AtEof,
) -> Result<(), String>
where
    T: AsyncRead + AsyncWrite + Send,
    U: Up,
    D: Down,
{
    let ending = Ending::new();
    let down_done = CancellationToken::new();
    let (rd, wr) = tokio::io::split(target);
    let both = async {
        let ends = tokio::join!(
            target_to_up(rd, &mut up, &ending, at_eof, &down_done),
            async {
                let ended = down_to_target(wr, &mut down, &ending).await;
                down_done.cancel();
                ended
            }
        );
        // Both done: release the watch below.
        ending.token.cancel();
        ends
    };
    let watch = async {
        tokio::select! {
            _ = stop.cancelled() => ending.fail("the agent is shutting down".into()),
            _ = ending.token.cancelled() => {}
        }
    };
    let ((finished, ended), ()) = tokio::join!(both, watch);
    if !ended {
        down.cancel().await;
    }
    if !finished {
        up.finish(Some(ending.reason())).await;
    }
    match ending.reason.get() {
        Some(why) => Err(why.clone()),
        None => Ok(()),
    }
}

/// The target's output to the up pipe; `true` once the up pipe was
/// finished cleanly. After that, while the other direction still flows,
/// keeps hearing the up pipe's reader: its silence (the scheduler died) or
/// its cancel (the scheduler ended the tunnel) ends the tunnel.
async fn target_to_up<R: AsyncRead + Unpin, U: Up>(
    mut rd: R,
    up: &mut U,
    ending: &Ending,
    at_eof: AtEof,
    down_done: &CancellationToken,
) -> bool {
    let mut buf = vec![0u8; devctl_proto::bus::STREAM_CHUNK_MAX];
    loop {
        let read = tokio::select! {
            _ = ending.token.cancelled() => return false,
            // The reader is gone (cancelled, or silent: its process died).
            e = up.closed() => {
                ending.fail(format!("the tunnel's reader: {e}"));
                return false;
            }
            read = rd.read(&mut buf) => read,
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                let sent = tokio::select! {
                    _ = ending.token.cancelled() => return false,
                    sent = up.send(&buf[..n]) => sent,
                };
                if let Err(e) = sent {
                    ending.fail(format!("the tunnel's reader: {e}"));
                    return false;
                }
            }
            Err(e) => {
                ending.fail(format!("reading from the container's end: {e}"));
                return false;
            }
        }
    }
    up.finish(None).await;
    if at_eof == AtEof::EndTunnel {
        ending.token.cancel();
        return true;
    }
    tokio::select! {
        _ = ending.token.cancelled() => {}
        _ = down_done.cancelled() => {}
        e = up.closed() => ending.fail(format!("the tunnel's reader: {e}")),
    }
    true
}

/// The down pipe to the target's input; `true` once the down pipe's
/// stream ended (cleanly or not), so it needs no cancel.
async fn down_to_target<W: AsyncWrite + Unpin, D: Down>(
    mut wr: W,
    down: &mut D,
    ending: &Ending,
) -> bool {
    loop {
        let next = tokio::select! {
            _ = ending.token.cancelled() => return false,
            next = down.recv() => next,
        };
        match next {
            // The client sends no more: half-close.
            None => {
                let _ = wr.shutdown().await;
                return true;
            }
            Some(Ok(bytes)) => {
                let written = tokio::select! {
                    _ = ending.token.cancelled() => return false,
                    written = wr.write_all(&bytes) => written,
                };
                if let Err(e) = written {
                    ending.fail(format!("writing to the container's end: {e}"));
                    return false;
                }
            }
            Some(Err(e)) => {
                ending.fail(format!("the tunnel's input: {e}"));
                return true;
            }
        }
    }
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
