#!/usr/bin/env bash
# Measures `fieldsync device send` of N journal entries (inserted inspections) against a
# local server on loopback, with the release build: the device's wall time for the whole
# send, the server's integration time from its sync history (summed over the uploads a
# long journal goes in), and the peak resident memory of the device's send (kernel
# maximum RSS, /usr/bin/time) and of the server (VmHWM).
# Usage: scripts/bench-send.sh [N]   (default 100000; needs sqlite3 and python3)
set -euo pipefail
N=${1:-100000}
cd "$(dirname "$0")/.."
cargo build --release -q -p fieldsync-cli
B=$PWD/target/release/fieldsync
R=$(mktemp -d)
trap 'kill $SP 2>/dev/null || true; rm -rf "$R"' EXIT
"$B" demo --dir "$R/d" >/dev/null
DB=sqlite:$R/d/main.sqlite
D=$R/d/tablet-1
"$B" server run --db "$DB" --listen 127.0.0.1:0 >"$R/srv.out" 2>"$R/srv.err" &
SP=$!
for _ in $(seq 100); do [ -s "$R/srv.out" ] && break; sleep 0.1; done
URL=$(head -1 "$R/srv.out" | sed 's/listening on //')
python3 -c "
import json
p='$D/state.json'; s=json.load(open(p)); s['server']='$URL'; json.dump(s, open(p, 'w'))"
"$B" device login ana --password-stdin --dir "$D" <<<"ana-secret" >/dev/null
sqlite3 "$D/replica.sqlite" "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < $N)
  INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
  SELECT printf('bulk-%08d', i), 1, 'ana', '2026-11-26T09:00:00.000Z', 'ok', 'bulk inspection ' || i FROM k;"
S=$(date +%s.%N)
/usr/bin/time -f %M -o "$R/device-rss" "$B" device send --dir "$D" >/dev/null
E=$(date +%s.%N)
SRV_KB=$(awk '/VmHWM/ {print $2}' /proc/$SP/status)
DEV_KB=$(cat "$R/device-rss")
read -r MS UPLOADS < <("$B" admin sessions --db "$DB" --json | python3 -c "
import json, sys
s = [x for x in json.load(sys.stdin) if x['op'] == 'send']
print(sum(x['duration_ms'] for x in s), len(s))")
python3 -c "
t = $E - $S
print(f'$N entries in $UPLOADS upload(s): device send {t:.2f} s ({$N / t:.0f} entries/s end to end); server integration {$MS} ms ({$N * 1000 / $MS:.0f} entries/s); peak RSS device {$DEV_KB // 1024} MB, server {$SRV_KB // 1024} MB')"
