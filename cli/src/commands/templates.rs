//! `devctl templates apply -f FILE | ls | get NAME | rm NAME`: container
//! templates (apiVersion devcontainer/v1, kind Template), used with
//! `devctl create NAME --template T`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `templates`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: TemplatesCommand,
}

/// `templates` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TemplatesCommand {
    /// Create or replace a template from a YAML file (`-` for stdin).
    Apply {
        /// The template file.
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// List templates.
    Ls,
    /// Show one template (-o yaml for everything, its source included).
    Get {
        /// Template name.
        name: String,
    },
    /// Delete a template (admins; containers made from it stay).
    Rm {
        /// Template name.
        name: String,
    },
}

fn packages(s: &pb::TemplateSpec) -> String {
    let mut parts = Vec::new();
    if !s.apt_packages.is_empty() {
        parts.push(format!("apt: {}", s.apt_packages.join(" ")));
    }
    if !s.pip_packages.is_empty() {
        parts.push(format!("pip: {}", s.pip_packages.join(" ")));
    }
    parts.join("; ")
}

fn print(format: output::Format, list: &[pb::Template]) -> Result<()> {
    if format != output::Format::Table {
        return output::print_api_list(format, list);
    }
    let mut t = output::table(&["NAME", "IMAGE", "PACKAGES", "DESCRIPTION"]);
    for v in list {
        let spec = v.spec.clone().unwrap_or_default();
        t.add_row(vec![
            v.name.clone(),
            v.image.clone(),
            packages(&spec),
            v.description.clone(),
        ]);
    }
    print!("{}", output::render(t));
    Ok(())
}

fn print_one(format: output::Format, v: &pb::Template) -> Result<()> {
    if format != output::Format::Table {
        return output::print_api(format, v);
    }
    let spec = v.spec.clone().unwrap_or_default();
    let line = |k: &str, v: &str| println!("{k:<13} {}", output::escape_line(v));
    line("Name:", &v.name);
    line("Description:", &v.description);
    line("Base image:", &spec.base_image);
    line("Image:", &v.image);
    line("Packages:", &packages(&spec));
    let mut env: Vec<String> = spec
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    line("Environment:", &env.join(" "));
    let ports: Vec<String> = spec
        .ports
        .iter()
        .map(|p| format!("{}:{}", p.local, p.container))
        .collect();
    line("Ports:", &ports.join(" "));
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .map(|v| format!("{}:{}:{}", v.host, v.container, v.mode))
        .collect();
    line("Volumes:", &volumes.join(" "));
    for (i, c) in spec.post_create.iter().enumerate() {
        line(if i == 0 { "Post-create:" } else { "" }, c);
    }
    line("Applied by:", &v.applied_by);
    line("Updated:", &output::time(v.update_time).unwrap_or_default());
    Ok(())
}

/// Runs a `templates` subcommand.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    match args.command {
        TemplatesCommand::Apply { file } => {
            let yaml = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("reading the template from stdin")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let r = client
                .templates
                .apply_template(pb::ApplyTemplateRequest { yaml })
                .await?
                .into_inner();
            let t = r.template.unwrap_or_default();
            if format != output::Format::Table {
                return output::print_api(format, &t);
            }
            let what = if r.created {
                "created"
            } else if r.unchanged {
                "unchanged"
            } else {
                "configured"
            };
            println!("template/{} {what}", output::escape_line(&t.name));
            Ok(())
        }
        TemplatesCommand::Ls => {
            let r = client
                .templates
                .list_templates(pb::ListTemplatesRequest {})
                .await?
                .into_inner();
            print(format, &r.templates)
        }
        TemplatesCommand::Get { name } => {
            let t = client
                .templates
                .get_template(pb::GetTemplateRequest { name })
                .await?
                .into_inner();
            print_one(format, &t)
        }
        TemplatesCommand::Rm { name } => {
            let r = client
                .templates
                .delete_template(pb::DeleteTemplateRequest { name })
                .await?
                .into_inner();
            println!("template/{} deleted", output::escape_line(&r.name));
            Ok(())
        }
    }
}
