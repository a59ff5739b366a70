# Replays a delta's apply on a copy of a device's replica, the way
# crates/client/src/replica/delta.rs applies it (BEGIN IMMEDIATE, a savepoint, the
# 'applying' flag, an EXISTS probe and an upsert per row), for 10,000 upserts of every
# 100th asset of a bench replica, under a few connection settings; prints a markdown row
# per setting: apply, commit (WAL write and fsync), checkpoint, total.
#
# usage: python3 crates/bench/replay-delta-apply.py REPLICA.sqlite SCRATCH.sqlite
# (REPLICA from a bench run kept with --dir; SCRATCH is overwritten.)
import shutil, sqlite3, sys, time, os
src, work = sys.argv[1], sys.argv[2]
variants = {
    "as the device (default cache 2 MB, temp_store FILE, savepoint)": ([], True),
    "temp_store = MEMORY": (["PRAGMA temp_store = MEMORY"], True),
    "temp_store = MEMORY, cache_size = -65536": (["PRAGMA temp_store = MEMORY", "PRAGMA cache_size = -65536"], True),
    "no savepoint (the hold's transaction only)": ([], False),
}
for name, (pragmas, savepoint) in variants.items():
    for ext in ("", "-wal", "-shm"):
        if os.path.exists(work + ext): os.remove(work + ext)
    shutil.copy(src, work)
    os.system("sync")
    c = sqlite3.connect(work, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL").fetchone()
    for p in pragmas: c.execute(p)
    rows = c.execute("SELECT * FROM assets WHERE id % 100 = 37").fetchall()
    rows = [(r[0], r[1] + "!") + tuple(r[2:]) for r in rows]
    c.close()
    os.system("sync")
    t0 = time.perf_counter()
    c = sqlite3.connect(work, isolation_level=None)
    for p in pragmas: c.execute(p)
    c.execute("BEGIN IMMEDIATE")
    if savepoint: c.execute("SAVEPOINT fieldsync_delta")
    c.execute("INSERT INTO fieldsync_replica (key, value) VALUES ('applying', '1') ON CONFLICT (key) DO UPDATE SET value = excluded.value")
    cols = "id, name, category, status, region, x, y, installed, notes"
    sets = ", ".join(f"{x} = excluded.{x}" for x in cols.split(", ")[1:])
    for r in rows:
        c.execute("SELECT EXISTS (SELECT 1 FROM assets WHERE id = ?)", (r[0],)).fetchone()
        c.execute(f"INSERT INTO assets ({cols}) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET {sets}", r)
    c.execute("DELETE FROM fieldsync_replica WHERE key = 'applying'")
    if savepoint: c.execute("RELEASE fieldsync_delta")
    t1 = time.perf_counter()
    c.execute("PRAGMA wal_autocheckpoint = 0")
    c.execute("COMMIT")
    t2 = time.perf_counter()
    c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    t3 = time.perf_counter()
    c.close()
    print(f"| {name} | {len(rows)} | {t1-t0:.3f} s | {t2-t1:.3f} s | {t3-t2:.3f} s | {t3-t0:.3f} s |")
