//! Roles and ownership on every call: a developer sees and operates only
//! their own containers (another's is PERMISSION_DENIED), a viewer reads
//! everything and changes nothing, an admin acts for anyone.

use devctl_tests::{IMAGE, TestCluster, wait_until};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Ok,
    Denied,
}
use Expect::{Denied, Ok as Allowed};

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn every_call_checks_role_and_ownership() {
    let c = TestCluster::start(&["a"]);
    let node = c.node("a");
    let alice = c.issue_cert("alice", "developer");
    let bob = c.issue_cert("bob", "developer");
    let viewer = c.issue_cert("vera", "viewer");
    let admin = c.admin_tls();
    c.devctl_as(&alice, &["create", "a-box", "--image", IMAGE])
        .ok();
    c.devctl_as(&bob, &["create", "b-box", "--image", IMAGE])
        .ok();
    c.devctl_as(&viewer, &["create", "v-box", "--image", IMAGE])
        .err();

    // (who, command, expected): every call on bob's container.
    let who = |w: &str| match w {
        "alice" => &alice,
        "bob" => &bob,
        "viewer" => &viewer,
        _ => &admin,
    };
    let cases: &[(&str, &[&str], Expect)] = &[
        ("alice", &["get", "b-box"], Denied),
        ("viewer", &["get", "b-box"], Allowed),
        ("bob", &["get", "b-box"], Allowed),
        ("alice", &["logs", "b-box"], Denied),
        ("viewer", &["logs", "b-box"], Allowed),
        ("alice", &["exec", "b-box", "--", "true"], Denied),
        ("viewer", &["exec", "b-box", "--", "true"], Denied),
        ("bob", &["exec", "b-box", "--", "true"], Allowed),
        ("alice", &["stop", "b-box", "-t", "0"], Denied),
        ("viewer", &["stop", "b-box", "-t", "0"], Denied),
        ("alice", &["restart", "b-box", "-t", "0"], Denied),
        ("viewer", &["restart", "b-box", "-t", "0"], Denied),
        ("alice", &["extend", "b-box", "1h"], Denied),
        ("viewer", &["extend", "b-box", "1h"], Denied),
        ("alice", &["rm", "--force", "b-box"], Denied),
        ("viewer", &["rm", "--force", "b-box"], Denied),
        ("alice", &["ls", "--owner", "bob"], Denied),
        ("alice", &["nodes", "cordon", &node], Denied),
        ("bob", &["nodes", "drain", &node], Denied),
        ("viewer", &["nodes", "cordon", &node], Denied),
        ("viewer", &["nodes"], Allowed),
        ("alice", &["nodes"], Allowed),
        // The admin acts for anyone.
        ("admin", &["stop", "b-box", "-t", "0"], Allowed),
        ("alice", &["start", "b-box"], Denied),
        ("viewer", &["start", "b-box"], Denied),
        ("admin", &["start", "b-box"], Allowed),
        ("admin", &["extend", "b-box", "1h"], Allowed),
        ("bob", &["restart", "b-box", "-t", "0"], Allowed),
    ];
    for (w, args, expect) in cases {
        let r = c.devctl_as(who(w), args);
        match expect {
            Allowed => assert!(r.status.success(), "{w} {args:?}: {r:?}"),
            Denied => {
                let err = r.err();
                assert!(err.contains("PermissionDenied"), "{w} {args:?}: {err}");
            }
        }
    }
    // Denials name the owner and the way out.
    let err = c.devctl_as(&alice, &["stop", "b-box"]).err();
    assert!(err.contains("belongs to bob"), "{err}");
    // Nothing a denied call tried happened.
    let b = c.devctl(&["get", "b-box", "-o", "json"]).json();
    assert_eq!(b["status"]["state"], "CONTAINER_STATE_RUNNING", "{b}");

    // Listings: a developer sees their own; viewer and admin see all, and
    // can filter by owner.
    let mine = c.devctl_as(&alice, &["ls", "-o", "json"]).json();
    assert_eq!(names(&mine), ["a-box"]);
    let all = c.devctl_as(&viewer, &["ls", "-o", "json"]).json();
    assert_eq!(names(&all), ["a-box", "b-box"]);
    let bobs = c.devctl(&["ls", "--owner", "bob", "-o", "json"]).json();
    assert_eq!(names(&bobs), ["b-box"]);

    // Events and stats: a developer sees their own containers'.
    let evs = c.events(&[]);
    assert!(evs.iter().any(|e| e["container"] == "b-box"));
    let out = c.devctl_as(&alice, &["events", "-o", "json"]).ok().stdout;
    for line in out.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        assert_ne!(e["container"], "b-box", "alice saw {e}");
    }
    assert!(out.contains("a-box"), "{out}");
    let stats = c
        .devctl_as(&alice, &["stats", "--no-stream", "-o", "json"])
        .ok()
        .stdout;
    assert!(!stats.contains("b-box"), "{stats}");

    // Finally the owner removes it.
    c.devctl_as(&bob, &["rm", "--force", "b-box"]).ok();
}

