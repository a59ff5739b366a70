//! The markdown report on stdout: one table per size and engine with the delta syncs after
//! it, and a summary across sizes.

use crate::delta::{
    DELTA_BYTES_RATIO_MAX, DELTA_TIME_RATIO_MAX, IDLE_BYTES_MAX, ONE_PERCENT_REMAINDERS,
    delta_verdicts, level_update,
};
use crate::measure::Figures;

/// The targets of DESIGN.md.
pub(crate) const DOWNLOAD_FLOOR_RATIO_MAX: f64 = 1.5;
pub(crate) const RSS_MB_MAX: f64 = 150.0;
/// The device's own, tighter target (issue #20): at every size.
pub(crate) const DEVICE_RSS_MB_MAX: f64 = 48.0;
/// The server's, flat whatever the slice's size (issue #20).
pub(crate) const SERVER_RSS_MB_MAX: f64 = 32.0;
pub(crate) const WIRE_CSV_RATIO_MAX: f64 = 0.5;

/// The tighter floor ratio of issue #20 for a slice of `n_rows`: 1.2× from 1,000,000
/// rows, 1.4× from 100,000, none below.
pub(crate) fn tight_floor_ratio_max(n_rows: u64) -> Option<f64> {
    match n_rows {
        1_000_000.. => Some(1.2),
        100_000.. => Some(1.4),
        _ => None,
    }
}

/// Seconds of every run, in run order: `1.234, 1.301, 1.198 s`.
pub(crate) fn runs_text(walls_s: &[f64]) -> String {
    let each: Vec<String> = walls_s.iter().map(|s| format!("{s:.3}")).collect();
    format!("{} s", each.join(", "))
}

/// MB of 1,000,000 bytes, from the kB (KiB) of /proc.
pub(crate) fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**MISSED**" }
}

/// 1234567 as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
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

