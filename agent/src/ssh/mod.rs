//! The agent's SSH server: one per SSH tunnel, speaking over the tunnel's
//! bytes, so a dev container needs no sshd and the node opens no port.
//!
//! One file on purpose (one concern): what a connection may do, from the
//! login to each channel request, in one handler; the command behind a
//! session channel runs in `exec.rs`, the tests are in `tests.rs`.
//!
//! - The host proves itself with the agent's host key and a certificate
//!   the scheduler signed for this connection ([`ServerSetup`]).
//! - A user gets in with a user certificate of the cluster's SSH CA that
//!   names the identity the scheduler admitted, under that same user name
//!   ([`devctl_proto::ssh::check_user_certificate`]); plain keys, passwords
//!   and the like are refused.
//! - Session channels run commands in the container through the runtime's
//!   exec (shell, exec, the image's sftp-server; `exec.rs`); direct-tcpip
//!   channels connect inside the container's network namespace. Nothing
//!   else is offered: no remote forwarding, X11 or agent forwarding.
//!
//! russh delivers every message of a channel into that channel's queue and
//! waits when the queue is full, stalling the whole connection: so a
//! session channel's reading half is dropped as soon as it is opened (its
//! input arrives through [`russh::server::Handler::data`]), and a
//! direct-tcpip channel is pumped from the moment it is accepted.

mod exec;
#[cfg(test)]
mod tests;

use std::{borrow::Cow, collections::HashMap, sync::Arc, time::Duration};

use devctl_proto::{
    pb,
    ssh::ssh_key::{Certificate, HashAlg, PrivateKey, PublicKey, certificate::CertType},
};
use futures::future::BoxFuture;
use russh::{
    Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf, MethodKind, MethodSet, Pty, Sig,
    SshId,
    server::{self, Auth, ChannelOpenHandle, Msg, Session},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Semaphore, mpsc, watch},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    runtime::{ExecSession, RuntimeError},
    tunnel::TunnelError,
};

/// How often the server checks that a quiet client is still there.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Session channels (shells, commands) open at once on one connection.
const MAX_SESSIONS: usize = 10;
/// Port forwards open at once on one connection.
const MAX_FORWARDS: usize = 64;
/// Environment variables one session may set, and their sizes.
const MAX_ENV: usize = 64;
const MAX_ENV_NAME: usize = 128;
const MAX_ENV_VALUE: usize = 8192;
/// Input packets (at most 32 KiB each) waiting for a command's stdin;
/// beyond that the connection waits.
const STDIN_QUEUE: usize = 256;

/// The login shell: bash when the image has it.
const SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi";

/// The sftp subsystem: the image's own sftp-server, where distributions
/// put it.
const SFTP: &str = "for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server \
/usr/lib/ssh/sftp-server /usr/libexec/sftp-server; do \
if [ -x \"$p\" ]; then exec \"$p\"; fi; done; \
echo 'devctl: this image has no sftp-server (install openssh-sftp-server or openssh in it)' >&2; \
exit 127";

/// The container an SSH connection reaches.
pub trait Container: Send + Sync + 'static {
    /// Starts a command in it.
    fn exec(&self, start: pb::ExecStart) -> BoxFuture<'static, Result<ExecSession, RuntimeError>>;
    /// Connects to `host` port `port` inside its network namespace.
    fn connect(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, TunnelError>>;
}

/// What the server of one connection needs: its keys and certificate, and
/// whom it admits.
#[derive(Debug)]
pub struct ServerSetup {
    config: Arc<server::Config>,
    ca: PublicKey,
    principal: String,
}

