#!/usr/bin/env bash
# Builds the devctl/busybox:latest test and sample image on the local Docker
# engine, with no registry: FROM scratch plus Debian's busybox-static.
#
#   deploy/build-image.sh [--if-changed] [TAG]   (default devctl/busybox:latest)
#
# The image is labelled with a hash of its recipe; with --if-changed nothing
# is done when the engine already has an image built from this recipe.
#
# Installs busybox-static with apt-get if it is missing.
set -euo pipefail
if_changed=false
if [ "${1:-}" = --if-changed ]; then if_changed=true; shift; fi
tag=${1:-devctl/busybox:latest}
here=$(cd "$(dirname "$0")" && pwd)
recipe=$(cat "$here/images/busybox/Dockerfile" "$0" | sha256sum | cut -c1-16)
if $if_changed; then
  have=$(docker image inspect -f '{{index .Config.Labels "io.devctl.recipe"}}' "$tag" 2>/dev/null || true)
  [ "$have" = "$recipe" ] && exit 0
fi

# A static busybox: $BUSYBOX, or Debian's busybox-static (installed if
# missing; it replaces Debian's dynamically linked busybox package).
busybox=${BUSYBOX:-}
if [ -z "$busybox" ]; then
  if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
    command -v apt-get >/dev/null || { echo "error: set BUSYBOX to a statically linked busybox binary" >&2; exit 1; }
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing busybox-static" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq busybox-static >/dev/null
  fi
  busybox=/bin/busybox
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$here/images/busybox/Dockerfile" "$ctx/"
cp -L "$busybox" "$ctx/busybox"
# The classic builder needs nothing from a registry for FROM scratch (and is
# the one every engine version has).
if ! DOCKER_BUILDKIT=0 docker build -q --label "io.devctl.recipe=$recipe" -t "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  exit 1
fi
echo "built $tag"
