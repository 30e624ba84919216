//! `devctl watch [--kind container|node]… [--after-revision N]`: the
//! cluster's change feed (WatchService.WatchChanges) — every container and
//! node as they are now, then each change as it is committed, until
//! interrupted (like `kubectl get -w`).

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Follow only this kind of record (repeatable; default: both).
    #[arg(long = "kind", value_enum)]
    pub kinds: Vec<Kind>,
    /// Resume after this revision (from an earlier watch's output) instead
    /// of starting with a snapshot.
    #[arg(long)]
    pub after_revision: Option<u64>,
}

/// A kind of record.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// Containers.
    Container,
    /// Nodes.
    Node,
}

impl Args {
    /// The request these flags describe.
    pub fn to_request(&self) -> pb::WatchChangesRequest {
        pb::WatchChangesRequest {
            after_revision: self.after_revision.unwrap_or(0),
            kinds: self
                .kinds
                .iter()
                .map(|k| match k {
                    Kind::Container => pb::ResourceKind::Container as i32,
                    Kind::Node => pb::ResourceKind::Node as i32,
                })
                .collect(),
        }
    }
}

/// Prints changes as they arrive.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let mut stream = client
        .watch
        .watch_changes(args.to_request())
        .await?
        .into_inner();
    let mut printer = output::EventPrinter::new(format);
    while let Some(change) = stream.message().await? {
        printer.print_change(&change)?;
    }
    Ok(())
}
