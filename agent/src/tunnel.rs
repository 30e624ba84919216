//! Tunnels: one byte stream between a client of the scheduler and a
//! container, carried over the bus as two pipes ([`devctl_proto::pipe`]).
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
    fn closed(&mut self) -> impl Future<Output = PipeError> + Send;
    fn finish(self, error: Option<&str>) -> impl Future<Output = ()> + Send;
}

/// The receiving end of a tunnel's pipe.
trait Down: Send {
    fn recv(&mut self) -> impl Future<Output = Option<Result<Vec<u8>, PipeError>>> + Send;
    fn cancel(self) -> impl Future<Output = ()> + Send;
}

impl Up for PipeSender {
    fn send(&mut self, data: &[u8]) -> impl Future<Output = Result<(), PipeError>> + Send {
        PipeSender::send(self, data)
    }
    fn closed(&mut self) -> impl Future<Output = PipeError> + Send {
        PipeSender::closed(self)
    }
    fn finish(self, error: Option<&str>) -> impl Future<Output = ()> + Send {
        PipeSender::finish(self, error)
    }
}

impl Down for PipeReceiver {
    fn recv(&mut self) -> impl Future<Output = Option<Result<Vec<u8>, PipeError>>> + Send {
        PipeReceiver::recv(self)
    }
    fn cancel(self) -> impl Future<Output = ()> + Send {
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
async fn pump<T, U, D>(
    target: T,
    up: U,
    down: D,
    stop: &CancellationToken,
    at_eof: AtEof,
) -> Result<(), String>
where
    T: AsyncRead + AsyncWrite + Send,
    U: Up,
    D: Down,
{
    let ending = Ending::new();
    let (rd, wr) = tokio::io::split(target);
    let both = async {
        tokio::join!(
            target_to_up(rd, up, &ending, at_eof),
            down_to_target(wr, down, &ending)
        );
        // Both done: release the watch below.
        ending.token.cancel();
    };
    let watch = async {
        tokio::select! {
            _ = stop.cancelled() => ending.fail("the agent is shutting down".into()),
            _ = ending.token.cancelled() => {}
        }
    };
    tokio::join!(both, watch);
    match ending.reason.get() {
        Some(why) => Err(why.clone()),
        None => Ok(()),
    }
}

/// The target's output to the up pipe.
async fn target_to_up<R: AsyncRead + Unpin, U: Up>(
    mut rd: R,
    mut up: U,
    ending: &Ending,
    at_eof: AtEof,
) {
    let mut buf = vec![0u8; devctl_proto::bus::STREAM_CHUNK_MAX];
    loop {
        let read = tokio::select! {
            _ = ending.token.cancelled() => {
                up.finish(Some(ending.reason())).await;
                return;
            }
            // The reader is gone (cancelled, or silent: its process
            // died): nobody to tell.
            e = up.closed() => {
                ending.fail(format!("the tunnel's reader: {e}"));
                return;
            }
            read = rd.read(&mut buf) => read,
        };
        match read {
            Ok(0) => {
                up.finish(None).await;
                if at_eof == AtEof::EndTunnel {
                    ending.token.cancel();
                }
                return;
            }
            Ok(n) => {
                let sent = tokio::select! {
                    _ = ending.token.cancelled() => {
                        up.finish(Some(ending.reason())).await;
                        return;
                    }
                    sent = up.send(&buf[..n]) => sent,
                };
                if let Err(e) = sent {
                    ending.fail(format!("the tunnel's reader: {e}"));
                    return;
                }
            }
            Err(e) => {
                let why = format!("reading from the container's end: {e}");
                up.finish(Some(&why)).await;
                ending.fail(why);
                return;
            }
        }
    }
}

/// The down pipe to the target's input.
async fn down_to_target<W: AsyncWrite + Unpin, D: Down>(mut wr: W, mut down: D, ending: &Ending) {
    loop {
        let next = tokio::select! {
            _ = ending.token.cancelled() => {
                down.cancel().await;
                return;
            }
            next = down.recv() => next,
        };
        match next {
            // The client sends no more: half-close.
            None => {
                let _ = wr.shutdown().await;
                return;
            }
            Some(Ok(bytes)) => {
                let written = tokio::select! {
                    _ = ending.token.cancelled() => {
                        down.cancel().await;
                        return;
                    }
                    written = wr.write_all(&bytes) => written,
                };
                if let Err(e) = written {
                    ending.fail(format!("writing to the container's end: {e}"));
                    down.cancel().await;
                    return;
                }
            }
            Some(Err(e)) => {
                ending.fail(format!("the tunnel's input: {e}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tokio::sync::mpsc;

    use super::*;

    /// What a fake pipe end saw.
    #[derive(Debug, Default)]
    struct Seen {
        sent: Vec<u8>,
        finished: Option<Option<String>>,
        cancelled: bool,
    }

    /// An up pipe whose reader can be made to go away.
    struct FakeUp {
        seen: Arc<Mutex<Seen>>,
        gone: CancellationToken,
    }

    impl Up for FakeUp {
        fn send(&mut self, data: &[u8]) -> impl Future<Output = Result<(), PipeError>> + Send {
            self.seen.lock().unwrap().sent.extend_from_slice(data);
            async { Ok(()) }
        }
        fn closed(&mut self) -> impl Future<Output = PipeError> + Send {
            let gone = self.gone.clone();
            async move {
                gone.cancelled().await;
                PipeError::Cancelled
            }
        }
        fn finish(self, error: Option<&str>) -> impl Future<Output = ()> + Send {
            self.seen.lock().unwrap().finished = Some(error.map(str::to_string));
            async {}
        }
    }

    /// A down pipe fed by the test.
    struct FakeDown {
        rx: mpsc::Receiver<Result<Vec<u8>, PipeError>>,
        seen: Arc<Mutex<Seen>>,
    }

    impl Down for FakeDown {
        fn recv(&mut self) -> impl Future<Output = Option<Result<Vec<u8>, PipeError>>> + Send {
            self.rx.recv()
        }
        fn cancel(self) -> impl Future<Output = ()> + Send {
            self.seen.lock().unwrap().cancelled = true;
            async {}
        }
    }

    struct Harness {
        up_seen: Arc<Mutex<Seen>>,
        down_seen: Arc<Mutex<Seen>>,
        down_tx: Option<mpsc::Sender<Result<Vec<u8>, PipeError>>>,
        reader_gone: CancellationToken,
        stop: CancellationToken,
        pumped: tokio::task::JoinHandle<Result<(), String>>,
    }

    /// A pump over one end of a duplex; the test holds the other end.
    fn harness(at_eof: AtEof) -> (Harness, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let up_seen = Arc::new(Mutex::new(Seen::default()));
        let down_seen = Arc::new(Mutex::new(Seen::default()));
        let (down_tx, rx) = mpsc::channel(8);
        let reader_gone = CancellationToken::new();
        let stop = CancellationToken::new();
        let up = FakeUp {
            seen: Arc::clone(&up_seen),
            gone: reader_gone.clone(),
        };
        let down = FakeDown {
            rx,
            seen: Arc::clone(&down_seen),
        };
        let pumped = tokio::spawn({
            let stop = stop.clone();
            async move { pump(ours, up, down, &stop, at_eof).await }
        });
        (
            Harness {
                up_seen,
                down_seen,
                down_tx: Some(down_tx),
                reader_gone,
                stop,
                pumped,
            },
            theirs,
        )
    }

    async fn eventually(mut check: impl FnMut() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn a_tcp_tunnel_honours_half_close_both_ways() {
        let (mut h, mut target) = harness(AtEof::HalfClose);
        let tx = h.down_tx.take().unwrap();
        tx.send(Ok(b"request".to_vec())).await.unwrap();
        // The client is done sending: the target reads the end...
        drop(tx);
        let mut got = Vec::new();
        target.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // ...and still answers.
        target.write_all(b"response").await.unwrap();
        target.shutdown().await.unwrap();
        assert_eq!(h.pumped.await.unwrap(), Ok(()));
        let up = h.up_seen.lock().unwrap();
        assert_eq!(up.sent, b"response");
        assert_eq!(up.finished, Some(None), "the up pipe finished cleanly");
        assert!(!h.down_seen.lock().unwrap().cancelled);
    }

    #[tokio::test]
    async fn output_may_end_before_input() {
        let (mut h, mut target) = harness(AtEof::HalfClose);
        target.write_all(b"banner").await.unwrap();
        target.shutdown().await.unwrap();
        let up = Arc::clone(&h.up_seen);
        eventually(|| up.lock().unwrap().finished.is_some()).await;
        assert!(!h.pumped.is_finished(), "input still flows");
        let tx = h.down_tx.take().unwrap();
        tx.send(Ok(b"late".to_vec())).await.unwrap();
        let mut buf = [0u8; 4];
        target.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"late");
        drop(tx);
        assert_eq!(h.pumped.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn the_end_of_an_ssh_servers_output_ends_the_tunnel() {
        let (h, target) = harness(AtEof::EndTunnel);
        drop(target);
        assert_eq!(h.pumped.await.unwrap(), Ok(()));
        assert_eq!(h.up_seen.lock().unwrap().finished, Some(None));
        assert!(
            h.down_seen.lock().unwrap().cancelled,
            "the scheduler is told to stop sending"
        );
    }

    #[tokio::test]
    async fn a_pipe_error_ends_both_directions_with_its_reason() {
        let (mut h, _target) = harness(AtEof::HalfClose);
        let tx = h.down_tx.take().unwrap();
        tx.send(Err(PipeError::Lost("chunk 3 arrived, 2 expected".into())))
            .await
            .unwrap();
        let why = h.pumped.await.unwrap().unwrap_err();
        assert!(why.contains("chunk 3"), "{why}");
        let finished = h.up_seen.lock().unwrap().finished.clone();
        assert_eq!(finished, Some(Some(why)), "the up pipe carries the reason");
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_ends_the_tunnel() {
        let (h, _target) = harness(AtEof::HalfClose);
        h.reader_gone.cancel();
        let why = h.pumped.await.unwrap().unwrap_err();
        assert!(why.contains("reader"), "{why}");
        assert!(h.down_seen.lock().unwrap().cancelled);
        assert_eq!(
            h.up_seen.lock().unwrap().finished,
            None,
            "nobody to finish to"
        );
    }

    #[tokio::test]
    async fn the_agents_shutdown_ends_a_tunnel() {
        let (h, _target) = harness(AtEof::HalfClose);
        h.stop.cancel();
        let why = h.pumped.await.unwrap().unwrap_err();
        assert!(why.contains("shutting down"), "{why}");
        assert_eq!(
            h.up_seen.lock().unwrap().finished,
            Some(Some(why)),
            "the scheduler learns why"
        );
        assert!(h.down_seen.lock().unwrap().cancelled);
    }
}
