#!/usr/bin/env bash
# Runs the whole test suite on this machine: installs what is missing
# (nats-server, busybox-static for the test image, grpcio for the Python
# client test, buf for the proto checks, OpenSSH's client for the SSH
# tests, docker-registry and htpasswd for the registry tests, ArcadeDB
# (PyPI's arcadedb-embedded, with its own Java) as the graph tests' Bolt
# server), builds the test image, checks formatting and lints
# (`cargo fmt --check`, `cargo clippy -D warnings`), lints the proto files
# and checks them for breaking changes against every stable version of
# devctl.v1 (deploy/proto-check.sh), then `cargo test --workspace`.
# Extra arguments go to cargo test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/deploy/prereqs.sh"

need_cargo
need_docker
need_nats_server
need_image
need_python_grpc
need_openssh
need_registry
need_arcadedb
cd "$root"
# Main carries no unformatted code and no warnings.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# devctl.v1 is stable: lint it and refuse breaking changes.
deploy/proto-check.sh
exec cargo test --workspace --locked "$@"
