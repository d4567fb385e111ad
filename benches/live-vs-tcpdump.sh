#!/usr/bin/env bash
# Live capture against tcpdump, on the same traffic in the same run.
#
#   bash benches/live-vs-tcpdump.sh [CAPTURE] [RATE...]
#
# Creates a veth pair (one end in a network namespace of its own, removed at the end), then plays
# CAPTURE onto it with tcpreplay at each RATE (packets/s; `top` for --topspeed), once while
# `gtpcharge capture` (its defaults) listens on the other end and once while `tcpdump -w /dev/null`
# does. For each it prints what libpcap received and dropped, then, per tool, the highest rate with no
# drop, and the ratio of the two. Needs root, iproute2, tcpreplay and tcpdump (Debian's packages), and a
# release build (`cargo build --release`; GTPCHARGE=path overrides; GTPCHARGE_ARGS adds capture flags,
# e.g. "--immediate --buffer-size 67108864" for the defaults before they were chosen for a mirror port). Without CAPTURE it generates one
# (140,000 frames, 62 MB). Only the veth pair and its namespace are touched; no other address is sent to.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${GTPCHARGE:-target/release/gtpcharge}
for tool in ip tcpreplay tcpdump "$BIN"; do
  command -v "$tool" >/dev/null || { echo "live-vs-tcpdump: $tool is missing (apt-get install iproute2 tcpreplay tcpdump; cargo build --release)" >&2; exit 2; }
done
work=$(mktemp -d)
capture=${1:-}
if [ -z "$capture" ]; then
  capture=$work/burst.pcap
  "$BIN" generate --out "$capture" --subscribers 2000 --rounds 3 --background 10 --no-edge-cases 2>/dev/null
fi
shift || true
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(50000 100000 200000 400000 800000 top)

ns=gtplive$$
probe_end=lvp$$
wire_end=lvw$$
cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$probe_end" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip link add "$probe_end" mtu 9000 type veth peer name "$wire_end" mtu 9000
ip link set "$wire_end" netns "$ns"
ip link set "$probe_end" up
ip -n "$ns" link set "$wire_end" up
frames=$("$BIN" floor "$capture" 2>&1 | sed -n 's/.*packets \([0-9]*\).*/\1/p' | head -1)

# Plays the capture at one rate; prints tcpreplay's achieved packets/s.
play() {
  local rate=$1 how
  if [ "$rate" = top ]; then how=--topspeed; else how=--pps=$rate; fi
  ip netns exec "$ns" tcpreplay -q -i "$wire_end" "$how" "$capture" 2>&1 | sed -n 's/.*Rated: .* \([0-9.]*\) pps.*/\1/p' | head -1
}

# One tool at one rate: "received dropped achieved_pps".
run_gtpcharge() {
  # shellcheck disable=SC2086 # GTPCHARGE_ARGS is a list of flags
  "$BIN" capture --interface "$probe_end" --spool-dir "$work/spool" ${GTPCHARGE_ARGS:-} >/dev/null 2>"$work/g.err" &
  local pid=$!
  sleep 1.5
  local achieved
  achieved=$(play "$1")
  sleep 1
  kill -INT "$pid"; wait "$pid" || true
  sed -n 's/^libpcap received \([0-9]*\)  dropped \([0-9]*\)  interface dropped \([0-9]*\).*/\1 \2/p' "$work/g.err" | tr '\n' ' '
  echo "$achieved"
}
run_tcpdump() {
  tcpdump -n -i "$probe_end" -w /dev/null >/dev/null 2>"$work/t.err" &
  local pid=$!
  sleep 1.5
  local achieved
  achieved=$(play "$1")
  sleep 1
  kill -INT "$pid"; wait "$pid" || true
  local received dropped
  received=$(sed -n 's/^\([0-9]*\) packets received by filter/\1/p' "$work/t.err")
  dropped=$(sed -n 's/^\([0-9]*\) packets dropped by kernel/\1/p' "$work/t.err")
  echo "$received $dropped $achieved"
}

echo "capture: $capture ($frames frames); gtpcharge: $BIN ${GTPCHARGE_ARGS:-(defaults)}; tcpdump $(tcpdump --version 2>&1 | head -1 | awk '{print $3}')"
printf '%-10s %-15s | %-12s %-10s | %-12s %-10s\n' rate "achieved g/t" "gtpcharge rx" dropped "tcpdump rx" dropped
# The highest rate each tool took without a drop, as tcpreplay achieved it. At `top` tcpreplay sends as
# fast as it can while the tool under test takes its share of the same cores: on a 2-core machine the
# achieved top rate depends on the tool's own CPU use as much as on the link, so read the table too.
best_g=0; best_t=0; worse=0
for rate in "${rates[@]}"; do
  read -r g_rx g_drop g_pps < <(run_gtpcharge "$rate")
  read -r t_rx t_drop t_pps < <(run_tcpdump "$rate")
  printf '%-10s %-15s | %-12s %-10s | %-12s %-10s\n' "$rate" "${g_pps%.*}/${t_pps%.*}" "$g_rx" "$g_drop" "$t_rx" "$t_drop"
  if [ "$g_drop" = 0 ] && [ "${g_pps%.*}" -gt "$best_g" ]; then best_g=${g_pps%.*}; fi
  if [ "$t_drop" = 0 ] && [ "${t_pps%.*}" -gt "$best_t" ]; then best_t=${t_pps%.*}; fi
  if [ "$t_drop" = 0 ] && [ "$g_drop" != 0 ]; then worse=$((worse + 1)); fi
done
echo "highest rate with zero drops (packets/s achieved): gtpcharge $best_g, tcpdump $best_t"
awk -v g="$best_g" -v t="$best_t" 'BEGIN { if (t == 0) print "ratio: tcpdump lost packets at every rate"; else printf "ratio (gtpcharge / tcpdump lossless rate): %.2fx\n", g / t }'
echo "rates where tcpdump lost nothing and gtpcharge lost some: $worse"
