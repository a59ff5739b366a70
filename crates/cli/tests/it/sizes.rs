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

/// A row's width in [`widen_north`]: wider than a row batch of the stream.
const WIDE: usize = 256 * 1024;

/// Makes every north asset's name `wide` bytes and more; how many rows the task
/// `north-inspections` then has.
fn widen_north(office: &Office, wide: usize) -> i64 {
    office.execute_batch(&match office.engine() {
        Engine::Sqlite => format!(
            "UPDATE assets SET name = substr(hex(zeroblob({wide})), 1, {wide}) || id WHERE region = 'north'"
        ),
        Engine::Postgres => {
            format!("UPDATE assets SET name = repeat('0', {wide}) || id WHERE region = 'north'")
        }
    });
    let rows: i64 = office
        .value("SELECT count(*) FROM assets WHERE region = 'north' AND status <> 'retired'")
        .parse()
        .unwrap();
    assert!(
        rows as usize * wide >= 16 << 20,
        "{rows} rows: the slice should be tens of MB"
    );
    rows
}

/// Every row of a slice widened to `wide` is in the device's replica, whole.
fn has_every_wide_row(dev: &DeviceDir, rows: i64, wide: usize) {
    let (got, whole): (i64, i64) = dev
        .replica()
        .query_row(
            &format!("SELECT count(*), count(*) FILTER (WHERE length(name) > {wide}) FROM assets"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((got, whole), (rows, rows), "every wide row came down whole");
}

/// Many rows each wider than a row batch of the stream: the server holds a few of them
/// while it streams, never the slice (on PostgreSQL two fetches of about 1 MiB; it used
/// to hold a whole fetch of up to 2,000 rows: all of these at once).
#[test]
fn many_wide_rows_download_while_the_servers_memory_stays_flat() {
    let office = Office::new(400);
    let rows = widen_north(&office, WIDE);
    let dev = office.device("wide", &["north-inspections"]);
    dev.login("ana").ok();
    // The login's own memory (its password hash) is in the peak already.
    let before_kb = office.server.peak_rss_kb();
    dev.run(&["download", "north-inspections"], "").ok();
    let grew_mb = (office.server.peak_rss_kb() - before_kb) / 1024;
    let slice_mb = rows as u64 * WIDE as u64 / (1024 * 1024);
    eprintln!("{rows} rows of {WIDE} bytes ({slice_mb} MB): the server grew {grew_mb} MB");
    has_every_wide_row(&dev, rows, WIDE);
    assert!(
        grew_mb < 16,
        "the server grew {grew_mb} MB for a {slice_mb} MB slice"
    );
}

/// Eight devices download a slice of 4 KiB rows at once (the server's eight download
/// turns): the server's memory grows by far less than eight buffers' worth. On
/// PostgreSQL the downloads' fetches share one budget: 5–6 MB here, 23–27 MB when each
/// held two fetches of ~1 MiB. On SQLite a full download's scan keeps a small page
/// cache: 18–21 MB, 35–36 MB when each connection's 2 MB cache filled.
#[test]
fn eight_downloads_at_once_share_the_servers_buffers() {
    const ROW_BYTES: usize = 4 * 1024;
    let office = Office::new(12_000);
    let rows = widen_north(&office, ROW_BYTES);
    let devs: Vec<DeviceDir> = (0..9)
        .map(|i| {
            let dev = office.device(&format!("wide-{i}"), &["north-inspections"]);
            dev.login("ana").ok();
            dev
        })
        .collect();
    // What the server's memory grows by while `devices` download at once, in MB: its
    // peak from its memory now (the logins' password hashes given back).
    let growth = |devices: &[DeviceDir]| {
        office.server.reset_peak_rss();
        let before_kb = office.server.rss_kb();
        std::thread::scope(|s| {
            for dev in devices {
                s.spawn(|| dev.run(&["download", "north-inspections"], "").ok());
            }
        });
        (office.server.peak_rss_kb() - before_kb) / 1024
    };
    let one_mb = growth(&devs[..1]);
    let eight_mb = growth(&devs[1..]);
    eprintln!(
        "{rows} rows of {ROW_BYTES} bytes: the server grew {one_mb} MB for one download, {eight_mb} MB for eight at once"
    );
    for dev in &devs {
        has_every_wide_row(dev, rows, ROW_BYTES);
    }
    let bound_mb = match office.engine() {
        Engine::Sqlite => 28,
        Engine::Postgres => 14,
    };
    assert!(
        eight_mb < bound_mb,
        "the server grew {eight_mb} MB for eight downloads at once ({one_mb} MB for one)"
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
    eight_downloads_at_once_share_the_servers_buffers,
    a_table_of_500_columns_downloads_and_a_shell_edit_on_it_lands_in_the_main_database,
);
