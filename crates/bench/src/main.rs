//! The benchmark harness: a full download of an N-row slice through the real `fieldsync`
//! binary, against the floor (a plain SQLite bulk insert of the same rows), with peak RSS
//! and bytes on the wire, printed as a markdown table (DESIGN.md, "Performance targets");
//! then the delta syncs after the office changed 1% of the rows, and after nothing
//! changed, against that full download (`delta.rs`). With `--fleet C`, C devices
//! syncing at once against one server on SQLite, or two on one PostgreSQL (`fleet.rs`).
//! With `--peers`, ogr2ogr and PouchDB copying the same slice from PostgreSQL
//! (`peers.rs`); with `--send N`, N journal entries sent end to end and synchronized
//! (`send.rs`).
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
mod peers;
mod proxy;
mod report;
mod send;
#[cfg(test)]
mod tests;

use std::process::ExitCode;

use anyhow::{Context, ensure};

use crate::args::{Config, USAGE, command_line, parse_args};
use crate::measure::{PgBenchDb, measure};
use crate::metrics::{load_average, machine};
use crate::report::{
    download_json, fleet_json, mb, peers_json, print_delta, print_figures, print_fleet,
    print_peers, print_send, print_summary, send_json, thousands,
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
    // Before anything long: a missing peer fails now, naming the install script.
    let tools = match config.peers {
        true => Some(peers::check_tools(&peers::peers_dir())?),
        false => None,
    };
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
    let postgres = match &config.pg {
        Some(url) => Some(metrics::pg_settings(url)?),
        None => None,
    };
    if let Some(settings) = &postgres {
        println!("- {settings}");
    }
    println!("- work folder: `{}`", root.display());
    println!("- load average at start: {}", load_average());

    let mut all = Vec::new();
    let (mut peers_out, mut send_out, mut downloads_out) = (Vec::new(), Vec::new(), Vec::new());
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
        let figures = measure(&config.bin, &dir, n_rows, None, config.reps)?;
        print_figures(&figures);
        print_delta(&figures);
        downloads_out.push(download_json(&figures));
        println!("\nLoad average after this size: {}.", load_average());
        if let Some(pg) = &config.pg {
            let pg_dir = dir.join("postgres");
            std::fs::create_dir_all(&pg_dir)?;
            let mut db = PgBenchDb::create(pg)?;
            if config.keep {
                db.keep();
            }
            let on_pg = measure(&config.bin, &pg_dir, n_rows, Some(&db.url), config.reps)?;
            print_figures(&on_pg);
            print_delta(&on_pg);
            downloads_out.push(download_json(&on_pg));
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
            if let Some(tools) = &tools {
                let folder = metrics::disk_bytes(&pg_dir.join("device"));
                let p = peers::measure_peers(
                    tools,
                    &pg_dir,
                    &db.url,
                    &on_pg,
                    folder,
                    metrics::ticks_per_s(),
                )?;
                print_peers(&p);
                println!("\nLoad average after the peers: {}.", load_average());
                peers_out.push(peers_json(&p));
            }
        }
        if !config.keep && config.dir.is_none() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        all.push(figures);
    }
    if all.len() > 1 {
        print_summary(&all);
    }
    if let Some(entries) = config.send {
        send_out = run_send(config, &root, entries)?;
    }
    let fleet_out = match config.fleet {
        Some(devices) => run_fleet(config, &root, devices)?,
        None => Vec::new(),
    };
    if let Some(path) = &config.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "command": command_line(),
            "machine": machine(),
            "postgres": postgres,
            "load_average_at_end": load_average(),
            "downloads": downloads_out,
            "peers": peers_out,
            "send": send_out,
            "fleet": fleet_out,
        }))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if remove_root {
        std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    Ok(())
}

/// A fresh folder of the run, refused when an earlier run left it.
fn fresh_dir(root: &std::path::Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = root.join(name);
    ensure!(
        !dir.exists(),
        "{} exists from an earlier run: remove it or pick another --dir",
        dir.display()
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs `part` in a fresh folder named `name` on SQLite, then (with a PostgreSQL URL)
/// in `name-postgres` on PostgreSQL, each followed by the load average; their JSON.
/// The folders go at the end unless kept.
fn per_engine(
    config: &Config,
    root: &std::path::Path,
    name: &str,
    mut part: impl FnMut(&std::path::Path, bool) -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let engines: &[bool] = if config.pg.is_some() {
        &[false, true]
    } else {
        &[false]
    };
    let mut json = Vec::new();
    for &on_pg in engines {
        let folder = if on_pg {
            format!("{name}-postgres")
        } else {
            name.to_string()
        };
        let dir = fresh_dir(root, &folder)?;
        json.push(part(&dir, on_pg)?);
        println!("\nLoad average after the {name}: {}.", load_average());
        if !config.keep && config.dir.is_none() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(json)
}

/// The send on SQLite, then (with a PostgreSQL URL) on PostgreSQL; their JSON.
fn run_send(
    config: &Config,
    root: &std::path::Path,
    entries: u64,
) -> anyhow::Result<Vec<serde_json::Value>> {
    per_engine(config, root, "send", |dir, on_pg| {
        let pg = config.pg.as_deref().filter(|_| on_pg);
        // Each run on a setup of its own; the median run's figures are reported.
        let ticks = metrics::ticks_per_s();
        let mut runs = Vec::new();
        for i in 0..config.reps.max(1) {
            let run_dir = dir.join(format!("run-{}", i + 1));
            runs.push(send::measure_send(
                &config.bin,
                &run_dir,
                entries,
                pg,
                ticks,
            )?);
        }
        let (mut figures, runs_s) = metrics::median_run(runs, |f| f.send.watched.wall_s);
        figures.runs_s = runs_s;
        print_send(&figures);
        Ok(send_json(&figures))
    })
}

/// The fleet on SQLite, then (with a PostgreSQL URL) on PostgreSQL with two servers;
/// their JSON.
fn run_fleet(
    config: &Config,
    root: &std::path::Path,
    devices: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    per_engine(config, root, "fleet", |dir, on_pg| {
        let db = match (on_pg, &config.pg) {
            (true, Some(pg)) => Some(PgBenchDb::create(pg)?),
            _ => None,
        };
        let figures = fleet::measure_fleet(
            &fleet::FleetPlan {
                bin: &config.bin,
                dir,
                devices,
                rows: config.fleet_rows,
                slices: if config.fleet_shared {
                    fleet::Slices::Shared
                } else {
                    fleet::Slices::Own
                },
                reps: config.reps,
                pg: db.as_ref().map(|d| d.url.as_str()),
                revoked: 0,
            },
            metrics::ticks_per_s(),
        )?;
        print_fleet(&figures);
        Ok(fleet_json(&figures))
    })
}
