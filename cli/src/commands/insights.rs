//! `devctl insights images|users|hosts [--since 7d]` (analytics from the
//! graph projection) and `devctl graph status|resync`.

use anyhow::Result;
use devctl_proto::{pb, units::format_bytes};

use super::events::parse_since;
use crate::{
    client::Client,
    output::{self, print_api, print_api_list, render, table, time},
};

/// Flags of `insights`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to report.
    #[command(subcommand)]
    pub report: Report,
}

/// The reports (an admin sees everyone's rows, anyone else their own).
#[derive(Debug, clap::Subcommand)]
pub enum Report {
    /// Per image: containers created from it, running now, users, last used.
    Images(Window),
    /// Per user: sessions, their total and average length, containers
    /// created, last active.
    Users(Window),
    /// Per host: containers placed there, and what runs there now.
    Hosts(Window),
}

/// The window of a report.
#[derive(Debug, clap::Args)]
pub struct Window {
    /// Only what happened since then: a duration (7d, 12h) or an RFC 3339
    /// time. Default: all recorded history.
    #[arg(long)]
    pub since: Option<String>,
}

impl Window {
    fn since(&self) -> Result<Option<prost_types::Timestamp>> {
        Ok(self
            .since
            .as_deref()
            .map(parse_since)
            .transpose()?
            .map(prost_types::Timestamp::from))
    }
}

fn seconds(s: f64) -> String {
    if s <= 0.0 {
        return "-".into();
    }
    humantime::format_duration(std::time::Duration::from_secs(s.round() as u64)).to_string()
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

/// Runs `insights`.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let g = &mut client.graph;
    match args.report {
        Report::Images(w) => {
            let list = g
                .list_image_insights(pb::ListImageInsightsRequest { since: w.since()? })
                .await?
                .into_inner()
                .images;
            if format != output::Format::Table {
                return print_api_list(format, &list);
            }
            let mut t = table(&["IMAGE", "CONTAINERS", "RUNNING", "USERS", "LAST USED"]);
            for i in &list {
                t.add_row(vec![
                    i.image.clone(),
                    i.containers.to_string(),
                    i.running.to_string(),
                    i.users.to_string(),
                    or_dash(time(i.last_used)),
                ]);
            }
            print!("{}", render(t));
        }
        Report::Users(w) => {
            let list = g
                .list_user_insights(pb::ListUserInsightsRequest { since: w.since()? })
                .await?
                .into_inner()
                .users;
            if format != output::Format::Table {
                return print_api_list(format, &list);
            }
            let mut t = table(&[
                "USER",
                "ROLE",
                "SESSIONS",
                "TOTAL",
                "AVERAGE",
                "CONTAINERS",
                "LAST ACTIVE",
            ]);
            for u in &list {
                t.add_row(vec![
                    u.username.clone(),
                    if u.role.is_empty() {
                        "-".into()
                    } else {
                        u.role.clone()
                    },
                    u.sessions.to_string(),
                    seconds(u.total_session_seconds),
                    seconds(u.average_session_seconds),
                    u.containers_created.to_string(),
                    or_dash(time(u.last_active)),
                ]);
            }
            print!("{}", render(t));
        }
        Report::Hosts(w) => {
            let list = g
                .list_host_insights(pb::ListHostInsightsRequest { since: w.since()? })
                .await?
                .into_inner()
                .hosts;
            if format != output::Format::Table {
                return print_api_list(format, &list);
            }
            let mut t = table(&["HOST", "PLACED", "RUNNING", "CPUS", "MEMORY"]);
            for h in &list {
                t.add_row(vec![
                    h.host.clone(),
                    h.containers_placed.to_string(),
                    h.running.to_string(),
                    format!("{:.2}/{}", h.running_cpus, h.total_cpus),
                    format!(
                        "{}/{}",
                        format_bytes(h.running_memory_bytes as i64),
                        format_bytes(h.total_memory_bytes as i64)
                    ),
                ]);
            }
            print!("{}", render(t));
        }
    }
    Ok(())
}

/// Flags of `graph`.
#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// What to do; default: status.
    #[command(subcommand)]
    pub action: Option<GraphAction>,
}

/// What to do with the graph projection.
#[derive(Debug, clap::Subcommand)]
pub enum GraphAction {
    /// Whether the graph is connected, and how far behind it is.
    Status,
    /// Re-project the whole cluster into the graph (admin only; idempotent).
    Resync,
}

/// Runs `graph`.
pub async fn run_graph(client: &mut Client, format: output::Format, args: GraphArgs) -> Result<()> {
    let g = &mut client.graph;
    let s = match args.action.unwrap_or(GraphAction::Status) {
        GraphAction::Status => g
            .get_graph_status(pb::GetGraphStatusRequest {})
            .await?
            .into_inner(),
        GraphAction::Resync => {
            let s = g
                .resync_graph(pb::ResyncGraphRequest {})
                .await?
                .into_inner();
            if format == output::Format::Table {
                println!("resync started; `devctl graph status` shows its progress");
            }
            s
        }
    };
    if format != output::Format::Table {
        return print_api(format, &s);
    }
    if !s.configured {
        println!(
            "graph: not configured (start the scheduler with --neo4j-uri bolt://HOST:7687; see docs/graph.md)"
        );
        return Ok(());
    }
    let mut t = table(&[
        "GRAPH",
        "CONNECTED",
        "LAG",
        "LAG (S)",
        "REVISION",
        "EVENTS",
        "LAST WRITE",
    ]);
    t.add_row(vec![
        s.uri.clone(),
        if s.resyncing {
            "resyncing".into()
        } else {
            s.connected.to_string()
        },
        s.lag_changes.to_string(),
        format!("{:.1}", s.lag_seconds),
        format!("{}/{}", s.projected_revision, s.latest_revision),
        s.projected_event_sequence.to_string(),
        or_dash(time(s.last_write_time)),
    ]);
    print!("{}", render(t));
    if !s.last_error.is_empty() {
        println!("last error: {}", output::escape_text(&s.last_error));
    }
    Ok(())
}
