//! What a download is measured against: the floor (a plain SQLite bulk insert of the same
//! rows, DESIGN.md) and the size of the rows as CSV.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, ensure};
use fieldsync_store::sample::{self, AssetRow, Gen};
use rusqlite::{Connection, params};

use crate::metrics::{cpu_ticks, machine_ticks};

pub(crate) const INSERT_ASSET: &str = "INSERT INTO assets (id, name, category, status, region, x, y, installed, notes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
pub(crate) const CSV_HEADER: [&str; 9] = [
    "id",
    "name",
    "category",
    "status",
    "region",
    "x",
    "y",
    "installed",
    "notes",
];

/// The floor's time, and what else ran meanwhile.
pub(crate) struct FloorFigures {
    pub(crate) total_s: f64,
    /// The final checkpoint, close and fsync, after the commit.
    pub(crate) sync_s: f64,
    /// This program's CPU time for the floor (user + system).
    pub(crate) cpu_s: f64,
    /// CPU time of everything else on the machine during the floor.
    pub(crate) other_cpu_s: f64,
}

/// Every row of the slice, from the fixed generator: one `Gen` seeded 42, ids 1..=n, all
/// in region `north`.
pub(crate) fn generate(n_rows: u64) -> Vec<AssetRow> {
    let mut g = Gen::new(42);
    (1..=n_rows as i64)
        .map(|id| sample::asset_row(&mut g, id, "north"))
        .collect()
}

/// Inserts `rows` into `assets` in one transaction with one prepared statement.
pub(crate) fn insert_rows(conn: &mut Connection, rows: &[AssetRow]) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(INSERT_ASSET)?;
        for r in rows {
            insert.execute(params![
                r.id,
                r.name,
                r.category,
                r.status,
                r.region,
                r.x,
                r.y,
                r.installed,
                r.notes
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The floor of DESIGN.md: a fresh file with the same schema, WAL, synchronous=NORMAL,
/// one transaction, a prepared statement, fsync at the end. The rows are already in
/// memory; only the insert, the checkpoint, the close and the fsync are timed.
pub(crate) fn floor(
    path: &Path,
    rows: &[AssetRow],
    ticks_per_s: f64,
) -> anyhow::Result<FloorFigures> {
    let mut conn = Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    ensure!(
        mode == "wal",
        "the floor database is in journal mode {mode}, not wal"
    );
    conn.execute_batch("PRAGMA synchronous=NORMAL")?;
    conn.execute_batch(sample::SCHEMA)?;

    let own_pid = std::process::id();
    let own_ticks_before = cpu_ticks(own_pid).context("reading this program's CPU time")?;
    let (busy_before, _) = machine_ticks().context("reading /proc/stat")?;
    let started = Instant::now();
    insert_rows(&mut conn, rows)?;
    let committed = Instant::now();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.close().map_err(|(_, e)| e)?;
    File::open(path)?.sync_all()?;
    let elapsed = started.elapsed().as_secs_f64();
    let sync_s = committed.elapsed().as_secs_f64();
    let own_ticks = cpu_ticks(own_pid)
        .context("reading this program's CPU time")?
        .saturating_sub(own_ticks_before);
    let (busy_after, _) = machine_ticks().context("reading /proc/stat")?;
    let other_ticks = busy_after
        .saturating_sub(busy_before)
        .saturating_sub(own_ticks);

    let conn = Connection::open(path)?;
    let n: i64 = conn.query_row("SELECT count(*) FROM assets", [], |r| r.get(0))?;
    ensure!(
        n as usize == rows.len(),
        "the floor holds {n} rows, not {}",
        rows.len()
    );
    Ok(FloorFigures {
        total_s: elapsed,
        sync_s,
        cpu_s: own_ticks as f64 / ticks_per_s,
        other_cpu_s: other_ticks as f64 / ticks_per_s,
    })
}

/// One CSV field as RFC 4180 writes it: quoted when it holds a comma, quote or line
/// break, quotes doubled.
pub(crate) fn csv_field_len(field: &str) -> u64 {
    if field.contains([',', '"', '\r', '\n']) {
        2 + field.len() as u64 + field.matches('"').count() as u64
    } else {
        field.len() as u64
    }
}

/// A REAL as SQLite's CSV output writes it (`%!.15g`): 15 significant digits, trailing
/// zeros dropped. Shorter than Rust's round-trip form for sums like 14.0 + 0.123456, so
/// the CSV is not made longer than a real export would be.
pub(crate) fn real_text(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x:?}");
    }
    let int_digits = (x.abs().log10().floor() as i32 + 1).max(1);
    let decimals = (15 - int_digits).max(1) as usize;
    let text = format!("{x:.decimals$}");
    let text = text.trim_end_matches('0');
    if text.ends_with('.') {
        format!("{text}0")
    } else {
        text.to_string()
    }
}

/// The size of the rows as CSV with a header line and CRLF line ends (RFC 4180), counted
/// without writing a file.
pub(crate) fn csv_bytes(rows: &[AssetRow]) -> u64 {
    let line = |fields: &[&str]| -> u64 {
        fields.iter().map(|f| csv_field_len(f)).sum::<u64>() + (fields.len() as u64 - 1) + 2
    };
    let mut total = line(&CSV_HEADER);
    for r in rows {
        let (id, x, y) = (r.id.to_string(), real_text(r.x), real_text(r.y));
        total += line(&[
            &id,
            &r.name,
            r.category,
            r.status,
            r.region,
            &x,
            &y,
            &r.installed,
            &r.notes,
        ]);
    }
    total
}
