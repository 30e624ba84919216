//! The SSH server against russh's client over an in-memory stream, with a
//! fake container: who gets in, and what a session does.
//!
//! One file on purpose: every test drives the same server through the same
//! client fixture.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use devctl_proto::ssh::{
    SshCa, new_key,
    ssh_key::{
        Algorithm, Certificate, PrivateKey,
        certificate::{Builder, CertType},
    },
};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use russh::{
    ChannelMsg, ChannelOpenFailure, Sig, client,
    keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::runtime::ExecControl;

const HOST: &str = "web.devctl";
const USER: &str = "alice";

/// Records what the session asked of the command.
#[derive(Debug, Default)]
struct FakeControl {
    resizes: Mutex<Vec<(u16, u16)>>,
    signals: Mutex<Vec<nix::sys::signal::Signal>>,
    ended: std::sync::atomic::AtomicBool,
}

impl ExecControl for FakeControl {
    fn resize(&self, rows: u16, cols: u16) -> BoxFuture<'static, Result<(), RuntimeError>> {
        self.resizes.lock().unwrap().push((rows, cols));
        async { Ok(()) }.boxed()
    }
    fn signal(
        &self,
        signal: nix::sys::signal::Signal,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        self.signals.lock().unwrap().push(signal);
        async { Ok(()) }.boxed()
    }
    fn exit_code(&self) -> BoxFuture<'static, Option<i32>> {
        async { Some(3) }.boxed()
    }
    fn end(&self) -> BoxFuture<'static, ()> {
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        async {}.boxed()
    }
}

/// A container whose every command is `cat` that says "err" on stderr
/// first and exits 3; connections go to this host.
#[derive(Debug, Default)]
struct FakeContainer {
    starts: Mutex<Vec<pb::ExecStart>>,
    controls: Mutex<Vec<Arc<FakeControl>>>,
    refuse_exec: bool,
}

impl FakeContainer {
    fn starts(&self) -> Vec<pb::ExecStart> {
        self.starts.lock().unwrap().clone()
    }
    fn control(&self) -> Arc<FakeControl> {
        Arc::clone(&self.controls.lock().unwrap()[0])
    }
}

impl Container for FakeContainer {
    fn exec(&self, start: pb::ExecStart) -> BoxFuture<'static, Result<ExecSession, RuntimeError>> {
        self.starts.lock().unwrap().push(start);
        if self.refuse_exec {
            return async { Err(RuntimeError::Conflict("container web is exited".into())) }.boxed();
        }
        let control = Arc::new(FakeControl::default());
        self.controls.lock().unwrap().push(Arc::clone(&control));
        let (stdin, from_stdin) = tokio::io::duplex(1 << 16);
        let echoed = futures::stream::unfold(from_stdin, |mut r| async move {
            let mut buf = vec![0u8; 1024];
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok((pb::OutputStream::Stdout, buf)), r))
                }
            }
        });
        let output =
            futures::stream::once(async { Ok((pb::OutputStream::Stderr, b"err\n".to_vec())) })
                .chain(echoed)
                .boxed();
        async move {
            Ok(ExecSession {
                output,
                input: Some(Box::pin(stdin)),
                control,
            })
        }
        .boxed()
    }

    fn connect(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, TunnelError>> {
        async move {
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| TunnelError::Invalid(e.to_string()))
        }
        .boxed()
    }
}

struct Fixture {
    ca_key: PrivateKey,
    ca: SshCa,
    host_key: PrivateKey,
    user_key: PrivateKey,
    container: Arc<FakeContainer>,
}

fn fixture() -> Fixture {
    fixture_with(FakeContainer::default())
}

