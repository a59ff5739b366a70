//! The fleet (issue #20, part e): many devices synchronizing at once against one real
//! `fieldsync server run` on SQLite, or two servers sharing one PostgreSQL database with
//! the devices split between them.
//!
//! Each device is a real `fieldsync` process in its own folder, as in the field: paired,
//! logged in and given its slice beforehand (not timed); then 100 local changes
//! through SQLite on its replica, as a crew's app makes them; then every device's
//! `device sync` is started at the same moment, and each one's start-to-exit time is its
//! latency. Processes rather than the client library in threads: a process is what a
//! device is (its own memory, its own SQLite, its own connection), and the server is the
//! thing measured; the cost is that on a small machine the devices' own CPU competes
//! with the server's, which the report shows (devices' CPU against the server's).
//! Several rounds (`--reps`) on the same folders: each round makes new changes first.
//!
//! Whose rows ([`Slices`]): by default each device has a slice of its own (its own
//! region, as crews do), so a round's sync sends 100 changes and brings back little;
//! with `--fleet-shared` every device holds the same rows, so each sync also brings
//! back what all the others changed since its last one (up to the whole slice).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Instant;

use anyhow::{Context, ensure};
use rusqlite::Connection;

use crate::floor::{generate, insert_rows};
use crate::measure::{
    BENCH_PASSWORD, BENCH_USER, ServerChild, fieldsync, insert_rows_pg, start_server,
};
use crate::metrics::{cpu_ticks, machine_ticks, peak_rss_kb, reset_peak_rss};

/// Local changes each device makes before each round's sync.
pub(crate) const CHANGES_PER_DEVICE: u64 = 100;
/// Devices set up at once (pair, login, first download): not timed, just not serial.
const SETUP_WORKERS: usize = 4;
/// Errors kept word for word in the report; the rest are only counted.
const ERROR_SAMPLES: usize = 3;
pub(crate) const FLEET_TASK: &str = "fleet";
const SHARED_TASK_FILE: &str = "name = \"fleet\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = 'north'\"\nwrite = [\"update\"]\n";
const OWN_TASK_FILE: &str = "name = \"fleet\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = $device\"\nwrite = [\"update\"]\n";

/// Whose rows each device of the fleet holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Slices {
    /// Each device its own `rows` rows, the region named by its id (`region =
    /// $device`): the main database holds `devices × rows` rows, and a device's sync
    /// brings back only what changed in its own region.
    Own,
    /// Every device the same `rows` rows: each sync also brings back what every other
    /// device changed since its own last sync.
    Shared,
}

impl Slices {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Slices::Own => "own",
            Slices::Shared => "shared",
        }
    }
}

/// What to run.
pub(crate) struct FleetPlan<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) dir: &'a Path,
    pub(crate) devices: usize,
    /// Rows of each device's slice.
    pub(crate) rows: u64,
    pub(crate) slices: Slices,
    pub(crate) reps: usize,
    /// A PostgreSQL main database (then two servers), else SQLite.
    pub(crate) pg: Option<&'a str>,
    /// Devices revoked by the office after their setup, so their syncs must fail:
    /// the tests' way to see that failures are counted. 0 in a real run.
    pub(crate) revoked: usize,
}

/// One round: every device's sync started at once.
pub(crate) struct FleetRound {
    /// Start-to-exit time of each sync that succeeded, seconds, sorted.
    pub(crate) latencies_s: Vec<f64>,
    pub(crate) errors: usize,
    pub(crate) error_samples: Vec<String>,
    /// From the common start to the last exit.
    pub(crate) wall_s: f64,
    /// Each server's peak RSS during the round (VmHWM, reset before it), kB.
    pub(crate) server_rss_kb: Vec<u64>,
    /// CPU time of the servers and of everything else (the devices, mostly) meanwhile.
    pub(crate) server_cpu_s: f64,
    pub(crate) other_cpu_s: f64,
}

pub(crate) struct FleetFigures {
    pub(crate) engine: &'static str,
    pub(crate) devices: usize,
    pub(crate) rows: u64,
    pub(crate) slices: Slices,
    pub(crate) servers: usize,
    /// Pairing, logins and first downloads of every device, seconds.
    pub(crate) setup_s: f64,
    /// Each server's peak RSS over the setup (logins, first downloads), kB.
    pub(crate) setup_server_rss_kb: Vec<u64>,
    pub(crate) rounds: Vec<FleetRound>,
}

/// The `p`-th percentile of sorted values, nearest rank (p in 0..=100); 0 for none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of some figures (the lower middle one of an even count).
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[(v.len() - 1) / 2]
    }
}

