//! How results are printed: a table for people, JSON or YAML for scripts.
//! The JSON/YAML views use lowercase state words (`running`, `ready`) and
//! RFC 3339 times.
//!
//! One file on purpose: every view the CLI prints goes through it, so the
//! escaping of control characters and the table/JSON/YAML formats cannot
//! drift between subcommands.

use std::{collections::BTreeMap, time::SystemTime};

use anyhow::Result;
use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};
use devctl_proto::pb;
use serde::Serialize;

use devctl_proto::units::{format_bytes, format_cpus};

/// Output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// JSON: an object, or an array for lists.
    Json,
    /// YAML.
    Yaml,
}

/// A container as printed.
#[derive(Debug, Serialize)]
pub struct ContainerView {
    name: String,
    id: String,
    image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    state: String,
    desired_state: String,
    node: String,
    /// CPU limit in CPUs; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<f64>,
    /// Memory limit in bytes; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_bytes: Option<i64>,
    env: BTreeMap<String, String>,
    /// The env values were withheld (only the owner and admins see them).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    env_redacted: bool,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    constraints: BTreeMap<String, String>,
    owner: String,
    created: Option<String>,
    updated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    last_error: String,
    runtime_id: String,
    /// Why it is not running (`lease_expired`, `inactivity`, ...).
    #[serde(skip_serializing_if = "String::is_empty")]
    stop_reason: String,
    /// Lease length in seconds (0: no lease).
    ttl_seconds: i64,
    /// When the lease runs out.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_expires: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    health: String,
    health_restarts: i32,
    /// Seconds since it was last in use (while it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_seconds: Option<u64>,
    /// The cluster's idle window (0: inactivity stop off).
    idle_timeout_seconds: i64,
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

/// Seconds from now until `t` (negative: past).
fn until(t: Option<prost_types::Timestamp>) -> Option<i64> {
    let t = SystemTime::try_from(t?).ok()?;
    Some(match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

/// Time left on the lease: `7h59m`, `expired`, or `-` without one.
fn lease_left(c: &pb::Container) -> String {
    match until(c.lease_expire_time) {
        Some(s) if s > 0 => short(s as u64),
        Some(_) => "expired".into(),
        None => "-".into(),
    }
}

/// `STOP_REASON_LEASE_EXPIRED` → `lease_expired` (empty when unset).
pub fn stop_reason_word(r: pb::StopReason) -> String {
    match r {
        pb::StopReason::Unspecified => String::new(),
        r => r
            .as_str_name()
            .trim_start_matches("STOP_REASON_")
            .to_lowercase(),
    }
}

fn health_word(h: pb::HealthStatus) -> String {
    match h {
        pb::HealthStatus::Unspecified => String::new(),
        h => h
            .as_str_name()
            .trim_start_matches("HEALTH_STATUS_")
            .to_lowercase(),
    }
}

/// The state with what qualifies it: `stopped (inactivity)`,
/// `running (unhealthy)`, `removing (node down)`.
fn state_text(c: &pb::Container) -> String {
    if c.desired_state() == pb::DesiredState::Removed {
        return "removing (node down)".into();
    }
    let state = state_word(c.state());
    let why = stop_reason_word(c.stop_reason());
    let health = health_word(c.health());
    if c.state() != pb::ContainerState::Running && !why.is_empty() {
        format!("{state} ({why})")
    } else if c.state() == pb::ContainerState::Running && !health.is_empty() {
        format!("{state} ({health})")
    } else {
        state
    }
}

fn idle_seconds(c: &pb::Container) -> Option<u64> {
    until(c.last_active_time).map(|s| (-s).max(0) as u64)
}

/// "idle for 12m of 30m", "in use", or "off".
fn idle_text(c: &pb::Container) -> String {
    if c.idle_timeout_seconds == 0 {
        return "inactivity stop off".into();
    }
    match idle_seconds(c) {
        Some(s) if s >= 1 => format!(
            "idle for {} of {}",
            short(s),
            short(c.idle_timeout_seconds as u64)
        ),
        Some(_) => format!(
            "in use (stops after {} idle)",
            short(c.idle_timeout_seconds as u64)
        ),
        None => "-".into(),
    }
}

pub(crate) fn time(t: Option<prost_types::Timestamp>) -> Option<String> {
    let st = SystemTime::try_from(t?).ok()?;
    Some(humantime::format_rfc3339_seconds(st).to_string())
}

fn age(t: Option<prost_types::Timestamp>) -> String {
    let Some(st) = t.and_then(|t| SystemTime::try_from(t).ok()) else {
        return "-".into();
    };
    let secs = SystemTime::now()
        .duration_since(st)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `CONTAINER_STATE_RUNNING` → `running`.
pub fn state_word(s: pb::ContainerState) -> String {
    s.as_str_name()
        .trim_start_matches("CONTAINER_STATE_")
        .to_lowercase()
}

fn desired_word(s: pb::DesiredState) -> String {
    s.as_str_name()
        .trim_start_matches("DESIRED_STATE_")
        .to_lowercase()
}

fn node_state_word(s: pb::NodeState) -> String {
    s.as_str_name()
        .trim_start_matches("NODE_STATE_")
        .to_lowercase()
}

impl From<&pb::Container> for ContainerView {
    fn from(c: &pb::Container) -> Self {
        let r = c.resources.unwrap_or_default();
        Self {
            name: c.name.clone(),
            id: c.id.clone(),
            image: c.image.clone(),
            command: c.command.clone(),
            state: state_word(c.state()),
            desired_state: desired_word(c.desired_state()),
            node: c.node.clone(),
            cpus: (r.milli_cpus > 0).then(|| r.milli_cpus as f64 / 1000.0),
            memory_bytes: (r.memory_bytes > 0).then_some(r.memory_bytes),
            env: c.env.clone().into_iter().collect(),
            env_redacted: c.env_redacted,
            labels: c.labels.clone().into_iter().collect(),
            constraints: c.constraints.clone().into_iter().collect(),
            owner: c.owner.clone(),
            created: time(c.create_time),
            updated: time(c.update_time),
            started: time(c.start_time),
            exit_code: c.exit_code,
            last_error: c.last_error.clone(),
            runtime_id: c.runtime_id.clone(),
            stop_reason: stop_reason_word(c.stop_reason()),
            ttl_seconds: c.ttl_seconds.unwrap_or(0),
            lease_expires: time(c.lease_expire_time),
            health: health_word(c.health()),
            health_restarts: c.health_restarts,
            idle_seconds: idle_seconds(c),
            idle_timeout_seconds: c.idle_timeout_seconds,
        }
    }
}

/// A node as printed.
#[derive(Debug, Serialize)]
pub struct NodeView {
    name: String,
    state: String,
    cpus: i32,
    memory_bytes: i64,
    containers: i32,
    reserved_milli_cpus: i64,
    reserved_memory_bytes: i64,
    open_streams: i32,
    cordoned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_used_bytes: Option<i64>,
    labels: BTreeMap<String, String>,
    docker_version: String,
    agent_version: String,
    platform: String,
    last_seen: Option<String>,
    created: Option<String>,
}

impl From<&pb::Node> for NodeView {
    fn from(n: &pb::Node) -> Self {
        Self {
            name: n.name.clone(),
            state: node_state_word(n.state()),
            cpus: n.cpus,
            memory_bytes: n.memory_bytes,
            containers: n.container_count,
            reserved_milli_cpus: n.reserved_milli_cpus,
            reserved_memory_bytes: n.reserved_memory_bytes,
            open_streams: n.open_streams,
            cordoned: n.cordoned,
            cpu_percent: n
                .usage
                .as_ref()
                .map(|u| (u.cpu_percent * 10.0).round() / 10.0),
            memory_used_bytes: n.usage.as_ref().map(|u| u.memory_used_bytes),
            labels: n.labels.clone().into_iter().collect(),
            docker_version: n.docker_version.clone(),
            agent_version: n.agent_version.clone(),
            platform: n.platform.clone(),
            last_seen: time(n.last_seen),
            created: time(n.create_time),
        }
    }
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

/// `s` with every control character but those in `keep` written as an
/// escape (`\x1b`, `\u{9b}`): what is printed to a terminal must not drive
/// it (titles, screen clears, clipboard writes, erased lines).
fn escape_but<'a>(s: &'a str, keep: &[char]) -> std::borrow::Cow<'a, str> {
    if !s.chars().any(|c| c.is_control() && !keep.contains(&c)) {
        return s.into();
    }
    s.chars()
        .map(|c| match c {
            c if !c.is_control() || keep.contains(&c) => c.to_string(),
            c if (c as u32) < 0x80 => format!("\\x{:02x}", c as u32),
            c => format!("\\u{{{:x}}}", c as u32),
        })
        .collect::<String>()
        .into()
}

/// `s` as one line for a terminal: every control character escaped (a
/// newline too, so a value cannot forge a row).
pub(crate) fn escape_line(s: &str) -> std::borrow::Cow<'_, str> {
    escape_but(s, &[])
}

/// Text for a terminal: control characters escaped but newline and tab.
pub(crate) fn escape_text(s: &str) -> std::borrow::Cow<'_, str> {
    escape_but(s, &['\n', '\t'])
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

pub(crate) fn print_serialized<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        Format::Table => unreachable!("tables are printed by the caller"),
    }
    Ok(())
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    if l.is_empty() {
        "-".into()
    } else {
        l.join(",")
    }
}

