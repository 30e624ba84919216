//! Text for people: the tables, detail lines and event lines the CLI prints
//! without -o, as strings (the caller prints them). Every untrusted value
//! goes through [`escape_line`].

use devctl_proto::container::ContainerExt;
use std::collections::HashMap;

use comfy_table::{ContentArrangement, Table, presets};
use devctl_proto::{
    pb,
    units::{format_bytes, format_cpus},
    words,
};

use super::{
    escape::escape_line,
    view::{
        ChangeView, EventView, desired_word, health_word, idle_seconds, stop_reason_word, time,
        until,
    },
};

/// A table with `header` and no borders, to fill and pass to [`render`].
pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

/// Columns separated by three spaces, no borders, no leading space (as
/// kubectl and docker print). Every cell is escaped (`escape_line`).
pub(crate) fn render(t: Table) -> String {
    let header: Vec<String> = t
        .header()
        .map(|h| {
            h.cell_iter()
                .map(|c| escape_line(&c.content()).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut t = {
        let rows: Vec<Vec<String>> = t
            .row_iter()
            .map(|r| {
                r.cell_iter()
                    .map(|c| escape_line(&c.content()).into_owned())
                    .collect()
            })
            .collect();
        let mut clean = table(&header.iter().map(String::as_str).collect::<Vec<_>>());
        for row in rows {
            clean.add_row(row);
        }
        clean
    };
    for col in t.column_iter_mut() {
        col.set_padding((0, 3));
    }
    t.trim_fmt()
}

/// Seconds as a short duration: 45s, 12m, 7h59m, 3d.
fn short(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 172_800 => match (s / 3600, (s % 3600) / 60) {
            (h, 0) => format!("{h}h"),
            (h, m) => format!("{h}h{m}m"),
        },
        s => format!("{}d", s / 86_400),
    }
}

/// How long ago `t` was: 45s, 12m, 5h, 3d (`-` without one).
fn age(t: Option<prost_types::Timestamp>) -> String {
    let Some(secs) = until(t) else {
        return "-".into();
    };
    match (-secs).max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Time left on the lease: `7h59m`, `expired`, or `-` without one.
fn lease_left(c: &pb::Container) -> String {
    match until(c.status().lease_expire_time) {
        Some(s) if s > 0 => short(s as u64),
        Some(_) => "expired".into(),
        None => "-".into(),
    }
}

/// The state with what qualifies it: `stopped (inactivity)`,
/// `running (unhealthy)`, `removing (node down)`.
fn state_text(c: &pb::Container) -> String {
    if c.spec().desired_state() == pb::DesiredState::Removed {
        return "removing (node down)".into();
    }
    let state = words::container_state(c.status().state());
    let why = stop_reason_word(c.status().stop_reason());
    let health = health_word(c.status().health());
    if c.status().state() != pb::ContainerState::Running && !why.is_empty() {
        format!("{state} ({why})")
    } else if c.status().state() == pb::ContainerState::Running && !health.is_empty() {
        format!("{state} ({health})")
    } else {
        state
    }
}

/// "idle for 12m of 30m", "in use", or "off".
fn idle_text(c: &pb::Container) -> String {
    if c.status().idle_timeout_seconds == 0 {
        return "inactivity stop off".into();
    }
    match idle_seconds(c) {
        Some(s) if s >= 1 => format!(
            "idle for {} of {}",
            short(s),
            short(c.status().idle_timeout_seconds as u64)
        ),
        Some(_) => format!(
            "in use (stops after {} idle)",
            short(c.status().idle_timeout_seconds as u64)
        ),
        None => "-".into(),
    }
}

/// `k=v,k=v` sorted by key, or `-`.
fn labels_text(labels: &HashMap<String, String>) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    if l.is_empty() {
        "-".into()
    } else {
        l.join(",")
    }
}

/// `part` as a percentage of `whole` (`-` when there is no whole).
fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        "-".into()
    } else {
        format!("{:.2}%", 100.0 * part as f64 / whole as f64)
    }
}

/// `a / b` in bytes (used / total, in / out), or `-` without a sample.
fn bytes_pair(pair: Option<(i64, i64)>) -> String {
    match pair {
        Some((a, b)) => format!("{} / {}", format_bytes(a), format_bytes(b)),
        None => "-".into(),
    }
}

