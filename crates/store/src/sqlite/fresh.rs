//! The inserts of an upload whose keys the main database never tracked, found before
//! any entry is judged: their row now is none, known without reading it. A send of new
//! rows (a crew's day of inspections) read each key's tracking row one statement at a
//! time: 13% of the server's instructions over a send of new rows (BENCHMARKS.md,
//! "Inserts of keys never seen, known without a read").
//!
//! Known only where nothing but the upload's own writes can add a row while it is
//! integrated (the integration holds SQLite's write lock), and where those writes are
//! seen: the main database has no triggers but fieldsync's (an office trigger may
//! insert rows of any table, by any key); the key is stored as sent (an integer into
//! an INTEGER key, a text into a TEXT key, so no conversion can make it equal to
//! another entry's key); and no other insert of the upload, into the same table, has
//! the same key or a key that column converts. The entry that inserts a key is its
//! only entry of that key that the set answers for.

use fieldsync_proto::task::WriteOp;
use fieldsync_proto::wire::UploadEntry;
use fieldsync_proto::{ColumnType, Value};
use rusqlite::Transaction;

use super::table_info;
use super::tracking::tracking_trigger_names;
use crate::StoreError;
use crate::integrate::HashMap;

/// A key as SQLite orders it in `fieldsync_rows.pk`: of the one kind its table's key
/// column stores (integers by value, texts byte by byte, as BINARY compares them).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'e> {
    Integer(i64),
    Text(&'e str),
}

impl<'e> Key<'e> {
    /// A tracked key as read; `None` for a value of another kind.
    fn of(v: rusqlite::types::ValueRef<'e>) -> Option<Key<'e>> {
        match v {
            rusqlite::types::ValueRef::Integer(i) => Some(Key::Integer(i)),
            rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t).ok().map(Key::Text),
            _ => None,
        }
    }

    fn to_sql(self) -> rusqlite::types::Value {
        match self {
            Key::Integer(i) => rusqlite::types::Value::Integer(i),
            Key::Text(t) => rusqlite::types::Value::Text(t.to_string()),
        }
    }
}

/// The inserts of one table.
struct Inserts<'e> {
    /// The kind of value its key column stores (affinity).
    key_type: Option<ColumnType>,
    /// (entry, key); `None` once one insert's key is not stored as sent.
    keys: Option<Vec<(usize, Key<'e>)>>,
}

