//! fieldsync beside its peers (issue #20, part b, `--peers`): the slice that fieldsync
//! just downloaded from PostgreSQL, copied by GDAL's `ogr2ogr` from the same table into
//! a GeoPackage and into SQLite, and pulled by PouchDB as documents from pouchdb-server
//! through a design-document filter. Each peer's wall clock (start to exit of its
//! process, as fieldsync's device is timed), bytes on the wire (through `proxy.rs`'s
//! relay), the size of what it wrote, its peak RSS and CPU; each result checked (count,
//! sum of ids, length of notes) against the table.
//!
//! The peers are installed by `crates/bench/peers/install.sh`, never by the build or
//! the tests; `check_tools` fails naming that script when one is missing.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use postgres::fallible_iterator::FallibleIterator;
use rusqlite::Connection;

use crate::measure::{Figures, ServerChild, free_port};
use crate::metrics::{Watched, disk_bytes, peak_rss_kb, reset_peak_rss, timed_command};
use crate::proxy::Relay;

/// The script that installs the peers; named in every "missing" error.
pub(crate) const INSTALL_SCRIPT: &str = "crates/bench/peers/install.sh";
/// The target of the issue: fieldsync's full download at least this many times faster
/// than ogr2ogr writing a GeoPackage from the same table.
pub(crate) const GPKG_SPEEDUP_MIN: f64 = 2.0;
/// The slice's filter, as the bench's task has it (`measure::TASK_FILE`).
pub(crate) const REGION: &str = "north";
const POUCH_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the peers are, and their versions for the report.
pub(crate) struct Tools {
    pub(crate) dir: PathBuf,
    pub(crate) ogr2ogr: String,
    pub(crate) node: String,
    pub(crate) pouchdb: String,
    pub(crate) pouchdb_server: String,
}

/// The peers' folder: FIELDSYNC_BENCH_PEERS, else `peers` in this crate's source.
pub(crate) fn peers_dir() -> PathBuf {
    match std::env::var_os("FIELDSYNC_BENCH_PEERS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("peers"),
    }
}

fn version_of(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The `version` of an installed npm package, from its package.json.
pub(crate) fn npm_version(package_json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(package_json).ok()?;
    v["version"].as_str().map(str::to_string)
}

/// Every peer tool, or an error naming what is missing and the install script.
pub(crate) fn check_tools(dir: &Path) -> anyhow::Result<Tools> {
    let mut missing = Vec::new();
    let ogr2ogr = version_of("ogr2ogr", "--version");
    if ogr2ogr.is_none() {
        missing.push("ogr2ogr (gdal-bin)".to_string());
    }
    let node = version_of("node", "--version");
    if node.is_none() {
        missing.push("node".to_string());
    }
    let package = |name: &str| {
        std::fs::read_to_string(dir.join("node_modules").join(name).join("package.json"))
            .ok()
            .and_then(|t| npm_version(&t))
    };
    let pouchdb = package("pouchdb");
    let pouchdb_server = package("pouchdb-server");
    for (name, v) in [("pouchdb", &pouchdb), ("pouchdb-server", &pouchdb_server)] {
        if v.is_none() {
            missing.push(format!("{name} in {}/node_modules", dir.display()));
        }
    }
    if !dir.join("pouch.js").is_file() {
        missing.push(format!("{}/pouch.js", dir.display()));
    }
    match (ogr2ogr, node, pouchdb, pouchdb_server) {
        (Some(ogr2ogr), Some(node), Some(pouchdb), Some(pouchdb_server)) if missing.is_empty() => {
            Ok(Tools {
                dir: dir.to_path_buf(),
                ogr2ogr,
                node,
                pouchdb,
                pouchdb_server,
            })
        }
        _ => bail!(
            "--peers needs its peer tools; missing: {}. Install them with {INSTALL_SCRIPT} (FIELDSYNC_BENCH_PEERS names another folder holding node_modules and pouch.js)",
            missing.join(", ")
        ),
    }
}

/// A PostgreSQL URL's server address, and the same URL pointed at `to` instead.
pub(crate) fn pg_via(url: &str, to: SocketAddr) -> anyhow::Result<(SocketAddr, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("`{url}` is not a postgres:// URL"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    ensure!(
        !hostport.is_empty() && !hostport.contains(','),
        "`{url}` names no single TCP host: --peers relays PostgreSQL over TCP"
    );
    let (host, port) = match hostport.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .with_context(|| format!("the host of `{url}`"))?;
            (h, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .with_context(|| format!("the port of `{url}`"))?,
        None => 5432,
    };
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))?;
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Ok((addr, format!("{scheme}://{user}{to}{tail}")))
}