#[test]
fn quotas_per_role_and_user_refuse_creates_with_the_numbers() {
    let c = TestCluster::start_opts(
        &["a"],
        &[],
        &[
            "--role-quota",
            "developer:containers=2,cpus=1",
            "--user-quota",
            "alice:containers=3",
            // A create without --cpus counts its default toward the quota.
            "--default-cpus",
            "0.5",
        ],
    )
    .unwrap();
    let alice = c.issue_cert("alice", "developer");
    let bob = c.issue_cert("bob", "developer");
    let create = |who: &std::path::Path, name: &str, extra: &[&str]| {
        let mut args = vec!["create", name, "--image", IMAGE];
        args.extend_from_slice(extra);
        c.devctl_as(who, &args)
    };
    create(&bob, "b1", &["--cpus", "0.5"]).ok();
    let err = create(&bob, "b2", &["--cpus", "0.75"]).err();
    assert!(err.contains("ResourceExhausted"), "{err}");
    assert!(
        err.contains("quota exceeded for bob: CPUs limit 1"),
        "{err}"
    );
    create(&bob, "b2", &["--cpus", "0.5"]).ok();
    let err = create(&bob, "b3", &[]).err();
    assert!(
        err.contains("quota exceeded for bob: containers limit 2, 2 in use"),
        "{err}"
    );
    // A stopped container still counts; a removed one frees its share.
    c.devctl_as(&bob, &["stop", "b2", "-t", "0"]).ok();
    create(&bob, "b3", &[]).err();
    c.devctl_as(&bob, &["rm", "b2"]).ok();
    create(&bob, "b3", &[]).ok();
    // alice's own quota replaces the role's: three, no CPU limit.
    create(&alice, "a1", &["--cpus", "1.2"]).ok();
    create(&alice, "a2", &[]).ok();
    create(&alice, "a3", &[]).ok();
    assert!(
        create(&alice, "a4", &[])
            .err()
            .contains("containers limit 3")
    );
    // Admins are exempt by default.
    for name in ["x1", "x2", "x3"] {
        c.devctl(&["create", name, "--image", IMAGE]).ok();
    }
    // Refused creates left nothing behind.
    let all = c.devctl(&["ls", "-o", "json"]).json();
    assert_eq!(
        names(&all),
        ["a1", "a2", "a3", "b1", "b3", "x1", "x2", "x3"]
    );
    assert_eq!(c.engine_containers().len(), 8);
}

#[test]
fn environment_values_are_shown_only_to_the_owner_and_admins() {
    let c = TestCluster::start(&["a"]);
    let bob = c.issue_cert("bob", "developer");
    let viewer = c.issue_cert("vera", "viewer");
    c.devctl_as(
        &bob,
        &[
            "create",
            "b-box",
            "--image",
            IMAGE,
            "--env",
            "DB_PASSWORD=hunter2",
        ],
    )
    .ok();
    for (who, tls) in [("bob", &bob), ("admin", &c.admin_tls())] {
        let got = c.devctl_as(tls, &["get", "b-box", "-o", "json"]).json();
        assert_eq!(got["spec"]["env"]["DB_PASSWORD"], "hunter2", "{who}: {got}");
        assert!(got.get("envRedacted").is_none(), "{who}: {got}");
    }
    // The viewer reads the container, the keys, and not one value.
    let got = c.devctl_as(&viewer, &["get", "b-box", "-o", "json"]);
    let shown = got.ok().stdout;
    assert!(!shown.contains("hunter2"), "{shown}");
    let got: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(got["spec"]["env"]["DB_PASSWORD"], "", "{got}");
    assert_eq!(got["envRedacted"], true, "{got}");
    let listed = c.devctl_as(&viewer, &["ls", "-o", "json"]).ok().stdout;
    assert!(!listed.contains("hunter2"), "{listed}");
    assert!(listed.contains("DB_PASSWORD"), "{listed}");
}

#[test]
fn open_streams_are_capped_per_identity() {
    let c = TestCluster::start_opts(&["a"], &[], &["--max-streams-per-identity", "2"]).unwrap();
    let alice = c.issue_cert("alice", "developer");
    c.create_ticker_as(&alice, "ticker");
    let within = std::time::Duration::from_secs(20);
    let (first, _) = c.follow_logs_as(&alice, "ticker", "tick", within);
    let (_second, _) = c.follow_logs_as(&alice, "ticker", "tick", within);
    // A third is refused, naming the cap; nothing else of alice's is.
    let err = c.devctl_as(&alice, &["logs", "-f", "ticker"]).err();
    assert!(err.contains("ResourceExhausted"), "{err}");
    assert!(err.contains("--max-streams-per-identity 2"), "{err}");
    let err = c.devctl_as(&alice, &["exec", "ticker", "--", "true"]).err();
    assert!(err.contains("ResourceExhausted"), "{err}");
    c.devctl_as(&alice, &["get", "ticker"]).ok();
    // The cap is per identity: an admin still streams.
    let (_admins, _) = c.follow_logs_as(&c.admin_tls(), "ticker", "tick", within);
    // A stream that ends frees its place (once the server sees the client
    // gone).
    drop(first);
    wait_until("a place for alice's next stream", within, || {
        c.devctl_as(&alice, &["exec", "ticker", "--", "true"])
            .status
            .success()
            .then_some(())
    });
}
