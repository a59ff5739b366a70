//! Crash safety in the manner of SQLite's crash tests (DESIGN.md promises 1, 2, 3 and
//! 10; issue 4): SIGINT, SIGTERM and kill -9 of the device at many points of download,
//! send and sync; kill -9 of the server during a large upload; an app holding the
//! replica open and writing across a sync or a send. After each interruption the
//! replica passes `integrity_check`, its rows are the "before" or the "after" state,
//! never a mix, no journal entry is lost, and every entry reaches the main database
//! exactly once.
//!
//! Sizes and counts come from the environment, small by default (CI):
//! `FIELDSYNC_SIGINT_POINTS` (10 per operation), `FIELDSYNC_KILL_POINTS` (30 in all),
//! `FIELDSYNC_SERVER_KILL_POINTS` (3, plus one kill right after the server's commit)
//! and `FIELDSYNC_SERVER_KILL_ENTRIES` (the upload's entries, at most one chunk: 5,000),
//! `FIELDSYNC_CRASH_ENTRIES` (journal entries per send point, 3,000),
//! `FIELDSYNC_CRASH_ASSETS` (assets of the office, 50,000: a slice of ~31,000 rows),
//! `FIELDSYNC_CRASH_SEED` (the seed of the random delays; printed).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fieldsync_store::sample::Gen;
use rusqlite::Connection;

use crate::harness::*;

const TASK: &str = "north-inspections";
/// The north slice for ana, as the main database has it (the "after" state).
const NORTH_ASSETS: &str = "SELECT id, name, category, status, region, x, y FROM assets WHERE region = 'north' AND status <> 'retired' ORDER BY id";
const ANA_INSPECTIONS: &str = "SELECT * FROM inspections WHERE inspector = 'ana' AND asset_id IN
     (SELECT id FROM assets WHERE region = 'north' AND status <> 'retired') ORDER BY id";
/// The same rows as the replica has them.
const REPLICA_ROWS: [&str; 2] = [
    "SELECT * FROM assets ORDER BY id",
    "SELECT * FROM inspections ORDER BY id",
];
const CANCELLED: &str = "cancelled; previous local database restored";
/// How long a signalled operation may take to exit (debug build, shared machine).
const EXIT_BOUND: Duration = Duration::from_secs(10);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The random generator of the delays, from `FIELDSYNC_CRASH_SEED`.
fn seeded(test: &str) -> Gen {
    let seed = env_num("FIELDSYNC_CRASH_SEED", 20_261_126);
    eprintln!("{test}: FIELDSYNC_CRASH_SEED={seed}");
    Gen::new(seed)
}

/// A uniform fraction in [0, 1).
fn unit(g: &mut Gen) -> f64 {
    g.below(1 << 20) as f64 / (1u64 << 20) as f64
}

/// The earliest signal of a point. Starting the process and installing its signal
/// handler take a few milliseconds; a SIGINT before that ends it by the default action
/// (killed, state as after kill -9) instead of exit 5. The kill -9 points cover that
/// state; the exit code in that first window is not what these tests measure.
const EARLIEST: Duration = Duration::from_millis(10);

/// The delay of point `i` of `n` spread over `duration`: random within its stratum.
fn delay(duration: Duration, i: u64, n: u64, rng: &mut Gen) -> Duration {
    duration
        .mul_f64((i as f64 + unit(rng)) / n as f64)
        .max(EARLIEST)
}

/// The delays of `n` points over `duration`: one in each of `n` equal strata, at a
/// random place in it, the strata in random order (a long run stopped early has still
/// covered the whole operation).
fn delays(duration: Duration, n: u64, rng: &mut Gen) -> Vec<Duration> {
    let mut strata: Vec<u64> = (0..n).collect();
    for i in (1..strata.len()).rev() {
        strata.swap(i, rng.below(i as u64 + 1) as usize);
    }
    strata
        .into_iter()
        .map(|i| delay(duration, i, n, rng))
        .collect()
}

/// Polls `cond` until it holds; panics with `what` after `limit`.
#[track_caller]
fn poll_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The rows `queries` return as text made by SQLite, one line per row of SQL literals
/// (`quote()`): equal texts are equal rows, value for value and type for type; a mix of
/// two states equals neither.
#[derive(Clone, PartialEq, Eq)]
struct Rows {
    n: i64,
    text: String,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rows ({} bytes)", self.n, self.text.len())
    }
}

