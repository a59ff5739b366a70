//! The delta measurement (incremental sync): after the full downloads, the office
//! changes 1% of the slice and the device syncs, then syncs again with nothing changed,
//! `reps` times (each time other rows). Both are judged against the full download
//! (`--full`) of the same run: at most 3% of its bytes and 8% of its time after 1%
//! changed, under 2 KB with nothing changed. Then 0.1% and 10% more ([`MORE_LEVELS`]),
//! each followed by a sync, `reps` times each, to show how a delta's cost follows the
//! share changed. Every figure reported is the median run.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, ensure};
use fieldsync_store::sample::AssetRow;
use rusqlite::Connection;

use crate::measure::{check_replica, last_sync};
use crate::metrics::{Watched, median_run, timed_download};

/// The most runs of each level: the remainders below keep every run's rows apart
/// from every other run's of every level, so that each changed row has one `*`.
pub(crate) const DELTA_RUNS_MAX: usize = 6;

/// The 1% runs, what the office does between the full download and the timed sync:
/// one row in a hundred, spread over the whole table, gets a name ending in `*`
/// (`id % 100 = r`, [`level_update`]). In tens: 0, 5, 2 (never 3, 7 or 1, 9, 4, 6, 8: the
/// other levels').
pub(crate) const ONE_PERCENT_REMAINDERS: [u64; DELTA_RUNS_MAX] = [0, 50, 25, 75, 12, 62];

/// The further shares the office changes after the 1% and the idle syncs: label,
/// modulus and one remainder per run (`id % modulus = remainder`), chosen apart from
/// the 1% runs and from each other, so that each level's rows get their first `*`:
/// 0.1% is 7 in hundreds, 10% takes the tens nothing else uses.
pub(crate) const MORE_LEVELS: [(&str, u64, [u64; DELTA_RUNS_MAX]); 2] = [
    ("0.1%", 1000, [7, 107, 207, 307, 407, 507]),
    ("10%", 10, [3, 1, 9, 4, 6, 8]),
];

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

/// The median run of a repeated sync, and every run's wall clock in run order.
pub(crate) struct Runs {
    pub(crate) median: SyncFigures,
    pub(crate) walls_s: Vec<f64>,
}

impl Runs {
    fn of(runs: Vec<SyncFigures>) -> Runs {
        let (median, walls_s) = median_run(runs, |s| s.watched.wall_s);
        Runs { median, walls_s }
    }
}

/// The office's updates and the syncs after them.
pub(crate) struct DeltaFigures {
    /// The rows the first 1% update changed, and its time.
    pub(crate) changed_rows: u64,
    pub(crate) office_update_s: f64,
    /// The syncs after 1% changed.
    pub(crate) delta: Runs,
    /// The sync after each of them, with nothing changed.
    pub(crate) idle: Runs,
    /// Then each of [`MORE_LEVELS`]: its label, the rows the office changed in a run
    /// (the first), the syncs.
    pub(crate) more: Vec<(&'static str, u64, Runs)>,
    /// SQLite alone changing the 1% runs' rows in place, for comparison.
    pub(crate) in_place: InPlaceFloor,
}

/// The floor of a delta applied in place: SQLite alone changing the same rows of a
/// copy of the replica, by key, with none of fieldsync around it (no network, no
/// stream, no triggers). A delta that changes rows in place cannot take less.
pub(crate) struct InPlaceFloor {
    /// Rows changed in each run.
    pub(crate) rows: u64,
    /// The median run: the updates and their commit into the WAL; with the close
    /// (SQLite's checkpoint of the WAL into the file, with its fsyncs), the total.
    pub(crate) commit_s: f64,
    pub(crate) total_s: f64,
    /// Every run's total, in run order.
    pub(crate) walls_s: Vec<f64>,
}

/// The in-place floor on a copy of `replica` at `scratch` (removed after): for each
/// remainder, one transaction of `UPDATE assets SET name = name || '+' WHERE id = ?`
/// (one prepared statement) over the ids `id % 100 = remainder`, in WAL with
/// synchronous=NORMAL as DESIGN.md's floor, timed to the end of the connection's close
/// (the checkpoint SQLite would otherwise run at the commit runs there).
pub(crate) fn in_place_floor(
    replica: &Path,
    scratch: &Path,
    n_rows: u64,
    remainders: &[u64],
) -> anyhow::Result<InPlaceFloor> {
    let side = |p: &Path, suffix: &str| format!("{}{suffix}", p.display());
    let remove = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(side(scratch, suffix));
        }
    };
    remove();
    std::fs::copy(replica, scratch).context("copying the replica")?;
    if Path::new(&side(replica, "-wal")).exists() {
        std::fs::copy(side(replica, "-wal"), side(scratch, "-wal"))?;
    }
    let conn = Connection::open(scratch)?;
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for name in triggers {
        conn.execute_batch(&format!("DROP TRIGGER \"{}\"", name.replace('"', "\"\"")))?;
    }
    drop(conn);
    let mut runs = Vec::new();
    for &remainder in remainders {
        let ids: Vec<u64> = first_changed(n_rows, 100, remainder)
            .map(|first| (first..=n_rows).step_by(100).collect())
            .unwrap_or_default();
        let mut conn = Connection::open(scratch)?;
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        ensure!(
            mode == "wal",
            "the replica's copy is in journal mode {mode}, not wal"
        );
        // The checkpoint at the close, not at the commit: the same work, timed apart.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0")?;
        let started = Instant::now();
        let tx = conn.transaction()?;
        let mut changed = 0;
        {
            let mut update = tx.prepare("UPDATE assets SET name = name || '+' WHERE id = ?1")?;
            for id in &ids {
                changed += update.execute([id])? as u64;
            }
        }
        tx.commit()?;
        let commit_s = started.elapsed().as_secs_f64();
        conn.close().map_err(|(_, e)| e)?;
        let total_s = started.elapsed().as_secs_f64();
        ensure!(
            changed == ids.len() as u64,
            "the in-place floor changed {changed} rows, not {}",
            ids.len()
        );
        runs.push((changed, commit_s, total_s));
    }
    remove();
    let (median, walls_s) = median_run(runs, |r| r.2);
    Ok(InPlaceFloor {
        rows: median.0,
        commit_s: median.1,
        total_s: median.2,
        walls_s,
    })
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

