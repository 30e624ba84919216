//! Terminal escape injection: control characters are refused where no
//! legitimate use needs them, and the CLI escapes what it prints to a
//! terminal (`-o json` stays exact).

use devctl_tests::{IMAGE, TestCluster, wait_until};
use std::time::Duration;

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
        (vec!["--label", label.as_str()], "container.labels"),
        (vec!["--env", env.as_str()], "container.env"),
        (vec!["--", "sh", "-c", cmd.as_str()], "container.command[2]"),
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

    c.devctl_as(&alice, &["rm", "--force", "ok-box"]).ok();
}
