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
}

/// Removes the container; prints its name (or the last record with -o).
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let removed = client
        .containers
        .delete_container(pb::DeleteContainerRequest {
            name: args.name.clone(),
            force: args.force,
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
        (output::Format::Table, _) | (_, None) => println!("{}", args.name),
        (format, Some(c)) => output::container(format, &c)?,
    }
    Ok(())
}
