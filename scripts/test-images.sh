#!/usr/bin/env bash
# The integration tests' two big images, built (or found: both are cached by recipe) while
# `make test` runs lint, sanity, unit and build: the worker image of the test farms (base_image
# role, about 4 minutes cold) and the multi-hypervisor bed's root filesystem (debootstrap).
#   scripts/test-images.sh start   start building in the background, return at once
#   scripts/test-images.sh wait    wait for that build, show its log, fail if it failed
# `wait` without a `start` before it returns at once: the tests build what is missing themselves.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
mkdir -p build
LOCK=build/test-images.lock LOG=build/test-images.log RC=build/test-images.rc

build() {
  .venv/bin/python - <<'PY'
import sys, time
from tests.testbed.ansible import LOCALHOST, run_playbook
from tests.testbed.hypervisors import build_rootfs

t0 = time.monotonic()
result = run_playbook("tests/integration/farm/playbooks/worker_image.yml", inventory=LOCALHOST)
print(f"worker image (base_image role): rc {result.rc} in {time.monotonic() - t0:.0f} s", flush=True)
if result.rc != 0:
    print(result.stdout[-4000:])
t1 = time.monotonic()
print(f"multi-hypervisor root filesystem: {build_rootfs()} in {time.monotonic() - t1:.0f} s", flush=True)
sys.exit(1 if result.rc != 0 else 0)
PY
}

case "${1:-}" in
  start)
    rm -f "$RC"
    # the lock is held until the build ends; `wait` takes it after
    (flock 9; build > "$LOG" 2>&1; echo $? > "$RC") 9> "$LOCK" > /dev/null 2>&1 &
    sleep 1
    echo "building the test images in the background (log: $LOG)"
    ;;
  wait)
    [ -e "$LOCK" ] || exit 0
    flock "$LOCK" true
    cat "$LOG" 2>/dev/null
    [ "$(cat "$RC" 2>/dev/null)" = 0 ]
    ;;
  *)
    echo "usage: $0 start|wait" >&2
    exit 2
    ;;
esac
