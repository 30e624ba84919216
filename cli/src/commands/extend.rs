//! `devctl extend NAME DURATION`

use std::time::Duration;

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `extend`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name.
    pub name: String,
    /// New lease from now: 2h, 90m (at most the cluster's maximum).
    #[arg(value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// Calls ExtendLease and prints the container.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let c = client
        .containers
        .extend_lease(pb::ExtendLeaseRequest {
            name: args.name,
            ttl_seconds: args.duration.as_secs() as i64,
        })
        .await?
        .into_inner();
    output::container(format, &c)
}
