#!/usr/bin/env bash
# Install the system packages `make test` needs (bindep.txt, profile "test") with apt.
# Idempotent: asks bindep what is missing and installs only that.
set -euo pipefail
cd "$(dirname "$0")/.."
BINDEP=.venv/bin/bindep
if [ ! -x "$BINDEP" ]; then
  echo "deps: the venv is missing; run 'make venv' first" >&2
  exit 2
fi
missing=$("$BINDEP" -b test 2>/dev/null || true)
if [ -z "$missing" ]; then
  echo "deps: all system packages of bindep.txt (test) are installed"
  exit 0
fi
echo "deps: installing:" $missing
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
