//! Commands in containers: output and exit code, piped stdin, an
//! interactive shell through a real pseudo-terminal, and sessions recorded.

use std::{
    fs::File,
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use devctl_tests::{IMAGE, TestCluster, bin, read_in_background, wait_until};
use nix::{
    pty::{Winsize, openpty},
    sys::termios::{LocalFlags, tcgetattr},
};
use serde_json::Value;

fn exec(c: &TestCluster, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new(bin("devctl"))
        .arg("exec")
        .args(args)
        .env("DEVCTL_SERVER", &c.server)
        .env("DEVCTL_TLS_DIR", c.admin_tls())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

#[test]
fn exec_returns_output_and_exit_code_and_forwards_piped_stdin() {
    let c = TestCluster::start(&["a", "b"]);
    c.devctl(&["create", "box", "--image", IMAGE, "--node", &c.node("b")])
        .ok();

    let out = exec(
        &c,
        &["box", "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
        None,
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // Piped stdin, 1 MiB of it, comes back intact.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let out = exec(&c, &["box", "--", "cat"], Some(&data));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == data,
        "stdin came back altered ({} bytes)",
        out.stdout.len()
    );

    // Errors: no such command (as docker: 126/127), no such container, a
    // stopped container.
    let out = exec(&c, &["box", "--", "nosuchcmd"], None);
    assert!(
        matches!(out.status.code(), Some(126 | 127)),
        "{:?}",
        out.status
    );
    let out = exec(&c, &["nope", "--", "true"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    c.devctl(&["stop", "box", "-t", "0"]).ok();
    let out = exec(&c, &["box", "--", "true"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));

    // Sessions are recorded: who, which container, start, end, exit code.
    let evs: Vec<Value> = c
        .devctl(&["events", "--container", "box", "-o", "json"])
        .ok()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let ended: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "EVENT_TYPE_EXEC_ENDED")
        .collect();
    assert!(
        ended
            .iter()
            .any(|e| e["exitCode"] == 3 && e["actor"] == "admin"),
        "{ended:?}"
    );
    for e in &ended {
        let session = e["session"].as_str().unwrap();
        assert!(
            evs.iter()
                .any(|s| s["type"] == "EVENT_TYPE_EXEC_STARTED" && s["session"] == session)
        );
    }
}

#[test]
fn an_interactive_shell_through_a_pseudo_terminal() {
    let c = TestCluster::start(&["a"]);
    c.devctl(&["create", "shell", "--image", IMAGE]).ok();
    let size = Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).unwrap();
    let slave = File::from(pty.slave);
    let mut child = Command::new(bin("devctl"))
        .args(["exec", "-it", "shell", "--", "sh"])
        .env("DEVCTL_SERVER", &c.server)
        .env("DEVCTL_TLS_DIR", c.admin_tls())
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let master = File::from(pty.master);
    let mut writer = master.try_clone().unwrap();
    let rx = read_in_background(master.try_clone().unwrap());
    let mut screen = String::new();
    let mut expect = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !screen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {needle:?} in {screen:?}"));
            screen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };

    // The terminal is raw while the session runs.
    wait_until("raw mode", Duration::from_secs(10), || {
        let t = tcgetattr(&master).unwrap();
        (!t.local_flags.contains(LocalFlags::ICANON)).then_some(())
    });
    writer.write_all(b"echo answer-$((40+2))\n").unwrap();
    expect("answer-42");
    writer.write_all(b"exit 7\n").unwrap();
    let status = wait_until("the session to end", Duration::from_secs(15), || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(7));
    // And the terminal is restored.
    let t = tcgetattr(&master).unwrap();
    assert!(
        t.local_flags.contains(LocalFlags::ICANON),
        "terminal left in raw mode"
    );
}
