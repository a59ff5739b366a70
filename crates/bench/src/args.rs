//! The command line and environment of the bench.

use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use clap::error::ErrorKind;

pub(crate) const USAGE: &str = "\
usage: fieldsync-bench [--dir DIR] [--rows-list N,N,...] [--keep] [--pg URL] [--peers]
                       [--send [N]] [--fleet [C]] [--fleet-rows N] [--fleet-shared]
                       [--reps N] [--skip-download] [--json FILE]

Times a full download of an N-row slice through the real `fieldsync` binary against
a plain SQLite bulk insert of the same rows (the floor), and reports peak RSS of server
and device and bytes on the wire against CSV, as a markdown table on stdout. Then the
office updates 1% of the rows and the device syncs (a delta), then syncs again with
nothing changed, then after 0.1% and 10% more changed: bytes and time of each against
the full download; the 1% sync also against SQLite alone updating the same rows by key
in a copy of the replica (the in-place floor).

  --dir DIR          work folder (default: a fresh folder under /tmp, removed at the end)
  --rows-list LIST   comma-separated slice sizes to run one after the other
                     (default: one size from FIELDSYNC_BENCH_ROWS, else 1000000)
  --keep             keep the databases and device folders of the run (the
                     downloads' PostgreSQL database too, named on stderr)
  --pg URL           a PostgreSQL URL (a user that may create databases), as
                     FIELDSYNC_BENCH_PG (the flag wins)
  --peers            (needs --pg) after each size's download from PostgreSQL, the same
                     slice copied by `ogr2ogr -f GPKG` and `-f SQLite` from the same
                     table, and pulled by PouchDB from pouchdb-server through a
                     design-document filter into a local LevelDB PouchDB (the rows
                     loaded as documents first, not timed): wall clock, bytes on the
                     wire, size on disk, peak RSS beside fieldsync's; the peers come
                     from crates/bench/peers/install.sh
  --send [N]         also N journal entries (default 100000) sent end to end by
                     `device send` on SQLite (and PostgreSQL with --pg): entries/s,
                     the server's integration time, device and server peak RSS; then
                     `device sync` of the same journal (copies of the device folder and
                     the main database) and a send of N updates
  --fleet [C]        also C devices (default 200) syncing at once against one server on
                     SQLite (and two on PostgreSQL with --pg): each a `fieldsync` process,
                     set up first (not timed), 100 local changes each, then every
                     `device sync` at once: failures, p50/p95/p99 latency, wall clock,
                     the servers' peak RSS
  --fleet-rows N     rows of each fleet device's slice (default 10000); each device has
                     a region of its own (the main database holds C × N rows)
  --fleet-shared     every fleet device holds the same N rows instead, so each sync also
                     brings back what all the others changed since (up to N rows)
  --reps N           runs of each timed figure, each reported figure the median run
                     (default 3): the floor and the full download in turn, the sync
                     after 1% changed and the one after it (at most 6 runs of each
                     delta level, other rows each time), the fleet's rounds, the
                     send (each run on a setup of its own; the median by the send's
                     wall clock)
  --skip-download    skip the full download and delta measurement (not with --peers)
  --json FILE        also write every figure (each size and engine's downloads and
                     deltas with their runs, --peers, --send, --fleet) as JSON to FILE

environment:
  FIELDSYNC_BENCH_ROWS  rows of the slice (default 1000000)
  FIELDSYNC_BENCH_PG    a PostgreSQL URL (a user that may create databases): each size
                        is then also downloaded from a fresh PostgreSQL main database
  FIELDSYNC_BIN         the fieldsync binary (default: `fieldsync` beside this program)
  FIELDSYNC_BENCH_PEERS the folder of pouch.js and the peers' node_modules (default:
                        crates/bench/peers of this source tree)";

pub(crate) const ROWS_DEFAULT: u64 = 1_000_000;
pub(crate) const FLEET_ROWS_DEFAULT: u64 = 10_000;
pub(crate) const REPS_DEFAULT: usize = 3;

pub(crate) struct Config {
    pub(crate) bin: PathBuf,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) sizes: Vec<u64>,
    pub(crate) keep: bool,
    /// Also measure downloads from PostgreSQL (`--pg`, `FIELDSYNC_BENCH_PG`).
    pub(crate) pg: Option<String>,
    /// ogr2ogr and PouchDB beside each PostgreSQL download (`--peers`).
    pub(crate) peers: bool,
    /// Journal entries of the send measurement (`--send`), when it runs.
    pub(crate) send: Option<u64>,
    /// Devices of the fleet, when it runs.
    pub(crate) fleet: Option<usize>,
    pub(crate) fleet_rows: u64,
    /// Every fleet device on the same rows (`--fleet-shared`).
    pub(crate) fleet_shared: bool,
    pub(crate) reps: usize,
    pub(crate) skip_download: bool,
    pub(crate) json: Option<PathBuf>,
}

