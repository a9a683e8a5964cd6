#!/usr/bin/env bash
# After `make build`: the installed tarball must carry every module and plugin of the tree,
# each renderable by ansible-doc, and nothing the build should have left out.
set -euo pipefail
cd "$(dirname "$0")/.."
INSTALLED=${ANSIBLE_COLLECTIONS_PATH:?}/ansible_collections/batchvirt/farm
status=0
for kind in modules inventory; do
  type=$([ "$kind" = modules ] && echo module || echo inventory)
  for f in "plugins/$kind"/*.py; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .py)
    [ "$name" = "__init__" ] && continue
    if ! ansible-doc -t "$type" "batchvirt.farm.$name" >/dev/null 2>&1; then
      echo "build: ansible-doc cannot render $type batchvirt.farm.$name from the installed collection"
      status=1
    fi
  done
done
for leaked in tests bench .venv scripts Makefile ansible.cfg; do
  if [ -e "$INSTALLED/$leaked" ]; then
    echo "build: $leaked ended up in the collection tarball (galaxy.yml build_ignore)"
    status=1
  fi
done
[ $status -eq 0 ] && echo "build: installed collection OK ($(find "$INSTALLED/plugins" -name '*.py' | wc -l) plugin files)"
exit $status
