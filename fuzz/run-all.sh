#!/usr/bin/env bash
# Runs every fuzz target for a fixed time and prints a table of executions and coverage, then the
# source coverage of the correlator's key functions reached by the stateful targets' corpora.
# Seeds: the committed sample, a generated capture, and (when present, never committed) the public
# captures in ../shared/pcaps. Needs cargo-fuzz (installed here if missing); the stable toolchain is
# enough with RUSTC_BOOTSTRAP=1 (cargo-fuzz uses nightly-only sanitizer flags). The targets are built as
# cargo-fuzz does by default: optimised, with debug assertions and overflow checks on, so an arithmetic
# overflow is a crash. The coverage part needs rustup's llvm-tools (added here if missing).
#   bash fuzz/run-all.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
cargo build -q --release
G=target/release/gtpcharge
SEEDS=(pcaps/sample.pcap)
$G generate --out target/fuzz-seed.pcap --seed 3 --subscribers 40 >/dev/null 2>&1 && SEEDS+=(target/fuzz-seed.pcap)
if [ -d ../shared/pcaps ]; then SEEDS+=(../shared/pcaps/*.pcap ../shared/pcaps/*.pcapng); fi
rm -rf fuzz/corpus && $G fuzz-corpus --out fuzz/corpus "${SEEDS[@]}"
(cd fuzz && cargo fuzz build)
TARGETS=(link_decode reassembly capture_file gtpv1c gtpv2c gtpu_inner carriers flow correlate signalling)
printf '| target | seconds | executions | execs/s | coverage (edges) | features | crashes |\n|---|---|---|---|---|---|---|\n'
for target in "${TARGETS[@]}"; do
  log=$(mktemp)
  status=0
  (cd fuzz && cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048) >"$log" 2>&1 || status=$?
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  execs=$(echo "$done_line" | sed -n 's/^#\([0-9]*\).*/\1/p')
  cov=$(echo "$done_line" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$done_line" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
  rate=$(echo "$done_line" | sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p')
  crashes=$([ "$status" -eq 0 ] && echo 0 || echo "see fuzz/artifacts/$target")
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$target" "$SECONDS_PER_TARGET" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
  rm -f "$log"
done

# Source coverage (llvm-cov regions) of the correlator's key functions over each stateful corpus: the
# best-covered instance of each (generic functions have one per caller). Names demangled by c++filt.
rustup component list --installed 2>/dev/null | grep -q llvm-tools || rustup component add llvm-tools
LLVM_BIN="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/host: //p')/bin"
KEY='^(Correlator::(session_up|session_update|session_down|on_user_packet|on_tcp|report|on_v1_response|on_v2_response|on_gtpv0|fallback)|SessionTable::(idle|remove|expire_tombstones)|PendingTable::take|engine::scan_segment)$'
for target in signalling flow correlate; do
  (cd fuzz && cargo fuzz coverage "$target" "corpus/$target" >/dev/null 2>&1)
  binary=$(ls fuzz/target/*/coverage/*/release/"$target")
  echo
  echo "coverage of the key functions over the $target corpus (regions covered / regions):"
  "$LLVM_BIN/llvm-cov" report --show-functions --instr-profile="fuzz/coverage/$target/coverage.profdata" "$binary" \
      correlate/src/engine.rs correlate/src/session.rs correlate/src/pending.rs 2>/dev/null | c++filt \
    | awk -v key="$KEY" '
      # A long name stands alone on its line and its figures follow on the next.
      !(NF >= 9 && $(NF-8) ~ /^[0-9]+$/ && $(NF-6) ~ /%$/) { pending = $0; sub(/ +$/, "", pending); next }
      {
        if (NF == 9) { name = pending } else { name = $1; for (i = 2; i <= NF - 9; i++) name = name " " $i }
        gsub(/\[[0-9a-f]+\]/, "", name); gsub(/PendingTable<[^>]*>/, "PendingTable", name)
        sub(/::<.*$/, "", name); gsub(/[<>]/, "", name)
        sub(/^gtpcharge_correlate::(engine|session|pending)::/, "", name)
        if (name == "scan_segment") name = "engine::scan_segment"
        if (name !~ key) next
        covered = $(NF-8) - $(NF-7)
        if (!(name in best) || covered > best[name]) { best[name] = covered; total[name] = $(NF-8) }
      } END { for (n in best) printf "  %-34s %4d/%-4d regions\n", n, best[n], total[n] }' | sort
done
