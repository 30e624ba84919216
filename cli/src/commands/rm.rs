//! `devctl rm NAME [--force]`

use anyhow::Result;
use devctl_proto::container::ContainerExt;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `rm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name.
    pub name: String,
    /// Remove it even if it runs (it is killed). When its node is down, the
    /// removal is recorded and carried out as soon as the node returns.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Also delete its workspace and the data in it (by default the
    /// workspace is kept for a later container).
    #[arg(long)]
    pub purge: bool,
}

/// Removes the container; prints its name (or the last record with -o).
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let removed = client
        .containers
        .delete_container(pb::DeleteContainerRequest {
            name: args.name.clone(),
            force: args.force,
            purge: args.purge,
        })
        .await?
        .into_inner();
    match (format, removed.container) {
        (output::Format::Table, Some(c)) if removed.pending => {
            println!(
                "{}: {}",
                args.name,
                crate::output::escape_line(&c.status().last_error)
            )
        }
        (output::Format::Table, _) | (_, None) => {
            println!("{}", args.name);
            if !removed.workspace_kept.is_empty() {
                println!(
                    "kept workspace {0} (a container created as {1} or with --workspace {0} gets it back; `devctl workspaces rm {0}` deletes it)",
                    removed.workspace_kept, args.name
                );
            }
            if !removed.workspace_deleted.is_empty() {
                println!("deleted workspace {}", removed.workspace_deleted);
            }
        }
        (format, Some(c)) => output::container(format, &c)?,
    }
    Ok(())
}
