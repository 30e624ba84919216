//! The stream protocol (see bus.proto): flow-controlled byte streams from
//! an agent (logs, exec output), with credit granted as chunks are read so
//! an unread stream stops its agent, and exec input to it, one message in
//! flight at a time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{Client, Subscriber};
use devctl_proto::{bus, pb};
use futures::StreamExt;
use prost::Message;

use super::{Bus, BusError};

impl Bus {
    /// Opens a stream from `node` (see the stream protocol in bus.proto):
    /// `build` makes the command from the stream's setup and id.
    /// `Err(Ok(reply))`: the agent refused with `reply`.
    pub async fn open_stream(
        &self,
        node: &str,
        build: impl FnOnce(pb::StreamSetup, &str) -> pb::agent_command::Command,
        timeout: Duration,
    ) -> Result<StreamReader, Result<pb::agent_reply::Result, BusError>> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (data_subject, control_subject) = bus::stream_subjects(node, &id);
        let sub = self
            .client
            .subscribe(data_subject.clone())
            .await
            .map_err(|e| Err(BusError::Nats(e.to_string())))?;
        let setup = pb::StreamSetup {
            data_subject,
            control_subject: control_subject.clone(),
            initial_credit: bus::STREAM_WINDOW,
        };
        match self.command(node, build(setup, &id), timeout).await {
            Ok(pb::agent_reply::Result::Opened(_)) => {}
            Ok(other) => return Err(Ok(other)),
            Err(e) => return Err(Err(e)),
        }
        let window_end = Arc::new(AtomicU64::new(u64::from(bus::STREAM_WINDOW)));
        // Repeats the window end on a timer, whether or not the reader is
        // being read: a reader held up by a slow client must not look dead
        // to the agent, and a lost window message is healed.
        let keepalive = tokio::spawn({
            let (client, subject, window_end) = (
                self.client.clone(),
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
        Ok(StreamReader {
            node: node.to_string(),
            client: self.client.clone(),
            sub,
            control_subject,
            next_seq: 0,
            granted: u64::from(bus::STREAM_WINDOW),
            window_end,
            done: false,
            exit_code: None,
            keepalive,
        })
    }

    /// Sends input to exec session `id` on `node`.
    pub fn exec_input(&self, node: &str, id: &str) -> ExecInputSender {
        ExecInputSender {
            client: self.client.clone(),
            subject: bus::exec_input_subject(node, id),
        }
    }
}

/// The reading end of an agent's output stream. Credit is granted as chunks
/// are read, so an unread stream stops its agent; call
/// [`StreamReader::close`] when done.
#[derive(Debug)]
pub struct StreamReader {
    node: String,
    client: Client,
    sub: Subscriber,
    control_subject: String,
    next_seq: u64,
    // The window end last sent, and the one the keepalive repeats.
    granted: u64,
    window_end: Arc<AtomicU64>,
    done: bool,
    exit_code: Option<i32>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// Sends an exec's input to its agent.
#[derive(Debug, Clone)]
pub struct ExecInputSender {
    client: Client,
    subject: String,
}

impl ExecInputSender {
    /// Sends one input message and waits until the agent has carried it out
    /// (written its bytes to the command's stdin): one message in flight per
    /// session, so a fast client is slowed to the command's pace (through
    /// the gRPC stream's flow control) instead of filling the agent's
    /// buffers. No timeout: a command may leave its stdin unread for long;
    /// the caller stops waiting when the session ends.
    pub async fn send(&self, input: pb::ExecInput) -> Result<(), BusError> {
        let request = async_nats::Request::new()
            .payload(input.encode_to_vec().into())
            .timeout(None);
        self.client
            .send_request(self.subject.clone(), request)
            .await
            .map(drop)
            .map_err(|e| BusError::Nats(e.to_string()))
    }
}

impl StreamReader {
    async fn control(&self, ctl: pb::StreamControl) {
        if let Err(e) = self
            .client
            .publish(self.control_subject.clone(), ctl.encode_to_vec().into())
            .await
        {
            tracing::warn!(error = %e, "stream control not sent");
        }
    }

    /// The next piece of output; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Result<(pb::OutputStream, Vec<u8>), BusError>> {
        if self.done {
            return None;
        }
        {
            let msg = self.sub.next().await;
            let Some(msg) = msg else {
                self.done = true;
                return Some(Err(BusError::Nats("stream subscription ended".into())));
            };
            let chunk = match pb::StreamChunk::decode(msg.payload) {
                Ok(c) => c,
                Err(e) => {
                    self.done = true;
                    return Some(Err(BusError::Nats(format!(
                        "undecodable stream chunk: {e}"
                    ))));
                }
            };
            if chunk.seq != self.next_seq {
                self.done = true;
                return Some(Err(BusError::Nats(format!(
                    "stream lost data: chunk {} arrived, {} expected",
                    chunk.seq, self.next_seq
                ))));
            }
            self.next_seq += 1;
            if chunk.end {
                self.done = true;
                self.exit_code = chunk.exit_code;
                return (!chunk.error.is_empty()).then_some(Err(BusError::Nats(chunk.error)));
            }
            // Move the window once half of it has been read.
            let wanted = self.next_seq + u64::from(bus::STREAM_WINDOW);
            if wanted - self.granted >= u64::from(bus::STREAM_WINDOW / 2) {
                self.granted = wanted;
                self.window_end.store(wanted, Ordering::Relaxed);
                self.control(pb::StreamControl {
                    window_end: wanted,
                    cancel: false,
                })
                .await;
            }
            Some(Ok((chunk.stream(), chunk.data)))
        }
    }

    /// The node the stream comes from.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The exit code the last chunk carried (exec streams).
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    /// Tells the agent to stop (unless the stream already ended).
    pub async fn close(mut self) {
        if !self.done {
            self.control(pb::StreamControl {
                window_end: 0,
                cancel: true,
            })
            .await;
        }
        let _ = self.sub.unsubscribe().await;
    }
}
