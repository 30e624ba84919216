//! `devctl exec [-i] [-t] NAME -- COMMAND [ARG...]`

use std::io::{IsTerminal, Read, Write};

use anyhow::{Result, bail};
use devctl_proto::pb::{self, exec_input::Input, exec_output::Output};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;

/// Flags of `exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep stdin open and forward it (automatic when stdin is piped).
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Allocate a terminal (interactive programs, shells).
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Environment variable KEY=VALUE for the command (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Run as this user (name, uid or user:group; default: the
    /// container's).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Container name.
    pub name: String,
    /// Command and arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Raw terminal mode for the lifetime of the guard.
struct RawMode;

impl RawMode {
    fn enable() -> Result<Self> {
        crossterm::terminal::enable_raw_mode()?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn size() -> Option<pb::TerminalSize> {
    crossterm::terminal::size()
        .ok()
        .map(|(cols, rows)| pb::TerminalSize {
            rows: rows.into(),
            cols: cols.into(),
        })
}

/// Runs the command and returns its exit code.
pub async fn run(client: &mut Client, args: Args) -> Result<i32> {
    let stdin_is_tty = std::io::stdin().is_terminal();
    let forward_stdin = args.interactive || !stdin_is_tty;
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::ExecInput {
        input: Some(Input::Start(pb::ExecStart {
            name: args.name,
            command: args.command,
            tty: args.tty,
            stdin: forward_stdin,
            size: if args.tty { size() } else { None },
            env: args.env,
            workdir: args.workdir.unwrap_or_default(),
            user: args.user.unwrap_or_default(),
        })),
    })
    .await?;
    let mut output = client
        .exec
        .exec(ReceiverStream::new(rx))
        .await?
        .into_inner();

    let raw = if args.tty && stdin_is_tty {
        Some(RawMode::enable()?)
    } else {
        None
    };
    if args.tty && std::io::stdout().is_terminal() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(s) = size()
                    && tx
                        .send(pb::ExecInput {
                            input: Some(Input::Resize(s)),
                        })
                        .await
                        .is_err()
                {
                    break;
                }
            }
        });
    }
    if forward_stdin {
        // Blocking reads on a thread of their own; EOF closes the command's
        // stdin (the thread drops its sender).
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let msg = pb::ExecInput {
                            input: Some(Input::Stdin(buf[..n].to_vec())),
                        };
                        if tx.blocking_send(msg).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    } else {
        drop(tx);
    }

    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(msg) = output.message().await? {
        match msg.output {
            Some(Output::Chunk(c)) if c.stream() == pb::OutputStream::Stderr => {
                err.write_all(&c.data)?;
                err.flush()?;
            }
            Some(Output::Chunk(c)) => {
                out.write_all(&c.data)?;
                out.flush()?;
            }
            Some(Output::ExitCode(code)) => {
                drop(raw);
                return Ok(code);
            }
            None => {}
        }
    }
    drop(raw);
    bail!("the session ended without an exit code")
}