impl ServerSetup {
    /// The server for `access`: presents `host_key` with the host
    /// certificate of `access` (which must certify that key and be signed
    /// by the CA of `access`), admits `access.principal` only.
    pub fn new(host_key: &PrivateKey, access: &pb::SshAccess) -> Result<Self, String> {
        let cert = Certificate::from_openssh(access.host_certificate.trim())
            .map_err(|e| format!("the SSH host certificate does not parse: {e}"))?;
        let ca = devctl_proto::ssh::parse_public_key(&access.ca_public_key)
            .map_err(|e| format!("the SSH CA key: {e}"))?;
        if access.principal.is_empty() {
            return Err("no principal to admit".into());
        }
        if cert.cert_type() != CertType::Host {
            return Err("the SSH host certificate is a user certificate".into());
        }
        if cert.public_key() != host_key.public_key().key_data() {
            return Err(format!(
                "the SSH host certificate is for another key than this agent's host key ({}); the scheduler certifies the key of the agent's last heartbeat",
                host_key.public_key().fingerprint(HashAlg::Sha256)
            ));
        }
        if cert.signature_key() != ca.key_data() || cert.verify_signature().is_err() {
            return Err("the SSH host certificate is not signed by the cluster's SSH CA".into());
        }
        // SSH clients check the validity by their own clocks; a failure
        // here points at this node's.
        if let Err(e) = cert.validate([&ca.fingerprint(HashAlg::Sha256)]) {
            tracing::warn!(error = %e, "the SSH host certificate is not valid by this node's clock (is it right?)");
        }
        let config = server::Config {
            // No '-' or space may follow the protocol version (RFC 4253).
            server_id: SshId::Standard(Cow::Owned(format!(
                "SSH-2.0-devctl_{}",
                devctl_proto::VERSION.replace(['-', ' '], "_")
            ))),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            keys: vec![host_key.clone()],
            certificates: vec![cert],
            // OpenSSH asks with "none" first: no need to make it wait.
            auth_rejection_time_initial: Some(Duration::ZERO),
            // russh's default drops a quiet connection after 10 minutes,
            // and OpenSSH sends no keepalives: an idle shell must stay.
            // Keepalives find a client that is gone.
            inactivity_timeout: None,
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            ..Default::default()
        };
        Ok(Self {
            config: Arc::new(config),
            ca,
            principal: access.principal.clone(),
        })
    }
}

/// Serves one SSH connection over `stream` until it ends; then stops what
/// it started in the container. `stop` ends its sessions at once (the
/// connection itself ends with its stream). `label` names it in the log.
pub async fn serve<S>(
    setup: Arc<ServerSetup>,
    stream: S,
    container: Arc<dyn Container>,
    stop: CancellationToken,
    label: String,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tasks = TaskTracker::new();
    let handler = Connection {
        setup: Arc::clone(&setup),
        container,
        label: label.clone(),
        tasks: tasks.clone(),
        stop: stop.clone(),
        forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        permits: None,
        channels: HashMap::new(),
    };
    let ended = match server::run_stream(Arc::clone(&setup.config), stream, handler).await {
        Ok(running) => running.await,
        Err(e) => Err(e),
    };
    match ended {
        Ok(()) => tracing::debug!(session = %label, "SSH connection ended"),
        Err(e) => tracing::info!(session = %label, error = %e, "SSH connection ended"),
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
}

/// What an admitted user may do (the certificate's extensions).
#[derive(Debug, Clone, Copy)]
struct Permits {
    pty: bool,
    port_forwarding: bool,
}

/// One connection's handler.
struct Connection {
    setup: Arc<ServerSetup>,
    container: Arc<dyn Container>,
    label: String,
    // Everything started for the connection: ended with it.
    tasks: TaskTracker,
    stop: CancellationToken,
    forwards: Arc<Semaphore>,
    // Set once a user was admitted.
    permits: Option<Permits>,
    channels: HashMap<ChannelId, SessionChannel>,
}

/// A session channel: its settings until its command starts, then the
/// ways to reach the command.
struct SessionChannel {
    writer: Option<ChannelWriteHalf<Msg>>,
    pty: Option<Terminal>,
    env: Vec<(String, String)>,
    running: Option<Running>,
}

#[derive(Debug, Clone)]
struct Terminal {
    term: String,
    rows: u16,
    cols: u16,
}

/// The command of a session channel, as the handler reaches it.
struct Running {
    // None once the client sent EOF.
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    // (rows, cols); only with a terminal.
    size: Option<watch::Sender<(u16, u16)>>,
    signals: mpsc::Sender<nix::sys::signal::Signal>,
    // The client closed the channel.
    closed: CancellationToken,
}

/// What a session channel runs.
#[derive(Debug)]
enum Program {
    Shell,
    Exec(String),
    Sftp,
}

fn reply(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
    if ok {
        session.channel_success(channel)
    } else {
        session.channel_failure(channel)
    }
}

fn clamp(n: u32) -> u16 {
    n.min(u32::from(u16::MAX)) as u16
}

fn valid_term(term: &str) -> bool {
    !term.is_empty()
        && term.len() <= 64
        && term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_ENV_NAME
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The signal an SSH signal name stands for.
fn signal_of(sig: &Sig) -> Option<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal;
    Some(match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::FPE => Signal::SIGFPE,
        Sig::HUP => Signal::SIGHUP,
        Sig::ILL => Signal::SIGILL,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::SEGV => Signal::SIGSEGV,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::Custom(name) => format!("SIG{name}").parse().ok()?,
    })
}

