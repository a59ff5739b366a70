//! The SQL a replica carries so that any SQLite client's writes are checked and
//! journaled: per table, BEFORE triggers that refuse what the task forbids (and every
//! write once the generation is retired), AFTER triggers that append to the journal.

use std::path::Path;

use fieldsync_proto::ColumnType;
use fieldsync_proto::filter::{self, Dialect, Params};
use fieldsync_proto::task::WriteOp;
use fieldsync_proto::wire::{SliceHeader, TableSchema};

/// fieldsync's own tables in a replica.
pub const REPLICA_TABLES: &str = "
CREATE TABLE fieldsync_journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    pk NOT NULL,
    op TEXT NOT NULL,
    old TEXT,
    new TEXT,
    base_version INTEGER,
    user TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE fieldsync_base (tbl TEXT NOT NULL, pk NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
CREATE TABLE fieldsync_upload (upload_id TEXT PRIMARY KEY, max_seq INTEGER NOT NULL, n_entries INTEGER NOT NULL, body BLOB NOT NULL);
-- The row an INSERT is about to replace (REPLACE deletes without delete triggers),
-- from the BEFORE INSERT trigger to the AFTER INSERT trigger of the same row.
CREATE TABLE fieldsync_replaced (tbl TEXT NOT NULL, pk NOT NULL, old TEXT NOT NULL, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
-- Rows the device's own acknowledged send moved out of the slice: they stay until
-- the next download, and refuse further edits meanwhile.
CREATE TABLE fieldsync_left (tbl TEXT NOT NULL, pk NOT NULL, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
";

/// The integer keys this device may give new rows (`SliceHeader::key_blocks`), kept
/// in every replica that has a table taking them; `next` moves past each key used.
pub const KEY_TABLES: &str = "
CREATE TABLE IF NOT EXISTS fieldsync_keys (
    tbl TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    next INTEGER NOT NULL,
    PRIMARY KEY (tbl, first)
) WITHOUT ROWID;
-- The key the next insert without one gets, per table: what an app reads to give a
-- new parent row's key to its children before inserting them all.
CREATE VIEW IF NOT EXISTS fieldsync_next_keys AS
    SELECT tbl, min(next) AS next FROM fieldsync_keys WHERE next <= last GROUP BY tbl;
";

/// Whether the replica gives `t`'s new rows keys from the device's blocks: a table
/// that takes inserts with an integer key.
pub fn takes_block_keys(t: &TableSchema) -> bool {
    t.write.contains(&WriteOp::Insert)
        && t.columns
            .first()
            .is_some_and(|c| c.column_type == ColumnType::Integer)
}

/// The triggers that give a new row of `t` without a key the next key of the device's
/// blocks (an insert re-issued with the key, the keyless one dropped with
/// `RAISE(IGNORE)`), refuse it when the blocks are used up, and move the next key past
/// any key of a block an insert used. Created after the table's other triggers, so
/// SQLite runs the key's first.
fn key_triggers(t: &TableSchema, checks: &str) -> String {
    let table = quote(&t.name);
    let pk = quote(&t.primary_key);
    let tl = literal(&t.name);
    let name = |what: &str| quote(&format!("fieldsync_{}_{what}", t.name));
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
    let values: Vec<String> = t.columns[1..]
        .iter()
        .map(|c| format!("NEW.{}", quote(&c.name)))
        .collect();
    let next = format!("(SELECT min(next) FROM fieldsync_keys WHERE tbl = {tl} AND next <= last)");
    let values = std::iter::once(next.clone())
        .chain(values)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "CREATE TRIGGER {key} BEFORE INSERT ON {table} WHEN NEW.{pk} IS NULL AND {NOT_APPLYING} BEGIN {checks}
           {used_up} WHERE {next} IS NULL;
           INSERT INTO {table} ({cols}) VALUES ({values});
           SELECT RAISE(IGNORE); END;
         CREATE TRIGGER {used} AFTER INSERT ON {table} BEGIN
           UPDATE fieldsync_keys SET next = NEW.{pk} + 1
           WHERE tbl = {tl} AND NEW.{pk} BETWEEN first AND last AND next <= NEW.{pk}; END;",
        key = name("key"),
        used = name("key_used"),
        used_up = raise(&format!(
            "fieldsync: this device has used up the keys it was given for new {} rows; synchronize to get more",
            t.name
        )),
        cols = cols.join(", "),
    )
}

pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A column's value as JSON text (see `Value`'s JSON form): blobs as `{"blob": hex}`.
fn json_value(row: &str, col: &str) -> String {
    let c = format!("{row}.{}", quote(col));
    format!(
        "CASE typeof({c}) WHEN 'blob' THEN '{{\"blob\":\"' || lower(hex({c})) || '\"}}' ELSE json_quote({c}) END"
    )
}

fn json_key(col: &str) -> String {
    serde_json::to_string(col).expect("a string serializes")
}

/// `parts` joined by the binary operator `op` as a balanced tree of parenthesized
/// pairs: the expression's depth grows with the logarithm of the number of columns,
/// not with it, so tables of any width SQLite allows (2000 columns) stay far below
/// SQLite's expression depth limit (SQLITE_MAX_EXPR_DEPTH, 1000 by default) in every
/// SQLite client; no function takes more than two arguments (SQLITE_MAX_FUNCTION_ARG
/// is 127 in older builds).
fn balanced(parts: &[String], op: &str) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        _ => {
            let (l, r) = parts.split_at(parts.len() / 2);
            format!("({} {op} {})", balanced(l, op), balanced(r, op))
        }
    }
}