fn fixture_with(container: FakeContainer) -> Fixture {
    let ca_key = new_key("test-ca").unwrap();
    Fixture {
        ca: SshCa::from_key(ca_key.clone()),
        ca_key,
        host_key: new_key("host").unwrap(),
        user_key: new_key("alice").unwrap(),
        container: Arc::new(container),
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Fixture {
    fn access(&self) -> pb::SshAccess {
        let cert = self
            .ca
            .sign_host(
                self.host_key.public_key(),
                HOST,
                1,
                now(),
                Duration::from_secs(600),
            )
            .unwrap();
        pb::SshAccess {
            host_certificate: cert.to_openssh().unwrap(),
            ca_public_key: self.ca.public_key_line(),
            principal: USER.into(),
        }
    }

    fn setup(&self) -> Arc<ServerSetup> {
        Arc::new(ServerSetup::new(&self.host_key, &self.access()).unwrap())
    }

    /// The certificate `devctl ssh` gets: `principal`, every extension.
    fn user_cert(&self, principal: &str) -> Certificate {
        self.ca
            .sign_user(
                self.user_key.public_key(),
                principal,
                2,
                now(),
                Duration::from_secs(600),
            )
            .unwrap()
    }

    /// A user certificate with only `extensions`.
    fn user_cert_with(&self, extensions: &[&str]) -> Certificate {
        let t = unix(now());
        let mut b = Builder::new(
            [7u8; 32].to_vec(),
            self.user_key.public_key().key_data().clone(),
            t - 60,
            t + 600,
        )
        .unwrap();
        b.cert_type(CertType::User)
            .unwrap()
            .valid_principal(USER)
            .unwrap();
        for ext in extensions {
            b.extension(*ext, "").unwrap();
        }
        b.sign(&self.ca_key).unwrap()
    }

    /// A connected client (the host certificate checked), and the
    /// server's task.
    async fn connect(&self) -> (client::Handle<Client>, tokio::task::JoinHandle<()>) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let container: Arc<dyn Container> = self.container.clone();
        let server = tokio::spawn(serve(
            self.setup(),
            theirs,
            container,
            CancellationToken::new(),
            "test".into(),
        ));
        let handle = client::connect_stream(client_config(), ours, self.client(HOST))
            .await
            .unwrap();
        (handle, server)
    }

    fn client(&self, host: &str) -> Client {
        Client {
            ca: self.ca.fingerprint(),
            host: host.into(),
        }
    }

    /// Connects and logs in with `cert` as `user`.
    async fn login(
        &self,
        user: &str,
        cert: Certificate,
    ) -> (bool, client::Handle<Client>, tokio::task::JoinHandle<()>) {
        let (mut handle, server) = self.connect().await;
        let ok = handle
            .authenticate_openssh_cert(user, Arc::new(self.user_key.clone()), cert)
            .await
            .unwrap()
            .success();
        (ok, handle, server)
    }
}

fn client_config() -> Arc<client::Config> {
    let mut config = client::Config::default();
    config.preferred.host_key_certificates = Cow::Owned(vec![Algorithm::Ed25519]);
    Arc::new(config)
}

/// An SSH client that accepts only a host certificate of the CA for the
/// host it dialled (as OpenSSH with an `@cert-authority` line).
struct Client {
    ca: devctl_proto::ssh::ssh_key::Fingerprint,
    host: String,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::Certificate(cert) = key else {
            return Ok(false);
        };
        Ok(cert.validate([&self.ca]).is_ok()
            && cert.cert_type() == CertType::Host
            && cert.valid_principals().contains(&self.host))
    }
}

/// Everything the server sends on a channel until it closes.
#[derive(Debug, Default)]
struct Transcript {
    replies: Vec<bool>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit_status: Option<u32>,
    eof: bool,
}

async fn transcript(channel: &mut russh::Channel<client::Msg>) -> Transcript {
    let mut t = Transcript::default();
    let collect = async {
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Success => t.replies.push(true),
                ChannelMsg::Failure => t.replies.push(false),
                ChannelMsg::Data { data } => t.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => t.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => t.exit_status = Some(exit_status),
                ChannelMsg::Eof => t.eof = true,
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .expect("the channel closes");
    t
}

/// The next reply to a request.
async fn next_reply(channel: &mut russh::Channel<client::Msg>) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), channel.wait())
            .await
            .expect("a reply")
        {
            Some(ChannelMsg::Success) => return true,
            Some(ChannelMsg::Failure) => return false,
            Some(_) => {}
            None => panic!("the channel closed"),
        }
    }
}

