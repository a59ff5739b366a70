//! The benchmark harness: a full download of an N-row slice through the real `fieldsync`
//! binary, against the floor (a plain SQLite bulk insert of the same rows), with peak RSS
//! and bytes on the wire, printed as a markdown table (DESIGN.md, "Performance targets").
//!
//! Everything of one size is measured in one run, so the ratios compare like with like
//! on the same machine at the same moment. Missed targets are reported, not failed on;
//! a wrong replica fails the run.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fieldsync_store::sample::{self, AssetRow, Gen};
use rusqlite::{Connection, params};

const USAGE: &str = "\
usage: fieldsync-bench [--dir DIR] [--rows-list N,N,...] [--keep]

Times a full download of an N-row slice through the real `fieldsync` binary against
a plain SQLite bulk insert of the same rows (the floor), and reports peak RSS of server
and device and bytes on the wire against CSV, as a markdown table on stdout.

  --dir DIR          work folder (default: a fresh folder under /tmp, removed at the end)
  --rows-list LIST   comma-separated slice sizes to run one after the other
                     (default: one size from FIELDSYNC_BENCH_ROWS, else 1000000)
  --keep             keep the databases and device folders of the run

environment:
  FIELDSYNC_BENCH_ROWS  rows of the slice (default 1000000)
  FIELDSYNC_BENCH_PG    a PostgreSQL URL (a user that may create databases): each size
                        is then also downloaded from a fresh PostgreSQL main database
  FIELDSYNC_BIN         the fieldsync binary (default: `fieldsync` beside this program)";

const ROWS_DEFAULT: u64 = 1_000_000;
/// How often the device's /proc status is read while it downloads.
const RSS_POLL: Duration = Duration::from_millis(20);
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// The targets of DESIGN.md.
const DOWNLOAD_FLOOR_RATIO_MAX: f64 = 1.5;
const RSS_MB_MAX: f64 = 150.0;
const WIRE_CSV_RATIO_MAX: f64 = 0.5;

const BENCH_USER: &str = "bench";
const BENCH_PASSWORD: &str = "bench-password-1";
const BENCH_DEVICE: &str = "dev1";
const TASK_FILE: &str =
    "name = \"bench\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = 'north'\"\n";
const INSERT_ASSET: &str = "INSERT INTO assets (id, name, category, status, region, x, y, installed, notes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const CSV_HEADER: [&str; 9] = [
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

struct Config {
    bin: PathBuf,
    dir: Option<PathBuf>,
    sizes: Vec<u64>,
    keep: bool,
    /// Also measure downloads from PostgreSQL (`FIELDSYNC_BENCH_PG`).
    pg: Option<String>,
}

/// What one download cost, seen from outside the device process.
struct DownloadFigures {
    watched: Watched,
    /// The device's own `last_sync.duration_ms` (no process start or exit).
    reported_ms: u64,
    bytes_down: u64,
    full_reason: String,
}

/// The floor's time, and what else ran meanwhile.
struct FloorFigures {
    total_s: f64,
    /// The final checkpoint, close and fsync, after the commit.
    sync_s: f64,
    /// This program's CPU time for the floor (user + system).
    cpu_s: f64,
    /// CPU time of everything else on the machine during the floor.
    other_cpu_s: f64,
}