pub(crate) fn print_figures(f: &Figures) {
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
        "download 2 (`--full`, replaces the replica, a row of the slice written again before it: the slice read; the median run)",
        "download 3 (another tablet's first download right after download 2, nothing changed: a slice of 20,000 rows or more sent from the server's kept stream; the median run)",
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
    if let Some(max) = tight_floor_ratio_max(f.n_rows) {
        let ratio = f.downloads[1].watched.wall_s / f.floor.total_s;
        println!(
            "| download 2 against the floor, issue #20's target | {ratio:.2}× | ≤ {max}× | {} |",
            verdict(ratio <= max)
        );
        let ratio = f.downloads[2].watched.wall_s / f.floor.total_s;
        println!(
            "| download 3 (the kept stream) against the floor | {ratio:.2}× | ≤ {max}× | {} |",
            verdict(ratio <= max)
        );
    }
    println!(
        "| runs, in turn: floor; download 2; download 3 | {}; {}; {} | — | medians above |",
        runs_text(&f.floor_runs_s),
        runs_text(&f.full_runs_s),
        runs_text(&f.kept_runs_s)
    );
    let server_mb = mb(f.server_rss_kb);
    println!(
        "| server peak RSS (VmHWM, whole run: the login's argon2 hash takes 19 MiB) | {server_mb:.1} MB | ≤ {RSS_MB_MAX} MB | {} |",
        verdict(server_mb <= RSS_MB_MAX)
    );
    let downloads_mb = mb(f.download_server_rss_kb);
    println!(
        "| server peak RSS over the downloads (VmHWM reset before them; {:.1} MB before them, after the login) | {downloads_mb:.1} MB | ≤ {SERVER_RSS_MB_MAX} MB | {} |",
        mb(f.before_downloads_server_rss_kb),
        verdict(downloads_mb <= SERVER_RSS_MB_MAX)
    );
    for (i, d) in f.downloads.iter().enumerate() {
        let device_mb = mb(d.watched.device_rss_kb);
        println!(
            "| device peak RSS, download {} (VmHWM) | {device_mb:.1} MB | ≤ {DEVICE_RSS_MB_MAX} MB | {} |",
            i + 1,
            verdict(device_mb <= DEVICE_RSS_MB_MAX)
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

pub(crate) fn print_summary(all: &[Figures]) {
    println!("\n## Per size\n");
    println!(
        "| rows | floor | download 1 | download 2 | download 3 (kept) | download/floor (1 / 2 / 3) | server RSS: run / downloads (before them) | device RSS (1 / 2) | wire/CSV | other CPU on the machine (floor / 1 / 2) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let d1 = &f.downloads[0];
        let d2 = &f.downloads[1];
        let d3 = &f.downloads[2];
        println!(
            "| {} | {:.3} s | {:.3} s | {:.3} s | {:.3} s | {:.2}× / {:.2}× / {:.2}× | {:.1} MB / {:.1} MB ({:.1} MB) | {:.1} MB / {:.1} MB | {:.3}× | {:.2} s / {:.2} s / {:.2} s |",
            thousands(f.n_rows),
            f.floor.total_s,
            d1.watched.wall_s,
            d2.watched.wall_s,
            d3.watched.wall_s,
            d1.watched.wall_s / f.floor.total_s,
            d2.watched.wall_s / f.floor.total_s,
            d3.watched.wall_s / f.floor.total_s,
            mb(f.server_rss_kb),
            mb(f.download_server_rss_kb),
            mb(f.before_downloads_server_rss_kb),
            mb(d1.watched.device_rss_kb),
            mb(d2.watched.device_rss_kb),
            d1.bytes_down as f64 / f.csv_bytes as f64,
            f.floor.other_cpu_s,
            d1.watched.other_cpu_s,
            d2.watched.other_cpu_s
        );
    }
}

/// A watched command's peak RSS, or why it has none: a command that ended within two
/// polls of `/proc` may have been seen only before its program started.
pub(crate) fn sampled_rss(w: &crate::metrics::Watched) -> String {
    let poll = crate::metrics::RSS_POLL.as_secs_f64();
    if w.wall_s < 2.0 * poll {
        format!(
            "not sampled (it ran {:.0} ms; /proc is read every {:.0} ms)",
            w.wall_s * 1000.0,
            poll * 1000.0
        )
    } else {
        format!("{:.1} MB", mb(w.device_rss_kb))
    }
}

/// A share as `0.0123 (1.23%)`.
fn percent(ratio: f64) -> String {
    format!("{ratio:.4} ({:.2}%)", ratio * 100.0)
}

/// The delta syncs against the full download (`--full`, download 2) of the same run.
pub(crate) fn print_delta(f: &Figures) {
    let full = &f.downloads[1];
    let d = &f.delta;
    let v = delta_verdicts(
        full.bytes_down,
        full.watched.wall_s,
        d.delta.median.bytes_down,
        d.delta.median.watched.wall_s,
        d.idle.median.bytes_down,
    );
    println!(
        "\n### Delta sync after 1% changed, {} rows, {} main database\n",
        thousands(f.n_rows),
        f.engine
    );
    println!(
        "The office: `{}`, {} rows in {:.3} s; then `device sync` twice; {} runs of that (other rows each time); then 0.1% and 10% more, each followed by a sync, as many runs. Each figure is the median run.\n",
        level_update(100, ONE_PERCENT_REMAINDERS[0]),
        thousands(d.changed_rows),
        d.office_update_s,
        d.delta.walls_s.len()
    );
    println!("| measure | value | target | ratio/verdict |");
    println!("|---|---|---|---|");
    println!(
        "| full download (download 2, `--full`): wall clock; bytes | {:.3} s; {} B | reference | 100% |",
        full.watched.wall_s,
        thousands(full.bytes_down)
    );
    println!(
        "| sync after 1% changed: bytes (`last_sync.bytes_down`) | {} B | ≤ {}% of full = {} B | {}: {} |",
        thousands(d.delta.median.bytes_down),
        DELTA_BYTES_RATIO_MAX * 100.0,
        thousands((full.bytes_down as f64 * DELTA_BYTES_RATIO_MAX) as u64),
        percent(v.bytes.ratio),
        verdict(v.bytes.met)
    );
    println!(
        "| sync after 1% changed: wall clock | {:.3} s (device's own figure {:.3} s) | ≤ {}% of full = {:.3} s | {}: {} |",
        d.delta.median.watched.wall_s,
        d.delta.median.reported_ms as f64 / 1000.0,
        DELTA_TIME_RATIO_MAX * 100.0,
        full.watched.wall_s * DELTA_TIME_RATIO_MAX,
        percent(v.time.ratio),
        verdict(v.time.met)
    );
    println!(
        "| sync with nothing changed: bytes | {} B | < {} B | {} |",
        thousands(d.idle.median.bytes_down),
        thousands(IDLE_BYTES_MAX),
        verdict(v.idle_bytes_met)
    );
    println!(
        "| sync with nothing changed: wall clock | {:.3} s (device's own figure {:.3} s) | — | {} of full |",
        d.idle.median.watched.wall_s,
        d.idle.median.reported_ms as f64 / 1000.0,
        percent(d.idle.median.watched.wall_s / full.watched.wall_s)
    );
    println!(
        "| rows down (`last_sync.rows_down`): after 1% changed / nothing changed | {} / {} | — | informational |",
        thousands(d.delta.median.rows_down),
        thousands(d.idle.median.rows_down)
    );
    println!(
        "| runs: sync after 1% changed; with nothing changed | {}; {} | — | medians above |",
        runs_text(&d.delta.walls_s),
        runs_text(&d.idle.walls_s)
    );
    let floor = &d.in_place;
    println!(
        "| in-place floor: the same {} rows updated by key by SQLite alone in a copy of the replica (one transaction, prepared statement, WAL, synchronous=NORMAL, no triggers), to the end of its close (the checkpoint into the file and its fsyncs) | {:.3} s (updates and commit into the WAL {:.3} s; runs: {}) | — | {} of the time of full; the sync after 1% changed {:.2}× this |",
        thousands(floor.rows),
        floor.total_s,
        floor.commit_s,
        runs_text(&floor.walls_s),
        percent(floor.total_s / full.watched.wall_s),
        d.delta.median.watched.wall_s / floor.total_s
    );
    for (label, changed, runs) in &d.more {
        let s = &runs.median;
        println!(
            "| then {label} more changed ({} rows a run): bytes; wall clock (runs: {}); rows down | {} B; {:.3} s; {} | — | {} of the bytes, {} of the time of full |",
            thousands(*changed),
            runs_text(&runs.walls_s),
            thousands(s.bytes_down),
            s.watched.wall_s,
            thousands(s.rows_down),
            percent(s.bytes_down as f64 / full.bytes_down as f64),
            percent(s.watched.wall_s / full.watched.wall_s)
        );
    }
    for (name, s) in [
        ("after 1% changed", &d.delta.median),
        ("with nothing changed", &d.idle.median),
    ] {
        println!(
            "| CPU during the sync {name}: device / server / rest of the machine; iowait | {:.2} s / {:.2} s / {:.2} s; {:.2} s | — | device peak RSS {} |",
            s.watched.device_cpu_s,
            s.watched.server_cpu_s,
            s.watched.other_cpu_s,
            s.watched.iowait_s,
            sampled_rss(&s.watched)
        );
    }
}

/// The fleet's table: each figure the median over its rounds, then each round.
pub(crate) fn print_fleet(f: &crate::fleet::FleetFigures) {
    use crate::fleet::{CHANGES_PER_DEVICE, median, percentile};
    let rounds = &f.rounds;
    let med = |g: &dyn Fn(&crate::fleet::FleetRound) -> f64| median(rounds.iter().map(g));
    println!(
        "\n## Fleet: {} devices syncing at once, {} rows each ({}), {} main database, {} server{}\n",
        thousands(f.devices as u64),
        thousands(f.rows),
        match f.slices {
            crate::fleet::Slices::Own => "a region of its own",
            crate::fleet::Slices::Shared => "the same rows for all",
        },
        f.engine,
        f.servers,
        if f.servers == 1 {
            ""
        } else {
            "s (devices split between them)"
        }
    );
    println!(
        "Each device a `fieldsync` process in its own folder, paired, logged in and downloaded beforehand ({:.1} s, not timed); each round: {CHANGES_PER_DEVICE} updates through SQLite on each replica, then every `device sync` started at once. Median of {} round(s).\n",
        f.setup_s,
        rounds.len()
    );
    println!("| measure | median | rounds |");
    println!("|---|---|---|");
    let each = |g: &dyn Fn(&crate::fleet::FleetRound) -> String| {
        rounds.iter().map(g).collect::<Vec<_>>().join(" / ")
    };
    println!(
        "| syncs failed | {} of {} | {} |",
        med(&|r| r.errors as f64),
        f.devices,
        each(&|r| r.errors.to_string())
    );
    for p in [50.0, 95.0, 99.0] {
        println!(
            "| sync latency p{p} (start to exit of one device) | {:.3} s | {} |",
            med(&|r| percentile(&r.latencies_s, p)),
            each(&|r| format!("{:.3}", percentile(&r.latencies_s, p)))
        );
    }
    println!(
        "| wall clock, all {} syncs | {:.3} s | {} |",
        f.devices,
        med(&|r| r.wall_s),
        each(&|r| format!("{:.3}", r.wall_s))
    );
    for s in 0..f.servers {
        println!(
            "| server {} peak RSS during the syncs (VmHWM) | {:.1} MB | {} |",
            s + 1,
            med(&|r| mb(r.server_rss_kb[s])),
            each(&|r| format!("{:.1}", mb(r.server_rss_kb[s])))
        );
    }
    println!(
        "| CPU during the syncs: servers / everything else (the devices, mostly) | {:.2} s / {:.2} s | {} |",
        med(&|r| r.server_cpu_s),
        med(&|r| r.other_cpu_s),
        each(&|r| format!("{:.2}/{:.2}", r.server_cpu_s, r.other_cpu_s))
    );
    let setup_rss: Vec<String> = f
        .setup_server_rss_kb
        .iter()
        .map(|&kb| format!("{:.1} MB", mb(kb)))
        .collect();
    println!(
        "\nServer peak RSS over the setup (logins, first downloads): {}.",
        setup_rss.join(", ")
    );
    for r in rounds {
        for e in &r.error_samples {
            println!("\n- error: `{}`", e.replace('`', "'").replace('\n', " / "));
        }
    }
}

/// The fleet's figures as JSON, every round in full.
pub(crate) fn fleet_json(f: &crate::fleet::FleetFigures) -> serde_json::Value {
    use crate::fleet::percentile;
    let rounds: Vec<serde_json::Value> = f
        .rounds
        .iter()
        .map(|r| {
            serde_json::json!({
                "errors": r.errors,
                "error_samples": r.error_samples,
                "p50_s": percentile(&r.latencies_s, 50.0),
                "p95_s": percentile(&r.latencies_s, 95.0),
                "p99_s": percentile(&r.latencies_s, 99.0),
                "wall_s": r.wall_s,
                "server_peak_rss_kb": r.server_rss_kb,
                "server_cpu_s": r.server_cpu_s,
                "other_cpu_s": r.other_cpu_s,
                "latencies_s": r.latencies_s,
            })
        })
        .collect();
    serde_json::json!({
        "part": "fleet",
        "engine": f.engine,
        "devices": f.devices,
        "rows": f.rows,
        "slices": f.slices.name(),
        "servers": f.servers,
        "setup_s": f.setup_s,
        "setup_server_peak_rss_kb": f.setup_server_rss_kb,
        "rounds": rounds,
    })
}

/// fieldsync beside ogr2ogr and PouchDB, one size (`--peers`).
pub(crate) fn print_peers(p: &crate::peers::PeerFigures) {
    use crate::peers::{GPKG_SPEEDUP_MIN, speedup};
    println!(
        "\n## Peers: the same {} rows from one PostgreSQL table\n",
        thousands(p.n_rows)
    );
    println!(
        "Wall clock from start to exit of each client process; bytes on the wire of the peers through a counting relay on loopback (PostgreSQL's protocol for ogr2ogr, HTTP for PouchDB), fieldsync's from `last_sync.bytes_down`; on disk: what the client wrote. Tools: {}.\n",
        p.tools
    );
    println!(
        "| client | wall clock (own figure) | × fieldsync download 1 / 2 | bytes to the client | bytes to the server | on disk | client peak RSS | CPU: client / server / rest of the machine |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (d1, d2) = (p.fieldsync[0].wall_s, p.fieldsync[1].wall_s);
    for f in &p.fieldsync {
        println!(
            "| {} | {:.3} s ({:.3} s) | {:.2}× / {:.2}× | {} B | — | {} B (device folder at the end) | {:.1} MB | {:.2} s / {:.2} s / {:.2} s |",
            f.name,
            f.wall_s,
            f.own_s,
            speedup(f.wall_s, d1),
            speedup(f.wall_s, d2),
            thousands(f.bytes_down),
            thousands(p.fieldsync_folder_bytes),
            mb(f.device_rss_kb),
            f.device_cpu_s,
            f.server_cpu_s,
            f.other_cpu_s
        );
    }
    for r in [&p.gpkg, &p.sqlite, &p.pouch] {
        let own = r.own_s.map_or("—".to_string(), |s| format!("{s:.3} s"));
        println!(
            "| {} | {:.3} s ({own}) | {:.2}× / {:.2}× | {} B | {} B | {} B | {:.1} MB | {:.2} s / {:.2} s / {:.2} s |",
            r.name,
            r.watched.wall_s,
            speedup(r.watched.wall_s, d1),
            speedup(r.watched.wall_s, d2),
            thousands(r.bytes_down),
            thousands(r.bytes_up),
            thousands(r.output_bytes),
            mb(r.watched.device_rss_kb),
            r.watched.device_cpu_s,
            r.watched.server_cpu_s,
            r.watched.other_cpu_s
        );
    }
    let (s1, s2) = (
        speedup(p.gpkg.watched.wall_s, d1),
        speedup(p.gpkg.watched.wall_s, d2),
    );
    println!(
        "\n| target | download 1 | download 2 | verdict |\n|---|---|---|---|\n| fieldsync's full download ≥ {GPKG_SPEEDUP_MIN}× faster than `ogr2ogr -f GPKG` of the same table | {s1:.2}× | {s2:.2}× | {} |",
        verdict(s1 >= GPKG_SPEEDUP_MIN && s2 >= GPKG_SPEEDUP_MIN)
    );
    println!(
        "\nNot timed: loading the rows into pouchdb-server took {:.1} s; pouchdb-server's peak RSS during the pull {:.1} MB. ogr2ogr's server CPU (the PostgreSQL backend) is in the rest of the machine.",
        p.pouch_load_s,
        mb(p.pouch_server_rss_kb)
    );
}

/// One watched command's figures (the client: fieldsync's device or a peer).
fn watched_json(w: &crate::metrics::Watched) -> serde_json::Value {
    serde_json::json!({
        "wall_s": w.wall_s,
        "client_peak_rss_kb": w.device_rss_kb,
        "client_cpu_s": w.device_cpu_s,
        "server_cpu_s": w.server_cpu_s,
        "other_cpu_s": w.other_cpu_s,
        "iowait_s": w.iowait_s,
    })
}

/// One size and engine of the download part: the floor, the downloads and the delta
/// syncs (median runs, with every run's wall clock), the server's memory.
pub(crate) fn download_json(f: &Figures) -> serde_json::Value {
    let download = |d: &crate::measure::DownloadFigures| {
        serde_json::json!({
            "watched": watched_json(&d.watched),
            "reported_ms": d.reported_ms,
            "bytes_down": d.bytes_down,
            "full_reason": d.full_reason,
        })
    };
    let sync = |runs: &crate::delta::Runs| {
        let s = &runs.median;
        serde_json::json!({
            "watched": watched_json(&s.watched),
            "reported_ms": s.reported_ms,
            "bytes_down": s.bytes_down,
            "rows_down": s.rows_down,
            "runs_wall_s": runs.walls_s,
        })
    };
    let full = &f.downloads[1];
    let d = &f.delta;
    let more: Vec<serde_json::Value> = d
        .more
        .iter()
        .map(|(label, changed, runs)| {
            serde_json::json!({ "changed": label, "rows_changed": changed, "sync": sync(runs) })
        })
        .collect();
    serde_json::json!({
        "part": "download",
        "engine": f.engine,
        "rows": f.n_rows,
        "floor": {
            "total_s": f.floor.total_s,
            "sync_s": f.floor.sync_s,
            "cpu_s": f.floor.cpu_s,
            "other_cpu_s": f.floor.other_cpu_s,
            "runs_s": f.floor_runs_s,
        },
        "first_download": download(&f.downloads[0]),
        "full_download": download(full),
        "full_download_runs_s": f.full_runs_s,
        "full_over_floor": full.watched.wall_s / f.floor.total_s,
        "kept_download": download(&f.downloads[2]),
        "kept_download_runs_s": f.kept_runs_s,
        "kept_over_floor": f.downloads[2].watched.wall_s / f.floor.total_s,
        "full_over_floor_max": tight_floor_ratio_max(f.n_rows).unwrap_or(DOWNLOAD_FLOOR_RATIO_MAX),
        "csv_bytes": f.csv_bytes,
        "server_peak_rss_kb": f.server_rss_kb,
        "server_rss_before_downloads_kb": f.before_downloads_server_rss_kb,
        "server_peak_rss_downloads_kb": f.download_server_rss_kb,
        "delta": {
            "rows_changed": d.changed_rows,
            "one_percent": sync(&d.delta),
            "nothing_changed": sync(&d.idle),
            "more": more,
            "bytes_over_full": d.delta.median.bytes_down as f64 / full.bytes_down as f64,
            "time_over_full": d.delta.median.watched.wall_s / full.watched.wall_s,
            "in_place_floor": {
                "rows": d.in_place.rows,
                "commit_s": d.in_place.commit_s,
                "total_s": d.in_place.total_s,
                "runs_s": d.in_place.walls_s,
                "time_over_full": d.in_place.total_s / full.watched.wall_s,
            },
        },
    })
}

pub(crate) fn peers_json(p: &crate::peers::PeerFigures) -> serde_json::Value {
    let watched = watched_json;
    let peer = |r: &crate::peers::PeerRun| {
        serde_json::json!({
            "name": r.name,
            "watched": watched(&r.watched),
            "own_s": r.own_s,
            "bytes_down": r.bytes_down,
            "bytes_up": r.bytes_up,
            "output_bytes": r.output_bytes,
        })
    };
    let fieldsync: Vec<serde_json::Value> = p
        .fieldsync
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name,
                "wall_s": f.wall_s,
                "own_s": f.own_s,
                "bytes_down": f.bytes_down,
                "device_peak_rss_kb": f.device_rss_kb,
                "device_cpu_s": f.device_cpu_s,
                "server_cpu_s": f.server_cpu_s,
                "other_cpu_s": f.other_cpu_s,
            })
        })
        .collect();
    serde_json::json!({
        "part": "peers",
        "rows": p.n_rows,
        "tools": p.tools,
        "fieldsync": fieldsync,
        "fieldsync_folder_bytes": p.fieldsync_folder_bytes,
        "ogr2ogr_gpkg": peer(&p.gpkg),
        "ogr2ogr_sqlite": peer(&p.sqlite),
        "pouchdb": peer(&p.pouch),
        "pouchdb_load_s": p.pouch_load_s,
        "pouchdb_server_peak_rss_kb": p.pouch_server_rss_kb,
    })
}

