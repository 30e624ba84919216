//! Enrollment end to end: `devctl login` with one-time join tokens (used
//! twice, expired, for another cluster), contexts, renewal, and
//! revocation closing an open `logs -f` stream.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use devctl_tests::{CliResult, IMAGE, Proc, TestCluster, bin, issue_cert_with, wait_until};
use serde_json::Value;

fn config_env(path: &Path) -> Vec<(&'static str, String)> {
    vec![("DEVCTL_CONFIG", path.display().to_string())]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Waits until the wall clock has passed `unix` (a token's expiry, a
/// revocation's second): time passing, not synchronisation.
fn wait_past(unix: u64) {
    wait_until("the clock to pass", Duration::from_secs(5), || {
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            > unix)
            .then_some(())
    });
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `devctl login --server S --token T [--name N]` with the CLI environment
/// `env` (its DEVCTL_CONFIG says where the context goes).
fn login(c: &TestCluster, env: &[(&str, &str)], token: &str, name: Option<&str>) -> CliResult {
    let mut args = vec!["login", "--server", &c.server, "--token", token];
    if let Some(n) = name {
        args.extend(["--name", n]);
    }
    c.devctl_env(env, &args)
}

#[test]
fn login_with_a_join_token_makes_a_context_that_works_once() {
    let c = TestCluster::start(&["a"]);
    let config = c.scratch().join("alice/config.toml");
    let env = config_env(&config);
    let env = env_refs(&env);
    let token = c.join_token("developer", Some("alice"), "1h");

    let out = login(&c, &env, &token, None).ok().stdout;
    assert!(out.contains("as alice (developer)"), "{out}");
    // The key was made here and only its owner reads it.
    let ctx_dir = c.scratch().join("alice/contexts/127.0.0.1");
    let mode = std::fs::metadata(ctx_dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The context gives server and identity: no flags needed.
    let created = c
        .devctl_env(
            &env,
            &[
                "create", "mine", "--image", IMAGE, "-o", "json", "--", "sleep", "3600",
            ],
        )
        .json();
    assert_eq!(created["owner"], "alice");
    let contexts = c.devctl_env(&env, &["context", "ls", "-o", "json"]).json();
    assert_eq!(contexts[0]["name"], "127.0.0.1");
    assert_eq!(contexts[0]["current"], true);
    assert_eq!(contexts[0]["identity"], "alice");

    // The token worked once.
    let other = c.scratch().join("mallory/config.toml");
    let env2 = config_env(&other);
    let err = login(&c, &env_refs(&env2), &token, None).err();
    assert!(
        err.contains("already been used") && err.contains("Unauthenticated"),
        "{err}"
    );

    // Renewal: a new key and certificate for the same identity.
    let before = std::fs::read_to_string(ctx_dir.join("cert.pem")).unwrap();
    let key_before = std::fs::read_to_string(ctx_dir.join("key.pem")).unwrap();
    let out = c.devctl_env(&env, &["login", "--renew"]).ok().stdout;
    assert!(out.contains("renewed the certificate of alice"), "{out}");
    assert_ne!(
        before,
        std::fs::read_to_string(ctx_dir.join("cert.pem")).unwrap()
    );
    assert_ne!(
        key_before,
        std::fs::read_to_string(ctx_dir.join("key.pem")).unwrap()
    );
    let list = c.devctl_env(&env, &["ls", "-o", "json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // A context switch to one that does not exist is refused.
    let err = c.devctl_env(&env, &["context", "use", "nope"]).err();
    assert!(err.contains("no context named \"nope\""), "{err}");
}

#[test]
fn expired_foreign_and_misnamed_tokens_are_refused() {
    let c = TestCluster::start(&[]);
    let config = c.scratch().join("bob/config.toml");
    let env = config_env(&config);
    let env = env_refs(&env);

    // Expired.
    let token = c.join_token("developer", Some("bob"), "1s");
    wait_past(now_unix() + 1);
    let err = login(&c, &env, &token, None).err();
    assert!(err.contains("expired"), "{err}");

    // A token of another cluster: the joining side refuses before sending
    // it, because our server's CA is not the one the token pins.
    let other = c.scratch().join("other-cluster");
    let init = Command::new(bin("devctl-scheduler"))
        .args(["init", "--data-dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(init.status.success());
    let foreign = Command::new(bin("devctl-scheduler"))
        .args(["token", "create", "--role", "developer", "--data-dir"])
        .arg(&other)
        .output()
        .unwrap();
    let foreign = String::from_utf8_lossy(&foreign.stdout).trim().to_string();
    let err = login(&c, &env, &foreign, Some("bob")).err();
    assert!(
        err.contains("refusing to send the token") && err.contains("CA fingerprint"),
        "{err}"
    );

    // A token without a name needs one; one with a name refuses another.
    let unnamed = c.join_token("viewer", None, "1h");
    let err = login(&c, &env, &unnamed, None).err();
    assert!(
        err.contains("name:") && err.contains("InvalidArgument"),
        "{err}"
    );
    let out = login(&c, &env, &unnamed, Some("vera")).ok().stdout;
    assert!(out.contains("as vera (viewer)"), "{out}");
    let named = c.join_token("developer", Some("carol"), "1h");
    let err = login(&c, &env, &named, Some("dave")).err();
    assert!(err.contains("for \"carol\", not \"dave\""), "{err}");

    // A token that names nobody cannot take an existing identity.
    let unnamed = c.join_token("developer", None, "1h");
    let err = login(&c, &env, &unnamed, Some("admin")).err();
    assert!(
        err.contains("already an identity") && err.contains("AlreadyExists"),
        "{err}"
    );
    let err = login(&c, &env, &unnamed, Some("vera")).err();
    assert!(err.contains("already an identity"), "{err}");
    // Agent and admin tokens must name their identity.
    let out = Command::new(bin("devctl-scheduler"))
        .args(["token", "create", "--role", "agent", "--data-dir"])
        .arg(c.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An agent token is for agents.
    let agent = c.join_token("agent", Some("n1"), "1h");
    let err = login(&c, &env, &agent, None).err();
    assert!(err.contains("devctl-agent join"), "{err}");
    // Garbage is named as such.
    let err = login(&c, &env, "nonsense", None).err();
    assert!(err.contains("malformed"), "{err}");
}

/// Creates `name`, printing "tick" five times a second, as `tls`'s identity.
fn create_ticker(c: &TestCluster, tls: &Path, name: &str) {
    c.create_ticker_as(tls, name);
}

fn follow_logs(c: &TestCluster, tls: &Path, name: &str, within: Duration) -> (Proc, PathBuf) {
    c.follow_logs_as(tls, name, "tick", within)
}

#[test]
fn revocation_closes_open_streams_and_refuses_the_next_call() {
    let c = TestCluster::start(&["a"]);
    let alice = c.issue_cert("alice", "developer");
    create_ticker(&c, &alice, "ticker");
    let (mut follow, log) = follow_logs(&c, &alice, "ticker", Duration::from_secs(20));
    assert!(follow.is_running());

    c.revoke("alice");
    // Another identity's call right away re-reads the list first: the
    // stream must be closed all the same.
    c.devctl(&["ls"]).ok();
    let status = follow.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "logs -f ended without an error");
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains("revoked"), "{out}");

    let err = c.devctl_as(&alice, &["ls"]).err();
    assert!(
        err.contains("revoked") && err.contains("Unauthenticated"),
        "{err}"
    );
    // Others are unaffected; the container is still there.
    let got: Value = c.devctl(&["get", "ticker", "-o", "json"]).json();
    assert_eq!(got["owner"], "alice");

    // A certificate issued after the revocation works (a new laptop).
    wait_past(now_unix());
    let fresh = c.issue_cert("alice", "developer");
    c.devctl_as(&fresh, &["ls"]).ok();

    // Revoking one serial leaves the identity's other certificates alone.
    let bob1 = c.issue_cert("bob", "developer");
    let serial = serial_of(&bob1);
    c.revoke(&serial);
    let err = c.devctl_as(&bob1, &["ls"]).err();
    assert!(err.contains("revoked"), "{err}");
}

fn try_serial(dir: &Path) -> Option<String> {
    let pem = std::fs::read_to_string(dir.join("cert.pem")).ok()?;
    Some(
        devctl_proto::identity::Identity::from_pem(&pem)
            .ok()?
            .serial,
    )
}

fn serial_of(dir: &Path) -> String {
    try_serial(dir).expect("a readable certificate")
}

#[test]
fn an_agent_joins_with_a_token_runs_containers_renews_and_is_revoked_off_the_bus() {
    // Agent certificates of 12 s: renewed after 8 s.
    let mut c = TestCluster::start_opts(&[], &[], &["--agent-cert-ttl", "12s"]).unwrap();
    let node = c.node("j");
    let token = c.join_token("agent", Some(&node), "1h");
    let join = |token: &str, dir: &Path| {
        Command::new(bin("devctl-agent"))
            .args([
                "join",
                "--server",
                &c.server,
                "--token",
                token,
                "--node",
                &node,
                "--data-dir",
            ])
            .arg(dir)
            .output()
            .unwrap()
    };
    let out = join(&token, &c.agent_dir("j"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls = c.agent_tls("j");
    let mode = std::fs::metadata(tls.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The token worked once.
    let again = join(&token, &c.scratch().join("second"));
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already been used"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The joined agent runs containers (its certificate is its bus user).
    c.start_agent("j", &[]).unwrap();
    c.wait_nodes_ready(std::slice::from_ref(&node));
    let made = c
        .devctl(&[
            "create",
            "on-joined",
            "--image",
            IMAGE,
            "--node",
            &node,
            "-o",
            "json",
            "--",
            "sleep",
            "3600",
        ])
        .json();
    assert_eq!(made["status"]["state"], "CONTAINER_STATE_RUNNING");

    // It renews its certificate over the bus before it runs out.
    let first = serial_of(&tls);
    let renewed = wait_until(
        "the agent's certificate renewed",
        Duration::from_secs(40),
        || {
            // The directory is swapped as a whole: it may be missing for an
            // instant.
            let s = try_serial(&tls)?;
            (s != first).then_some(s)
        },
    );
    assert_ne!(renewed, first);
    // The agent logs it just after it swapped the directory.
    wait_until(
        "the agent to log its renewal",
        Duration::from_secs(5),
        || {
            c.agent("j")
                .log()
                .contains("certificate renewed")
                .then_some(())
        },
    );
    c.devctl(&["exec", "on-joined", "--", "true"]).ok();

    // Revoking the node takes it off the bus: the agent stops.
    c.revoke(&node);
    let status = c.agent("j").wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        c.agent("j")
            .log()
            .contains("refused this node's certificate"),
        "{}",
        c.agent("j").log()
    );
}

#[test]
fn a_stream_ends_when_its_certificate_expires() {
    let c = TestCluster::start(&["a"]);
    create_ticker(&c, &c.admin_tls(), "ticks");
    // Issued once the container runs; long enough to open the stream on a
    // loaded machine, short enough to run out while it streams.
    let brief = c.scratch().join("brief");
    issue_cert_with(
        &c.data_dir(),
        "brief",
        "admin",
        &brief,
        &["--valid-for", "12s"],
    )
    .unwrap();
    let (mut follow, log) = follow_logs(&c, &brief, "ticks", Duration::from_secs(10));
    let status = follow.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "logs -f ended without an error");
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains("has expired"), "{out}");
}