fn snapshot(conn: &Connection, queries: &[&str]) -> rusqlite::Result<Rows> {
    let mut out = Rows {
        n: 0,
        text: String::new(),
    };
    for sql in queries {
        let cols: Vec<String> = conn
            .prepare(sql)?
            .column_names()
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect();
        let line: Vec<String> = cols.iter().map(|c| format!("quote({c})")).collect();
        let (n, text): (i64, Option<String>) = conn.query_row(
            &format!(
                "SELECT count(*), group_concat({}, char(10) ORDER BY {}) FROM ({sql})",
                line.join(" || ',' || "),
                cols[0]
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        out.n += n;
        out.text.push_str(&text.unwrap_or_default());
        out.text.push_str("\n--\n");
    }
    Ok(out)
}

fn main_rows(office: &Office) -> Rows {
    snapshot(&office.sql(), &[NORTH_ASSETS, ANA_INSPECTIONS]).unwrap()
}

/// What a fresh connection to the replica (through its link, as an app opens it) sees.
struct Seen {
    integrity: String,
    rows: Rows,
    /// Pending journal entries as `table:key`.
    journal: HashSet<String>,
}

fn look(dev: &DeviceDir) -> Result<Seen, String> {
    let conn = Connection::open(dev.replica_path()).map_err(|e| format!("open: {e}"))?;
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let read = || -> rusqlite::Result<Seen> {
        let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        let rows = snapshot(&conn, &REPLICA_ROWS)?;
        let journal = conn
            .prepare("SELECT tbl || ':' || pk FROM fieldsync_journal")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Seen {
            integrity,
            rows,
            journal,
        })
    };
    read().map_err(|e| format!("read: {e}"))
}

/// Generation files other than the installed one, and leftovers of removed ones:
/// after a recovery there are none.
fn leftovers(dev: &DeviceDir) -> Vec<String> {
    let current = std::fs::read_link(dev.replica_path())
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out: Vec<String> = std::fs::read_dir(dev.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("replica"))
        .filter(|n| {
            n != "replica.sqlite"
                && !(n.starts_with(&current) && ["", "-wal", "-shm"].contains(&&n[current.len()..]))
        })
        .collect();
    if current.is_empty() || !dev.path().join(&current).exists() {
        out.push(format!("replica.sqlite -> {current:?} (missing)"));
    }
    out.sort();
    out
}

/// A `fieldsync device …` process with its output going to files.
struct Running {
    child: Child,
    started: Instant,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

fn spawn(dev: &DeviceDir, args: &[&str], scratch: &std::path::Path) -> Running {
    let out = scratch.join("stdout");
    let err = scratch.join("stderr");
    let started = Instant::now();
    let child = Command::new(BIN)
        .arg("device")
        .args(args)
        .args(["--dir", dev.path().to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .expect("the fieldsync binary runs");
    Running {
        child,
        started,
        out,
        err,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Int,
    Term,
    Kill,
}

impl Stop {
    fn send(self, child: &mut Child) {
        let flag = match self {
            Stop::Kill => return child.kill().unwrap(),
            Stop::Int => "-INT",
            Stop::Term => "-TERM",
        };
        // Not yet waited for, so the id is still this child's (a zombie at worst, and
        // then `kill` has nothing to do).
        Command::new("kill")
            .args([flag, &child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap();
    }
}

/// How a process ended.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    /// Still running `EXIT_BOUND` after the signal (then killed).
    hung: bool,
    /// From spawn to exit.
    elapsed: Duration,
    /// From the signal to the exit (none: it had exited before).
    latency: Option<Duration>,
    stdout: String,
    stderr: String,
}

/// Sends `stop` after `delay` (none: lets it run) and waits for the exit.
fn interrupt(mut r: Running, stop: Option<Stop>, delay: Duration) -> Ended {
    let mut signalled = None;
    if let Some(stop) = stop {
        // Waits for the moment; the last stretch in one exact sleep.
        let at = r.started + delay;
        let mut exited = false;
        while at.saturating_duration_since(Instant::now()) > Duration::from_millis(20) {
            if r.child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !exited {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            signalled = Some(Instant::now());
            stop.send(&mut r.child);
        }
    }
    let limit = if stop.is_some() {
        EXIT_BOUND
    } else {
        Duration::from_secs(300)
    };
    let mut hung = false;
    let status = loop {
        if let Some(s) = r.child.try_wait().unwrap() {
            break s;
        }
        if signalled.unwrap_or(r.started).elapsed() > limit {
            hung = true;
            r.child.kill().unwrap();
            break r.child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let latency = signalled.map(|t| t.elapsed());
    Ended {
        code: status.code(),
        signal: status.signal(),
        hung,
        elapsed: r.started.elapsed(),
        latency,
        stdout: std::fs::read_to_string(&r.out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&r.err).unwrap_or_default(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Download,
    Send,
    Sync,
}

impl Op {
    const ALL: [Op; 3] = [Op::Download, Op::Send, Op::Sync];

    fn args(self) -> &'static [&'static str] {
        match self {
            Op::Download => &["download", TASK],
            Op::Send => &["send"],
            Op::Sync => &["sync"],
        }
    }
}

/// One interruption point: the state before, and the edits made for it.
struct Point {
    /// Key prefix of the inspections inserted for this point (`n` of them).
    prefix: String,
    n: u64,
    before: Rows,
}

/// An office, a device with a downloaded north replica, and the bookkeeping of a run of
/// interruption points.
struct Lab {
    office: Office,
    dev: DeviceDir,
    scratch: TempDir,
    /// The asset every send point updates (the office never touches it).
    asset: i64,
    /// Journal entries made for each send or sync point.
    entries: u64,
    tag: &'static str,
    round: u64,
    failures: Vec<String>,
    /// Points per operation and outcome.
    tally: BTreeMap<(Op, &'static str), u64>,
    max_latency: Duration,
    /// Inspections verified in the main database, exactly once each.
    verified: u64,
    started: Instant,
}

impl Lab {
    fn new(tag: &'static str) -> Lab {
        let office = Office::new(env_num("FIELDSYNC_CRASH_ASSETS", 50_000) as i64);
        let dev = office.device("tab1", &[TASK]);
        dev.login("ana").ok();
        dev.run(&["download", TASK], "").ok();
        let asset = dev
            .replica()
            .query_row("SELECT min(id) FROM assets WHERE id % 50 <> 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        Lab {
            office,
            dev,
            scratch: TempDir::new("crash-out"),
            asset,
            entries: env_num("FIELDSYNC_CRASH_ENTRIES", 3_000),
            tag,
            round: 0,
            failures: vec![],
            tally: BTreeMap::new(),
            max_latency: Duration::ZERO,
            verified: 0,
            started: Instant::now(),
        }
    }

    /// The office renames assets spread over the slice, so that "after" differs from
    /// "before" in many places; a download interrupted half-way would be a mix.
    fn office_edit(&self) {
        self.office
            .sql()
            .execute(
                "UPDATE assets SET name = 'office ' || ?1 || ' ' || id WHERE region = 'north' AND id % 50 = 1",
                [self.round],
            )
            .unwrap();
    }

    /// `n` inserted inspections with known keys and an update of `asset`, in one
    /// statement each, as an app would write them.
    fn local_edits(&self, prefix: &str, n: u64) {
        let c = self.dev.replica();
        c.execute(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?3)
             INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
             SELECT printf('%s%06d', ?1, i), ?2, 'ana', '2026-11-26T09:00:00.000Z', 'ok', 'crash test' FROM k",
            rusqlite::params![prefix, self.asset, n],
        )
        .unwrap();
        c.execute(
            "UPDATE assets SET name = ?1 WHERE id = ?2",
            rusqlite::params![prefix, self.asset],
        )
        .unwrap();
    }

    fn prepare(&mut self, op: Op) -> Point {
        self.round += 1;
        let prefix = format!("{}{:06}-", self.tag, self.round);
        if op != Op::Send {
            self.office_edit();
        }
        let n = if op == Op::Download { 0 } else { self.entries };
        if n > 0 {
            self.local_edits(&prefix, n);
        }
        let before = look(&self.dev)
            .expect("the replica reads before the point")
            .rows;
        if op == Op::Download {
            assert_ne!(
                before,
                main_rows(&self.office),
                "the office's edit makes \"after\" differ from \"before\""
            );
        }
        Point { prefix, n, before }
    }

    /// Keys of this point's inspections in the main database.
    fn in_main(&self, p: &Point) -> HashSet<String> {
        let upper = format!("{}~", p.prefix.trim_end_matches('-'));
        self.office
            .sql()
            .prepare("SELECT id FROM inspections WHERE id >= ?1 AND id < ?2")
            .unwrap()
            .query_map([&p.prefix, &upper], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn asset_name_in_main(&self) -> String {
        self.office
            .sql()
            .query_row("SELECT name FROM assets WHERE id = ?1", [self.asset], |r| {
                r.get(0)
            })
            .unwrap()
    }

    /// Every entry made for the point is still in the journal or in the main database.
    fn check_journal(&self, p: &Point, seen: &Seen, bad: &mut Vec<String>) {
        if p.n == 0 {
            return;
        }
        let main = self.in_main(p);
        let lost = (1..=p.n)
            .map(|i| format!("{}{i:06}", p.prefix))
            .filter(|k| !main.contains(k) && !seen.journal.contains(&format!("inspections:{k}")))
            .count();
        if lost > 0 {
            bad.push(format!(
                "{lost} of {} inserted inspections neither in the journal nor in the main database",
                p.n
            ));
        }
        if !seen.journal.contains(&format!("assets:{}", self.asset))
            && self.asset_name_in_main() != p.prefix
        {
            bad.push("the asset update is neither in the journal nor in the main database".into());
        }
    }

    /// The replica as the next command finds it: integrity, rows, journal.
    fn check_replica(
        &self,
        p: &Point,
        allowed: &[(&Rows, &str)],
        when: &str,
        bad: &mut Vec<String>,
    ) {
        match look(&self.dev) {
            Err(e) => bad.push(format!("{when}: the replica does not open: {e}")),
            Ok(seen) => {
                if seen.integrity != "ok" {
                    bad.push(format!("{when}: integrity_check says {:?}", seen.integrity));
                }
                if !allowed.iter().any(|(rows, _)| **rows == seen.rows) {
                    let names: Vec<&str> = allowed.iter().map(|(_, n)| *n).collect();
                    bad.push(format!(
                        "{when}: the replica's rows are not the {} state ({} rows; before {}, main {})",
                        names.join(" or "),
                        seen.rows.n,
                        p.before.n,
                        main_rows(&self.office).n
                    ));
                }
                self.check_journal(p, &seen, bad);
            }
        }
    }

    /// Runs `op` with `stop` sent after `delay`, checks the device as the next commands
    /// find it, settles the journal. Returns how long the operation ran.
    fn point(&mut self, op: Op, stop: Option<Stop>, delay: Duration) -> Duration {
        let p = self.prepare(op);
        let ended = interrupt(spawn(&self.dev, op.args(), &self.scratch.0), stop, delay);
        let what = format!(
            "{op:?} #{} {} after {delay:?} (ran {:?})",
            self.round,
            match stop {
                Some(s) => format!("{s:?}"),
                None => "uninterrupted".into(),
            },
            ended.elapsed
        );
        let mut bad = vec![];
        let outcome = self.outcome(stop, &ended, &mut bad);
        // A cancelled send or sync may have been applied already (its answer settles
        // it); counted apart, for the record.
        let label = if outcome == "cancelled" && p.n > 0 && !self.in_main(&p).is_empty() {
            "cancelled after the server's commit"
        } else {
            outcome
        };
        *self.tally.entry((op, label)).or_default() += 1;
        if let Some(latency) = ended.latency.filter(|_| stop != Some(Stop::Kill)) {
            self.max_latency = self.max_latency.max(latency);
        }

        // "after": the main database's slice (a send leaves the rows as they were).
        let main = main_rows(&self.office);
        let before = (&p.before, "before");
        let after = (if op == Op::Send { &p.before } else { &main }, "after");
        let allowed: &[(&Rows, &str)] = match outcome {
            "finished" => &[after],
            "cancelled" => &[before],
            _ => &[before, after],
        };
        // The next command: status never waits for the lock; then a read by an app.
        let status = self.dev.run(&["status", "--json"], "");
        if status.code != 0 || serde_json::from_str::<serde_json::Value>(&status.stdout).is_err() {
            bad.push(format!("`device status --json` failed: {status:?}"));
        }
        self.check_replica(&p, allowed, "next read", &mut bad);
        if outcome == "killed" || outcome == "hung" {
            // A command that takes the folder lock recovers first.
            let mode = self.dev.run(&["mode", "online"], "");
            if mode.code != 0 {
                bad.push(format!(
                    "`device mode online` after the kill failed: {mode:?}"
                ));
            }
            self.check_replica(&p, &[before, after], "after recovery", &mut bad);
        }
        let stray = leftovers(&self.dev);
        if !stray.is_empty() {
            bad.push(format!("files left in the device folder: {stray:?}"));
        }
        self.settle(&p, &mut bad);
        if self.round.is_multiple_of(100) {
            eprintln!(
                "{}: {} points after {:?}, {} failing so far",
                self.tag,
                self.round,
                self.started.elapsed(),
                self.failures.len() + usize::from(!bad.is_empty())
            );
        }
        if !bad.is_empty() {
            self.failures.push(format!(
                "{what}: {outcome}: {}\n    stderr: {}",
                bad.join("; "),
                ended.stderr.trim()
            ));
        }
        ended.elapsed
    }

    fn outcome(&self, stop: Option<Stop>, e: &Ended, bad: &mut Vec<String>) -> &'static str {
        if e.hung {
            bad.push(format!("still running {EXIT_BOUND:?} after the signal"));
            return "hung";
        }
        match (stop, e.code, e.signal) {
            (_, Some(0), _) => "finished",
            (Some(Stop::Int | Stop::Term), Some(5), _) => {
                if !e.stderr.contains(&format!("error: {CANCELLED}")) {
                    bad.push(format!("exit 5 without `{CANCELLED}` on stderr"));
                }
                "cancelled"
            }
            (Some(Stop::Kill), None, Some(9)) => "killed",
            (Some(Stop::Int | Stop::Term), None, Some(sig)) => {
                bad.push(format!(
                    "died of signal {sig} instead of exiting 5 (no handler installed yet?)"
                ));
                "killed"
            }
            _ => {
                bad.push(format!(
                    "unexpected exit {:?} (signal {:?}); stdout {:?}",
                    e.code, e.signal, e.stdout
                ));
                "failed"
            }
        }
    }

    /// A plain sync settles the journal and refreshes the replica (each point starts
    /// from a downloaded slice); then every entry of the point is in the main database
    /// exactly once, and the office deletes them (the slice keeps its size).
    fn settle(&mut self, p: &Point, bad: &mut Vec<String>) {
        let sync = self.dev.run(&["sync"], "");
        if sync.code != 0 {
            bad.push(format!("the settling sync failed: {sync:?}"));
            return;
        }
        match look(&self.dev) {
            Ok(seen) if seen.journal.is_empty() => {}
            Ok(seen) => bad.push(format!(
                "{} journal entries left after the settling sync",
                seen.journal.len()
            )),
            Err(e) => bad.push(format!("after the settling sync: {e}")),
        }
        if p.n == 0 {
            return;
        }
        let main = self.in_main(p);
        if main.len() as u64 != p.n {
            bad.push(format!(
                "{} of {} inserted inspections in the main database after the settling sync",
                main.len(),
                p.n
            ));
        } else {
            self.verified += p.n;
        }
        if self.asset_name_in_main() != p.prefix {
            bad.push("the asset update is not in the main database".into());
        }
        let upper = format!("{}~", p.prefix.trim_end_matches('-'));
        self.office
            .sql()
            .execute(
                "DELETE FROM inspections WHERE id >= ?1 AND id < ?2",
                [&p.prefix, &upper],
            )
            .unwrap();
    }

    /// One uninterrupted run of each operation: the durations the points spread over.
    fn calibrate(&mut self) -> BTreeMap<Op, Duration> {
        Op::ALL
            .iter()
            .map(|&op| (op, self.point(op, None, Duration::ZERO)))
            .collect()
    }

    /// The end: a final sync; no conflict was logged (a second application of an
    /// upload would have logged insert-exists); the replica is the slice.
    fn finish(mut self, test: &str, started: Instant) {
        let sync = self.dev.run(&["sync"], "");
        if sync.code != 0 {
            self.failures
                .push(format!("the final sync failed: {sync:?}"));
        }
        match look(&self.dev) {
            Ok(seen) => {
                if seen.integrity != "ok" || !seen.journal.is_empty() {
                    self.failures.push(format!(
                        "after the final sync: integrity {:?}, {} journal entries",
                        seen.integrity,
                        seen.journal.len()
                    ));
                }
                if seen.rows != main_rows(&self.office) {
                    self.failures
                        .push("after the final sync the replica is not the slice".into());
                }
            }
            Err(e) => self.failures.push(format!("after the final sync: {e}")),
        }
        let logged = conflicts(&self.office);
        if !logged.is_empty() {
            self.failures.push(format!(
                "{} conflict(s) logged, a double application? first: {}",
                logged.len(),
                logged[0]
            ));
        }
        let uploads: i64 = self
            .office
            .sql()
            .query_row("SELECT count(*) FROM fieldsync_uploads", [], |r| r.get(0))
            .unwrap();
        eprintln!(
            "{test}: {} points in {:?}; outcomes {:?}; slowest exit after a signal {:?}; {} inspections verified once each, {uploads} uploads recorded",
            self.round,
            started.elapsed(),
            self.tally,
            self.max_latency,
            self.verified
        );
        assert!(
            self.failures.is_empty(),
            "{} failing point(s):\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// SIGINT at `FIELDSYNC_SIGINT_POINTS` points of each of download, send and sync.
#[test]
fn sigint_during_download_send_and_sync_restores_the_previous_replica() {
    let started = Instant::now();
    let n = env_num("FIELDSYNC_SIGINT_POINTS", 10);
    let mut rng = seeded("sigint");
    let mut lab = Lab::new("int");
    let durations = lab.calibrate();
    eprintln!("sigint: durations {durations:?}");
    for op in Op::ALL {
        for at in delays(durations[&op], n, &mut rng) {
            lab.point(op, Some(Stop::Int), at);
        }
    }
    lab.finish("sigint", started);
}

/// SIGTERM once in the middle of a download and of a send, as a service manager stops it.
#[test]
fn sigterm_cancels_like_sigint() {
    let started = Instant::now();
    let mut lab = Lab::new("term");
    let durations = lab.calibrate();
    for op in [Op::Download, Op::Send] {
        lab.point(op, Some(Stop::Term), durations[&op] / 2);
    }
    let cancelled: u64 = lab
        .tally
        .iter()
        .filter(|((_, o), _)| o.starts_with("cancelled"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        cancelled > 0 || !lab.failures.is_empty(),
        "neither SIGTERM landed while an operation ran: {:?}",
        lab.tally
    );
    lab.finish("sigterm", started);
}

/// kill -9 of the device at `FIELDSYNC_KILL_POINTS` random points across download,
/// send and sync.
#[test]
fn kill_9_of_the_device_leaves_the_before_or_the_after_state() {
    let started = Instant::now();
    let n = env_num("FIELDSYNC_KILL_POINTS", 30);
    let mut rng = seeded("kill -9");
    let mut lab = Lab::new("kill");
    let durations = lab.calibrate();
    eprintln!("kill -9: durations {durations:?}");
    let per_op = n.div_ceil(3);
    let at: Vec<Vec<Duration>> = Op::ALL
        .iter()
        .map(|op| delays(durations[op], per_op, &mut rng))
        .collect();
    for k in 0..n as usize {
        lab.point(Op::ALL[k % 3], Some(Stop::Kill), at[k % 3][k / 3]);
    }
    lab.finish("kill -9", started);
}

/// kill -9 of the server at a few points of the largest upload a device makes (a
/// journal of one chunk, `UPLOAD_CHUNK_ENTRIES` entries; longer journals go as several
/// uploads, `limits_upload.rs`), and once right after its commit; restart, send again:
/// every entry applied exactly once.
#[test]
fn kill_9_of_the_server_during_a_large_upload_then_a_resend_applies_it_once() {
    let started = Instant::now();
    let chunk = fieldsync_proto::wire::UPLOAD_CHUNK_ENTRIES as u64;
    let n = env_num("FIELDSYNC_SERVER_KILL_ENTRIES", chunk).min(chunk);
    let points = env_num("FIELDSYNC_SERVER_KILL_POINTS", 3);
    let mut rng = seeded("server kill");
    let mut office = Office::new(200);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    let asset: i64 = dev
        .replica()
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    let scratch = TempDir::new("crash-out");
    let insert = |prefix: &str| {
        dev.replica()
            .execute(
                "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?3)
                 INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
                 SELECT printf('%s%06d', ?1, i), ?2, 'ana', '2026-11-26T09:00:00.000Z', 'ok', 'server kill' FROM k",
                rusqlite::params![prefix, asset, n],
            )
            .unwrap();
    };
    // Engine-neutral SQL: the prefixes hold no LIKE wildcards, upload ids are hex.
    let count = |office: &Office, sql: &str, arg: &str| -> i64 {
        office
            .value(&sql.replace("?1", &format!("'{arg}'")))
            .parse()
            .unwrap()
    };
    let uploads = |office: &Office| office.uploads_recorded();
    const BY_PREFIX: &str = "SELECT count(*) FROM inspections WHERE id LIKE ?1 || '%'";

    // Calibration: when the server commits an uploaded journal of this size (polled
    // in the main database), and how long its integration takes (sync history).
    insert("cal-");
    let uploads_before = uploads(&office);
    let running = spawn(&dev, &["send"], &scratch.0);
    poll_until(Duration::from_secs(120), "the server's commit", || {
        uploads(&office) > uploads_before
    });
    let commit = running.started.elapsed();
    let ended = interrupt(running, None, Duration::ZERO);
    assert_eq!(ended.code, Some(0), "{ended:?}");
    let sessions: serde_json::Value =
        serde_json::from_str(&office.admin(&["sessions", "--json"], "").ok().stdout).unwrap();
    let integration = Duration::from_millis(
        sessions.as_array().unwrap().last().unwrap()["duration_ms"]
            .as_u64()
            .unwrap(),
    );
    eprintln!(
        "server kill: an upload of {n} entries is committed {commit:?} after the send starts \
         (the server's part {integration:?}), acknowledged after {:?}",
        ended.elapsed
    );

    let mut outcomes = vec![];
    for p in 0..=points {
        let prefix = format!("srv{p}-");
        insert(&prefix);
        let uploads_before = uploads(&office);
        let running = spawn(&dev, &["send"], &scratch.0);
        let at = if p < points {
            // Spread over the time before the commit: the device preparing and sending
            // the upload, the server receiving and integrating it.
            let at = delay(commit, p, points, &mut rng);
            std::thread::sleep(at.saturating_sub(running.started.elapsed()));
            at
        } else {
            // The last point: right after the server committed the upload.
            poll_until(Duration::from_secs(120), "the server's commit", || {
                uploads(&office) > uploads_before
            });
            running.started.elapsed()
        };
        office.server.child.kill().unwrap();
        office.server.child.wait().unwrap();
        let ended = interrupt(running, None, Duration::ZERO);
        assert!(
            ended.code == Some(0) || ended.code == Some(1),
            "point {p}: the send ends ok or with a clear error: {ended:?}"
        );
        if ended.code == Some(1) {
            assert!(
                ended
                    .stderr
                    .lines()
                    .last()
                    .is_some_and(|l| l.starts_with("error: ")),
                "{ended:?}"
            );
        }
        // The killed server's transaction is all or nothing.
        if office.engine() == Engine::Sqlite {
            assert_eq!(integrity(&office.sql()), "ok");
        }
        let applied = count(&office, BY_PREFIX, &prefix);
        assert!(
            applied == 0 || applied == n as i64,
            "point {p}: {applied} of {n} entries applied: a torn upload"
        );
        let stored: Option<String> = dev
            .replica()
            .query_row("SELECT upload_id FROM fieldsync_upload", [], |r| r.get(0))
            .ok();
        outcomes.push(format!(
            "point {p}: server killed at {at:?}, send exit {:?} after {:?}, {} applied before the resend",
            ended.code,
            ended.elapsed,
            if applied == 0 { "none" } else { "all" }
        ));

        office.server = Server::start(&office.db_url);
        dev.use_server(&office.server.url);
        dev.run(&["send"], "").ok();
        assert_eq!(
            count(&office, BY_PREFIX, &prefix),
            n as i64,
            "point {p}: every entry applied once"
        );
        if let Some(id) = &stored {
            assert_eq!(
                count(
                    &office,
                    &format!(
                        "SELECT count(*) FROM {} WHERE upload_id = ?1",
                        office.own_table("uploads")
                    ),
                    id
                ),
                1,
                "point {p}: the stored upload id recorded once"
            );
        }
        assert_eq!(dev.status()["pending"], 0);
        assert_eq!(integrity(&dev.replica()), "ok");
    }
    let uploads = uploads(&office);
    assert_eq!(
        uploads,
        points + 2,
        "one recorded upload per send: {outcomes:?}"
    );
    let logged = conflicts(&office);
    assert!(logged.is_empty(), "a double application: {logged:?}");
    eprintln!(
        "server kill: {} in {:?}",
        outcomes.join("; "),
        started.elapsed()
    );
}

/// How long a sync or a send may take while an app writes (uninterrupted: well under a
/// second).
const WRITER_BOUND: Duration = Duration::from_secs(10);

/// An app's writes in order: the key it inserted, and what SQLite answered.
type AppLog = Vec<(String, Result<(), String>)>;

/// An app keeps its connection to the replica open and writes while `op` runs: every
/// write it was told succeeded is afterwards in the replica the device uses or in the
/// main database; every other write got an error; none vanish. Then a final sync brings
/// every successful write to the main database, once. Returns the app's writes.
fn app_writing_across(op: &[&str]) -> AppLog {
    let office = Office::new(20_000);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    let asset: i64 = dev
        .replica()
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let app = {
        let path = dev.replica_path();
        let (stop, attempts) = (stop.clone(), attempts.clone());
        std::thread::spawn(move || {
            let conn = Connection::open(path).unwrap();
            conn.busy_timeout(Duration::from_secs(2)).unwrap();
            let mut log: AppLog = vec![];
            while !stop.load(Ordering::SeqCst) {
                let id = format!("app-{:06}", log.len());
                let r = conn.execute(
                    "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result)
                     VALUES (?1, ?2, 'ana', '2026-11-26T09:00:00.000Z', 'ok')",
                    rusqlite::params![id, asset],
                );
                log.push((id, r.map(|_| ()).map_err(|e| e.to_string())));
                attempts.fetch_add(1, Ordering::SeqCst);
                // An app's pace: a write every millisecond or so.
                std::thread::sleep(Duration::from_millis(1));
            }
            log
        })
    };
    poll_until(Duration::from_secs(30), "the app's first writes", || {
        attempts.load(Ordering::SeqCst) >= 20
    });
    // The operation must end while the app writes (uninterrupted it takes well under a
    // second here); if it does not, it is cancelled so that the rest can be checked.
    let scratch = TempDir::new("crash-out");
    let running = spawn(&dev, op, &scratch.0);
    let ended = interrupt(running, Some(Stop::Int), WRITER_BOUND);
    let at_end = attempts.load(Ordering::SeqCst);
    poll_until(
        Duration::from_secs(30),
        "the app's writes after the operation",
        || attempts.load(Ordering::SeqCst) >= at_end + 20,
    );
    stop.store(true, Ordering::SeqCst);
    let log = app.join().unwrap();

    let ids = |conn: &Connection| -> HashSet<String> {
        conn.prepare("SELECT id FROM inspections WHERE id LIKE 'app-%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let fresh = dev.replica();
    assert_eq!(integrity(&fresh), "ok");
    let in_replica = ids(&fresh);
    let in_main = ids(&office.sql());
    let ok: Vec<&String> = log
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(id, _)| id)
        .collect();
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, r) in &log {
        if let Err(e) = r {
            *errors.entry(e.as_str()).or_default() += 1;
        }
    }
    eprintln!(
        "app across {op:?}: {} writes, {} succeeded, errors {errors:?}; the operation {ended:?}",
        log.len(),
        ok.len()
    );
    let vanished: Vec<&&String> = ok
        .iter()
        .filter(|id| !in_replica.contains(**id) && !in_main.contains(**id))
        .collect();
    assert!(
        vanished.is_empty(),
        "{} write(s) reported successful vanished: {:?}",
        vanished.len(),
        &vanished[..vanished.len().min(10)]
    );
    let phantom: Vec<&String> = log
        .iter()
        .filter(|(id, r)| r.is_err() && (in_replica.contains(id) || in_main.contains(id)))
        .map(|(id, _)| id)
        .collect();
    assert!(
        phantom.is_empty(),
        "writes that failed yet landed: {phantom:?}"
    );

    // Nothing is lost on the way to the office either.
    dev.run(&["sync"], "").ok();
    let in_main = ids(&office.sql());
    assert_eq!(
        ok.iter().filter(|id| in_main.contains(**id)).count(),
        ok.len(),
        "every successful write reaches the main database"
    );
    assert_eq!(in_main.len(), ok.len(), "and nothing else");
    assert!(conflicts(&office).is_empty());
    assert_eq!(dev.status()["pending"], 0);

    // The operation ends, successfully, in a bounded time: it sends the journal as it
    // was, not every edit made meanwhile.
    assert!(
        ended.elapsed < WRITER_BOUND,
        "{op:?} did not end within {WRITER_BOUND:?} while an app wrote (then SIGINT: {ended:?})"
    );
    assert_eq!(ended.code, Some(0), "{op:?} with an app writing: {ended:?}");
    log
}

/// Across a sync the app's writes are held off ("database is busy") while the sync
/// changes the replica; the sync's download is a delta, applied in place, so after it
/// the held connection writes on into the current replica (journaled, sent next).
#[test]
fn an_app_writing_across_a_sync_loses_no_write() {
    let log = app_writing_across(&["sync"]);
    let (_, last) = log.last().unwrap();
    assert!(last.is_ok(), "the replica stays the replica: {last:?}");
}

/// Across a sync that downloads the whole slice (`--full`) the same, except that after
/// it the held connection points at a retired generation and its writes fail loudly.
#[test]
fn an_app_writing_across_a_full_sync_loses_no_write() {
    let log = app_writing_across(&["sync", "--full"]);
    let (_, last) = log.last().unwrap();
    assert!(last.is_err(), "a write into the retired replica succeeded");
}

/// Across a send the replica stays: the app's writes made meanwhile stay in the journal
/// for the next send.
#[test]
fn an_app_writing_across_a_send_loses_no_write() {
    let log = app_writing_across(&["send"]);
    let (_, last) = log.last().unwrap();
    assert!(last.is_ok(), "the replica stays the replica: {last:?}");
}

crate::also_on_postgres!(kill_9_of_the_server_during_a_large_upload_then_a_resend_applies_it_once);
