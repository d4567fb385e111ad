#!/usr/bin/env bash
# Two builds of gtpcharge on the same capture, alternating, in one run: the libpcap floor, then each
# build's single-thread and pipeline replay, RUNS times; prints each build's best as a ratio to the best
# floor. On a VM whose speed drifts from minute to minute, this is how to compare two builds.
#   bash benches/replay-ab.sh OLD_BINARY NEW_BINARY CAPTURE [RUNS]
set -euo pipefail
OLD=$1 NEW=$2 CAPTURE=$3 RUNS=${4:-5}
cat "$CAPTURE" > /dev/null   # into page cache
rate() { sed -n 's/.* \([0-9]*\) packets\/s.*/\1/p'; }
best_floor=0
declare -A single pipeline
for run in $(seq "$RUNS"); do
  f=$("$NEW" floor "$CAPTURE" 2>&1 | grep '^floor' | rate)
  [ "$f" -gt "$best_floor" ] && best_floor=$f
  for build in "$OLD" "$NEW"; do
    s=$(RUST_LOG=warn "$build" replay --single-thread "$CAPTURE" 2>&1 | grep '^packets' | rate)
    # The two-thread run by name where the build has the flag (builds before session 12 always ran it).
    force=()
    if "$build" replay --help 2> /dev/null | grep -- '--pipeline' > /dev/null; then force=(--pipeline); fi
    p=$(RUST_LOG=warn "$build" replay "${force[@]}" "$CAPTURE" 2>&1 | grep '^packets' | rate)
    [ "$s" -gt "${single[$build]:-0}" ] && single[$build]=$s
    [ "$p" -gt "${pipeline[$build]:-0}" ] && pipeline[$build]=$p
  done
  echo "run $run: floor $f packets/s"
done
echo "best floor $best_floor packets/s"
for build in "$OLD" "$NEW"; do
  echo "$build: single thread ${single[$build]} packets/s ($(echo "scale=3; ${single[$build]} / $best_floor" | bc)x)," \
    "pipeline ${pipeline[$build]} packets/s ($(echo "scale=3; ${pipeline[$build]} / $best_floor" | bc)x)"
done
