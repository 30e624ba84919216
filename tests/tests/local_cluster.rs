//! The README's first command, deploy/local-cluster.sh, starts a cluster and
//! launches a dev container; `purge` stops and removes everything.

use std::process::Command;

use devctl_tests::{
    bin_dir, docker_inspect_by_label, engine_status, network_names_by_label, repo_root,
};

struct Purge<'a>(&'a dyn Fn(&str) -> std::process::Output);

/// `deploy/local-cluster.sh ACTION` with its state in `cluster`, this
/// build's binaries, free ports, node `node`, and `extra` settings.
fn script<'a>(
    cluster: &'a std::path::Path,
    node: &'a str,
    extra: &'a [(&'a str, &'a str)],
) -> impl Fn(&str) -> std::process::Output + 'a {
    devctl_tests::start_watchdog();
    move |action| {
        Command::new(repo_root().join("deploy/local-cluster.sh"))
            .arg(action)
            .env("DEVCTL_HOME", cluster)
            .env("DEVCTL_BIN_DIR", bin_dir())
            .env("DEVCTL_PORT", "0")
            .env("DEVCTL_NATS_PORT", "0")
            .env("DEVCTL_NODE", node)
            .envs(extra.iter().copied())
            .output()
            .unwrap()
    }
}

impl Drop for Purge<'_> {
    fn drop(&mut self) {
        let _ = (self.0)("purge");
    }
}

#[test]
fn local_cluster_script_launches_a_dev_container_and_purges() {
    let home = tempfile::tempdir().unwrap();
    let node = format!("lc{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let cluster = home.path().join("cluster");
    let script = script(&cluster, &node, &[]);
    let _purge = Purge(&script);

    let up = script("up");
    let stdout = String::from_utf8_lossy(&up.stdout);
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "up failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("hello") && stdout.contains("running"),
        "{stdout}"
    );
    assert!(
        stdout.contains("source "),
        "tells how to use the CLI: {stdout}"
    );

    let on_engine = docker_inspect_by_label(&format!("io.devctl.node={node}"));
    assert_eq!(on_engine.len(), 1, "{on_engine:?}");
    assert_eq!(on_engine[0]["Config"]["Labels"]["io.devctl.name"], "hello");
    assert_eq!(engine_status(&on_engine[0]), "running");
    assert_eq!(on_engine[0]["HostConfig"]["Memory"], 256i64 << 20);
    let label = format!("io.devctl.node={node}");
    assert_eq!(
        network_names_by_label(&label),
        [format!("devctl-admin.{node}")]
    );

    // A second `up` is harmless: same container, nothing duplicated.
    assert!(script("up").status.success());
    assert_eq!(
        docker_inspect_by_label(&format!("io.devctl.node={node}")).len(),
        1
    );

    let status = String::from_utf8_lossy(&script("status").stdout).into_owned();
    assert_eq!(status.matches("running").count(), 3, "{status}");
    assert!(script("purge").status.success());
    let status = String::from_utf8_lossy(&script("status").stdout).into_owned();
    assert_eq!(status.matches("stopped").count(), 3, "{status}");
    assert!(docker_inspect_by_label(&format!("io.devctl.node={node}")).is_empty());
    assert!(network_names_by_label(&label).is_empty());
}

#[test]
fn local_cluster_script_with_a_graph_answers_insights() {
    let home = tempfile::tempdir().unwrap();
    let node = format!("lg{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let cluster = home.path().join("cluster");
    let script = script(
        &cluster,
        &node,
        &[("DEVCTL_GRAPH", "1"), ("DEVCTL_GRAPH_PORT", "0")],
    );
    let _purge = Purge(&script);
    let up = script("up");
    let stdout = String::from_utf8_lossy(&up.stdout);
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "up failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("graph server up"), "{stderr}");

    // The README's way in: source the env file, then devctl.
    let devctl = |args: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("source {}/env && devctl {args}", cluster.display()))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The graph follows the store: the container may show there first as
    // created, then as running.
    let images = devctl_tests::wait_until(
        "the sample container running in the graph",
        std::time::Duration::from_secs(30),
        || {
            let (ok, out) = devctl("insights images -o json");
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            (ok && v[0]["running"] == "1").then_some(v)
        },
    );
    assert_eq!(images[0]["image"], "devctl/busybox:latest", "{images}");
    assert_eq!(images[0]["containers"], "1", "{images}");
    let (ok, table) = devctl("graph status");
    assert!(ok && table.contains("true"), "{table}");

    // The password is in no command line.
    let password = std::fs::read_to_string(cluster.join("graph-password")).unwrap();
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(password.trim()),
        "the graph password shows in ps"
    );
    let status = String::from_utf8_lossy(&script("status").stdout).into_owned();
    assert_eq!(status.matches("running").count(), 4, "{status}");
    assert!(script("purge").status.success());
    assert!(!cluster.exists());
}
