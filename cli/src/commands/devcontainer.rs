//! `devctl up [DIR] [--name N] [--node N]`: a dev container from the
//! project's devcontainer.json (DIR/.devcontainer/devcontainer.json or
//! DIR/.devcontainer.json; JSON with comments).
//!
//! The image is `image`, or built from `build` (through `devctl images
//! build`'s path, on the node the container will run on). A container of
//! that name made from the same directory (label `devcontainer.project`)
//! is reused (started if stopped); one made from another is refused. A new
//! one gets the directory's contents copied into its workspace folder (a
//! tar on the stdin of `tar -x` in the container), then the lifecycle
//! commands run with their output shown: onCreateCommand,
//! updateContentCommand, postCreateCommand (new container only),
//! postStartCommand (new or started), postAttachCommand. Properties devctl
//! does not carry out are named in a warning.
//!
//! One piece: the flow of `devctl up`. It reads devcontainer.json and
//! resolves variables, then creates or reuses the container, copies the
//! project and runs the lifecycle commands, each step feeding the next. Its
//! tests are in devcontainer_tests.rs.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use devctl_proto::{container::ContainerExt, pb, units};
use serde_json::Value;

use super::templates_lifecycle::{RunAs, exec};
use crate::{client::Client, output};

/// Flags of `up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The project directory (default: the current one).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Container name (default: the directory's name, as a DNS label).
    #[arg(long)]
    pub name: Option<String>,
    /// Run (and build) on this node.
    #[arg(long)]
    pub node: Option<String>,
}

/// Properties carried out.
const SUPPORTED: &[&str] = &[
    "name",
    "image",
    "build",
    "dockerFile",
    "context",
    "containerEnv",
    "remoteEnv",
    "remoteUser",
    "containerUser",
    "workspaceFolder",
    "workspaceMount",
    "mounts",
    "forwardPorts",
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
    "postAttachCommand",
    "hostRequirements",
    "overrideCommand",
    "customizations",
    "$schema",
];

/// The label that ties a container to its project directory.
const PROJECT_LABEL: &str = "devcontainer.project";

/// A parsed devcontainer.json, variables substituted.
#[derive(Debug, Default)]
struct Config {
    image: Option<String>,
    build: Option<Build>,
    container_env: HashMap<String, String>,
    remote_env: Vec<String>,
    remote_user: String,
    workspace_folder: String,
    forward_ports: Vec<u32>,
    lifecycle: Vec<(&'static str, Value)>,
    milli_cpus: i64,
    memory_bytes: i64,
    override_command: bool,
    mounts: Vec<pb::Mount>,
    warnings: Vec<String>,
}

#[derive(Debug)]
struct Build {
    dockerfile: PathBuf,
    context: PathBuf,
    args: HashMap<String, String>,
}

/// Where the project's devcontainer.json is.
fn find_config(dir: &Path) -> Result<PathBuf> {
    for candidate in [
        dir.join(".devcontainer").join("devcontainer.json"),
        dir.join(".devcontainer.json"),
    ] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no devcontainer.json in {}: looked for .devcontainer/devcontainer.json and .devcontainer.json",
        dir.display()
    )
}

/// `name` as a DNS label: lowercase letters, digits and '-'.
fn dns_name(name: &str) -> String {
    let mut out: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out = out.trim_matches('-').to_string();
    out.truncate(63);
    let out = out.trim_end_matches('-').to_string();
    if out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out
    } else {
        format!("dev-{out}").trim_end_matches('-').to_string()
    }
}

/// Substitutes ${localWorkspaceFolder}, ${localWorkspaceFolderBasename},
/// ${containerWorkspaceFolder}, ${containerWorkspaceFolderBasename} and
/// ${localEnv:NAME} / ${localEnv:NAME:DEFAULT} in `s`.
fn substitute(s: &str, local: &Path, container_folder: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let var = &after[..end];
        let basename = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let value = match var {
            "localWorkspaceFolder" => Some(local.display().to_string()),
            "localWorkspaceFolderBasename" => Some(basename),
            "containerWorkspaceFolder" => Some(container_folder.to_string()),
            "containerWorkspaceFolderBasename" => Some(
                container_folder
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            v => v.strip_prefix("localEnv:").map(|e| {
                let (name, default) = e.split_once(':').unwrap_or((e, ""));
                std::env::var(name).unwrap_or_else(|_| default.to_string())
            }),
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn string_map(
    v: &Value,
    what: &str,
    sub: &dyn Fn(&str) -> String,
) -> Result<HashMap<String, String>> {
    let Some(map) = v.as_object() else {
        bail!("{what}: must be an object of names to strings");
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), sub(s))),
            Value::Number(n) => Ok((k.clone(), n.to_string())),
            Value::Bool(b) => Ok((k.clone(), b.to_string())),
            _ => Err(anyhow!("{what}.{k}: must be a string")),
        })
        .collect()
}