/// The whole row as a JSON object.
fn json_row(t: &TableSchema, row: &str) -> String {
    let parts: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let sep = if i == 0 { "" } else { "," };
            format!(
                "{} || {}",
                literal(&format!("{sep}{}:", json_key(&c.name))),
                json_value(row, &c.name)
            )
        })
        .collect();
    format!("'{{' || {} || '}}'", balanced(&parts, "||"))
}

/// The changed columns of an update as a JSON object, from `row` (OLD or NEW).
fn json_changed(t: &TableSchema, row: &str) -> String {
    let parts: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let q = quote(&c.name);
            format!(
                "CASE WHEN OLD.{q} IS NOT NEW.{q} THEN {} || {} ELSE '' END",
                literal(&format!(",{}:", json_key(&c.name))),
                json_value(row, &c.name)
            )
        })
        .collect();
    format!("'{{' || ltrim({}, ',') || '}}'", balanced(&parts, "||"))
}

const LOGIN: &str = "(SELECT value FROM fieldsync_replica WHERE key = 'login')";
/// The users the task was assigned to at the last download (a JSON array).
const ASSIGNED: &str = "(SELECT value FROM fieldsync_replica WHERE key = 'assigned')";
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

fn raise(msg: &str) -> String {
    format!("SELECT RAISE(ABORT, {})", literal(msg))
}

/// A random UUID (version 4) as SQL, the default key of tables that accept inserts.
pub const UUID_SQL: &str = "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || \
    substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || \
    substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))";

/// The device's own writes (taking the server's row after a send) pass untouched:
/// the flag is set and cleared inside the device's transaction, so no app sees it.
const NOT_APPLYING: &str =
    "(SELECT value FROM fieldsync_replica WHERE key = 'applying') IS NOT '1'";

