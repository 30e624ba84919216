#!/usr/bin/env bash
# Builds the devctl dev image on the local Docker engine without a registry:
# a Debian bookworm root filesystem made by debootstrap, imported with
# `docker import`. About 2 minutes and ~250 MB; not run in CI.
#
#   deploy/images/dev/build.sh [TAG]        (default devctl/dev:bookworm)
#
# Contents: git, curl, ca-certificates, build-essential, python3, sudo,
# openssh-server and openssh-sftp-server; a non-root user `dev` (uid 1000)
# with passwordless sudo and /workspace as a working directory. SSH host keys
# are not baked in (every container of the image would share them): the
# entrypoint makes them at first start (ssh-keygen -A).
#
# Needs root (debootstrap), debootstrap (installed with apt-get if missing)
# and a reachable Debian mirror ($DEBIAN_MIRROR, default deb.debian.org).
set -euo pipefail
tag=${1:-devctl/dev:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)

[ "$(id -u)" = 0 ] || { echo "error: run as root (debootstrap needs it)" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  echo "installing debootstrap" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

rootfs=$(mktemp -d /var/tmp/devctl-dev-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

packages=git,curl,ca-certificates,build-essential,python3,sudo,openssh-server,openssh-sftp-server,locales,less,procps
echo "debootstrap bookworm into $rootfs" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >&2

# The non-root user, with sudo.
chroot "$rootfs" useradd --create-home --uid 1000 --shell /bin/bash dev
echo 'dev ALL=(ALL) NOPASSWD:ALL' > "$rootfs/etc/sudoers.d/dev"
chmod 0440 "$rootfs/etc/sudoers.d/dev"
mkdir -p "$rootfs/workspace"
chroot "$rootfs" chown dev:dev /workspace

# No baked-in host keys, caches or logs.
rm -f "$rootfs"/etc/ssh/ssh_host_*
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
mkdir -p "$rootfs/run/sshd"
install -m 0755 "$here/entrypoint.sh" "$rootfs/usr/local/bin/devctl-entrypoint"

echo "importing $tag" >&2
tar -C "$rootfs" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/devctl-entrypoint"]' \
  --change 'CMD ["sleep", "infinity"]' \
  --change 'USER dev' \
  --change 'WORKDIR /workspace' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'LABEL io.devctl.recipe=deploy/images/dev' \
  - "$tag" >/dev/null
docker image inspect -f "built $tag {{.Id}} {{.Size}} bytes" "$tag"