/// Count, sum of ids and total length of notes of a slice, to check a copy of it.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) struct SliceSum {
    pub(crate) count: i64,
    pub(crate) id_sum: i64,
    pub(crate) notes_len: i64,
}

const SUM_SQL: &str =
    "SELECT count(*), coalesce(sum(id), 0), coalesce(sum(length(notes)), 0) FROM assets";

fn pg_sum(client: &mut postgres::Client) -> anyhow::Result<SliceSum> {
    let row = client.query_one(
        &format!("SELECT count(*)::bigint, coalesce(sum(id), 0)::bigint, coalesce(sum(length(notes)), 0)::bigint FROM assets WHERE region = '{REGION}'"),
        &[],
    )?;
    Ok(SliceSum {
        count: row.get(0),
        id_sum: row.get(1),
        notes_len: row.get(2),
    })
}

fn sqlite_sum(path: &Path) -> anyhow::Result<SliceSum> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.query_row(SUM_SQL, [], |r| {
        Ok(SliceSum {
            count: r.get(0)?,
            id_sum: r.get(1)?,
            notes_len: r.get(2)?,
        })
    })
    .with_context(|| format!("reading assets of {}", path.display()))
}

/// One peer's run.
pub(crate) struct PeerRun {
    pub(crate) name: String,
    pub(crate) watched: Watched,
    /// Through the relay: server to client, client to server.
    pub(crate) bytes_down: u64,
    pub(crate) bytes_up: u64,
    /// What it left on disk (the file, or the database folder).
    pub(crate) output_bytes: u64,
    /// The tool's own figure of its work, where it reports one (PouchDB's replication
    /// without the process start), seconds.
    pub(crate) own_s: Option<f64>,
}

/// fieldsync's side, from the PostgreSQL run of the same size.
pub(crate) struct FieldsyncRun {
    pub(crate) name: &'static str,
    pub(crate) wall_s: f64,
    pub(crate) own_s: f64,
    pub(crate) bytes_down: u64,
    pub(crate) device_rss_kb: u64,
    pub(crate) device_cpu_s: f64,
    pub(crate) server_cpu_s: f64,
    pub(crate) other_cpu_s: f64,
}

pub(crate) struct PeerFigures {
    pub(crate) n_rows: u64,
    pub(crate) fieldsync: Vec<FieldsyncRun>,
    /// The device folder after the downloads and delta syncs.
    pub(crate) fieldsync_folder_bytes: u64,
    pub(crate) gpkg: PeerRun,
    pub(crate) sqlite: PeerRun,
    pub(crate) pouch: PeerRun,
    /// Loading the documents into pouchdb-server (not timed for the comparison).
    pub(crate) pouch_load_s: f64,
    pub(crate) pouch_server_rss_kb: u64,
    pub(crate) tools: String,
}

/// `peer / fieldsync`: how many times faster fieldsync was.
pub(crate) fn speedup(peer_s: f64, fieldsync_s: f64) -> f64 {
    if fieldsync_s > 0.0 {
        peer_s / fieldsync_s
    } else {
        0.0
    }
}

