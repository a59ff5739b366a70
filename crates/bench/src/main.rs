//! The benchmark harness: a full download of an N-row slice through the real `fieldsync`
//! binary, against the floor (a plain SQLite bulk insert of the same rows), with peak RSS
//! and bytes on the wire, printed as a markdown table (DESIGN.md, "Performance targets");
//! then the delta syncs after the office changed 1% of the rows, and after nothing
//! changed, against that full download (`delta.rs`). With `--fleet C`, C devices
//! syncing at once against one server on SQLite, or two on one PostgreSQL (`fleet.rs`).
//!
//! Everything of one size is measured in one run, so the ratios compare like with like
//! on the same machine at the same moment. Missed targets are reported, not failed on;
//! a wrong replica fails the run.

mod args;
mod delta;
mod fleet;
mod floor;
mod measure;
mod metrics;
mod report;
#[cfg(test)]
mod tests;

use std::process::ExitCode;

use anyhow::{Context, ensure};

use crate::args::{Config, USAGE, command_line, parse_args};
use crate::measure::{PgBenchDb, measure};
use crate::metrics::{load_average, machine};
use crate::report::{
    fleet_json, mb, print_delta, print_figures, print_fleet, print_summary, thousands,
};

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
    let sizes: &[u64] = if config.skip_download {
        &[]
    } else {
        &config.sizes
    };
    for &n_rows in sizes {
        let dir = root.join(format!("rows-{n_rows}"));
        ensure!(
            !dir.exists(),
            "{} exists from an earlier run: remove it or pick another --dir",
            dir.display()
        );
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let figures = measure(&config.bin, &dir, n_rows, None)?;
        print_figures(&figures);
        print_delta(&figures);
        println!("\nLoad average after this size: {}.", load_average());
        if let Some(pg) = &config.pg {
            let pg_dir = dir.join("postgres");
            std::fs::create_dir_all(&pg_dir)?;
            let db = PgBenchDb::create(pg)?;
            let on_pg = measure(&config.bin, &pg_dir, n_rows, Some(&db.url))?;
            print_figures(&on_pg);
            print_delta(&on_pg);
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
    if let Some(devices) = config.fleet {
        run_fleet(config, &root, devices)?;
    }
    if remove_root {
        std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    Ok(())
}

/// The fleet on SQLite, then (with a PostgreSQL URL) on PostgreSQL with two servers.
fn run_fleet(config: &Config, root: &std::path::Path, devices: usize) -> anyhow::Result<()> {
    let ticks_per_s = metrics::ticks_per_s();
    let mut json = Vec::new();
    let engines: &[bool] = if config.pg.is_some() {
        &[false, true]
    } else {
        &[false]
    };
    for &on_pg in engines {
        let dir = root.join(if on_pg { "fleet-postgres" } else { "fleet" });
        ensure!(
            !dir.exists(),
            "{} exists from an earlier run: remove it or pick another --dir",
            dir.display()
        );
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let db = match (on_pg, &config.pg) {
            (true, Some(pg)) => Some(PgBenchDb::create(pg)?),
            _ => None,
        };
        let figures = fleet::measure_fleet(
            &fleet::FleetPlan {
                bin: &config.bin,
                dir: &dir,
                devices,
                rows: config.fleet_rows,
                reps: config.reps,
                pg: db.as_ref().map(|d| d.url.as_str()),
                revoked: 0,
            },
            ticks_per_s,
        )?;
        print_fleet(&figures);
        println!("\nLoad average after the fleet: {}.", load_average());
        json.push(fleet_json(&figures));
        if !config.keep && config.dir.is_none() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    if let Some(path) = &config.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "command": command_line(),
            "machine": machine(),
            "fleet": json,
        }))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
