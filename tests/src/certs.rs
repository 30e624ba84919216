//! Data directories and certificates, made by the real binaries.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::bin;

/// Runs the real `devctl-scheduler init --data-dir DIR`.
pub fn init_data_dir(data_dir: &Path) -> Result<()> {
    let init = Command::new(bin("devctl-scheduler"))
        .args(["init", "--data-dir"])
        .arg(data_dir)
        .output()?;
    if !init.status.success() {
        bail!("init failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    Ok(())
}

/// Runs the real `devctl-scheduler issue-cert` for `name` with `role` into
/// `out` (for role agent this also admits the node to the bus, signalling
/// a running nats-server of `data_dir` to reload).
pub fn issue_cert_into(data_dir: &Path, name: &str, role: &str, out: &Path) -> Result<()> {
    issue_cert_with(data_dir, name, role, out, &[])
}

/// As [`issue_cert_into`], with more `issue-cert` flags (e.g.
/// `--valid-for 12s`).
pub fn issue_cert_with(
    data_dir: &Path,
    name: &str,
    role: &str,
    out: &Path,
    extra: &[&str],
) -> Result<()> {
    let res = Command::new(bin("devctl-scheduler"))
        .args(["issue-cert", "--name", name, "--role", role, "--data-dir"])
        .arg(data_dir)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()?;
    if !res.status.success() {
        bail!(
            "issue-cert failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
    Ok(())
}

/// Connection options for the bus with the bundle (`ca.pem`, `cert.pem`,
/// `key.pem`) in `tls_dir`: TLS required, the bundle's CA the only root.
pub fn bus_options(tls_dir: &Path) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(tls_dir.join("ca.pem"))
        .add_client_certificate(tls_dir.join("cert.pem"), tls_dir.join("key.pem"))
}
