//! What office tools do to the main database: every write form an office app uses
//! gets a row version, and none of them fails because of fieldsync.

use std::process::{Command, Stdio};

use crate::harness::*;

/// Runs SQL with the `sqlite3` shell on the main database, as an office tool would.
fn office_sqlite3(office: &Office, sql: &str) -> Run {
    Command::new("sqlite3")
        .arg("-bail")
        .arg(&office.db_path)
        .arg(format!("PRAGMA foreign_keys = ON; {sql}"))
        .stdin(Stdio::null())
        .output()
        .expect("the sqlite3 shell runs")
        .into()
}

fn version(office: &Office, table: &str, key: &str) -> i64 {
    office
        .value(&format!(
            "SELECT version FROM fieldsync_rows WHERE tbl = {table} AND pk = {key}"
        ))
        .parse()
        .unwrap()
}

/// A statement in a trigger takes the outer statement's conflict clause: the tracking
/// triggers used `INSERT OR REPLACE`, so `UPDATE OR IGNORE` skipped the version stamp
/// (a device edit then overwrote the office's change silently) and upserts,
/// `UPDATE OR ABORT|FAIL|ROLLBACK` and foreign-key actions failed on fieldsync's own
/// table.
#[test]
fn every_sqlite_write_form_of_the_office_is_stamped() {
    let office = Office::new(10);
    let mut last = version(&office, "'assets'", "1");
    let forms = [
        "UPDATE OR IGNORE assets SET name = 'or ignore' WHERE id = 1",
        "UPDATE OR ABORT assets SET name = 'or abort' WHERE id = 1",
        "UPDATE OR FAIL assets SET name = 'or fail' WHERE id = 1",
        "UPDATE OR ROLLBACK assets SET name = 'or rollback' WHERE id = 1",
        "UPDATE OR REPLACE assets SET name = 'or replace' WHERE id = 1",
        "INSERT INTO assets (id, name, category, status, region) VALUES (1, 'upsert', 'pump', 'active', 'north')
           ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        "INSERT OR REPLACE INTO assets (id, name, category, status, region) VALUES (1, 'replaced', 'pump', 'active', 'north')",
    ];
    for sql in forms {
        let run = office_sqlite3(&office, sql);
        assert_eq!(run.code, 0, "{sql}: {run:?}");
        let now = version(&office, "'assets'", "1");
        assert!(now > last, "{sql}: version {now} not above {last}");
        last = now;
    }
}

/// Foreign-key actions write the children through the tracking triggers too.
#[test]
fn foreign_key_actions_of_the_office_are_stamped() {
    let office = Office::new(10);
    office.execute_batch(
        "CREATE TABLE sites (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE visits (id TEXT PRIMARY KEY,
             site_id INTEGER REFERENCES sites (id) ON UPDATE CASCADE ON DELETE SET NULL,
             note TEXT);
         INSERT INTO sites VALUES (1, 'a'), (2, 'b');
         INSERT INTO visits VALUES ('v1', 1, 'x'), ('v2', 2, 'y');",
    );
    for t in ["sites", "visits"] {
        office.admin(&["table", "track", t], "").ok();
    }
    let v1 = version(&office, "'visits'", "'v1'");
    let v2 = version(&office, "'visits'", "'v2'");
    let run = office_sqlite3(&office, "UPDATE sites SET id = 10 WHERE id = 1");
    assert_eq!(run.code, 0, "{run:?}");
    let run = office_sqlite3(&office, "DELETE FROM sites WHERE id = 2");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        version(&office, "'visits'", "'v1'") > v1,
        "the cascaded update"
    );
    assert!(version(&office, "'visits'", "'v2'") > v2, "the SET NULL");
    assert_eq!(
        office.value("SELECT deleted FROM fieldsync_rows WHERE tbl = 'sites' AND pk = 1"),
        "1",
        "the old key is a tombstone"
    );
}
