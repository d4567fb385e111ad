#!/usr/bin/env bash
# Instructions per frame, counted exactly by callgrind (the same on every run, unlike time on a shared VM):
# the single-thread replay, the libpcap floor on the same capture, and their difference, which is what our
# own code adds to each frame. Then the replay's own code by function (self cost, inlined code counted in
# the function it was inlined into). With two builds, both are counted and compared.
#   bash benches/instructions.sh CAPTURE [BINARY [OTHER_BINARY]]
# Use a capture of a few hundred thousand frames (valgrind runs about 50x slower than the replay), e.g.
#   gtpcharge generate --out small.pcap --seed 42 --subscribers 4000 --rounds 4 --background 12 --no-edge-cases
set -euo pipefail
CAPTURE=$1
shift
BUILDS=("${@:-target/release/gtpcharge}")
command -v valgrind > /dev/null || { echo "instructions.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
refs() { sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$1" | tr -d ,; }
per_frame() { echo "scale=1; $1 / $2" | bc; }
for i in "${!BUILDS[@]}"; do
  build=${BUILDS[$i]}
  valgrind --tool=callgrind --callgrind-out-file="$out/floor.$i" "$build" floor "$CAPTURE" \
    > "$out/floor.$i.txt" 2>&1
  valgrind --tool=callgrind --callgrind-out-file="$out/replay.$i" "$build" replay --single-thread "$CAPTURE" \
    > "$out/replay.$i.txt" 2>&1
  frames=$(sed -n 's/^packets \([0-9]*\) .*/\1/p' "$out/replay.$i.txt")
  floor=$(refs "$out/floor.$i.txt")
  replay=$(refs "$out/replay.$i.txt")
  echo "$build: $frames frames; replay $(per_frame "$replay" "$frames"), floor $(per_frame "$floor" "$frames")," \
    "own code $(per_frame $((replay - floor)) "$frames") instructions per frame"
  # Self cost by function: callgrind_annotate names each line file:function, where function is the symbol
  # the code ran in (inlined code keeps its own file), so summing by function gives each symbol's share.
  callgrind_annotate --inclusive=no --threshold=100 --auto=no "$out/replay.$i" 2> /dev/null \
    | awk -v frames="$frames" '
        /^ *[0-9,]+ / && !/PROGRAM TOTALS/ {
          n = $1; gsub(",", "", n); line = $0
          sub(/^ *[0-9,]+ +(\([ 0-9.%]+\) +)?/, "", line); sub(/ \[.*$/, "", line)
          sub(/^[^:]*:/, "", line); cost[line] += n
        }
        END { for (f in cost) if (cost[f] / frames >= 5) printf "  %8.1f  %s\n", cost[f] / frames, f }' \
    | sort -rn | head -20
done
