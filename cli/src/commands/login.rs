//! `devctl login --server URL --token T [--name NAME] [--context CTX]`:
//! joins with a one-time join token. The key pair is made here; only a
//! certificate signing request leaves the machine. The certificate goes to
//! `~/.config/devctl/contexts/CTX/` and the context becomes current.
//!
//! `devctl login --renew [--context CTX]`: a new key and certificate for the
//! same identity, before the old one expires.

use anyhow::{Context as _, Result, bail};
use devctl_proto::{enroll, pb, pki};

use crate::{
    client::{self, Client, Credentials},
    config::{self, ConfigFile},
};

/// Flags of `login`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The one-time join token (`devctl-scheduler token create`).
    #[arg(
        long,
        env = "DEVCTL_JOIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "renew"
    )]
    pub token: Option<String>,
    /// Your name, when the token names none (a DNS label).
    #[arg(long)]
    pub name: Option<String>,
    /// Renew the certificate of the (current or --context) context instead.
    #[arg(long, conflicts_with_all = ["token", "name"])]
    pub renew: bool,
}

/// What `login` did, as printed.
fn said(issued: &pb::IssuedCertificate, server: &str, context: &str) -> String {
    format!(
        "logged in to {server} as {} ({}); certificate {} valid until {}; context {context:?} is current",
        issued.name,
        issued.role,
        issued.serial,
        crate::output::time(issued.not_after).unwrap_or_default()
    )
}

/// A context name from a server URL: its host.
fn default_context(server: &str) -> String {
    let host = server
        .trim_start_matches("https://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "default".into()
    } else {
        name
    }
}

/// Runs `login`.
pub async fn run(flags: client::Flags, args: Args) -> Result<()> {
    devctl_proto::pki::install_crypto_provider();
    let path = config::config_path()?;
    let mut file = ConfigFile::load(&path)?;
    if args.renew {
        let target = client::resolve(flags)?;
        let Credentials::Certificate(dir) = &target.credentials else {
            bail!("--renew renews a certificate; API tokens are renewed by creating a new one");
        };
        let current = pki::Bundle::load(dir)?;
        let name = current.identity().context("the current certificate")?.name;
        let (key_pem, csr_pem) = pki::key_and_csr(&name)?;
        let mut client = Client::connect(&target).await?;
        let issued = client
            .enroll
            .renew_certificate(pb::RenewCertificateRequest { csr_pem })
            .await?
            .into_inner();
        pki::Bundle {
            ca_pem: issued.ca_pem.clone(),
            cert_pem: issued.cert_pem.clone(),
            key_pem,
        }
        .replace(dir)?;
        println!(
            "renewed the certificate of {} ({}): {} valid until {}",
            issued.name,
            issued.role,
            issued.serial,
            crate::output::time(issued.not_after).unwrap_or_default()
        );
        return Ok(());
    }
    let server = flags
        .server
        .context("--server URL is required to log in (or set DEVCTL_SERVER)")?;
    let token = args.token.context("--token is required")?;
    let claims = enroll::JoinClaims::peek(&token)?;
    if claims.role == devctl_proto::identity::Role::Agent {
        bail!("--token: this is an agent token; agents join with `devctl-agent join`");
    }
    // Local arguments first: a join token works once, so nothing may fail
    // after it is redeemed that could have been seen before.
    let context = flags.context.unwrap_or_else(|| default_context(&server));
    config::check_context_name(&context)?;
    if let Some(name) = args.name.as_deref().filter(|n| !n.is_empty()) {
        devctl_proto::validate::dns_label("--name", name)?;
    }
    let joined = enroll::join(&server, &token, args.name.as_deref().unwrap_or(""))
        .await
        .with_context(|| format!("logging in to {server}"))?;
    let dir = config::context_tls_dir(&path, &context);
    joined.bundle.replace(&dir)?;
    // A context logged in again keeps its ssh suffix.
    let ssh_suffix = file
        .contexts
        .get(&context)
        .and_then(|c| c.ssh_suffix.clone());
    file.contexts.insert(
        context.clone(),
        config::Context {
            server: server.clone(),
            tls_dir: dir,
            identity: joined.issued.name.clone(),
            ssh_suffix,
        },
    );
    file.current_context = Some(context.clone());
    file.save(&path)?;
    println!("{}", said(&joined.issued, &server, &context));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_named_after_the_server_host() {
        assert_eq!(
            default_context("https://Sched.example.com:7443"),
            "sched.example.com"
        );
        assert_eq!(default_context("https://127.0.0.1:7443"), "127.0.0.1");
    }
}
