//! `devctl-agent join`: enrols this node. The key pair is made here and
//! never leaves the machine; the scheduler gets a certificate signing
//! request and the one-time token, after the scheduler's CA was checked
//! against the fingerprint the token pins.
//!
//! Writes `DATA_DIR/tls/{ca,cert,key}.pem` (key 0600, dirs 0700), which
//! `devctl-agent --data-dir DATA_DIR` then uses on the bus.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use devctl_proto::{enroll, identity::Role, pki, validate};

/// Flags of `join`.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    /// The scheduler's URL (https://HOST:PORT).
    #[arg(long, env = "DEVCTL_SERVER")]
    pub server: String,
    /// The join token (`devctl-scheduler token create --role agent`).
    #[arg(long, env = "DEVCTL_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// This node's name (a DNS label, unique in the cluster).
    #[arg(long, env = "DEVCTL_NODE")]
    pub node: String,
    /// The agent's data directory; the certificate goes to DIR/tls.
    #[arg(long, env = "DEVCTL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Replace a certificate this directory already holds.
    #[arg(long)]
    pub force: bool,
}

/// Where an agent keeps its bus certificate inside its data directory.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Joins and writes the bundle; returns what the scheduler issued.
pub async fn join(args: &JoinArgs) -> Result<devctl_proto::pb::IssuedCertificate> {
    validate::dns_label("--node", &args.node)?;
    let dir = tls_dir(&args.data_dir);
    if dir.join(pki::CERT_FILE).exists() && !args.force {
        bail!(
            "{} already holds a certificate; pass --force to replace it",
            dir.display()
        );
    }
    let claims = enroll::JoinClaims::peek(&args.token)?;
    if claims.role != Role::Agent {
        bail!(
            "--token: this is a {} token; an agent joins with one made by `devctl-scheduler token create --role agent`",
            claims.role
        );
    }
    devctl_proto::pki::install_crypto_provider();
    let joined = enroll::join(&args.server, &args.token, &args.node)
        .await
        .with_context(|| format!("joining {}", args.server))?;
    if joined.issued.name != args.node {
        bail!(
            "the token is for node {:?}, not {:?}; pass --node {}",
            joined.issued.name,
            args.node,
            joined.issued.name
        );
    }
    pki::create_private_dir(&args.data_dir)?;
    joined.bundle.replace(&dir)?;
    Ok(joined.issued)
}