fn device_id(i: usize) -> String {
    format!("fleet-{i:04}")
}

/// Runs `work(i)` for i in 0..n on a few threads; the first error stops the rest.
fn in_parallel(n: usize, work: impl Fn(usize) -> anyhow::Result<()> + Sync) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..SETUP_WORKERS.min(n) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || failed.lock().expect("not poisoned").is_some() {
                        break;
                    }
                    if let Err(e) = work(i) {
                        failed.lock().expect("not poisoned").get_or_insert(e);
                    }
                }
            });
        }
    });
    match failed.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The device's local changes: `CHANGES_PER_DEVICE` rows of its own stretch of the
/// slice (stretches of devices wrap around, so with more devices than the slice has
/// stretches some devices change the same rows, and the server logs conflicts), through
/// the replica's triggers; fails unless the journal grew by them.
fn local_changes(replica: &Path, device: usize, round: usize, rows: u64) -> anyhow::Result<()> {
    let conn = Connection::open(replica)
        .with_context(|| format!("opening the replica {}", replica.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let first = (device as u64 * CHANGES_PER_DEVICE) % rows.max(1);
    let n = CHANGES_PER_DEVICE.min(rows);
    let journal = || -> rusqlite::Result<i64> {
        conn.query_row("SELECT count(*) FROM fieldsync_journal", [], |r| r.get(0))
    };
    // A device whose earlier sync failed still holds that round's entries: they go
    // with this round's, as they would in the field.
    let before = journal()?;
    let changed = conn
        .execute(
            "UPDATE assets SET notes = notes || ?1 WHERE (id - 1 - ?2 + ?4) % ?4 < ?3",
            rusqlite::params![format!(" r{round}"), first as i64, n as i64, rows as i64],
        )
        .context("changing the replica")?;
    ensure!(
        changed as u64 == n,
        "{} rows changed in {}, not {n}",
        changed,
        replica.display()
    );
    let added = journal()? - before;
    ensure!(
        added as u64 == n,
        "the journal of {} grew by {added} entries with {n} changes",
        replica.display()
    );
    Ok(())
}

/// Own slices on SQLite: the generated rows become device 0's region, and a copy of
/// them for each other device (ids shifted by `rows`, the region its id); the index an
/// administrator would make for a filter by region.
fn own_regions_sqlite(conn: &Connection, plan: &FleetPlan) -> anyhow::Result<()> {
    conn.execute("UPDATE assets SET region = ?1", [device_id(0)])?;
    conn.execute(
        "INSERT INTO assets (id, name, category, status, region, x, y, installed, notes)
         WITH RECURSIVE d(n) AS (SELECT 1 WHERE ?1 > 1 UNION ALL SELECT n + 1 FROM d WHERE n + 1 < ?1)
         SELECT a.id + d.n * ?2, a.name, a.category, a.status, printf('fleet-%04d', d.n),
                a.x, a.y, a.installed, a.notes
         FROM d, assets AS a WHERE a.id <= ?2",
        rusqlite::params![plan.devices as i64, plan.rows as i64],
    )?;
    conn.execute_batch("CREATE INDEX assets_region ON assets (region); ANALYZE;")?;
    Ok(())
}

/// [`own_regions_sqlite`] on PostgreSQL.
fn own_regions_pg(url: &str, plan: &FleetPlan) -> anyhow::Result<()> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    let mut tx = c.transaction()?;
    tx.execute("UPDATE assets SET region = $1", &[&device_id(0)])?;
    tx.execute(
        "INSERT INTO assets (id, name, category, status, region, x, y, installed, notes)
         SELECT a.id + d.n * $2::bigint, a.name, a.category, a.status,
                'fleet-' || CASE WHEN d.n < 10000 THEN lpad(d.n::text, 4, '0') ELSE d.n::text END,
                a.x, a.y, a.installed, a.notes
         FROM generate_series(1, $1::bigint - 1) AS d(n), assets AS a WHERE a.id <= $2::bigint",
        &[&(plan.devices as i64), &(plan.rows as i64)],
    )?;
    // In the collation filters compare text in, so that it serves them.
    tx.batch_execute("CREATE INDEX assets_region ON assets (region COLLATE \"C\")")?;
    tx.commit()?;
    c.batch_execute("VACUUM ANALYZE assets")?;
    Ok(())
}

/// A fleet ready to sync: its servers (with their URLs), the device folders in device
/// order, and the main database's `--db`.
struct Fleet {
    servers: Vec<(ServerChild, String)>,
    folders: Vec<PathBuf>,
    db: String,
}

/// The main database, its servers and every device ready to sync; returns the servers
/// and the device folders.
fn set_up(plan: &FleetPlan) -> anyhow::Result<Fleet> {
    let bin = plan.bin;
    let rows = generate(plan.rows);
    let db = match plan.pg {
        None => {
            let path = plan.dir.join("main.sqlite");
            let mut conn = Connection::open(&path)?;
            conn.execute_batch(fieldsync_store::sample::SCHEMA)?;
            insert_rows(&mut conn, &rows).context("filling the main database")?;
            if plan.slices == Slices::Own {
                own_regions_sqlite(&conn, plan).context("filling the devices' regions")?;
            }
            format!("sqlite:{}", path.display())
        }
        Some(url) => {
            insert_rows_pg(url, &rows).context("filling the PostgreSQL database")?;
            if plan.slices == Slices::Own {
                own_regions_pg(url, plan).context("filling the devices' regions")?;
            }
            url.to_string()
        }
    };
    let db_s = db.as_str();
    fieldsync(bin, &["server", "init", "--db", db_s], None)?;
    fieldsync(
        bin,
        &["admin", "table", "track", "assets", "--db", db_s],
        None,
    )?;
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
        Some(&format!("{BENCH_PASSWORD}\n")),
    )?;
    let task_file = plan.dir.join("fleet-task.toml");
    let task = match plan.slices {
        Slices::Own => OWN_TASK_FILE,
        Slices::Shared => SHARED_TASK_FILE,
    };
    std::fs::write(&task_file, task)?;
    let task_path = task_file.to_str().context("the work folder is not UTF-8")?;
    fieldsync(
        bin,
        &["admin", "task", "apply", task_path, "--db", db_s],
        None,
    )?;
    let codes = Mutex::new(vec![String::new(); plan.devices]);
    in_parallel(plan.devices, |i| {
        let code = fieldsync(
            bin,
            &["admin", "device", "add", &device_id(i), "--db", db_s],
            None,
        )?;
        codes.lock().expect("not poisoned")[i] = code.trim().to_string();
        Ok(())
    })?;
    let codes = codes.into_inner().expect("not poisoned");
    let ids: Vec<String> = (0..plan.devices).map(device_id).collect();
    let mut assign = vec!["admin", "task", "assign", FLEET_TASK, "--user", BENCH_USER];
    for id in &ids {
        assign.extend(["--device", id.as_str()]);
    }
    assign.extend(["--db", db_s]);
    fieldsync(bin, &assign, None)?;

    let n_servers = if plan.pg.is_some() { 2 } else { 1 };
    let mut servers = Vec::new();
    for s in 0..n_servers {
        servers.push(start_server(
            bin,
            db_s,
            &plan.dir.join(format!("server-{s}.log")),
        )?);
    }
    let urls: Vec<&str> = servers.iter().map(|(_, u)| u.as_str()).collect();
    let folders: Vec<PathBuf> = ids.iter().map(|id| plan.dir.join(id)).collect();
    in_parallel(plan.devices, |i| {
        let dir = folders[i]
            .to_str()
            .context("the work folder is not UTF-8")?;
        let url = urls[i % urls.len()];
        crate::measure::pair_and_login(bin, dir, url, &ids[i], &codes[i])?;
        fieldsync(bin, &["device", "download", FLEET_TASK, "--dir", dir], None)?;
        Ok(())
    })?;
    Ok(Fleet {
        servers,
        folders,
        db,
    })
}

