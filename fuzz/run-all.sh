#!/usr/bin/env bash
# Runs every fuzz target for a fixed time and prints a table of executions and coverage.
# Seeds: the committed sample, a generated capture, and (when present, never committed) the public
# captures in ../shared/pcaps. Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable toolchain is
# enough with RUSTC_BOOTSTRAP=1 (cargo-fuzz uses nightly-only sanitizer flags).
#   bash fuzz/run-all.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
export RUSTC_BOOTSTRAP=1
cargo build -q --release
G=target/release/gtpcharge
SEEDS=(pcaps/sample.pcap)
$G generate --out target/fuzz-seed.pcap --seed 3 --subscribers 40 >/dev/null 2>&1 && SEEDS+=(target/fuzz-seed.pcap)
if [ -d ../shared/pcaps ]; then SEEDS+=(../shared/pcaps/*.pcap ../shared/pcaps/*.pcapng); fi
rm -rf fuzz/corpus && $G fuzz-corpus --out fuzz/corpus "${SEEDS[@]}"
(cd fuzz && cargo fuzz build -O)
printf '| target | seconds | executions | execs/s | coverage (edges) | features | crashes |\n|---|---|---|---|---|---|---|\n'
for target in link_decode reassembly gtpv1c gtpv2c gtpu_inner carriers correlate; do
  log=$(mktemp)
  status=0
  (cd fuzz && cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048) >"$log" 2>&1 || status=$?
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  execs=$(echo "$done_line" | sed -n 's/^#\([0-9]*\).*/\1/p')
  cov=$(echo "$done_line" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$done_line" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
  rate=$(echo "$done_line" | sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p')
  crashes=$([ "$status" -eq 0 ] && echo 0 || echo "see fuzz/artifacts/$target")
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$target" "$SECONDS_PER_TARGET" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
  rm -f "$log"
done