async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn a_certificate_of_the_cluster_ca_for_the_admitted_identity_gets_in() {
    let f = fixture();
    let (ok, _h, _server) = f.login(USER, f.user_cert(USER)).await;
    assert!(ok);
}

#[tokio::test]
async fn the_client_sees_a_host_certificate_for_the_name_it_dialled() {
    let f = fixture();
    // `connect` checks it; a client expecting another name refuses it.
    let _ = f.connect().await;
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let container: Arc<dyn Container> = f.container.clone();
    let _server = tokio::spawn(serve(
        f.setup(),
        theirs,
        container,
        CancellationToken::new(),
        "test".into(),
    ));
    let refused = client::connect_stream(client_config(), ours, f.client("api.devctl")).await;
    assert!(
        refused.is_err(),
        "a certificate for web.devctl is not one for api.devctl"
    );
}

#[tokio::test]
async fn a_certificate_of_another_ca_is_refused() {
    let f = fixture();
    let other = SshCa::from_key(new_key("other-ca").unwrap());
    let cert = other
        .sign_user(
            f.user_key.public_key(),
            USER,
            1,
            now(),
            Duration::from_secs(600),
        )
        .unwrap();
    let (ok, _h, _server) = f.login(USER, cert).await;
    assert!(!ok);
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_refused() {
    let f = fixture();
    let (ok, _h, _server) = f.login("bob", f.user_cert("bob")).await;
    assert!(!ok, "bob's certificate, as bob: bob was not admitted");
    let (ok, _h, _server) = f.login(USER, f.user_cert("bob")).await;
    assert!(!ok, "bob's certificate, as alice");
}

#[tokio::test]
async fn the_user_name_must_be_the_admitted_identity() {
    let f = fixture();
    let (ok, _h, _server) = f.login("root", f.user_cert(USER)).await;
    assert!(!ok);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let f = fixture();
    let cert =
        f.ca.sign_user(
            f.user_key.public_key(),
            USER,
            3,
            now() - Duration::from_secs(10 * 3600),
            Duration::from_secs(3600),
        )
        .unwrap();
    let (ok, _h, _server) = f.login(USER, cert).await;
    assert!(!ok);
}

#[tokio::test]
async fn a_plain_public_key_is_refused() {
    let f = fixture();
    let (mut h, _server) = f.connect().await;
    let key = PrivateKeyWithHashAlg::new(Arc::new(f.user_key.clone()), None);
    let auth = h.authenticate_publickey(USER, key).await.unwrap();
    assert!(!auth.success());
}

#[tokio::test]
async fn an_exec_runs_its_command_as_an_argument_and_reports_the_exit_status() {
    let f = fixture();
    let (ok, h, _server) = f.login(USER, f.user_cert(USER)).await;
    assert!(ok);
    let mut ch = h.channel_open_session().await.unwrap();
    let command = "echo 'hi' ; exit 3";
    ch.exec(true, command).await.unwrap();
    ch.data(&b"hello"[..]).await.unwrap();
    ch.eof().await.unwrap();
    let t = transcript(&mut ch).await;
    assert_eq!(t.replies, [true]);
    assert_eq!(
        t.stdout, b"hello",
        "input reached the command, its output came back"
    );
    assert_eq!(t.stderr, b"err\n");
    assert_eq!(t.exit_status, Some(3));
    assert!(t.eof);
    let starts = f.container.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].command, ["/bin/sh", "-c", command]);
    assert!(starts[0].stdin);
    assert!(!starts[0].tty, "no terminal was asked for");
    assert!(starts[0].size.is_none());
    let control = f.container.control();
    eventually(|| control.ended.load(std::sync::atomic::Ordering::SeqCst)).await;
}

