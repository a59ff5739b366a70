//! Send end to end (issue #20, part d, `--send N`): N journal entries sent by the real
//! `fieldsync device send`, timed as the device sees it (start to exit of the process:
//! reading and compacting the journal, compression, the uploads, the server's
//! integration, the acknowledgement), on the SQLite main database and on PostgreSQL;
//! then `device sync` of the same journal, for Send against Synchronize. This is what
//! scripts/bench-send.sh and scripts/bench-send-pg.sh measured, in one run.
//!
//! The same journal twice: two identical setups (main database, server, device, the
//! same N inspections inserted through the replica's triggers), one for the send, one
//! for the sync. Not copies of one: a copy of a PostgreSQL main database is another
//! epoch (its database OID is part of it, `store/src/postgres/schema.rs`), so the
//! copied device's sync would download the whole slice. After its send, the first
//! device updates the same N rows (two columns each) and sends again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, ensure};
use fieldsync_store::sample;
use rusqlite::Connection;

use crate::floor::{generate, insert_rows};
use crate::measure::{
    BENCH_PASSWORD, BENCH_USER, PgBenchDb, ServerChild, fieldsync, insert_rows_pg, start_server,
};
use crate::metrics::{Watched, peak_rss_kb, reset_peak_rss, timed_download};

/// DESIGN.md's end-to-end targets, entries per second.
pub(crate) const SEND_RATE_MIN_SQLITE: f64 = 100_000.0;
pub(crate) const SEND_RATE_MIN_PG: f64 = 50_000.0;
/// Assets of the main database; the inspections hang from them.
const SEND_ASSETS: u64 = 1_000;
const SEND_DEVICE: &str = "send1";
const SEND_TASK: &str = "bench-send";
const SEND_TASK_FILE: &str = r#"name = "bench-send"
[[tables]]
name = "assets"
filter = "region = 'north'"
[[tables]]
name = "inspections"
parent = { table = "assets", key = "asset_id" }
filter = "inspector = $user"
write = ["insert", "update"]
"#;

/// One timed device command.
pub(crate) struct SendRun {
    pub(crate) watched: Watched,
    /// The server's peak RSS during it (VmHWM, reset before).
    pub(crate) server_rss_kb: u64,
    /// The server's integration time of the journal, summed over its uploads (the sync
    /// history's `duration_ms` of the entries that carried rows up), and their count.
    pub(crate) server_ms: u64,
    pub(crate) uploads: usize,
    /// The sync history's `duration_ms` of every entry of the command (a sync's
    /// download too).
    pub(crate) history_ms: u64,
}

pub(crate) struct SendFigures {
    pub(crate) engine: &'static str,
    pub(crate) entries: u64,
    /// Writing the N entries on the replica (setup, not timed).
    pub(crate) journal_s: f64,
    pub(crate) send: SendRun,
    pub(crate) sync: SendRun,
    pub(crate) updates: SendRun,
    /// The send's wall clock of every run (`--reps`), in order; this one is the median
    /// run's (its sync and updates with it).
    pub(crate) runs_s: Vec<f64>,
}

/// Entries per second of `entries` in `seconds`.
pub(crate) fn rate(entries: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        entries as f64 / seconds
    } else {
        0.0
    }
}

/// The end-to-end target of an engine, entries per second.
pub(crate) fn rate_min(engine: &str) -> f64 {
    if engine == "PostgreSQL" {
        SEND_RATE_MIN_PG
    } else {
        SEND_RATE_MIN_SQLITE
    }
}

/// The sync history's entries, oldest first.
fn history(bin: &Path, db: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = fieldsync(bin, &["admin", "history", "--json", "--db", db], None)?;
    serde_json::from_str(&text).context("parsing `admin history --json`")
}

/// The server's integration time and upload count from history entries: those that
/// carried rows up; and the time of them all.
pub(crate) fn integration(entries: &[serde_json::Value]) -> (u64, usize, u64) {
    let ms = |e: &serde_json::Value| e["duration_ms"].as_u64().unwrap_or(0);
    let ups: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["rows_up"].as_u64().unwrap_or(0) > 0)
        .collect();
    (
        ups.iter().map(|e| ms(e)).sum(),
        ups.len(),
        entries.iter().map(ms).sum(),
    )
}

