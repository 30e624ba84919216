//! Small refusals of issue 11: out-of-range start times, local login
//! arguments checked before the join token is used up, capped join-token
//! lifetimes, no API renewal for agent certificates, and an admin-only
//! refusal that says what the call does.

use std::process::Command;

use devctl_tests::{TestCluster, bin};

#[test]
fn bad_times_ttls_contexts_and_agent_renewals_are_refused_up_front() {
    let c = TestCluster::start(&["a"]);

    // A start time out of the calendar is INVALID_ARGUMENT, and the
    // scheduler goes on serving.
    for args in [
        &["events", "--since", "1000000years"][..],
        &["audit", "--since", "1000000years"],
    ] {
        let err = c.devctl(args).err();
        assert!(
            err.contains("InvalidArgument") && err.contains("out of range"),
            "{args:?}: {err}"
        );
    }
    c.devctl(&["ls"]).ok();

    // A bad context is refused before the join token is redeemed: the
    // token still works afterwards.
    let config = c.scratch().join("alice/config.toml");
    let config = config.to_str().unwrap();
    let env = [("DEVCTL_CONFIG", config)];
    let token = c.join_token("developer", Some("alice"), "1h");
    let login = |context: &str| {
        c.devctl_env(
            &env,
            &[
                "login",
                "--server",
                &c.server,
                "--token",
                &token,
                "--context",
                context,
            ],
        )
    };
    let err = login("../bad").err();
    assert!(err.contains("context"), "{err}");
    let out = login("good").ok().stdout;
    assert!(out.contains("as alice (developer)"), "{out}");

    // Join tokens are short-lived: at most 30 days.
    let out = Command::new(bin("devctl-scheduler"))
        .args([
            "token",
            "create",
            "--role",
            "developer",
            "--ttl",
            "100000years",
        ])
        .arg("--data-dir")
        .arg(c.data_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--ttl") && err.contains("30d"),
        "{err}"
    );

    // An agent certificate is not renewed over the API (agents renew over
    // the bus).
    let agent = c.issue_cert("rogue-node", "agent");
    let before = std::fs::read_to_string(agent.join("cert.pem")).unwrap();
    let agent_dir = agent.to_str().unwrap();
    let err = c
        .devctl_env(
            &[("DEVCTL_SERVER", &c.server), ("DEVCTL_TLS_DIR", agent_dir)],
            &["login", "--renew"],
        )
        .err();
    assert!(
        err.contains("PermissionDenied") && err.contains("over the bus"),
        "{err}"
    );
    assert_eq!(
        before,
        std::fs::read_to_string(agent.join("cert.pem")).unwrap()
    );

    // A viewer's refused audit listing says what the call does.
    let viewer = c.issue_cert("vera", "viewer");
    let err = c.devctl_as(&viewer, &["audit"]).err();
    assert!(
        err.contains("reading the audit log needs the admin role"),
        "{err}"
    );
}