/// Prints containers: a table, or a JSON/YAML array.
pub fn containers(format: Format, list: &[pb::Container]) -> Result<()> {
    if format != Format::Table {
        let views: Vec<ContainerView> = list.iter().map(ContainerView::from).collect();
        return print_serialized(format, &views);
    }
    let mut t = table(&[
        "NAME", "STATE", "NODE", "IMAGE", "CPUS", "MEMORY", "LEASE", "OWNER", "AGE",
    ]);
    for c in list {
        let r = c.resources.unwrap_or_default();
        t.add_row(vec![
            c.name.clone(),
            state_text(c),
            c.node.clone(),
            c.image.clone(),
            format_cpus(r.milli_cpus),
            format_bytes(r.memory_bytes),
            lease_left(c),
            c.owner.clone(),
            age(c.create_time),
        ]);
    }
    println!("{}", render(t));
    Ok(())
}

/// Prints one container: details, or a JSON/YAML object.
pub fn container(format: Format, c: &pb::Container) -> Result<()> {
    if format != Format::Table {
        return print_serialized(format, &ContainerView::from(c));
    }
    let r = c.resources.unwrap_or_default();
    let mut rows = vec![
        ("Name", c.name.clone()),
        ("ID", c.id.clone()),
        ("State", state_text(c)),
        ("Desired", desired_word(c.desired_state())),
        ("Node", c.node.clone()),
        ("Image", c.image.clone()),
        (
            "Command",
            if c.command.is_empty() {
                "(image default)".into()
            } else {
                c.command.join(" ")
            },
        ),
        ("CPUs", format_cpus(r.milli_cpus)),
        ("Memory", format_bytes(r.memory_bytes)),
        ("Owner", c.owner.clone()),
        ("Labels", labels_text(&c.labels)),
        ("Env", {
            let mut keys: Vec<&String> = c.env.keys().collect();
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
        ("Started", time(c.start_time).unwrap_or_else(|| "-".into())),
        (
            "Lease",
            match (c.ttl_seconds.unwrap_or(0), time(c.lease_expire_time)) {
                (0, _) => "none".into(),
                (ttl, None) => format!("{} (renewed at start)", short(ttl as u64)),
                (_, Some(at)) => format!("{} left (expires {at})", lease_left(c)),
            },
        ),
    ];
    if c.state() == pb::ContainerState::Running {
        rows.push(("Idle", idle_text(c)));
    }
    if let Some(h) = &c.health_check {
        rows.push((
            "Health",
            format!(
                "{} (check: {}; automatic restarts: {})",
                match health_word(c.health()) {
                    w if w.is_empty() => "-".to_string(),
                    w => w,
                },
                h.command.join(" "),
                c.health_restarts,
            ),
        ));
    } else if c.health() != pb::HealthStatus::Unspecified {
        rows.push(("Health", health_word(c.health())));
    }
    if let Some(code) = c.exit_code {
        rows.push(("Exit code", code.to_string()));
    }
    if !c.last_error.is_empty() {
        rows.push(("Last error", c.last_error.clone()));
    }
    rows.push(("Engine ID", c.runtime_id.chars().take(12).collect()));
    for (k, v) in rows {
        println!("{:<11} {}", format!("{k}:"), escape_line(&v));
    }
    Ok(())
}

/// Prints nodes.
pub fn nodes(format: Format, list: &[pb::Node]) -> Result<()> {
    if format != Format::Table {
        let views: Vec<NodeView> = list.iter().map(NodeView::from).collect();
        return print_serialized(format, &views);
    }
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
            node_state_word(n.state()),
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
    println!("{}", render(t));
    Ok(())
}

/// Prints the outcome of a drain.
pub fn drained(format: Format, r: &pb::DrainNodeResponse) -> Result<()> {
    #[derive(Serialize)]
    struct View<'a> {
        node: Option<NodeView>,
        stopped: &'a [String],
        failed: BTreeMap<&'a String, &'a String>,
    }
    if format != Format::Table {
        return print_serialized(
            format,
            &View {
                node: r.node.as_ref().map(NodeView::from),
                stopped: &r.stopped,
                failed: r.failed.iter().collect(),
            },
        );
    }
    let node = r.node.as_ref().map_or("", |n| n.name.as_str());
    println!(
        "node {node} cordoned; {} container(s) stopped",
        r.stopped.len()
    );
    for name in &r.stopped {
        println!("  stopped {}", escape_line(name));
    }
    let failed: BTreeMap<_, _> = r.failed.iter().collect();
    for (name, why) in &failed {
        println!("  NOT stopped {}: {}", escape_line(name), escape_line(why));
    }
    if !failed.is_empty() {
        anyhow::bail!("{} container(s) could not be stopped", failed.len());
    }
    Ok(())
}

/// Prints one node.
pub fn node(format: Format, n: &pb::Node) -> Result<()> {
    if format != Format::Table {
        return print_serialized(format, &NodeView::from(n));
    }
    nodes(format, std::slice::from_ref(n))
}

/// An event as printed with -o json/yaml.
#[derive(Debug, Serialize)]
pub struct EventView {
    sequence: u64,
    time: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    container: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    container_id: String,
    node: String,
    actor: String,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    session: String,
}

/// `EVENT_TYPE_CONTAINER_STARTED` → `container.started`.
pub fn event_word(t: pb::EventType) -> String {
    let s = t
        .as_str_name()
        .trim_start_matches("EVENT_TYPE_")
        .to_lowercase();
    match s.split_once('_') {
        Some((kind, what)) => format!("{kind}.{what}"),
        None => s,
    }
}

impl From<&pb::Event> for EventView {
    fn from(e: &pb::Event) -> Self {
        Self {
            sequence: e.sequence,
            time: e
                .time
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            kind: event_word(e.r#type()),
            container: e.container.clone(),
            container_id: e.container_id.clone(),
            node: e.node.clone(),
            actor: e.actor.clone(),
            reason: e.reason.clone(),
            exit_code: e.exit_code,
            message: e.message.clone(),
            session: e.session.clone(),
        }
    }
}

/// Prints a stream of events: one line each (a header first), one JSON
/// object per line with -o json, YAML documents with -o yaml.
#[derive(Debug)]
pub struct EventPrinter {
    format: Format,
    header: bool,
}

impl EventPrinter {
    /// A printer for `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            header: false,
        }
    }

    /// Prints one event.
    pub fn print(&mut self, e: &pb::Event) -> Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let view = EventView::from(e);
        match self.format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(&view)?)?,
            Format::Yaml => write!(out, "---\n{}", serde_yaml_ng::to_string(&view)?)?,
            Format::Table => {
                if !self.header {
                    writeln!(
                        out,
                        "{:<24}  {:<21}  {:<16}  {:<14}  {:<10}  {:<17}  MESSAGE",
                        "TIME", "TYPE", "CONTAINER", "NODE", "ACTOR", "REASON"
                    )?;
                    self.header = true;
                }
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
                writeln!(out, "{}", escape_line(&line))?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// A container's usage as printed with -o json/yaml.
#[derive(Debug, Serialize)]
pub struct ContainerStatsView {
    name: String,
    id: String,
    node: String,
    time: Option<String>,
    cpu_percent: f64,
    memory_bytes: i64,
    memory_limit_bytes: i64,
    network_rx_bytes: i64,
    network_tx_bytes: i64,
    block_read_bytes: i64,
    block_write_bytes: i64,
    pids: i64,
}

impl From<&pb::ContainerStats> for ContainerStatsView {
    fn from(s: &pb::ContainerStats) -> Self {
        Self {
            name: s.name.clone(),
            id: s.id.clone(),
            node: s.node.clone(),
            time: s
                .time
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            cpu_percent: (s.cpu_percent * 100.0).round() / 100.0,
            memory_bytes: s.memory_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            network_rx_bytes: s.network_rx_bytes,
            network_tx_bytes: s.network_tx_bytes,
            block_read_bytes: s.block_read_bytes,
            block_write_bytes: s.block_write_bytes,
            pids: s.pids,
        }
    }
}

fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        "-".into()
    } else {
        format!("{:.2}%", 100.0 * part as f64 / whole as f64)
    }
}

