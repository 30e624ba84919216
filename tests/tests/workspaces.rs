//! Workspaces end to end (real Docker, nats-server, TLS): the volume at
//! /workspace keeps a container's work across stop/start, a scheduler
//! kill -9, `rm` and a new create of the same name, until `rm --purge`; a
//! container whose workspace's node is cordoned, drained or down is not
//! started elsewhere without it; ls/get, quotas, ownership and a workspace
//! in use.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use devctl_tests::{IMAGE, SecondEngine, TestCluster, bin, volume_names_by_label, wait_until};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Runs `sh -c SCRIPT` in container `name` as admin: (exit code, stdout).
fn sh(c: &TestCluster, name: &str, script: &str) -> (i32, String) {
    let out = Command::new(bin("devctl"))
        .args(["exec", name, "--", "sh", "-c", script])
        .env("DEVCTL_SERVER", &c.server)
        .env("DEVCTL_TLS_DIR", c.admin_tls())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn read_file(c: &TestCluster, name: &str) -> String {
    let (code, out) = sh(c, name, "cat /workspace/notes.txt");
    assert_eq!(code, 0, "reading /workspace/notes.txt in {name}");
    out
}

fn kill_scheduler(c: &mut TestCluster) {
    let mut s = c.scheduler.take().expect("scheduler runs");
    s.signal(Signal::SIGKILL);
    s.wait_exit(Duration::from_secs(10));
}

fn volumes(c: &TestCluster, short: &str, workspace: &str) -> Vec<String> {
    let node = c.node(short);
    volume_names_by_label(&format!("io.devctl.workspace={workspace}"))
        .into_iter()
        .filter(|v| v.contains(&node))
        .collect()
}

#[test]
fn work_survives_stop_start_a_scheduler_kill_and_rm_until_purged() {
    let mut c = TestCluster::start(&["a"]);
    let created = c
        .devctl(&["create", "box", "--image", IMAGE, "-o", "json"])
        .json();
    assert_eq!(created["spec"]["workspace"], "box", "{created}");
    assert_eq!(created["spec"]["workspacePath"], "/workspace", "{created}");
    let (code, _) = sh(&c, "box", "echo hello > /workspace/notes.txt");
    assert_eq!(code, 0);
    assert_eq!(volumes(&c, "a", "box").len(), 1);
    let shown = c.devctl(&["get", "box"]).ok().stdout;
    assert!(shown.contains("box at /workspace"), "{shown}");

    c.devctl(&["stop", "box"]).ok();
    c.devctl(&["start", "box"]).ok();
    assert_eq!(read_file(&c, "box"), "hello\n");

    kill_scheduler(&mut c);
    c.start_scheduler().unwrap();
    c.devctl(&["restart", "box"]).ok();
    assert_eq!(read_file(&c, "box"), "hello\n");

    // rm keeps it, and says so.
    let out = c.devctl(&["rm", "--force", "box"]).ok().stdout;
    assert!(out.contains("kept workspace box"), "{out}");
    assert_eq!(volumes(&c, "a", "box").len(), 1);
    let w = c.devctl(&["workspaces", "get", "box", "-o", "json"]).json();
    assert_eq!(w["node"], c.node("a"), "{w}");
    assert!(w.get("container").is_none(), "no container uses it: {w}");

    // The same name again: the same workspace, with the file.
    c.devctl(&["create", "box", "--image", IMAGE]).ok();
    assert_eq!(read_file(&c, "box"), "hello\n");
    let w = c.devctl(&["workspaces", "get", "box", "-o", "json"]).json();
    assert_eq!(w["container"], "box", "{w}");

    // --purge deletes it with the container.
    let out = c.devctl(&["rm", "--force", "--purge", "box"]).ok().stdout;
    assert!(out.contains("deleted workspace box"), "{out}");
    assert!(volumes(&c, "a", "box").is_empty());
    let err = c.devctl(&["workspaces", "get", "box"]).err();
    assert!(err.contains("NotFound"), "{err}");
    c.devctl(&["create", "box", "--image", IMAGE]).ok();
    let (code, _) = sh(&c, "box", "test -e /workspace/notes.txt");
    assert_ne!(code, 0, "a purged workspace starts empty");
    let evs = c.events(&[]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "EVENT_TYPE_WORKSPACE_DELETED"),
        "the purge is in the history: {evs:?}"
    );
}