/// The lowest id `id % modulus = remainder` changes, if the slice has it.
fn first_changed(n_rows: u64, modulus: u64, remainder: u64) -> Option<u64> {
    let id = if remainder == 0 { modulus } else { remainder };
    (id <= n_rows).then_some(id)
}

/// Runs `update` on the main database (`sqlite:PATH` or a PostgreSQL URL), as an
/// office application would, beside the running server; the rows it changed.
pub(crate) fn office_update(db: &str, update: &str) -> anyhow::Result<u64> {
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
    let (last, replica) = last_sync(bin, device_dir)?;
    ensure!(
        last["full"] == false,
        "NOT A DELTA: the sync brought the whole slice (full_reason {})",
        last["full_reason"]
    );
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
/// names only), asset `renamed` among them.
pub(crate) fn check_changed_replica(
    path: &str,
    rows: &[AssetRow],
    changed: u64,
    renamed: Option<u64>,
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
    if let Some(id) = renamed {
        let name: String =
            conn.query_row("SELECT name FROM assets WHERE id = ?1", [id], |r| r.get(0))?;
        ensure!(
            name.ends_with('*'),
            "WRONG REPLICA: asset {id} is `{name}`, the office renamed it with a `*`"
        );
    }
    Ok(())
}

/// The office's updates, the timed sync after each and one with nothing changed after
/// each 1%, `reps` runs of each level (at most [`DELTA_RUNS_MAX`]), through the
/// running server; each replica checked.
pub(crate) fn measure_delta(
    bin: &Path,
    db: &str,
    device_dir: &str,
    server_pid: u32,
    ticks_per_s: f64,
    rows: &[AssetRow],
    reps: usize,
) -> anyhow::Result<DeltaFigures> {
    let n_rows = rows.len() as u64;
    let reps = reps.clamp(1, DELTA_RUNS_MAX);
    let sync = || timed_sync(bin, device_dir, server_pid, ticks_per_s);
    // One office update; the rows it changed and how long it took.
    let update = |modulus: u64, remainder: u64| -> anyhow::Result<(u64, f64)> {
        let update = level_update(modulus, remainder);
        eprintln!("office update: {update}");
        let started = Instant::now();
        let n = office_update(db, &update).context("the office's update")?;
        let took = started.elapsed().as_secs_f64();
        let want = level_count(n_rows, modulus, remainder);
        ensure!(
            n == want,
            "the office's update changed {n} rows, not {want}"
        );
        Ok((n, took))
    };
    let (mut first, mut deltas, mut idles) = (None, Vec::new(), Vec::new());
    let (mut starred, mut held) = (0, String::new());
    for remainder in &ONE_PERCENT_REMAINDERS[..reps] {
        let (n, took) = update(100, *remainder)?;
        starred += n;
        first.get_or_insert((n, took));
        let renamed = first_changed(n_rows, 100, *remainder);
        eprintln!("sync after 1% changed");
        let (delta, replica) = sync()?;
        check_changed_replica(&replica, rows, starred, renamed)?;
        deltas.push(delta);
        eprintln!("sync with nothing changed");
        let (idle, path) = sync()?;
        check_changed_replica(&path, rows, starred, renamed)?;
        idles.push(idle);
        held = path;
    }
    let (changed_rows, office_update_s) = first.expect("at least one run");
    eprintln!("in-place floor: the same rows updated by SQLite alone in a copy of the replica");
    // Beside the device's folder, in the run's work folder.
    let scratch = Path::new(device_dir).with_file_name("delta-floor.sqlite");
    let in_place = in_place_floor(
        Path::new(&held),
        &scratch,
        n_rows,
        &ONE_PERCENT_REMAINDERS[..reps],
    )?;
    let mut more = Vec::new();
    for (label, modulus, remainders) in MORE_LEVELS {
        let (mut runs, mut changed) = (Vec::new(), None);
        for remainder in &remainders[..reps] {
            let (n, _) = update(modulus, *remainder)?;
            starred += n;
            changed.get_or_insert(n);
            eprintln!("sync after {label} changed");
            let (s, replica) = sync()?;
            check_changed_replica(
                &replica,
                rows,
                starred,
                first_changed(n_rows, modulus, *remainder),
            )?;
            runs.push(s);
        }
        more.push((label, changed.unwrap_or(0), Runs::of(runs)));
    }
    Ok(DeltaFigures {
        changed_rows,
        office_update_s,
        delta: Runs::of(deltas),
        idle: Runs::of(idles),
        more,
        in_place,
    })
}