fn journal_len(replica: &Path) -> anyhow::Result<i64> {
    let conn = Connection::open(replica)?;
    Ok(conn.query_row("SELECT count(*) FROM fieldsync_journal", [], |r| r.get(0))?)
}

/// The main database's count of a query's rows (SQLite file or PostgreSQL URL).
fn main_count(db: &str, sql: &str) -> anyhow::Result<i64> {
    match db.strip_prefix("sqlite:") {
        Some(path) => Ok(Connection::open(path)?.query_row(sql, [], |r| r.get(0))?),
        None => Ok(postgres::Client::connect(db, postgres::NoTls)?
            .query_one(&format!("SELECT ({sql})::bigint"), &[])?
            .get(0)),
    }
}

const BULK_COUNT: &str = "SELECT count(*) FROM inspections WHERE id LIKE 'bulk-%'";
const WORN_COUNT: &str =
    "SELECT count(*) FROM inspections WHERE id LIKE 'bulk-%' AND result = 'worn'";

/// One timed `fieldsync device OP --dir DIR` against a server: its figures from
/// outside, and the server's from the history entries it added; fails unless the
/// journal is empty afterwards and `check` counts `entries` rows in the main database.
#[allow(clippy::too_many_arguments)]
fn timed(
    bin: &Path,
    op: &str,
    dir: &str,
    replica: &Path,
    db: &str,
    server: &ServerChild,
    check: &str,
    entries: u64,
    ticks_per_s: f64,
) -> anyhow::Result<SendRun> {
    let before = history(bin, db)?.len();
    let pid = server.0.id();
    reset_peak_rss(pid)?;
    eprintln!("device {op} ({entries} entries)");
    let watched = timed_download(bin, &["device", op, "--dir", dir], pid, ticks_per_s)?;
    let server_rss_kb = peak_rss_kb(pid).context("reading the server's peak RSS")?;
    let added = history(bin, db)?.split_off(before);
    let (server_ms, uploads, history_ms) = integration(&added);
    let left = journal_len(replica)?;
    ensure!(
        left == 0,
        "`device {op}` exited 0 but {left} journal entries are left"
    );
    let got = main_count(db, check)?;
    ensure!(
        got as u64 == entries,
        "WRONG MAIN DATABASE after `device {op}`: `{check}` counts {got}, not {entries}"
    );
    Ok(SendRun {
        watched,
        server_rss_kb,
        server_ms,
        uploads,
        history_ms,
    })
}

/// A main database, its server and a paired device holding `entries` journal entries.
struct Setup {
    server: ServerChild,
    db: String,
    device: String,
    replica: PathBuf,
    /// Writing the entries on the replica, seconds.
    journal_s: f64,
    _pg: Option<PgBenchDb>,
}

