//! One slice size measured end to end: the main database, the server, a first download
//! through the real `fieldsync` binary, then the floor and a full download (`--full`)
//! taken in turn `reps` times (each reported figure the median run), then the delta
//! syncs (`delta.rs`), each replica checked.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fieldsync_store::sample::{self, AssetRow};
use rusqlite::Connection;

use crate::delta::{DeltaFigures, measure_delta};
use crate::floor::{FloorFigures, csv_bytes, floor, generate, insert_rows};
use crate::metrics::{
    Watched, median_run, peak_rss_kb, reset_peak_rss, rss_kb, ticks_per_s, timed_download,
};

pub(crate) const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const BENCH_USER: &str = "bench";
pub(crate) const BENCH_PASSWORD: &str = "bench-password-1";
pub(crate) const BENCH_DEVICE: &str = "dev1";
pub(crate) const TASK_FILE: &str =
    "name = \"bench\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = 'north'\"\n";

/// What one download cost, seen from outside the device process.
pub(crate) struct DownloadFigures {
    pub(crate) watched: Watched,
    /// The device's own `last_sync.duration_ms` (no process start or exit).
    pub(crate) reported_ms: u64,
    pub(crate) bytes_down: u64,
    pub(crate) full_reason: String,
}

/// Everything measured for one slice size.
pub(crate) struct Figures {
    /// The main database's engine: SQLite or PostgreSQL.
    pub(crate) engine: &'static str,
    pub(crate) n_rows: u64,
    pub(crate) generate_s: f64,
    pub(crate) main_insert_s: f64,
    pub(crate) track_s: f64,
    /// The median run of the floor.
    pub(crate) floor: FloorFigures,
    /// The floor's time of every run, in run order.
    pub(crate) floor_runs_s: Vec<f64>,
    /// The first download (no replica yet), the median run of the full downloads
    /// (`--full`, each taken right after a run of the floor and a row of the slice
    /// written again), then the median run of another tablet's first download right
    /// after each of those, nothing changed (a big slice's server sends the stream it
    /// kept).
    pub(crate) downloads: Vec<DownloadFigures>,
    /// The full downloads' wall clock of every run, in run order.
    pub(crate) full_runs_s: Vec<f64>,
    /// The other tablets' downloads, likewise.
    pub(crate) kept_runs_s: Vec<f64>,
    /// The syncs after the office changed 1% of the rows, then nothing.
    pub(crate) delta: DeltaFigures,
    pub(crate) server_rss_kb: u64,
    /// The server's RSS before the downloads, after the login (whose argon2 hash
    /// took 19 MiB while it ran), kB.
    pub(crate) before_downloads_server_rss_kb: u64,
    /// The server's peak RSS over the downloads alone (VmHWM reset before
    /// them), kB.
    pub(crate) download_server_rss_kb: u64,
    pub(crate) csv_bytes: u64,
}

/// Pairs the device folder `folder` with the server at `url` as device `id` (enrollment
/// code `code`) and logs the bench's user in.
pub(crate) fn pair_and_login(
    bin: &Path,
    folder: &str,
    url: &str,
    id: &str,
    code: &str,
) -> anyhow::Result<()> {
    let pair = [
        "device",
        "pair",
        "--dir",
        folder,
        "--server",
        url,
        "--device-id",
        id,
        "--code",
        code,
    ];
    fieldsync(bin, &pair, None)?;
    let login = [
        "device",
        "login",
        BENCH_USER,
        "--password-stdin",
        "--dir",
        folder,
    ];
    fieldsync(bin, &login, Some(&format!("{BENCH_PASSWORD}\n")))?;
    Ok(())
}

/// Another device of the bench's user, `id`, paired into its own folder under `dir`
/// and logged in, the bench task assigned to it; the folder.
fn crew_device(bin: &Path, db: &str, url: &str, dir: &Path, id: &str) -> anyhow::Result<String> {
    let code = fieldsync(bin, &["admin", "device", "add", id, "--db", db], None)?;
    let assign = [
        "admin", "task", "assign", "bench", "--device", id, "--db", db,
    ];
    fieldsync(bin, &assign, None)?;
    let folder = dir.join(id);
    let folder = folder.to_str().context("the work folder is not UTF-8")?;
    pair_and_login(bin, folder, url, id, code.trim())?;
    Ok(folder.to_string())
}

/// A row of the bench's slice written again as an office would, its values unchanged.
const TOUCH_ONE_ROW: &str = "UPDATE assets SET name = name WHERE id = (SELECT min(id) FROM assets)";

/// The device's `last_sync` (`device status --json`), which must be ok, and the path
/// of its replica.
pub(crate) fn last_sync(
    bin: &Path,
    device_dir: &str,
) -> anyhow::Result<(serde_json::Value, String)> {
    let mut status: serde_json::Value = serde_json::from_str(&fieldsync(
        bin,
        &["device", "status", "--dir", device_dir, "--json"],
        None,
    )?)
    .context("parsing `device status --json`")?;
    let last = status["last_sync"].take();
    ensure!(last["result"] == "ok", "the last sync is not ok: {last}");
    let replica = status["replica"]
        .as_str()
        .context("`device status` names no replica")?
        .to_string();
    Ok((last, replica))
}

