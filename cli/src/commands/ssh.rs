//! `devctl ssh NAME [-- COMMAND…]`: OpenSSH into a dev container without
//! touching ~/.ssh/config; `--stdio HOST` is the ProxyCommand side (the
//! SSH connection's bytes over a tunnel); `--renew-cert` renews the user
//! certificate when it is close to expiry (run by `devctl config-ssh`'s
//! block before ssh reads it).

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result, bail};
use devctl_proto::pb;

use crate::{
    client::{Client, Target},
    ssh_setup::{self, SshFiles},
    tunnel,
};

/// Flags of `ssh`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Carry one SSH connection on stdin/stdout (for ssh's ProxyCommand):
    /// NAME is then the host name ssh dialled (`web.devctl`).
    #[arg(long, conflicts_with = "renew_cert")]
    pub stdio: bool,
    /// Only renew the SSH certificate if it is close to expiry (never
    /// fails: a problem is a warning on stderr).
    #[arg(long)]
    pub renew_cert: bool,
    /// Host name suffix of dev containers (default: the context's
    /// `ssh-suffix`, else devctl).
    #[arg(long)]
    pub suffix: Option<String>,
    /// Container name (or, with --stdio, the host name dialled).
    #[arg(required_unless_present = "renew_cert")]
    pub name: Option<String>,
    /// Command to run instead of a shell (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Runs the subcommand.
pub async fn run(client: &mut Client, target: &Target, args: Args) -> Result<()> {
    let suffix = ssh_setup::suffix(target, args.suffix.as_deref())?;
    let files = SshFiles::of(target)?;
    let identity = ssh_setup::identity_of(target);
    if args.renew_cert {
        if let Err(e) = files.ensure(client, identity.as_deref(), &suffix).await {
            eprintln!("devctl: could not renew the SSH certificate: {e:#}");
        }
        return Ok(());
    }
    let name = args.name.expect("clap requires NAME");
    if args.stdio {
        // Best effort: ssh may have read the certificate already.
        if let Err(e) = files.ensure(client, identity.as_deref(), &suffix).await {
            eprintln!("devctl: could not renew the SSH certificate: {e:#}");
        }
        let container = ssh_setup::container_of(&name, &suffix).to_string();
        let t = tunnel::open(
            client,
            pb::TunnelOpen {
                name: container,
                kind: pb::TunnelKind::Ssh as i32,
                port: 0,
                host_name: name,
            },
        )
        .await?;
        return t.join(tokio::io::stdin(), tokio::io::stdout()).await;
    }
    files.ensure(client, identity.as_deref(), &suffix).await?;
    let user = files
        .principal()
        .context("the SSH certificate names no principal")?;
    let host = if ssh_setup::container_of(&name, &suffix) == name {
        format!("{name}.{suffix}")
    } else {
        name.clone()
    };
    // ssh expands %-tokens in ProxyCommand: a literal % is %%.
    let proxy = format!(
        "{} ssh --stdio --suffix {suffix} %n",
        ssh_setup::self_command(target)?.replace('%', "%%")
    );
    let ssh = std::env::var_os("DEVCTL_SSH").unwrap_or_else(|| "ssh".into());
    let mut cmd = std::process::Command::new(&ssh);
    cmd.arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg("-o")
        .arg(format!("User={user}"))
        .arg("-o")
        .arg(format!("IdentityFile={}", files.key().display()))
        .arg("-o")
        .arg(format!("CertificateFile={}", files.cert().display()))
        .arg("-o")
        .arg("IdentitiesOnly=yes")
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            files.known_hosts().display()
        ))
        .arg("-o")
        .arg("StrictHostKeyChecking=yes")
        .arg(&host);
    if !args.command.is_empty() {
        cmd.arg("--").args(&args.command);
    }
    // ssh takes over the terminal and its exit code is ours.
    let err = cmd.exec();
    bail!(
        "running {}: {err} (install OpenSSH's client, e.g. `apt install openssh-client`, or set DEVCTL_SSH)",
        ssh.to_string_lossy()
    )
}
