//! Unit tests of `tunnel.rs`.

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
