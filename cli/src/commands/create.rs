//! `devctl create NAME --image IMG [--cpus 0.5] [--memory 512m] [--env K=V]…
//! [--label K=V]… [--node N] [-- COMMAND…]`

use std::collections::HashMap;

use anyhow::{Result, anyhow};
use devctl_proto::{pb, validate};

use crate::{client::Client, output};
use devctl_proto::units;

/// Flags of `create`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name (lowercase letters, digits and '-').
    pub name: String,
    /// Image; must be present on the node (nothing is pulled).
    #[arg(long)]
    pub image: String,
    /// CPU limit: 0.5, 2 or 500m.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory limit: 512m, 1g, 1.5g or bytes.
    #[arg(long, short = 'm')]
    pub memory: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Run on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Run only on a node with this label KEY=VALUE (repeatable).
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// Placement strategy (default: the cluster's).
    #[arg(long, value_parser = ["spread", "binpack"])]
    pub strategy: Option<String>,
    /// Only show where it would run; create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// An id of your choosing that makes retrying this create safe: a retry
    /// with the same id returns the container instead of failing.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Command and arguments (after `--`); default: the image's.
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn pairs(flag: &str, list: &[String]) -> Result<HashMap<String, String>> {
    list.iter()
        .map(|s| validate::key_value(flag, s).map_err(|e| anyhow!(e)))
        .collect()
}

impl Args {
    /// The request these flags describe; malformed flags are reported here,
    /// before anything is sent.
    pub fn to_request(&self) -> Result<pb::CreateContainerRequest> {
        let milli_cpus = match &self.cpus {
            Some(c) => units::parse_cpus(c).map_err(|e| anyhow!("--cpus: {e}"))?,
            None => 0,
        };
        let memory_bytes = match &self.memory {
            Some(m) => units::parse_memory(m).map_err(|e| anyhow!("--memory: {e}"))?,
            None => 0,
        };
        Ok(pb::CreateContainerRequest {
            container: Some(pb::Container {
                name: self.name.clone(),
                image: self.image.clone(),
                command: self.command.clone(),
                node: self.node.clone().unwrap_or_default(),
                resources: Some(pb::Resources {
                    milli_cpus,
                    memory_bytes,
                }),
                env: pairs("--env", &self.env)?,
                labels: pairs("--label", &self.labels)?,
                constraints: pairs("--constraint", &self.constraints)?,
                ..Default::default()
            }),
            dry_run: self.dry_run,
            request_id: self.request_id.clone().unwrap_or_default(),
            strategy: match self.strategy.as_deref() {
                Some("spread") => pb::PlacementStrategy::Spread,
                Some("binpack") => pb::PlacementStrategy::Binpack,
                _ => pb::PlacementStrategy::Unspecified,
            } as i32,
        })
    }
}

/// Creates the container and prints it once it runs.
pub async fn run(
    client: &mut Client,
    format: output::Format,
    request: pb::CreateContainerRequest,
) -> Result<()> {
    let dry_run = request.dry_run;
    let c = client
        .containers
        .create_container(request)
        .await?
        .into_inner();
    if dry_run && format == output::Format::Table {
        println!(
            "{} would run on node {} (dry run: nothing was created)",
            c.name, c.node
        );
        return Ok(());
    }
    output::container(format, &c)
}