/// Everything measured for one slice size.
struct Figures {
    /// The main database's engine: SQLite or PostgreSQL.
    engine: &'static str,
    n_rows: u64,
    generate_s: f64,
    main_insert_s: f64,
    track_s: f64,
    floor: FloorFigures,
    downloads: Vec<DownloadFigures>,
    server_rss_kb: u64,
    csv_bytes: u64,
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_count(text: &str) -> anyhow::Result<u64> {
    let n: u64 = text
        .trim()
        .replace('_', "")
        .parse()
        .with_context(|| format!("`{text}` is not a row count"))?;
    ensure!(n > 0, "a row count must be at least 1");
    Ok(n)
}

/// The command line and environment; `None` when help was asked for.
fn parse_args() -> anyhow::Result<Option<Config>> {
    let mut dir = None;
    let mut sizes = None;
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--dir" => dir = Some(PathBuf::from(args.next().context("--dir needs a folder")?)),
            "--rows-list" => {
                let list = args.next().context("--rows-list needs a list")?;
                sizes = Some(
                    list.split(',')
                        .map(parse_count)
                        .collect::<anyhow::Result<Vec<_>>>()?,
                );
            }
            "--keep" => keep = true,
            other => bail!("unknown argument `{other}`"),
        }
    }
    let sizes = match sizes {
        Some(s) => s,
        None => vec![match std::env::var("FIELDSYNC_BENCH_ROWS") {
            Ok(v) => parse_count(&v).context("FIELDSYNC_BENCH_ROWS")?,
            Err(_) => ROWS_DEFAULT,
        }],
    };
    let bin = match std::env::var_os("FIELDSYNC_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .context("locating this program")?
            .parent()
            .context("this program has no folder")?
            .join("fieldsync"),
    };
    Ok(Some(Config {
        bin,
        dir,
        sizes,
        keep,
        pg: std::env::var("FIELDSYNC_BENCH_PG").ok(),
    }))
}

fn run(config: &Config) -> anyhow::Result<()> {
    ensure!(
        config.bin.is_file(),
        "no fieldsync binary at {}: build it (cargo build --release -p fieldsync-cli) or set FIELDSYNC_BIN",
        config.bin.display()
    );
    let (root, remove_root) = match &config.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("fieldsync-bench-{}", std::process::id())),
            !config.keep,
        ),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;

    println!("# fieldsync benchmark\n");
    println!("- command: `{}`", command_line());
    println!("- fieldsync binary: `{}`", config.bin.display());
    println!("- machine: {}", machine());
    println!("- work folder: `{}`", root.display());
    println!("- load average at start: {}", load_average());

    let mut all = Vec::new();
    for &n_rows in &config.sizes {
        let dir = root.join(format!("rows-{n_rows}"));
        ensure!(
            !dir.exists(),
            "{} exists from an earlier run: remove it or pick another --dir",
            dir.display()
        );
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let figures = measure(&config.bin, &dir, n_rows, None)?;
        print_figures(&figures);
        println!("\nLoad average after this size: {}.", load_average());
        if let Some(pg) = &config.pg {
            let pg_dir = dir.join("postgres");
            std::fs::create_dir_all(&pg_dir)?;
            let db = PgBenchDb::create(pg)?;
            let on_pg = measure(&config.bin, &pg_dir, n_rows, Some(&db.url))?;
            print_figures(&on_pg);
            println!(
                "\n| PostgreSQL vs SQLite main database | download 1 | download 2 | server peak RSS |"
            );
            println!("|---|---|---|---|");
            let ratio =
                |i: usize| on_pg.downloads[i].watched.wall_s / figures.downloads[i].watched.wall_s;
            println!(
                "| {} rows | {:.3} s vs {:.3} s = {:.2}× | {:.3} s vs {:.3} s = {:.2}× | {:.1} MB vs {:.1} MB |",
                thousands(n_rows),
                on_pg.downloads[0].watched.wall_s,
                figures.downloads[0].watched.wall_s,
                ratio(0),
                on_pg.downloads[1].watched.wall_s,
                figures.downloads[1].watched.wall_s,
                ratio(1),
                mb(on_pg.server_rss_kb),
                mb(figures.server_rss_kb),
            );
            println!("\nLoad average after PostgreSQL: {}.", load_average());
        }
        if !config.keep && config.dir.is_none() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        all.push(figures);
    }
    if all.len() > 1 {
        print_summary(&all);
    }
    if remove_root {
        std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    Ok(())
}

