//! The delta measurement (incremental sync): after the two full downloads, the office
//! changes 1% of the slice and the device syncs, then syncs again with nothing changed.
//! Both are judged against the full download (`--full`) of the same run: at most 3% of
//! its bytes and 8% of its time after 1% changed, under 2 KB with nothing changed.
//! Then 0.1% and 10% more ([`MORE_LEVELS`]), each followed by a sync, to show how a
//! delta's cost follows the share changed.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, ensure};
use fieldsync_store::sample::AssetRow;
use rusqlite::Connection;

use crate::measure::{check_replica, fieldsync};
use crate::metrics::{Watched, timed_download};

/// What the office does between the full download and the timed sync: one row in a
/// hundred, spread over the whole table, gets a name ending in `*`.
pub(crate) const OFFICE_UPDATE: &str = "UPDATE assets SET name = name || '*' WHERE id % 100 = 0";

/// The further shares the office changes after the 1% and the idle sync: label, and
/// the ids changed (`id % modulus = remainder`), chosen apart from the 1% (`id % 100 =
/// 0`) and from each other, so that each level's rows get their first `*`.
pub(crate) const MORE_LEVELS: [(&str, u64, u64); 2] = [("0.1%", 1000, 7), ("10%", 10, 3)];

/// The office's update of one of [`MORE_LEVELS`].
pub(crate) fn level_update(modulus: u64, remainder: u64) -> String {
    format!("UPDATE assets SET name = name || '*' WHERE id % {modulus} = {remainder}")
}

/// How many of the ids 1..=n_rows have `id % modulus = remainder`.
pub(crate) fn level_count(n_rows: u64, modulus: u64, remainder: u64) -> u64 {
    if remainder == 0 {
        n_rows / modulus
    } else if n_rows >= remainder {
        (n_rows - remainder) / modulus + 1
    } else {
        0
    }
}

/// The targets of the issue: a sync after 1% changed moves at most 3% of the full
/// download's bytes and takes at most 8% of its time; one with nothing changed moves
/// under 2 KB (of 1,000 bytes, as MB are 10^6 bytes on this page).
pub(crate) const DELTA_BYTES_RATIO_MAX: f64 = 0.03;
pub(crate) const DELTA_TIME_RATIO_MAX: f64 = 0.08;
pub(crate) const IDLE_BYTES_MAX: u64 = 2_000;

/// One timed `device sync`, with what `last_sync` says of it.
pub(crate) struct SyncFigures {
    pub(crate) watched: Watched,
    pub(crate) reported_ms: u64,
    pub(crate) bytes_down: u64,
    pub(crate) rows_down: u64,
}

/// The office's update and the two syncs after it.
pub(crate) struct DeltaFigures {
    pub(crate) changed_rows: u64,
    pub(crate) office_update_s: f64,
    /// The sync after 1% changed.
    pub(crate) delta: SyncFigures,
    /// The sync after it, with nothing changed.
    pub(crate) idle: SyncFigures,
    /// Then each of [`MORE_LEVELS`]: its label, the rows the office changed, the sync.
    pub(crate) more: Vec<(&'static str, u64, SyncFigures)>,
}

/// A share of the full download, and whether it is within its target.
#[derive(Debug, PartialEq)]
pub(crate) struct Share {
    pub(crate) ratio: f64,
    pub(crate) met: bool,
}

/// `part / whole` against `max` (at most). A zero or missing `whole` meets nothing.
pub(crate) fn share(part: f64, whole: f64, max: f64) -> Share {
    let ratio = if whole > 0.0 {
        part / whole
    } else {
        f64::INFINITY
    };
    Share {
        ratio,
        met: ratio <= max,
    }
}

/// The three verdicts of the issue.
#[derive(Debug, PartialEq)]
pub(crate) struct DeltaVerdicts {
    pub(crate) bytes: Share,
    pub(crate) time: Share,
    pub(crate) idle_bytes_met: bool,
}

pub(crate) fn delta_verdicts(
    full_bytes: u64,
    full_s: f64,
    delta_bytes: u64,
    delta_s: f64,
    idle_bytes: u64,
) -> DeltaVerdicts {
    DeltaVerdicts {
        bytes: share(delta_bytes as f64, full_bytes as f64, DELTA_BYTES_RATIO_MAX),
        time: share(delta_s, full_s, DELTA_TIME_RATIO_MAX),
        idle_bytes_met: idle_bytes < IDLE_BYTES_MAX,
    }
}

/// How many of the ids 1..=n_rows OFFICE_UPDATE changes.
pub(crate) fn changed_count(n_rows: u64) -> u64 {
    n_rows / 100
}

/// Runs `update` on the main database (`sqlite:PATH` or a PostgreSQL URL), as an
/// office application would, beside the running server; the rows it changed.
fn office_update(db: &str, update: &str) -> anyhow::Result<u64> {
    match db.strip_prefix("sqlite:") {
        Some(path) => {
            let conn = Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(30))?;
            Ok(conn.execute(update, [])? as u64)
        }
        None => {
            let mut c = postgres::Client::connect(db, postgres::NoTls)?;
            Ok(c.execute(update, &[])?)
        }
    }
}