/// One of devcontainer.json's mounts: `"source=S,target=T,type=volume"`
/// (Docker's --mount syntax) or `{"source", "target", "type"}`.
#[derive(Debug, Default, PartialEq, Eq)]
struct MountSpec {
    kind: String,
    source: Option<String>,
    target: Option<String>,
    read_only: bool,
}

fn parse_mount(v: &Value, what: &str, sub: &dyn Fn(&str) -> String) -> Result<MountSpec> {
    let mut m = MountSpec {
        kind: "volume".into(),
        ..Default::default()
    };
    let mut set = |k: &str, val: Option<&str>| -> Result<()> {
        match (k.trim(), val) {
            ("type", Some(t)) => m.kind = t.trim().to_string(),
            ("source" | "src", Some(s)) => m.source = Some(sub(s.trim())),
            ("target" | "destination" | "dst", Some(t)) => m.target = Some(sub(t.trim())),
            ("readonly" | "ro", None) => m.read_only = true,
            ("readonly" | "ro", Some(b)) => m.read_only = b.trim() != "false" && b.trim() != "0",
            ("consistency", _) => {}
            (other, _) => {
                bail!("{what}: {other:?} is not a mount option (source, target, type, readonly)")
            }
        }
        Ok(())
    };
    match v {
        Value::String(text) => {
            for part in text.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, val) = match part.split_once('=') {
                    Some((k, val)) => (k, Some(val)),
                    None => (part, None),
                };
                set(k, val)?;
            }
        }
        Value::Object(o) => {
            for (k, val) in o {
                match val {
                    Value::Bool(b) => set(k, Some(if *b { "true" } else { "false" }))?,
                    other => set(
                        k,
                        Some(
                            other
                                .as_str()
                                .ok_or_else(|| anyhow!("{what}.{k}: must be a string"))?,
                        ),
                    )?,
                }
            }
        }
        _ => bail!("{what}: must be a string (source=…,target=…,type=…) or an object"),
    }
    if let Some(t) = &m.target
        && !t.starts_with('/')
    {
        bail!("{what}: target {t:?} must be an absolute path in the container");
    }
    Ok(m)
}

