//! Unit tests of the bench's pure parts and its replica check.

use fieldsync_store::sample;
use rusqlite::Connection;

use crate::delta::{Share, check_changed_replica, delta_verdicts, level_count, share};
use crate::floor::{CSV_HEADER, csv_bytes, csv_field_len, generate, insert_rows, real_text};
use crate::measure::check_replica;
use crate::metrics::{cpu_ticks, peak_rss_kb, proc_field_kb};
use crate::report::thousands;

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

#[test]
fn the_flags_parse_as_before() {
    use clap::{CommandFactory, Parser};

    use crate::args::Cli;
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "fieldsync-bench",
        "--rows-list",
        "1_000,2000",
        "--keep",
        "--dir",
        "a",
        "--dir",
        "b",
    ])
    .unwrap();
    assert_eq!(cli.rows_list.as_deref(), Some("1_000,2000"));
    assert!(cli.keep);
    assert_eq!(cli.dir, Some("b".into()));
    let none = Cli::try_parse_from(["fieldsync-bench"]).unwrap();
    assert!(none.rows_list.is_none() && none.dir.is_none() && !none.keep);
    assert!(Cli::try_parse_from(["fieldsync-bench", "--bogus"]).is_err());
}

#[test]
fn delta_shares_are_judged_against_their_targets() {
    // Exactly at the limit meets it; just over misses; a zero reference meets nothing.
    assert_eq!(
        share(3.0, 100.0, 0.03),
        Share {
            ratio: 0.03,
            met: true
        }
    );
    assert!(!share(3.01, 100.0, 0.03).met);
    assert!(!share(1.0, 0.0, 0.03).met);
    let v = delta_verdicts(42_774_510, 2.0, 1_000_000, 0.2, 1_999);
    assert!(v.bytes.met, "{v:?}");
    assert!((v.bytes.ratio - 1_000_000.0 / 42_774_510.0).abs() < 1e-12);
    assert!(!v.time.met, "0.2 s of 2.0 s is 10%, over 8%: {v:?}");
    assert!((v.time.ratio - 0.1).abs() < 1e-12);
    assert!(v.idle_bytes_met);
    let v = delta_verdicts(1_000_000, 2.0, 30_001, 0.16, 2_000);
    assert!(!v.bytes.met && v.time.met && !v.idle_bytes_met, "{v:?}");
}