#[test]
fn a_container_is_never_started_away_from_its_workspace() {
    let c = TestCluster::start_opts(&["a", "b"], &[], &["--node-timeout", "2s"]).unwrap();
    let (a, b) = (c.node("a"), c.node("b"));
    c.devctl(&["create", "box", "--image", IMAGE, "--node", &a])
        .ok();
    sh(&c, "box", "echo hello > /workspace/notes.txt");

    // Drained: stopped, and start refuses rather than start on b empty.
    let drained = c.devctl(&["nodes", "drain", &a, "-o", "json"]).json();
    assert_eq!(drained["stopped"][0], "box", "{drained}");
    let err = c.devctl(&["start", "box"]).err();
    assert!(err.contains("FailedPrecondition"), "{err}");
    assert!(
        err.contains(&format!("lives on node \"{a}\""))
            && err.contains("cordoned")
            && err.contains("devctl workspaces move box --to NODE"),
        "{err}"
    );
    let got = c.devctl(&["get", "box", "-o", "json"]).json();
    assert_eq!(got["status"]["node"], a.as_str(), "{got}");
    assert!(
        c.engine_containers()
            .iter()
            .all(|e| e["Config"]["Labels"]["io.devctl.node"] != b.as_str()),
        "nothing was made on {b}"
    );
    // A new container asking for the workspace is refused the same way.
    let err = c
        .devctl(&["create", "other", "--image", IMAGE, "--workspace", "box"])
        .err();
    assert!(err.contains("is used by container"), "{err}");

    // Uncordoned: it starts where its work is.
    c.devctl(&["nodes", "uncordon", &a]).ok();
    c.devctl(&["start", "box"]).ok();
    assert_eq!(read_file(&c, "box"), "hello\n");
    c.devctl(&["stop", "box"]).ok();
}

#[test]
fn a_node_that_is_gone_keeps_its_containers_from_starting_elsewhere() {
    let mut c = TestCluster::start_opts(&["a", "b"], &[], &["--node-timeout", "2s"]).unwrap();
    let a = c.node("a");
    c.devctl(&["create", "box", "--image", IMAGE, "--node", &a])
        .ok();
    c.devctl(&["stop", "box"]).ok();
    c.agent("a").signal(Signal::SIGKILL);
    c.wait_node_state(&a, "down");
    let err = c.devctl(&["start", "box"]).err();
    assert!(
        err.contains("FailedPrecondition")
            && err.contains("down")
            && err.contains("devctl workspaces move box --to NODE"),
        "{err}"
    );
    // Nor does another container take the workspace meanwhile.
    let err = c
        .devctl(&["create", "fresh", "--image", IMAGE, "--workspace", "box"])
        .err();
    assert!(
        err.contains("FailedPrecondition") && err.contains("is used by container \"box\""),
        "{err}"
    );
}

#[test]
fn workspaces_are_listed_counted_against_quotas_and_kept_from_others() {
    let c = TestCluster::start_env(
        &["a"],
        &["--workspace-measure-interval", "1s"],
        &[
            "--role-quota",
            "developer:workspaces=1",
            "--reconcile-interval",
            "1s",
        ],
        &[],
    )
    .unwrap();
    let a = c.node("a");
    let alice = c.issue_cert("alice", "developer");
    let bob = c.issue_cert("bob", "developer");
    let vera = c.issue_cert("vera", "viewer");

    c.devctl_as(&alice, &["create", "one", "--image", IMAGE])
        .ok();
    sh(
        &c,
        "one",
        "head -c 300000 /dev/zero > /workspace/blob && echo hi > /workspace/notes.txt",
    );
    c.devctl_as(&alice, &["rm", "--force", "one"]).ok();
    // A second workspace is over alice's quota.
    let err = c
        .devctl_as(&alice, &["create", "two", "--image", IMAGE])
        .err();
    assert!(
        err.contains("ResourceExhausted") && err.contains("workspaces limit 1"),
        "{err}"
    );
    assert!(c.devctl(&["get", "two"]).err().contains("NotFound"));
    // Attaching the one she has is fine, under another container name.
    c.devctl_as(
        &alice,
        &["create", "two", "--image", IMAGE, "--workspace", "one"],
    )
    .ok();
    assert_eq!(read_file(&c, "two"), "hi\n");

    // ls: node, size (measured by the agent), the container using it.
    let w = wait_until("the workspace's size", Duration::from_secs(30), || {
        let list = c
            .devctl_as(&alice, &["workspaces", "ls", "-o", "json"])
            .json();
        let w = list.as_array().unwrap().first().cloned()?;
        let size: i64 = w["sizeBytes"].as_str()?.parse().ok()?;
        (size >= 300_000).then_some(w)
    });
    assert_eq!(w["name"], "one", "{w}");
    assert_eq!(w["node"], a.as_str(), "{w}");
    assert_eq!(w["container"], "two", "{w}");
    assert_eq!(w["owner"], "alice", "{w}");
    assert_eq!(w["state"], "WORKSPACE_STATE_READY", "{w}");
    assert!(w["lastUsedTime"].is_string(), "{w}");
    let table = c.devctl_as(&alice, &["workspaces", "ls"]).ok().stdout;
    let header = table.lines().next().unwrap();
    for col in ["NAME", "NODE", "STATE", "SIZE", "CONTAINER", "LAST USED"] {
        assert!(header.contains(col), "{table}");
    }
    let line = table.lines().find(|l| l.starts_with("one ")).unwrap();
    assert!(
        line.contains(&a) && line.contains("two") && line.contains("Ki"),
        "{table}"
    );

    // In use: not deleted.
    let err = c.devctl_as(&alice, &["workspaces", "rm", "one"]).err();
    assert!(
        err.contains("FailedPrecondition") && err.contains("is used by container \"two\""),
        "{err}"
    );
    // Others: bob neither sees nor takes it; a viewer reads only.
    let err = c.devctl_as(&bob, &["workspaces", "get", "one"]).err();
    assert!(err.contains("PermissionDenied"), "{err}");
    let list = c
        .devctl_as(&bob, &["workspaces", "ls", "-o", "json"])
        .json();
    assert_eq!(list, Value::Array(vec![]));
    let err = c
        .devctl_as(
            &bob,
            &["create", "steal", "--image", IMAGE, "--workspace", "one"],
        )
        .err();
    assert!(
        err.contains("PermissionDenied") && err.contains("belongs to alice"),
        "{err}"
    );
    c.devctl_as(&vera, &["workspaces", "get", "one"]).ok();
    let err = c.devctl_as(&vera, &["workspaces", "rm", "one"]).err();
    assert!(err.contains("PermissionDenied"), "{err}");

    // Free again after rm: deleted, and its volume with it.
    c.devctl_as(&alice, &["rm", "--force", "two"]).ok();
    let out = c
        .devctl_as(&alice, &["workspaces", "rm", "one"])
        .ok()
        .stdout;
    assert!(out.contains("deleted workspace one"), "{out}");
    assert!(volumes(&c, "a", "one").is_empty());
    // The audit log has the call.
    let audit = c.devctl(&["audit", "-o", "json"]).ok().stdout;
    assert!(audit.contains("DeleteWorkspace"), "{audit}");
}