/// Reads and checks `path` (the project being `local`).
fn parse(path: &Path, local: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value = json5::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let Some(obj) = doc.as_object() else {
        bail!("{}: must be a JSON object", path.display());
    };
    let config_dir = path.parent().unwrap_or(Path::new("."));
    let mut c = Config {
        override_command: true,
        ..Default::default()
    };
    let basename = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // workspaceMount's target is where the project goes when
    // workspaceFolder does not say (its source is copied, not bound).
    let mount_target = match obj.get("workspaceMount") {
        Some(m) => parse_mount(m, "workspaceMount", &|s| substitute(s, local, ""))?.target,
        None => None,
    };
    let folder = obj
        .get("workspaceFolder")
        .and_then(Value::as_str)
        .map(|s| substitute(s, local, ""))
        .or(mount_target)
        .unwrap_or_else(|| format!("/workspaces/{basename}"));
    if !folder.starts_with('/') {
        bail!("workspaceFolder: {folder:?} must be an absolute path in the container");
    }
    c.workspace_folder = folder.clone();
    let sub = |s: &str| substitute(s, local, &folder);
    let mut unsupported = Vec::new();
    for (key, v) in obj {
        match key.as_str() {
            "image" => {
                c.image = Some(sub(v
                    .as_str()
                    .ok_or_else(|| anyhow!("image: must be a string"))?))
            }
            "build" | "dockerFile" => {
                let (dockerfile, context, args) = if key == "dockerFile" {
                    (v.as_str(), obj.get("context").and_then(Value::as_str), None)
                } else {
                    (
                        v.get("dockerfile").and_then(Value::as_str),
                        v.get("context").and_then(Value::as_str),
                        v.get("args"),
                    )
                };
                let dockerfile = dockerfile
                    .ok_or_else(|| anyhow!("build.dockerfile: is required with build"))?;
                let args = match args {
                    Some(a) => string_map(a, "build.args", &sub)?,
                    None => HashMap::new(),
                };
                if let Some(b) = v.as_object() {
                    for k in b.keys() {
                        if !["dockerfile", "context", "args"].contains(&k.as_str()) {
                            unsupported.push(format!("build.{k}"));
                        }
                    }
                }
                c.build = Some(Build {
                    dockerfile: config_dir.join(sub(dockerfile)),
                    context: config_dir.join(sub(context.unwrap_or("."))),
                    args,
                });
            }
            "containerEnv" => c.container_env = string_map(v, "containerEnv", &sub)?,
            "remoteEnv" => {
                c.remote_env = string_map(v, "remoteEnv", &sub)?
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                c.remote_env.sort();
            }
            "remoteUser" | "containerUser" => {
                let user = v
                    .as_str()
                    .ok_or_else(|| anyhow!("{key}: must be a string"))?;
                if key == "remoteUser" || c.remote_user.is_empty() {
                    c.remote_user = sub(user);
                }
            }
            "forwardPorts" => {
                for (i, p) in v.as_array().into_iter().flatten().enumerate() {
                    match p.as_u64().filter(|p| (1..=65535).contains(p)) {
                        Some(p) => c.forward_ports.push(p as u32),
                        None => c.warnings.push(format!(
                            "forwardPorts[{i}] ({p}) is not a port of the container: only numbers are forwarded"
                        )),
                    }
                }
            }
            "onCreateCommand" => c.lifecycle.push(("onCreateCommand", v.clone())),
            "updateContentCommand" => c.lifecycle.push(("updateContentCommand", v.clone())),
            "postCreateCommand" => c.lifecycle.push(("postCreateCommand", v.clone())),
            "postStartCommand" => c.lifecycle.push(("postStartCommand", v.clone())),
            "postAttachCommand" => c.lifecycle.push(("postAttachCommand", v.clone())),
            "hostRequirements" => {
                if let Some(cpus) = v.get("cpus") {
                    let n = cpus
                        .as_f64()
                        .ok_or_else(|| anyhow!("hostRequirements.cpus: must be a number"))?;
                    c.milli_cpus = (n * 1000.0).round() as i64;
                }
                if let Some(m) = v.get("memory").and_then(Value::as_str) {
                    c.memory_bytes = units::parse_memory(m)
                        .map_err(|e| anyhow!("hostRequirements.memory: {e}"))?;
                }
                for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !["cpus", "memory"].contains(&k.as_str()) {
                        unsupported.push(format!("hostRequirements.{k}"));
                    }
                }
            }
            "overrideCommand" => c.override_command = v.as_bool().unwrap_or(true),
            // The project is copied into the container's workspace volume,
            // mounted at the folder: its files persist as a bind's would.
            "workspaceMount" => {}
            "mounts" => {
                let list = v
                    .as_array()
                    .ok_or_else(|| anyhow!("mounts: must be a list"))?;
                for (i, m) in list.iter().enumerate() {
                    let what = format!("mounts[{i}]");
                    let m = parse_mount(m, &what, &sub)?;
                    match (m.kind.as_str(), m.source, m.target) {
                        (_, _, None) => bail!("{what}: needs a target (an absolute path in the container)"),
                        ("volume", Some(source), Some(target)) => c.mounts.push(pb::Mount {
                            source: Some(pb::mount::Source::Volume(source)),
                            target,
                            read_only: m.read_only,
                        }),
                        ("bind", Some(source), Some(target)) => c.mounts.push(pb::Mount {
                            // A path on the node's host (the agent allows
                            // only its --allow-bind paths), not this machine.
                            source: Some(pb::mount::Source::HostPath(source)),
                            target,
                            read_only: m.read_only,
                        }),
                        (kind, _, Some(target)) => c.warnings.push(format!(
                            "{what} ({kind} at {target}) is not carried out: devctl mounts named volumes (type=volume) and the node's allowed host paths (type=bind)"
                        )),
                    }
                }
            }
            k if SUPPORTED.contains(&k) => {}
            other => unsupported.push(other.to_string()),
        }
    }
    if !unsupported.is_empty() {
        c.warnings.push(format!(
            "not supported, ignored: {} (see docs/devcontainer.md)",
            unsupported.join(", ")
        ));
    }
    if c.image.is_none() && c.build.is_none() {
        bail!("{}: give `image` or `build.dockerfile`", path.display());
    }
    c.lifecycle.sort_by_key(|(k, _)| {
        [
            "onCreateCommand",
            "updateContentCommand",
            "postCreateCommand",
            "postStartCommand",
            "postAttachCommand",
        ]
        .iter()
        .position(|x| x == k)
    });
    Ok(c)
}

