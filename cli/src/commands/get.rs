//! `devctl get NAME`

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `get`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name.
    pub name: String,
}

/// Calls GetContainer and prints the container.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let c = client
        .containers
        .get_container(pb::GetContainerRequest { name: args.name })
        .await?
        .into_inner();
    output::container(format, &c)
}
