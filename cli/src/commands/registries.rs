//! `devctl registries add|ls|rm`: the registry credentials the agents pull
//! private images with (admin only). The password is read from stdin only,
//! never from the command line (where `ps` and shell history would see it),
//! and never printed.

use std::{
    io::{IsTerminal, Read, Write},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `registries`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: RegistriesCommand,
}

/// `registries` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RegistriesCommand {
    /// Store (or replace) the credentials of a registry host.
    Add {
        /// The registry host as image references name it, e.g.
        /// registry.example.com or 127.0.0.1:5000 (docker.io for Docker Hub).
        host: String,
        /// The user name.
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password (or access token) from stdin, e.g.
        /// `printf %s "$TOKEN" | devctl registries add HOST -u bot --password-stdin`.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List the hosts with stored credentials (never a password).
    Ls,
    /// Forget a host's credentials.
    Rm {
        /// The registry host.
        host: String,
    },
}

fn print(format: output::Format, list: &[pb::Registry]) -> Result<()> {
    if format != output::Format::Table {
        return output::print_api_list(format, list);
    }
    let mut t = output::table(&["HOST", "USERNAME", "CREATED", "UPDATED", "BY"]);
    for r in list {
        t.add_row(vec![
            r.host.clone(),
            r.username.clone(),
            output::time(r.create_time).unwrap_or_else(|| "-".into()),
            output::time(r.update_time).unwrap_or_else(|| "-".into()),
            r.created_by.clone(),
        ]);
    }
    println!("{}", output::render(t));
    Ok(())
}

/// The password from stdin, without the line end a shell's `echo` adds (as
/// `docker login --password-stdin`).
fn password_from_stdin() -> Result<String> {
    let mut s = String::new();
    if std::io::stdin().is_terminal() {
        eprint!("Password (end with Ctrl-D): ");
        let _ = std::io::stderr().flush();
    }
    std::io::stdin()
        .read_to_string(&mut s)
        .context("--password-stdin: reading stdin")?;
    let trimmed = s.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        bail!(
            "--password-stdin: stdin was empty; pipe the password in, e.g. `printf %s \"$PASSWORD\" | devctl registries add HOST --username USER --password-stdin`"
        );
    }
    Ok(trimmed.to_string())
}

/// Runs the subcommand.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    match args.command {
        RegistriesCommand::Add {
            host,
            username,
            password_stdin: _,
        } => {
            let password = password_from_stdin()?;
            let r = client
                .registries
                .add_registry(pb::AddRegistryRequest {
                    host,
                    username,
                    password,
                })
                .await?
                .into_inner();
            if format == output::Format::Table {
                eprintln!(
                    "credentials of registry {} stored (user {}); images from it are pulled with them",
                    r.host, r.username
                );
                Ok(())
            } else {
                output::print_api(format, &r)
            }
        }
        RegistriesCommand::Ls => {
            let list = client
                .registries
                .list_registries(pb::ListRegistriesRequest {})
                .await?
                .into_inner()
                .registries;
            print(format, &list)
        }
        RegistriesCommand::Rm { host } => {
            let r = client
                .registries
                .remove_registry(pb::RemoveRegistryRequest { host })
                .await?
                .into_inner();
            if format == output::Format::Table {
                eprintln!("credentials of registry {} removed", r.host);
                Ok(())
            } else {
                output::print_api(format, &r)
            }
        }
    }
}

/// A progress line is on the terminal, not ended yet.
static OPEN_LINE: AtomicBool = AtomicBool::new(false);

/// Prints the pull progress of container `name` (its IMAGE_PULLING and
/// IMAGE_PULLED events) on stderr until aborted: one line redrawn on a
/// terminal, a line per update otherwise. Failures to watch are not the
/// create's: it simply shows nothing.
pub async fn show_pull_progress(
    mut events: pb::event_service_client::EventServiceClient<crate::client::Svc>,
    name: String,
) {
    let since = SystemTime::now() - Duration::from_secs(1);
    let request = pb::WatchEventsRequest {
        container: name,
        follow: true,
        since_time: Some(since.into()),
        ..Default::default()
    };
    let Ok(stream) = events.watch_events(request).await else {
        return;
    };
    let mut stream = stream.into_inner();
    let tty = std::io::stderr().is_terminal();
    while let Ok(Some(e)) = stream.message().await {
        let pulled = match e.r#type() {
            pb::EventType::ImagePulling => false,
            pb::EventType::ImagePulled => true,
            _ => continue,
        };
        let line = crate::output::escape_line(&e.message);
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            OPEN_LINE.store(true, Ordering::Relaxed);
            if pulled {
                let _ = writeln!(err);
                OPEN_LINE.store(false, Ordering::Relaxed);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}

/// Ends a progress line left open on the terminal.
pub fn end_progress_line() {
    if OPEN_LINE.swap(false, Ordering::Relaxed) {
        eprintln!();
    }
}