pub(crate) fn parse_count(text: &str) -> anyhow::Result<u64> {
    let n: u64 = text
        .trim()
        .replace('_', "")
        .parse()
        .with_context(|| format!("`{text}` is not a row count"))?;
    ensure!(n > 0, "a row count must be at least 1");
    Ok(n)
}

/// The flags; the help text is USAGE, printed by `main`. A flag given twice keeps its
/// last value.
#[derive(Parser)]
#[command(name = "fieldsync-bench", args_override_self = true)]
pub(crate) struct Cli {
    /// Work folder (default: a fresh folder under /tmp, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// Comma-separated slice sizes, parsed by `parse_count` after clap.
    #[arg(long = "rows-list", value_name = "LIST")]
    pub(crate) rows_list: Option<String>,
    /// Keep the databases and device folders of the run.
    #[arg(long)]
    pub(crate) keep: bool,
    /// A PostgreSQL URL; wins over FIELDSYNC_BENCH_PG.
    #[arg(long, value_name = "URL")]
    pub(crate) pg: Option<String>,
    #[arg(long)]
    pub(crate) peers: bool,
    /// Journal entries to send; the flag alone means 100000.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "100000")]
    pub(crate) send: Option<String>,
    /// Devices of the fleet; the flag alone means 200.
    #[arg(long, value_name = "C", num_args = 0..=1, default_missing_value = "200")]
    pub(crate) fleet: Option<String>,
    #[arg(long = "fleet-rows", value_name = "N")]
    pub(crate) fleet_rows: Option<String>,
    #[arg(long = "fleet-shared")]
    pub(crate) fleet_shared: bool,
    #[arg(long, value_name = "N")]
    pub(crate) reps: Option<String>,
    #[arg(long = "skip-download")]
    pub(crate) skip_download: bool,
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
}

/// The command line and environment; `None` when help was asked for.
pub(crate) fn parse_args() -> anyhow::Result<Option<Config>> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == ErrorKind::DisplayHelp => return Ok(None),
        Err(e) => {
            // clap's first line, without its own `error: ` prefix and usage (main adds
            // ours).
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            bail!("{}", first.strip_prefix("error: ").unwrap_or(first))
        }
    };
    config_from(cli).map(Some)
}

/// The configuration from parsed flags and the environment; fails on flags that do not
/// go together.
pub(crate) fn config_from(cli: Cli) -> anyhow::Result<Config> {
    let Cli {
        dir,
        rows_list,
        keep,
        pg,
        peers,
        send,
        fleet,
        fleet_rows,
        fleet_shared,
        reps,
        skip_download,
        json,
    } = cli;
    let send = match send {
        Some(n) => Some(parse_count(&n).context("--send")?),
        None => None,
    };
    let pg = pg.or_else(|| std::env::var("FIELDSYNC_BENCH_PG").ok());
    ensure!(
        !peers || pg.is_some(),
        "--peers needs --pg (or FIELDSYNC_BENCH_PG): the peers copy the PostgreSQL table"
    );
    ensure!(
        !(peers && skip_download),
        "--peers runs after each size's download: not with --skip-download"
    );
    let fleet = match fleet {
        Some(c) => Some(parse_count(&c).context("--fleet")? as usize),
        None => None,
    };
    let fleet_rows = match fleet_rows {
        Some(n) => parse_count(&n).context("--fleet-rows")?,
        None => FLEET_ROWS_DEFAULT,
    };
    ensure!(
        !fleet_shared || fleet.is_some(),
        "--fleet-shared shapes the fleet: it needs --fleet"
    );
    let reps = match reps {
        Some(n) => parse_count(&n).context("--reps")? as usize,
        None => REPS_DEFAULT,
    };
    ensure!(
        !skip_download || fleet.is_some() || send.is_some(),
        "--skip-download leaves nothing to measure without --fleet or --send"
    );
    let sizes = match rows_list {
        Some(list) => Some(
            list.split(',')
                .map(parse_count)
                .collect::<anyhow::Result<Vec<_>>>()?,
        ),
        None => None,
    };
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
    Ok(Config {
        bin,
        dir,
        sizes,
        keep,
        pg,
        peers,
        send,
        fleet,
        fleet_rows,
        fleet_shared,
        reps,
        skip_download,
        json,
    })
}

/// This invocation as a shell line, with the environment that changes what it does.
pub(crate) fn command_line() -> String {
    let mut parts = Vec::new();
    for var in [
        "FIELDSYNC_BENCH_ROWS",
        "FIELDSYNC_BENCH_PG",
        "FIELDSYNC_BIN",
        "FIELDSYNC_BENCH_PEERS",
    ] {
        if let Ok(v) = std::env::var(var) {
            parts.push(format!("{var}={v}"));
        }
    }
    parts.extend(std::env::args());
    parts.join(" ")
}
