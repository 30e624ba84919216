//! How results are printed: a table for people, JSON or YAML for scripts.
//! Every view the CLI prints goes through here, so the escaping of control
//! characters and the table/JSON/YAML formats cannot drift between
//! subcommands.
//!
//! -o json and -o yaml print the API's objects themselves, as canonical
//! proto JSON ([`devctl_proto::json`]): the shape a generated client sees,
//! documented by the proto, never a second hand-kept one.
//!
//! - this file: the [`Format`] (`-o`) and the entry points the commands call;
//! - [`view`]: the view models built from the API's objects for people (the
//!   tables here, and what a terminal UI reads);
//! - `render`: the tables and text lines for people;
//! - `escape`: untrusted strings made safe for a terminal.

pub(crate) mod escape;
mod render;
pub mod view;

use anyhow::Result;
use clap::ValueEnum;
use devctl_proto::{json, pb};
use serde::Serialize;

pub(crate) use escape::{escape_line, escape_text};
pub(crate) use render::{render, table};
pub(crate) use view::time;
use view::{ChangeView, EventView};

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

/// Prints `value` as pretty JSON or as YAML (not for [`Format::Table`]).
pub(crate) fn print_serialized<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        Format::Table => unreachable!("tables are printed by the caller"),
    }
    Ok(())
}

/// Prints API objects as a JSON/YAML array of canonical proto JSON objects
/// (not for [`Format::Table`]).
pub(crate) fn print_api_list<'a, M>(
    format: Format,
    list: impl IntoIterator<Item = &'a M>,
) -> Result<()>
where
    M: prost::Message + prost::Name + 'a,
{
    let values: Vec<serde_json::Value> = list.into_iter().map(json::to_value).collect();
    print_serialized(format, &values)
}

/// Prints one API object as canonical proto JSON, or YAML (not for
/// [`Format::Table`]).
pub(crate) fn print_api<M: prost::Message + prost::Name>(format: Format, m: &M) -> Result<()> {
    print_serialized(format, &json::to_value(m))
}

/// Prints one value of a stream: a JSON object on one line, or a YAML
/// document (not for [`Format::Table`]).
fn print_streamed<T: Serialize>(format: Format, value: &T) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(value)?),
        Format::Yaml => print!("---\n{}", serde_yaml_ng::to_string(value)?),
        Format::Table => unreachable!("tables are printed by the caller"),
    }
    Ok(())
}

/// Prints containers: a table, or a JSON/YAML array.
pub fn containers(format: Format, list: &[pb::Container]) -> Result<()> {
    if format != Format::Table {
        return print_api_list(format, list);
    }
    println!("{}", render::containers(list));
    Ok(())
}

/// Prints one container: details, or a JSON/YAML object.
pub fn container(format: Format, c: &pb::Container) -> Result<()> {
    if format != Format::Table {
        return print_api(format, c);
    }
    print!("{}", render::container(c));
    Ok(())
}

/// Prints nodes.
pub fn nodes(format: Format, list: &[pb::Node]) -> Result<()> {
    if format != Format::Table {
        return print_api_list(format, list);
    }
    println!("{}", render::nodes(list));
    Ok(())
}

/// Prints the outcome of a drain; an error when containers were left
/// running.
pub fn drained(format: Format, r: &pb::DrainNodeResponse) -> Result<()> {
    if format != Format::Table {
        return print_api(format, r);
    }
    print!("{}", render::drained(r));
    if !r.failed.is_empty() {
        anyhow::bail!("{} container(s) could not be stopped", r.failed.len());
    }
    Ok(())
}

/// Prints one node.
pub fn node(format: Format, n: &pb::Node) -> Result<()> {
    if format != Format::Table {
        return print_api(format, n);
    }
    nodes(format, std::slice::from_ref(n))
}

/// Prints a stream of events or feed changes: one line each (a header
/// first), one JSON object per line with -o json, YAML documents with
/// -o yaml.
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
        print_item(self.format, &mut self.header, e, || {
            let view = EventView::from(e);
            (render::event_header(), render::event(&view))
        })
    }

    /// Prints one change of the change feed (`devctl watch`).
    pub fn print_change(&mut self, r: &pb::WatchChangesResponse) -> Result<()> {
        print_item(self.format, &mut self.header, r, || {
            let view = ChangeView::from(r);
            (render::change_header(), render::change(&view))
        })
    }
}

/// Prints one API object of a stream: a canonical proto JSON line, a YAML
/// document, or a table line (`lines` gives the header and the line; the
/// header once) — flushed at once, so a pipe sees each item as it arrives.
pub(crate) fn print_item<M: prost::Message + prost::Name>(
    format: Format,
    header: &mut bool,
    item: &M,
    lines: impl FnOnce() -> (String, String),
) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&json::to_value(item))?)?,
        Format::Yaml => write!(
            out,
            "---\n{}",
            serde_yaml_ng::to_string(&json::to_value(item))?
        )?,
        Format::Table => {
            let (head, line) = lines();
            if !*header {
                writeln!(out, "{head}")?;
                *header = true;
            }
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
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
            print_streamed(format, &json::to_value(s))?;
        }
        return Ok(());
    }
    let table = render::container_stats(list);
    clear(redraw);
    println!("{table}");
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
        // Two lists of API objects: the nodes (Node, with their usage) and
        // the busiest containers' samples (ContainerStats).
        let value = serde_json::json!({
            "nodes": nodes.iter().map(json::to_value).collect::<Vec<_>>(),
            "containers": busiest.iter().map(json::to_value).collect::<Vec<_>>(),
        });
        return print_streamed(format, &value);
    }
    let table = render::top_nodes(nodes);
    clear(redraw);
    println!("{table}\n");
    container_stats(format, busiest, false)
}
