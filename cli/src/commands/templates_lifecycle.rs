//! Lifecycle commands in a new container (a template's post_create,
//! devcontainer.json's postCreateCommand and friends): each run with
//! `sh -c` through ExecService, its output shown as it comes, and a
//! failure stops the ones after it.

use std::io::Write;

use anyhow::{Result, bail};
use devctl_proto::pb::{self, exec_input::Input, exec_output::Output};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{client::Client, output};

/// How a command is run.
#[derive(Debug, Clone, Default)]
pub struct RunAs {
    /// The user (empty: the image's).
    pub user: String,
    /// The working directory (empty: the image's).
    pub workdir: String,
    /// Extra environment, KEY=VALUE.
    pub env: Vec<String>,
}

/// Runs `command` (argv) in container `name`, feeding it `stdin` (then
/// closing it) and showing its output; its exit code.
pub async fn exec(
    client: &mut Client,
    name: &str,
    command: Vec<String>,
    how: &RunAs,
    stdin: Option<Vec<u8>>,
) -> Result<i32> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::ExecInput {
        input: Some(Input::Start(pb::ExecStart {
            name: name.to_string(),
            command,
            tty: false,
            stdin: stdin.is_some(),
            size: None,
            env: how.env.clone(),
            workdir: how.workdir.clone(),
            user: how.user.clone(),
        })),
    })
    .await?;
    let feeder = tokio::spawn(async move {
        if let Some(data) = stdin {
            for piece in data.chunks(64 * 1024) {
                let msg = pb::ExecInput {
                    input: Some(Input::Stdin(piece.to_vec())),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(pb::ExecInput {
                    input: Some(Input::CloseStdin(true)),
                })
                .await;
        }
        // Holding `tx` keeps the request open until the call ends.
        tx.closed().await;
    });
    let mut stream = client
        .exec
        .exec(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut code = None;
    while let Some(msg) = stream.message().await? {
        match msg.output {
            Some(Output::Chunk(c)) => {
                let text = String::from_utf8_lossy(&c.data);
                let text = output::escape_text(&text);
                if c.stream() == pb::OutputStream::Stderr {
                    err.write_all(text.as_bytes())?;
                    err.flush()?;
                } else {
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
            }
            Some(Output::ExitCode(c)) => code = Some(c),
            None => {}
        }
    }
    feeder.abort();
    match code {
        Some(c) => Ok(c),
        None => bail!("the command in {name} ended without an exit code"),
    }
}

/// Runs `commands` (shell lines) in order in container `name` as `what`
/// says (e.g. "post_create"); the first failing one ends the run with an
/// error naming it.
pub async fn run_commands(
    client: &mut Client,
    name: &str,
    what: &str,
    commands: &[String],
    how: &RunAs,
) -> Result<()> {
    for (i, cmd) in commands.iter().enumerate() {
        eprintln!(
            "{what} [{}/{}]: {}",
            i + 1,
            commands.len(),
            output::escape_line(cmd)
        );
        let argv = vec!["sh".to_string(), "-c".to_string(), cmd.clone()];
        let code = exec(client, name, argv, how, None).await?;
        if code != 0 {
            bail!(
                "{what} command {:?} exited with {code} in {name}; fix it and run it with `devctl exec {name} -- sh -c '…'`",
                output::escape_line(cmd)
            );
        }
    }
    Ok(())
}
