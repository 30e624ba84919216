//! `devctl images push IMAGE [--node N | --all]` (or `--input FILE`):
//! distributes an image without a registry. The archive comes from the
//! local engine (`docker save`) or a file `docker save` wrote; its size,
//! SHA-256, image id and tags go first; the scheduler answers which nodes
//! get it and from which offset to upload (nothing when it holds the
//! archive already), then sends it to the nodes and streams their
//! progress, shown as progress bars on a terminal.

use std::{
    collections::HashMap,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use devctl_proto::pb::{self, push_image_input::Input, push_image_output::Output};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    client::Client,
    output::{Format, escape::escape_line},
};

/// Flags of `images push`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to push, from the local engine (as `docker save IMAGE`).
    #[arg(value_name = "IMAGE", required_unless_present = "input")]
    pub image: Option<String>,
    /// Push the image archive in this file (written by `docker save -o`)
    /// instead of asking the local engine.
    #[arg(long, short = 'i', value_name = "FILE", conflicts_with = "image")]
    pub input: Option<PathBuf>,
    /// Push to this node (default: one the scheduler chooses).
    #[arg(long, conflicts_with = "all")]
    pub node: Option<String>,
    /// Push to every ready node.
    #[arg(long)]
    pub all: bool,
    /// Send the image also to nodes that already have it.
    #[arg(long)]
    pub force: bool,
}

/// What an archive's manifest says of its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// The image id ("sha256:…").
    pub id: String,
    /// Its tags.
    pub tags: Vec<String>,
}

/// Reads the image id and tags from a `docker save` archive's
/// manifest.json (seeking past the layers). Exactly one image.
pub fn read_manifest(path: &Path) -> Result<ArchiveImage> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let not_archive = || {
        anyhow!(
            "{} is not an image archive (docker save writes one: a tar with manifest.json)",
            path.display()
        )
    };
    for entry in archive.entries_with_seek().map_err(|_| not_archive())? {
        let mut entry = entry.map_err(|_| not_archive())?;
        let name = entry.path().map_err(|_| not_archive())?.into_owned();
        if name != Path::new("manifest.json") {
            continue;
        }
        let mut text = String::new();
        entry
            .by_ref()
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|_| not_archive())?;
        return parse_manifest(&text).with_context(|| format!("{}: manifest.json", path.display()));
    }
    Err(not_archive())
}

/// The image of a manifest.json (`[{"Config": …, "RepoTags": […]}]`).
pub fn parse_manifest(text: &str) -> Result<ArchiveImage> {
    let v: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    let entries = v
        .as_array()
        .ok_or_else(|| anyhow!("not a list of images"))?;
    let [entry] = entries.as_slice() else {
        bail!(
            "the archive holds {} images; push one image per archive (docker save IMAGE)",
            entries.len()
        );
    };
    let config = entry["Config"]
        .as_str()
        .ok_or_else(|| anyhow!("no Config"))?;
    // "blobs/sha256/HEX" (OCI layout) or "HEX.json" (the older layout).
    let file = config.rsplit('/').next().unwrap_or(config);
    let hex = file.strip_suffix(".json").unwrap_or(file);
    if !is_hex64(hex) {
        bail!("Config {config:?} does not name an image id");
    }
    let tags = entry["RepoTags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(ArchiveImage {
        id: format!("sha256:{hex}"),
        tags,
    })
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes IMAGE from the local engine into `dir` with `docker save` (no
/// shell: the name is one argument).
async fn docker_save(image: &str, dir: &Path) -> Result<PathBuf> {
    let out = dir.join("image.tar");
    eprintln!(
        "saving {} from the local engine (docker save)…",
        escape_line(image)
    );
    let status = tokio::process::Command::new("docker")
        .arg("save")
        .arg("-o")
        .arg(&out)
        .arg("--")
        .arg(image)
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot run docker ({e}): images push IMAGE needs the docker CLI and an engine holding IMAGE; or give an archive with --input FILE (docker save -o FILE IMAGE)"
            )
        })?;
    if !status.success() {
        bail!(
            "docker save {} failed ({status}): is the image on the local engine (docker images)?",
            escape_line(image)
        );
    }
    Ok(out)
}

