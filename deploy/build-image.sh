#!/usr/bin/env bash
# Builds the devctl/busybox:latest test and sample image on the local Docker
# engine, with no registry: FROM scratch plus Debian's busybox-static.
#
#   deploy/build-image.sh [TAG]      (default devctl/busybox:latest)
#
# Installs busybox-static with apt-get if it is missing.
set -euo pipefail
tag=${1:-devctl/busybox:latest}
here=$(cd "$(dirname "$0")" && pwd)

if ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "installing busybox-static" >&2
  ${SUDO:-} apt-get update -qq
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq busybox-static >/dev/null
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$here/images/busybox/Dockerfile" "$ctx/"
cp -L /bin/busybox "$ctx/busybox"
# The classic builder needs nothing from a registry for FROM scratch (and is
# the one every engine version has).
if ! DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  exit 1
fi
echo "built $tag"
