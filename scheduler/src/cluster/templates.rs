//! Templates (TemplateService, `create --template`): the seed's YAML format
//! parsed and checked ([`parse_template`]: an invalid template is refused
//! with the field and its line), the image a template's containers run
//! (its base, or an image built from it with its packages, tagged by a
//! digest of the generated Dockerfile), and the spec a create gets from a
//! template.
//!
//! ```yaml
//! apiVersion: devcontainer/v1
//! kind: Template
//! metadata: {name: python-ml, description: Python with ML tools}
//! spec:
//!   base_image: python:3.12
//!   packages: {apt: [build-essential], pip: [numpy, "pandas>=2"]}
//!   environment: {PYTHONPATH: /workspace, JUPYTER_PORT: 8888}
//!   volumes: [{host: ./data, container: /data, mode: rw}]
//!   ports: ["8888:8888"]
//!   post_create: [pip install -e .]
//! ```
//!
//! Package names are checked strictly (Debian and Python naming, with a
//! version) and installed with exec-form `RUN` lines: nothing in a template
//! reaches a shell at build time.
//!
//! One piece: templates from the file to the container. It covers the seed
//! format's parsing with line numbers, the checks, the digest and generated
//! Dockerfile, storage, and what a create takes from a template (including
//! the build of its image), which all share the `Template` type. Its tests
//! are in templates_tests.rs.

use std::collections::{BTreeMap, HashMap};

use devctl_proto::{
    container::ContainerExt,
    pb,
    validate::{self, InvalidField, limits},
};
use serde::Deserialize;

use super::{Cluster, Error, ErrorKind, now};

/// The `apiVersion` templates carry.
pub const API_VERSION: &str = "devcontainer/v1";
/// The repository of images built from templates.
pub const IMAGE_REPOSITORY: &str = "devctl-template";
/// The longest template text taken.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// The most packages of one kind.
const MAX_PACKAGES: usize = 256;
/// The longest package specification.
const MAX_PACKAGE_LEN: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Doc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    base_image: String,
    #[serde(default)]
    packages: Packages,
    #[serde(default)]
    environment: BTreeMap<String, Scalar>,
    #[serde(default)]
    volumes: Vec<Volume>,
    #[serde(default)]
    ports: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    post_create: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Packages {
    #[serde(default)]
    apt: Vec<String>,
    #[serde(default)]
    pip: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Volume {
    host: String,
    container: String,
    #[serde(default)]
    mode: Mode,
}

fn check_name(s: &str) -> Result<(), String> {
    validate::dns_label("name", s).map_err(|e| e.problem)
}

fn check_image(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("give the image to start from, e.g. devctl/busybox:latest".into());
    }
    if s.len() > limits::MAX_IMAGE_LEN
        || s.starts_with('-')
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{s:?} is not an image reference"));
    }
    Ok(())
}

fn check_env_key(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && s.len() <= 256 {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an environment variable name (letters, digits, '_'; not starting with a digit)"
        ))
    }
}

fn check_host(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else if s.contains('\0') || s.len() > limits::MAX_PATH_LEN {
        Err("is not a usable path".into())
    } else if !s.starts_with('/') && volume_of(s).is_none() {
        Err(format!(
            "{s:?} is neither an absolute host path (/srv/data, mounted if the node's agent allows it) nor a volume name (data or ./data: letters, digits, '_', '.', '-')"
        ))
    } else {
        Ok(())
    }
}

/// The volume a template volume's non-absolute `host` names: `data` and
/// `./data` are volume `data` (made per container, see
/// [`template_mounts`]).
fn volume_of(host: &str) -> Option<&str> {
    let name = host.strip_prefix("./").unwrap_or(host);
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    ok.then_some(name)
}

/// The mounts a template's volumes give container `container`: an
/// absolute `host` is that path on the node's host (the agent mounts only
/// paths its --allow-bind lists); a name (`data`, `./data`) is the engine
/// volume `CONTAINER-data` on the node, the container's own (a container
/// created again under the same name gets it back, as its workspace).
pub(super) fn template_mounts(
    container: &str,
    volumes: &[pb::TemplateVolume],
) -> Result<Vec<pb::Mount>, InvalidField> {
    volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let source = if v.host.starts_with('/') {
                pb::mount::Source::HostPath(v.host.clone())
            } else {
                let name = volume_of(&v.host).ok_or_else(|| {
                    InvalidField::new(
                        format!("template.spec.volumes[{i}].host"),
                        format!(
                            "{:?} is not a volume name or an absolute path: fix the template",
                            v.host
                        ),
                    )
                })?;
                pb::mount::Source::Volume(format!("{container}-{name}"))
            };
            Ok(pb::Mount {
                source: Some(source),
                target: v.container.clone(),
                read_only: v.mode == "ro",
            })
        })
        .collect()
}

