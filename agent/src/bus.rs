//! The agent's side of the bus: the only file of the agent that speaks NATS.
//! Commands come in on `devctl.node.<node>.cmd` (request/reply); heartbeats
//! go out on `devctl.node.<node>.heartbeat`; a tunnel's pipes
//! ([`devctl_proto::pipe`]) are opened here.

use std::path::Path;

use async_nats::{Client, ConnectOptions, Subscriber};
use devctl_proto::{
    bus, pb,
    pipe::{PipeReceiver, PipeSender},
    pki,
};
use futures::StreamExt;
use prost::Message;
use thiserror::Error;

/// A bus failure.
#[derive(Debug, Error)]
#[error("NATS: {0}")]
pub struct BusError(String);

impl BusError {
    pub(crate) fn refused() -> Self {
        BusError(
            "the bus refused this node's certificate; rejoin with `devctl-agent join` (a new join token) or ask an admin to re-admit it".into(),
        )
    }
}

fn bus_err(e: impl std::fmt::Display) -> BusError {
    BusError(e.to_string())
}

/// One node's connection to the bus.
#[derive(Debug, Clone)]
pub struct Bus {
    client: Client,
    jetstream: async_nats::jetstream::Context,
    node: String,
    refused: tokio_util::sync::CancellationToken,
}

/// A command received from the scheduler, with where to send the reply.
#[derive(Debug)]
pub struct Incoming {
    /// The decoded command, or why it could not be decoded.
    pub command: Result<pb::AgentCommand, prost::DecodeError>,
    reply_to: Option<async_nats::Subject>,
}

/// Why a first connection attempt failed (to say each once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Refused,
    PlainText,
    Unreachable,
}

