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
";

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
    format!("'{{' || {} || '}}'", parts.join(" || "))
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
    format!("'{{' || ltrim({}, ',') || '}}'", parts.join(" || "))
}

const LOGIN: &str = "(SELECT value FROM fieldsync_replica WHERE key = 'login')";
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

fn raise(msg: &str) -> String {
    format!("SELECT RAISE(ABORT, {})", literal(msg))
}

/// A random UUID (version 4) as SQL, the default key of tables that accept inserts.
pub const UUID_SQL: &str = "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || \
    substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || \
    substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))";

/// The triggers of one replica table.
pub fn table_triggers(h: &SliceHeader, t: &TableSchema, link: &Path) -> String {
    let table = quote(&t.name);
    let pk = quote(&t.primary_key);
    let name = |what: &str| quote(&format!("fieldsync_{}_{what}", t.name));
    let retired = format!(
        "{} WHERE (SELECT value FROM fieldsync_replica WHERE key = 'retired') = '1';",
        raise(&format!(
            "fieldsync: this replica was replaced by a newer download; reopen {}",
            link.display()
        ))
    );
    let logged_out = format!(
        "{} WHERE {LOGIN} IS NULL;",
        raise("fieldsync: log in on this device to edit")
    );
    let not_allowed = |op: WriteOp, word: &str| {
        if t.write.contains(&op) {
            String::new()
        } else {
            format!(
                "{};",
                raise(&format!(
                    "fieldsync: task {} does not allow {word} on table {}",
                    h.task, t.name
                ))
            )
        }
    };
    let mut insert_checks = not_allowed(WriteOp::Insert, "insert");
    if t.write.contains(&WriteOp::Insert) {
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
                "{} WHERE NOT coalesce(({cond}), 0);",
                raise(&format!(
                    "fieldsync: task {}: the new row is outside the slice of table {}",
                    h.task, t.name
                ))
            ));
        }
        if let Some(p) = &t.parent
            && let Some(parent) = h.tables.iter().find(|x| x.name == p.table)
        {
            insert_checks.push_str(&format!(
                "{} WHERE NOT EXISTS (SELECT 1 FROM {pt} WHERE {pt}.{ppk} = NEW.{key});",
                raise(&format!(
                    "fieldsync: task {}: the parent {} row is not in the slice",
                    h.task, p.table
                )),
                pt = quote(&parent.name),
                ppk = quote(&parent.primary_key),
                key = quote(&p.key)
            ));
        }
    }
    let base = format!(
        "coalesce((SELECT version FROM fieldsync_base WHERE tbl = {tl} AND pk = OLD.{pk}),
                  (SELECT CAST(value AS INTEGER) FROM fieldsync_replica WHERE key = 'cursor'))",
        tl = literal(&t.name)
    );
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
    let journal = |op: &str, key: &str, old: &str, new: &str, base: &str| {
        format!(
            "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
             VALUES ({}, {key}, '{op}', {old}, {new}, {base}, {LOGIN}, {NOW});",
            literal(&t.name)
        )
    };
    format!(
        "CREATE TRIGGER {bi} BEFORE INSERT ON {table} BEGIN {retired} {logged_out} {insert_checks} END;
         CREATE TRIGGER {bu} BEFORE UPDATE ON {table} BEGIN {retired} {logged_out} {update_checks}
           {pk_change} WHERE OLD.{pk} IS NOT NEW.{pk}; END;
         CREATE TRIGGER {bd} BEFORE DELETE ON {table} BEGIN {retired} {logged_out} {delete_checks} END;
         CREATE TRIGGER {ai} AFTER INSERT ON {table} BEGIN {j_insert} END;
         CREATE TRIGGER {au} AFTER UPDATE ON {table} WHEN {changed} BEGIN {j_update} END;
         CREATE TRIGGER {ad} AFTER DELETE ON {table} BEGIN {j_delete} END;",
        bi = name("before_insert"),
        bu = name("before_update"),
        bd = name("before_delete"),
        ai = name("journal_insert"),
        au = name("journal_update"),
        ad = name("journal_delete"),
        update_checks = not_allowed(WriteOp::Update, "update"),
        delete_checks = not_allowed(WriteOp::Delete, "delete"),
        pk_change = raise(&format!("fieldsync: primary-key values cannot be updated (table {})", t.name)),
        changed = any_change.join(" OR "),
        j_insert = journal("insert", &format!("NEW.{pk}"), "NULL", &json_row(t, "NEW"), &insert_base),
        j_update = journal("update", &format!("NEW.{pk}"), &json_changed(t, "OLD"), &json_changed(t, "NEW"), &base),
        j_delete = journal("delete", &format!("OLD.{pk}"), &json_row(t, "OLD"), "NULL", &base),
    )
}