fn check_abs(s: &str) -> Result<(), String> {
    if !s.starts_with('/') || s.contains('\0') || s.len() > limits::MAX_PATH_LEN {
        Err(format!("{s:?} is not an absolute path in the container"))
    } else {
        Ok(())
    }
}

fn check_command(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err("a command must not be empty".into())
    } else if s.contains('\0') || s.len() > limits::MAX_SPEC_BYTES {
        Err("is not a usable command".into())
    } else {
        Ok(())
    }
}

/// "rw" or "ro".
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Rw,
    Ro,
}

/// An environment value: YAML strings, numbers and booleans alike.
#[derive(Debug)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml_ng::Value::deserialize(d)? {
            serde_yaml_ng::Value::String(s) if !s.contains('\0') => Ok(Self(s)),
            serde_yaml_ng::Value::Number(n) => Ok(Self(n.to_string())),
            serde_yaml_ng::Value::Bool(b) => Ok(Self(b.to_string())),
            _ => Err(serde::de::Error::custom(
                "an environment value is a string, a number or a boolean",
            )),
        }
    }
}

/// "8888:8888", "8888" or 8888.
fn port(value: &serde_yaml_ng::Value) -> Result<pb::TemplatePort, String> {
    let text = match value {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let one = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let parsed = match text.split_once(':') {
        Some((l, c)) => one(l).zip(one(c)),
        None => one(&text).map(|p| (p, p)),
    };
    parsed
        .map(|(local, container)| pb::TemplatePort {
            local: local.into(),
            container: container.into(),
        })
        .ok_or_else(|| {
            format!("{text:?} is not a port: give PORT or LOCAL:CONTAINER, each 1-65535")
        })
}

/// A Debian package name (policy 5.6.1), with an optional `=version`.
fn apt_package(s: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "{s:?} is not a Debian package (lowercase letters, digits, '+', '-', '.', starting with a letter or digit; optionally =VERSION)"
        ))
    };
    if s.len() > MAX_PACKAGE_LEN {
        return bad();
    }
    let (name, version) = match s.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.starts_with(|c: char| c.is_ascii_digit())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
    });
    if name_ok && version_ok { Ok(()) } else { bad() }
}

/// A Python requirement: a PEP 508 name, optional `[extras]`, and an
/// optional version specifier (`==1.2`, `>=2,<3`).
fn pip_package(s: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "{s:?} is not a Python package (NAME, NAME[extra], NAME==1.2 or NAME>=1,<2: letters, digits, '.', '_', '-')"
        ))
    };
    if s.len() > MAX_PACKAGE_LEN {
        return bad();
    }
    let name_end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        .unwrap_or(s.len());
    let (name, mut rest) = s.split_at(name_end);
    let name_ok = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return bad();
    }
    if let Some(after) = rest.strip_prefix('[') {
        let Some((extras, after)) = after.split_once(']') else {
            return bad();
        };
        if extras.is_empty()
            || !extras.split(',').all(|e| {
                !e.is_empty()
                    && e.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            })
        {
            return bad();
        }
        rest = after;
    }
    if rest.is_empty() {
        return Ok(());
    }
    for clause in rest.split(',') {
        let op_len = ["===", "==", ">=", "<=", "~=", "!=", ">", "<"]
            .iter()
            .find(|op| clause.starts_with(*op))
            .map(|op| op.len());
        let Some(op_len) = op_len else {
            return bad();
        };
        let v = &clause[op_len..];
        if v.is_empty()
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".*+!-_".contains(c))
        {
            return bad();
        }
    }
    Ok(())
}

/// Why a template's text was refused: the field (as a path in the YAML,
/// e.g. `spec.packages.apt[1]`) and line, and what is wrong.
fn refused(field: &str, line: Option<usize>, reason: String) -> Error {
    let at = match line {
        Some(l) => format!(" (line {l})"),
        None => String::new(),
    };
    InvalidField::new(field, format!("{reason}{at}")).into()
}