/// Builds a setup in `dir`: on SQLite (`main.sqlite`), or in a new database of the
/// PostgreSQL server at `pg_base`.
fn set_up(bin: &Path, dir: &Path, entries: u64, pg_base: Option<&str>) -> anyhow::Result<Setup> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let assets = generate(SEND_ASSETS);
    let pg = pg_base.map(PgBenchDb::create).transpose()?;
    let db = match &pg {
        None => {
            let main_db = dir.join("main.sqlite");
            let mut conn = Connection::open(&main_db)?;
            conn.execute_batch(sample::SCHEMA)?;
            insert_rows(&mut conn, &assets).context("filling the main database")?;
            format!("sqlite:{}", main_db.display())
        }
        Some(pg) => {
            insert_rows_pg(&pg.url, &assets).context("filling the PostgreSQL database")?;
            pg.url.clone()
        }
    };
    let db_s = db.as_str();
    fieldsync(bin, &["server", "init", "--db", db_s], None)?;
    for table in ["assets", "inspections"] {
        fieldsync(bin, &["admin", "table", "track", table, "--db", db_s], None)?;
    }
    let password = format!("{BENCH_PASSWORD}\n");
    fieldsync(
        bin,
        &[
            "admin",
            "user",
            "add",
            BENCH_USER,
            "--password-stdin",
            "--db",
            db_s,
        ],
        Some(&password),
    )?;
    let code = fieldsync(
        bin,
        &["admin", "device", "add", SEND_DEVICE, "--db", db_s],
        None,
    )?;
    let task_file = dir.join("send-task.toml");
    std::fs::write(&task_file, SEND_TASK_FILE)?;
    let task_path = task_file.to_str().context("the work folder is not UTF-8")?;
    fieldsync(
        bin,
        &["admin", "task", "apply", task_path, "--db", db_s],
        None,
    )?;
    fieldsync(
        bin,
        &[
            "admin",
            "task",
            "assign",
            SEND_TASK,
            "--user",
            BENCH_USER,
            "--device",
            SEND_DEVICE,
            "--db",
            db_s,
        ],
        None,
    )?;
    let (server, url) = start_server(bin, db_s, &dir.join("server.log"))?;
    let device = dir.join("device");
    let device_s = device.to_str().context("the work folder is not UTF-8")?;
    crate::measure::pair_and_login(bin, device_s, &url, SEND_DEVICE, code.trim())?;
    fieldsync(
        bin,
        &["device", "download", SEND_TASK, "--dir", device_s],
        None,
    )?;

    eprintln!("writing {entries} inspections on the replica");
    let started = Instant::now();
    let replica = device.join("replica.sqlite");
    {
        let conn = Connection::open(&replica)?;
        conn.execute(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
             INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
             SELECT printf('bulk-%08d', i), 1 + i % ?2, ?3, '2026-11-26T09:00:00.000Z', 'ok',
                    'bulk inspection ' || i FROM k",
            rusqlite::params![entries as i64, SEND_ASSETS as i64, BENCH_USER],
        )
        .context("writing the inspections on the replica")?;
    }
    let journal_s = started.elapsed().as_secs_f64();
    let n = journal_len(&replica)?;
    ensure!(
        n as u64 == entries,
        "the journal holds {n} entries after {entries} inserts"
    );
    Ok(Setup {
        server,
        db,
        device: device_s.to_string(),
        replica,
        journal_s,
        _pg: pg,
    })
}

/// Times the send of `entries` journal entries, the send of their updates, and the sync
/// of the same journal on a second, identical setup; `pg_base` for PostgreSQL.
pub(crate) fn measure_send(
    bin: &Path,
    dir: &Path,
    entries: u64,
    pg_base: Option<&str>,
    ticks_per_s: f64,
) -> anyhow::Result<SendFigures> {
    let engine = if pg_base.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    eprintln!(
        "== send of {entries} entries in {} ({engine})",
        dir.display()
    );
    let a = set_up(bin, &dir.join("send"), entries, pg_base)?;
    let timed_on = |s: &Setup, op: &str, check: &str| {
        timed(
            bin,
            op,
            &s.device,
            &s.replica,
            &s.db,
            &s.server,
            check,
            entries,
            ticks_per_s,
        )
    };
    let send = timed_on(&a, "send", BULK_COUNT)?;
    {
        let conn = Connection::open(&a.replica)?;
        let changed = conn.execute(
            "UPDATE inspections SET result = 'worn', notes = 'updated ' || id WHERE id LIKE 'bulk-%'",
            [],
        )?;
        ensure!(changed as u64 == entries, "{changed} inspections updated");
    }
    let updates = timed_on(&a, "send", WORN_COUNT)?;
    let journal_s = a.journal_s;
    drop(a);
    let b = set_up(bin, &dir.join("sync"), entries, pg_base)?;
    let sync = timed_on(&b, "sync", BULK_COUNT)?;
    drop(b);
    Ok(SendFigures {
        engine,
        entries,
        journal_s,
        send,
        sync,
        updates,
        runs_s: Vec::new(),
    })
}
