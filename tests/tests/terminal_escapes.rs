//! Terminal escape injection: control characters are refused where no
//! legitimate use needs them, and the CLI escapes what it prints to a
//! terminal (`-o json` stays exact).

use std::{process::Command, time::Duration};

use devctl_tests::{IMAGE, TestCluster, generate_python_stubs, python, wait_until};

/// An unauthenticated `Join` (a bogus token, a hostile name) through a
/// client generated from proto/: no credentials at all.
const ANONYMOUS_JOIN: &str = r#"
import sys, grpc
from devctl.v1 import access_pb2, access_pb2_grpc
channel = grpc.secure_channel(sys.argv[1], grpc.ssl_channel_credentials(open(sys.argv[2], "rb").read()))
try:
    access_pb2_grpc.EnrollServiceStub(channel).Join(access_pb2.JoinRequest(token="dvj_bogus", name="j]0;pwned[1A[2K"))
except grpc.RpcError as e:
    print(e.code())
"#;

/// An OSC title change ended by BEL, then a screen clear.
const HOSTILE: &str = "x\u{1b}]0;pwned\u{7}\u{1b}[2J";

#[test]
fn control_characters_are_refused_at_create_and_escaped_when_printed() {
    let c = TestCluster::start(&["a"]);
    let alice = c.issue_cert("alice", "developer");

    // Refused at create, naming the field.
    let label = format!("team={HOSTILE}");
    let cmd = format!("echo {HOSTILE}");
    let env = format!("GREETING={HOSTILE}");
    for (args, field) in [
        (vec!["--label", label.as_str()], "container.spec.labels"),
        (vec!["--env", env.as_str()], "container.spec.env"),
        (
            vec!["--", "sh", "-c", cmd.as_str()],
            "container.spec.command[2]",
        ),
    ] {
        let mut all = vec!["create", "esc-box", "--image", IMAGE];
        all.extend(args);
        let err = c.devctl_as(&alice, &all).err();
        assert!(
            err.contains(field) && !err.contains('\u{1b}'),
            "{field}: {err}"
        );
    }
    // Tab and newline stay allowed in env values.
    c.devctl_as(
        &alice,
        &[
            "create",
            "ok-box",
            "--image",
            IMAGE,
            "--env",
            "MULTI=a\tb\nc",
            "--",
            "sleep",
            "3600",
        ],
    )
    .ok();

    // What a caller sent lands in the audit log (the target of a refused
    // call); the CLI prints it escaped, and exact with -o json.
    let name = format!("a{HOSTILE}");
    c.devctl_as(&alice, &["stop", &name]).err();
    let json = wait_until(
        "the refused call in the audit log",
        Duration::from_secs(10),
        || {
            let out = c
                .devctl(&["audit", "--identity", "alice", "-o", "json"])
                .ok()
                .stdout;
            out.contains("\\u001b]0;pwned").then_some(out)
        },
    );
    assert!(json.contains("StopContainer"), "{json}");
    let table = c.devctl(&["audit", "--identity", "alice"]).ok().stdout;
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{7}'),
        "raw control characters in {table:?}"
    );
    assert!(table.contains("\\x1b]0;pwned\\x07\\x1b[2J"), "{table}");

    // The same without credentials: a Join with a bogus token (its name is
    // the audit target; ESC [1A ESC [2K would erase the row above).
    let stubs = c.scratch().join("py");
    generate_python_stubs(&stubs);
    let out = Command::new(python())
        .args([
            "-c",
            ANONYMOUS_JOIN,
            c.server.trim_start_matches("https://"),
        ])
        .arg(c.admin_tls().join("ca.pem"))
        .env("PYTHONPATH", &stubs)
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout);
    assert!(
        code.contains("INVALID_ARGUMENT") || code.contains("UNAUTHENTICATED"),
        "{out:?}"
    );
    let table = wait_until(
        "the anonymous Join in the audit log",
        Duration::from_secs(10),
        || {
            let out = c.devctl(&["audit"]).ok().stdout;
            out.contains("Join").then_some(out)
        },
    );
    assert!(!table.contains('\u{1b}'), "raw ESC in {table:?}");
    assert!(
        table.contains("j\\x1b]0;pwned\\x07\\x1b[1A\\x1b[2K"),
        "{table}"
    );

    c.devctl_as(&alice, &["rm", "--force", "ok-box"]).ok();
}