/// A template's YAML text, checked: its name, description and spec. An
/// invalid template is refused with INVALID_ARGUMENT naming the field (a
/// path in the YAML) and its line.
pub fn parse_template(text: &str) -> Result<(String, String, pb::TemplateSpec), Error> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(refused(
            "yaml",
            None,
            format!(
                "the template is {} bytes; at most {MAX_TEMPLATE_BYTES} are taken",
                text.len()
            ),
        ));
    }
    let doc: Doc = serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        // serde_yaml_ng says "PATH: REASON at line L column C".
        let message = e.to_string();
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        let (field, reason) = match message.split_once(": ") {
            Some((path, reason)) if !path.contains(' ') => (path.to_string(), reason.to_string()),
            _ => ("yaml".to_string(), message),
        };
        refused(&field, line, reason)
    })?;
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.trim_start().starts_with(needle))
            .map(|i| i + 1)
    };
    if doc.api_version != API_VERSION {
        return Err(refused(
            "apiVersion",
            line_of("apiVersion:"),
            format!("{:?} is not supported; use {API_VERSION}", doc.api_version),
        ));
    }
    if doc.kind != "Template" {
        return Err(refused(
            "kind",
            line_of("kind:"),
            format!("{:?} is not supported; use Template", doc.kind),
        ));
    }
    let s = doc.spec;
    // Checked here rather than while decoding: the decoder places an
    // element's error at its list, and the element's own line is wanted.
    // The line is the first one after the list's key that shows the value.
    let line_in = |key: &str, value: &str| {
        let from = line_of(key).unwrap_or(1);
        text.lines()
            .enumerate()
            .skip(from - 1)
            .find(|(_, l)| l.contains(value))
            .map(|(i, _)| i + 1)
    };
    check_name(&doc.metadata.name).map_err(|e| refused("metadata.name", line_of("name:"), e))?;
    check_image(&s.base_image)
        .map_err(|e| refused("spec.base_image", line_of("base_image:"), e))?;
    for k in s.environment.keys() {
        check_env_key(k).map_err(|e| {
            refused(
                &format!("spec.environment.{k}"),
                line_in("environment:", k),
                e,
            )
        })?;
    }
    for (i, v) in s.volumes.iter().enumerate() {
        check_host(&v.host).map_err(|e| {
            refused(
                &format!("spec.volumes[{i}].host"),
                line_in("volumes:", &v.host),
                e,
            )
        })?;
        check_abs(&v.container).map_err(|e| {
            refused(
                &format!("spec.volumes[{i}].container"),
                line_in("volumes:", &v.container),
                e,
            )
        })?;
    }
    for (i, c) in s.post_create.iter().enumerate() {
        check_command(c).map_err(|e| {
            refused(
                &format!("spec.post_create[{i}]"),
                line_in("post_create:", c.trim()),
                e,
            )
        })?;
    }
    for (i, p) in s.packages.apt.iter().enumerate() {
        apt_package(p)
            .map_err(|e| refused(&format!("spec.packages.apt[{i}]"), line_in("apt:", p), e))?;
    }
    for (i, p) in s.packages.pip.iter().enumerate() {
        pip_package(p)
            .map_err(|e| refused(&format!("spec.packages.pip[{i}]"), line_in("pip:", p), e))?;
    }
    let mut ports = Vec::with_capacity(s.ports.len());
    for (i, p) in s.ports.iter().enumerate() {
        let shown = match p {
            serde_yaml_ng::Value::String(s) => s.clone(),
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            _ => "-".into(),
        };
        ports.push(
            port(p)
                .map_err(|e| refused(&format!("spec.ports[{i}]"), line_in("ports:", &shown), e))?,
        );
    }
    for (field, n) in [
        ("spec.packages.apt", s.packages.apt.len()),
        ("spec.packages.pip", s.packages.pip.len()),
    ] {
        if n > MAX_PACKAGES {
            return Err(refused(
                field,
                None,
                format!("{n} packages; at most {MAX_PACKAGES}"),
            ));
        }
    }
    validate::max_count("spec.environment", s.environment.len(), limits::MAX_ENV)?;
    validate::max_count("spec.post_create", s.post_create.len(), limits::MAX_ARGS)?;
    let spec = pb::TemplateSpec {
        base_image: s.base_image,
        apt_packages: s.packages.apt,
        pip_packages: s.packages.pip,
        environment: s.environment.into_iter().map(|(k, v)| (k, v.0)).collect(),
        volumes: s
            .volumes
            .into_iter()
            .map(|v| pb::TemplateVolume {
                host: v.host,
                container: v.container,
                mode: match v.mode {
                    Mode::Rw => "rw".into(),
                    Mode::Ro => "ro".into(),
                },
            })
            .collect(),
        ports,
        post_create: s.post_create,
    };
    Ok((doc.metadata.name, doc.metadata.description, spec))
}

