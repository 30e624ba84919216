//! `devctl images build CONTEXT [-f Dockerfile] -t TAG [--build-arg K=V]…
//! [--node N | --all]`: the context directory goes to the scheduler as a
//! tar archive (what .dockerignore lists left out), the nodes build it and
//! their output is printed as it comes.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use devctl_proto::{
    pb::{self, build_input::Input, build_output::Output},
    validate,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;

/// Flags of `images build`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The build context: a directory (its .dockerignore is honoured).
    #[arg(value_name = "CONTEXT")]
    pub dir: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Name and tag of the image, e.g. team/tool:1.
    #[arg(long, short = 't')]
    pub tag: String,
    /// Build argument KEY=VALUE (repeatable).
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Build on this node (default: one the scheduler chooses).
    #[arg(long, conflicts_with = "all")]
    pub node: Option<String>,
    /// Build on every ready node.
    #[arg(long)]
    pub all: bool,
}

/// Where an outside Dockerfile goes in the context.
const OUTSIDE_DOCKERFILE: &str = ".devctl.Dockerfile";

/// A build context packed for sending.
#[derive(Debug)]
pub struct PackedContext {
    /// The tar archive.
    pub tar: Vec<u8>,
    /// The Dockerfile's path in it.
    pub dockerfile: String,
}

/// Packs `dir` into a tar archive, leaving out what its .dockerignore
/// lists (gitignore patterns); `dockerfile` (default DIR/Dockerfile) is
/// always included, under its path in the context or, when it lies
/// outside, as `.devctl.Dockerfile`.
pub fn pack(dir: &Path, dockerfile: Option<&Path>) -> Result<PackedContext> {
    let meta =
        std::fs::metadata(dir).with_context(|| format!("the build context {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("the build context {} is not a directory", dir.display());
    }
    let root = dir
        .canonicalize()
        .with_context(|| format!("the build context {}", dir.display()))?;
    let file = match dockerfile {
        Some(f) => f
            .canonicalize()
            .with_context(|| format!("-f {}", f.display()))?,
        None => root.join("Dockerfile"),
    };
    if !file.is_file() {
        bail!("no Dockerfile at {} (give one with -f)", file.display());
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let walk = ignore::WalkBuilder::new(&root)
        .standard_filters(false)
        .add_custom_ignore_filename(".dockerignore")
        .sort_by_file_path(|a, b| a.cmp(b))
        .build();
    for entry in walk {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(&root) else {
            continue;
        };
        if rel.as_os_str().is_empty() || path == file {
            continue;
        }
        tar.append_path_with_name(path, rel)
            .with_context(|| format!("adding {} to the context", path.display()))?;
    }
    let name = match file.strip_prefix(&root) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => OUTSIDE_DOCKERFILE.to_string(),
    };
    tar.append_path_with_name(&file, &name)
        .with_context(|| format!("adding {}", file.display()))?;
    let tar = tar.into_inner().context("finishing the context archive")?;
    Ok(PackedContext {
        tar,
        dockerfile: name,
    })
}

/// Builds; fails unless every node built.
pub async fn run(client: &mut Client, args: Args) -> Result<()> {
    let build_args: HashMap<String, String> = args
        .build_args
        .iter()
        .map(|s| validate::key_value("--build-arg", s).map_err(|e| anyhow!(e)))
        .collect::<Result<_>>()?;
    let context = pack(&args.dir, args.file.as_deref())?;
    let start = pb::BuildStart {
        tag: args.tag.clone(),
        dockerfile: context.dockerfile.clone(),
        build_args,
        node: args.node.clone().unwrap_or_default(),
        all_nodes: args.all,
        context_size: context.tar.len() as u64,
    };
    eprintln!(
        "sending a build context of {} to the scheduler",
        human_bytes(context.tar.len() as u64)
    );
    let results = build(client, start, context.tar, args.all, &mut std::io::stdout()).await?;
    let mut failed = 0;
    for r in &results {
        if r.error.is_empty() {
            eprintln!("built {} on node {}", r.tag, r.node);
        } else {
            failed += 1;
            eprintln!(
                "build of {} failed on node {}: {}",
                r.tag,
                r.node,
                crate::output::escape_text(&r.error)
            );
        }
    }
    if failed > 0 {
        bail!("the build failed on {failed} of {} node(s)", results.len());
    }
    Ok(())
}

/// Sends `start` and `tar`, writes the nodes' output to `out` (each line
/// prefixed with its node when `prefix`), and returns each node's result.
pub async fn build(
    client: &mut Client,
    start: pb::BuildStart,
    tar: Vec<u8>,
    prefix: bool,
    out: &mut dyn Write,
) -> Result<Vec<pb::BuildResult>> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::BuildInput {
        input: Some(Input::Start(start)),
    })
    .await?;
    // The context in the background: the server may refuse before it has
    // all of it.
    let sender = tokio::spawn(async move {
        for piece in tar.chunks(1 << 20) {
            let msg = pb::BuildInput {
                input: Some(Input::Context(piece.to_vec())),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        let _ = tx
            .send(pb::BuildInput {
                input: Some(Input::ContextEnd(true)),
            })
            .await;
        // Holding `tx` until the call ends keeps the request stream open.
        tx.closed().await;
    });
    let mut stream = client
        .build
        .build(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut results = Vec::new();
    let mut partial: HashMap<String, Vec<u8>> = HashMap::new();
    while let Some(msg) = stream.message().await? {
        match msg.output {
            Some(Output::Log(log)) => {
                if prefix {
                    let buf = partial.entry(log.node.clone()).or_default();
                    buf.extend_from_slice(&log.data);
                    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        let text = String::from_utf8_lossy(&line);
                        write!(out, "[{}] {}", log.node, crate::output::escape_text(&text))?;
                    }
                } else {
                    let text = String::from_utf8_lossy(&log.data);
                    write!(out, "{}", crate::output::escape_text(&text))?;
                }
                out.flush()?;
            }
            Some(Output::Result(r)) => results.push(r),
            None => {}
        }
    }
    sender.abort();
    Ok(results)
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