impl Bus {
    /// Connects to `url` over TLS with the bundle in `tls_dir` (`ca.pem`,
    /// `cert.pem`, `key.pem`; read again at every reconnect, so a renewed
    /// certificate is used from the next connection on). If the server is
    /// not reachable yet, the client keeps trying in the background (as it
    /// does after any later disconnect).
    ///
    /// The first connection is retried here until it succeeds (so the
    /// agent may start before the server, or just before the server has
    /// reloaded the users that admit it): async-nats gives up on an
    /// authorization failure, which is only final once we are connected.
    /// Once connected, the server refusing this node (it was removed from
    /// the bus, e.g. revoked) cancels [`Bus::refused`].
    pub async fn connect(url: &str, node: &str, tls_dir: &Path) -> Result<Self, BusError> {
        let refused = tokio_util::sync::CancellationToken::new();
        let mut backoff = std::time::Duration::from_millis(100);
        let mut told = None;
        // std lock: one string swap per connection event.
        let last_event = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let client = loop {
            let on_refusal = refused.clone();
            let last_event = std::sync::Arc::clone(&last_event);
            let attempt = ConnectOptions::new()
                .name(format!("devctl-agent/{node}"))
                .require_tls(true)
                .add_root_certificates(tls_dir.join(pki::CA_FILE))
                .add_client_certificate(tls_dir.join(pki::CERT_FILE), tls_dir.join(pki::KEY_FILE))
                .custom_inbox_prefix(bus::agent_inbox_prefix(node))
                .event_callback(move |event| {
                    let on_refusal = on_refusal.clone();
                    let last = std::sync::Arc::clone(&last_event);
                    async move {
                        // A reconnect loop repeats the same failure with
                        // backoff: said once, then at debug level.
                        let text = event.to_string();
                        let repeated = {
                            let mut last = last.lock().expect("event lock");
                            std::mem::replace(&mut *last, text.clone()) == text
                        };
                        if repeated {
                            tracing::debug!(%event, "bus connection");
                        } else {
                            tracing::info!(%event, "bus connection");
                        }
                        // Refused while connected (ServerError) or on a
                        // reconnect: async-nats reports a failed reconnect
                        // as a ClientError carrying only its
                        // ConnectErrorKind, rendered; compared with that
                        // kind's own rendering, not with words of ours.
                        let refused = match &event {
                            async_nats::Event::ServerError(
                                async_nats::ServerError::AuthorizationViolation,
                            ) => true,
                            async_nats::Event::ClientError(async_nats::ClientError::Other(e)) => {
                                *e == async_nats::ConnectErrorKind::AuthorizationViolation
                                    .to_string()
                            }
                            _ => false,
                        };
                        if refused {
                            on_refusal.cancel();
                        }
                    }
                })
                .connect(url)
                .await;
            match attempt {
                Ok(client) => break client,
                Err(e) => {
                    let refused_now = matches!(
                        e.kind(),
                        async_nats::ConnectErrorKind::AuthorizationViolation
                    );
                    // Said once per condition; repeats at debug level.
                    let condition = if refused_now {
                        Failure::Refused
                    } else if bus::probe_transport(url, std::time::Duration::from_secs(2)).await
                        == Some(bus::Transport::Plain)
                    {
                        Failure::PlainText
                    } else {
                        Failure::Unreachable
                    };
                    if told == Some(condition) {
                        tracing::debug!(error = %e, retry_in = ?backoff, "bus connection attempt failed; retrying");
                    } else {
                        told = Some(condition);
                        match condition {
                            Failure::Refused => tracing::warn!(
                                error = %e,
                                "the bus refused this node's certificate (not admitted yet, or removed); retrying"
                            ),
                            Failure::PlainText => tracing::error!(
                                "the bus at {url} does not speak TLS; start nats-server with the scheduler's DIR/nats/nats.conf; retrying"
                            ),
                            Failure::Unreachable => tracing::warn!(
                                error = %e,
                                "the bus at {url} is not reachable; retrying with backoff"
                            ),
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        };
        Ok(Self {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            node: node.to_string(),
            refused,
        })
    }

    /// Cancelled when the server refuses this node after it was connected
    /// (its bus user was removed: revoked): the agent then stops.
    pub fn refused(&self) -> &tokio_util::sync::CancellationToken {
        &self.refused
    }

    /// Subscribes to this node's commands.
    pub async fn commands(&self) -> Result<Commands, BusError> {
        let sub = self
            .client
            .subscribe(bus::command_subject(&self.node))
            .await
            .map_err(bus_err)?;
        Ok(Commands { sub })
    }

    /// Answers a command.
    pub async fn reply(&self, incoming: &Incoming, reply: &pb::AgentReply) -> Result<(), BusError> {
        let Some(to) = incoming.reply_to.clone() else {
            return Ok(()); // fire-and-forget command
        };
        self.client
            .publish(to, reply.encode_to_vec().into())
            .await
            .map_err(bus_err)
    }

    /// Publishes a heartbeat.
    pub async fn heartbeat(&self, hb: &pb::Heartbeat) -> Result<(), BusError> {
        self.client
            .publish(
                bus::heartbeat_subject(&self.node),
                hb.encode_to_vec().into(),
            )
            .await
            .map_err(bus_err)
    }

    /// Stores an engine event in the node-events stream and waits for the
    /// server's acknowledgement (so a full stream slows the agent down
    /// instead of losing events).
    pub async fn engine_event(&self, ev: &pb::EngineEvent) -> Result<(), BusError> {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(ev.encode_to_vec().into())
            .message_id(&ev.event_id);
        self.jetstream
            .send_publish(bus::engine_events_subject(&self.node), msg)
            .await
            .map_err(bus_err)?
            .await
            .map_err(bus_err)?;
        Ok(())
    }

    /// Publishes a stats report (core NATS: the newest report is what
    /// matters; none is stored).
    pub async fn stats(&self, report: &pb::StatsReport) -> Result<(), BusError> {
        self.client
            .publish(
                bus::stats_subject(&self.node),
                report.encode_to_vec().into(),
            )
            .await
            .map_err(bus_err)
    }

    /// Asks the scheduler to sign a new certificate for this node.
    pub async fn renew(
        &self,
        csr_pem: String,
        current_serial: String,
    ) -> Result<pb::IssuedCertificate, BusError> {
        let request = async_nats::Request::new()
            .payload(
                pb::RenewRequest {
                    csr_pem,
                    current_serial,
                }
                .encode_to_vec()
                .into(),
            )
            .timeout(Some(std::time::Duration::from_secs(30)));
        let reply = self
            .client
            .send_request(bus::renew_subject(&self.node), request)
            .await
            .map_err(bus_err)?;
        let reply = pb::RenewReply::decode(reply.payload).map_err(bus_err)?;
        reply
            .certificate
            .ok_or_else(|| BusError(format!("the scheduler refused to renew: {}", reply.error)))
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(bus_err)
    }
}

/// Keeps the number of streams being served.
#[derive(Debug, Clone, Default)]
pub struct StreamCount(std::sync::Arc<std::sync::atomic::AtomicI32>);

impl StreamCount {
    /// Streams open now.
    pub fn get(&self) -> i32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one more stream until the guard is dropped.
    pub(crate) fn counted(&self) -> Counted {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(self.clone())
    }
}

/// One stream counted in a [`StreamCount`], while it lives.
pub(crate) struct Counted(StreamCount);

impl Drop for Counted {
    fn drop(&mut self) {
        (self.0)
            .0
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The control side of a stream, subscribed before the stream is announced
/// so no message from the reader is missed.
#[derive(Debug)]
pub struct StreamControl {
    sub: Subscriber,
    setup: pb::StreamSetup,
}

impl Bus {
    /// Listens for a stream's control messages.
    pub async fn stream_control(&self, setup: pb::StreamSetup) -> Result<StreamControl, BusError> {
        let sub = self
            .client
            .subscribe(setup.control_subject.clone())
            .await
            .map_err(bus_err)?;
        Ok(StreamControl { sub, setup })
    }

    /// Sends `chunks` to the reader within its window, until they end,
    /// the reader cancels or falls silent, or `stop` is cancelled. The last
    /// chunk sent has `end` set.
    pub async fn pump(
        &self,
        mut control: StreamControl,
        mut chunks: crate::runtime::OutputChunks,
        stop: tokio_util::sync::CancellationToken,
        count: StreamCount,
        exit: Option<futures::future::BoxFuture<'static, Option<i32>>>,
    ) {
        let _counted = count.counted();
        let subject = control.setup.data_subject.clone();
        let mut window_end = u64::from(control.setup.initial_credit);
        let mut seq = 0u64;
        // Pieces of engine output not sent yet (waiting for the window).
        let mut pending: std::collections::VecDeque<(pb::OutputStream, Vec<u8>)> =
            Default::default();
        let idle = tokio::time::sleep(bus::STREAM_IDLE_LIMIT);
        tokio::pin!(idle);
        let end = |seq, error: &str| pb::StreamChunk {
            seq,
            end: true,
            error: error.to_string(),
            ..Default::default()
        };
        loop {
            while seq < window_end
                && let Some((stream, data)) = pending.pop_front()
            {
                let c = pb::StreamChunk {
                    seq,
                    stream: stream as i32,
                    data,
                    ..Default::default()
                };
                self.send_chunk(&subject, &c).await;
                seq += 1;
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    self.send_chunk(&subject, &end(seq, "the agent is shutting down")).await;
                    return;
                }
                _ = &mut idle => {
                    tracing::info!(subject, "stream reader fell silent; stream closed");
                    self.send_chunk(&subject, &end(seq, "the reader fell silent")).await;
                    return;
                }
                msg = control.sub.next() => {
                    let Some(msg) = msg else {
                        self.send_chunk(&subject, &end(seq, "control subscription ended")).await;
                        return;
                    };
                    let Ok(ctl) = pb::StreamControl::decode(msg.payload) else { continue };
                    if ctl.cancel {
                        return;
                    }
                    window_end = window_end.max(ctl.window_end);
                    idle.as_mut().reset(tokio::time::Instant::now() + bus::STREAM_IDLE_LIMIT);
                }
                chunk = chunks.next(), if pending.is_empty() && seq < window_end => match chunk {
                    Some(Ok((stream, data))) => {
                        pending.extend(data.chunks(bus::STREAM_CHUNK_MAX).map(|p| (stream, p.to_vec())));
                    }
                    Some(Err(e)) => {
                        self.send_chunk(&subject, &end(seq, &e.to_string())).await;
                        return;
                    }
                    None => {
                        let mut last = end(seq, "");
                        if let Some(exit) = exit {
                            last.exit_code = exit.await;
                        }
                        self.send_chunk(&subject, &last).await;
                        return;
                    }
                },
            }
        }
    }

    async fn send_chunk(&self, subject: &str, chunk: &pb::StreamChunk) {
        if let Err(e) = self
            .client
            .publish(subject.to_string(), chunk.encode_to_vec().into())
            .await
        {
            tracing::warn!(error = %e, "stream chunk not sent");
        }
    }
}

/// The agent's ends of a tunnel's two pipes.
#[derive(Debug)]
pub struct TunnelPipes {
    /// Agent -> scheduler.
    pub up: PipeSender,
    /// Scheduler -> agent.
    pub down: PipeReceiver,
}

impl Bus {
    /// Opens the agent's ends of a tunnel: reads `down` (granting its
    /// credit) and sends on `up`. Done before the command is answered, so
    /// no byte or credit of the scheduler's is missed.
    pub async fn tunnel_pipes(
        &self,
        up: &pb::StreamSetup,
        down: &pb::StreamSetup,
    ) -> Result<TunnelPipes, BusError> {
        let (down, _) = PipeReceiver::open(
            self.client.clone(),
            down.data_subject.clone(),
            down.control_subject.clone(),
        )
        .await
        .map_err(bus_err)?;
        let up = PipeSender::new(self.client.clone(), up)
            .await
            .map_err(bus_err)?;
        Ok(TunnelPipes { up, down })
    }
}

impl Bus {
    /// Listens for an exec's input.
    pub async fn exec_input(&self, subject: &str) -> Result<ExecInput, BusError> {
        let sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(bus_err)?;
        Ok(ExecInput {
            sub,
            client: self.client.clone(),
            unanswered: None,
        })
    }
}

/// An exec's input messages. Each is a request the scheduler waits on:
/// [`ExecInput::done`] answers it once the message was carried out (its
/// bytes written to the command's stdin), so input arrives no faster than
/// the command takes it and never piles up in the subscription.
#[derive(Debug)]
pub struct ExecInput {
    sub: Subscriber,
    client: Client,
    unanswered: Option<async_nats::Subject>,
}

impl ExecInput {
    /// The next input message; `None` when the subscription ends. Answer
    /// it with [`ExecInput::done`] (the previous one is answered here if it
    /// was not).
    pub async fn next(&mut self) -> Option<pb::ExecInput> {
        self.done().await;
        loop {
            let msg = self.sub.next().await?;
            match pb::ExecInput::decode(msg.payload) {
                Ok(input) => {
                    self.unanswered = msg.reply;
                    return Some(input);
                }
                Err(_) => {
                    if let Some(to) = msg.reply {
                        let _ = self.client.publish(to, Default::default()).await;
                    }
                }
            }
        }
    }

    /// Tells the scheduler the last message was carried out: it may send
    /// the next.
    pub async fn done(&mut self) {
        if let Some(to) = self.unanswered.take()
            && let Err(e) = self.client.publish(to, Default::default()).await
        {
            tracing::debug!(error = %e, "exec input not acknowledged");
        }
    }
}

/// The stream of commands for this node.
#[derive(Debug)]
pub struct Commands {
    sub: Subscriber,
}

impl Commands {
    /// The next command; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Incoming> {
        let msg = self.sub.next().await?;
        Some(Incoming {
            command: pb::AgentCommand::decode(msg.payload),
            reply_to: msg.reply,
        })
    }

    /// Stops receiving commands. Commands already delivered are still
    /// returned by [`Commands::next`] until it yields `None`.
    pub async fn close(&mut self) {
        if let Err(e) = self.sub.unsubscribe().await {
            tracing::warn!(error = %e, "unsubscribing from commands");
        }
    }
}