/// One timed download, its `last_sync` read and its replica checked against `rows`.
fn checked_download(
    bin: &Path,
    args: &[&str],
    device_dir: &str,
    server_pid: u32,
    ticks_per_s: f64,
    rows: &[AssetRow],
) -> anyhow::Result<DownloadFigures> {
    let watched = timed_download(bin, args, server_pid, ticks_per_s)?;
    let (last, replica) = last_sync(bin, device_dir)?;
    check_replica(&replica, rows)?;
    Ok(DownloadFigures {
        watched,
        reported_ms: last["duration_ms"].as_u64().unwrap_or(0),
        bytes_down: last["bytes_down"]
            .as_u64()
            .context("last_sync has no bytes_down")?,
        full_reason: last["full_reason"].as_str().unwrap_or("-").to_string(),
    })
}

/// Runs `fieldsync ARGS`, feeding `stdin` if given; its stdout, or an error with its stderr.
pub(crate) fn fieldsync(bin: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
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
pub(crate) struct ServerChild(pub(crate) Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fieldsync server run` on a free loopback port; returns it and its URL once it
/// printed `listening on URL`. Its stderr goes to `log`.
pub(crate) fn start_server(
    bin: &Path,
    db: &str,
    log: &Path,
) -> anyhow::Result<(ServerChild, String)> {
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

/// A loopback port free at the moment (bound, then let go).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Fails loudly unless the replica holds exactly the slice's rows.
pub(crate) fn check_replica(path: &str, rows: &[AssetRow]) -> anyhow::Result<()> {
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

/// A fresh PostgreSQL database for one measurement, dropped at the end unless kept.
pub(crate) struct PgBenchDb {
    pub(crate) base: String,
    pub(crate) name: String,
    pub(crate) url: String,
    kept: bool,
}

impl PgBenchDb {
    pub(crate) fn create(base: &str) -> anyhow::Result<PgBenchDb> {
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
            kept: false,
        })
    }

    /// Leaves the database in place at the end (`--keep`), and says where it is.
    pub(crate) fn keep(&mut self) {
        eprintln!("keeping the PostgreSQL database {}", self.url);
        self.kept = true;
    }
}

impl Drop for PgBenchDb {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Ok(mut admin) = postgres::Client::connect(&self.base, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Fills a PostgreSQL main database's `assets` by COPY, in one transaction.
pub(crate) fn insert_rows_pg(url: &str, rows: &[AssetRow]) -> anyhow::Result<()> {
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

pub(crate) fn measure(
    bin: &Path,
    dir: &Path,
    n_rows: u64,
    pg: Option<&str>,
    reps: usize,
) -> anyhow::Result<Figures> {
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
    pair_and_login(bin, device_dir, &url, BENCH_DEVICE, code)?;

    // A tablet of the crew for each run of download 3, set up now: their logins'
    // argon2 hashes stay out of the server's peak over the downloads.
    let crew: Vec<String> = (1..=reps)
        .map(|run| crew_device(bin, db, &url, dir, &format!("crew{run}")))
        .collect::<anyhow::Result<_>>()?;

    let before_downloads_server_rss_kb = rss_kb(server_pid).context("reading the server's RSS")?;
    reset_peak_rss(server_pid)?;
    eprintln!("download 1");
    let first = checked_download(
        bin,
        &["device", "download", "bench", "--dir", device_dir],
        device_dir,
        server_pid,
        ticks_per_s,
        &rows,
    )?;
    // The floor and the full download in turn, so that each pair meets the same
    // moment of the machine. The full download replaces the replica whole (without
    // `--full` it would be a delta of nothing); its median run is the reference of the
    // delta syncs.
    // Each full download is followed by another tablet's first download of the
    // slice, nothing changed in between, which a big slice's server answers with its
    // kept stream of the slice.
    let (mut floors, mut fulls, mut kepts) = (Vec::new(), Vec::new(), Vec::new());
    for (run, tablet) in (1..=reps).zip(&crew) {
        eprintln!("floor, run {run} of {reps}");
        let path = dir.join("floor.sqlite");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        floors.push(floor(&path, &rows, ticks_per_s).context("timing the floor")?);
        // A row of the slice written again (its values the same, its version new):
        // the server reads the slice rather than send a stream it kept.
        crate::delta::office_update(db, TOUCH_ONE_ROW)?;
        eprintln!("full download, run {run} of {reps}");
        fulls.push(checked_download(
            bin,
            &["device", "download", "bench", "--dir", device_dir, "--full"],
            device_dir,
            server_pid,
            ticks_per_s,
            &rows,
        )?);
        eprintln!("another tablet's first download, nothing changed, run {run} of {reps}");
        kepts.push(checked_download(
            bin,
            &["device", "download", "bench", "--dir", tablet],
            tablet,
            server_pid,
            ticks_per_s,
            &rows,
        )?);
    }
    let (floor, floor_runs_s) = median_run(floors, |f| f.total_s);
    let (full, full_runs_s) = median_run(fulls, |d| d.watched.wall_s);
    let (kept, kept_runs_s) = median_run(kepts, |d| d.watched.wall_s);
    let downloads = vec![first, full, kept];
    let download_server_rss_kb =
        peak_rss_kb(server_pid).context("reading the server's peak RSS")?;
    let delta = measure_delta(bin, db, device_dir, server_pid, ticks_per_s, &rows, reps)?;
    let server_rss_kb = peak_rss_kb(server_pid).context("reading the server's peak RSS")?;
    drop(server);

    Ok(Figures {
        engine,
        n_rows,
        generate_s,
        main_insert_s,
        track_s,
        floor,
        floor_runs_s,
        downloads,
        full_runs_s,
        kept_runs_s,
        delta,
        server_rss_kb,
        before_downloads_server_rss_kb,
        download_server_rss_kb,
        csv_bytes,
    })
}
