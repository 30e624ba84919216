//! The CLI's configuration file: named contexts, each a cluster and an
//! identity (like kubectl's kubeconfig).
//!
//! `~/.config/devctl/config.toml` (or `$XDG_CONFIG_HOME/devctl/config.toml`,
//! or the file `DEVCTL_CONFIG` names):
//!
//! ```toml
//! current-context = "prod"
//!
//! [contexts.prod]
//! server = "https://sched.example.com:7443"
//! tls-dir = "/home/alice/.config/devctl/contexts/prod"
//! identity = "alice"
//! ssh-suffix = "prod"      # optional: `ssh web.prod` (default: devctl)
//! ```
//!
//! `devctl login` writes a context and its certificate (the key is made on
//! this machine, 0600); `devctl context ls|use` lists and switches.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ConfigFile {
    /// The context used when `--context` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One cluster and identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Context {
    /// The scheduler's URL.
    pub server: String,
    /// Directory holding ca.pem, cert.pem and key.pem.
    pub tls_dir: PathBuf,
    /// The identity's name (for display).
    #[serde(default)]
    pub identity: String,
    /// Host name suffix of dev containers for ssh (`NAME.SUFFIX`); unset:
    /// devctl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_suffix: Option<String>,
}

/// The directory of the configuration: `$XDG_CONFIG_HOME/devctl` or
/// `~/.config/devctl`.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("devctl"));
    }
    let home = std::env::var_os("HOME")
        .context("HOME is not set; set DEVCTL_CONFIG to the configuration file's path")?;
    Ok(PathBuf::from(home).join(".config/devctl"))
}

/// The configuration file's path: `DEVCTL_CONFIG`, else in [`config_dir`].
pub fn config_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DEVCTL_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(config_dir()?.join("config.toml"))
}

/// Checks a context name: letters, digits, `-` and `.` (a host name),
/// nothing that could leave the contexts directory.
pub fn check_context_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        bail!(
            "--context {name:?}: use lowercase letters, digits, '-' and '.' (e.g. prod or sched.example.com)"
        );
    }
    Ok(())
}

/// Where `devctl login` keeps a context's certificate: beside the file.
pub fn context_tls_dir(config: &Path, name: &str) -> PathBuf {
    config
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("contexts")
        .join(name)
}

impl ConfigFile {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `path` atomically, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            devctl_proto::pki::create_private_dir(dir)?;
        }
        let text = toml::to_string_pretty(self).context("encoding the configuration")?;
        devctl_proto::pki::write_file(path, text.as_bytes(), 0o600)?;
        Ok(())
    }

    /// The context called `name`, or the current one when `name` is `None`
    /// (`None` when there is no current context).
    pub fn context(&self, name: Option<&str>) -> Result<Option<(&str, &Context)>> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get_key_value(name) {
            Some((k, c)) => Ok(Some((k.as_str(), c))),
            None => bail!(
                "no context named {name:?}; `devctl context ls` lists them, `devctl login` makes one"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn contexts_round_trip_through_the_file_which_only_its_owner_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devctl/config.toml");
        assert_eq!(ConfigFile::load(&path).unwrap(), ConfigFile::default());
        let mut f = ConfigFile::default();
        f.contexts.insert(
            "prod".into(),
            Context {
                server: "https://sched:7443".into(),
                tls_dir: context_tls_dir(&path, "prod"),
                identity: "alice".into(),
                ssh_suffix: None,
            },
        );
        f.current_context = Some("prod".into());
        f.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = ConfigFile::load(&path).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.context(None).unwrap().unwrap().0, "prod");
        assert!(back.context(Some("nope")).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("current-context = \"prod\""), "{text}");
    }
}
