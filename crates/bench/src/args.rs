//! The command line and environment of the bench.

use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use clap::error::ErrorKind;

pub(crate) const USAGE: &str = "\
usage: fieldsync-bench [--dir DIR] [--rows-list N,N,...] [--keep]

Times a full download of an N-row slice through the real `fieldsync` binary against
a plain SQLite bulk insert of the same rows (the floor), and reports peak RSS of server
and device and bytes on the wire against CSV, as a markdown table on stdout. Then the
office updates 1% of the rows and the device syncs (a delta), then syncs again with
nothing changed: bytes and time of both against the full download.

  --dir DIR          work folder (default: a fresh folder under /tmp, removed at the end)
  --rows-list LIST   comma-separated slice sizes to run one after the other
                     (default: one size from FIELDSYNC_BENCH_ROWS, else 1000000)
  --keep             keep the databases and device folders of the run

environment:
  FIELDSYNC_BENCH_ROWS  rows of the slice (default 1000000)
  FIELDSYNC_BENCH_PG    a PostgreSQL URL (a user that may create databases): each size
                        is then also downloaded from a fresh PostgreSQL main database
  FIELDSYNC_BIN         the fieldsync binary (default: `fieldsync` beside this program)";

pub(crate) const ROWS_DEFAULT: u64 = 1_000_000;

pub(crate) struct Config {
    pub(crate) bin: PathBuf,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) sizes: Vec<u64>,
    pub(crate) keep: bool,
    /// Also measure downloads from PostgreSQL (`FIELDSYNC_BENCH_PG`).
    pub(crate) pg: Option<String>,
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
    let Cli {
        dir,
        rows_list,
        keep,
    } = cli;
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
    Ok(Some(Config {
        bin,
        dir,
        sizes,
        keep,
        pg: std::env::var("FIELDSYNC_BENCH_PG").ok(),
    }))
}

/// This invocation as a shell line, with the environment that changes what it does.
pub(crate) fn command_line() -> String {
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
