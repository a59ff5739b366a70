#!/usr/bin/env bash
# The send benchmark of scripts/bench-send.sh on a PostgreSQL main database: N journal
# entries (inserted inspections, then the same rows updated) sent by `fieldsync device send`, the device's wall time
# and the server's integration time from its sync history. Creates and drops a fresh
# database on the server of FIELDSYNC_BENCH_PG (default: the local one).
# Usage: scripts/bench-send-pg.sh [N]   (default 100000; needs psql, sqlite3, python3)
set -euo pipefail
N=${1:-100000}
BASE=${FIELDSYNC_BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}
cd "$(dirname "$0")/.."
cargo build --release -q -p fieldsync-cli
B=$PWD/target/release/fieldsync
R=$(mktemp -d)
NAME=fs_bench_send_$$
DB=${BASE%/*}/$NAME
trap 'kill $SP 2>/dev/null || true; psql -q "$BASE" -c "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" || true; rm -rf "$R"' EXIT
psql -q "$BASE" -c "CREATE DATABASE $NAME"
python3 - "$PWD/crates/store/src/sample.rs" >"$R/schema.sql" <<'PY'
import sys
s = open(sys.argv[1]).read()
start = s.index('pub const PG_SCHEMA: &str = r#"') + len('pub const PG_SCHEMA: &str = r#"')
print(s[start:s.index('"#;', start)])
PY
psql -q "$DB" -f "$R/schema.sql"
psql -q "$DB" -c "INSERT INTO assets (id, name, category, status, region)
  SELECT i, 'pump-' || i, 'pump', 'active', 'north' FROM generate_series(1, 1000) i"
"$B" server init --db "$DB" >/dev/null
for t in assets inspections; do "$B" admin table track $t --db "$DB" >/dev/null; done
cat >"$R/task.toml" <<'TOML'
name = "bench-send"
[[tables]]
name = "assets"
filter = "region = 'north'"
[[tables]]
name = "inspections"
parent = { table = "assets", key = "asset_id" }
filter = "inspector = $user"
write = ["insert", "update"]
TOML
"$B" admin task apply "$R/task.toml" --db "$DB" >/dev/null
"$B" admin user add ana --password-stdin --db "$DB" <<<"ana-secret" >/dev/null
CODE=$("$B" admin device add tab1 --db "$DB")
"$B" admin task assign bench-send --user ana --device tab1 --db "$DB" >/dev/null
"$B" server run --db "$DB" --listen 127.0.0.1:0 >"$R/srv.out" 2>"$R/srv.err" &
SP=$!
for _ in $(seq 100); do [ -s "$R/srv.out" ] && break; sleep 0.1; done
URL=$(head -1 "$R/srv.out" | sed 's/listening on //')
D=$R/tab1
"$B" device pair --server "$URL" --device-id tab1 --code "$CODE" --dir "$D" >/dev/null
"$B" device login ana --password-stdin --dir "$D" <<<"ana-secret" >/dev/null
"$B" device download bench-send --dir "$D" >/dev/null
sqlite3 "$D/replica.sqlite" "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < $N)
  INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
  SELECT printf('bulk-%08d', i), 1 + i % 1000, 'ana', '2026-11-26T09:00:00.000Z', 'ok', 'bulk inspection ' || i FROM k;"
# Sends the journal, checks that CHECK_SQL counts N rows, prints the rates.
timed_send() {
    local what=$1 check_sql=$2
    local S E MS GOT
    S=$(date +%s.%N)
    "$B" device send --dir "$D" >/dev/null
    E=$(date +%s.%N)
    MS=$("$B" admin sessions --db "$DB" --json | python3 -c "import json,sys; print(json.load(sys.stdin)[-1]['duration_ms'])")
    GOT=$(psql -Atq "$DB" -c "$check_sql")
    [ "$GOT" = "$N" ] || { echo "expected $N $what, found $GOT"; exit 1; }
    python3 -c "
t = $E - $S
print(f'PostgreSQL: $N $what: device send {t:.2f} s ({$N / t:.0f} entries/s end to end); server integration {$MS} ms ({$N * 1000 / $MS:.0f} entries/s)')"
}
timed_send inserts "SELECT count(*) FROM inspections WHERE id LIKE 'bulk-%'"
# The same rows updated: N update entries.
sqlite3 "$D/replica.sqlite" "UPDATE inspections SET result = 'worn', notes = 'updated ' || id WHERE id LIKE 'bulk-%';"
timed_send updates "SELECT count(*) FROM inspections WHERE id LIKE 'bulk-%' AND result = 'worn'"
