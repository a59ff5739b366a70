//! Unit tests of the bench's pure parts and its replica check.

use fieldsync_store::sample;
use rusqlite::Connection;

use crate::delta::{Share, changed_count, check_changed_replica, delta_verdicts, share};
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
    assert_eq!(changed_count(1_000_000), 10_000);
    assert_eq!(changed_count(20_099), 200);
    assert_eq!(changed_count(99), 0);
    let mut conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(sample::SCHEMA).unwrap();
    let rows = generate(1_234);
    insert_rows(&mut conn, &rows).unwrap();
    let n = conn.execute(crate::delta::OFFICE_UPDATE, []).unwrap() as u64;
    assert_eq!(n, changed_count(1_234));
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
    check_changed_replica(path_text, &rows, 0).unwrap();
    conn.execute("UPDATE assets SET name = name || '*' WHERE id = 200", [])
        .unwrap();
    let err = check_changed_replica(path_text, &rows, 3).unwrap_err();
    assert!(err.to_string().contains("WRONG REPLICA"), "{err}");
    conn.execute(
        "UPDATE assets SET name = name || '*' WHERE id IN (100, 300)",
        [],
    )
    .unwrap();
    check_changed_replica(path_text, &rows, 3).unwrap();
    drop(conn);
    std::fs::remove_file(&path).unwrap();
}
