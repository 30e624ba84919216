//! `devctl audit [--since 10m|RFC3339] [--identity NAME] [--last N]` (admin only)

use std::time::SystemTime;

use anyhow::Result;
use devctl_proto::pb;
use serde::Serialize;

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

/// An audit entry as printed with -o json/yaml.
#[derive(Debug, Serialize)]
pub struct EntryView {
    time: Option<String>,
    identity: String,
    role: String,
    method: String,
    target: String,
    code: String,
    message: String,
    source: String,
}

impl From<&pb::AuditEntry> for EntryView {
    fn from(e: &pb::AuditEntry) -> Self {
        Self {
            time: e
                .time
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            identity: e.identity.clone(),
            role: e.role.clone(),
            method: e.method.clone(),
            target: e.target.clone(),
            code: e.code.clone(),
            message: e.message.clone(),
            source: e.source.clone(),
        }
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
    use std::io::Write;
    let mut stream = client.audit.list_audit_entries(request).await?.into_inner();
    let mut header = false;
    while let Some(entry) = stream.message().await? {
        let view = EntryView::from(&entry);
        let mut out = std::io::stdout().lock();
        match format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(&view)?)?,
            Format::Yaml => write!(out, "---\n{}", serde_yaml_ng::to_string(&view)?)?,
            Format::Table => {
                if !header {
                    writeln!(
                        out,
                        "{:<24}  {:<14}  {:<9}  {:<18}  {:<16}  {:<18}  SOURCE",
                        "TIME", "IDENTITY", "ROLE", "METHOD", "TARGET", "RESULT"
                    )?;
                    header = true;
                }
                // The method without its package and service: CreateContainer.
                let method = view.method.rsplit('/').next().unwrap_or(&view.method);
                let line = format!(
                    "{:<24}  {:<14}  {:<9}  {:<18}  {:<16}  {:<18}  {}",
                    view.time.as_deref().unwrap_or("-"),
                    view.identity,
                    dash(&view.role),
                    method,
                    dash(&view.target),
                    view.code,
                    dash(&view.source)
                );
                // Written by callers without credentials too (Join): never
                // raw to a terminal.
                writeln!(out, "{}", crate::output::escape_line(&line))?;
            }
        }
        out.flush()?;
    }
    Ok(())
}
