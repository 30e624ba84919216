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
