#!/usr/bin/env bash
# Run every molecule scenario with `molecule test`. The scenarios live where molecule looks for
# them in a collection: extensions/molecule/<name>/molecule.yml (`default` is the one scenario
# today; another one goes beside it).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
failed=0; ran=0
for dir in extensions/molecule/*/; do
  name=$(basename "$dir")
  [ -f "$dir/molecule.yml" ] || continue
  echo "--- molecule test -s $name"
  ran=$((ran + 1))
  molecule test -s "$name" || failed=$((failed + 1))
done
echo "molecule: $((ran - failed)) passed, $failed failed"
[ $ran -gt 0 ] && [ $failed -eq 0 ]
