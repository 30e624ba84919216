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
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tokio::sync::mpsc;

    use super::*;

    /// The idle limit the fakes report.
    const IDLE: Duration = Duration::from_secs(20);

    /// What a fake pipe end saw.
    #[derive(Debug, Default)]
    struct Seen {
        sent: Vec<u8>,
        finished: Option<Option<String>>,
        cancelled: bool,
        dropped: bool,
    }

    /// An up pipe whose reader can be made to cancel or fall silent.
    struct FakeUp {
        seen: Arc<Mutex<Seen>>,
        gone: CancellationToken,
        silent: CancellationToken,
        finished: CancellationToken,
    }

    impl Up for FakeUp {
        fn send(&mut self, data: &[u8]) -> impl Future<Output = Result<(), PipeError>> + Send {
            self.seen.lock().unwrap().sent.extend_from_slice(data);
            async { Ok(()) }
        }
        fn closed(&mut self) -> impl Future<Output = PipeError> + Send {
            let (gone, silent) = (self.gone.clone(), self.silent.clone());
            async move {
                tokio::select! {
                    _ = gone.cancelled() => PipeError::Cancelled,
                    _ = silent.cancelled() => PipeError::Silent(IDLE),
                }
            }
        }
        fn finish(&mut self, error: Option<&str>) -> impl Future<Output = ()> + Send {
            let mut seen = self.seen.lock().unwrap();
            assert!(seen.finished.is_none(), "finished twice");
            seen.finished = Some(error.map(str::to_string));
            self.finished.cancel();
            async {}
        }
    }

    impl Drop for FakeUp {
        fn drop(&mut self) {
            // Also after a failed assertion poisoned the lock.
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.dropped = true;
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
        fn cancel(&mut self) -> impl Future<Output = ()> + Send {
            self.seen.lock().unwrap().cancelled = true;
            async {}
        }
    }

    impl Drop for FakeDown {
        fn drop(&mut self) {
            // Also after a failed assertion poisoned the lock.
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.dropped = true;
        }
    }

    struct Harness {
        up_seen: Arc<Mutex<Seen>>,
        down_seen: Arc<Mutex<Seen>>,
        down_tx: Option<mpsc::Sender<Result<Vec<u8>, PipeError>>>,
        /// Cancel: the up pipe's reader cancels.
        reader_gone: CancellationToken,
        /// Cancel: the up pipe's reader falls silent (the scheduler died).
        reader_silent: CancellationToken,
        /// Cancelled once the up pipe was finished.
        up_finished: CancellationToken,
        stop: CancellationToken,
        pumped: tokio::task::JoinHandle<Result<(), String>>,
    }

    impl Harness {
        /// How the pump ended (waits up to 5 s).
        async fn ended(&mut self) -> Result<(), String> {
            tokio::time::timeout(Duration::from_secs(5), &mut self.pumped)
                .await
                .expect("the pump ended within 5 s")
                .expect("the pump did not panic")
        }

        /// Waits until the up pipe was finished (up to 5 s).
        async fn up_finished(&self) {
            tokio::time::timeout(Duration::from_secs(5), self.up_finished.cancelled())
                .await
                .expect("the up pipe finished within 5 s");
        }

        /// Neither pipe end was dropped, cancelled or (the up one)
        /// finished with an error: the tunnel is alive.
        fn alive(&self) {
            let (up, down) = (self.up_seen.lock().unwrap(), self.down_seen.lock().unwrap());
            assert!(!up.dropped && !down.dropped, "both ends are kept");
            assert!(!down.cancelled, "the down pipe is not cancelled");
            assert!(
                matches!(up.finished, None | Some(None)),
                "{:?}",
                up.finished
            );
        }
    }

    /// A pump over one end of a duplex; the test holds the other end.
    fn harness(at_eof: AtEof) -> (Harness, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let up_seen = Arc::new(Mutex::new(Seen::default()));
        let down_seen = Arc::new(Mutex::new(Seen::default()));
        let (down_tx, rx) = mpsc::channel(8);
        let (reader_gone, reader_silent, up_finished) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let stop = CancellationToken::new();
        let up = FakeUp {
            seen: Arc::clone(&up_seen),
            gone: reader_gone.clone(),
            silent: reader_silent.clone(),
            finished: up_finished.clone(),
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
                reader_silent,
                up_finished,
                stop,
                pumped,
            },
            theirs,
        )
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
        // ...and still answers, for a while, while the down pipe's
        // receiver is kept (its keepalive says this end lives).
        for _ in 0..3 {
            target.write_all(b"response").await.unwrap();
            h.alive();
        }
        target.shutdown().await.unwrap();
        assert_eq!(h.ended().await, Ok(()));
        let up = h.up_seen.lock().unwrap();
        assert_eq!(up.sent, b"responseresponseresponse");
        assert_eq!(up.finished, Some(None), "the up pipe finished cleanly");
        let down = h.down_seen.lock().unwrap();
        assert!(!down.cancelled);
        assert!(up.dropped && down.dropped, "both dropped at the end");
    }

    #[tokio::test]
    async fn output_may_end_before_input() {
        let (mut h, mut target) = harness(AtEof::HalfClose);
        target.write_all(b"banner").await.unwrap();
        target.shutdown().await.unwrap();
        h.up_finished().await;
        assert!(!h.pumped.is_finished(), "input still flows");
        // For a while: the finished up pipe is kept, and still heard.
        let tx = h.down_tx.take().unwrap();
        for word in [b"late", b"more"] {
            tx.send(Ok(word.to_vec())).await.unwrap();
            let mut buf = [0u8; 4];
            target.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, word);
            h.alive();
        }
        drop(tx);
        assert_eq!(h.ended().await, Ok(()));
        assert_eq!(h.up_seen.lock().unwrap().finished, Some(None));
        assert!(!h.down_seen.lock().unwrap().cancelled);
    }

    #[tokio::test]
    async fn a_half_closed_tunnel_ends_when_the_scheduler_falls_silent() {
        // The target's output ended; its input still flows...
        let (mut h, mut target) = harness(AtEof::HalfClose);
        target.shutdown().await.unwrap();
        h.up_finished().await;
        let tx = h.down_tx.take().unwrap();
        tx.send(Ok(b"input".to_vec())).await.unwrap();
        let mut buf = [0u8; 5];
        target.read_exact(&mut buf).await.unwrap();
        // ...when the scheduler dies: its reader of the finished up pipe
        // falls silent.
        h.reader_silent.cancel();
        let why = h.ended().await.unwrap_err();
        assert!(why.contains("fell silent"), "{why}");
        assert!(
            h.down_seen.lock().unwrap().cancelled,
            "the down pipe is cancelled"
        );
        assert_eq!(
            h.up_seen.lock().unwrap().finished,
            Some(None),
            "finished once, cleanly"
        );

        // The other way round: the input ended, the output still flows.
        let (mut h, mut target) = harness(AtEof::HalfClose);
        drop(h.down_tx.take());
        let mut got = Vec::new();
        target.read_to_end(&mut got).await.unwrap();
        target.write_all(b"output").await.unwrap();
        h.reader_silent.cancel();
        let why = h.ended().await.unwrap_err();
        assert!(why.contains("fell silent"), "{why}");
        let finished = h.up_seen.lock().unwrap().finished.clone();
        assert_eq!(finished, Some(Some(why)), "the up pipe carries the reason");
        assert!(
            !h.down_seen.lock().unwrap().cancelled,
            "its stream had ended"
        );
    }

    #[tokio::test]
    async fn the_schedulers_cancel_after_the_output_ended_ends_the_tunnel() {
        let (mut h, mut target) = harness(AtEof::HalfClose);
        target.shutdown().await.unwrap();
        h.up_finished().await;
        h.reader_gone.cancel();
        let why = h.ended().await.unwrap_err();
        assert!(why.contains("reader"), "{why}");
        assert!(h.down_seen.lock().unwrap().cancelled);
    }

    #[tokio::test]
    async fn the_end_of_an_ssh_servers_output_ends_the_tunnel() {
        let (mut h, target) = harness(AtEof::EndTunnel);
        drop(target);
        assert_eq!(h.ended().await, Ok(()));
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
        let why = h.ended().await.unwrap_err();
        assert!(why.contains("chunk 3"), "{why}");
        let finished = h.up_seen.lock().unwrap().finished.clone();
        assert_eq!(finished, Some(Some(why)), "the up pipe carries the reason");
        assert!(
            !h.down_seen.lock().unwrap().cancelled,
            "its stream had ended"
        );
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_ends_the_tunnel() {
        let (mut h, _target) = harness(AtEof::HalfClose);
        h.reader_gone.cancel();
        let why = h.ended().await.unwrap_err();
        assert!(why.contains("reader"), "{why}");
        assert!(h.down_seen.lock().unwrap().cancelled);
        let finished = h.up_seen.lock().unwrap().finished.clone();
        assert_eq!(finished, Some(Some(why)), "finished with the reason");
    }

    #[tokio::test]
    async fn the_agents_shutdown_ends_a_tunnel() {
        let (mut h, _target) = harness(AtEof::HalfClose);
        h.stop.cancel();
        let why = h.ended().await.unwrap_err();
        assert!(why.contains("shutting down"), "{why}");
        assert_eq!(
            h.up_seen.lock().unwrap().finished,
            Some(Some(why)),
            "the scheduler learns why"
        );
        assert!(h.down_seen.lock().unwrap().cancelled);
    }
}