/// The Dockerfile that installs `spec`'s packages on its base image;
/// `None` when it has none (containers run the base image itself). Every
/// `RUN` is in exec form: no shell sees a package name.
pub fn template_dockerfile(spec: &pb::TemplateSpec) -> Option<String> {
    if spec.apt_packages.is_empty() && spec.pip_packages.is_empty() {
        return None;
    }
    let json = |args: Vec<&str>| serde_json::to_string(&args).expect("strings encode");
    let mut out = format!("FROM {}\n", spec.base_image);
    if !spec.apt_packages.is_empty() {
        out.push_str(&format!("RUN {}\n", json(vec!["apt-get", "update"])));
        let mut install = vec!["apt-get", "install", "-y", "--no-install-recommends"];
        install.extend(spec.apt_packages.iter().map(String::as_str));
        out.push_str(&format!("RUN {}\n", json(install)));
    }
    if !spec.pip_packages.is_empty() {
        let mut install = vec!["pip", "install", "--no-cache-dir"];
        install.extend(spec.pip_packages.iter().map(String::as_str));
        out.push_str(&format!("RUN {}\n", json(install)));
    }
    Some(out)
}

/// The image containers of template `name` run: the base image, or
/// `devctl-template/NAME:DIGEST12` (a digest of the Dockerfile, so a
/// changed package list is a new image and an unchanged one is built once
/// per node).
pub fn template_image(name: &str, spec: &pb::TemplateSpec) -> String {
    match template_dockerfile(spec) {
        None => spec.base_image.clone(),
        Some(dockerfile) => {
            let digest = ring::digest::digest(&ring::digest::SHA256, dockerfile.as_bytes());
            let hex: String = digest.as_ref()[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{IMAGE_REPOSITORY}/{name}:{hex}")
        }
    }
}

/// Checks the spec fields templates and devcontainer.json fill
/// (`post_create`, `ports`, `image_recipe`, `template`), whoever sent them.
pub fn check_template_fields(c: &pb::Container) -> Result<(), Error> {
    let s = c.spec();
    validate::max_count(
        "container.spec.post_create",
        s.post_create.len(),
        limits::MAX_ARGS,
    )?;
    for (i, cmd) in s.post_create.iter().enumerate() {
        let field = format!("container.spec.post_create[{i}]");
        if cmd.contains('\0') {
            return Err(InvalidField::new(field, "must not contain NUL").into());
        }
    }
    let total: usize = s.post_create.iter().map(String::len).sum::<usize>()
        + s.image_recipe.as_ref().map_or(0, |r| r.dockerfile.len());
    if total > limits::MAX_SPEC_BYTES {
        return Err(InvalidField::new(
            "container.spec.post_create",
            format!(
                "post_create and image_recipe add up to {total} bytes; at most {}",
                limits::MAX_SPEC_BYTES
            ),
        )
        .into());
    }
    for (i, p) in s.ports.iter().enumerate() {
        if *p == 0 || *p > 65535 {
            return Err(InvalidField::new(
                format!("container.spec.ports[{i}]"),
                format!("{p} is not a port (1-65535)"),
            )
            .into());
        }
    }
    if !s.template.is_empty() {
        validate::dns_label("container.spec.template", &s.template)?;
    }
    Ok(())
}

fn template_not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound {
            what: "template",
            name: name.to_string(),
        },
        format!("no template named {name:?}; see `devctl templates ls`"),
    )
}

impl Cluster {
    /// Stores the template `text` describes (applied by `actor`): the
    /// template as stored, whether it is new, and whether it was unchanged.
    pub async fn apply_template(
        &self,
        text: &str,
        actor: &str,
    ) -> Result<(pb::Template, bool, bool), Error> {
        let (name, description, spec) = parse_template(text)?;
        let existing = self.store().template(&name)?;
        let image = template_image(&name, &spec);
        if let Some(old) = &existing
            && old.spec.as_ref() == Some(&spec)
            && old.description == description
        {
            return Ok((old.clone(), false, true));
        }
        let t = pb::Template {
            name: name.clone(),
            description,
            spec: Some(spec),
            source: text.to_string(),
            image,
            create_time: existing.as_ref().and_then(|o| o.create_time).or_else(now),
            update_time: now(),
            applied_by: actor.to_string(),
        };
        let before = self.store().put_template(t.clone()).await?;
        tracing::info!(template = %name, image = %t.image, by = actor, "template applied");
        Ok((t, before.is_none(), false))
    }