/// The triggers of one replica table.
///
/// Every way SQLite can change a row goes through them: plain statements, `REPLACE`
/// and `INSERT OR REPLACE` (whose implicit delete fires no delete trigger: the BEFORE
/// INSERT trigger keeps the row about to be replaced, and the AFTER INSERT trigger
/// journals the replacement as the update, or the delete and insert, the task
/// allows, or refuses it), upserts (`ON CONFLICT DO UPDATE` runs the update
/// triggers), and delete then re-insert.
pub fn table_triggers(h: &SliceHeader, t: &TableSchema, link: &Path) -> String {
    let table = quote(&t.name);
    let pk = quote(&t.primary_key);
    let tl = literal(&t.name);
    let name = |what: &str| quote(&format!("fieldsync_{}_{what}", t.name));
    let retired = format!(
        "{} WHERE (SELECT value FROM fieldsync_replica WHERE key = 'retired') = '1';",
        raise(&format!(
            "fieldsync: this replica was replaced by a newer download; reopen {}",
            link.display()
        ))
    );
    // A user the task was not assigned to when it was downloaded (an offline login
    // of another user on the device) may not edit: the server would refuse it.
    let logged_out = format!(
        "{} WHERE {LOGIN} IS NULL; {} WHERE {ASSIGNED} IS NOT NULL AND json_array_length({ASSIGNED}) > 0 \
         AND {LOGIN} NOT IN (SELECT value FROM json_each({ASSIGNED}));",
        raise("fieldsync: log in on this device to edit"),
        raise(&format!(
            "fieldsync: the logged-in user is not assigned to task {}; log in as a user it is \
             assigned to, or ask the office to assign this one and synchronize",
            h.task
        ))
    );
    let may = |op: WriteOp| t.write.contains(&op);
    let refuse = |word: &str| {
        raise(&format!(
            "fieldsync: task {} does not allow {word} on table {}",
            h.task, t.name
        ))
    };
    let not_allowed = |op: WriteOp, word: &str| {
        if may(op) {
            String::new()
        } else {
            format!("{};", refuse(word))
        }
    };
    // `when`: a further condition the refusal needs (`1`: none).
    let left = |key: &str, when: &str| {
        format!(
            "{} WHERE {when} AND EXISTS (SELECT 1 FROM fieldsync_left WHERE tbl = {tl} AND pk = {key});",
            raise(&format!(
                "fieldsync: this {} row left the task's slice with your last send; it goes at the next download",
                t.name
            ))
        )
    };
    let replacing = format!("EXISTS (SELECT 1 FROM fieldsync_replaced WHERE tbl = {tl})");
    // The new row's checks hold for a plain insert; an insert replacing a row is the
    // update the task allows, or else a delete and an insert (checked as one).
    let when_new = if may(WriteOp::Update) {
        format!("NOT {replacing} AND ")
    } else {
        String::new()
    };
    let mut insert_checks = if may(WriteOp::Insert) {
        String::new()
    } else {
        format!("{} WHERE {when_new}1;", refuse("insert"))
    };
    if may(WriteOp::Insert) {
        if let Some(expr) = t.filter.as_deref().and_then(|f| filter::parse(f).ok()) {
            let params = Params {
                user: h.user.clone(),
                device: h.device.clone(),
            };
            // A decimal column holds its exact text; the filter compares it as a
            // number, so SQLite reads it as one (exact to 15 significant digits; the
            // server judges exactly).
            let column = |c: &str| {
                let decimal = t
                    .columns
                    .iter()
                    .any(|d| d.name == c && d.column_type == ColumnType::Decimal);
                if decimal {
                    format!("CAST(NEW.{} AS NUMERIC)", quote(c))
                } else {
                    format!("NEW.{}", quote(c))
                }
            };
            let cond = expr.to_sql_inline(Dialect::Sqlite, &column, &params);
            insert_checks.push_str(&format!(
                "{} WHERE {when_new}NOT coalesce(({cond}), 0);",
                raise(&format!(
                    "fieldsync: task {}: the new row is outside the slice of table {}",
                    h.task, t.name
                ))
            ));
        }
        if let Some(p) = &t.parent
            && let Some(parent) = h.tables.iter().find(|x| x.name == p.table)
        {
            let (pt, ppk, key) = (
                quote(&parent.name),
                quote(&parent.primary_key),
                quote(&p.key),
            );
            insert_checks.push_str(&format!(
                "{} WHERE {when_new}(NOT EXISTS (SELECT 1 FROM {pt} WHERE {pt}.{ppk} = NEW.{key})
                   OR EXISTS (SELECT 1 FROM fieldsync_left WHERE tbl = {ptl} AND pk = NEW.{key}));",
                raise(&format!(
                    "fieldsync: task {}: the parent {} row is not in the slice",
                    h.task, p.table
                )),
                ptl = literal(&parent.name),
            ));
        }
    }
    let base_of = |key: &str| {
        format!(
            "coalesce((SELECT version FROM fieldsync_base WHERE tbl = {tl} AND pk = {key}),
                      (SELECT CAST(value AS INTEGER) FROM fieldsync_replica WHERE key = 'cursor'))"
        )
    };
    // An insert is based on what the device knew of its parent row: the server tells a
    // parent the office moved out of the slice since (a conflict) from one that never
    // was the device's (forbidden).
    let insert_base = match t
        .parent
        .as_ref()
        .and_then(|p| h.tables.iter().find(|x| x.name == p.table).map(|x| (p, x)))
    {
        Some((p, parent)) => format!(
            "coalesce((SELECT version FROM fieldsync_base WHERE tbl = {} AND pk = NEW.{}),
                      (SELECT CAST(value AS INTEGER) FROM fieldsync_replica WHERE key = 'cursor'))",
            literal(&parent.name),
            quote(&p.key)
        ),
        None => "NULL".to_string(),
    };
    let any_change: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("OLD.{0} IS NOT NEW.{0}", quote(&c.name)))
        .collect();
    let journal = |op: &str, key: &str, old: &str, new: &str, base: &str, when: &str| {
        format!(
            "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
             SELECT {tl}, {key}, '{op}', {old}, {new}, {base}, {LOGIN}, {NOW} WHERE {when};"
        )
    };
    let replaced_row =
        format!("(SELECT old FROM fieldsync_replaced WHERE tbl = {tl} AND pk = NEW.{pk})");
    // What an INSERT that replaced a row journals.
    // An update where the task allows it, else the delete of the replaced row.
    let replaced_as = if may(WriteOp::Update) {
        Some(("update", json_row(t, "NEW")))
    } else if may(WriteOp::Delete) {
        Some(("delete", "NULL".to_string()))
    } else {
        None
    };
    let replacement = match replaced_as {
        Some((op, new)) => format!(
            "{}{}",
            left(&format!("NEW.{pk}"), &replacing),
            journal(
                op,
                &format!("NEW.{pk}"),
                &replaced_row,
                &new,
                &base_of(&format!("NEW.{pk}")),
                &replacing
            ),
        ),
        None => format!(
            "{} WHERE {replacing};",
            raise(&format!(
                "fieldsync: task {} allows neither update nor delete on table {}: an existing row cannot be replaced",
                h.task, t.name
            ))
        ),
    };
    // A replacement journaled as an update stands for the insert too; as a delete,
    // the insert follows it.
    let insert_when = if may(WriteOp::Update) {
        format!("NOT {replacing}")
    } else {
        "1".to_string()
    };
    let insert_journal = journal(
        "insert",
        &format!("NEW.{pk}"),
        "NULL",
        &json_row(t, "NEW"),
        &insert_base,
        &insert_when,
    );
    let keys = if takes_block_keys(t) {
        key_triggers(t, &format!("{retired} {logged_out}"))
    } else {
        String::new()
    };
    format!(
        "CREATE TRIGGER {bi} BEFORE INSERT ON {table} WHEN {NOT_APPLYING} BEGIN {retired} {logged_out}
           DELETE FROM fieldsync_replaced;
           INSERT INTO fieldsync_replaced (tbl, pk, old) SELECT {tl}, o.{pk}, {old_row} FROM {table} AS o WHERE o.{pk} = NEW.{pk};
           {insert_checks} END;
         CREATE TRIGGER {bu} BEFORE UPDATE ON {table} WHEN {NOT_APPLYING} BEGIN {retired} {logged_out} {update_checks}
           {left_old}
           {pk_change} WHERE OLD.{pk} IS NOT NEW.{pk}; END;
         CREATE TRIGGER {bd} BEFORE DELETE ON {table} WHEN {NOT_APPLYING} BEGIN {retired} {logged_out} {delete_checks} {left_old} END;
         CREATE TRIGGER {ai} AFTER INSERT ON {table} WHEN {NOT_APPLYING} BEGIN {replacement} {insert_journal}
           DELETE FROM fieldsync_replaced; END;
         CREATE TRIGGER {au} AFTER UPDATE ON {table} WHEN {NOT_APPLYING} AND ({changed}) BEGIN {j_update} END;
         CREATE TRIGGER {ad} AFTER DELETE ON {table} WHEN {NOT_APPLYING} BEGIN
           DELETE FROM fieldsync_replaced WHERE tbl = {tl} AND pk = OLD.{pk};
           {j_delete} END;
         {keys}",
        bi = name("before_insert"),
        bu = name("before_update"),
        bd = name("before_delete"),
        ai = name("journal_insert"),
        au = name("journal_update"),
        ad = name("journal_delete"),
        old_row = json_row(t, "o"),
        update_checks = not_allowed(WriteOp::Update, "update"),
        delete_checks = not_allowed(WriteOp::Delete, "delete"),
        left_old = left(&format!("OLD.{pk}"), "1"),
        pk_change = raise(&format!("fieldsync: primary-key values cannot be updated (table {})", t.name)),
        changed = balanced(&any_change, "OR"),
        j_update = journal("update", &format!("NEW.{pk}"), &json_changed(t, "OLD"), &json_changed(t, "NEW"), &base_of(&format!("OLD.{pk}")), "1"),
        j_delete = journal("delete", &format!("OLD.{pk}"), &json_row(t, "OLD"), "NULL", &base_of(&format!("OLD.{pk}")), "1"),
    )
}

