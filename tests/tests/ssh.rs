//! SSH into dev containers with the real OpenSSH client, through
//! `devctl config-ssh`'s block (ProxyCommand `devctl ssh --stdio`), the
//! scheduler's tunnel and the agent's SSH server, on the busybox image (no
//! sshd in it); port forwarding with `ssh -L` and `devctl port-forward` to a
//! server bound to the container's 127.0.0.1; who is refused; certificate
//! renewal; `devctl open --print`; sessions in the events and the audit.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Stdio},
    time::{Duration, SystemTime},
};

use devctl_proto::ssh::{self, SshCa};
use devctl_tests::{IMAGE, SshUser, TestCluster, wait_until};

/// A container whose busybox httpd serves one page on its 127.0.0.1 only.
const WEB: &[&str] = &[
    "--",
    "sh",
    "-c",
    "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www",
];

fn create_web(user: &SshUser, name: &str) {
    let mut args = vec!["create", name, "--image", IMAGE];
    args.extend_from_slice(WEB);
    user.devctl(&args).ok();
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// GET / through `port` on this machine.
fn fetch(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut got = String::new();
    s.read_to_string(&mut got)?;
    Ok(got)
}

/// A port nobody on this machine listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a background process when dropped.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ssh_runs_commands_and_shells_in_any_image_through_config_ssh() {
    let c = TestCluster::start(&["a"]);
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    create_web(&alice, "web");
    let said = alice.devctl(&["config-ssh"]).ok().stdout;
    assert!(said.contains("ssh NAME.devctl"), "{said}");
    // Twice: one block, replaced in place.
    alice.devctl(&["config-ssh"]).ok();
    let config = std::fs::read_to_string(alice.ssh_config()).unwrap();
    assert_eq!(config.matches("# >>> devctl ssh:").count(), 1, "{config}");

    let hi = alice.ssh(&["web.devctl", "--", "echo", "hi"]);
    assert!(hi.status.success(), "{}", text(&hi.stderr));
    assert_eq!(text(&hi.stdout), "hi\n");
    // The remote command's exit code is ssh's.
    let seven = alice.ssh(&["web.devctl", "--", "exit 7"]);
    assert_eq!(seven.status.code(), Some(7), "{}", text(&seven.stderr));
    // stdin reaches the command, and its end is the command's EOF.
    let mut cat = alice
        .ssh_command(&["web.devctl", "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin
        .take()
        .unwrap()
        .write_all(&[b'x'; 100_000])
        .unwrap();
    let counted = cat.wait_with_output().unwrap();
    assert_eq!(
        text(&counted.stdout).trim(),
        "100000",
        "{}",
        text(&counted.stderr)
    );
    // -tt: a terminal.
    let tty = alice.ssh(&["-tt", "web.devctl", "--", "tty"]);
    assert!(
        text(&tty.stdout).starts_with("/dev/pts/"),
        "{:?} {}",
        text(&tty.stdout),
        text(&tty.stderr)
    );

    // sftp runs the image's sftp-server; busybox has none, and says so.
    let sftp = std::process::Command::new("sftp")
        .arg("-F")
        .arg(alice.ssh_config())
        .args(["-o", "BatchMode=yes", "-b", "/dev/null", "web.devctl"])
        .env("HOME", &alice.home)
        .env(
            "DEVCTL_CONFIG",
            alice.home.join(".config/devctl/config.toml"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!sftp.status.success());
    assert!(
        text(&sftp.stderr).contains("sftp-server"),
        "{}",
        text(&sftp.stderr)
    );

    // `devctl ssh` needs no ssh configuration at all.
    std::fs::remove_file(alice.ssh_config()).unwrap();
    let direct = alice.devctl(&["ssh", "web", "--", "echo", "direct"]).ok();
    assert_eq!(direct.stdout, "direct\n");

    // --remove deletes the block and only it.
    std::fs::write(alice.ssh_config(), "Host other\n    User x\n").unwrap();
    alice.devctl(&["config-ssh"]).ok();
    alice.devctl(&["config-ssh", "--remove"]).ok();
    assert_eq!(
        std::fs::read_to_string(alice.ssh_config()).unwrap(),
        "Host other\n    User x\n"
    );
}

#[test]
fn ssh_l_and_port_forward_reach_a_server_on_the_containers_localhost() {
    let c = TestCluster::start(&["a"]);
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    create_web(&alice, "web");
    alice.devctl(&["config-ssh"]).ok();
    // The server listens on the container's 127.0.0.1 only: wait until it
    // answers there.
    wait_until("httpd up", Duration::from_secs(30), || {
        let r = alice.devctl(&[
            "exec",
            "web",
            "--",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/",
        ]);
        r.stdout.contains("hello-from-web").then_some(())
    });

    let local = free_port();
    let _tunnel = Bg(alice
        .ssh_command(&[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            &format!("{local}:localhost:8080"),
            "web.devctl",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap());
    let page = wait_until("ssh -L forwards", Duration::from_secs(30), || {
        let got = fetch(local).ok()?;
        got.contains("hello-from-web").then_some(got)
    });
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");

    let log = c.scratch().join("port-forward.log");
    let mut pf = alice.devctl_command(&["port-forward", "web", ":8080"]);
    pf.stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit());
    let _pf = Bg(pf.spawn().unwrap());
    let port = devctl_tests::forwarded_port(&log);
    // Several connections at once.
    let pages: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| fetch(port).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for page in pages {
        assert!(page.contains("hello-from-web"), "{page}");
    }
}

#[test]
fn another_developer_a_viewer_and_a_revoked_identity_are_refused() {
    let c = TestCluster::start(&["a"]);
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    let bob = SshUser::new(&c, "bob", &c.issue_cert("bob", "developer"));
    let vera = SshUser::new(&c, "vera", &c.issue_cert("vera", "viewer"));
    create_web(&alice, "web");
    alice.devctl(&["config-ssh"]).ok();
    bob.devctl(&["config-ssh"]).ok();

    let refused = bob.ssh(&["web.devctl", "--", "echo", "hi"]);
    assert!(!refused.status.success());
    let why = text(&refused.stderr);
    assert!(why.contains("PermissionDenied"), "{why}");
    assert!(text(&refused.stdout).is_empty());
    let refused = bob.devctl(&["port-forward", "web", ":8080"]).err();
    assert!(refused.contains("PermissionDenied"), "{refused}");

    // A viewer gets no SSH certificate at all.
    let why = vera.devctl(&["config-ssh"]).err();
    assert!(why.contains("PermissionDenied"), "{why}");

    // Revoked: the next connection is refused, certificate or not.
    assert!(alice.ssh(&["web.devctl", "--", "true"]).status.success());
    c.revoke("alice");
    let after = wait_until("revocation applies", Duration::from_secs(30), || {
        let out = alice.ssh(&["web.devctl", "--", "echo", "hi"]);
        (!out.status.success()).then_some(out)
    });
    assert!(text(&after.stdout).is_empty(), "{}", text(&after.stdout));
}

#[test]
fn an_expired_certificate_is_renewed_without_a_prompt() {
    let c = TestCluster::start(&["a"]);
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    create_web(&alice, "web");
    alice.devctl(&["config-ssh"]).ok();
    // Replace the certificate by one of the same CA that ran out an hour
    // ago (signed here with the cluster's CA key, as the scheduler would).
    let files = alice.ssh_files();
    let expire = |files: &std::path::Path| {
        let ca = SshCa::load_or_create(&c.data_dir().join("ssh/ca_ed25519")).unwrap();
        let key = ssh::ssh_key::PrivateKey::from_openssh(
            std::fs::read_to_string(files.join("id_ed25519")).unwrap(),
        )
        .unwrap();
        let old = ca
            .sign_user(
                key.public_key(),
                "alice",
                1,
                SystemTime::now() - Duration::from_secs(9 * 3600),
                Duration::from_secs(8 * 3600),
            )
            .unwrap();
        std::fs::write(files.join("id_ed25519-cert.pub"), old.to_openssh().unwrap()).unwrap();
        assert!(
            ssh::certificate_valid_before(&old.to_openssh().unwrap()).unwrap() < SystemTime::now()
        );
    };
    let valid_before = |files: &std::path::Path| {
        ssh::certificate_valid_before(
            &std::fs::read_to_string(files.join("id_ed25519-cert.pub")).unwrap(),
        )
        .unwrap()
    };
    expire(&files);
    let out = alice.devctl(&["ssh", "web", "--", "echo", "renewed"]).ok();
    assert_eq!(out.stdout, "renewed\n");
    assert!(valid_before(&files) > SystemTime::now() + Duration::from_secs(3600));
    // Plain ssh through the block renews it too (before ssh reads it).
    expire(&files);
    let out = alice.ssh(&["web.devctl", "--", "echo", "again"]);
    assert_eq!(text(&out.stdout), "again\n", "{}", text(&out.stderr));
    assert!(valid_before(&files) > SystemTime::now() + Duration::from_secs(3600));
}

#[test]
fn open_prints_the_ide_command_and_link() {
    let c = TestCluster::start(&["a"]);
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    let out = alice
        .devctl(&["open", "web", "--ide", "cursor", "--print"])
        .ok()
        .stdout;
    assert_eq!(
        out,
        "cursor --remote ssh-remote+web.devctl /workspace\ncursor://vscode-remote/ssh-remote+web.devctl/workspace\n"
    );
    let out = alice
        .devctl(&["open", "web", "--path", "/src", "--print"])
        .ok()
        .stdout;
    assert_eq!(
        out,
        "code --remote ssh-remote+web.devctl /src\nvscode://vscode-remote/ssh-remote+web.devctl/src\n"
    );
}

#[test]
fn an_open_ssh_session_keeps_a_container_in_use_and_is_recorded() {
    let c = TestCluster::start_opts(&["a"], &[], &["--idle-timeout", "3s"]).unwrap();
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    alice
        .devctl(&["create", "busy", "--image", IMAGE, "--", "sleep", "1d"])
        .ok();
    alice.devctl(&["config-ssh"]).ok();
    // A session three times as long as the idle window.
    let out = alice.ssh(&["busy.devctl", "--", "sleep", "9"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = alice.devctl(&["get", "busy", "-o", "json"]).json();
    assert_eq!(v["status"]["state"], "CONTAINER_STATE_RUNNING", "{v}");

    let events = c.events(&["--container", "busy"]);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let started = kinds.iter().position(|k| *k == "EVENT_TYPE_SSH_STARTED");
    let ended = kinds.iter().position(|k| *k == "EVENT_TYPE_SSH_ENDED");
    assert!(started.is_some() && ended > started, "{kinds:?}");
    let session = events
        .iter()
        .find(|e| e["type"] == "EVENT_TYPE_SSH_STARTED")
        .unwrap();
    assert_eq!(session["actor"], "alice", "{session}");
    assert!(session["session"].as_str().is_some_and(|s| !s.is_empty()));
    let audit = c.devctl(&["audit", "-o", "json"]).ok().stdout;
    assert!(
        audit.lines().any(|l| l.contains("TunnelService/OpenTunnel")
            && l.contains("\"target\":\"busy\"")
            && l.contains("\"identity\":\"alice\"")),
        "{audit}"
    );
}

/// Whether `ps` in the container (engine id `id`) shows `needle`.
fn runs_in(id: &str, needle: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args(["exec", id, "ps", "-o", "args"])
        .output()
        .unwrap();
    text(&out.stdout).lines().any(|l| l.trim() == needle)
}

#[test]
fn a_session_ends_with_its_client_or_the_scheduler_and_leaves_nothing_running() {
    let mut c = TestCluster::start(&["a"]);
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    alice
        .devctl(&["create", "web", "--image", IMAGE, "--", "sleep", "1d"])
        .ok();
    alice.devctl(&["config-ssh"]).ok();
    let id = c.engine_container("web").unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();

    // The client goes away (killed): its command goes with it.
    let client = Bg(alice
        .ssh_command(&["web.devctl", "--", "sleep", "301"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap());
    wait_until("the command runs", Duration::from_secs(30), || {
        runs_in(&id, "sleep 301").then_some(())
    });
    drop(client);
    wait_until(
        "the command ends with its client",
        Duration::from_secs(30),
        || (!runs_in(&id, "sleep 301")).then_some(()),
    );

    // The scheduler dies: the agent hears nothing from it and ends the
    // session (within the pipes' idle limit).
    let _client = Bg(alice
        .ssh_command(&["web.devctl", "--", "sleep", "302"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap());
    wait_until("the command runs", Duration::from_secs(30), || {
        runs_in(&id, "sleep 302").then_some(())
    });
    c.scheduler
        .take()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    wait_until(
        "the command ends without its scheduler",
        Duration::from_secs(60),
        || (!runs_in(&id, "sleep 302")).then_some(()),
    );
}

#[test]
fn tunnels_to_a_stopped_container_or_a_closed_port_say_why() {
    let c = TestCluster::start(&["a"]);
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    alice
        .devctl(&["create", "web", "--image", IMAGE, "--", "sleep", "1d"])
        .ok();
    alice.devctl(&["config-ssh"]).ok();
    // Nothing listens on 9: the forwarded connection is refused, with why.
    let log = c.scratch().join("pf-closed.log");
    let err_log = c.scratch().join("pf-closed.err");
    let mut pf = alice.devctl_command(&["port-forward", "web", ":9"]);
    pf.stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&err_log).unwrap());
    let _pf = Bg(pf.spawn().unwrap());
    let port = devctl_tests::forwarded_port(&log);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    // The connection is closed without a byte.
    assert_eq!(s.read_to_end(&mut got).unwrap(), 0);
    let why = wait_until("the refusal is reported", Duration::from_secs(20), || {
        let e = std::fs::read_to_string(&err_log).ok()?;
        e.contains("nothing listens on port 9").then_some(e)
    });
    assert!(why.contains("FailedPrecondition"), "{why}");

    alice.devctl(&["stop", "web", "-t", "0"]).ok();
    let out = alice.ssh(&["web.devctl", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
    let why = alice.devctl(&["port-forward", "web", ":80"]).err();
    assert!(why.contains("not running"), "{why}");
}

/// An image with OpenSSH's sftp-server (the host's Debian binary and the
/// two libraries it needs) over the test image, built once.
fn sftp_image(c: &TestCluster) -> String {
    const TAG: &str = "devctl-test/sftp:latest";
    let ctx = c.scratch().join("sftp-image");
    std::fs::create_dir_all(&ctx).unwrap();
    for f in [
        "/usr/lib/openssh/sftp-server",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ] {
        let name = std::path::Path::new(f).file_name().unwrap();
        std::fs::copy(f, ctx.join(name)).unwrap_or_else(|e| {
            panic!("{f}: {e} (deploy/prereqs.sh need_openssh installs openssh-sftp-server)")
        });
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {IMAGE}\nCOPY sftp-server /usr/lib/openssh/sftp-server\nCOPY libc.so.6 /lib/x86_64-linux-gnu/libc.so.6\nCOPY ld-linux-x86-64.so.2 /lib64/ld-linux-x86-64.so.2\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", TAG])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    TAG.to_string()
}

#[test]
fn sftp_and_scp_move_files_when_the_image_has_an_sftp_server() {
    let c = TestCluster::start(&["a"]);
    let image = sftp_image(&c);
    let alice = SshUser::new(&c, "alice", &c.issue_cert("alice", "developer"));
    alice
        .devctl(&["create", "files", "--image", &image, "--", "sleep", "1d"])
        .ok();
    alice.devctl(&["config-ssh"]).ok();
    let local = c.scratch().join("notes.txt");
    let body = "line one\nline two\n".repeat(1000);
    std::fs::write(&local, &body).unwrap();
    // scp speaks SFTP since OpenSSH 9.0.
    let scp = std::process::Command::new("scp")
        .arg("-F")
        .arg(alice.ssh_config())
        .args(["-o", "BatchMode=yes"])
        .arg(&local)
        .arg("files.devctl:/tmp/notes.txt")
        .env("HOME", &alice.home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(scp.status.success(), "{}", text(&scp.stderr));
    let back = alice.ssh(&["files.devctl", "--", "cat", "/tmp/notes.txt"]);
    assert!(text(&back.stdout) == body, "{}", text(&back.stderr));
    // And back out with sftp's batch mode.
    let batch = c.scratch().join("batch");
    let fetched = c.scratch().join("fetched.txt");
    std::fs::write(
        &batch,
        format!("get /tmp/notes.txt {}\n", fetched.display()),
    )
    .unwrap();
    let sftp = std::process::Command::new("sftp")
        .arg("-F")
        .arg(alice.ssh_config())
        .args(["-o", "BatchMode=yes", "-b"])
        .arg(&batch)
        .arg("files.devctl")
        .env("HOME", &alice.home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(sftp.status.success(), "{}", text(&sftp.stderr));
    assert!(std::fs::read_to_string(&fetched).unwrap() == body);
}
