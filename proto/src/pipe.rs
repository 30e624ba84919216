//! One direction of a tunnel over the bus: a flow-controlled byte stream
//! in the stream protocol of bus.proto (`StreamSetup`, `StreamChunk`,
//! `StreamControl`), with both ends here because both the scheduler and
//! the agent send and receive: a tunnel is one [`PipeSender`] and one
//! [`PipeReceiver`] at each end.
//!
//! ```text
//!  sender                                    receiver
//!  ------ StreamChunk{seq, data} ---------->   (data_subject)
//!         (never seq >= window end)
//!  <----- StreamControl{window_end} -------    (control_subject; as it
//!                                               reads, and every few
//!                                               seconds as a keepalive)
//!  ------ StreamChunk{end, error?} -------->   last
//!  <----- StreamControl{cancel} ------------   the reader is gone
//! ```
//!
//! A receiver that stops reading stops the sender once the window (64
//! chunks of at most 64 KiB) is full. A sender that hears nothing from its
//! receiver for [`bus::STREAM_IDLE_LIMIT`] takes it for gone (the other
//! process died): that is how either end of a tunnel notices the other's
//! loss. NATS core delivery is at most once: a lost chunk shows as a gap in
//! `seq` and fails the stream rather than corrupting it.
//!
//! The NATS code here is shared by the scheduler's and the agent's bus
//! modules (which own the connection); nothing else in this crate speaks
//! NATS.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{Client, Subscriber};
use futures::StreamExt;
use prost::Message;

use crate::{bus, pb};

/// Why a pipe ended other than by its sender finishing cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    /// The receiver cancelled: it wants no more data.
    #[error("the reader closed the stream")]
    Cancelled,
    /// Nothing was heard from the other end for the idle limit.
    #[error("the other end fell silent for {0:?}")]
    Silent(Duration),
    /// The sender ended the stream with an error.
    #[error("{0}")]
    Remote(String),
    /// Data was lost or garbled in transit.
    #[error("stream data lost: {0}")]
    Lost(String),
    /// The bus refused an operation.
    #[error("bus: {0}")]
    Bus(String),
}

/// The sending half: publishes chunks within the receiver's window.
#[derive(Debug)]
pub struct PipeSender {
    client: Client,
    data_subject: String,
    control: Subscriber,
    seq: u64,
    window_end: u64,
    idle_limit: Duration,
    heard: tokio::time::Instant,
    finished: bool,
}

impl PipeSender {
    /// The sending half of `setup`: subscribes to the receiver's control
    /// subject (do this before the receiver learns of the stream, so no
    /// credit is missed).
    pub async fn new(client: Client, setup: &pb::StreamSetup) -> Result<Self, PipeError> {
        Self::with_idle_limit(client, setup, bus::STREAM_IDLE_LIMIT).await
    }

    /// As [`PipeSender::new`], with another idle limit (tests).
    pub async fn with_idle_limit(
        client: Client,
        setup: &pb::StreamSetup,
        idle_limit: Duration,
    ) -> Result<Self, PipeError> {
        let control = client
            .subscribe(setup.control_subject.clone())
            .await
            .map_err(|e| PipeError::Bus(e.to_string()))?;
        Ok(Self {
            client,
            data_subject: setup.data_subject.clone(),
            control,
            seq: 0,
            window_end: u64::from(setup.initial_credit),
            idle_limit,
            heard: tokio::time::Instant::now(),
            finished: false,
        })
    }

    /// Handles one control message; `Err` when the receiver cancelled.
    fn on_control(&mut self, msg: Option<async_nats::Message>) -> Result<(), PipeError> {
        let Some(msg) = msg else {
            return Err(PipeError::Bus("control subscription ended".into()));
        };
        let Ok(ctl) = pb::StreamControl::decode(msg.payload) else {
            return Ok(());
        };
        if ctl.cancel {
            return Err(PipeError::Cancelled);
        }
        self.window_end = self.window_end.max(ctl.window_end);
        self.heard = tokio::time::Instant::now();
        Ok(())
    }

    /// Waits until the receiver cancels or falls silent, handling its
    /// credit meanwhile. Cancel-safe: use it in `select!` beside reading
    /// what to send. `Cancelled` is reported once; calling `closed()` again
    /// keeps listening for silence (the receiver's keepalive runs until it
    /// is dropped).
    pub async fn closed(&mut self) -> PipeError {
        loop {
            let deadline = self.heard + self.idle_limit;
            tokio::select! {
                msg = self.control.next() => {
                    if let Err(e) = self.on_control(msg) {
                        return e;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return PipeError::Silent(self.idle_limit),
            }
        }
    }

    /// Sends `data`, in chunks of at most [`bus::STREAM_CHUNK_MAX`], each
    /// once the window has room for it.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), PipeError> {
        if self.finished {
            return Err(PipeError::Bus("the stream was already finished".into()));
        }
        for piece in data.chunks(bus::STREAM_CHUNK_MAX) {
            while self.seq >= self.window_end {
                let deadline = self.heard + self.idle_limit;
                tokio::select! {
                    msg = self.control.next() => self.on_control(msg)?,
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(PipeError::Silent(self.idle_limit));
                    }
                }
            }
            let chunk = pb::StreamChunk {
                seq: self.seq,
                data: piece.to_vec(),
                ..Default::default()
            };
            self.publish(&chunk).await?;
            self.seq += 1;
        }
        Ok(())
    }