/// Send end to end, and Send against Synchronize, one engine (`--send`).
pub(crate) fn print_send(f: &crate::send::SendFigures) {
    use crate::send::{rate, rate_min};
    let n = f.entries;
    let min = rate_min(f.engine);
    println!(
        "\n## Send: {} journal entries, {} main database\n",
        thousands(n),
        f.engine
    );
    println!(
        "{} inspections inserted on the replica in {:.3} s (not timed; the triggers journal each). The sync runs on a second setup made the same way (main database, server, device, the same inserts). Wall clock: start to exit of the device process (reading and compacting the journal, compression, uploads, the server's integration, the acknowledgement). Server: its integration time, summed over the uploads that carried rows (sync history).\n",
        thousands(n),
        f.journal_s
    );
    println!("| measure | value | target | verdict |");
    println!("|---|---|---|---|");
    let s = &f.send;
    let r = rate(n, s.watched.wall_s);
    println!(
        "| `device send`, end to end | {:.3} s = {} entries/s | ≥ {} entries/s | {} |",
        s.watched.wall_s,
        thousands(r as u64),
        thousands(min as u64),
        verdict(r >= min)
    );
    let runs: Vec<String> = f.runs_s.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "| `device send` runs, each on a setup of its own (the median run is reported) | {} s | — | informational |",
        runs.join(", ")
    );
    let lines = [
        ("`device send`", s),
        ("`device sync` of the same journal (second setup)", &f.sync),
        (
            "`device send` of the same rows updated (two columns each)",
            &f.updates,
        ),
    ];
    for (name, run) in lines {
        println!(
            "| {name}: wall clock; server integration ({} upload(s)) | {:.3} s ({}/s); {} ms ({}/s) | — | informational |",
            run.uploads,
            run.watched.wall_s,
            thousands(rate(n, run.watched.wall_s) as u64),
            thousands(run.server_ms),
            thousands(rate(n, run.server_ms as f64 / 1000.0) as u64)
        );
    }
    println!(
        "| Synchronize / Send, wall clock | {:.2}× ({:.3} s / {:.3} s; the sync's download part {} ms in the history) | — | informational |",
        f.sync.watched.wall_s / s.watched.wall_s.max(1e-9),
        f.sync.watched.wall_s,
        s.watched.wall_s,
        f.sync.history_ms.saturating_sub(f.sync.server_ms)
    );
    for (name, run) in lines {
        println!(
            "| {name}: device / server peak RSS; CPU device / server / rest of the machine | {:.1} MB / {:.1} MB; {:.2} s / {:.2} s / {:.2} s | — | informational |",
            mb(run.watched.device_rss_kb),
            mb(run.server_rss_kb),
            run.watched.device_cpu_s,
            run.watched.server_cpu_s,
            run.watched.other_cpu_s
        );
    }
}

pub(crate) fn send_json(f: &crate::send::SendFigures) -> serde_json::Value {
    let run = |r: &crate::send::SendRun| {
        serde_json::json!({
            "wall_s": r.watched.wall_s,
            "entries_per_s": crate::send::rate(f.entries, r.watched.wall_s),
            "server_integration_ms": r.server_ms,
            "uploads": r.uploads,
            "history_ms": r.history_ms,
            "device_peak_rss_kb": r.watched.device_rss_kb,
            "server_peak_rss_kb": r.server_rss_kb,
            "device_cpu_s": r.watched.device_cpu_s,
            "server_cpu_s": r.watched.server_cpu_s,
            "other_cpu_s": r.watched.other_cpu_s,
        })
    };
    serde_json::json!({
        "part": "send",
        "engine": f.engine,
        "entries": f.entries,
        "target_entries_per_s": crate::send::rate_min(f.engine),
        "journal_s": f.journal_s,
        "runs_wall_s": f.runs_s,
        "send": run(&f.send),
        "sync": run(&f.sync),
        "updates": run(&f.updates),
    })
}