#[test]
fn the_office_changes_one_row_in_a_hundred() {
    assert_eq!(level_count(1_000_000, 100, 0), 10_000);
    assert_eq!(level_count(20_099, 100, 0), 200);
    assert_eq!(level_count(99, 100, 0), 0);
    let mut conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(sample::SCHEMA).unwrap();
    let rows = generate(1_234);
    insert_rows(&mut conn, &rows).unwrap();
    let first = crate::delta::level_update(100, crate::delta::ONE_PERCENT_REMAINDERS[0]);
    let n = conn.execute(&first, []).unwrap() as u64;
    assert_eq!(n, level_count(1_234, 100, 0));
    // The further levels change rows none of the others did, as many as counted.
    // Every run of every level changes rows none of the others did, as many as counted.
    let mut starred = n;
    let one_percent = crate::delta::ONE_PERCENT_REMAINDERS[1..]
        .iter()
        .map(|r| (100, *r));
    let more = crate::delta::MORE_LEVELS
        .iter()
        .flat_map(|(_, modulus, remainders)| remainders.iter().map(|r| (*modulus, *r)));
    for (modulus, remainder) in one_percent.chain(more) {
        let update = crate::delta::level_update(modulus, remainder);
        let m = conn.execute(&update, []).unwrap() as u64;
        assert_eq!(m, crate::delta::level_count(1_234, modulus, remainder));
        assert!(m > 0, "id % {modulus} = {remainder} changed nothing");
        starred += m;
        let once: u64 = conn
            .query_row(
                "SELECT count(*) FROM assets WHERE name LIKE '%*' AND name NOT LIKE '%**'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(once, starred, "a level changed a row twice");
    }
    assert_eq!(crate::delta::level_count(1_000_000, 1000, 7), 1_000);
    assert_eq!(crate::delta::level_count(1_000_000, 10, 3), 100_000);
    assert_eq!(crate::delta::level_count(5, 10, 7), 0);
}

#[test]
fn a_replica_missing_a_change_fails_loudly() {
    let path = std::env::temp_dir().join(format!(
        "fieldsync-bench-delta-test-{}.sqlite",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let rows = generate(300);
    let mut conn = Connection::open(&path).unwrap();
    conn.execute_batch(sample::SCHEMA).unwrap();
    insert_rows(&mut conn, &rows).unwrap();
    let path_text = path.to_str().unwrap();
    check_changed_replica(path_text, &rows, 0, None).unwrap();
    conn.execute("UPDATE assets SET name = name || '*' WHERE id = 200", [])
        .unwrap();
    let err = check_changed_replica(path_text, &rows, 3, Some(100)).unwrap_err();
    assert!(err.to_string().contains("WRONG REPLICA"), "{err}");
    conn.execute(
        "UPDATE assets SET name = name || '*' WHERE id IN (150, 300)",
        [],
    )
    .unwrap();
    // Three changed, but not the one the office renamed.
    let err = check_changed_replica(path_text, &rows, 3, Some(100)).unwrap_err();
    assert!(err.to_string().contains("asset 100"), "{err}");
    check_changed_replica(path_text, &rows, 3, Some(150)).unwrap();
    drop(conn);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn the_in_place_floor_changes_a_copy_and_leaves_the_replica_alone() {
    let dir = tempfile_dir("in-place");
    let (replica, scratch) = (dir.join("replica.sqlite"), dir.join("floor.sqlite"));
    let mut conn = Connection::open(&replica).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(sample::SCHEMA).unwrap();
    insert_rows(&mut conn, &generate(1_050)).unwrap();
    // A trigger as the device's: the floor runs without it.
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE UPDATE ON assets BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .unwrap();
    drop(conn);
    let floor = crate::delta::in_place_floor(&replica, &scratch, 1_050, &[0, 50, 7]).unwrap();
    // The median run by time; every run changed ten or eleven rows.
    assert!(floor.rows == 10 || floor.rows == 11, "{}", floor.rows);
    assert_eq!(floor.walls_s.len(), 3);
    assert!(floor.total_s >= floor.commit_s && floor.commit_s > 0.0);
    assert!(!scratch.exists(), "the copy is removed after");
    let conn = Connection::open(&replica).unwrap();
    let plus: i64 = conn
        .query_row(
            "SELECT count(*) FROM assets WHERE name LIKE '%+'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(plus, 0, "the replica itself is not changed");
    drop(conn);
    let err = crate::delta::in_place_floor(&dir.join("none.sqlite"), &scratch, 10, &[0]);
    assert!(err.is_err(), "a missing replica fails");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn percentiles_are_nearest_rank_and_medians_the_middle() {
    use crate::fleet::{median, percentile};
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 50.0), 50.0);
    assert_eq!(percentile(&v, 95.0), 95.0);
    assert_eq!(percentile(&v, 99.0), 99.0);
    assert_eq!(percentile(&v[..3], 99.0), 3.0);
    assert_eq!(percentile(&[], 50.0), 0.0);
    assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.0);
    // The median run is a whole run, picked by its key; every key kept in run order.
    let runs = vec![("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 9.0)];
    let (run, keys) = crate::metrics::median_run(runs, |r| r.1);
    assert_eq!(run, ("c", 2.0));
    assert_eq!(keys, vec![3.0, 1.0, 2.0, 9.0]);
}

#[test]
fn a_failed_sync_is_counted_not_timed() {
    let r = crate::fleet::summarize(
        vec![Ok(0.3), Err("dev-1: exit 4".into()), Ok(0.1)],
        0.5,
        vec![1024],
        0.2,
        0.1,
    );
    assert_eq!(r.errors, 1);
    assert_eq!(r.latencies_s, vec![0.1, 0.3]);
    assert_eq!(r.error_samples, vec!["dev-1: exit 4".to_string()]);
}

/// The `fieldsync` binary of the same build as this test (`target/<profile>/fieldsync`).
fn fieldsync_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("fieldsync");
    assert!(
        bin.is_file(),
        "no fieldsync binary at {}: build it first (cargo build -p fieldsync-cli)",
        bin.display()
    );
    bin
}

/// A tiny fleet through the real binary: three devices, one revoked by the office after
/// its setup, two rounds. The report counts the revoked device's failures (its refused
/// sync, then its wiped folder) and times the others; its JSON has every figure. Each
/// device holds its own region, or with `Shared` all the same rows.
#[test]
fn a_tiny_fleet_counts_its_failures_and_reports_every_figure() {
    tiny_fleet(crate::fleet::Slices::Own);
}

#[test]
fn a_tiny_fleet_on_one_shared_slice() {
    tiny_fleet(crate::fleet::Slices::Shared);
}

fn tiny_fleet(slices: crate::fleet::Slices) {
    let bin = fieldsync_bin();
    let dir = tempfile_dir(&format!("fleet-{}", slices.name()));
    let plan = crate::fleet::FleetPlan {
        bin: &bin,
        dir: &dir,
        devices: 3,
        rows: 250,
        slices,
        reps: 2,
        pg: None,
        revoked: 1,
    };
    let f = crate::fleet::measure_fleet(&plan, crate::metrics::ticks_per_s()).unwrap();
    assert_eq!(f.rounds.len(), 2);
    for r in &f.rounds {
        assert_eq!(r.errors, 1, "{:?}", r.error_samples);
        assert_eq!(r.latencies_s.len(), 2);
        assert!(r.latencies_s.iter().all(|&t| t > 0.0 && t <= r.wall_s));
        assert_eq!(r.server_rss_kb.len(), 1);
        assert!(r.server_rss_kb[0] > 1000, "{:?}", r.server_rss_kb);
    }
    assert!(
        f.rounds[0].error_samples[0].contains("fleet-0000"),
        "{:?}",
        f.rounds[0].error_samples
    );
    // The other devices' changes reached the main database: 100 rows each per round.
    let main = Connection::open(dir.join("main.sqlite")).unwrap();
    let changed: i64 = main
        .query_row(
            "SELECT count(*) FROM assets WHERE notes LIKE '% r0 r1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(changed, 200);
    // Each device that was not revoked holds its slice, and only it.
    let (total, region) = match slices {
        crate::fleet::Slices::Own => (750, None),
        crate::fleet::Slices::Shared => (250, Some("north")),
    };
    let in_main: i64 = main
        .query_row("SELECT count(*) FROM assets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(in_main, total);
    for device in ["fleet-0001", "fleet-0002"] {
        let replica = Connection::open(dir.join(device).join("replica.sqlite")).unwrap();
        let held: (i64, String, String) = replica
            .query_row(
                "SELECT count(*), min(region), max(region) FROM assets",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let region = region.unwrap_or(device).to_string();
        assert_eq!(held, (250, region.clone(), region), "{device}");
    }
    let json = crate::report::fleet_json(&f);
    assert_eq!(json["devices"], 3);
    assert_eq!(json["slices"], slices.name());
    assert_eq!(json["rounds"][1]["errors"], 1);
    assert!(json["rounds"][0]["p99_s"].as_f64().unwrap() > 0.0);
    crate::report::print_fleet(&f);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fieldsync-bench-{name}-test-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_fleet_flags_parse() {
    use clap::Parser;

    use crate::args::Cli;
    let cli = Cli::try_parse_from(["fieldsync-bench", "--fleet", "--skip-download"]).unwrap();
    assert_eq!(cli.fleet.as_deref(), Some("200"));
    assert!(cli.skip_download);
    let cli = Cli::try_parse_from([
        "fieldsync-bench",
        "--fleet",
        "5",
        "--fleet-rows",
        "300",
        "--fleet-shared",
        "--reps",
        "2",
        "--pg",
        "postgres://x/y",
        "--json",
        "f.json",
    ])
    .unwrap();
    assert_eq!(cli.fleet.as_deref(), Some("5"));
    assert_eq!(cli.fleet_rows.as_deref(), Some("300"));
    assert!(cli.fleet_shared);
    assert_eq!(cli.reps.as_deref(), Some("2"));
    assert_eq!(cli.pg.as_deref(), Some("postgres://x/y"));
    assert_eq!(cli.json, Some("f.json".into()));
    assert!(
        Cli::try_parse_from(["fieldsync-bench"])
            .unwrap()
            .fleet
            .is_none()
    );
}

#[test]
fn the_peers_and_send_flags_parse_and_check_each_other() {
    use clap::Parser;

    use crate::args::{Cli, config_from};
    let parse = |args: &[&str]| {
        let mut all = vec!["fieldsync-bench"];
        all.extend(args);
        config_from(Cli::try_parse_from(all).unwrap())
    };
    let c = parse(&["--send", "--pg", "postgres://u@h:1/d", "--peers"]).unwrap();
    assert_eq!(c.send, Some(100_000));
    assert!(c.peers);
    let c = parse(&["--send", "2_000", "--skip-download"]).unwrap();
    assert_eq!(c.send, Some(2_000));
    assert!(!c.peers);
    assert!(parse(&["--send", "0"]).is_err());
    let err = parse(&[
        "--peers",
        "--pg",
        "postgres://u@h/d",
        "--skip-download",
        "--send",
    ])
    .err()
    .unwrap();
    assert!(err.to_string().contains("--skip-download"), "{err}");
    if std::env::var_os("FIELDSYNC_BENCH_PG").is_none() {
        let err = parse(&["--peers"]).err().unwrap();
        assert!(err.to_string().contains("--peers needs --pg"), "{err}");
    }
    // The usage text names every flag clap knows.
    use clap::CommandFactory;
    for arg in Cli::command().get_arguments() {
        if let Some(long) = arg.get_long().filter(|l| *l != "help") {
            assert!(
                crate::args::USAGE.contains(&format!("--{long}")),
                "--{long} is not in the usage text"
            );
        }
    }
}

#[test]
fn a_postgres_url_is_pointed_at_the_relay() {
    use crate::peers::pg_via;
    let to: std::net::SocketAddr = "127.0.0.1:4242".parse().unwrap();
    let (addr, url) = pg_via("postgres://postgres@127.0.0.1:5432/test", to).unwrap();
    assert_eq!(addr, "127.0.0.1:5432".parse().unwrap());
    assert_eq!(url, "postgres://postgres@127.0.0.1:4242/test");
    let (addr, url) = pg_via("postgresql://u:p@127.0.0.1/db?sslmode=disable", to).unwrap();
    assert_eq!(addr.port(), 5432);
    assert_eq!(url, "postgresql://u:p@127.0.0.1:4242/db?sslmode=disable");
    let (addr, _) = pg_via("postgres://[::1]:6543/db", to).unwrap();
    assert_eq!(addr, "[::1]:6543".parse().unwrap());
    assert!(pg_via("postgres:///db", to).is_err());
    assert!(pg_via("host=/tmp dbname=x", to).is_err());
}

#[test]
fn missing_peers_fail_naming_the_install_script() {
    use crate::peers::{INSTALL_SCRIPT, check_tools, npm_version};
    let dir = tempfile_dir("peers");
    let err = check_tools(&dir).err().unwrap().to_string();
    assert!(err.contains(INSTALL_SCRIPT), "{err}");
    assert!(err.contains("pouchdb-server in"), "{err}");
    assert!(err.contains("pouch.js"), "{err}");
    assert_eq!(
        npm_version(r#"{"name": "pouchdb", "version": "9.0.0"}"#).as_deref(),
        Some("9.0.0")
    );
    assert_eq!(npm_version("{}"), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The relay counts each direction's bytes, on a real loopback connection.
#[test]
fn the_relay_counts_bytes_both_ways() {
    use std::io::{Read, Write};
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut got = vec![0u8; 1000];
        s.read_exact(&mut got).unwrap();
        s.write_all(&[7u8; 250_000]).unwrap();
        got
    });
    let relay = crate::proxy::Relay::start(target).unwrap();
    let mut c = std::net::TcpStream::connect(relay.addr).unwrap();
    c.write_all(&[1u8; 1000]).unwrap();
    let mut back = vec![0u8; 250_000];
    c.read_exact(&mut back).unwrap();
    assert!(back.iter().all(|&b| b == 7));
    assert_eq!(echo.join().unwrap(), vec![1u8; 1000]);
    assert_eq!(relay.counts.read(), (250_000, 1000));
}

#[test]
fn disk_bytes_adds_files_and_skips_links() {
    let dir = tempfile_dir("disk");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("gen-1.sqlite"), b"replica").unwrap();
    std::fs::write(dir.join("sub/state"), b"s").unwrap();
    std::os::unix::fs::symlink(dir.join("gen-1.sqlite"), dir.join("replica.sqlite")).unwrap();
    assert_eq!(crate::metrics::disk_bytes(&dir), 8);
    assert_eq!(crate::metrics::disk_bytes(&dir.join("gen-1.sqlite")), 7);
    assert_eq!(crate::metrics::disk_bytes(&dir.join("absent")), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_integration_time_counts_the_uploads_only() {
    let h: Vec<serde_json::Value> = serde_json::from_str(
        r#"[{"op": "sync", "rows_up": 10000, "duration_ms": 120},
            {"op": "sync", "rows_up": 500, "duration_ms": 30},
            {"op": "sync", "rows_up": 0, "duration_ms": 7}]"#,
    )
    .unwrap();
    assert_eq!(crate::send::integration(&h), (150, 2, 157));
    assert_eq!(crate::send::rate(100_000, 0.5), 200_000.0);
    assert_eq!(crate::send::rate(1, 0.0), 0.0);
    assert_eq!(crate::send::rate_min("PostgreSQL"), 50_000.0);
    assert_eq!(crate::send::rate_min("SQLite"), 100_000.0);
    assert_eq!(crate::peers::speedup(3.0, 1.5), 2.0);
}

/// A small send through the real binary on SQLite: the same journal sent by one device
/// and synchronized by another on an identical setup, then updated and sent again; the
/// report's JSON holds every run.
#[test]
fn a_small_send_and_its_sync_reach_their_main_databases() {
    let bin = fieldsync_bin();
    let dir = tempfile_dir("send");
    let f =
        crate::send::measure_send(&bin, &dir, 2_500, None, crate::metrics::ticks_per_s()).unwrap();
    for run in [&f.send, &f.sync, &f.updates] {
        assert!(run.watched.wall_s > 0.0);
        assert!(run.uploads >= 1, "no upload in the history");
        assert!(run.server_ms <= run.history_ms);
        assert!(run.server_rss_kb > 1000 && run.watched.device_rss_kb > 1000);
    }
    // The sync's download shows in its history; a send has none.
    assert!(f.sync.history_ms >= f.sync.server_ms);
    let count = |db: &str, sql: &str| -> i64 {
        Connection::open(dir.join(db))
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    let worn = "SELECT count(*) FROM inspections WHERE result = 'worn'";
    assert_eq!(count("send/main.sqlite", worn), 2_500);
    assert_eq!(count("sync/main.sqlite", worn), 0);
    assert_eq!(
        count("sync/main.sqlite", "SELECT count(*) FROM inspections"),
        2_500
    );
    let json = crate::report::send_json(&f);
    assert_eq!(json["entries"], 2_500);
    assert_eq!(json["engine"], "SQLite");
    assert!(json["sync"]["entries_per_s"].as_f64().unwrap() > 0.0);
    crate::report::print_send(&f);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small download run through the real binary: the server's peak over the downloads
/// alone is read after a reset, beside its resident set before them and its peak over
/// the whole run; each timed figure is run as many times as asked, and the JSON holds
/// every run.
#[test]
fn the_servers_download_peak_is_read_apart_from_the_run() {
    let bin = fieldsync_bin();
    let dir = tempfile_dir("download");
    let f = crate::measure::measure(&bin, &dir, 3_000, None, 2).unwrap();
    assert_eq!((f.floor_runs_s.len(), f.full_runs_s.len()), (2, 2));
    assert!(f.full_runs_s.contains(&f.downloads[1].watched.wall_s));
    assert_eq!(f.kept_runs_s.len(), 2);
    assert!(f.kept_runs_s.contains(&f.downloads[2].watched.wall_s));
    assert!(f.floor_runs_s.contains(&f.floor.total_s));
    let json = crate::report::download_json(&f);
    assert_eq!(json["full_download_runs_s"].as_array().unwrap().len(), 2);
    assert_eq!(json["kept_download_runs_s"].as_array().unwrap().len(), 2);
    assert_eq!(
        json["delta"]["one_percent"]["runs_wall_s"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(json["delta"]["more"].as_array().unwrap().len(), 2);
    // Two runs of 1% of 3,000 rows, then two of 0.1% and of 10%.
    assert_eq!(json["delta"]["one_percent"]["rows_down"], 30);
    assert_eq!(json["delta"]["nothing_changed"]["rows_down"], 0);
    let (before, downloads, run) = (
        f.before_downloads_server_rss_kb,
        f.download_server_rss_kb,
        f.server_rss_kb,
    );
    assert!(before > 1000, "{before} kB");
    assert!(
        before <= downloads && downloads <= run,
        "before {before} kB, downloads {downloads} kB, whole run {run} kB"
    );
    crate::report::print_figures(&f);
    crate::report::print_summary(std::slice::from_ref(&f));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_command_shorter_than_two_polls_has_no_peak_rss() {
    let watched = |wall_s: f64| crate::metrics::Watched {
        wall_s,
        device_rss_kb: 13_000,
        device_cpu_s: 0.0,
        server_cpu_s: 0.0,
        other_cpu_s: 0.0,
        iowait_s: 0.0,
    };
    let short = crate::report::sampled_rss(&watched(0.016));
    assert!(short.starts_with("not sampled (it ran 16 ms"), "{short}");
    assert_eq!(crate::report::sampled_rss(&watched(0.3)), "13.3 MB");
}

/// The report's PostgreSQL line reads the server's own settings (a real server: the
/// test suite's).
#[test]
fn the_postgres_line_names_the_servers_version_collation_and_jit() {
    let url = fieldsync_testkit::pg::base_url();
    let line = crate::metrics::pg_settings(&url).unwrap();
    let mut c = fieldsync_testkit::pg::connect(&url);
    let version: String = c.query_one("SHOW server_version", &[]).unwrap().get(0);
    let jit: String = c.query_one("SHOW jit", &[]).unwrap().get(0);
    assert!(
        line.starts_with(&format!("PostgreSQL {version}, database collation "))
            && line.contains(&format!(", jit {jit}, shared_buffers ")),
        "{line}"
    );
    let err = crate::metrics::pg_settings("postgres://nobody@127.0.0.1:1/none").unwrap_err();
    assert!(format!("{err:#}").contains("connecting to"), "{err:#}");
}
