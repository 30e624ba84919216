#!/bin/sh
# devctl dev image entrypoint: makes this container's own SSH host keys on
# first start (none are baked into the image), then runs the command.
if [ ! -e /etc/ssh/ssh_host_ed25519_key ]; then
  if [ "$(id -u)" = 0 ]; then ssh-keygen -A >/dev/null; else sudo -n ssh-keygen -A >/dev/null 2>&1 || true; fi
fi
exec "$@"
