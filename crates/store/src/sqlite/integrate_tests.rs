//! The row reads of an upload stay index lookups however many rows the main database
//! tracks: the work SQLite does for one entry (its virtual machine's steps) does not
//! grow with the parent table.

use fieldsync_proto::filter::{self, Params};
use fieldsync_proto::task::TaskDef;
use fieldsync_testkit::TempDir;
use rusqlite::{Connection, StatementStatus};

use super::*;
use crate::integrate::TableCtx;
use crate::sqlite::tests::{
    assert_a_new_connection_to_the_file_at_the_path, initialised, mark, marked, put_a_copy_in_place,
};
use crate::{Schema, Tracking};

const TASK: &str = r#"
name = "plan"
[[tables]]
name = "assets"
filter = "region = 'north'"
[[tables]]
name = "inspections"
parent = { table = "assets", key = "asset_id" }
filter = "inspector = $user"
write = ["insert", "update"]
"#;

/// Steps of the current-row read of one inspection, with `assets` parents tracked.
fn steps_of_one_read(assets: i64) -> u64 {
    let dir = TempDir::new("plan");
    let path = dir.path().join("main.sqlite");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE assets (id INTEGER PRIMARY KEY, region TEXT NOT NULL);
         CREATE TABLE inspections (id TEXT PRIMARY KEY,
             asset_id INTEGER NOT NULL REFERENCES assets (id), inspector TEXT NOT NULL);",
    )
    .unwrap();
    let store = SqliteStore::new(path.to_str().unwrap());
    store.init().unwrap();
    store.track_table("assets").unwrap();
    store.track_table("inspections").unwrap();
    conn.execute(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
         INSERT INTO assets (id, region) SELECT i, 'north' FROM k",
        [assets],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO inspections VALUES ('i-1', ?1, 'ana')",
        [assets / 2],
    )
    .unwrap();

    let def = TaskDef::from_toml(TASK).unwrap();
    let task_table = def.table("inspections").unwrap();
    let info = table_info(&conn, "inspections").unwrap().unwrap();
    let t = TableCtx {
        task_table,
        columns: plan::slice_columns(task_table, &info),
        filter: Some(filter::parse(task_table.filter.as_deref().unwrap()).unwrap()),
        info,
    };
    let params = Params {
        user: "ana".into(),
        device: "tab1".into(),
    };
    let mut conn = conn;
    let tx = conn.transaction().unwrap();
    let mut q = current_query(&tx, &def, &t, &params).unwrap();
    let key = Value::Text("i-1".into());
    let row = read_current(&t, &mut q, &key, Some(0)).unwrap().unwrap();
    assert!(row.in_slice && row.left, "{row:?}");
    q.stmt.get_status(StatementStatus::VmStep) as u64
}

#[test]
fn reading_an_entrys_row_does_not_scan_the_parents_tracking_rows() {
    let (small, large) = (steps_of_one_read(10), steps_of_one_read(5_000));
    assert!(
        large < small + 50,
        "one read took {small} steps with 10 parents, {large} with 5,000"
    );
}

/// The integration's connection is kept for the next upload on the same thread, but
/// not across a file copied in place under the same path (its writes would go to the
/// old file), nor for another database, nor with a transaction left open on it.
#[test]
fn the_integrations_connection_is_kept_only_for_the_same_file() {
    let dir = TempDir::new("kept");
    let store = initialised(&dir, "main.sqlite");

    let (conn, file) = kept::take(&store).unwrap();
    mark(&conn);
    kept::give_back(&store, conn, file);
    let (conn, file) = kept::take(&store).unwrap();
    assert!(marked(&conn), "the same connection again");
    kept::give_back(&store, conn, file);

    // Another database on the same thread: a connection of its own.
    let other = initialised(&dir, "other.sqlite");
    let (conn, file) = kept::take(&other).unwrap();
    assert!(!marked(&conn), "another file's connection");
    kept::give_back(&other, conn, file);
    let (conn, file) = kept::take(&store).unwrap();
    assert!(!marked(&conn), "the first one was let go for the other");
    mark(&conn);
    kept::give_back(&store, conn, file);

    // A copy put in place of the file (a new inode under the same path).
    put_a_copy_in_place(&dir, &store);
    let (conn, file) = kept::take(&store).unwrap();
    assert_a_new_connection_to_the_file_at_the_path(&store, &conn);
    mark(&conn);

    // A file put in place while an upload holds the connection: not kept for it.
    kept::give_back(&store, conn, file);
    let (conn, file) = kept::take(&store).unwrap();
    assert!(marked(&conn), "kept while the file stays");
    put_a_copy_in_place(&dir, &store);
    kept::give_back(&store, conn, file);
    let (conn, file) = kept::take(&store).unwrap();
    assert_a_new_connection_to_the_file_at_the_path(&store, &conn);
    mark(&conn);

    // A transaction left open: not kept.
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    kept::give_back(&store, conn, file);
    let (conn, _) = kept::take(&store).unwrap();
    assert!(!marked(&conn), "a connection in a transaction is not kept");
    assert!(conn.is_autocommit());
}
