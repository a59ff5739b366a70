//! Sizes: values bigger than a download frame (split across continuation frames) and
//! tables as wide as SQLite allows (triggers whose expressions stay shallow).

use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// The big value's size in MiB (`FIELDSYNC_TEST_BIG_VALUE_MB`, default 20: more than
/// one 16 MiB frame).
fn big_value_bytes() -> usize {
    std::env::var("FIELDSYNC_TEST_BIG_VALUE_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        * 1024
        * 1024
}

/// A text of `n` bytes that is not one repeated byte, so a misplaced piece shows.
fn big_text(n: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// Sets a column of one row of the main database to `value`, as an office program would.
fn set_main_text(office: &Office, table: &str, column: &str, id: i64, value: &str) {
    let sql = format!("UPDATE {table} SET {column} = $1 WHERE id = $2");
    match office.engine() {
        Engine::Sqlite => {
            let n = office
                .sql()
                .execute(&sql.replace('$', "?"), rusqlite::params![value, id])
                .unwrap();
            assert_eq!(n, 1);
        }
        Engine::Postgres => {
            let n = office.pg().execute(&sql, &[&value, &id]).unwrap();
            assert_eq!(n, 1);
        }
    }
}

fn main_text(office: &Office, sql: &str) -> String {
    match office.engine() {
        Engine::Sqlite => office.sql().query_row(sql, [], |r| r.get(0)).unwrap(),
        Engine::Postgres => office.pg().query_one(sql, &[]).unwrap().get(0),
    }
}

/// An edit by the `sqlite3` shell, as any SQLite client would make it.
#[track_caller]
fn sqlite3(db: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(format!("PRAGMA busy_timeout = 10000; {sql}"))
        .output()
        .expect("the sqlite3 shell is installed");
    assert!(out.status.success(), "sqlite3 {sql}: {out:?}");
}

fn north_asset(office: &Office) -> i64 {
    office
        .value("SELECT min(id) FROM assets WHERE region = 'north' AND status <> 'retired'")
        .parse()
        .unwrap()
}

#[test]
fn a_value_bigger_than_a_frame_downloads_intact_and_a_device_can_send_one() {
    let n = big_value_bytes();
    let office = Office::new(50);
    let id = north_asset(&office);
    let big = big_text(n, 7);
    set_main_text(&office, "assets", "name", id, &big);

    let dev = office.device("big-1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    let conn = dev.replica();
    let got: String = conn
        .query_row("SELECT name FROM assets WHERE id = ?1", [id], |r| r.get(0))
        .unwrap();
    assert_eq!(got.len(), n);
    assert!(got == big, "the big value came down changed");
    let others: i64 = conn
        .query_row("SELECT count(*) FROM assets WHERE id <> ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(others > 0);
    assert_eq!(integrity(&conn), "ok");
    drop(conn);

    // A device sends a big value of its own; every device still downloads the task.
    let other = office
        .value(&format!(
            "SELECT max(id) FROM assets WHERE region = 'north' AND status <> 'retired' AND id <> {id}"
        ))
        .parse::<i64>()
        .unwrap();
    let sent = big_text(n + 1, 11);
    dev.replica()
        .execute(
            "UPDATE assets SET category = ?1 WHERE id = ?2",
            rusqlite::params![sent, other],
        )
        .unwrap();
    dev.run(&["send"], "").ok();
    assert!(
        main_text(
            &office,
            &format!("SELECT category FROM assets WHERE id = {other}")
        ) == sent,
        "the sent value landed changed"
    );
    let dev2 = office.device("big-2", &["north-inspections"]);
    dev2.login("ana").ok();
    dev2.run(&["download", "north-inspections"], "").ok();
    let conn = dev2.replica();
    let (a, b): (String, String) = conn
        .query_row(
            "SELECT (SELECT name FROM assets WHERE id = ?1), (SELECT category FROM assets WHERE id = ?2)",
            [id, other],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(a == big && b == sent, "big values came down changed");
}

/// Many rows each wider than a row batch of the stream: the server holds a few of them
/// while it streams, never the slice (on PostgreSQL two fetches of about 1 MiB; it used
/// to hold a whole fetch of up to 2,000 rows: all of these at once).
#[test]
fn many_wide_rows_download_while_the_servers_memory_stays_flat() {
    const WIDE: usize = 256 * 1024;
    let office = Office::new(400);
    office.execute_batch(&match office.engine() {
        Engine::Sqlite => format!(
            "UPDATE assets SET name = substr(hex(zeroblob({WIDE})), 1, {WIDE}) || id WHERE region = 'north'"
        ),
        Engine::Postgres => {
            format!("UPDATE assets SET name = repeat('0', {WIDE}) || id WHERE region = 'north'")
        }
    });
    let rows: i64 = office
        .value("SELECT count(*) FROM assets WHERE region = 'north' AND status <> 'retired'")
        .parse()
        .unwrap();
    assert!(rows >= 100, "{rows} rows: the slice should be tens of MB");
    let dev = office.device("wide", &["north-inspections"]);
    dev.login("ana").ok();
    // The login's own memory (its password hash) is in the peak already.
    let before_kb = office.server.peak_rss_kb();
    dev.run(&["download", "north-inspections"], "").ok();
    let grew_mb = (office.server.peak_rss_kb() - before_kb) / 1024;
    let slice_mb = rows as u64 * WIDE as u64 / (1024 * 1024);
    eprintln!("{rows} rows of {WIDE} bytes ({slice_mb} MB): the server grew {grew_mb} MB");
    let conn = dev.replica();
    let (got, wide): (i64, i64) = conn
        .query_row(
            &format!("SELECT count(*), count(*) FILTER (WHERE length(name) > {WIDE}) FROM assets"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((got, wide), (rows, rows), "every wide row came down whole");
    assert!(
        grew_mb < 16,
        "the server grew {grew_mb} MB for a {slice_mb} MB slice"
    );
}

const WIDTH: usize = 500;

#[test]
fn a_table_of_500_columns_downloads_and_a_shell_edit_on_it_lands_in_the_main_database() {
    let office = Office::new(5);
    let cols: Vec<String> = (1..WIDTH).map(|i| format!("c{i} TEXT")).collect();
    office.execute_batch(&format!(
        "CREATE TABLE wide (id TEXT PRIMARY KEY, {});",
        cols.join(", ")
    ));
    let names: Vec<String> = (1..WIDTH).map(|i| format!("c{i}")).collect();
    for row in 1..=3 {
        let values: Vec<String> = (1..WIDTH).map(|i| format!("'r{row}c{i}'")).collect();
        office.execute_batch(&format!(
            "INSERT INTO wide (id, {}) VALUES ('k{row}', {});",
            names.join(", "),
            values.join(", ")
        ));
    }
    office.admin(&["table", "track", "wide"], "").ok();
    let toml = "name = \"wide-task\"\n[[tables]]\nname = \"wide\"\nwrite = [\"insert\", \"update\", \"delete\"]\n";
    office.apply_task("wide.toml", toml, "wide-task", "ana");

    let dev = office.device("wide-1", &["wide-task"]);
    dev.login("ana").ok();
    dev.run(&["download", "wide-task"], "").ok();
    let conn = dev.replica();
    let width: i64 = conn
        .query_row("SELECT count(*) FROM pragma_table_info('wide')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(width, WIDTH as i64);
    let cell: String = conn
        .query_row("SELECT c499 FROM wide WHERE id = 'k3'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cell, "r3c499");
    drop(conn);

    // Edits by the sqlite3 shell: an update of a wide row, an insert, a delete.
    sqlite3(
        &dev.replica_path(),
        "UPDATE wide SET c250 = 'edited', c499 = NULL WHERE id = 'k2';
         INSERT INTO wide (id, c1, c498) VALUES ('new', 'new', 'last');
         DELETE FROM wide WHERE id = 'k1';",
    );
    let journaled: Vec<(String, String)> = dev
        .replica()
        .prepare("SELECT op, coalesce(new, '') FROM fieldsync_journal ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        journaled.iter().map(|j| j.0.as_str()).collect::<Vec<_>>(),
        ["update", "insert", "delete"]
    );
    let update: serde_json::Value = serde_json::from_str(&journaled[0].1).unwrap();
    assert_eq!(
        update,
        serde_json::json!({"c250": "edited", "c499": null}),
        "the update journals exactly its changed columns"
    );
    let insert: serde_json::Value = serde_json::from_str(&journaled[1].1).unwrap();
    assert_eq!(insert.as_object().unwrap().len(), WIDTH);

    dev.run(&["send"], "").ok();
    assert_eq!(
        office.rows("SELECT id, c1, c250, c498, c499 FROM wide ORDER BY id"),
        office.rows(
            "SELECT 'k2', 'r2c1', 'edited', 'r2c498', NULL UNION ALL SELECT 'k3', 'r3c1', 'r3c250', 'r3c498', 'r3c499' UNION ALL SELECT 'new', 'new', NULL, 'last', NULL"
        )
    );
}

crate::also_on_postgres!(
    a_value_bigger_than_a_frame_downloads_intact_and_a_device_can_send_one,
    many_wide_rows_download_while_the_servers_memory_stays_flat,
    a_table_of_500_columns_downloads_and_a_shell_edit_on_it_lands_in_the_main_database,
);