/// For each entry, whether it inserts a key the main database never tracked (see the
/// module's conditions); all `false` where they do not hold.
pub(super) fn fresh_inserts(
    tx: &Transaction<'_>,
    entries: &[UploadEntry],
) -> Result<Vec<bool>, StoreError> {
    let mut fresh = vec![false; entries.len()];
    let triggers: Vec<(String, String)> = tx
        .prepare_cached("SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if triggers
        .iter()
        .any(|(name, table)| !tracking_trigger_names(table).contains(name))
    {
        return Ok(fresh);
    }
    let mut tables: HashMap<&str, Inserts<'_>> = HashMap::default();
    for (i, e) in entries.iter().enumerate() {
        if e.op != WriteOp::Insert {
            continue;
        }
        if !tables.contains_key(e.table.as_str()) {
            let key_type = table_info(tx, &e.table)?
                .and_then(|info| info.column(&info.primary_key).map(|c| c.column_type));
            let keys =
                matches!(key_type, Some(ColumnType::Integer | ColumnType::Text)).then(Vec::new);
            tables.insert(&e.table, Inserts { key_type, keys });
        }
        let t = tables.get_mut(e.table.as_str()).expect("inserted above");
        let Some(keys) = &mut t.keys else { continue };
        let key = match (&e.key, t.key_type) {
            (Value::Integer(k), Some(ColumnType::Integer)) => Key::Integer(*k),
            (Value::Text(k), Some(ColumnType::Text)) => Key::Text(k),
            _ => {
                t.keys = None;
                continue;
            }
        };
        keys.push((i, key));
    }
    // The tracked keys between the upload's least and greatest, in order: at most
    // twice as many rows as the upload has keys, or the table is read key by key as
    // before (keys spread over a table of many rows, random texts say).
    let mut between = tx.prepare_cached(
        "SELECT pk FROM fieldsync_rows WHERE tbl = ?1 AND pk >= ?2 AND pk <= ?3 ORDER BY pk LIMIT ?4",
    )?;
    for (table, inserts) in &tables {
        let Some(keys) = &inserts.keys else { continue };
        let mut sorted: Vec<(Key<'_>, usize)> = keys.iter().map(|(i, k)| (*k, *i)).collect();
        sorted.sort_unstable();
        let (Some(least), Some(greatest)) = (sorted.first(), sorted.last()) else {
            continue;
        };
        let limit = 2 * sorted.len() as i64;
        let mut tracked = vec![false; sorted.len()];
        let mut rows = between.query(rusqlite::params![
            table,
            least.0.to_sql(),
            greatest.0.to_sql(),
            limit + 1
        ])?;
        let (mut seen, mut at) = (0i64, 0usize);
        while let Some(r) = rows.next()? {
            seen += 1;
            // A value of another kind (a real in an INTEGER key) equals no key sent.
            let Some(pk) = Key::of(r.get_ref(0)?) else {
                continue;
            };
            while at < sorted.len() && sorted[at].0 < pk {
                at += 1;
            }
            // Each key with its duplicates (all marked, none answered for below).
            let mut k = at;
            while k < sorted.len() && sorted[k].0 == pk {
                tracked[k] = true;
                k += 1;
            }
        }
        if seen > limit {
            continue;
        }
        for (j, (key, entry)) in sorted.iter().enumerate() {
            // A key inserted twice: neither is answered for.
            let twice = (j > 0 && sorted[j - 1].0 == *key)
                || sorted.get(j + 1).is_some_and(|(k, _)| k == key);
            fresh[*entry] = !tracked[j] && !twice;
        }
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use fieldsync_proto::Row;
    use fieldsync_testkit::TempDir;
    use rusqlite::Connection;

    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::{Schema, Tracking};

    fn insert(table: &str, key: Value) -> UploadEntry {
        UploadEntry {
            seq_first: 1,
            seq_last: 1,
            table: table.into(),
            key,
            op: WriteOp::Insert,
            base_version: None,
            user: "ana".into(),
            old: Row::new(),
            new: Row::new(),
        }
    }

    fn update(table: &str, key: Value) -> UploadEntry {
        UploadEntry {
            op: WriteOp::Update,
            base_version: Some(1),
            ..insert(table, key)
        }
    }

    /// A main database with `assets` (INTEGER key) and `notes` (TEXT key) tracked:
    /// assets 1..=10 (5 deleted since: a tombstone), notes `n-1` and `n-2`.
    fn main_db(dir: &TempDir) -> Connection {
        let path = dir.path().join("main.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE assets (id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);",
        )
        .unwrap();
        let store = SqliteStore::new(path.to_str().unwrap());
        store.init().unwrap();
        store.track_table("assets").unwrap();
        store.track_table("notes").unwrap();
        conn.execute_batch(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 10)
             INSERT INTO assets (id, name) SELECT i, 'a' FROM k;
             DELETE FROM assets WHERE id = 5;
             INSERT INTO notes VALUES ('n-1', 'x'), ('n-2', 'y');",
        )
        .unwrap();
        conn
    }

    fn fresh_of(conn: &mut Connection, entries: &[UploadEntry]) -> Vec<bool> {
        let tx = conn.transaction().unwrap();
        fresh_inserts(&tx, entries).unwrap()
    }

    /// New keys are known to have no row; a tracked key, a tombstone, an update, a
    /// key inserted twice are read as before.
    #[test]
    fn only_inserts_of_keys_never_tracked_are_known_without_a_read() {
        let dir = TempDir::new("fresh");
        let mut conn = main_db(&dir);
        let entries = [
            insert("assets", Value::Integer(11)),
            insert("assets", Value::Integer(3)),
            insert("assets", Value::Integer(5)),
            update("assets", Value::Integer(12)),
            insert("assets", Value::Integer(13)),
            insert("assets", Value::Integer(13)),
            insert("notes", Value::Text("n-3".into())),
            insert("notes", Value::Text("n-1".into())),
            insert("notes", Value::Text("n-10".into())),
        ];
        assert_eq!(
            fresh_of(&mut conn, &entries),
            [true, false, false, false, false, false, true, false, true]
        );
    }

    /// A key the column would convert (a text into an INTEGER key) could equal
    /// another entry's key once stored: none of that table's inserts is known; the
    /// other table's are.
    #[test]
    fn a_key_the_column_converts_leaves_its_tables_inserts_to_be_read() {
        let dir = TempDir::new("fresh");
        let mut conn = main_db(&dir);
        let entries = [
            insert("assets", Value::Integer(20)),
            insert("assets", Value::Text("20".into())),
            insert("notes", Value::Text("n-3".into())),
            insert("notes", Value::Integer(4)),
            insert("notes", Value::Text("n-4".into())),
        ];
        assert_eq!(fresh_of(&mut conn, &entries), [false; 5]);
        let entries = [
            insert("assets", Value::Integer(20)),
            insert("notes", Value::Text("n-3".into())),
        ];
        assert_eq!(fresh_of(&mut conn, &entries), [true, true]);
    }

    /// An office trigger may insert rows of any table while the upload is written:
    /// nothing is known without a read.
    #[test]
    fn an_office_trigger_anywhere_leaves_every_insert_to_be_read() {
        let dir = TempDir::new("fresh");
        let mut conn = main_db(&dir);
        conn.execute_batch(
            "CREATE TABLE log (v TEXT);
             CREATE TRIGGER office_log AFTER INSERT ON log BEGIN
                 INSERT INTO notes VALUES ('n-' || NEW.v, NULL); END;",
        )
        .unwrap();
        let entries = [
            insert("assets", Value::Integer(20)),
            insert("notes", Value::Text("n-3".into())),
        ];
        assert_eq!(fresh_of(&mut conn, &entries), [false, false]);
    }

    /// Keys spread among more tracked rows than twice their number are read one by
    /// one as before (the range holds too many rows to read them all); keys past the
    /// tracked ones are known.
    #[test]
    fn keys_among_many_tracked_rows_are_read_as_before() {
        let dir = TempDir::new("fresh");
        let mut conn = main_db(&dir);
        // Tracked 1..=10: new keys 0 and 11 span all ten tracked rows (> 2 × 2).
        let spread = [
            insert("assets", Value::Integer(0)),
            insert("assets", Value::Integer(11)),
        ];
        assert_eq!(fresh_of(&mut conn, &spread), [false, false]);
        let past = [
            insert("assets", Value::Integer(11)),
            insert("assets", Value::Integer(14)),
        ];
        assert_eq!(fresh_of(&mut conn, &past), [true, true]);
        // Around one tracked row: read, and the new one beside it known.
        let around = [
            insert("assets", Value::Integer(10)),
            insert("assets", Value::Integer(15)),
        ];
        assert_eq!(fresh_of(&mut conn, &around), [false, true]);
    }
}