    /// Every template, by name.
    pub fn templates(&self) -> Result<Vec<pb::Template>, Error> {
        Ok(self.store().templates()?)
    }

    /// Template `name`.
    pub fn template(&self, name: &str) -> Result<pb::Template, Error> {
        validate::dns_label("name", name)?;
        self.store()
            .template(name)?
            .ok_or_else(|| template_not_found(name))
    }

    /// Deletes template `name`.
    pub async fn delete_template(&self, name: &str) -> Result<(), Error> {
        validate::dns_label("name", name)?;
        if !self.store().delete_template(name).await? {
            return Err(template_not_found(name));
        }
        tracing::info!(template = %name, "template deleted");
        Ok(())
    }

    /// `c` made from template `name`: what its spec leaves unset comes from
    /// the template (image, environment per key, ports, post_create, a
    /// mount per volume whose target the spec does not mount), and the
    /// template's image recipe when it has packages.
    pub fn from_template(&self, name: &str, mut c: pb::Container) -> Result<pb::Container, Error> {
        let t = match self.template(name) {
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSpec { .. }) => {
                return Err(InvalidField::new("template", e.to_string()).into());
            }
            other => other?,
        };
        let spec = t.spec.unwrap_or_default();
        let s = c.spec_mut();
        s.template = t.name.clone();
        if s.image.is_empty() {
            s.image = t.image.clone();
            s.image_recipe =
                template_dockerfile(&spec).map(|dockerfile| pb::ImageRecipe { dockerfile });
        }
        let mut env: HashMap<String, String> = spec.environment;
        env.extend(std::mem::take(&mut s.env));
        s.env = env;
        if s.ports.is_empty() {
            s.ports = spec.ports.iter().map(|p| p.container).collect();
        }
        if s.post_create.is_empty() {
            s.post_create = spec.post_create;
        }
        for m in template_mounts(&c.name, &spec.volumes)? {
            let s = c.spec_mut();
            if !s.mounts.iter().any(|have| have.target == m.target) {
                s.mounts.push(m);
            }
        }
        Ok(c)
    }

    /// Has `node` build `c`'s image from its recipe unless its engine has
    /// it already. `Err`: the build failed (its output's last lines say
    /// why).
    pub(super) async fn ensure_image(&self, node: &str, c: &pb::Container) -> Result<(), Error> {
        let Some(recipe) = &c.spec().image_recipe else {
            return Ok(());
        };
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(recipe.dockerfile.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "Dockerfile", recipe.dockerfile.as_bytes())
            .map_err(|e| Error::internal(format!("packing the template's Dockerfile: {e}")))?;
        let context = tar
            .into_inner()
            .map_err(|e| Error::internal(format!("packing the template's Dockerfile: {e}")))?;
        let job = super::BuildJob {
            tag: c.spec().image.clone(),
            dockerfile: String::new(),
            build_args: HashMap::new(),
            context: std::sync::Arc::new(context),
            skip_if_present: true,
            actor: c.owner.clone(),
            reason: "template",
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        // The output's tail, for the error.
        let tail = tokio::spawn(async move {
            let mut tail: Vec<u8> = Vec::new();
            while let Some(super::BuildEvent::Output { data, .. }) = rx.recv().await {
                tail.extend_from_slice(&data);
                if tail.len() > 4096 {
                    tail.drain(..tail.len() - 4096);
                }
            }
            String::from_utf8_lossy(&tail).into_owned()
        });
        let built = self.build_on(node, &job, &tx).await;
        drop(tx);
        let tail = tail.await.unwrap_or_default();
        built.map_err(|e| {
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            Error::new(
                ErrorKind::ImageNotFound {
                    node: node.to_string(),
                },
                format!(
                    "building image {} of template {:?} on node {node:?} failed: {e}; its last output: {}",
                    job.tag,
                    c.spec().template,
                    last.join(" | ")
                ),
            )
        })
    }
}

#[cfg(test)]
#[path = "templates_tests.rs"]
mod tests;