/// One timed `device sync`; fails unless it was a delta (`full == false`).
fn timed_sync(
    bin: &Path,
    device_dir: &str,
    server_pid: u32,
    ticks_per_s: f64,
) -> anyhow::Result<(SyncFigures, String)> {
    let args = ["device", "sync", "--dir", device_dir];
    let watched = timed_download(bin, &args, server_pid, ticks_per_s)?;
    let status: serde_json::Value = serde_json::from_str(&fieldsync(
        bin,
        &["device", "status", "--dir", device_dir, "--json"],
        None,
    )?)
    .context("parsing `device status --json`")?;
    let last = &status["last_sync"];
    ensure!(
        last["result"] == "ok",
        "the sync's last_sync is not ok: {last}"
    );
    ensure!(
        last["full"] == false,
        "NOT A DELTA: the sync brought the whole slice (full_reason {})",
        last["full_reason"]
    );
    let replica = status["replica"]
        .as_str()
        .context("`device status` names no replica")?
        .to_string();
    let figures = SyncFigures {
        watched,
        reported_ms: last["duration_ms"].as_u64().unwrap_or(0),
        bytes_down: last["bytes_down"]
            .as_u64()
            .context("last_sync has no bytes_down")?,
        rows_down: last["rows_down"].as_u64().unwrap_or(0),
    };
    Ok((figures, replica))
}

/// Fails loudly unless the replica holds the slice with exactly `changed` names ending
/// in `*` (the ids, the notes and the count are those of the slice: the update changed
/// names only).
pub(crate) fn check_changed_replica(
    path: &str,
    rows: &[AssetRow],
    changed: u64,
) -> anyhow::Result<()> {
    check_replica(path, rows)?;
    let conn = Connection::open(path).with_context(|| format!("opening the replica {path}"))?;
    let starred: i64 = conn.query_row(
        "SELECT count(*) FROM assets WHERE name LIKE '%*'",
        [],
        |r| r.get(0),
    )?;
    ensure!(
        starred as u64 == changed,
        "WRONG REPLICA: {path} holds {starred} changed names (ending in `*`), the office changed {changed}"
    );
    if changed > 0 {
        let name: String =
            conn.query_row("SELECT name FROM assets WHERE id = 100", [], |r| r.get(0))?;
        ensure!(
            name.ends_with('*'),
            "WRONG REPLICA: asset 100 is `{name}`, the office renamed it with a `*`"
        );
    }
    Ok(())
}

/// The office's update, the timed sync after it and one with nothing changed, through
/// the running server; each replica checked.
pub(crate) fn measure_delta(
    bin: &Path,
    db: &str,
    device_dir: &str,
    server_pid: u32,
    ticks_per_s: f64,
    rows: &[AssetRow],
) -> anyhow::Result<DeltaFigures> {
    eprintln!("office update: {OFFICE_UPDATE}");
    let started = Instant::now();
    let changed_rows = office_update(db, OFFICE_UPDATE).context("the office's update")?;
    let office_update_s = started.elapsed().as_secs_f64();
    let want = changed_count(rows.len() as u64);
    ensure!(
        changed_rows == want,
        "the office's update changed {changed_rows} rows, not {want}"
    );

    eprintln!("sync after 1% changed");
    let (delta, replica) = timed_sync(bin, device_dir, server_pid, ticks_per_s)?;
    check_changed_replica(&replica, rows, changed_rows)?;
    eprintln!("sync with nothing changed");
    let (idle, replica) = timed_sync(bin, device_dir, server_pid, ticks_per_s)?;
    check_changed_replica(&replica, rows, changed_rows)?;
    let mut more = Vec::new();
    let mut starred = changed_rows;
    for (label, modulus, remainder) in MORE_LEVELS {
        let update = level_update(modulus, remainder);
        eprintln!("office update: {update}");
        let n = office_update(db, &update).context("the office's update")?;
        let want = level_count(rows.len() as u64, modulus, remainder);
        ensure!(
            n == want,
            "the office's update changed {n} rows, not {want}"
        );
        starred += n;
        eprintln!("sync after {label} changed");
        let (sync, replica) = timed_sync(bin, device_dir, server_pid, ticks_per_s)?;
        check_changed_replica(&replica, rows, starred)?;
        more.push((label, n, sync));
    }
    Ok(DeltaFigures {
        changed_rows,
        office_update_s,
        delta,
        idle,
        more,
    })
}