/// Clears the terminal before a redraw.
fn clear(tty: bool) {
    if tty {
        print!("\x1b[2J\x1b[H");
    }
}

/// Prints container usage: a table like `docker stats` (cleared first when
/// `redraw`), or one JSON object per line with -o json.
pub fn container_stats(format: Format, list: &[pb::ContainerStats], redraw: bool) -> Result<()> {
    if format != Format::Table {
        for s in list {
            match format {
                Format::Json => {
                    println!("{}", serde_json::to_string(&ContainerStatsView::from(s))?)
                }
                _ => print!(
                    "---\n{}",
                    serde_yaml_ng::to_string(&ContainerStatsView::from(s))?
                ),
            }
        }
        return Ok(());
    }
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
            format!(
                "{} / {}",
                format_bytes(s.memory_bytes),
                format_bytes(s.memory_limit_bytes)
            ),
            percent(s.memory_bytes, s.memory_limit_bytes),
            format!(
                "{} / {}",
                format_bytes(s.network_rx_bytes),
                format_bytes(s.network_tx_bytes)
            ),
            format!(
                "{} / {}",
                format_bytes(s.block_read_bytes),
                format_bytes(s.block_write_bytes)
            ),
            s.pids.to_string(),
        ]);
    }
    clear(redraw);
    println!("{}", render(t));
    Ok(())
}

