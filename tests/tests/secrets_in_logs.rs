//! Nothing secret in logs: a full run at debug level — an agent joining
//! with a token, a user logging in with one, an API token created and
//! used, a container with a secret in its environment, exec, logs, a
//! renewal — then every log of the scheduler, the agents, nats-server and
//! the CLI's error output is searched for every secret the run handled.

use std::{path::Path, process::Command, time::Duration};

use devctl_tests::{IMAGE, TestCluster, bin, wait_until};

/// The base64 body of a PEM file (its secret part, for a key).
fn pem_body(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

#[test]
fn a_full_run_at_debug_level_logs_no_token_key_or_secret() {
    let mut c = TestCluster::start_env(
        &["a"],
        &[],
        &["--agent-cert-ttl", "12s"],
        &[("RUST_LOG", "debug")],
    )
    .unwrap();
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut stderr = String::new();

    // An agent joins with a token (and renews after 8 s).
    let node = c.node("j");
    let agent_token = c.join_token("agent", Some(&node), "10m");
    let out = Command::new(bin("devctl-agent"))
        .args(["join", "--server", &c.server, "--node", &node, "--data-dir"])
        .arg(c.agent_dir("j"))
        .env("DEVCTL_JOIN_TOKEN", &agent_token)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stderr.push_str(&String::from_utf8_lossy(&out.stderr));
    c.start_agent("j", &[]).unwrap();
    c.wait_nodes_ready(std::slice::from_ref(&node));

    // A user logs in with a token.
    let user_token = c.join_token("developer", Some("alice"), "10m");
    let config = c.scratch().join("alice/config.toml");
    let env = [
        ("DEVCTL_CONFIG", config.to_str().unwrap()),
        ("RUST_LOG", "debug"),
    ];
    let login = c.devctl_env(
        &env,
        &["login", "--server", &c.server, "--token", &user_token],
    );
    stderr.push_str(&login.ok().stderr);

    // An API token, created and used.
    let created = c.devctl(&["tokens", "create", "--name", "ci"]).ok();
    let api_token = created.stdout.trim().to_string();
    stderr.push_str(&created.stderr);
    let ca = c.admin_tls().join("ca.pem");
    let token_env = [
        ("DEVCTL_SERVER", c.server.as_str()),
        ("DEVCTL_API_TOKEN", api_token.as_str()),
        ("DEVCTL_CA_FILE", ca.to_str().unwrap()),
        ("RUST_LOG", "debug"),
    ];
    let env_secret = format!("s3cret-{}", uuid::Uuid::new_v4().simple());
    let made = c.devctl_env(
        &token_env,
        &[
            "create",
            "vault",
            "--image",
            IMAGE,
            "--node",
            &node,
            "--env",
            &format!("DB_PASSWORD={env_secret}"),
            "--",
            "sleep",
            "3600",
        ],
    );
    stderr.push_str(&made.ok().stderr);
    // A wrong token is refused; its text must not be logged either.
    let wrong = format!("dvt_{}_not-the-secret", &api_token[4..16]);
    let refused = c.devctl_env(
        &[
            ("DEVCTL_SERVER", c.server.as_str()),
            ("DEVCTL_API_TOKEN", wrong.as_str()),
            ("DEVCTL_CA_FILE", ca.to_str().unwrap()),
        ],
        &["ls"],
    );
    stderr.push_str(&refused.err());
    let exec = c.devctl_env(
        &token_env,
        &[
            "exec",
            "vault",
            "--",
            "sh",
            "-c",
            "echo $DB_PASSWORD >/dev/null",
        ],
    );
    stderr.push_str(&exec.ok().stderr);
    stderr.push_str(&c.devctl(&["logs", "vault"]).ok().stderr);

    // Let the agent renew once (a key made and a certificate sent).
    let first = std::fs::read_to_string(c.agent_tls("j").join("cert.pem")).unwrap();
    wait_until("the agent's renewal", Duration::from_secs(40), || {
        let now = std::fs::read_to_string(c.agent_tls("j").join("cert.pem")).ok()?;
        (now != first).then_some(())
    });

    secrets.push(("agent join token".into(), agent_token.clone()));
    secrets.push(("user join token".into(), user_token.clone()));
    // The MAC alone is what makes a join token.
    secrets.push((
        "join token MAC".into(),
        agent_token.rsplit('.').next().unwrap().into(),
    ));
    secrets.push(("API token".into(), api_token.clone()));
    secrets.push((
        "API token secret part".into(),
        api_token.splitn(3, '_').nth(2).unwrap().into(),
    ));
    secrets.push(("wrong API token".into(), wrong));
    secrets.push(("container env secret".into(), env_secret));
    for key in [
        c.data_dir().join("ca/ca-key.pem"),
        c.data_dir().join("server/key.pem"),
        c.data_dir().join("bus/key.pem"),
        c.admin_tls().join("key.pem"),
        c.agent_tls("j").join("key.pem"),
        c.agent_tls("a").join("key.pem"),
        c.scratch().join("alice/contexts/127.0.0.1/key.pem"),
    ] {
        let body = pem_body(&key);
        // Any 40 characters of a key would be a leak; check a few slices.
        for (i, piece) in [
            &body[..40],
            &body[body.len() / 2..body.len() / 2 + 40],
            &body[body.len() - 40..],
        ]
        .into_iter()
        .enumerate()
        {
            secrets.push((format!("{} (slice {i})", key.display()), piece.to_string()));
        }
    }
    let join_key = std::fs::read(c.data_dir().join("ca/join-key")).unwrap();
    use base64::Engine;
    secrets.push((
        "join key".into(),
        base64::engine::general_purpose::STANDARD.encode(&join_key),
    ));
    secrets.push((
        "join key (hex)".into(),
        join_key.iter().map(|b| format!("{b:02x}")).collect(),
    ));

    // Every log of the run.
    let mut logs: Vec<(String, String)> = vec![("CLI stderr".into(), stderr)];
    for entry in std::fs::read_dir(c.scratch()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "log") {
            logs.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    let total: usize = logs.iter().map(|(_, l)| l.len()).sum();
    // The flows ran and were logged: the search means something.
    for said in [
        "identity joined",
        "API token created",
        "agent certificate renewed",
    ] {
        assert!(
            logs.iter()
                .any(|(n, l)| n.contains("scheduler") && l.contains(said)),
            "the scheduler's log does not say {said:?}"
        );
    }
    assert!(total > 2_000, "only {total} bytes of logs");
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is too short to search for");
        for (log, text) in &logs {
            assert!(!text.contains(secret.as_str()), "{what} appears in {log}");
        }
    }
    for (log, text) in &logs {
        assert!(
            !text.contains("PRIVATE KEY"),
            "a private key appears in {log}"
        );
    }
}