/// A lifecycle command as argv lists: a string runs in `sh -c`, an array
/// as it is, an object's values one after the other.
fn commands(v: &Value, sub: &dyn Fn(&str) -> String) -> Result<Vec<Vec<String>>> {
    Ok(match v {
        Value::String(s) if s.trim().is_empty() => vec![],
        Value::String(s) => vec![vec!["sh".into(), "-c".into(), sub(s)]],
        Value::Array(a) => {
            let argv: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(sub)).collect();
            vec![argv.ok_or_else(|| anyhow!("a command array must hold strings"))?]
        }
        Value::Object(o) => {
            let mut all = Vec::new();
            for v in o.values() {
                all.extend(commands(v, sub)?);
            }
            all
        }
        Value::Null => vec![],
        _ => bail!("a lifecycle command is a string, an array or an object"),
    })
}

/// The project's files as a tar archive (.git left out).
fn pack_workspace(dir: &Path) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let walk = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .filter_entry(|e| e.file_name() != ".git")
        .sort_by_file_path(|a, b| a.cmp(b))
        .build();
    for entry in walk {
        let entry = entry?;
        let rel = entry.path().strip_prefix(dir)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        tar.append_path_with_name(entry.path(), rel)
            .with_context(|| format!("packing {}", entry.path().display()))?;
    }
    Ok(tar.into_inner()?)
}

