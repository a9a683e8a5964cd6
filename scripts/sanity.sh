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
current=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ansible-test sanity --python "$current" --color no "$@"

# tests/config.yml says which Python versions modules support: compile and import them on every
# one of those the machine has (python3.N on PATH, or under pyenv), and say which are missing.
[ $# -eq 0 ] || exit 0
versions=$(python3 - <<'PY'
import re
import yaml

spec = yaml.safe_load(open("tests/config.yml"))["modules"]["python_requires"]
floor = tuple(int(p) for p in re.search(r">=\s*(\d+)\.(\d+)", spec).groups())
print(" ".join("3.%d" % m for m in range(9, 14) if (3, m) >= floor))
PY
)
found=() missing=()
for version in $versions; do
  [ "$version" = "$current" ] && continue
  # a real interpreter: pyenv's shims answer for every version but run only the selected one
  interpreter=$(find "${PYENV_ROOT:-$HOME/.pyenv}/versions" -maxdepth 3 \
    -path "*/versions/$version.*/bin/python$version" 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$interpreter" ]; then
    interpreter=$(command -v "python$version" || true)
    [[ "$interpreter" == */shims/* ]] && interpreter=""
  fi
  if [ -n "$interpreter" ] && [ -x "$interpreter" ]; then found+=("$version:$interpreter"); else missing+=("$version"); fi
done
status=0
for entry in "${found[@]}"; do
  version=${entry%%:*} interpreter=${entry#*:}
  echo "== modules on Python $version (tests/config.yml: ${versions// /, }): compile, import"
  PATH=$(dirname "$interpreter"):$PATH ansible-test sanity --python "$version" --test compile --test import --color no || status=1
done
[ ${#missing[@]} -eq 0 ] || echo "sanity: no interpreter for Python ${missing[*]} on this machine: compile/import not run there"
exit $status
