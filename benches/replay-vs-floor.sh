#!/usr/bin/env bash
# The replay benchmark: `gtpcharge replay` against the libpcap floor (`gtpcharge floor`: a bare libpcap
# loop that only counts packets, reading the file through the same 64 KiB stdio buffer as the replay), on
# the same large generated capture, from page cache, in one run; also the plain floor (`floor --plain`:
# the file opened as `pcap_open_offline` opens it, stdio's 4 KiB buffer: what an untuned libpcap
# program gets), whose ratios are printed beside but which is not the one the targets are held to;
# then peers on the same file (tshark extracting the GTP identity fields; nDPI's ndpiReader) when
# installed. Prints each run and the ratios. Also the pipeline's own ceiling (`gtpcharge floor
# --pipeline`: the replay's reader thread, libpcap plus the copy into batches, handing them to a
# thread that only counts): the two-thread replay cannot be faster than that. Each run also prints the
# cross-core round trip (a cache line between the two threads' cores and back, measured by `floor
# --pipeline` before it reads): on a VM it changes with where the host puts the vCPUs, and the
# pipeline's speed with it.
#   bash benches/replay-vs-floor.sh [CAPTURE] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
CAPTURE=${1:-target/bench/big.pcap}
RUNS=${2:-3}
cargo build -q --release
G=target/release/gtpcharge
if [ ! -f "$CAPTURE" ]; then
  mkdir -p "$(dirname "$CAPTURE")"
  # ~2.15M frames, 20,000 subscribers, size mix of 40-1400 byte payloads, ~1 GB.
  $G generate --out "$CAPTURE" --seed 42 --subscribers 20000 --rounds 4 --background 12 --no-edge-cases
fi
cat "$CAPTURE" > /dev/null   # into page cache
rate() { sed -n 's/.* \([0-9]*\) packets\/s.*/\1/p'; }
best_floor=0; best_plain=0; best_replay=0; best_single=0; best_reader=0
for run in $(seq "$RUNS"); do
  f=$($G floor "$CAPTURE" 2>&1 | grep '^floor' | rate)
  p=$($G floor --plain "$CAPTURE" 2>&1 | grep '^floor-plain' | rate)
  pipe=$($G floor --pipeline "$CAPTURE" 2>&1)
  c=$(echo "$pipe" | grep '^floor-pipeline' | rate)
  trip=$(echo "$pipe" | sed -n 's/^cross-core round trip \([0-9]*\) ns[,;]* *\(.*\)$/\1 ns \2/p')
  s=$(RUST_LOG=warn $G replay --single-thread "$CAPTURE" 2>&1 | grep '^packets' | rate)
  r=$(RUST_LOG=warn $G replay --pipeline "$CAPTURE" 2>&1 | grep '^packets' | rate)
  echo "run $run: floor $f packets/s, plain floor $p packets/s, pipeline's reader alone $c packets/s, replay single thread $s packets/s, replay pipeline $r packets/s; cross-core round trip ${trip:-not measured}"
  [ "$f" -gt "$best_floor" ] && best_floor=$f
  [ "$p" -gt "$best_plain" ] && best_plain=$p
  [ "$c" -gt "$best_reader" ] && best_reader=$c
  [ "$s" -gt "$best_single" ] && best_single=$s
  [ "$r" -gt "$best_replay" ] && best_replay=$r
done
echo "best: floor $best_floor packets/s; single thread $best_single packets/s, ratio $(echo "scale=3; $best_single / $best_floor" | bc); pipeline (2 threads) $best_replay packets/s, ratio $(echo "scale=3; $best_replay / $best_floor" | bc); the pipeline's ceiling (its reader alone) $best_reader packets/s, ratio $(echo "scale=3; $best_reader / $best_floor" | bc)"
echo "against the plain floor (best $best_plain packets/s): single thread $(echo "scale=3; $best_single / $best_plain" | bc), pipeline $(echo "scale=3; $best_replay / $best_plain" | bc)"
peer() {
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  if timeout 1800 "$@" >/dev/null 2>&1; then
    end=$(date +%s.%N)
    local packets; packets=$($G floor "$CAPTURE" 2>&1 | sed -n 's/^floor packets \([0-9]*\) .*/\1/p')
    local pps; pps=$(echo "$packets / ($end - $start)" | bc)
    echo "peer $name: $pps packets/s, ratio to floor $(echo "scale=4; $pps / $best_floor" | bc), gtpcharge is $(echo "scale=1; $best_replay / $pps" | bc)x faster"
  else
    echo "peer $name: failed or timed out"
  fi
}
if command -v tshark >/dev/null; then
  peer tshark tshark -n -r "$CAPTURE" -Y 'gtp || gtpv2' -T fields -e e212.imsi -e e164.msisdn -e gtp.user_ipv4 -e gtp.teid_data -e gtp.teid
fi
if command -v ndpiReader >/dev/null; then
  peer ndpiReader ndpiReader -i "$CAPTURE" -q -t
fi