#[test]
fn a_volume_deleted_by_hand_is_noticed_and_never_replaced_by_an_empty_one() {
    let c = TestCluster::start_opts(&["a"], &[], &["--reconcile-interval", "1s"]).unwrap();
    c.devctl(&["create", "box", "--image", IMAGE]).ok();
    c.devctl(&["rm", "--force", "box"]).ok();
    let vols = volumes(&c, "a", "box");
    assert_eq!(vols.len(), 1);
    let out = Command::new("docker")
        .args(["volume", "rm", &vols[0]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the workspace marked missing",
        Duration::from_secs(30),
        || {
            let w = c.devctl(&["workspaces", "get", "box", "-o", "json"]).json();
            (w["state"] == "WORKSPACE_STATE_MISSING").then_some(())
        },
    );
    let err = c.devctl(&["create", "box", "--image", IMAGE]).err();
    assert!(
        err.contains("FailedPrecondition") && err.contains("devctl workspaces rm box"),
        "{err}"
    );
    assert!(volumes(&c, "a", "box").is_empty(), "no empty volume made");
    c.devctl(&["workspaces", "rm", "box"]).ok();
    c.devctl(&["create", "box", "--image", IMAGE]).ok();
}

#[test]
fn a_workspace_moves_to_another_engine_with_its_data_and_its_container_follows() {
    // Declared first, dropped last: the agents end before their engine.
    let engine = SecondEngine::start_seeded(&[IMAGE]);
    let mut c = TestCluster::start(&["a"]);
    c.add_node_on("b", &engine, &[]).unwrap();
    let (a, b) = (c.node("a"), c.node("b"));
    c.devctl(&["create", "box", "--image", IMAGE, "--node", &a])
        .ok();
    let (code, _) = sh(
        &c,
        "box",
        "echo hello > /workspace/notes.txt && mkdir -p /workspace/src && head -c 200000 /dev/urandom > /workspace/src/blob && chown -R 1234:1234 /workspace/src && md5sum /workspace/src/blob > /workspace/sum",
    );
    assert_eq!(code, 0);

    // A running container's workspace does not move.
    let err = c.devctl(&["workspaces", "move", "box", "--to", &b]).err();
    assert!(
        err.contains("FailedPrecondition") && err.contains("stop it first"),
        "{err}"
    );

    c.devctl(&["nodes", "drain", &a]).ok();
    let err = c.devctl(&["start", "box"]).err();
    assert!(
        err.contains("devctl workspaces move box --to NODE"),
        "{err}"
    );
    let moved = c.devctl(&["workspaces", "move", "box", "--to", &b]).ok();
    assert!(
        moved
            .stdout
            .contains(&format!("moved workspace box to node {b}")),
        "{}",
        moved.stdout
    );
    assert!(
        moved.stderr.contains("copied"),
        "progress: {}",
        moved.stderr
    );
    let w = c.devctl(&["workspaces", "get", "box", "-o", "json"]).json();
    assert_eq!(w["node"], b.as_str(), "{w}");
    assert_eq!(w["state"], "WORKSPACE_STATE_READY", "{w}");

    // The container starts where its work now is, with all of it.
    let started = c.devctl(&["start", "box", "-o", "json"]).json();
    assert_eq!(started["status"]["node"], b.as_str(), "{started}");
    assert_eq!(read_file(&c, "box"), "hello\n");
    let (code, out) = sh(
        &c,
        "box",
        "md5sum -c /workspace/sum && stat -c %u /workspace/src/blob",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.trim_end().ends_with("1234"), "owner kept: {out}");
    assert_eq!(
        engine
            .inspect_by_label(&format!("io.devctl.node={b}"))
            .len(),
        1
    );

    // Nothing left behind: the old volume and container on a, the
    // helpers on either engine.
    assert!(volumes(&c, "a", "box").is_empty());
    assert!(
        c.engine_container("box")
            .is_none_or(|e| { e["Config"]["Labels"]["io.devctl.node"] == b.as_str() })
    );
    let on_b = engine
        .docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            "label=io.devctl.workspace=box",
        ])
        .unwrap();
    assert!(on_b.contains(&format!("devctl-ws_{b}_box")), "{on_b}");
    wait_until("helpers removed", Duration::from_secs(20), || {
        let main = Command::new("docker")
            .args(["ps", "-aq", "--filter", "label=io.devctl.workspace-helper"])
            .output()
            .unwrap();
        let second = engine
            .docker(&["ps", "-aq", "--filter", "label=io.devctl.workspace-helper"])
            .unwrap();
        (main.stdout.is_empty() && second.trim().is_empty()).then_some(())
    });
    let evs = c.events(&[]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "EVENT_TYPE_WORKSPACE_MOVED" && e["node"] == b.as_str()),
        "{evs:?}"
    );
}