    async fn publish(&self, chunk: &pb::StreamChunk) -> Result<(), PipeError> {
        self.client
            .publish(self.data_subject.clone(), chunk.encode_to_vec().into())
            .await
            .map_err(|e| PipeError::Bus(e.to_string()))
    }

    /// Ends the stream: the last chunk, with `error` when it failed (once;
    /// later calls do nothing). The end is sent whatever the window (it
    /// carries no data). The sender still hears its receiver afterwards:
    /// [`PipeSender::closed`] keeps telling when the other end cancels or
    /// falls silent, which is how a tunnel whose one direction ended still
    /// notices the other end's loss. Dropping the sender stops listening.
    pub async fn finish(&mut self, error: Option<&str>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let last = pb::StreamChunk {
            seq: self.seq,
            end: true,
            error: error.unwrap_or_default().to_string(),
            ..Default::default()
        };
        if let Err(e) = self.publish(&last).await {
            tracing::debug!(error = %e, subject = self.data_subject, "stream end not sent");
        }
    }
}

/// The receiving half: reads chunks in order and grants credit as it reads.
#[derive(Debug)]
pub struct PipeReceiver {
    client: Client,
    data: Subscriber,
    control_subject: String,
    next_seq: u64,
    granted: u64,
    window_end: Arc<AtomicU64>,
    done: bool,
    // Repeats the window end on a timer (aborted on drop): a receiver whose
    // reader is slow must not look dead to the sender.
    keepalive: tokio::task::JoinHandle<()>,
}

impl Drop for PipeReceiver {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

impl PipeReceiver {
    /// Subscribes to `data_subject` (before the sender learns of the
    /// stream) and returns the receiver with the setup to hand the sender.
    pub async fn open(
        client: Client,
        data_subject: String,
        control_subject: String,
    ) -> Result<(Self, pb::StreamSetup), PipeError> {
        let data = client
            .subscribe(data_subject.clone())
            .await
            .map_err(|e| PipeError::Bus(e.to_string()))?;
        let setup = pb::StreamSetup {
            data_subject,
            control_subject: control_subject.clone(),
            initial_credit: bus::STREAM_WINDOW,
        };
        let window_end = Arc::new(AtomicU64::new(u64::from(bus::STREAM_WINDOW)));
        let keepalive = tokio::spawn({
            let (client, subject, window_end) = (
                client.clone(),
                control_subject.clone(),
                Arc::clone(&window_end),
            );
            async move {
                let mut tick = tokio::time::interval(bus::STREAM_KEEPALIVE);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let ctl = pb::StreamControl {
                        window_end: window_end.load(Ordering::Relaxed),
                        cancel: false,
                    };
                    let _ = client
                        .publish(subject.clone(), ctl.encode_to_vec().into())
                        .await;
                }
            }
        });
        Ok((
            Self {
                client,
                data,
                control_subject,
                next_seq: 0,
                granted: u64::from(bus::STREAM_WINDOW),
                window_end,
                done: false,
                keepalive,
            },
            setup,
        ))
    }

    /// The next bytes; `None` once the sender finished cleanly.
    /// Cancel-safe: credit owed for what was read is sent before waiting
    /// for more, so a dropped call loses neither data nor credit.
    pub async fn recv(&mut self) -> Option<Result<Vec<u8>, PipeError>> {
        if self.done {
            return None;
        }
        let wanted = self.window_end.load(Ordering::Relaxed);
        if wanted > self.granted {
            self.control(pb::StreamControl {
                window_end: wanted,
                cancel: false,
            })
            .await;
            self.granted = wanted;
        }
        let Some(msg) = self.data.next().await else {
            self.done = true;
            return Some(Err(PipeError::Bus("stream subscription ended".into())));
        };
        let chunk = match pb::StreamChunk::decode(msg.payload) {
            Ok(c) => c,
            Err(e) => {
                self.done = true;
                return Some(Err(PipeError::Lost(format!("undecodable chunk: {e}"))));
            }
        };
        if chunk.seq != self.next_seq {
            self.done = true;
            return Some(Err(PipeError::Lost(format!(
                "chunk {} arrived, {} expected",
                chunk.seq, self.next_seq
            ))));
        }
        self.next_seq += 1;
        if chunk.end {
            self.done = true;
            return (!chunk.error.is_empty()).then_some(Err(PipeError::Remote(chunk.error)));
        }
        // Move the window once half of it has been read: owed now, sent at
        // the next call (or by the keepalive, whichever comes first).
        let wanted = self.next_seq + u64::from(bus::STREAM_WINDOW);
        if wanted - self.granted >= u64::from(bus::STREAM_WINDOW / 2) {
            self.window_end.store(wanted, Ordering::Relaxed);
        }
        Some(Ok(chunk.data))
    }

    async fn control(&self, ctl: pb::StreamControl) {
        if let Err(e) = self
            .client
            .publish(self.control_subject.clone(), ctl.encode_to_vec().into())
            .await
        {
            tracing::debug!(error = %e, "stream control not sent");
        }
    }

    /// Tells the sender to stop (unless the stream already ended); later
    /// reads return `None`. Dropping the receiver stops listening (and its
    /// keepalive): keep it until the whole tunnel is over, so the sender
    /// does not take its silence for a death.
    pub async fn cancel(&mut self) {
        if !self.done {
            self.done = true;
            self.control(pb::StreamControl {
                window_end: 0,
                cancel: true,
            })
            .await;
        }
    }
}