/// The project's id: a digest of its directory's path.
fn project_id(dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.to_string_lossy().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Brings the project's dev container up.
pub async fn run(client: &mut Client, args: Args) -> Result<()> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("the project directory {}", args.dir.display()))?;
    let path = find_config(&dir)?;
    let config = parse(&path, &dir)?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => dns_name(
            &dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };
    let project = project_id(&dir);
    let folder = config.workspace_folder.clone();
    let sub = |s: &str| substitute(s, &dir, &folder);
    let how = RunAs {
        user: config.remote_user.clone(),
        workdir: folder.clone(),
        env: config.remote_env.clone(),
    };

    // An existing container of this project is reused.
    let existing = match client
        .containers
        .get_container(pb::GetContainerRequest { name: name.clone() })
        .await
    {
        Ok(c) => Some(c.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(s.into()),
    };
    let (container, created, started) = match existing {
        Some(c) => {
            if c.spec().labels.get(PROJECT_LABEL) != Some(&project) {
                bail!(
                    "a container named {name} exists and was not made from {}: choose another with --name",
                    dir.display()
                );
            }
            let running = c.status().state == pb::ContainerState::Running as i32;
            eprintln!(
                "reusing container {name}{}",
                if running { "" } else { " (starting it)" }
            );
            let c = if running {
                c
            } else {
                client
                    .containers
                    .start_container(pb::StartContainerRequest { name: name.clone() })
                    .await?
                    .into_inner()
            };
            (c, false, !running)
        }
        None => {
            let node = args.node.clone().unwrap_or_default();
            let image = match (&config.image, &config.build) {
                (_, Some(b)) => build_image(client, &name, &node, b).await?,
                (Some(image), None) => image.clone(),
                (None, None) => unreachable!("checked by parse"),
            };
            let mut labels = HashMap::new();
            labels.insert(PROJECT_LABEL.to_string(), project.clone());
            let command = if config.override_command {
                vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done".to_string(),
                ]
            } else {
                vec![]
            };
            let request = pb::CreateContainerRequest {
                container: Some(pb::Container {
                    name: name.clone(),
                    spec: Some(pb::ContainerSpec {
                        image,
                        command,
                        node: node.clone(),
                        env: config.container_env.clone(),
                        labels,
                        resources: Some(pb::Resources {
                            milli_cpus: config.milli_cpus,
                            memory_bytes: config.memory_bytes,
                        }),
                        ports: config.forward_ports.clone(),
                        // The project goes into the workspace volume: it
                        // survives the container's removal and re-creation.
                        workspace_path: folder.clone(),
                        mounts: config.mounts.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let c = client
                .containers
                .create_container(request)
                .await?
                .into_inner();
            eprintln!("created container {name} on node {}", c.status().node);
            (c, true, true)
        }
    };

    if created {
        let tar = pack_workspace(&dir)?;
        eprintln!(
            "copying {} ({} KiB) into {name}:{folder}",
            dir.display(),
            tar.len() / 1024
        );
        let root = RunAs {
            user: "0".into(),
            ..Default::default()
        };
        let q = shell_quote(&folder);
        let mut script = format!("mkdir -p {q} && tar -xf - -C {q}");
        if !config.remote_user.is_empty() {
            script.push_str(&format!(
                " && chown -R {} {q}",
                shell_quote(&config.remote_user)
            ));
        }
        let code = exec(
            client,
            &name,
            vec!["sh".into(), "-c".into(), script],
            &root,
            Some(tar),
        )
        .await?;
        if code != 0 {
            bail!(
                "copying the project into {name}:{folder} failed (exit code {code}); does the image have tar?"
            );
        }
    }
    for (what, v) in &config.lifecycle {
        let due = match *what {
            "onCreateCommand" | "updateContentCommand" | "postCreateCommand" => created,
            "postStartCommand" => started,
            _ => true,
        };
        if !due {
            continue;
        }
        for argv in commands(v, &sub).with_context(|| (*what).to_string())? {
            eprintln!("{what}: {}", output::escape_line(&argv.join(" ")));
            let code = exec(client, &name, argv, &how, None).await?;
            if code != 0 {
                bail!("{what} exited with {code} in {name}");
            }
        }
    }
    eprintln!(
        "{name} is up (node {}). Connect with:",
        container.status().node
    );
    eprintln!("  devctl exec -it {name} -- sh");
    eprintln!("  ssh {name}.devctl          (after `devctl config-ssh`)");
    eprintln!("  devctl open {name}         (VS Code / Cursor over Remote-SSH)");
    for p in &config.forward_ports {
        eprintln!("  devctl port-forward {name} {p}:{p}");
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Builds the project's image from `build`, tagged by a digest of its
/// context and arguments: on `node`, or on every ready node when none is
/// given (so the image is wherever placement puts the container).
async fn build_image(client: &mut Client, name: &str, node: &str, b: &Build) -> Result<String> {
    let packed = super::images_build::pack(&b.context, Some(&b.dockerfile))?;
    let digest = short_digest(&packed.tar, &b.args);
    let tag = format!("devctl-devcontainer/{name}:{digest}");
    eprintln!("building {tag} from {}", b.dockerfile.display());
    let start = pb::BuildStart {
        tag: tag.clone(),
        dockerfile: packed.dockerfile.clone(),
        build_args: b.args.clone(),
        node: node.to_string(),
        all_nodes: node.is_empty(),
        context_size: packed.tar.len() as u64,
    };
    let results = super::images_build::build(
        client,
        start,
        packed.tar,
        node.is_empty(),
        &mut std::io::stderr(),
    )
    .await?;
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.error.is_empty())
        .map(|r| format!("{}: {}", r.node, r.error))
        .collect();
    if !failed.is_empty() || results.is_empty() {
        bail!(
            "building {tag} failed: {}",
            output::escape_line(&failed.join("; "))
        );
    }
    Ok(tag)
}

/// A short digest of a build's context and arguments (FNV-1a: it names a
/// tag, it secures nothing).
fn short_digest(tar: &[u8], args: &HashMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(tar);
    let mut sorted: Vec<_> = args.iter().collect();
    sorted.sort();
    for (k, v) in sorted {
        feed(k.as_bytes());
        feed(b"=");
        feed(v.as_bytes());
    }
    format!("{h:012x}")[..12].to_string()
}

#[cfg(test)]
#[path = "devcontainer_tests.rs"]
mod tests;