#[test]
fn extra_mounts_named_volumes_and_only_allowed_host_paths() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("hello"), "from the host\n").unwrap();
    let allowed = shared.path().to_str().unwrap().to_string();
    let c = TestCluster::start_with(&["a"], &["--allow-bind", &allowed]).unwrap();
    let cache = format!("{}-cache", c.prefix);
    let mount_cache = format!("{cache}:/cache");
    let mount_shared = format!("{allowed}:/shared:ro");
    c.devctl(&[
        "create",
        "m1",
        "--image",
        IMAGE,
        "--mount",
        &mount_cache,
        "--mount",
        &mount_shared,
    ])
    .ok();
    let (code, out) = sh(&c, "m1", "cat /shared/hello && echo kept > /cache/x");
    assert_eq!((code, out.as_str()), (0, "from the host\n"));
    let (code, _) = sh(&c, "m1", "touch /shared/nope");
    assert_ne!(code, 0, "a read-only bind is read-only");
    c.devctl(&["rm", "--force", "--purge", "m1"]).ok();
    // The named volume outlives its container, as on Docker.
    c.devctl(&["create", "m2", "--image", IMAGE, "--mount", &mount_cache])
        .ok();
    let (code, out) = sh(&c, "m2", "cat /cache/x");
    assert_eq!((code, out.as_str()), (0, "kept\n"));
    c.devctl(&["rm", "--force", "--purge", "m2"]).ok();

    // A host path the agent does not allow: refused, nothing left.
    let err = c
        .devctl(&["create", "m3", "--image", IMAGE, "--mount", "/etc:/hostetc"])
        .err();
    assert!(
        err.contains("FailedPrecondition")
            && err.contains("host path /etc may not be mounted")
            && err.contains("--allow-bind"),
        "{err}"
    );
    assert!(c.devctl(&["get", "m3"]).err().contains("NotFound"));
    assert!(c.engine_container("m3").is_none());
    assert!(
        volumes(&c, "a", "m3").is_empty(),
        "its new workspace went too"
    );
    // Shapes the scheduler refuses before any node is asked.
    let err = c
        .devctl(&["create", "m4", "--image", IMAGE, "--mount", "v:/workspace"])
        .err();
    assert!(
        err.contains("InvalidArgument") && err.contains("container.spec.mounts[0].target"),
        "{err}"
    );
    let err = c
        .devctl(&["create", "m4", "--image", IMAGE, "--workspace-path", "rel"])
        .err();
    assert!(err.contains("container.spec.workspace_path"), "{err}");
    let _ = Command::new("docker")
        .args(["volume", "rm", &cache])
        .output();
}
