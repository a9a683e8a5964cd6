#!/usr/bin/env bash
# Import the built tarball the way Galaxy does on upload (galaxy-importer, offline settings in
# scripts/galaxy-importer.cfg) and fail on what would make the upload fail: an import error
# (a role without a README, a plugin whose documentation does not render, ...).
# Usage: scripts/galaxy-importer.sh build/dist/batchvirt-farm-<version>.tar.gz
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/build/galaxy-importer
TARBALL=$(realpath "${1:?usage: $0 <collection tarball>}")
[ -x "$VENV/bin/python" ] || { echo "no $VENV: run make importer-venv"; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/batchvirt-galaxy-importer.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# its own ansible-doc and ansible-lint, none of the caller's ansible settings
env -u ANSIBLE_COLLECTIONS_PATH -u ANSIBLE_ROLES_PATH -u ANSIBLE_CONFIG \
  PATH="$VENV/bin:$PATH" GALAXY_IMPORTER_CONFIG="$ROOT/scripts/galaxy-importer.cfg" \
  "$VENV/bin/python" -m galaxy_importer.main "$TARBALL" > "$WORK/import.log" 2>&1 && rc=0 || rc=$?
if [ "$rc" -ne 0 ] || grep -q '^ERROR' "$WORK/import.log"; then
  cat "$WORK/import.log"
  echo "galaxy-importer: the import FAILED (rc=$rc): Galaxy would refuse this tarball"
  exit 1
fi
warnings=$(grep -c -E '^WARNING' "$WORK/import.log" || true)
grep -E '^WARNING' "$WORK/import.log" || true
echo "galaxy-importer: $(basename "$TARBALL") imports cleanly ($warnings warnings)"
