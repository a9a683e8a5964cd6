#!/usr/bin/env bash
# Install the system packages `make test` needs (bindep.txt, profile "test") with apt.
# Idempotent: asks bindep what is missing and installs only that. bindep runs from a tiny
# venv of its own (build/bindep-venv), because the main venv needs some of these packages
# (libvirt-dev, pkg-config, gcc) to build libvirt-python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BV=build/bindep-venv
if [ ! -x "$BV/bin/bindep" ]; then
  "$PYTHON" -m venv "$BV"
  "$BV/bin/pip" install -q --disable-pip-version-check bindep
fi
missing=$("$BV/bin/bindep" -b test 2>/dev/null || true)
if [ -z "$missing" ]; then
  echo "deps: all system packages of bindep.txt (test) are installed"
  exit 0
fi
echo "deps: installing: ${missing//$'\n'/ }"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps: done"
