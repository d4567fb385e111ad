#!/usr/bin/env bash
# Charging through gRPC into PostgreSQL, beside pgbench's one-row-update-plus-insert on the same server.
# Uses a scratch database per run that it drops at the end.
#   bash benches/billing-load.sh [CHARGES] [CONCURRENCY] [BATCH]
# 1. pgbench, CONCURRENCY clients, 10 s: the rate to meet.
# 2. Closed loop: CONCURRENCY callers of BATCH sightings each, as fast as they are answered (capacity).
# 3. Open loop at pgbench's rate, calls of 1 and of BATCH sightings on a fixed schedule: the latency at
#    that rate, counted from each call's scheduled start.
# 4. The same machine's own jitter: pgbench open loop (--rate) at half its closed-loop rate, latency
#    counted from each transaction's scheduled start as ours is, beside ours at that half rate. pgbench
#    cannot hold its full rate open loop (its queue grows without end), so half is where both can be held.
set -euo pipefail
cd "$(dirname "$0")/.."
CHARGES=${1:-10000}; CONCURRENCY=${2:-16}; BATCH=${3:-8}
PGHOST=${PGHOST:-127.0.0.1}; PGUSER=${PGUSER:-postgres}
CREATED=$(mktemp)
cleanup() {
  while read -r db; do psql -h "$PGHOST" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"; done < "$CREATED"
  rm -f "$CREATED"
}
trap cleanup EXIT
# A new scratch database per run (called in $(...), so the list of them lives in a file).
fresh() {
  local db; db=gtpcharge_bench_$$_$(wc -l < "$CREATED")
  echo "$db" >> "$CREATED"
  psql -h "$PGHOST" -U "$PGUSER" -d postgres -qc "CREATE DATABASE $db"
  echo "$db"
}
cargo build -q --release -p gtpcharge-billing-api --example load

echo "== pgbench: one-row UPDATE + INSERT per transaction, $CONCURRENCY clients, 10 s"
DB=$(fresh)
psql -h "$PGHOST" -U "$PGUSER" -d "$DB" -qc "CREATE TABLE bench_accounts (id int PRIMARY KEY, balance bigint); INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, 1000) g; CREATE TABLE bench_entries (id bigserial PRIMARY KEY, account int, amount bigint);"
SCRIPT=$(mktemp)
cat > "$SCRIPT" <<'SQL'
\set id random(1, 1000)
BEGIN;
UPDATE bench_accounts SET balance = balance - 1 WHERE id = :id;
INSERT INTO bench_entries (account, amount) VALUES (:id, -1);
COMMIT;
SQL
LOGS=$(mktemp -d)
# Percentiles of pgbench's per-transaction latencies (3rd column, microseconds; with --rate counted from
# each transaction's scheduled start), the same ones ours prints.
percentiles() {
  cat "$LOGS"/pgbench_log.* | awk '{print $3}' | sort -n | awk -v label="$1" '{l[NR]=$1} END {printf "%s p50 %.2f ms  p99 %.2f ms  max %.1f ms\n", label, l[int((NR-1)*0.5)+1]/1000, l[int((NR-1)*0.99)+1]/1000, l[NR]/1000}'
}
PGBENCH=$(cd "$LOGS" && pgbench -h "$PGHOST" -U "$PGUSER" -n -c "$CONCURRENCY" -j 2 -T 10 -l -f "$SCRIPT" "$DB" 2>/dev/null)
echo "$PGBENCH" | grep -E "^(tps|latency)"
percentiles "pgbench transaction"
RATE=$(echo "$PGBENCH" | sed -nE 's/^tps = ([0-9]+).*/\1/p')
HALF=$((RATE / 2))
rm -rf "$LOGS"; mkdir -p "$LOGS"
(cd "$LOGS" && pgbench -h "$PGHOST" -U "$PGUSER" -n -c "$CONCURRENCY" -j 2 -T 10 -R "$HALF" -l -f "$SCRIPT" "$DB" > /dev/null 2>&1)
percentiles "pgbench open loop at $HALF/s:"
rm -rf "$SCRIPT" "$LOGS"

echo "== gtpcharge ReportSightings (a charge: purchase update, account update, 2 ledger entries, change row, audit row)"
echo "-- closed loop, $CONCURRENCY callers"
for b in 1 "$BATCH"; do
  ./target/release/examples/load "postgres://$PGUSER@$PGHOST:5432/$(fresh)" "$CHARGES" "$CONCURRENCY" "$b" | tail -1
done
echo "-- open loop at pgbench's rate ($RATE/s)"
for b in 1 "$BATCH"; do
  ./target/release/examples/load "postgres://$PGUSER@$PGHOST:5432/$(fresh)" "$CHARGES" "$CONCURRENCY" "$b" "$RATE" | tail -1
done
echo "-- open loop at half pgbench's rate ($HALF/s), beside pgbench's own open loop above"
./target/release/examples/load "postgres://$PGUSER@$PGHOST:5432/$(fresh)" "$CHARGES" "$CONCURRENCY" "$BATCH" "$HALF" | tail -1
