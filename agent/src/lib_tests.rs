//! Unit tests of `lib.rs`.

use std::os::unix::fs::PermissionsExt;

use clap::Parser;

use super::*;

fn config(data_dir: Option<&std::path::Path>) -> Config {
    let mut args = vec!["devctl-agent".to_string(), "--node".into(), "n1".into()];
    if let Some(d) = data_dir {
        args.extend(["--data-dir".into(), d.display().to_string()]);
    }
    Config::try_parse_from(args).unwrap()
}

#[test]
fn the_ssh_host_key_is_made_once_kept_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(Some(dir.path()));
    let first = ssh_host_key(&c).unwrap();
    let path = dir.path().join("ssh/host_ed25519_key");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let again = ssh_host_key(&c).unwrap();
    assert_eq!(first.public_key(), again.public_key());
    assert_eq!(mode(&path), 0o600, "made private again");
    let e = ssh_host_key(&config(None)).unwrap_err();
    assert!(e.to_string().contains("--data-dir"), "{e}");
}