/// Runs `images push`.
pub async fn run(client: &mut Client, format: Format, args: Args) -> Result<()> {
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let (path, name) = match (&args.input, &args.image) {
        (Some(file), _) => (file.clone(), file.display().to_string()),
        (None, Some(image)) => (docker_save(image, tmp.path()).await?, image.clone()),
        (None, None) => bail!("give an IMAGE or --input FILE"),
    };
    let image = read_manifest(&path)?;
    let size = std::fs::metadata(&path)?.len();
    let sha256 = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || devctl_proto::archive::sha256_file(&path)).await??
    };
    let name = match (&args.image, image.tags.first()) {
        (Some(i), _) => i.clone(),
        (None, Some(tag)) => tag.clone(),
        (None, None) => name,
    };
    let start = pb::PushImageStart {
        image: name.clone(),
        image_id: image.id.clone(),
        tags: image.tags.clone(),
        size_bytes: size,
        sha256,
        node: args.node.clone().unwrap_or_default(),
        all_nodes: args.all,
        force: args.force,
    };
    let results = push(client, start, &path).await?;
    drop(tmp);
    report(format, &name, &image, &results)
}

/// What a push did.
#[derive(Debug, Default)]
struct Outcome {
    plan: pb::PushPlan,
    uploaded: bool,
    results: Vec<pb::PushResult>,
    resumed: HashMap<String, u64>,
}

/// Sends `start`, then the archive in `path` from the plan's offset, and
/// follows the nodes' progress.
async fn push(client: &mut Client, start: pb::PushImageStart, path: &Path) -> Result<Outcome> {
    let size = start.size_bytes;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::PushImageInput {
        input: Some(Input::Start(start)),
    })
    .await?;
    let mut stream = client
        .images
        .push_image(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let plan = match stream.message().await? {
        Some(pb::PushImageOutput {
            output: Some(Output::Plan(plan)),
        }) => plan,
        other => bail!("the server answered start with {other:?}, not a plan"),
    };
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .expect("template")
    .progress_chars("=> ");
    let upload_bar = bars.add(ProgressBar::new(size));
    upload_bar.set_style(style.clone());
    upload_bar.set_prefix("upload");
    upload_bar.set_position(plan.upload_offset);
    let mut outcome = Outcome {
        plan: plan.clone(),
        ..Default::default()
    };
    for node in &plan.skipped {
        bars.suspend(|| eprintln!("{}: has the image already (skipped)", escape_line(node)));
    }
    // The archive in the background from the plan's offset (the server
    // may fail before it has all of it).
    let sender = {
        let (path, offset, bar) = (path.to_path_buf(), plan.upload_offset, upload_bar.clone());
        if offset > 0 && offset < size {
            bars.suspend(|| {
                eprintln!("upload: continuing an earlier upload from byte {offset} of {size}")
            });
        }
        tokio::spawn(async move {
            let file = std::fs::File::open(&path);
            let mut file = match file {
                Ok(f) => f,
                Err(_) => return,
            };
            if file.seek(SeekFrom::Start(offset)).is_err() {
                return;
            }
            let mut buf = vec![0u8; 1 << 20];
            let mut sent = offset;
            while sent < size {
                let n = match file.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let msg = pb::PushImageInput {
                    input: Some(Input::Data(buf[..n].to_vec())),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                sent += n as u64;
                bar.set_position(sent);
            }
            let _ = tx
                .send(pb::PushImageInput {
                    input: Some(Input::End(pb::PushImageEnd {})),
                })
                .await;
            // Holding `tx` until the call ends keeps the request open.
            tx.closed().await;
        })
    };
    let mut node_bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut phases: HashMap<String, i32> = HashMap::new();
    let bar_of = |node: &str, bars_map: &mut HashMap<String, ProgressBar>| {
        bars_map
            .entry(node.to_string())
            .or_insert_with(|| {
                let b = bars.add(ProgressBar::new(size));
                b.set_style(style.clone());
                b.set_prefix(escape_line(node).into_owned());
                b.enable_steady_tick(Duration::from_millis(500));
                b
            })
            .clone()
    };
    let received = loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match msg.output {
            Some(Output::Stored(stored)) => {
                outcome.uploaded = stored.uploaded;
                upload_bar.set_position(size);
                upload_bar.finish_with_message(if stored.uploaded {
                    "stored"
                } else {
                    "stored already"
                });
            }
            Some(Output::Progress(p)) => {
                let bar = bar_of(&p.node, &mut node_bars);
                bar.set_position(p.bytes_done);
                let phase = pb::PushPhase::try_from(p.phase).unwrap_or_default();
                let node = escape_line(&p.node).into_owned();
                if phases.insert(p.node.clone(), p.phase) != Some(p.phase) {
                    // Phase changes are worth a line (also off a terminal).
                    let line = match phase {
                        pb::PushPhase::Sending if p.resumed_from > 0 => {
                            outcome.resumed.insert(p.node.clone(), p.resumed_from);
                            format!(
                                "{node}: resumed at byte {} of {} (the node kept the rest)",
                                p.resumed_from, p.bytes_total
                            )
                        }
                        pb::PushPhase::Sending => format!("{node}: sending"),
                        pb::PushPhase::Waiting => format!(
                            "{node}: transfer cut ({}); waiting for the node to come back",
                            escape_line(&p.message)
                        ),
                        pb::PushPhase::Loading => format!("{node}: loading into the engine"),
                        pb::PushPhase::Unspecified => String::new(),
                    };
                    if !line.is_empty() {
                        bars.suspend(|| eprintln!("{line}"));
                    }
                }
                bar.set_message(match phase {
                    pb::PushPhase::Sending => "sending".to_string(),
                    pb::PushPhase::Waiting => "waiting for the node".to_string(),
                    pb::PushPhase::Loading => "loading".to_string(),
                    pb::PushPhase::Unspecified => String::new(),
                });
            }
            Some(Output::Result(r)) => {
                let bar = bar_of(&r.node, &mut node_bars);
                if r.error.is_empty() {
                    bar.set_position(size);
                    bar.finish_with_message("loaded");
                } else {
                    bar.abandon_with_message("failed");
                }
                outcome.results.push(r);
            }
            Some(Output::Plan(_)) | None => {}
        }
    };
    sender.abort();
    if !upload_bar.is_finished() {
        upload_bar.abandon();
    }
    for bar in node_bars.values() {
        if !bar.is_finished() {
            bar.abandon();
        }
    }
    received?;
    Ok(outcome)
}

