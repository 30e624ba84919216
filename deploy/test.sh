#!/usr/bin/env bash
# Runs the whole test suite on this machine: installs what is missing
# (nats-server, busybox-static for the test image, grpcio for the Python
# client test), builds the test image, checks formatting and lints
# (`cargo fmt --check`, `cargo clippy -D warnings`), then
# `cargo test --workspace`. Extra arguments go to cargo test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/deploy/prereqs.sh"

need_cargo
need_docker
need_nats_server
need_image
need_python_grpc
cd "$root"
# Main carries no unformatted code and no warnings.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
exec cargo test --workspace --locked "$@"