impl Connection {
    /// Starts `program` on `channel` (once per channel).
    async fn start(
        &mut self,
        channel: ChannelId,
        program: Program,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(chan) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        let Some(writer) = chan.writer.take() else {
            return session.channel_failure(channel);
        };
        let terminal = chan
            .pty
            .clone()
            .filter(|_| !matches!(program, Program::Sftp));
        let what = match program {
            Program::Shell => "shell",
            Program::Exec(_) => "exec",
            Program::Sftp => "sftp",
        };
        let command = match program {
            Program::Shell => vec!["/bin/sh".into(), "-c".into(), SHELL.into()],
            // The command is an argument of the shell, never part of a
            // script of ours.
            Program::Exec(command) => vec!["/bin/sh".into(), "-c".into(), command],
            Program::Sftp => vec!["/bin/sh".into(), "-c".into(), SFTP.into()],
        };
        let mut env: Vec<String> = chan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(t) = &terminal {
            env.push(format!("TERM={}", t.term));
        }
        let start = pb::ExecStart {
            command,
            tty: terminal.is_some(),
            stdin: true,
            size: terminal.as_ref().map(|t| pb::TerminalSize {
                rows: u32::from(t.rows),
                cols: u32::from(t.cols),
            }),
            env,
            ..Default::default()
        };
        match self.container.exec(start).await {
            Ok(exec) => {
                let (stdin, stdin_rx) = mpsc::channel(STDIN_QUEUE);
                let (signals, signals_rx) = mpsc::channel(8);
                let (size, size_rx) = match &terminal {
                    Some(t) => {
                        let (tx, rx) = watch::channel((t.rows, t.cols));
                        (Some(tx), Some(rx))
                    }
                    None => (None, None),
                };
                let closed = self.stop.child_token();
                tracing::info!(session = %self.label, channel = %channel, what, tty = terminal.is_some(), "SSH session started a command");
                self.tasks.spawn(exec::run(
                    exec,
                    writer,
                    exec::Input {
                        stdin: stdin_rx,
                        size: size_rx,
                        signals: signals_rx,
                    },
                    closed.clone(),
                ));
                chan.running = Some(Running {
                    stdin: Some(stdin),
                    size,
                    signals,
                    closed,
                });
                session.channel_success(channel)
            }
            Err(e) => {
                tracing::warn!(session = %self.label, channel = %channel, what, error = %e, "SSH session could not start a command");
                chan.writer = Some(writer);
                // Said before the refusal, so the client shows why.
                let _ = session.extended_data(channel, 1, format!("devctl: {e}\r\n"));
                session.channel_failure(channel)
            }
        }
    }