/// This invocation as a shell line, with the environment that changes what it does.
fn command_line() -> String {
    let mut parts = Vec::new();
    for var in [
        "FIELDSYNC_BENCH_ROWS",
        "FIELDSYNC_BENCH_PG",
        "FIELDSYNC_BIN",
    ] {
        if let Ok(v) = std::env::var(var) {
            parts.push(format!("{var}={v}"));
        }
    }
    parts.extend(std::env::args());
    parts.join(" ")
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = proc_field_kb(&meminfo, "MemTotal:").unwrap_or(0);
    format!(
        "{cores} cores ({model}), {:.1} GiB RAM",
        mem_kb as f64 / (1024.0 * 1024.0)
    )
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews the timings.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Every row of the slice, from the fixed generator: one `Gen` seeded 42, ids 1..=n, all
/// in region `north`.
fn generate(n_rows: u64) -> Vec<AssetRow> {
    let mut g = Gen::new(42);
    (1..=n_rows as i64)
        .map(|id| sample::asset_row(&mut g, id, "north"))
        .collect()
}

/// Inserts `rows` into `assets` in one transaction with one prepared statement.
fn insert_rows(conn: &mut Connection, rows: &[AssetRow]) -> anyhow::Result<()> {
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
fn floor(path: &Path, rows: &[AssetRow], ticks_per_s: f64) -> anyhow::Result<FloorFigures> {
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
fn csv_field_len(field: &str) -> u64 {
    if field.contains([',', '"', '\r', '\n']) {
        2 + field.len() as u64 + field.matches('"').count() as u64
    } else {
        field.len() as u64
    }
}

/// A REAL as SQLite's CSV output writes it (`%!.15g`): 15 significant digits, trailing
/// zeros dropped. Shorter than Rust's round-trip form for sums like 14.0 + 0.123456, so
/// the CSV is not made longer than a real export would be.
fn real_text(x: f64) -> String {
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
fn csv_bytes(rows: &[AssetRow]) -> u64 {
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

/// Runs `fieldsync ARGS`, feeding `stdin` if given; its stdout, or an error with its stderr.
fn fieldsync(bin: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes())
            .context("writing to fieldsync's stdin")?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "`fieldsync {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).context("fieldsync's stdout is not UTF-8")
}

/// The server child; killed when dropped, so an error anywhere leaves no server behind.
struct ServerChild(Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fieldsync server run` on a free loopback port; returns it and its URL once it
/// printed `listening on URL`. Its stderr goes to `log`.
fn start_server(bin: &Path, db: &str, log: &Path) -> anyhow::Result<(ServerChild, String)> {
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(bin)
        .args(["server", "run", "--db", db, "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut server = ServerChild(child);
    let stdout = server.0.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        // Keep draining, so a later line never meets a closed pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(SERVER_START_TIMEOUT) {
        Ok(Some(Ok(line))) => line,
        Ok(_) => bail!(
            "the server exited before it listened; see {}",
            log.display()
        ),
        Err(_) => bail!(
            "the server printed nothing within {} s; see {}",
            SERVER_START_TIMEOUT.as_secs(),
            log.display()
        ),
    };
    let url = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line from the server: {line}"))?
        .trim()
        .to_string();
    Ok((server, url))
}

/// A value in kB from a `/proc` file of `Name:   123 kB` lines.
fn proc_field_kb(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Peak resident set (VmHWM, kB) of a live process.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    proc_field_kb(&status, "VmHWM:")
}

/// User plus system CPU time of a live process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces, start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy and iowait clock ticks of the whole machine since boot, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0))
        .sum();
    Some((busy, v.get(4).copied().unwrap_or(0)))
}

/// What watching one download child saw.
struct Watched {
    wall_s: f64,
    device_rss_kb: u64,
    device_cpu_s: f64,
    server_cpu_s: f64,
    /// CPU time of everything else on the machine meanwhile: other people's builds and
    /// tests skew the timings, and this says by how much.
    other_cpu_s: f64,
    iowait_s: f64,
}

/// Clock ticks per second for `/proc/*/stat` (USER_HZ).
fn ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs one `fieldsync device download` and watches it: wall clock, peak RSS and CPU,
/// sampled from `/proc` every RSS_POLL until it exits.
fn timed_download(
    bin: &Path,
    args: &[&str],
    server_pid: u32,
    ticks_per_s: f64,
) -> anyhow::Result<Watched> {
    let server_ticks_before = cpu_ticks(server_pid).context("reading the server's CPU time")?;
    let (busy_before, iowait_before) = machine_ticks().context("reading /proc/stat")?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut rss_kb, mut ticks) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                rss_kb = rss_kb.max(peak_rss_kb(pid).unwrap_or(0));
                ticks = ticks.max(cpu_ticks(pid).unwrap_or(0));
                std::thread::sleep(RSS_POLL);
            }
            (rss_kb, ticks)
        })
    };
    let status = child.wait()?;
    let wall_s = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (rss_kb, device_ticks) = poller.join().expect("the poller does not panic");
    let server_ticks_after = cpu_ticks(server_pid).context("reading the server's CPU time")?;
    let (busy_after, iowait_after) = machine_ticks().context("reading /proc/stat")?;
    let out = out_reader.join().expect("the reader does not panic");
    let err = err_reader.join().expect("the reader does not panic");
    ensure!(
        status.success(),
        "`fieldsync {}` failed ({status}): {}",
        args.join(" "),
        err.trim()
    );
    eprintln!("  {}", out.trim());
    let server_ticks = server_ticks_after.saturating_sub(server_ticks_before);
    let other_ticks = busy_after
        .saturating_sub(busy_before)
        .saturating_sub(device_ticks + server_ticks);
    Ok(Watched {
        wall_s,
        device_rss_kb: rss_kb,
        device_cpu_s: device_ticks as f64 / ticks_per_s,
        server_cpu_s: server_ticks as f64 / ticks_per_s,
        other_cpu_s: other_ticks as f64 / ticks_per_s,
        iowait_s: iowait_after.saturating_sub(iowait_before) as f64 / ticks_per_s,
    })
}

/// Fails loudly unless the replica holds exactly the slice's rows.
fn check_replica(path: &str, rows: &[AssetRow]) -> anyhow::Result<()> {
    let conn = Connection::open(path).with_context(|| format!("opening the replica {path}"))?;
    let (n, id_sum, notes_len): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(id), 0), coalesce(sum(length(notes)), 0) FROM assets",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .context("counting the replica's assets")?;
    let want_n = rows.len() as i64;
    let want_id_sum: i64 = rows.iter().map(|r| r.id).sum();
    let want_notes_len: i64 = rows.iter().map(|r| r.notes.chars().count() as i64).sum();
    ensure!(
        n == want_n,
        "WRONG REPLICA: {path} holds {n} assets, the slice has {want_n}"
    );
    ensure!(
        id_sum == want_id_sum && notes_len == want_notes_len,
        "WRONG REPLICA: {path} holds {n} assets but not the slice's (sum of ids {id_sum}, want {want_id_sum}; length of notes {notes_len}, want {want_notes_len})"
    );
    Ok(())
}

/// A fresh PostgreSQL database for one measurement, dropped at the end.
struct PgBenchDb {
    base: String,
    name: String,
    url: String,
}

impl PgBenchDb {
    fn create(base: &str) -> anyhow::Result<PgBenchDb> {
        let mut admin = postgres::Client::connect(base, postgres::NoTls)
            .with_context(|| format!("connecting to FIELDSYNC_BENCH_PG {base}"))?;
        let name = format!("fs_bench_{}", fieldsync_store::random_hex(4));
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let (prefix, _) = base
            .rsplit_once('/')
            .context("FIELDSYNC_BENCH_PG names no database")?;
        Ok(PgBenchDb {
            base: base.to_string(),
            url: format!("{prefix}/{name}"),
            name,
        })
    }
}

impl Drop for PgBenchDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.base, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Fills a PostgreSQL main database's `assets` by COPY, in one transaction.
fn insert_rows_pg(url: &str, rows: &[AssetRow]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    let mut tx = c.transaction()?;
    tx.batch_execute(sample::PG_SCHEMA)?;
    {
        let mut w = tx.copy_in("COPY assets FROM STDIN")?;
        let mut buf = String::with_capacity(1 << 20);
        for r in rows {
            buf.push_str(&r.copy_line());
            if buf.len() > 1 << 20 {
                w.write_all(buf.as_bytes())?;
                buf.clear();
            }
        }
        w.write_all(buf.as_bytes())?;
        w.finish()?;
    }
    tx.commit()?;
    c.batch_execute("ANALYZE assets")?;
    Ok(())
}

fn measure(bin: &Path, dir: &Path, n_rows: u64, pg: Option<&str>) -> anyhow::Result<Figures> {
    let engine = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    eprintln!("== {n_rows} rows in {} ({engine})", dir.display());
    let ticks_per_s = ticks_per_s();

    eprintln!("generating rows");
    let started = Instant::now();
    let rows = generate(n_rows);
    let generate_s = started.elapsed().as_secs_f64();

    eprintln!("writing the main database");
    let main_db = dir.join("main.sqlite");
    let started = Instant::now();
    match pg {
        None => {
            let mut conn = Connection::open(&main_db)?;
            conn.execute_batch(sample::SCHEMA)?;
            insert_rows(&mut conn, &rows).context("filling the main database")?;
        }
        Some(url) => insert_rows_pg(url, &rows).context("filling the PostgreSQL database")?,
    }
    let main_insert_s = started.elapsed().as_secs_f64();

    eprintln!("timing the floor");
    let floor = floor(&dir.join("floor.sqlite"), &rows, ticks_per_s).context("timing the floor")?;
    let csv_bytes = csv_bytes(&rows);

    eprintln!("setting up the server");
    let db = match pg {
        None => format!("sqlite:{}", main_db.display()),
        Some(url) => url.to_string(),
    };
    let db = db.as_str();
    fieldsync(bin, &["server", "init", "--db", db], None)?;
    let started = Instant::now();
    fieldsync(
        bin,
        &["admin", "table", "track", "assets", "--db", db],
        None,
    )?;
    let track_s = started.elapsed().as_secs_f64();
    fieldsync(
        bin,
        &[
            "admin",
            "user",
            "add",
            BENCH_USER,
            "--password-stdin",
            "--db",
            db,
        ],
        Some(&format!("{BENCH_PASSWORD}\n")),
    )?;
    let code = fieldsync(
        bin,
        &["admin", "device", "add", BENCH_DEVICE, "--db", db],
        None,
    )?;
    let code = code.trim();
    ensure!(
        !code.is_empty() && !code.contains(char::is_whitespace),
        "`admin device add` printed `{code}`, not an enrollment code"
    );
    let task_file = dir.join("task.toml");
    std::fs::write(&task_file, TASK_FILE)?;
    let task_path = task_file.to_str().context("the work folder is not UTF-8")?;
    fieldsync(
        bin,
        &["admin", "task", "apply", task_path, "--db", db],
        None,
    )?;
    fieldsync(
        bin,
        &[
            "admin",
            "task",
            "assign",
            "bench",
            "--user",
            BENCH_USER,
            "--device",
            BENCH_DEVICE,
            "--db",
            db,
        ],
        None,
    )?;

    let (server, url) = start_server(bin, db, &dir.join("server.log"))?;
    let server_pid = server.0.id();
    eprintln!("server at {url}");
    let device_dir = dir.join("device");
    let device_dir = device_dir
        .to_str()
        .context("the work folder is not UTF-8")?;
    fieldsync(
        bin,
        &[
            "device",
            "pair",
            "--dir",
            device_dir,
            "--server",
            &url,
            "--device-id",
            BENCH_DEVICE,
            "--code",
            code,
        ],
        None,
    )?;
    fieldsync(
        bin,
        &[
            "device",
            "login",
            BENCH_USER,
            "--password-stdin",
            "--dir",
            device_dir,
        ],
        Some(&format!("{BENCH_PASSWORD}\n")),
    )?;

    let mut downloads = Vec::new();
    for round in 0..2 {
        // The second download asks for a full one: it replaces the replica whole, and
        // stays a full download once deltas exist.
        let mut args = vec!["device", "download", "bench", "--dir", device_dir];
        if round == 1 {
            args.push("--full");
        }
        eprintln!("download {}", round + 1);
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
            "the download's last_sync is not ok: {last}"
        );
        let replica = status["replica"]
            .as_str()
            .context("`device status` names no replica")?;
        check_replica(replica, &rows)?;
        downloads.push(DownloadFigures {
            watched,
            reported_ms: last["duration_ms"].as_u64().unwrap_or(0),
            bytes_down: last["bytes_down"]
                .as_u64()
                .context("last_sync has no bytes_down")?,
            full_reason: last["full_reason"].as_str().unwrap_or("-").to_string(),
        });
    }
    let server_rss_kb = peak_rss_kb(server_pid).context("reading the server's peak RSS")?;
    drop(server);

    Ok(Figures {
        engine,
        n_rows,
        generate_s,
        main_insert_s,
        track_s,
        floor,
        downloads,
        server_rss_kb,
        csv_bytes,
    })
}

/// MB of 1,000,000 bytes, from the kB (KiB) of /proc.
fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**MISSED**" }
}

/// 1234567 as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_figures(f: &Figures) {
    let floor_max_s = f.floor.total_s * DOWNLOAD_FLOOR_RATIO_MAX;
    let csv_max = f.csv_bytes as f64 * WIRE_CSV_RATIO_MAX;
    println!(
        "\n## {} rows, {} main database\n",
        thousands(f.n_rows),
        f.engine
    );
    println!("| measure | value | target | ratio/verdict |");
    println!("|---|---|---|---|");
    println!(
        "| floor: SQLite bulk insert + checkpoint + fsync (WAL, synchronous=NORMAL) | {:.3} s (final checkpoint, close and fsync {:.3} s) | reference | 1.00× |",
        f.floor.total_s, f.floor.sync_s
    );
    let names = [
        "download 1 (no replica yet)",
        "download 2 (`--full`, replaces the replica)",
    ];
    for (d, name) in f.downloads.iter().zip(names) {
        let ratio = d.watched.wall_s / f.floor.total_s;
        println!(
            "| {name}, wall clock | {:.3} s (device's own figure {:.3} s) | ≤ {DOWNLOAD_FLOOR_RATIO_MAX}× floor = {floor_max_s:.3} s | {ratio:.2}× floor: {} |",
            d.watched.wall_s,
            d.reported_ms as f64 / 1000.0,
            verdict(ratio <= DOWNLOAD_FLOOR_RATIO_MAX)
        );
    }
    let server_mb = mb(f.server_rss_kb);
    println!(
        "| server peak RSS (VmHWM, whole run) | {server_mb:.1} MB | ≤ {RSS_MB_MAX} MB | {} |",
        verdict(server_mb <= RSS_MB_MAX)
    );
    for (i, d) in f.downloads.iter().enumerate() {
        let device_mb = mb(d.watched.device_rss_kb);
        println!(
            "| device peak RSS, download {} (VmHWM) | {device_mb:.1} MB | ≤ {RSS_MB_MAX} MB | {} |",
            i + 1,
            verdict(device_mb <= RSS_MB_MAX)
        );
    }
    for (i, d) in f.downloads.iter().enumerate() {
        let ratio = d.bytes_down as f64 / f.csv_bytes as f64;
        println!(
            "| bytes on the wire, download {} (`last_sync.bytes_down`) | {} B | ≤ {WIRE_CSV_RATIO_MAX}× CSV = {} B (CSV {} B) | {ratio:.3}× CSV: {} |",
            i + 1,
            thousands(d.bytes_down),
            thousands(csv_max as u64),
            thousands(f.csv_bytes),
            verdict(ratio <= WIRE_CSV_RATIO_MAX)
        );
    }
    println!(
        "| CPU during the floor: the floor / rest of the machine | {:.2} s / {:.2} s | — | informational |",
        f.floor.cpu_s, f.floor.other_cpu_s
    );
    for (i, d) in f.downloads.iter().enumerate() {
        println!(
            "| CPU during download {}: device / server / rest of the machine; iowait | {:.2} s / {:.2} s / {:.2} s; {:.2} s | — | full_reason `{}` |",
            i + 1,
            d.watched.device_cpu_s,
            d.watched.server_cpu_s,
            d.watched.other_cpu_s,
            d.watched.iowait_s,
            d.full_reason
        );
    }
    for (i, d) in f.downloads.iter().enumerate() {
        println!(
            "| device CPU of download {} / CPU of the floor | {:.2}× | — | informational: less sensitive to other load than the wall clock |",
            i + 1,
            d.watched.device_cpu_s / f.floor.cpu_s.max(0.01)
        );
    }
    println!(
        "\nSetup, not targets: rows generated in memory in {:.3} s; main database written in {:.3} s; `admin table track assets` took {:.3} s.",
        f.generate_s, f.main_insert_s, f.track_s
    );
}

fn print_summary(all: &[Figures]) {
    println!("\n## Per size\n");
    println!(
        "| rows | floor | download 1 | download 2 | download/floor (1 / 2) | server RSS | device RSS (1 / 2) | wire/CSV | other CPU on the machine (floor / 1 / 2) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let d1 = &f.downloads[0];
        let d2 = &f.downloads[1];
        println!(
            "| {} | {:.3} s | {:.3} s | {:.3} s | {:.2}× / {:.2}× | {:.1} MB | {:.1} MB / {:.1} MB | {:.3}× | {:.2} s / {:.2} s / {:.2} s |",
            thousands(f.n_rows),
            f.floor.total_s,
            d1.watched.wall_s,
            d2.watched.wall_s,
            d1.watched.wall_s / f.floor.total_s,
            d2.watched.wall_s / f.floor.total_s,
            mb(f.server_rss_kb),
            mb(d1.watched.device_rss_kb),
            mb(d2.watched.device_rss_kb),
            d1.bytes_down as f64 / f.csv_bytes as f64,
            f.floor.other_cpu_s,
            d1.watched.other_cpu_s,
            d2.watched.other_cpu_s
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_as_rfc_4180_says() {
        assert_eq!(csv_field_len("plain"), 5);
        assert_eq!(csv_field_len("a,b"), 5);
        assert_eq!(csv_field_len("say \"hi\""), 12);
        assert_eq!(csv_field_len("two\r\nlines"), 12);
    }

    #[test]
    fn csv_bytes_counts_header_separators_and_crlf() {
        let rows = generate(1);
        let r = &rows[0];
        let line = [
            r.id.to_string(),
            r.name.clone(),
            r.category.to_string(),
            r.status.to_string(),
            r.region.to_string(),
            real_text(r.x),
            real_text(r.y),
            r.installed.clone(),
            r.notes.clone(),
        ]
        .join(",");
        let header = CSV_HEADER.join(",");
        assert!(!line.contains('"'));
        assert_eq!(csv_bytes(&rows), (header.len() + 2 + line.len() + 2) as u64);
    }

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\tfieldsync\nVmPeak:\t  10 kB\nVmHWM:\t    4242 kB\n";
        assert_eq!(proc_field_kb(status, "VmHWM:"), Some(4242));
        assert_eq!(proc_field_kb(status, "VmRSS:"), None);
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(peak_rss_kb(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn reals_print_as_sqlite_prints_them() {
        assert_eq!(real_text(14.0 + 123_456.0 / 1e6), "14.123456");
        assert_eq!(real_text(50.5), "50.5");
        assert_eq!(real_text(14.0), "14.0");
        assert_eq!(real_text(0.0), "0.0");
    }

    #[test]
    fn a_replica_missing_a_row_fails_loudly() {
        let path = std::env::temp_dir().join(format!(
            "fieldsync-bench-test-{}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let rows = generate(3);
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(sample::SCHEMA).unwrap();
        insert_rows(&mut conn, &rows[..2]).unwrap();
        let path_text = path.to_str().unwrap();
        let err = check_replica(path_text, &rows).unwrap_err();
        assert!(err.to_string().contains("WRONG REPLICA"), "{err}");
        insert_rows(&mut conn, &rows[2..]).unwrap();
        check_replica(path_text, &rows).unwrap();
        drop(conn);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
