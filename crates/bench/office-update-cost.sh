#!/usr/bin/env bash
# What the tracking triggers cost the office: an UPDATE of 100,000 rows of a
# 1,000,000-row tracked table, of a column no task filters by (`notes`) and of one a
# task filters by (`region`, watched), three times each on other rows, on PostgreSQL
# (timed by psql's \timing) and SQLite (the sqlite3 shell), for two fieldsync binaries
# in turn (each sets up its own databases), so that a change to the triggers can be
# compared in one sitting:
#
#   crates/bench/office-update-cost.sh OLD_BINARY NEW_BINARY [POSTGRES_BASE_URL]
#
# POSTGRES_BASE_URL (default postgres://postgres@127.0.0.1:5432) names a server where
# the user may create databases; the databases fs_trig_0 and fs_trig_1 are made and
# dropped, the SQLite files live in a temporary folder.
set -euo pipefail
old=$1 new=$2 base=${3:-postgres://postgres@127.0.0.1:5432}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
task=$work/task.toml
printf 'name = "t"\n[[tables]]\nname = "assets"\nfilter = "region = '"'"'north'"'"'"\n' >"$task"
bins=("$old" "$new")
for i in 0 1; do
    bin=${bins[$i]} db=fs_trig_$i
    psql -q "$base/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    psql -q "$base/$db" -c "CREATE TABLE assets (id bigint PRIMARY KEY, name text NOT NULL,
            region text NOT NULL, status text NOT NULL, notes text);
        INSERT INTO assets SELECT g, 'asset ' || g, CASE WHEN g % 3 = 0 THEN 'north' ELSE 'south' END,
            'active', 'notes of ' || g FROM generate_series(1, 1000000) g;"
    sqlite3 "$work/$i.sqlite" "CREATE TABLE assets (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
            region TEXT NOT NULL, status TEXT NOT NULL, notes TEXT);
        WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 1000000)
        INSERT INTO assets SELECT n, 'asset ' || n, CASE WHEN n % 3 = 0 THEN 'north' ELSE 'south' END,
            'active', 'notes of ' || n FROM g;"
    for url in "$base/$db" "sqlite:$work/$i.sqlite"; do
        "$bin" server init --db "$url" >/dev/null
        "$bin" admin table track assets --db "$url" >/dev/null
        "$bin" admin task apply "$task" --db "$url" >/dev/null
    done
done
flip="region = CASE WHEN region = 'north' THEN 'south' ELSE 'north' END"
echo "| run | binary | PostgreSQL notes | PostgreSQL region | SQLite notes | SQLite region |"
echo "|---|---|---|---|---|---|"
for r in 1 2 3; do
    for i in 0 1; do
        pg() { psql -At "$base/fs_trig_$i" -c '\timing on' -c "$1" | awk '/^Time/ {print $2 " ms"}'; }
        lite() { /usr/bin/time -f '%e s' sqlite3 "$work/$i.sqlite" "$1" 2>&1; }
        echo "| $r | ${bins[$i]} | $(pg "UPDATE assets SET notes = notes || 'x' WHERE id % 10 = $r") \
| $(pg "UPDATE assets SET $flip WHERE id % 10 = $r") \
| $(lite "UPDATE assets SET notes = notes || 'x' WHERE id % 10 = $r") \
| $(lite "UPDATE assets SET $flip WHERE id % 10 = $r") |"
    done
done
for i in 0 1; do psql -q "$base/postgres" -c "DROP DATABASE fs_trig_$i"; done