/// Prints the cluster at a glance: nodes with usage, then the busiest
/// containers.
pub fn top(
    format: Format,
    nodes: &[pb::Node],
    busiest: &[pb::ContainerStats],
    redraw: bool,
) -> Result<()> {
    if format != Format::Table {
        #[derive(Serialize)]
        struct Top {
            nodes: Vec<NodeView>,
            containers: Vec<ContainerStatsView>,
        }
        let top = Top {
            nodes: nodes.iter().map(NodeView::from).collect(),
            containers: busiest.iter().map(ContainerStatsView::from).collect(),
        };
        match format {
            Format::Json => println!("{}", serde_json::to_string(&top)?),
            _ => print!("---\n{}", serde_yaml_ng::to_string(&top)?),
        }
        return Ok(());
    }
    let mut t = table(&["NODE", "STATE", "CPU %", "MEMORY", "DISK", "CONTAINERS"]);
    for n in nodes {
        let u = n.usage.clone().unwrap_or_default();
        let has = n.usage.is_some();
        t.add_row(vec![
            n.name.clone(),
            node_state_word(n.state()),
            if has {
                format!("{:.1}%", u.cpu_percent)
            } else {
                "-".into()
            },
            if has {
                format!(
                    "{} / {}",
                    format_bytes(u.memory_used_bytes),
                    format_bytes(u.memory_total_bytes)
                )
            } else {
                "-".into()
            },
            if has {
                format!(
                    "{} / {}",
                    format_bytes(u.disk_used_bytes),
                    format_bytes(u.disk_total_bytes)
                )
            } else {
                "-".into()
            },
            n.container_count.to_string(),
        ]);
    }
    clear(redraw);
    println!("{}\n", render(t));
    container_stats(format, busiest, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_for_a_terminal() {
        let hostile = "a\u{1b}]52;c;ZXZpbA==\u{7}\r\n\u{9b}2J\tz";
        assert_eq!(
            escape_line(hostile),
            "a\\x1b]52;c;ZXZpbA==\\x07\\x0d\\x0a\\u{9b}2J\\x09z"
        );
        assert_eq!(
            escape_text(hostile),
            "a\\x1b]52;c;ZXZpbA==\\x07\\x0d\n\\u{9b}2J\tz"
        );
        assert!(matches!(
            escape_line("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
        let mut t = table(&["NAME", "LABELS"]);
        t.add_row(vec!["box".to_string(), "x\u{1b}[2J\nfake row".to_string()]);
        let out = render(t);
        assert!(out.contains("x\\x1b[2J\\x0afake row"), "{out}");
        assert_eq!(out.lines().count(), 2, "{out}");
    }
}