/// Prints what happened on each node; fails when a node failed.
fn report(format: Format, name: &str, image: &ArchiveImage, o: &Outcome) -> Result<()> {
    let failed: Vec<&pb::PushResult> = o.results.iter().filter(|r| !r.error.is_empty()).collect();
    if format == Format::Table {
        for node in &o.plan.skipped {
            println!("{}\tskipped (has the image)", escape_line(node));
        }
        for r in &o.results {
            let node = escape_line(&r.node);
            if r.error.is_empty() {
                let resumed = o
                    .resumed
                    .get(&r.node)
                    .map(|b| format!(", resumed at byte {b}"))
                    .unwrap_or_default();
                println!(
                    "{node}\tloaded {} ({} bytes sent{resumed})",
                    escape_line(name),
                    r.bytes_sent
                );
            } else {
                println!("{node}\tfailed: {}", escape_line(&r.error));
            }
        }
    } else {
        let v = serde_json::json!({
            "image": name,
            "id": image.id,
            "tags": image.tags,
            "uploaded": o.uploaded,
            "skipped": o.plan.skipped,
            "results": o.results.iter().map(|r| serde_json::json!({
                "node": r.node,
                "error": r.error,
                "loaded": r.loaded,
                "bytesSent": r.bytes_sent,
                "resumedFrom": o.resumed.get(&r.node).copied().unwrap_or(0),
            })).collect::<Vec<_>>(),
        });
        crate::output::print_serialized(format, &v)?;
    }
    if !failed.is_empty() {
        bail!(
            "the push failed on {} of {} nodes",
            failed.len(),
            o.results.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn manifests_of_both_layouts() {
        let oci = format!(
            r#"[{{"Config":"blobs/sha256/{HEX}","RepoTags":["team/tool:1"],"Layers":[]}}]"#
        );
        let got = parse_manifest(&oci).unwrap();
        assert_eq!(got.id, format!("sha256:{HEX}"));
        assert_eq!(got.tags, vec!["team/tool:1".to_string()]);
        let old = format!(r#"[{{"Config":"{HEX}.json","RepoTags":null}}]"#);
        assert!(parse_manifest(&old).unwrap().tags.is_empty());
    }

    #[test]
    fn bad_manifests_say_why() {
        let two = format!(r#"[{{"Config":"{HEX}.json"}},{{"Config":"{HEX}.json"}}]"#);
        assert!(
            parse_manifest(&two)
                .unwrap_err()
                .to_string()
                .contains("2 images")
        );
        assert!(parse_manifest("{}").is_err());
        assert!(parse_manifest(r#"[{"Config":"x.json"}]"#).is_err());
        assert!(parse_manifest("nope").is_err());
    }

    #[test]
    fn a_file_that_is_no_archive_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.tar");
        std::fs::write(&f, b"not a tar at all").unwrap();
        let e = read_manifest(&f).unwrap_err().to_string();
        assert!(e.contains("not an image archive"), "{e}");
    }
}
