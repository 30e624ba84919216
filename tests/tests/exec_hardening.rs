//! Exec sessions leave nothing behind and follow their terminal: a
//! cancelled exec's process is ended in the container, and a resized
//! terminal is the size the command sees.

use std::{
    fs::File,
    io::Write,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use devctl_tests::{IMAGE, TestCluster, read_in_background, wait_until};
use nix::pty::{Winsize, openpty};

/// The processes of engine container `runtime_id`, as `docker top` lists them.
fn top(runtime_id: &str) -> String {
    let out = Command::new("docker")
        .args(["top", runtime_id, "-o", "pid,args"])
        .output()
        .expect("docker top");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_cancelled_exec_leaves_no_process_in_the_container() {
    let c = TestCluster::start(&["a"]);
    let created = c
        .devctl(&["create", "box", "--image", IMAGE, "-o", "json"])
        .json();
    let runtime_id = created["status"]["runtimeId"].as_str().unwrap().to_string();

    for tty in [false, true] {
        let mut args = vec!["exec"];
        if tty {
            args.push("-t");
        }
        args.extend(["box", "--", "sleep", "1000"]);
        let mut cli = c
            .devctl_command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            "sleep 1000 in the container",
            Duration::from_secs(15),
            || top(&runtime_id).contains("sleep 1000").then_some(()),
        );
        // The client goes away without a word (its connection drops).
        cli.kill().unwrap();
        cli.wait().unwrap();
        wait_until(
            &format!("the cancelled exec's process (tty: {tty}) to end"),
            Duration::from_secs(20),
            || (!top(&runtime_id).contains("sleep 1000")).then_some(()),
        );
    }
    // The container itself still runs.
    assert_eq!(
        c.devctl(&["get", "box", "-o", "json"]).json()["status"]["state"],
        "CONTAINER_STATE_RUNNING"
    );
}

#[test]
fn a_fast_pipe_reaches_the_command_whole() {
    let c = TestCluster::start(&["a"]);
    c.devctl(&["create", "box", "--image", IMAGE]).ok();
    // 16 MiB, as fast as the pipe takes it.
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 253) as u8).collect();
    let mut cli = c
        .devctl_command()
        .args(["exec", "box", "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = cli.stdin.take().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&data));
    let out = cli.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (16u32 << 20).to_string()
    );
}

#[test]
fn input_waits_for_a_command_that_does_not_read_it() {
    const TOTAL: usize = 64 << 20;
    const BOUND: usize = 16 << 20;
    let c = TestCluster::start(&["a"]);
    let created = c
        .devctl(&["create", "box", "--image", IMAGE, "-o", "json"])
        .json();
    let runtime_id = created["status"]["runtimeId"].as_str().unwrap().to_string();
    // Reads its stdin only once /tmp/go exists.
    let script = "while [ ! -e /tmp/go ]; do sleep 0.1; done; wc -c";
    let mut cli = c
        .devctl_command()
        .args(["exec", "box", "--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = cli.stdin.take().unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = std::sync::Arc::clone(&written);
    let writer = std::thread::spawn(move || {
        let piece = vec![7u8; 64 << 10];
        for _ in 0..TOTAL / piece.len() {
            w.write_all(&piece)?;
            progress.fetch_add(piece.len(), std::sync::atomic::Ordering::SeqCst);
        }
        Ok::<_, std::io::Error>(())
    });
    // While the command reads nothing, the writer is held back: input is
    // not piled up in the scheduler or agent on its behalf.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let n = written.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            n < BOUND,
            "{n} bytes were taken from the writer while the command read nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let go = Command::new("docker")
        .args(["exec", &runtime_id, "touch", "/tmp/go"])
        .status()
        .unwrap();
    assert!(go.success());
    let out = cli.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        TOTAL.to_string()
    );
}

/// The path of the pseudo-terminal device open as `fd`.
fn tty_path(fd: &impl AsRawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn a_resized_terminal_is_the_size_the_command_sees() {
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
    let slave_path = tty_path(&slave);
    let mut cli = c.devctl_command();
    // The terminal is the CLI's controlling one, as in a real session: a
    // resize then signals it (SIGWINCH).
    // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs in
    // the child between fork and exec.
    unsafe {
        cli.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cli
        .args(["exec", "-it", "shell", "--", "sh"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    let master = File::from(pty.master);
    let mut writer = master.try_clone().unwrap();
    let rx = read_in_background(master.try_clone().unwrap());
    let mut screen = String::new();
    // Asks for the size until the shell answers `want` (the resize travels
    // CLI -> scheduler -> agent -> engine while the shell runs).
    let mut size_becomes = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            writer.write_all(b"echo size-$(stty size)-end\n").unwrap();
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_millis(500) {
                if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
                    screen.push_str(&String::from_utf8_lossy(&chunk));
                }
                if screen.contains(&format!("size-{want}-end")) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the shell never saw {want:?}: {screen:?}"
            );
        }
    };

    size_becomes("40 100");
    // Resizing the terminal (as a window manager does) signals the CLI.
    let resized = Command::new("stty")
        .args(["-F", &slave_path, "rows", "55", "cols", "132"])
        .status()
        .unwrap();
    assert!(resized.success());
    size_becomes("55 132");

    writer.write_all(b"exit 0\n").unwrap();
    let status = wait_until("the session to end", Duration::from_secs(15), || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
}
