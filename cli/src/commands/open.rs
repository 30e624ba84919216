//! `devctl open NAME [--ide code|cursor] [--path DIR] [--print]`: opens VS
//! Code or Cursor on a dev container over Remote-SSH (through the block
//! `devctl config-ssh` writes, which this writes first when it is missing).

use anyhow::{Result, bail};
use clap::ValueEnum;

use crate::{
    client::{Client, Target},
    ssh_setup::{self, SshFiles},
};

/// The IDEs `open` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ide {
    /// Visual Studio Code (`code`).
    Code,
    /// Cursor (`cursor`).
    Cursor,
}

impl Ide {
    fn command(self) -> &'static str {
        match self {
            Ide::Code => "code",
            Ide::Cursor => "cursor",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Ide::Code => "vscode",
            Ide::Cursor => "cursor",
        }
    }
}

/// Flags of `open`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which IDE.
    #[arg(long, value_enum, default_value_t = Ide::Code)]
    pub ide: Ide,
    /// Folder to open in the container.
    #[arg(long, default_value = "/workspace")]
    pub path: String,
    /// Only print the command and the link, run nothing.
    #[arg(long)]
    pub print: bool,
    /// Host name suffix (default: the context's `ssh-suffix`, else devctl).
    #[arg(long)]
    pub suffix: Option<String>,
    /// Container name.
    pub name: String,
}

/// The command line and the link that open `host`'s `path` in `ide`.
pub fn launch(ide: Ide, host: &str, path: &str) -> (Vec<String>, String) {
    let remote = format!("ssh-remote+{host}");
    let command = vec![
        ide.command().to_string(),
        "--remote".into(),
        remote.clone(),
        path.to_string(),
    ];
    let link = format!("{}://vscode-remote/{remote}{path}", ide.scheme());
    (command, link)
}

/// Checks the flags; `--print` needs no connection.
pub fn validate(args: &Args) -> Result<()> {
    devctl_proto::validate::dns_label("NAME", &args.name)?;
    if !args.path.starts_with('/') || args.path.chars().any(char::is_control) {
        bail!(
            "--path {:?}: give an absolute path in the container",
            args.path
        );
    }
    Ok(())
}

/// Prints the command and link (`--print`).
pub fn print(target: &Target, args: &Args) -> Result<()> {
    let suffix = ssh_setup::suffix(target, args.suffix.as_deref())?;
    let host = format!("{}.{suffix}", args.name);
    let (command, link) = launch(args.ide, &host, &args.path);
    let words: Vec<String> = command.iter().map(|w| quote_if_needed(w)).collect();
    println!("{}", words.join(" "));
    println!("{link}");
    Ok(())
}

fn quote_if_needed(w: &str) -> String {
    if w.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./+:=@".contains(c))
    {
        w.to_string()
    } else {
        ssh_setup::shell_quote(w)
    }
}

/// Opens the IDE.
pub async fn run(client: &mut Client, target: &Target, args: Args) -> Result<()> {
    let files = SshFiles::of(target)?;
    let config = std::fs::read_to_string(ssh_setup::user_ssh_config()?).unwrap_or_default();
    if !config.contains(&format!("# >>> devctl ssh: {} ", files.profile)) {
        let suffix = super::config_ssh::install(client, target, args.suffix.as_deref()).await?;
        eprintln!("wrote the devctl block to ~/.ssh/config (hosts *.{suffix})");
    }
    let suffix = ssh_setup::suffix(target, args.suffix.as_deref())?;
    let host = format!("{}.{suffix}", args.name);
    let (command, link) = launch(args.ide, &host, &args.path);
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("{} exited with {s}; open {link} instead", command[0]),
        Err(e) => bail!(
            "running {}: {e}; install its command-line launcher, or open {link}",
            command[0]
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_and_link_name_the_remote_host_and_folder() {
        let (cmd, link) = launch(Ide::Cursor, "web.devctl", "/workspace");
        assert_eq!(
            cmd,
            ["cursor", "--remote", "ssh-remote+web.devctl", "/workspace"]
        );
        assert_eq!(
            link,
            "cursor://vscode-remote/ssh-remote+web.devctl/workspace"
        );
        let (cmd, link) = launch(Ide::Code, "api.dev.example.com", "/src");
        assert_eq!(cmd[0], "code");
        assert_eq!(
            link,
            "vscode://vscode-remote/ssh-remote+api.dev.example.com/src"
        );
    }
}