#[cfg(test)]
mod tests {
    use fieldsync_proto::wire::{ColumnDef, KeyBlock};
    use rusqlite::Connection;

    use super::*;

    fn header() -> SliceHeader {
        let column = |name: &str, column_type| ColumnDef {
            name: name.into(),
            column_type,
        };
        SliceHeader {
            protocol: 1,
            epoch: "e".into(),
            task: "t".into(),
            task_hash: "h".into(),
            user: "ana".into(),
            device: "d".into(),
            tables: vec![TableSchema {
                name: "sites".into(),
                primary_key: "id".into(),
                columns: vec![
                    column("id", ColumnType::Integer),
                    column("name", ColumnType::Text),
                ],
                rows_estimate: 0,
                write: vec![WriteOp::Insert],
                filter: None,
                parent: None,
            }],
            since: None,
            full_reason: None,
            assigned: vec![],
            key_blocks: vec![KeyBlock {
                table: "sites".into(),
                first: 10,
                last: 12,
                next: 10,
            }],
            file_tables: vec![],
        }
    }

    /// A replica with the table, its triggers and a block of keys 10..=12.
    fn replica(h: &SliceHeader) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(REPLICA_TABLES).unwrap();
        c.execute_batch(KEY_TABLES).unwrap();
        c.execute_batch(
            "CREATE TABLE fieldsync_replica (key TEXT PRIMARY KEY, value);
             INSERT INTO fieldsync_replica VALUES ('login', 'ana');
             CREATE TABLE sites (id INT PRIMARY KEY NOT NULL, name TEXT);",
        )
        .unwrap();
        let b = &h.key_blocks[0];
        c.execute(
            "INSERT INTO fieldsync_keys VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![b.table, b.first, b.last, b.next],
        )
        .unwrap();
        c.execute_batch(&table_triggers(
            h,
            &h.tables[0],
            Path::new("replica.sqlite"),
        ))
        .unwrap();
        c
    }

    fn keys(c: &Connection, sql: &str) -> Vec<i64> {
        let mut stmt = c.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_keyless_insert_takes_the_blocks_next_key_until_they_run_out() {
        let h = header();
        let c = replica(&h);
        c.execute_batch(
            "INSERT INTO sites (name) VALUES ('a'); INSERT INTO sites VALUES (NULL, 'b');",
        )
        .unwrap();
        assert_eq!(keys(&c, "SELECT id FROM sites ORDER BY id"), vec![10, 11]);
        // Journaled once each, under their keys.
        assert_eq!(
            keys(
                &c,
                "SELECT pk FROM fieldsync_journal WHERE op = 'insert' ORDER BY seq"
            ),
            vec![10, 11]
        );
        assert_eq!(keys(&c, "SELECT next FROM fieldsync_next_keys"), vec![12]);
        c.execute_batch("INSERT INTO sites (name) VALUES ('c')")
            .unwrap();
        let err = c
            .execute_batch("INSERT INTO sites (name) VALUES ('d')")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("used up the keys") && err.contains("synchronize"),
            "{err}"
        );
        assert_eq!(keys(&c, "SELECT count(*) FROM sites"), vec![3]);
        assert_eq!(keys(&c, "SELECT count(*) FROM fieldsync_journal"), vec![3]);
    }

    #[test]
    fn an_explicit_key_of_the_block_moves_the_next_key_past_it() {
        let h = header();
        let c = replica(&h);
        c.execute_batch("INSERT INTO sites VALUES (11, 'given')")
            .unwrap();
        c.execute_batch("INSERT INTO sites (name) VALUES ('next')")
            .unwrap();
        assert_eq!(keys(&c, "SELECT id FROM sites ORDER BY id"), vec![11, 12]);
        // Logged out: the login message, not a key.
        c.execute_batch("UPDATE fieldsync_replica SET value = NULL WHERE key = 'login'")
            .unwrap();
        let err = c
            .execute_batch("INSERT INTO sites (name) VALUES ('x')")
            .unwrap_err()
            .to_string();
        assert!(err.contains("log in"), "{err}");
    }
}
