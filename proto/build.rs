//! Generates the devctl.v1 code and a descriptor set for gRPC reflection.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs nothing
//! installed; set `PROTOC` to use another one.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the
        // environment concurrently.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "devctl/v1/container.proto",
        "devctl/v1/node.proto",
        "devctl/v1/bus.proto",
        "devctl/v1/events.proto",
        "devctl/v1/exec.proto",
        "devctl/v1/logs.proto",
        "devctl/v1/stats.proto",
        "devctl/v1/access.proto",
        "devctl/v1/audit.proto",
        "devctl/v1/watch.proto",
        "devctl/v1/ssh.proto",
        "devctl/v1/workspace.proto",
        "devctl/v1/registry.proto",
        "devctl/v1/template.proto",
        "devctl/v1/image.proto",
        "devctl/v1/graph.proto",
    ];
    // Type names (`prost::Name`) let code find a message's descriptor, e.g.
    // to print it as canonical proto JSON (devctl_proto::json).
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    // Messages carrying a registry password: their Debug (see
    // devctl_proto::registry) prints no password, so no `?field` in a log
    // line can leak it.
    config.skip_debug([".devctl.v1.RegistryAuth", ".devctl.v1.AddRegistryRequest"]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("devctl_descriptor.bin"))
        .compile_with_config(config, &protos, &["."])?;
    // tonic-prost-build does not emit this; without it edits to .proto files
    // would be ignored once any other rerun line exists.
    println!("cargo:rerun-if-changed=devctl");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