#[tokio::test]
async fn a_shell_gets_its_terminal_environment_resizes_and_signals() {
    let f = fixture();
    let (ok, h, _server) = f.login(USER, f.user_cert(USER)).await;
    assert!(ok);
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm-256color", 100, 30, 0, 0, &[])
        .await
        .unwrap();
    assert!(next_reply(&mut ch).await, "pty-req");
    ch.set_env(true, "LANG", "C.UTF-8").await.unwrap();
    assert!(next_reply(&mut ch).await, "env LANG");
    ch.set_env(true, "NOT=A_NAME", "x").await.unwrap();
    assert!(!next_reply(&mut ch).await, "env with a bad name");
    ch.request_shell(true).await.unwrap();
    assert!(next_reply(&mut ch).await, "shell");
    ch.window_change(120, 40, 0, 0).await.unwrap();
    ch.signal(Sig::INT).await.unwrap();
    let control = f.container.control();
    eventually(|| *control.resizes.lock().unwrap() == [(40, 120)]).await;
    eventually(|| *control.signals.lock().unwrap() == [nix::sys::signal::Signal::SIGINT]).await;
    ch.data(&b"ls\n"[..]).await.unwrap();
    // The client's EOF does not close a terminal's input (as with sshd):
    // the command goes on reading, and echoes what follows.
    ch.eof().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while echoed != b"ls\n" {
            match ch.wait().await {
                Some(ChannelMsg::Data { data }) => echoed.extend_from_slice(&data),
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    panic!("the command ended at the client's EOF")
                }
                Some(_) => {}
            }
        }
    })
    .await
    .expect("the echo");
    assert!(!control.ended.load(std::sync::atomic::Ordering::SeqCst));
    // Closing the channel ends the command.
    ch.close().await.unwrap();
    eventually(|| control.ended.load(std::sync::atomic::Ordering::SeqCst)).await;
    let start = &f.container.starts()[0];
    assert_eq!(start.command, ["/bin/sh", "-c", SHELL]);
    assert!(start.tty);
    assert_eq!(
        start.size,
        Some(pb::TerminalSize {
            rows: 30,
            cols: 100
        })
    );
    assert!(
        start.env.contains(&"LANG=C.UTF-8".to_string()),
        "{:?}",
        start.env
    );
    assert!(
        start.env.contains(&"TERM=xterm-256color".to_string()),
        "{:?}",
        start.env
    );
    assert_eq!(start.env.len(), 2);
}

#[tokio::test]
async fn sftp_runs_the_images_sftp_server_without_a_terminal() {
    let f = fixture();
    let (ok, h, _server) = f.login(USER, f.user_cert(USER)).await;
    assert!(ok);
    let mut other = h.channel_open_session().await.unwrap();
    other.request_subsystem(true, "netconf").await.unwrap();
    assert!(!next_reply(&mut other).await, "only sftp");
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    assert!(next_reply(&mut ch).await);
    ch.request_subsystem(true, "sftp").await.unwrap();
    assert!(next_reply(&mut ch).await);
    let start = &f.container.starts()[0];
    assert_eq!(start.command, ["/bin/sh", "-c", SFTP]);
    assert!(!start.tty);
}

#[tokio::test]
async fn a_command_the_engine_refuses_is_refused_with_the_reason() {
    let f = fixture_with(FakeContainer {
        refuse_exec: true,
        ..Default::default()
    });
    let (ok, h, _server) = f.login(USER, f.user_cert(USER)).await;
    assert!(ok);
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, "true").await.unwrap();
    let mut stderr = Vec::new();
    let refused = loop {
        match ch.wait().await {
            Some(ChannelMsg::ExtendedData { data, .. }) => stderr.extend_from_slice(&data),
            Some(ChannelMsg::Failure) => break true,
            Some(ChannelMsg::Success) | None => break false,
            Some(_) => {}
        }
    };
    assert!(refused);
    let said = String::from_utf8(stderr).unwrap();
    assert!(said.contains("container web is exited"), "{said}");
}

