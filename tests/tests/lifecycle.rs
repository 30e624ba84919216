//! create → running on the engine with devctl's labels and limits; each
//! lifecycle command changes the engine's state; ls/get and -o json/yaml.

use devctl_tests::{IMAGE, TestCluster, engine_status};

#[test]
fn create_stop_start_restart_rm_drive_the_engine() {
    let c = TestCluster::start(&["a"]);
    let node = c.node("a");

    let created = c
        .devctl(&[
            "create",
            "web",
            "--image",
            IMAGE,
            "--cpus",
            "0.5",
            "--memory",
            "64m",
            "--env",
            "EDITOR=vi",
            "--label",
            "team=platform",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(created["name"], "web");
    assert_eq!(created["spec"]["image"], IMAGE);
    assert_eq!(created["status"]["state"], "CONTAINER_STATE_RUNNING");
    assert_eq!(created["status"]["node"], node.as_str());
    assert_eq!(created["owner"], "admin");

    // The engine's view, not only the scheduler's.
    let engine = c.engine_container("web").expect("container on the engine");
    assert_eq!(engine_status(&engine), "running");
    let labels = &engine["Config"]["Labels"];
    assert_eq!(labels["io.devctl.managed"], "true");
    assert_eq!(labels["io.devctl.name"], "web");
    assert_eq!(labels["io.devctl.id"], created["id"]);
    assert_eq!(labels["io.devctl.owner"], "admin");
    assert_eq!(labels["io.devctl.node"], node.as_str());
    assert_eq!(labels["team"], "platform");
    assert_eq!(engine["HostConfig"]["NanoCpus"], 500_000_000i64);
    assert_eq!(engine["HostConfig"]["Memory"], 64i64 << 20);
    assert!(
        engine["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "EDITOR=vi")
    );
    assert_eq!(created["status"]["runtimeId"], engine["Id"]);

    // ls and get agree.
    let list = c.devctl(&["ls", "-o", "json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["status"]["state"], "CONTAINER_STATE_RUNNING");
    let table = c.devctl(&["ls"]).ok().stdout;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("web") && table.contains("running"),
        "{table}"
    );
    let yaml = c.devctl(&["get", "web", "-o", "yaml"]).ok().stdout;
    assert!(yaml.contains("state: CONTAINER_STATE_RUNNING"), "{yaml}");

    // stop
    let stopped = c.devctl(&["stop", "web", "-o", "json"]).json();
    assert_eq!(stopped["status"]["state"], "CONTAINER_STATE_STOPPED");
    assert_eq!(stopped["spec"]["desiredState"], "DESIRED_STATE_STOPPED");
    assert!(stopped["status"]["exitCode"].is_number(), "{stopped}");
    assert_eq!(engine_status(&c.engine_container("web").unwrap()), "exited");
    assert_eq!(
        c.devctl(&["get", "web", "-o", "json"]).json()["status"]["state"],
        "CONTAINER_STATE_STOPPED"
    );

    // start
    let started = c.devctl(&["start", "web", "-o", "json"]).json();
    assert_eq!(started["status"]["state"], "CONTAINER_STATE_RUNNING");
    let engine = c.engine_container("web").unwrap();
    assert_eq!(engine_status(&engine), "running");
    let first_start = engine["State"]["StartedAt"].as_str().unwrap().to_string();

    // restart: running again, with a new start time.
    let restarted = c
        .devctl(&["restart", "web", "-t", "1", "-o", "json"])
        .json();
    assert_eq!(restarted["status"]["state"], "CONTAINER_STATE_RUNNING");
    let engine = c.engine_container("web").unwrap();
    assert_eq!(engine_status(&engine), "running");
    assert_ne!(engine["State"]["StartedAt"].as_str().unwrap(), first_start);

    // rm of a running container needs --force.
    let err = c.devctl(&["rm", "web"]).err();
    assert!(
        err.contains("--force") && err.contains("FailedPrecondition"),
        "{err}"
    );
    assert!(c.engine_container("web").is_some());
    c.devctl(&["rm", "web", "--force"]).ok();
    assert!(
        c.engine_container("web").is_none(),
        "removed from the engine"
    );
    assert_eq!(
        c.devctl(&["ls", "-o", "json"]).json(),
        serde_json::json!([])
    );
    let err = c.devctl(&["get", "web"]).err();
    assert!(err.contains("NotFound"), "{err}");

    // rm of a stopped container needs no --force.
    c.devctl(&["create", "tmp", "--image", IMAGE]).ok();
    c.devctl(&["stop", "tmp", "-t", "0"]).ok();
    c.devctl(&["rm", "tmp"]).ok();
    assert!(c.engine_container("tmp").is_none());
}

#[test]
fn a_command_after_double_dash_runs_in_the_container() {
    let c = TestCluster::start(&["a"]);
    let created = c
        .devctl(&[
            "create",
            "job",
            "--image",
            IMAGE,
            "-o",
            "json",
            "--",
            "sh",
            "-c",
            "sleep 3600",
        ])
        .json();
    assert_eq!(
        created["spec"]["command"],
        serde_json::json!(["sh", "-c", "sleep 3600"])
    );
    let engine = c.engine_container("job").unwrap();
    assert_eq!(
        engine["Config"]["Cmd"],
        serde_json::json!(["sh", "-c", "sleep 3600"])
    );
    assert_eq!(engine_status(&engine), "running");
}
