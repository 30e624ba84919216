//! Guarded child processes: killed (with their group) when dropped.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::wait_until;

/// Reads `from` on a thread of its own until it ends; each read arrives
/// on the channel (e.g. a pseudo-terminal's output).
pub fn read_in_background(
    mut from: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// A child process killed (SIGKILL) when dropped. Its output goes to a log
/// file, printed if the test is failing.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd`, logging to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        crate::start_watchdog();
        let out = fs::File::create(&log)?;
        // If the test process dies without dropping its guards, the kernel
        // still ends the child. (It fires when the spawning *thread* ends:
        // start processes from a test's own thread, not a pool thread.)
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            child: Some(child),
            name: name.to_string(),
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_until(&format!("{} to exit", self.name), timeout, || {
            child.try_wait().expect("try_wait")
        });
        self.child = None;
        status
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