/// Runs the peers on the slice of `pg_url`, which fieldsync's run `fs` just downloaded.
pub(crate) fn measure_peers(
    tools: &Tools,
    dir: &Path,
    pg_url: &str,
    fs: &Figures,
    fieldsync_folder_bytes: u64,
    ticks_per_s: f64,
) -> anyhow::Result<PeerFigures> {
    eprintln!("== peers, {} rows from PostgreSQL", fs.n_rows);
    let mut pg = postgres::Client::connect(pg_url, postgres::NoTls)?;
    let want = pg_sum(&mut pg)?;
    ensure!(
        want.count as u64 == fs.n_rows,
        "the PostgreSQL table holds {} rows of the slice, not {}",
        want.count,
        fs.n_rows
    );
    let (pg_addr, _) = pg_via(pg_url, "127.0.0.1:1".parse()?)?;
    let relay = Relay::start(pg_addr)?;
    let (_, relayed_url) = pg_via(pg_url, relay.addr)?;
    // GDAL takes a URL only as `postgresql://` (it appends its application name to
    // anything else, as to a keyword string).
    let relayed_url = match relayed_url.strip_prefix("postgres://") {
        Some(rest) => format!("postgresql://{rest}"),
        None => relayed_url,
    };
    let ogr = |format: &str, file: &str| -> anyhow::Result<PeerRun> {
        let out = dir.join(file);
        let mut cmd = Command::new("ogr2ogr");
        cmd.args(["-f", format])
            .arg(&out)
            .arg(format!("PG:{relayed_url}"))
            .args(["assets", "-where", &format!("region = '{REGION}'")]);
        eprintln!("ogr2ogr -f {format}");
        let before = relay.counts.read();
        let (watched, _) = timed_command(cmd, None, ticks_per_s)
            .with_context(|| format!("ogr2ogr -f {format}"))?;
        let after = relay.counts.read();
        let got = sqlite_sum(&out)?;
        ensure!(
            got == want,
            "WRONG COPY: ogr2ogr -f {format} wrote {got:?}, the table holds {want:?}"
        );
        Ok(PeerRun {
            name: format!(
                "`ogr2ogr -f {format}` (table `assets`, `-where \"region = '{REGION}'\"`)"
            ),
            watched,
            bytes_down: after.0 - before.0,
            bytes_up: after.1 - before.1,
            output_bytes: disk_bytes(&out),
            own_s: None,
        })
    };
    let gpkg = ogr("GPKG", "peer.gpkg")?;
    let sqlite = ogr("SQLite", "peer.sqlite")?;
    drop(relay);

    let (pouch, pouch_load_s, pouch_server_rss_kb) =
        measure_pouch(tools, dir, &mut pg, want, ticks_per_s)?;
    let fieldsync = fs
        .downloads
        .iter()
        .zip([
            "fieldsync `device download` (download 1, no replica yet)",
            "fieldsync `device download --full` (download 2)",
        ])
        .map(|(d, name)| FieldsyncRun {
            name,
            wall_s: d.watched.wall_s,
            own_s: d.reported_ms as f64 / 1000.0,
            bytes_down: d.bytes_down,
            device_rss_kb: d.watched.device_rss_kb,
            device_cpu_s: d.watched.device_cpu_s,
            server_cpu_s: d.watched.server_cpu_s,
            other_cpu_s: d.watched.other_cpu_s,
        })
        .collect();
    Ok(PeerFigures {
        n_rows: fs.n_rows,
        fieldsync,
        fieldsync_folder_bytes,
        gpkg,
        sqlite,
        pouch,
        pouch_load_s,
        pouch_server_rss_kb,
        tools: format!(
            "{}; node {}, pouchdb {}, pouchdb-server {}",
            tools.ogr2ogr, tools.node, tools.pouchdb, tools.pouchdb_server
        ),
    })
}

fn pouch_js(tools: &Tools) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(tools.dir.join("pouch.js"))
        .env("NODE_PATH", tools.dir.join("node_modules"));
    cmd
}