/// The container list.
pub(super) fn containers(list: &[pb::Container]) -> String {
    let mut t = table(&[
        "NAME", "STATE", "NODE", "IMAGE", "CPUS", "MEMORY", "LEASE", "OWNER", "AGE",
    ]);
    for c in list {
        let r = c.spec().resources.unwrap_or_default();
        t.add_row(vec![
            c.name.clone(),
            state_text(c),
            c.status().node.clone(),
            c.spec().image.clone(),
            format_cpus(r.milli_cpus),
            format_bytes(r.memory_bytes),
            lease_left(c),
            c.owner.clone(),
            age(c.create_time),
        ]);
    }
    render(t)
}

/// One container's details, a `Key:       value` line each.
pub(super) fn container(c: &pb::Container) -> String {
    let r = c.spec().resources.unwrap_or_default();
    let mut rows = vec![
        ("Name", c.name.clone()),
        ("ID", c.id.clone()),
        ("State", state_text(c)),
        ("Desired", desired_word(c.spec().desired_state())),
        ("Node", c.status().node.clone()),
        ("Image", c.spec().image.clone()),
        (
            "Command",
            if c.spec().command.is_empty() {
                "(image default)".into()
            } else {
                c.spec().command.join(" ")
            },
        ),
        ("CPUs", format_cpus(r.milli_cpus)),
        ("Memory", format_bytes(r.memory_bytes)),
        ("Owner", c.owner.clone()),
        ("Labels", labels_text(&c.spec().labels)),
        ("Env", {
            let mut keys: Vec<&String> = c.spec().env.keys().collect();
            keys.sort();
            if keys.is_empty() {
                "-".into()
            } else {
                keys.iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        }),
        ("Created", time(c.create_time).unwrap_or_else(|| "-".into())),
        (
            "Started",
            time(c.status().start_time).unwrap_or_else(|| "-".into()),
        ),
        (
            "Lease",
            match (
                c.spec().ttl_seconds.unwrap_or(0),
                time(c.status().lease_expire_time),
            ) {
                (0, _) => "none".into(),
                (ttl, None) => format!("{} (renewed at start)", short(ttl as u64)),
                (_, Some(at)) => format!("{} left (expires {at})", lease_left(c)),
            },
        ),
    ];
    if c.status().state() == pb::ContainerState::Running {
        rows.push(("Idle", idle_text(c)));
    }
    if !c.spec().workspace.is_empty() {
        rows.push((
            "Workspace",
            format!("{} at {}", c.spec().workspace, c.spec().workspace_path),
        ));
    }
    if let Some(h) = &c.spec().health_check {
        rows.push((
            "Health",
            format!(
                "{} (check: {}; automatic restarts: {})",
                match health_word(c.status().health()) {
                    w if w.is_empty() => "-".to_string(),
                    w => w,
                },
                h.command.join(" "),
                c.status().health_restarts,
            ),
        ));
    } else if c.status().health() != pb::HealthStatus::Unspecified {
        rows.push(("Health", health_word(c.status().health())));
    }
    if let Some(code) = c.status().exit_code {
        rows.push(("Exit code", code.to_string()));
    }
    if !c.status().last_error.is_empty() {
        rows.push(("Last error", c.status().last_error.clone()));
    }
    rows.push((
        "Engine ID",
        c.status().runtime_id.chars().take(12).collect(),
    ));
    rows.into_iter()
        .map(|(k, v)| format!("{:<11} {}\n", format!("{k}:"), escape_line(&v)))
        .collect()
}

/// The node list.
pub(super) fn nodes(list: &[pb::Node]) -> String {
    let mut t = table(&[
        "NAME",
        "STATE",
        "SCHEDULING",
        "CPUS",
        "CPU %",
        "MEMORY",
        "MEM USED",
        "CONTAINERS",
        "DOCKER",
        "LABELS",
        "LAST SEEN",
    ]);
    for n in list {
        t.add_row(vec![
            n.name.clone(),
            words::node_state(n.state()),
            if n.cordoned { "cordoned" } else { "enabled" }.to_string(),
            n.cpus.to_string(),
            n.usage
                .as_ref()
                .map_or("-".into(), |u| format!("{:.1}%", u.cpu_percent)),
            format_bytes(n.memory_bytes),
            n.usage
                .as_ref()
                .map_or("-".into(), |u| format_bytes(u.memory_used_bytes)),
            n.container_count.to_string(),
            n.docker_version.clone(),
            labels_text(&n.labels),
            match n.last_seen {
                Some(_) => format!("{} ago", age(n.last_seen)),
                None => "never".into(),
            },
        ]);
    }
    render(t)
}

/// The outcome of a drain: the node, then each container stopped or not
/// (the failures sorted by name).
pub(super) fn drained(r: &pb::DrainNodeResponse) -> String {
    let node = r.node.as_ref().map_or("", |n| n.name.as_str());
    let mut out = format!(
        "node {} cordoned; {} container(s) stopped\n",
        escape_line(node),
        r.stopped.len()
    );
    for name in &r.stopped {
        out += &format!("  stopped {}\n", escape_line(name));
    }
    let failed: std::collections::BTreeMap<_, _> = r.failed.iter().collect();
    for (name, why) in failed {
        out += &format!(
            "  NOT stopped {}: {}\n",
            escape_line(name),
            escape_line(why)
        );
    }
    out
}

/// The header over [`change`] lines.
pub(super) fn change_header() -> String {
    format!(
        "{:<16}  {:<12}  {:<9}  {:<24}  {:<12}  NODE",
        "REVISION", "TYPE", "KIND", "NAME", "STATE"
    )
}

/// One change of the feed as a line (escaped as a whole).
pub(super) fn change(view: &ChangeView) -> String {
    let (kind, name, state, node) = match (&view.container, &view.node) {
        (Some(c), _) => ("container", &c.name[..], &c.state[..], &c.node[..]),
        (None, Some(n)) => ("node", &n.name[..], &n.state[..], ""),
        (None, None) => ("-", "-", "-", "-"),
    };
    let line = format!(
        "{:<16}  {:<12}  {:<9}  {:<24}  {:<12}  {}",
        view.revision,
        view.kind,
        kind,
        name,
        state,
        if node.is_empty() { "-" } else { node }
    );
    escape_line(&line).into_owned()
}

/// The header over [`event`] lines.
pub(super) fn event_header() -> String {
    format!(
        "{:<24}  {:<21}  {:<16}  {:<14}  {:<10}  {:<17}  MESSAGE",
        "TIME", "TYPE", "CONTAINER", "NODE", "ACTOR", "REASON"
    )
}

/// One event as a line (escaped as a whole).
pub(super) fn event(view: &EventView) -> String {
    let line = format!(
        "{:<24}  {:<21}  {:<16}  {:<14}  {:<10}  {:<17}  {}",
        view.time.as_deref().unwrap_or("-"),
        view.kind,
        if view.container.is_empty() {
            "-"
        } else {
            &view.container
        },
        view.node,
        view.actor,
        view.reason,
        view.message
    );
    escape_line(&line).into_owned()
}

/// Container usage, like `docker stats`.
pub(super) fn container_stats(list: &[pb::ContainerStats]) -> String {
    let mut t = table(&[
        "NAME",
        "NODE",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "BLOCK I/O",
        "PIDS",
    ]);
    for s in list {
        t.add_row(vec![
            s.name.clone(),
            s.node.clone(),
            format!("{:.2}%", s.cpu_percent),
            bytes_pair(Some((s.memory_bytes, s.memory_limit_bytes))),
            percent(s.memory_bytes, s.memory_limit_bytes),
            bytes_pair(Some((s.network_rx_bytes, s.network_tx_bytes))),
            bytes_pair(Some((s.block_read_bytes, s.block_write_bytes))),
            s.pids.to_string(),
        ]);
    }
    render(t)
}

/// The nodes of `devctl top`, with their usage.
pub(super) fn top_nodes(nodes: &[pb::Node]) -> String {
    let mut t = table(&["NODE", "STATE", "CPU %", "MEMORY", "DISK", "CONTAINERS"]);
    for n in nodes {
        let u = n.usage.as_ref();
        t.add_row(vec![
            n.name.clone(),
            words::node_state(n.state()),
            u.map_or("-".into(), |u| format!("{:.1}%", u.cpu_percent)),
            bytes_pair(u.map(|u| (u.memory_used_bytes, u.memory_total_bytes))),
            bytes_pair(u.map(|u| (u.disk_used_bytes, u.disk_total_bytes))),
            n.container_count.to_string(),
        ]);
    }
    render(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_node_name_is_escaped() {
        let r = pb::DrainNodeResponse {
            node: Some(pb::Node {
                name: "n1\u{1b}]0;owned\u{7}\nnode n2".into(),
                ..Default::default()
            }),
            stopped: vec!["box\u{1b}[2J".into()],
            failed: [("web".to_string(), "gone\r".to_string())].into(),
        };
        assert_eq!(
            drained(&r),
            "node n1\\x1b]0;owned\\x07\\x0anode n2 cordoned; 1 container(s) stopped\n\
             \x20 stopped box\\x1b[2J\n\
             \x20 NOT stopped web: gone\\x0d\n"
        );
    }
}
