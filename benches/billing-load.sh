#!/usr/bin/env bash
# Charging through gRPC into PostgreSQL, each way of charging beside the pgbench transaction of the same
# size, in the same run on the same server. Uses scratch databases that it drops at the end.
#   bash benches/billing-load.sh [MIN_CHARGES] [CONCURRENCY] [BATCH]
# A charge (one ReportSightings sighting that charges) is: the purchase row updated, the account row
# updated, two ledger entries, a change row and an audit row. pgbench's transaction is one account row
# updated and one row inserted, BATCH times over for the batched one. Every window is at least 10 s
# (the charge counts are sized from pgbench's rate; a shorter one is flagged).
# 1. pgbench, CONCURRENCY clients, 12 s: single-row transactions, then BATCH rows a transaction.
# 2. Closed loop, CONCURRENCY callers, group commit off (each call its own transaction, as many in flight
#    as pgbench has clients): calls of 1 sighting (unbatched) beside (1); calls of BATCH beside (1)'s
#    batched transaction.
# 3. The server as shipped (group commit up to 32 sightings, 2 transactions in flight), calls of BATCH.
# 4. Open loop with the server as shipped at pgbench's single-row rate, calls of 1 and of BATCH: the
#    latency at that rate, from each call's scheduled start.
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_CHARGES=${1:-10000}; CONCURRENCY=${2:-16}; BATCH=${3:-8}
PGHOST=${PGHOST:-127.0.0.1}; PGUSER=${PGUSER:-postgres}; PGPORT=${PGPORT:-5432}
export PGPASSWORD=${PGPASSWORD:-}
CREATED=$(mktemp)
cleanup() {
  while read -r db; do psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"; done < "$CREATED"
  rm -f "$CREATED"
}
trap cleanup EXIT
# A new scratch database per run (called in $(...), so the list of them lives in a file).
fresh() {
  local db; db=gtpcharge_bench_$$_$(wc -l < "$CREATED")
  echo "$db" >> "$CREATED"
  psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "CREATE DATABASE $db"
  echo "$db"
}
url() { echo "postgres://$PGUSER${PGPASSWORD:+:$PGPASSWORD}@$PGHOST:$PGPORT/$(fresh)"; }
cargo build -q --release -p gtpcharge-billing-api --example load

DB=$(fresh)
psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d "$DB" -qc "CREATE TABLE bench_accounts (id int PRIMARY KEY, balance bigint); INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, 1000) g; CREATE TABLE bench_entries (id bigserial PRIMARY KEY, account int, amount bigint);"
SCRIPT=$(mktemp)
# pgbench with ROWS (update + insert) per transaction, 12 s; prints its tps.
pgbench_rows() {
  local rows=$1
  {
    echo 'BEGIN;'
    # Each row from its own slice of the 1,000 accounts, so the rows are locked in ascending order, as
    # the ledger locks a batch's accounts: random order would deadlock 16 clients against each other.
    for i in $(seq 1 "$rows"); do
      echo "\\set id$i random($(( (i - 1) * 1000 / rows + 1 )), $(( i * 1000 / rows )))"
      echo "UPDATE bench_accounts SET balance = balance - 1 WHERE id = :id$i;"
      echo "INSERT INTO bench_entries (account, amount) VALUES (:id$i, -1);"
    done
    echo 'COMMIT;'
  } > "$SCRIPT"
  pgbench -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -n -c "$CONCURRENCY" -j 2 -T 12 -f "$SCRIPT" "$DB" 2>/dev/null \
    | sed -nE 's/^tps = ([0-9.]+).*/\1/p'
}
TPS1=$(pgbench_rows 1)
TPSB=$(pgbench_rows "$BATCH")
rm -f "$SCRIPT"
RATE1=${TPS1%.*}
ROWSB=$(awk -v t="$TPSB" -v b="$BATCH" 'BEGIN {printf "%d", t * b}')
echo "== pgbench, $CONCURRENCY clients, 12 s each"
echo "pgbench 1 row a transaction:        $RATE1 tps"
echo "pgbench $BATCH rows a transaction:       ${TPSB%.*} tps = $ROWSB rows/s"

# Enough charges for 12 s at the rate each run is expected near (the matching pgbench's).
charges() { awk -v r="$1" -v m="$MIN_CHARGES" 'BEGIN {n = int(r * 12); print (n > m ? n : m)}'; }
load() { # LABEL CHARGES BATCH [RATE], with LOAD_* in the environment
  local line; line=$(./target/release/examples/load "$(url)" "$2" "$CONCURRENCY" "$3" ${4:-} | tail -1)
  printf '%-34s %s\n' "$1" "$line"
  local elapsed; elapsed=$(echo "$line" | sed -nE 's/.*elapsed ([0-9.]+)s.*/\1/p')
  awk -v e="$elapsed" 'BEGIN {exit !(e < 10)}' && echo "   (window under 10 s: rerun with MIN_CHARGES larger)" || true
}
echo "== gtpcharge ReportSightings, closed loop, $CONCURRENCY callers"
LOAD_GROUP_COMMIT=1 LOAD_WORKERS=$CONCURRENCY load "unbatched (1 a call, 1 a txn):" "$(charges "$RATE1")" 1
LOAD_GROUP_COMMIT=1 LOAD_WORKERS=$CONCURRENCY load "batched ($BATCH a call, $BATCH a txn):" "$(charges "$ROWSB")" "$BATCH"
load "as shipped ($BATCH a call, group commit):" "$(charges "$ROWSB")" "$BATCH"
echo "== gtpcharge as shipped, open loop at pgbench's single-row rate ($RATE1/s)"
load "calls of 1:" "$(charges "$RATE1")" 1 "$RATE1"
load "calls of $BATCH:" "$(charges "$RATE1")" "$BATCH" "$RATE1"
