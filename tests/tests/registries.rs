//! Pulls from a real registry (docker-registry with htpasswd on loopback)
//! with credentials an admin stored: anonymous and wrong credentials are
//! refused with REGISTRY_AUTH_FAILED and leave nothing behind, the right
//! ones pull and run, `--pull always` pulls again, `--pull missing` does
//! not when the image is there, an unreachable registry and an unknown
//! image say so; developers may not touch the credentials; and the
//! password appears in no log, no listing and no audit record.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use devctl_tests::{CliResult, IMAGE, TestCluster, TestRegistry, engine_has_image, wait_until};

/// `devctl registries add HOST --username USER --password-stdin` as admin.
fn add(c: &TestCluster, host: &str, user: &str, password: &str) -> CliResult {
    let mut cmd: Command = c.devctl_command();
    cmd.args([
        "registries",
        "add",
        host,
        "--username",
        user,
        "--password-stdin",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // A line end, as `echo` adds: not part of the password.
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    CliResult::from(child.wait_with_output().unwrap())
}

/// Creates `name` from `image` over gRPC as admin: the refusal's code and
/// `ErrorInfo.reason`.
fn refused_create(c: &TestCluster, name: &str, image: &str) -> (tonic::Code, String, String) {
    use devctl_proto::pb;
    use tonic_types::StatusExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = c.grpc_channel(&c.admin_tls()).await;
        let mut client = pb::container_service_client::ContainerServiceClient::new(channel);
        let status = client
            .create_container(pb::CreateContainerRequest {
                container: Some(pb::Container {
                    name: name.into(),
                    spec: Some(pb::ContainerSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect_err("the create is refused");
        let reason = status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default();
        (status.code(), reason, status.message().to_string())
    })
}

/// The container `name` is neither recorded nor on the engine.
fn nothing_left(c: &TestCluster, name: &str) {
    let err = c.devctl(&["get", name]).err();
    assert!(err.contains("(NotFound)"), "{err}");
    assert!(
        !c.engine_names()
            .iter()
            .any(|n| n.contains(&format!("-{name}-"))),
        "{:?}",
        c.engine_names()
    );
}

#[test]
fn pulls_from_a_private_registry_with_stored_credentials() {
    let c = TestCluster::start_env(&["a"], &[], &[], &[("RUST_LOG", "debug")]).unwrap();
    let password = format!("Pw-{}", uuid::Uuid::new_v4().simple());
    let wrong = format!("Wrong-{}", uuid::Uuid::new_v4().simple());
    let reg = TestRegistry::start(&c.scratch().join("registry"), "bot", &password).unwrap();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let image = reg.push(IMAGE, &format!("dev/busybox:{tag}")).unwrap();
    assert!(!engine_has_image(&image), "{image} still on the engine");
    let mut stderr = String::new();

    // No credentials stored: the registry wants some.
    let (code, reason, message) = refused_create(&c, "anon", &image);
    assert_eq!(
        (code, reason.as_str()),
        (tonic::Code::FailedPrecondition, "REGISTRY_AUTH_FAILED"),
        "{message}"
    );
    let err = c.devctl(&["create", "anon", "--image", &image]).err();
    assert!(
        err.contains(&format!("devctl registries add {}", reg.host)),
        "{err}"
    );
    nothing_left(&c, "anon");

    // Developers may neither list nor store credentials.
    let dev = c.issue_cert("alice", "developer");
    let err = c.devctl_as(&dev, &["registries", "ls"]).err();
    assert!(
        err.contains("PermissionDenied") || err.contains("admin role"),
        "{err}"
    );
    let err = c.devctl_as(&dev, &["registries", "rm", &reg.host]).err();
    assert!(err.contains("admin role"), "{err}");

    // Malformed input is refused before anything is stored.
    let err = add(&c, "https://x.example.com", "bot", "pw").err();
    assert!(
        err.contains("(InvalidArgument)") && err.contains("host:"),
        "{err}"
    );
    let err = add(&c, &reg.host, "bot", "").err();
    assert!(err.contains("--password-stdin: stdin was empty"), "{err}");
    let listed = c.devctl(&["registries", "ls", "-o", "json"]).ok().stdout;
    assert!(!listed.contains("x.example.com"), "{listed}");

    // Wrong credentials: refused, nothing left.
    stderr.push_str(&add(&c, &reg.host, "bot", &wrong).ok().stderr);
    let (_, reason, _) = refused_create(&c, "wrong", &image);
    assert_eq!(reason, "REGISTRY_AUTH_FAILED");
    let err = c.devctl(&["create", "wrong", "--image", &image]).err();
    assert!(err.contains("refused the stored credentials"), "{err}");
    assert!(err.contains("(FailedPrecondition)"), "{err}");
    stderr.push_str(&err);
    nothing_left(&c, "wrong");

    // The right ones (replacing the wrong): pulled and running.
    stderr.push_str(&add(&c, &reg.host, "bot", &password).ok().stderr);
    let listed = c.devctl(&["registries", "ls", "-o", "json"]).ok();
    assert!(listed.stdout.contains(&reg.host), "{}", listed.stdout);
    assert!(listed.stdout.contains("\"bot\""), "{}", listed.stdout);
    let table = c.devctl(&["registries", "ls"]).ok();
    assert!(table.stdout.contains(&reg.host), "{}", table.stdout);
    for out in [&listed.stdout, &table.stdout] {
        assert!(!out.contains(&password) && !out.contains(&wrong));
    }
    let before = reg.manifest_requests("dev/busybox");
    let made = c
        .devctl(&["create", "web", "--image", &image, "--pull", "missing"])
        .ok();
    stderr.push_str(&made.stderr);
    assert!(made.stdout.contains("running"), "{}", made.stdout);
    assert!(
        made.stderr.contains(&format!("pulled image {image}")),
        "no pull progress shown: {} events {:?}",
        made.stderr,
        c.events(&["--container", "blob"])
    );
    assert!(engine_has_image(&image));
    let after_first = reg.manifest_requests("dev/busybox");
    assert!(after_first > before, "the registry served no manifest");
    let events = c.events(&["--container", "web"]);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "EVENT_TYPE_IMAGE_PULLED"),
        "{events:?}"
    );

    // An image whose layers the engine lacks: its download is shown as
    // it goes, by the CLI and in the events.
    let blob_tag = format!("devctl-test/blob-{tag}:1");
    let ctx = c.scratch().join("blob");
    std::fs::create_dir_all(&ctx).unwrap();
    // Incompressible bytes of this run's own (xorshift), so no layer of
    // it is on the engine already.
    let mut x = u64::from_str_radix(tag, 16).unwrap() | 1;
    let blob: Vec<u8> = (0..(16 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(ctx.join("blob"), &blob).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY blob /blob\n"),
    )
    .unwrap();
    let built = Command::new("docker")
        .args(["build", "-q", "-t", &blob_tag])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let blob_image = reg.push(&blob_tag, &format!("dev/blob:{tag}")).unwrap();
    reg.untag(&blob_tag).unwrap();
    assert!(!engine_has_image(&blob_image));
    let made = c.devctl(&["create", "blob", "--image", &blob_image]).ok();
    stderr.push_str(&made.stderr);
    assert!(
        made.stderr.contains(&format!("pulling image {blob_image}")),
        "no pull progress shown: {} events {:?}",
        made.stderr,
        c.events(&["--container", "blob"])
    );
    assert!(
        made.stderr
            .contains(&format!("pulled image {blob_image} (16.")),
        "the pull's size is not the layer's: {}",
        made.stderr
    );
    let events = c.events(&["--container", "blob"]);
    let pulling = events
        .iter()
        .filter(|e| e["type"] == "EVENT_TYPE_IMAGE_PULLING")
        .count();
    assert!(pulling >= 1, "{events:?}");
    c.devctl(&["rm", "--force", "blob"]).ok();
    reg.untag(&blob_image).unwrap();

    // Present, --pull missing: not pulled again.
    c.devctl(&["create", "web2", "--image", &image]).ok();
    assert_eq!(reg.manifest_requests("dev/busybox"), after_first);

    // --pull always: pulled again, though present.
    let again = c
        .devctl(&["create", "web3", "--image", &image, "--pull", "always"])
        .ok();
    stderr.push_str(&again.stderr);
    wait_until("a second pull", Duration::from_secs(5), || {
        (reg.manifest_requests("dev/busybox") > after_first).then_some(())
    });

    // --pull never with the image gone: not pulled, refused, nothing left.
    for name in ["web", "web2", "web3"] {
        c.devctl(&["rm", "--force", name]).ok();
    }
    reg.untag(&image).unwrap();
    let err = c
        .devctl(&["create", "never", "--image", &image, "--pull", "never"])
        .err();
    assert!(err.contains("(FailedPrecondition)"), "{err}");
    nothing_left(&c, "never");

    // An image the registry does not have.
    let missing = format!("{}/dev/nothing-here:1", reg.host);
    let (_, reason, message) = refused_create(&c, "unknown", &missing);
    assert_eq!(reason, "IMAGE_NOT_FOUND", "{message}");
    assert!(message.contains("has no image"), "{message}");
    nothing_left(&c, "unknown");

    // A registry nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("127.0.0.1:{port}/dev/busybox:1");
    let (code, reason, message) = refused_create(&c, "gone", &gone);
    assert_eq!(
        (code, reason.as_str()),
        (tonic::Code::Unavailable, "REGISTRY_UNREACHABLE"),
        "{message}"
    );
    nothing_left(&c, "gone");

    // Removing the credentials: pulls are anonymous again.
    c.devctl(&["registries", "rm", &reg.host]).ok();
    let err = c.devctl(&["registries", "rm", &reg.host]).err();
    assert!(
        err.contains("NotFound") || err.contains("no credentials"),
        "{err}"
    );
    let (_, reason, _) = refused_create(&c, "anon2", &image);
    assert_eq!(reason, "REGISTRY_AUTH_FAILED");

    // The password is nowhere: not in any log, nor in the audit records
    // of the calls that carried it.
    let audit = c.devctl(&["audit", "-o", "json"]).ok().stdout;
    assert!(audit.contains("AddRegistry"), "{audit}");
    let mut logs = vec![("CLI stderr".to_string(), stderr), ("audit".into(), audit)];
    for entry in std::fs::read_dir(c.scratch()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "log") {
            logs.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
    }
    assert!(
        logs.iter().any(|(_, l)| l.contains("pull")),
        "the pulls were not logged: the search means nothing"
    );
    for (log, text) in &logs {
        for secret in [&password, &wrong] {
            assert!(
                !text.contains(secret.as_str()),
                "a registry password appears in {log}"
            );
        }
    }
}
