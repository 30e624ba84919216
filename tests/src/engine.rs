//! What the Docker engine holds: inspect and remove by label.

use std::process::Command;

use anyhow::{Result, anyhow};
use serde_json::Value;

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker inspect` of every container (running or not) with `label`.
/// Containers are inspected one by one: only one removed between the
/// listing and its inspection is skipped; any other failure panics.
pub fn docker_inspect_by_label(label: &str) -> Vec<Value> {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={label}")]).expect("docker ps");
    let mut out = Vec::new();
    for id in ids.split_whitespace() {
        match docker(&["inspect", id]) {
            Ok(json) => {
                out.extend(serde_json::from_str::<Vec<Value>>(&json).expect("inspect JSON"))
            }
            Err(e) if e.to_string().contains("No such") => {}
            Err(e) => panic!("{e}"),
        }
    }
    out
}

/// Removes every container with `label`, eight at a time: the Docker CLI
/// removes the ids of one `rm` at once, and a hundred removals at once have
/// hung this engine (Docker 20.10 on fuse-overlayfs) for good.
pub fn remove_by_label(label: &str) {
    if let Ok(ids) = docker(&["ps", "-aq", "--filter", &format!("label={label}")]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        for batch in ids.chunks(8) {
            let mut args = vec!["rm", "-f"];
            args.extend(batch);
            let _ = docker(&args);
        }
    }
}

/// Removes every engine network with `label` (after its containers).
pub fn remove_networks_by_label(label: &str) {
    if let Ok(ids) = docker(&["network", "ls", "-q", "--filter", &format!("label={label}")]) {
        for id in ids.split_whitespace() {
            let _ = docker(&["network", "rm", id]);
        }
    }
}

/// Removes every engine volume with `label` (after its containers).
pub fn remove_volumes_by_label(label: &str) {
    if let Ok(names) = docker(&["volume", "ls", "-q", "--filter", &format!("label={label}")]) {
        for name in names.split_whitespace() {
            let _ = docker(&["volume", "rm", "-f", name]);
        }
    }
}

/// The names of the engine volumes with `label`, sorted.
pub fn volume_names_by_label(label: &str) -> Vec<String> {
    let out = docker(&["volume", "ls", "-q", "--filter", &format!("label={label}")])
        .expect("docker volume ls");
    let mut names: Vec<String> = out.split_whitespace().map(String::from).collect();
    names.sort();
    names
}

/// The names of the engine networks with `label`, sorted.
pub fn network_names_by_label(label: &str) -> Vec<String> {
    let out = docker(&[
        "network",
        "ls",
        "--filter",
        &format!("label={label}"),
        "--format",
        "{{.Name}}",
    ])
    .expect("docker network ls");
    let mut names: Vec<String> = out.split_whitespace().map(String::from).collect();
    names.sort();
    names
}

/// The engine's status word (`running`, `exited`) of an inspected container.
pub fn engine_status(c: &Value) -> &str {
    c["State"]["Status"].as_str().unwrap_or_default()
}
