//! API tokens end to end: created once, used by the CLI and by a Python
//! client generated from proto/ with grpcio-tools (bearer token and client
//! certificate), refused after revocation, and no credentials at all is
//! UNAUTHENTICATED.

use std::process::Command;

use devctl_tests::{IMAGE, TestCluster, generate_python_stubs as generate, python, repo_root};
use serde_json::Value;

struct Py<'a> {
    c: &'a TestCluster,
    stubs: std::path::PathBuf,
}

impl Py<'_> {
    /// Runs the example client with `auth` and `args`: (exit code, stdout,
    /// stderr).
    fn run(&self, auth: &[&str], args: &[&str]) -> (i32, String, String) {
        let out = Command::new(python())
            .arg(repo_root().join("docs/examples/python/devctl_client.py"))
            .args(["--server", self.c.server.trim_start_matches("https://")])
            .arg("--ca")
            .arg(self.c.admin_tls().join("ca.pem"))
            .args(auth)
            .args(args)
            .env("PYTHONPATH", &self.stubs)
            .output()
            .expect("run python");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn bearer_tokens_work_from_the_cli_and_a_generated_python_client() {
    let c = TestCluster::start(&["a"]);
    let py = Py {
        c: &c,
        stubs: c.scratch().join("py"),
    };
    generate(&py.stubs);

    // Created once by an admin; the secret is all stdout says.
    let created = c
        .devctl(&[
            "tokens",
            "create",
            "--name",
            "ci",
            "--role",
            "developer",
            "--ttl",
            "1d",
        ])
        .ok();
    let secret = created.stdout.trim().to_string();
    assert!(secret.starts_with("dvt_"), "{}", created.stdout);
    assert!(
        created.stderr.contains("shown only now"),
        "{}",
        created.stderr
    );
    let listed = c.devctl(&["tokens", "ls", "-o", "json"]).ok().stdout;
    assert!(
        listed.contains("\"ci\"") && !listed.contains(&secret),
        "{listed}"
    );

    // The CLI with the token and the CA only.
    let ca = c.admin_tls().join("ca.pem");
    let env = [
        ("DEVCTL_SERVER", c.server.as_str()),
        ("DEVCTL_API_TOKEN", secret.as_str()),
        ("DEVCTL_CA_FILE", ca.to_str().unwrap()),
    ];
    let made = c
        .devctl_env(
            &env,
            &[
                "create", "from-ci", "--image", IMAGE, "-o", "json", "--", "sleep", "3600",
            ],
        )
        .json();
    assert_eq!(made["owner"], "ci");

    // Python, bearer token: the token's identity is a developer, so it sees
    // its own container and only that.
    let (code, out, err) = py.run(&["--token", &secret], &["ls"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        list,
        serde_json::json!([{"name": "from-ci", "owner": "ci"}])
    );
    let (code, out, err) = py.run(
        &["--token", &secret],
        &[
            "create", "py-made", "--image", IMAGE, "--cmd", "sleep", "3600",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let made: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["owner"], "ci");

    // Python, client certificate (the admin's): sees everything.
    let admin = c.admin_tls();
    let (code, out, err) = py.run(
        &[
            "--cert",
            admin.join("cert.pem").to_str().unwrap(),
            "--key",
            admin.join("key.pem").to_str().unwrap(),
        ],
        &["ls"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from-ci") && out.contains("py-made"), "{out}");

    // Neither: UNAUTHENTICATED. A wrong token: UNAUTHENTICATED.
    let (code, _, err) = py.run(&[], &["ls"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("UNAUTHENTICATED"), "{err}");
    let (code, _, err) = py.run(&["--token", "dvt_0000_nope"], &["ls"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("UNAUTHENTICATED: the API token is not valid"),
        "{err}"
    );

    // A developer's token acts as the developer; they cannot mint admin
    // tokens or act for others.
    let alice = c.issue_cert("alice", "developer");
    let mine = c
        .devctl_as(&alice, &["tokens", "create", "--name", "alice-ci"])
        .ok()
        .stdout;
    let (code, out, err) = py.run(
        &["--token", mine.trim()],
        &[
            "create", "alices", "--image", IMAGE, "--cmd", "sleep", "3600",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"owner\": \"alice\""), "{out}");
    let err = c
        .devctl_as(
            &alice,
            &["tokens", "create", "--name", "root", "--role", "admin"],
        )
        .err();
    assert!(err.contains("PermissionDenied"), "{err}");
    let err = c
        .devctl_as(&alice, &["tokens", "create", "--name", "x", "--as", "bob"])
        .err();
    assert!(
        err.contains("PermissionDenied") && err.contains("only admins act for others"),
        "{err}"
    );
    // A token cannot mint tokens (they could outlive or outrank it).
    let err = c
        .devctl_env(
            &[
                ("DEVCTL_SERVER", c.server.as_str()),
                ("DEVCTL_API_TOKEN", mine.trim()),
                ("DEVCTL_CA_FILE", ca.to_str().unwrap()),
            ],
            &["tokens", "create", "--name", "child"],
        )
        .err();
    assert!(
        err.contains("PermissionDenied") && err.contains("cannot create tokens"),
        "{err}"
    );
    let err = c.devctl_as(&alice, &["tokens", "revoke", "ci"]).err();
    assert!(err.contains("PermissionDenied"), "{err}");
    let err = c.devctl(&["tokens", "create", "--name", "ci"]).err();
    assert!(err.contains("AlreadyExists"), "{err}");

    // Revoked: refused at once, from Python and the CLI.
    c.devctl(&["tokens", "revoke", "ci"]).ok();
    let (code, _, err) = py.run(&["--token", &secret], &["ls"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("UNAUTHENTICATED") && err.contains("revoked"),
        "{err}"
    );
    let err = c.devctl_env(&env, &["ls"]).err();
    assert!(
        err.contains("revoked") && err.contains("Unauthenticated"),
        "{err}"
    );
    let state = c.devctl(&["tokens", "ls", "-o", "json"]).json();
    let ci = state
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap();
    assert!(ci["revokeTime"].is_string(), "{ci}");

    // Revoking alice by name also ends the tokens she had made.
    c.revoke("alice");
    let (code, _, err) = py.run(&["--token", mine.trim()], &["ls"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("UNAUTHENTICATED") && err.contains("revoked"),
        "{err}"
    );
}

/// A token never carries more than its creator: a developer's viewer token
/// reads the developer's own containers and tokens, nothing of anyone
/// else's, and changes nothing.
#[test]
fn a_developers_viewer_token_reads_only_the_developers_own_containers() {
    let c = TestCluster::start(&["a"]);
    let alice = c.issue_cert("alice", "developer");
    let bob = c.issue_cert("bob", "developer");
    for (tls, name) in [(&alice, "a-box"), (&bob, "b-box")] {
        c.devctl_as(
            tls,
            &[
                "create",
                name,
                "--image",
                IMAGE,
                "--env",
                "SECRET=s3",
                "--",
                "sh",
                "-c",
                "echo hello; sleep 3600",
            ],
        )
        .ok();
    }
    c.devctl_as(&bob, &["tokens", "create", "--name", "bob-ci"])
        .ok();
    let made = c
        .devctl_as(
            &alice,
            &[
                "tokens",
                "create",
                "--name",
                "alice-view",
                "--role",
                "viewer",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(made["token"]["ownContainersOnly"], true, "{made}");
    let secret = made["secret"].as_str().unwrap().to_string();
    let ca = c.admin_tls().join("ca.pem");
    let env = [
        ("DEVCTL_SERVER", c.server.as_str()),
        ("DEVCTL_API_TOKEN", secret.as_str()),
        ("DEVCTL_CA_FILE", ca.to_str().unwrap()),
    ];

    // Bob's container, its logs, events, stats and tokens are out of reach.
    for args in [&["get", "b-box"][..], &["logs", "b-box"]] {
        let err = c.devctl_env(&env, args).err();
        assert!(
            err.contains("PermissionDenied") || err.contains("belongs to bob"),
            "{args:?}: {err}"
        );
    }
    let listed = c.devctl_env(&env, &["ls", "-o", "json"]).json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-box"]);
    let events = c.devctl_env(&env, &["events", "-o", "json"]).ok().stdout;
    assert!(
        events.contains("a-box") && !events.contains("b-box"),
        "{events}"
    );
    let stats = c
        .devctl_env(&env, &["stats", "--no-stream", "-o", "json"])
        .ok()
        .stdout;
    assert!(!stats.contains("b-box"), "{stats}");
    let tokens = c
        .devctl_env(&env, &["tokens", "ls", "-o", "json"])
        .ok()
        .stdout;
    assert!(
        tokens.contains("alice-view") && !tokens.contains("bob-ci"),
        "{tokens}"
    );

    // Alice's own: readable, not changeable.
    let mine = c.devctl_env(&env, &["get", "a-box", "-o", "json"]).json();
    assert_eq!(mine["owner"], "alice");
    let err = c.devctl_env(&env, &["stop", "a-box"]).err();
    assert!(err.contains("read-only"), "{err}");

    for (tls, name) in [(&alice, "a-box"), (&bob, "b-box")] {
        c.devctl_as(tls, &["rm", "--force", name]).ok();
    }
}