    /// The channel's settings, while its command has not started.
    fn before_start(&mut self, channel: ChannelId) -> Option<&mut SessionChannel> {
        self.channels
            .get_mut(&channel)
            .filter(|c| c.running.is_none() && c.writer.is_some())
    }
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        tracing::info!(session = %self.label, user, "SSH login refused: a plain public key (a devctl certificate is needed: `devctl ssh`)");
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let principal = &self.setup.principal;
        let checked =
            devctl_proto::ssh::check_user_certificate(cert, &self.setup.ca, principal)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    if user == principal {
                        Ok(())
                    } else {
                        Err(format!(
                            "the SSH user name is {user:?}, but the identity admitted to this container is {principal:?}"
                        ))
                    }
                });
        match checked {
            Ok(()) => {
                let permits = Permits {
                    pty: cert.extensions().contains_key("permit-pty"),
                    port_forwarding: cert.extensions().contains_key("permit-port-forwarding"),
                };
                tracing::info!(session = %self.label, user, key_id = cert.key_id(), serial = cert.serial(), "SSH login accepted");
                self.permits = Some(permits);
                Ok(Auth::Accept)
            }
            Err(reason) => {
                tracing::warn!(session = %self.label, user, key_id = cert.key_id(), serial = cert.serial(), %reason, "SSH login refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= MAX_SESSIONS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        // Its input arrives through `data`; an unread queue would stall
        // the connection.
        let (read, writer) = channel.split();
        drop(read);
        self.channels.insert(
            writer.id(),
            SessionChannel {
                writer: Some(writer),
                pty: None,
                env: Vec::new(),
                running: None,
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.permits.is_some_and(|p| p.port_forwarding) {
            tracing::info!(session = %self.label, "SSH port forward refused: the certificate does not permit port forwarding");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Some(port) = u16::try_from(port_to_connect).ok().filter(|p| *p > 0) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let Ok(permit) = Arc::clone(&self.forwards).try_acquire_owned() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let (container, stop, label) = (
            Arc::clone(&self.container),
            self.stop.clone(),
            self.label.clone(),
        );
        let host = host_to_connect.to_string();
        // The channel is not open yet, so nothing arrives on it while the
        // connection is being made.
        self.tasks.spawn(async move {
            let _permit = permit;
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                c = container.connect(host.clone(), port) => c,
            };
            let mut tcp = match connected {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::info!(session = %label, host, port, error = %e, "SSH port forward refused");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            reply.accept().await;
            let mut stream = channel.into_stream();
            tokio::select! {
                _ = stop.cancelled() => {}
                copied = tokio::io::copy_bidirectional(&mut stream, &mut tcp) => {
                    if let Err(e) = copied {
                        tracing::debug!(session = %label, host, port, error = %e, "SSH port forward ended");
                    }
                }
            }
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let permitted = self.permits.is_some_and(|p| p.pty);
        let ok = match self.before_start(channel) {
            Some(chan) if permitted && valid_term(term) => {
                chan.pty = Some(Terminal {
                    term: term.to_string(),
                    rows: clamp(row_height),
                    cols: clamp(col_width),
                });
                true
            }
            _ => false,
        };
        reply(session, channel, ok)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let valid = valid_env_name(variable_name)
            && variable_value.len() <= MAX_ENV_VALUE
            && !variable_value.contains('\0');
        let ok = match self.before_start(channel) {
            Some(chan) if valid => {
                chan.env.retain(|(k, _)| k != variable_name);
                let room = chan.env.len() < MAX_ENV;
                if room {
                    chan.env
                        .push((variable_name.to_string(), variable_value.to_string()));
                }
                room
            }
            _ => false,
        };
        reply(session, channel, ok)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Program::Shell, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match std::str::from_utf8(data) {
            Ok(command) if !command.contains('\0') => {
                self.start(channel, Program::Exec(command.to_string()), session)
                    .await
            }
            _ => {
                let _ = session.extended_data(
                    channel,
                    1,
                    "devctl: the command is not valid UTF-8 text\r\n",
                );
                session.channel_failure(channel)
            }
        }
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            self.start(channel, Program::Sftp, session).await
        } else {
            session.channel_failure(channel)
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(chan) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        let (rows, cols) = (clamp(row_height), clamp(col_width));
        match (&chan.running, &mut chan.pty) {
            (
                Some(Running {
                    size: Some(size), ..
                }),
                _,
            ) => {
                size.send_replace((rows, cols));
            }
            (None, Some(t)) => {
                t.rows = rows;
                t.cols = cols;
            }
            _ => {}
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let running = self.channels.get(&channel).and_then(|c| c.running.as_ref());
        if let (Some(running), Some(sig)) = (running, signal_of(&signal))
            && running.signals.try_send(sig).is_err()
        {
            tracing::debug!(session = %self.label, channel = %channel, "SSH signal dropped (too many pending)");
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(running) = self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.running.as_mut())
        else {
            return Ok(());
        };
        // A full queue holds the connection until the command reads
        // (russh offers no per-channel back-pressure on input).
        if let Some(stdin) = &running.stdin
            && stdin.send(data.to_vec()).await.is_err()
        {
            running.stdin = None;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(running) = self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.running.as_mut())
        {
            running.stdin = None;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(chan) = self.channels.remove(&channel)
            && let Some(running) = chan.running
        {
            running.closed.cancel();
        }
        Ok(())
    }
}
