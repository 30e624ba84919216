//! One registry of identities: a join token that names nobody cannot join
//! as a person `issue-cert` made, an agent's node name or the scheduler's
//! own name, and five such joins racing for one new name have one winner.

use std::path::Path;

use devctl_tests::{CliResult, TestCluster};

fn login_as(c: &TestCluster, config: &Path, token: &str, name: &str) -> CliResult {
    let config = config.display().to_string();
    c.devctl_env(
        &[("DEVCTL_CONFIG", &config)],
        &[
            "login", "--server", &c.server, "--token", token, "--name", name,
        ],
    )
}

#[test]
fn an_unnamed_token_cannot_take_an_existing_identity() {
    let mut c = TestCluster::start(&["a"]);
    let config = c.scratch().join("mallory/config.toml");
    // Made while the scheduler runs (it holds the store).
    c.issue_cert("dave", "developer");
    for (name, kind) in [
        ("dave", "person"),
        (c.node("a").as_str(), "agent"),
        ("devctl-scheduler", "the scheduler"),
    ] {
        let token = c.join_token("developer", None, "1h");
        let err = login_as(&c, &config, &token, name).err();
        assert!(
            err.contains("AlreadyExists")
                && err.contains(&format!("already an identity of this cluster ({kind}")),
            "{name}: {err}"
        );
        // The refused join did not use the token up.
        let fresh = format!("fresh-{}", name.len());
        let out = login_as(&c, &config, &token, &fresh).ok().stdout;
        assert!(out.contains(&format!("as {fresh} (developer)")), "{out}");
    }
    // With the scheduler stopped, issue-cert records into the store
    // itself, and refuses to make a person of an agent's name.
    drop(c.scheduler.take());
    let issue = |name: &str| {
        std::process::Command::new(devctl_tests::bin("devctl-scheduler"))
            .args(["issue-cert", "--role", "developer", "--name", name, "--out"])
            .arg(c.scratch().join(format!("bundle-{name}")))
            .arg("--data-dir")
            .arg(c.data_dir())
            .output()
            .unwrap()
    };
    let out = issue(&c.node("a"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already an identity"),
        "{err}"
    );
    assert!(issue("erin").status.success());
    c.start_scheduler().unwrap();
    let token = c.join_token("developer", None, "1h");
    let err = login_as(&c, &config, &token, "erin").err();
    assert!(err.contains("AlreadyExists"), "{err}");
}

#[test]
fn five_unnamed_joins_racing_for_one_name_have_one_winner() {
    let c = TestCluster::start(&[]);
    let tokens: Vec<String> = (0..5).map(|_| c.join_token("viewer", None, "1h")).collect();
    let results: Vec<CliResult> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let c = &c;
                s.spawn(move || {
                    login_as(
                        c,
                        &c.scratch().join(format!("racer-{i}/config.toml")),
                        t,
                        "zoe",
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = results.iter().filter(|r| r.status.success()).count();
    assert_eq!(won, 1, "{results:#?}");
    for r in results.iter().filter(|r| !r.status.success()) {
        assert!(r.stderr.contains("AlreadyExists"), "{}", r.stderr);
    }
}