#[tokio::test]
async fn a_certificate_without_permit_pty_gets_no_terminal_and_no_forwarding_without_its_extension()
{
    let f = fixture();
    let (ok, h, _server) = f.login(USER, f.user_cert_with(&[])).await;
    assert!(ok);
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    assert!(!next_reply(&mut ch).await, "no permit-pty");
    let refused = h
        .channel_open_direct_tcpip("127.0.0.1", 80, "127.0.0.1", 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            russh::Error::ChannelOpenFailure(ChannelOpenFailure::AdministrativelyProhibited)
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn direct_tcpip_reaches_a_port_and_a_closed_one_fails_to_connect() {
    let f = fixture();
    let (ok, h, _server) = f.login(USER, f.user_cert(USER)).await;
    assert!(ok);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let ch = h
        .channel_open_direct_tcpip("127.0.0.1", u32::from(port), "127.0.0.1", 0)
        .await
        .unwrap();
    let mut stream = ch.into_stream();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    echo.await.unwrap();

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = h
        .channel_open_direct_tcpip("127.0.0.1", u32::from(closed), "127.0.0.1", 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            russh::Error::ChannelOpenFailure(ChannelOpenFailure::ConnectFailed)
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_end_of_the_connection_ends_its_commands() {
    let f = fixture();
    let (ok, h, server) = f.login(USER, f.user_cert(USER)).await;
    assert!(ok);
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_shell(true).await.unwrap();
    assert!(next_reply(&mut ch).await);
    drop(ch);
    drop(h);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server ends with its stream")
        .unwrap();
    assert!(
        f.container
            .control()
            .ended
            .load(std::sync::atomic::Ordering::SeqCst),
        "the command was ended"
    );
}

#[test]
fn the_host_certificate_must_certify_this_agents_key_and_come_from_the_ca() {
    let f = fixture();
    ServerSetup::new(&f.host_key, &f.access()).unwrap();

    let other_key = new_key("other-host").unwrap();
    let e = ServerSetup::new(&other_key, &f.access()).unwrap_err();
    assert!(e.contains("another key"), "{e}");

    let mut access = f.access();
    access.host_certificate =
        f.ca.sign_user(
            f.host_key.public_key(),
            HOST,
            1,
            now(),
            Duration::from_secs(60),
        )
        .unwrap()
        .to_openssh()
        .unwrap();
    let e = ServerSetup::new(&f.host_key, &access).unwrap_err();
    assert!(e.contains("user certificate"), "{e}");

    let mut access = f.access();
    access.ca_public_key = SshCa::from_key(new_key("other-ca").unwrap()).public_key_line();
    let e = ServerSetup::new(&f.host_key, &access).unwrap_err();
    assert!(e.contains("not signed"), "{e}");

    let mut access = f.access();
    access.principal.clear();
    assert!(ServerSetup::new(&f.host_key, &access).is_err());

    let mut access = f.access();
    access.host_certificate = "ssh-ed25519-cert-v01@openssh.com AAAA".into();
    assert!(ServerSetup::new(&f.host_key, &access).is_err());
}

#[test]
fn terminal_types_and_variable_names_are_checked() {
    assert!(valid_term("xterm-256color"));
    assert!(valid_term("screen.xterm+x"));
    assert!(!valid_term(""));
    assert!(!valid_term("xterm;rm"));
    assert!(valid_env_name("LC_ALL"));
    assert!(valid_env_name("_x1"));
    assert!(!valid_env_name("1X"));
    assert!(!valid_env_name("A=B"));
    assert!(!valid_env_name(""));
    assert_eq!(
        signal_of(&Sig::Custom("USR2".into())),
        Some(nix::sys::signal::Signal::SIGUSR2)
    );
    assert_eq!(signal_of(&Sig::Custom("NOPE".into())), None);
    assert_eq!(
        signal_of(&Sig::TERM),
        Some(nix::sys::signal::Signal::SIGTERM)
    );
}