/// pouchdb-server on LevelDB in `dir`, the slice's rows loaded as documents (not timed),
/// then the timed pull into a new local PouchDB (LevelDB) through a relay.
fn measure_pouch(
    tools: &Tools,
    dir: &Path,
    pg: &mut postgres::Client,
    want: SliceSum,
    ticks_per_s: f64,
) -> anyhow::Result<(PeerRun, f64, u64)> {
    let server_dir = dir.join("pouchdb-server");
    std::fs::create_dir_all(&server_dir)?;
    let port = free_port()?;
    let log = std::fs::File::create(server_dir.join("server.log"))?;
    let server = ServerChild(
        Command::new(tools.dir.join("node_modules/.bin/pouchdb-server"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--dir"])
            .arg(&server_dir)
            .arg("--no-stdout-logs")
            .current_dir(&server_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting pouchdb-server")?,
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        ensure!(
            started.elapsed() < POUCH_START_TIMEOUT,
            "pouchdb-server did not listen within {} s; see {}",
            POUCH_START_TIMEOUT.as_secs(),
            server_dir.join("server.log").display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    eprintln!("loading the rows into pouchdb-server (not timed)");
    let started = Instant::now();
    let url = format!("http://{addr}/bench");
    let mut load = pouch_js(tools)
        .args(["load", &url, REGION])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting node")?;
    {
        let mut stdin = std::io::BufWriter::new(load.stdin.take().expect("stdin is piped"));
        let mut rows = pg.query_raw(
            &format!("SELECT id, name, category, status, region, x, y, installed, notes FROM assets WHERE region = '{REGION}' ORDER BY id"),
            std::iter::empty::<i32>(),
        )?;
        while let Some(r) = rows.next()? {
            let doc = serde_json::json!({
                "id": r.get::<_, i64>(0),
                "name": r.get::<_, String>(1),
                "category": r.get::<_, String>(2),
                "status": r.get::<_, String>(3),
                "region": r.get::<_, String>(4),
                "x": r.get::<_, Option<f64>>(5),
                "y": r.get::<_, Option<f64>>(6),
                "installed": r.get::<_, Option<String>>(7),
                "notes": r.get::<_, Option<String>>(8),
            });
            serde_json::to_writer(&mut stdin, &doc)?;
            stdin.write_all(b"\n")?;
        }
        stdin.flush()?;
    }
    let out = load.wait_with_output()?;
    ensure!(
        out.status.success(),
        "loading pouchdb-server failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let load_s = started.elapsed().as_secs_f64();

    let relay = Relay::start(addr)?;
    let local = dir.join("pouch-local");
    let mut pull = pouch_js(tools);
    pull.arg("pull")
        .arg(format!("http://{}/bench", relay.addr))
        .arg(&local)
        .arg(REGION);
    eprintln!("PouchDB pull");
    let server_pid = server.0.id();
    reset_peak_rss(server_pid)?;
    let (watched, out) =
        timed_command(pull, Some(server_pid), ticks_per_s).context("the PouchDB pull")?;
    let (down, up) = relay.counts.read();
    let server_rss_kb = peak_rss_kb(server_pid).context("reading pouchdb-server's peak RSS")?;
    let report: serde_json::Value =
        serde_json::from_str(out.trim()).context("parsing pouch.js pull's report")?;
    ensure!(
        report["docs_written"].as_i64() == Some(want.count),
        "WRONG COPY: PouchDB wrote {} documents, the slice has {}",
        report["docs_written"],
        want.count
    );
    drop(relay);
    drop(server);
    let mut check = pouch_js(tools);
    check.arg("check").arg(&local);
    let out = check.output().context("node pouch.js check")?;
    ensure!(
        out.status.success(),
        "pouch.js check failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let got = SliceSum {
        count: c["count"].as_i64().unwrap_or(-1),
        id_sum: c["id_sum"].as_i64().unwrap_or(-1),
        notes_len: c["notes_len"].as_i64().unwrap_or(-1),
    };
    ensure!(
        got == want,
        "WRONG COPY: the local PouchDB holds {got:?}, the table {want:?}"
    );
    let run = PeerRun {
        name: format!(
            "PouchDB `replicate` (filter `_design/bench` `slice`, batch_size {}; local LevelDB)",
            report["batch_size"]
        ),
        watched,
        bytes_down: down,
        bytes_up: up,
        output_bytes: disk_bytes(&local),
        own_s: report["ms"].as_f64().map(|ms| ms / 1000.0),
    };
    Ok((run, load_s, server_rss_kb))
}
