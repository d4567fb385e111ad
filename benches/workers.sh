#!/usr/bin/env bash
# The cost and the speed of `--workers N` (the correlation shards, src/shards.rs).
#   bash benches/workers.sh instructions SMALL_CAPTURE [N...]
#     Instructions per frame, exact (callgrind, every thread counted, waits left out): one thread (`--single-thread`),
#     the pipeline (`--workers 1 --pipeline`: a reader thread and one correlating thread) and N shards
#     (`--workers N`: a reader thread, the dispatching thread and N shards), and what the shards add
#     over the pipeline, which reads the same way: the cost of sharding (target at most 10%).
#     Use a capture of a few hundred thousand frames (valgrind runs about 50x slower), e.g.
#       gtpcharge generate --out small.pcap --seed 42 --subscribers 4000 --rounds 4 --background 12 --no-edge-cases
#   bash benches/workers.sh speed [CAPTURE] [RUNS] [N...]
#     Packets per second of `--workers 1` and of each `--workers N` beside the libpcap floor
#     (`gtpcharge floor`), alternating in one run, best of RUNS; the big capture of replay-vs-floor.sh
#     by default.
set -euo pipefail
cd "$(dirname "$0")/.."
G=${GTPCHARGE:-target/release/gtpcharge}
[ -x "$G" ] || cargo build -q --release
mode=${1:?instructions or speed}
shift
case $mode in
instructions)
  CAPTURE=$1
  shift
  COUNTS=("${@:-2 4}")
  read -r -a COUNTS <<< "${COUNTS[*]}"
  command -v valgrind > /dev/null || { echo "workers.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  count() { # name, replay flags...
    local name=$1; shift
    # Waiting (spinning or blocked: `pipeline::waiting`) is not work: valgrind runs one thread at a time,
    # so a spinning thread would count whatever the others take.
    RUST_LOG=warn valgrind --tool=callgrind --toggle-collect='*pipeline::waiting*' --collect-atstart=yes \
      --callgrind-out-file="$out/$name.cg" "$G" replay "$@" "$CAPTURE" \
      > "$out/$name.txt" 2>&1
    sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$out/$name.txt" | tr -d ,
  }
  frames() { sed -n 's/^packets \([0-9]*\) .*/\1/p' "$out/single.txt"; }
  single=$(count single --single-thread)
  pipeline=$(count pipeline --workers 1 --pipeline)
  n=$(frames)
  per() { echo "scale=1; $1 / $n" | bc; }
  echo "$n frames; instructions per frame: one thread $(per "$single"), pipeline (--workers 1) $(per "$pipeline")"
  for k in "${COUNTS[@]}"; do
    sharded=$(count "w$k" --workers "$k")
    echo "--workers $k: $(per "$sharded") per frame; over the pipeline +$(echo "scale=1; 100 * ($sharded - $pipeline) / $pipeline" | bc)%," \
      "over one thread +$(echo "scale=1; 100 * ($sharded - $single) / $single" | bc)%"
  done
  ;;
speed)
  CAPTURE=${1:-target/bench/big.pcap}
  RUNS=${2:-3}
  shift 2 || shift $#
  COUNTS=("${@:-2}")
  if [ ! -f "$CAPTURE" ]; then
    mkdir -p "$(dirname "$CAPTURE")"
    $G generate --out "$CAPTURE" --seed 42 --subscribers 20000 --rounds 4 --background 12 --no-edge-cases
  fi
  cat "$CAPTURE" > /dev/null # into page cache
  rate() { sed -n 's/.* \([0-9]*\) packets\/s.*/\1/p'; }
  declare -A best
  for run in $(seq "$RUNS"); do
    line="run $run:"
    f=$($G floor "$CAPTURE" 2>&1 | grep '^floor' | rate)
    line="$line floor $f"
    [ "$f" -gt "${best[floor]:-0}" ] && best[floor]=$f
    for k in 1 "${COUNTS[@]}"; do
      r=$(RUST_LOG=warn $G replay --workers "$k" "$CAPTURE" 2>&1 | grep '^packets' | rate)
      line="$line, --workers $k $r"
      [ "$r" -gt "${best[$k]:-0}" ] && best[$k]=$r
    done
    echo "$line packets/s"
  done
  summary="best: floor ${best[floor]} packets/s"
  for k in 1 "${COUNTS[@]}"; do
    summary="$summary; --workers $k ${best[$k]} ($(echo "scale=3; ${best[$k]} / ${best[floor]}" | bc)x)"
  done
  echo "$summary ($(nproc) cores)"
  ;;
*)
  echo "workers.sh: instructions or speed" >&2
  exit 2
  ;;
esac
