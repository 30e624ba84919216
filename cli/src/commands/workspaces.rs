//! `devctl workspaces [ls|get NAME|rm NAME|move NAME --to NODE]`, and the
//! `--mount` flag of `create`.

use anyhow::{Result, anyhow};
use devctl_proto::{pb, units::format_bytes};

use crate::{
    client::Client,
    output::{self, print_api, print_api_list, render, table, time},
};

/// Flags of `workspaces`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do; default: list.
    #[command(subcommand)]
    pub action: Option<Action>,
}

/// What to do with workspaces.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List workspaces: node, size, the container using it, last use.
    Ls {
        /// Only workspaces on this node.
        #[arg(long)]
        node: Option<String>,
        /// Only this owner's (admins and viewers; a developer sees their
        /// own).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Show one workspace.
    Get {
        /// Workspace name.
        name: String,
    },
    /// Delete a workspace and its data (refused while a container uses it).
    Rm {
        /// Workspace name.
        name: String,
    },
    /// Copy a workspace's data to another node and delete it from its old
    /// one; its (stopped) container starts there next.
    Move {
        /// Workspace name.
        name: String,
        /// The node to move it to.
        #[arg(long)]
        to: String,
    },
}

/// `SOURCE:TARGET[:ro]` of `create --mount`.
pub fn parse_mount(s: &str) -> Result<pb::Mount, String> {
    let mut parts: Vec<&str> = s.split(':').collect();
    let read_only = match parts.last() {
        Some(&"ro") if parts.len() == 3 => {
            parts.pop();
            true
        }
        Some(&"rw") if parts.len() == 3 => {
            parts.pop();
            false
        }
        _ => false,
    };
    let [source, target] = parts[..] else {
        return Err(format!(
            "{s:?}: use SOURCE:TARGET[:ro], e.g. cache:/cache or /srv/shared:/shared:ro"
        ));
    };
    if source.is_empty() || !target.starts_with('/') {
        return Err(format!(
            "{s:?}: SOURCE is a volume name or an absolute host path, TARGET an absolute path in the container"
        ));
    }
    let source = if source.starts_with('/') {
        pb::mount::Source::HostPath(source.to_string())
    } else {
        pb::mount::Source::Volume(source.to_string())
    };
    Ok(pb::Mount {
        source: Some(source),
        target: target.to_string(),
        read_only,
    })
}

/// Runs the subcommand.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    let ws = &mut client.workspaces;
    match args.action.unwrap_or(Action::Ls {
        node: None,
        owner: None,
    }) {
        Action::Ls { node, owner } => {
            let list = ws
                .list_workspaces(pb::ListWorkspacesRequest {
                    node: node.unwrap_or_default(),
                    owner: owner.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .workspaces;
            if format != output::Format::Table {
                return print_api_list(format, &list);
            }
            let mut t = table(&[
                "NAME",
                "NODE",
                "STATE",
                "SIZE",
                "CONTAINER",
                "OWNER",
                "LAST USED",
            ]);
            for w in &list {
                t.add_row(row(w));
            }
            print!("{}", render(t));
            Ok(())
        }
        Action::Get { name } => {
            let w = ws
                .get_workspace(pb::GetWorkspaceRequest { name })
                .await?
                .into_inner();
            show(format, &w)
        }
        Action::Rm { name } => {
            let w = ws
                .delete_workspace(pb::DeleteWorkspaceRequest { name })
                .await?
                .into_inner();
            if format != output::Format::Table {
                return print_api(format, &w);
            }
            println!("deleted workspace {} from node {}", w.name, w.node);
            Ok(())
        }
        Action::Move { name, to } => {
            let mut stream = ws
                .move_workspace(pb::MoveWorkspaceRequest {
                    name: name.clone(),
                    to_node: to.clone(),
                })
                .await?
                .into_inner();
            let mut last = None;
            while let Some(p) = stream.message().await? {
                if format == output::Format::Table && !p.done {
                    let expected = if p.bytes_expected > 0 {
                        format!(" of about {}", format_bytes(p.bytes_expected))
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "moving {name} to {to}: {} copied{expected}",
                        size(p.bytes_copied)
                    );
                }
                if p.done {
                    last = p.workspace;
                }
            }
            let w = last.ok_or_else(|| anyhow!("the move of {name} ended without its result"))?;
            if format != output::Format::Table {
                return print_api(format, &w);
            }
            println!("moved workspace {} to node {}", w.name, w.node);
            Ok(())
        }
    }
}

fn size(b: i64) -> String {
    if b <= 0 { "0".into() } else { format_bytes(b) }
}

fn state(w: &pb::Workspace) -> String {
    w.state()
        .as_str_name()
        .trim_start_matches("WORKSPACE_STATE_")
        .to_ascii_lowercase()
}

fn row(w: &pb::Workspace) -> Vec<String> {
    let measured = w.size_time.is_some();
    vec![
        w.name.clone(),
        w.node.clone(),
        state(w),
        if measured {
            size(w.size_bytes)
        } else {
            "-".into()
        },
        if w.container.is_empty() {
            "-".into()
        } else {
            w.container.clone()
        },
        w.owner.clone(),
        time(w.last_used_time).unwrap_or_else(|| "-".into()),
    ]
}

fn show(format: output::Format, w: &pb::Workspace) -> Result<()> {
    if format != output::Format::Table {
        return print_api(format, w);
    }
    let r = row(w);
    for (k, v) in [
        ("Name", &r[0]),
        ("Node", &r[1]),
        ("State", &r[2]),
        ("Size", &r[3]),
        ("Container", &r[4]),
        ("Owner", &r[5]),
        ("Last used", &r[6]),
    ] {
        println!("{k}:\t{}", output::escape_line(v));
    }
    println!("Volume:\t{}", output::escape_line(&w.volume));
    println!(
        "Created:\t{}",
        time(w.create_time).unwrap_or_else(|| "-".into())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_volumes_and_host_paths() {
        let m = parse_mount("cache:/cache").unwrap();
        assert_eq!(m.source, Some(pb::mount::Source::Volume("cache".into())));
        assert!(!m.read_only);
        let m = parse_mount("/srv/shared:/shared:ro").unwrap();
        assert_eq!(
            m.source,
            Some(pb::mount::Source::HostPath("/srv/shared".into()))
        );
        assert!(m.read_only);
        assert!(parse_mount("cache").is_err());
        assert!(parse_mount("cache:rel").is_err());
        assert!(parse_mount("a:/b:c:d").is_err());
    }
}
