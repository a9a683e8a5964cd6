#!/usr/bin/env bash
# Run make targets in order, keep going after a failure, print a summary with timings,
# and exit non-zero if any step failed. Steps listed in $STOP_ON_FAIL abort the run.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
STOP_ON_FAIL=${STOP_ON_FAIL:-"deps venv"}
declare -a names results times
failed=0
for step in "$@"; do
  echo
  echo "=================== make $step ==================="
  start=$(date +%s)
  make --no-print-directory "$step"
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  names+=("$step"); times+=("$elapsed")
  if [ $rc -eq 0 ]; then results+=("ok"); else results+=("FAILED (rc=$rc)"); failed=$((failed + 1)); fi
  if [ $rc -ne 0 ] && [[ " $STOP_ON_FAIL " == *" $step "* ]]; then
    echo "make $step failed: nothing else can run"
    break
  fi
done
echo
echo "=================== summary ==================="
total=0
for i in "${!names[@]}"; do
  printf '  %-14s %6ss  %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
  total=$(( total + times[i] ))
done
printf '  %-14s %6ss\n' "total" "$total"
echo "steps: $(( ${#names[@]} - failed )) passed, $failed failed"
[ $failed -eq 0 ]
