//! A person using devctl's SSH access: their own home directory (for
//! ~/.ssh/config and devctl's SSH files), their certificate bundle, the
//! real devctl CLI and the real OpenSSH client.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::{CliResult, TestCluster, bin};

/// One user of a [`TestCluster`]: `devctl` and `ssh` as them.
#[derive(Debug)]
pub struct SshUser {
    /// Their home directory (HOME).
    pub home: PathBuf,
    /// Their certificate bundle (DEVCTL_TLS_DIR).
    pub tls: PathBuf,
    server: String,
}

impl SshUser {
    /// `tls`'s holder, with a fresh home under the cluster's scratch
    /// directory.
    pub fn new(c: &TestCluster, who: &str, tls: &Path) -> Self {
        let home = c.scratch().join(format!("home-{who}"));
        std::fs::create_dir_all(&home).unwrap();
        Self {
            home,
            tls: tls.to_path_buf(),
            server: c.server.clone(),
        }
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DEVCTL_CONTEXT")
            .env_remove("DEVCTL_API_TOKEN")
            .env(
                "DEVCTL_CONFIG",
                self.home.join(".config/devctl/config.toml"),
            )
            .env("DEVCTL_SERVER", &self.server)
            .env("DEVCTL_TLS_DIR", &self.tls);
    }

    /// `devctl ARGS` as this user, stdin closed.
    pub fn devctl(&self, args: &[&str]) -> CliResult {
        CliResult::from(
            self.devctl_command(args)
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        )
    }

    /// `devctl ARGS` as this user, not yet run.
    pub fn devctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("devctl"));
        cmd.args(args);
        self.env(&mut cmd);
        cmd
    }

    /// Their ~/.ssh/config (OpenSSH reads the passwd entry's home, not
    /// HOME, so ssh is pointed at it with -F).
    pub fn ssh_config(&self) -> PathBuf {
        self.home.join(".ssh/config")
    }

    /// `ssh -F ~/.ssh/config -o BatchMode=yes ARGS` as this user, not yet
    /// run.
    pub fn ssh_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg(self.ssh_config())
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .args(args);
        self.env(&mut cmd);
        cmd
    }

    /// Runs `ssh` as [`SshUser::ssh_command`] with stdin closed.
    pub fn ssh(&self, args: &[&str]) -> Output {
        self.ssh_command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The directory of their devctl SSH files for this cluster (no
    /// context: the profile named after the server).
    pub fn ssh_files(&self) -> PathBuf {
        self.home
            .join(".config/devctl/ssh")
            .join(devctl_cli::ssh_setup::server_profile(&self.server))
    }
}

/// The local port `devctl port-forward` (its stdout going to `log`) said
/// it forwards from, once it said so.
pub fn forwarded_port(log: &Path) -> u16 {
    crate::wait_until(
        "port-forward listening",
        std::time::Duration::from_secs(30),
        || {
            let out = std::fs::read_to_string(log).ok()?;
            out.lines()
                .find_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:"))?
                .split(' ')
                .next()?
                .parse()
                .ok()
        },
    )
}
