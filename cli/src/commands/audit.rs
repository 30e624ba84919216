//! `devctl audit [--since 10m|RFC3339] [--identity NAME] [--last N]` (admin only)

use std::time::SystemTime;

use anyhow::Result;
use devctl_proto::pb;

use super::events::parse_since;
use crate::{client::Client, output::Format};

/// Flags of `audit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Start at this time: a duration ago (10m, 2h) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only the calls of this identity ("unauthenticated": calls without a
    /// usable certificate).
    #[arg(long)]
    pub identity: Option<String>,
    /// At most the newest N entries of the log (before --identity filters
    /// them); 0: all. Default: 1000, or all since --since.
    #[arg(long)]
    pub last: Option<u32>,
}

/// The newest entries `devctl audit` shows without --since or --last.
pub const DEFAULT_LAST: u32 = 1000;

impl Args {
    /// The request these flags describe.
    pub fn to_request(&self) -> Result<pb::ListAuditEntriesRequest> {
        Ok(pb::ListAuditEntriesRequest {
            since: self
                .since
                .as_deref()
                .map(parse_since)
                .transpose()?
                .map(Into::into),
            identity: self.identity.clone().unwrap_or_default(),
            last: self.last.unwrap_or(if self.since.is_some() {
                0
            } else {
                DEFAULT_LAST
            }),
        })
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Prints the entries as they arrive: one line each (a header first), one
/// JSON object per line with -o json, YAML documents with -o yaml.
pub async fn run(
    client: &mut Client,
    format: Format,
    request: pb::ListAuditEntriesRequest,
) -> Result<()> {
    let mut stream = client.audit.list_audit_entries(request).await?.into_inner();
    let mut header = false;
    while let Some(entry) = stream.message().await? {
        crate::output::print_item(format, &mut header, &entry, || {
            let head = format!(
                "{:<24}  {:<14}  {:<9}  {:<18}  {:<16}  {:<18}  SOURCE",
                "TIME", "IDENTITY", "ROLE", "METHOD", "TARGET", "RESULT"
            );
            // The method without its package and service: CreateContainer.
            let method = entry.method.rsplit('/').next().unwrap_or(&entry.method);
            let time = entry
                .time
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(|t| humantime::format_rfc3339_millis(t).to_string());
            let line = format!(
                "{:<24}  {:<14}  {:<9}  {:<18}  {:<16}  {:<18}  {}",
                time.as_deref().unwrap_or("-"),
                entry.identity,
                dash(&entry.role),
                method,
                dash(&entry.target),
                entry.code,
                dash(&entry.source)
            );
            // Written by callers without credentials too (Join): never raw
            // to a terminal.
            (head, crate::output::escape_line(&line).into_owned())
        })?;
    }
    Ok(())
}
