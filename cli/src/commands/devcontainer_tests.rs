//! Unit tests of `devcontainer.rs`.

use super::*;

#[test]
fn variables_are_substituted() {
    let local = Path::new("/home/me/my-proj");
    // SAFETY: tests of this module do not read the environment
    // concurrently with this write.
    unsafe { std::env::set_var("DEVCTL_TEST_VAR", "v1") };
    assert_eq!(
        substitute(
            "${localWorkspaceFolderBasename}:${containerWorkspaceFolder}:${localEnv:DEVCTL_TEST_VAR}:${localEnv:DEVCTL_NOPE:dflt}:${unknown}",
            local,
            "/workspaces/my-proj"
        ),
        "my-proj:/workspaces/my-proj:v1:dflt:${unknown}"
    );
    assert_eq!(dns_name("My_Project.v2"), "my-project-v2");
    assert_eq!(dns_name("2048"), "dev-2048");
}

#[test]
fn lifecycle_commands_take_three_forms() {
    let id = |s: &str| s.to_string();
    let v: Value = json5::from_str(r#"{a: "echo hi", b: ["ls", "-l"]}"#).unwrap();
    assert_eq!(
        commands(&v, &id).unwrap(),
        vec![
            vec![id("sh"), id("-c"), id("echo hi")],
            vec![id("ls"), id("-l")]
        ]
    );
    assert_eq!(commands(&Value::String("x".into()), &id).unwrap().len(), 1);
}

#[test]
fn mounts_become_volume_and_host_path_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("proj");
    std::fs::create_dir_all(&local).unwrap();
    let path = local.join(".devcontainer.json");
    std::fs::write(
        &path,
        r#"{
          image: "x",
          workspaceMount: "source=${localWorkspaceFolder},target=/src/app,type=bind",
          mounts: [
            "source=${localWorkspaceFolderBasename}-cache,target=/cache,type=volume",
            {source: "/srv/shared", target: "/shared", type: "bind", readonly: true},
            "type=tmpfs,target=/tmp/scratch",
          ],
        }"#,
    )
    .unwrap();
    let c = parse(&path, &local).unwrap();
    // The workspace goes where workspaceMount puts it.
    assert_eq!(c.workspace_folder, "/src/app");
    assert_eq!(
        c.mounts,
        vec![
            pb::Mount {
                source: Some(pb::mount::Source::Volume("proj-cache".into())),
                target: "/cache".into(),
                read_only: false,
            },
            pb::Mount {
                source: Some(pb::mount::Source::HostPath("/srv/shared".into())),
                target: "/shared".into(),
                read_only: true,
            },
        ]
    );
    // tmpfs is named, not silently dropped.
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("mounts[2]") && w.contains("tmpfs")),
        "{:?}",
        c.warnings
    );

    let id = |s: &str| s.to_string();
    for bad in [
        r#""target=relative""#,
        r#""source=x,target=/a,bogus=1""#,
        "42",
    ] {
        let v: Value = json5::from_str(bad).unwrap();
        assert!(parse_mount(&v, "mounts[0]", &id).is_err(), "{bad}");
    }
}
