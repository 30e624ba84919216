//! `devctl config-ssh [--suffix S] [--remove]`: makes `ssh NAME.devctl`
//! (and every tool that reads ~/.ssh/config: VS Code, Cursor, JetBrains
//! Gateway) reach dev containers: a key pair made here, a certificate from
//! the cluster's SSH CA, a known_hosts file trusting the CA, and a managed
//! block at the top of ~/.ssh/config.

use anyhow::{Context, Result};

use crate::{
    client::{Client, Target},
    config::{ConfigFile, config_path},
    ssh_setup::{self, SshFiles},
};

/// Flags of `config-ssh`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Host name suffix: `ssh NAME.SUFFIX` (default: the context's
    /// `ssh-suffix`, else devctl). Saved in the context.
    #[arg(long)]
    pub suffix: Option<String>,
    /// Delete the managed block (the key pair is kept).
    #[arg(long)]
    pub remove: bool,
}

/// Deletes the profile's block; needs no connection.
pub fn remove(target: &Target) -> Result<()> {
    let files = SshFiles::of(target)?;
    let path = ssh_setup::user_ssh_config()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let rest = ssh_setup::remove_block(&text, &files.profile);
    if rest == text {
        println!(
            "no devctl block for {} in {}",
            files.profile,
            path.display()
        );
        return Ok(());
    }
    write_config(&path, &rest)?;
    println!(
        "removed the devctl block for {} from {}",
        files.profile,
        path.display()
    );
    Ok(())
}

/// Writes the block (and the key, certificate and known_hosts behind it).
/// Returns the host suffix.
pub async fn install(client: &mut Client, target: &Target, suffix: Option<&str>) -> Result<String> {
    let suffix_value = ssh_setup::suffix(target, suffix)?;
    let files = SshFiles::of(target)?;
    let identity = ssh_setup::identity_of(target);
    files
        .ensure(client, identity.as_deref(), &suffix_value)
        .await?;
    let user = files
        .principal()
        .context("the SSH certificate names no principal")?;
    let block = ssh_setup::config_block(
        &files,
        &ssh_setup::self_command(target)?,
        &suffix_value,
        &user,
    );
    let path = ssh_setup::user_ssh_config()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    write_config(&path, &ssh_setup::put_block(&text, &files.profile, &block))?;
    if let (Some(s), Some(ctx)) = (suffix, &target.context) {
        let config = config_path()?;
        let mut file = ConfigFile::load(&config)?;
        if let Some(c) = file.contexts.get_mut(ctx) {
            c.ssh_suffix = Some(s.trim_start_matches('.').to_string());
            file.save(&config)?;
        }
    }
    Ok(suffix_value)
}

/// Writes ~/.ssh/config, keeping its mode (0600 for a new file, in a 0700
/// ~/.ssh).
fn write_config(path: &std::path::Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o777,
        Err(_) => 0o600,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        devctl_proto::pki::create_private_dir(dir)?;
    }
    devctl_proto::pki::write_file(path, text.as_bytes(), mode)?;
    Ok(())
}

/// Runs the subcommand.
pub async fn run(client: &mut Client, target: &Target, args: Args) -> Result<()> {
    let suffix = install(client, target, args.suffix.as_deref()).await?;
    let files = SshFiles::of(target)?;
    let until = std::fs::read_to_string(files.cert())
        .ok()
        .and_then(|c| devctl_proto::ssh::certificate_valid_before(&c).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    println!(
        "wrote the devctl block for {} to {}: `ssh NAME.{suffix}` reaches container NAME (certificate valid until {until}, renewed on use)",
        files.profile,
        ssh_setup::user_ssh_config()?.display()
    );
    Ok(())
}
