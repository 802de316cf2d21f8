#!/usr/bin/env bash
# Install the Debian packages gu's real-part tests and demo need, only when missing
# (busybox-static, iproute2, docker.io, qemu-system-x86 and squashfs-tools for gVMkit,
# iptables, chromium, postgresql).
# Idempotent and quiet; safe to run on every `make test` / `make demo`.
set -euo pipefail
need=()
command -v busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# the docker runtime's tests start their own dockerd (vfs, private socket) when none answers
[ -x /usr/sbin/dockerd ] || command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
# the vm runtime: QEMU (TCG when KVM does not boot), mksquashfs for .gvmi images
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v mksquashfs >/dev/null 2>&1 || [ -x /usr/sbin/mksquashfs ] || need+=(squashfs-tools)
# the virtual network's relay test blocks UDP between two bridges on loopback
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# the web UI's browser tests: Debian's chromium, driven by playwright (never its own download)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# the PostgreSQL store's tests start a throwaway cluster of their own (tests/pgcluster.py)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "gu: please install: ${need[*]} (apt-get install -y ${need[*]})" >&2
    exit 0
  fi
  echo "gu: installing ${need[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # packages install, services do not start (dockerd, PostgreSQL's default cluster): the
  # tests start their own and stop only those
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
