//! `devctl images ls [--node N]`: which image is on which node;
//! `devctl images rm IMAGE [--node N]` (admin); `build` and `push` are in
//! their own files.

use anyhow::Result;
use devctl_proto::pb;

use crate::{
    client::Client,
    output::{self, Format},
};

/// Flags of `images`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// What to do with images.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List the images of every node (or one): id, tags, size, created.
    #[command(alias = "list")]
    Ls {
        /// Only this node's images.
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove IMAGE from one node, or from every node holding it (admin;
    /// refused for an image a container uses, as docker rmi).
    #[command(alias = "rmi", alias = "remove")]
    Rm {
        /// A tag (devctl/busybox:latest), an id or an id prefix.
        image: String,
        /// Only from this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Build an image on nodes from a local context directory (like docker
    /// build; nothing is pulled: FROM images must be on the nodes).
    Build(super::images_build::Args),
    /// Send an image from this machine's engine (or a docker save archive)
    /// to nodes, without a registry: docker save | docker load on each,
    /// through the cluster's bus, resuming a transfer an agent restart cut.
    Push(super::images_push::Args),
}

/// Runs `images ACTION`.
pub async fn run(client: &mut Client, format: Format, args: Args) -> Result<()> {
    match args.action {
        Action::Build(args) => super::images_build::run(client, args).await,
        Action::Push(args) => super::images_push::run(client, format, args).await,
        Action::Ls { node } => {
            let r = client
                .images
                .list_images(pb::ListImagesRequest {
                    node: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if format != Format::Table {
                return output::print_api(format, &r);
            }
            print!("{}", table(&r));
            for n in &r.unknown_nodes {
                eprintln!("note: node {n} has not reported its images (down, or just started)");
            }
            Ok(())
        }
        Action::Rm { image, node } => {
            let r = client
                .images
                .remove_image(pb::RemoveImageRequest {
                    image,
                    node: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if format != Format::Table {
                return output::print_api(format, &r);
            }
            for rm in &r.removals {
                let node = output::escape::escape_line(&rm.node);
                for t in &rm.untagged {
                    println!("{node}: Untagged: {}", output::escape::escape_line(t));
                }
                for d in &rm.deleted {
                    println!("{node}: Deleted: {}", output::escape::escape_line(d));
                }
            }
            Ok(())
        }
    }
}

/// The `images ls` table.
fn table(r: &pb::ListImagesResponse) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "IMAGE ID".into(),
        "TAGS".into(),
        "SIZE".into(),
        "CREATED".into(),
    ]];
    for ni in &r.images {
        let Some(i) = &ni.image else { continue };
        let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
        rows.push([
            output::escape::escape_line(&ni.node).into_owned(),
            id.chars().take(12).collect(),
            if i.tags.is_empty() {
                "<none>".into()
            } else {
                output::escape::escape_line(&i.tags.join(",")).into_owned()
            },
            size(i.size_bytes),
            i.created
                .as_ref()
                .and_then(|t| {
                    let secs = u64::try_from(t.seconds).ok()?;
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
                    Some(humantime::format_rfc3339_seconds(at).to_string())
                })
                .unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Bytes as docker shows them (decimal units): 1.99MB, 250MB, 1.2GB.
fn size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    match b {
        b if b >= 1e9 => format!("{:.3}GB", b / 1e9),
        b if b >= 1e6 => format!("{:.3}MB", b / 1e6),
        b if b >= 1e3 => format!("{:.3}kB", b / 1e3),
        b => format!("{b}B"),
    }
    .replace(".000", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(size(1_990_000), "1.990MB");
        assert_eq!(size(250_000_000), "250MB");
        assert_eq!(size(512), "512B");
    }
}
