#!/usr/bin/env bash
# ansible-test sanity on a copy of the collection placed under
# $TMP/ansible_collections/batchvirt/farm (ansible-test needs that layout, outside this git
# checkout, whose .gitignore would otherwise hide every file from it).
# The offline get-pip stand-in lets ansible-test build its sanity venvs without the internet.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/batchvirt-sanity.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEST=$WORK/ansible_collections/batchvirt/farm
mkdir -p "$DEST"
git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ "$DEST/"

CACHE=$HOME/.ansible/test/cache
mkdir -p "$CACHE"
for version in 24_2 25_0 25_1 25_2; do
  cat > "$CACHE/get_pip_${version}.py" <<'PY'
"""Offline stand-in for get-pip.py: bootstrap pip with ensurepip, then install the rest."""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
requested = [a for a in args if not a.startswith("-")]
if requested:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check"] + args)
PY
done
cd "$DEST"
export PATH=$ROOT/.venv/bin:$PATH
ansible-test sanity --python "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" --color no "$@"