/// Starts every device's `device sync` at the same moment and waits for all of them.
fn round(
    plan: &FleetPlan,
    servers: &[(ServerChild, String)],
    folders: &[PathBuf],
    n: usize,
    ticks_per_s: f64,
) -> anyhow::Result<FleetRound> {
    // A device whose changes cannot be made (a revoked device's wiped folder) does
    // not sync this round; it counts as an error.
    let prepared: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..folders.len())
            .map(|i| {
                s.spawn(move || {
                    local_changes(&folders[i].join("replica.sqlite"), i, n, plan.rows)
                        .map_err(|e| format!("{}: before the sync: {e:#}", folders[i].display()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a change thread does not panic"))
            .collect()
    });
    let pids: Vec<u32> = servers.iter().map(|(s, _)| s.0.id()).collect();
    for &pid in &pids {
        reset_peak_rss(pid)?;
    }
    let server_ticks = || pids.iter().filter_map(|&p| cpu_ticks(p)).sum::<u64>();
    let ticks_before = server_ticks();
    let (busy_before, _) = machine_ticks().context("reading /proc/stat")?;
    let start = Barrier::new(folders.len() + 1);
    let (outcomes, wall_s) = std::thread::scope(|s| {
        let handles: Vec<_> = folders
            .iter()
            .zip(prepared)
            .map(|(dir, prepared)| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    prepared?;
                    let started = Instant::now();
                    let out = Command::new(plan.bin)
                        .args(["device", "sync", "--dir"])
                        .arg(dir)
                        .stdin(Stdio::null())
                        .output();
                    let took = started.elapsed().as_secs_f64();
                    match out {
                        Ok(o) if o.status.success() => pending_journal(dir).map(|()| took),
                        Ok(o) => Err(format!(
                            "{}: {}: {}",
                            dir.display(),
                            o.status,
                            String::from_utf8_lossy(&o.stderr).trim()
                        )),
                        Err(e) => Err(format!("{}: could not start: {e}", dir.display())),
                    }
                })
            })
            .collect();
        // Before the barrier opens: a device's own clock starts after it, so no
        // latency can exceed the round's wall time.
        let began = Instant::now();
        start.wait();
        let outcomes: Vec<Result<f64, String>> = handles
            .into_iter()
            .map(|h| h.join().expect("a sync thread does not panic"))
            .collect();
        let wall_s = began.elapsed().as_secs_f64();
        eprintln!("  round {}: {wall_s:.3} s", n + 1);
        (outcomes, wall_s)
    });
    let ticks_after = server_ticks();
    let (busy_after, _) = machine_ticks().context("reading /proc/stat")?;
    let server_rss_kb = pids
        .iter()
        .map(|&p| peak_rss_kb(p).context("reading a server's peak RSS"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(summarize(
        outcomes,
        wall_s,
        server_rss_kb,
        (ticks_after - ticks_before) as f64 / ticks_per_s,
        (busy_after.saturating_sub(busy_before)).saturating_sub(ticks_after - ticks_before) as f64
            / ticks_per_s,
    ))
}

/// A successful sync leaves no journal behind: else it counts as an error.
fn pending_journal(dir: &Path) -> Result<(), String> {
    let replica = dir.join("replica.sqlite");
    let left: Result<i64, _> = Connection::open(&replica)
        .and_then(|c| c.query_row("SELECT count(*) FROM fieldsync_journal", [], |r| r.get(0)));
    match left {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!(
            "{}: sync exited 0 but {n} journal entries are left",
            dir.display()
        )),
        Err(e) => Err(format!("{}: reading the journal: {e}", dir.display())),
    }
}

/// One round's figures from each sync's outcome (its time, or why it failed).
pub(crate) fn summarize(
    outcomes: Vec<Result<f64, String>>,
    wall_s: f64,
    server_rss_kb: Vec<u64>,
    server_cpu_s: f64,
    other_cpu_s: f64,
) -> FleetRound {
    let mut latencies_s = Vec::new();
    let mut errors = 0;
    let mut error_samples = Vec::new();
    for o in outcomes {
        match o {
            Ok(t) => latencies_s.push(t),
            Err(e) => {
                errors += 1;
                if error_samples.len() < ERROR_SAMPLES {
                    error_samples.push(e);
                }
            }
        }
    }
    latencies_s.sort_by(f64::total_cmp);
    FleetRound {
        wall_s,
        latencies_s,
        errors,
        error_samples,
        server_rss_kb,
        server_cpu_s,
        other_cpu_s,
    }
}

/// Sets the fleet up and runs `plan.reps` rounds of it.
pub(crate) fn measure_fleet(plan: &FleetPlan, ticks_per_s: f64) -> anyhow::Result<FleetFigures> {
    let engine = if plan.pg.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    eprintln!(
        "== fleet of {} devices, {} rows each, {engine}, in {}",
        plan.devices,
        plan.rows,
        plan.dir.display()
    );
    let started = Instant::now();
    let Fleet {
        servers,
        folders,
        db,
    } = set_up(plan)?;
    let setup_s = started.elapsed().as_secs_f64();
    let setup_server_rss_kb = servers
        .iter()
        .map(|(s, _)| peak_rss_kb(s.0.id()).context("reading a server's peak RSS"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for i in 0..plan.revoked.min(plan.devices) {
        fieldsync(
            plan.bin,
            &["admin", "device", "revoke", &device_id(i), "--db", &db],
            None,
        )?;
    }
    let mut rounds = Vec::new();
    for n in 0..plan.reps {
        rounds.push(round(plan, &servers, &folders, n, ticks_per_s)?);
    }
    drop(servers);
    Ok(FleetFigures {
        engine,
        devices: plan.devices,
        rows: plan.rows,
        slices: plan.slices,
        servers: if plan.pg.is_some() { 2 } else { 1 },
        setup_s,
        setup_server_rss_kb,
        rounds,
    })
}
