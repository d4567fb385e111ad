#!/usr/bin/env bash
# Charging throughput through gRPC into PostgreSQL, beside pgbench's one-row-update-plus-insert on the
# same server. Uses a scratch database that it drops at the end.
#   bash benches/billing-load.sh [CHARGES] [CONCURRENCY] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
CHARGES=${1:-5000}; CONCURRENCY=${2:-16}; BATCH=${3:-1}
PGHOST=${PGHOST:-127.0.0.1}; PGUSER=${PGUSER:-postgres}
DB=gtpcharge_bench_$$
psql -h "$PGHOST" -U "$PGUSER" -d postgres -qc "CREATE DATABASE $DB"
trap 'psql -h "$PGHOST" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT
cargo build -q --release -p gtpcharge-billing-api --example load
echo "== gtpcharge ReportSightings (1 charge = 1 purchase update + 2 ledger entries + account update + audit + change row)"
./target/release/examples/load "postgres://$PGUSER@$PGHOST:5432/$DB" "$CHARGES" "$CONCURRENCY" "$BATCH"
echo "== pgbench: one-row UPDATE + INSERT per transaction, $CONCURRENCY clients, 10 s"
psql -h "$PGHOST" -U "$PGUSER" -d "$DB" -qc "CREATE TABLE bench_accounts (id int PRIMARY KEY, balance bigint); INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, 1000) g; CREATE TABLE bench_entries (id bigserial PRIMARY KEY, account int, amount bigint);"
SCRIPT=$(mktemp)
cat > "$SCRIPT" <<'SQL'
\set id random(1, 1000)
BEGIN;
UPDATE bench_accounts SET balance = balance - 1 WHERE id = :id;
INSERT INTO bench_entries (account, amount) VALUES (:id, -1);
COMMIT;
SQL
pgbench -h "$PGHOST" -U "$PGUSER" -n -c "$CONCURRENCY" -j 2 -T 10 -f "$SCRIPT" "$DB" 2>/dev/null | grep -E "^(tps|latency)"
rm -f "$SCRIPT"
