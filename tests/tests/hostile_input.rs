//! Hostile input through a client generated from proto/: every oversized or
//! malformed field is refused at the API edge with INVALID_ARGUMENT naming
//! it (or OUT_OF_RANGE / RESOURCE_EXHAUSTED past the transport's message
//! limit), nothing reaches an engine, and the scheduler keeps serving.

use std::process::Command;

use devctl_tests::{IMAGE, TestCluster, generate_python_stubs, python, repo_root};

#[test]
fn hostile_input_from_a_generated_client_is_refused_field_by_field() {
    let c = TestCluster::start(&["a"]);
    c.devctl(&["create", "target", "--image", IMAGE]).ok();
    let stubs = c.scratch().join("py");
    generate_python_stubs(&stubs);

    let tls = c.admin_tls();
    let out = Command::new(python())
        .arg(repo_root().join("tests/python/hostile_input.py"))
        .args(["--server", c.server.trim_start_matches("https://")])
        .arg("--ca")
        .arg(tls.join("ca.pem"))
        .arg("--cert")
        .arg(tls.join("cert.pem"))
        .arg("--key")
        .arg(tls.join("key.pem"))
        .args(["--running", "target"])
        .env("PYTHONPATH", &stubs)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        results.len() > 40,
        "the script ran its cases: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for r in &results {
        eprintln!("{r}");
    }
    let wrong: Vec<_> = results.iter().filter(|r| r["ok"] != true).collect();
    assert!(wrong.is_empty(), "answered wrongly: {wrong:#?}");
    assert!(out.status.success());
    for r in &results {
        assert!(
            r["code"] != "INTERNAL" && r["code"] != "UNKNOWN",
            "user input surfaced as {r}"
        );
    }

    // Nothing reached an engine; the scheduler still serves.
    let names = c.engine_names();
    assert_eq!(names, ["target"]);
    c.devctl(&["create", "after", "--image", IMAGE]).ok();
    assert_eq!(
        c.devctl(&["ls", "-o", "json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let log = c.scheduler.as_ref().unwrap().log();
    assert!(!log.contains("internal error"), "{log}");
}
