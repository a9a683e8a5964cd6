#!/usr/bin/env bash
# Run every molecule scenario (molecule/<name>/molecule.yml) with `molecule test`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
failed=0; ran=0
for dir in molecule/*/; do
  name=$(basename "$dir")
  [ -f "$dir/molecule.yml" ] || continue
  echo "--- molecule test -s $name"
  ran=$((ran + 1))
  molecule test -s "$name" || failed=$((failed + 1))
done
echo "molecule: $((ran - failed)) passed, $failed failed"
[ $failed -eq 0 ]
