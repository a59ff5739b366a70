//! Change tracking on PostgreSQL: the statement triggers that record each row's
//! writing transaction, the check that a table's tracking is the current one, and the
//! table's description.

use fieldsync_proto::Value;
use fieldsync_proto::task::TaskDef;

use super::types::{self, Kind};
use super::{PgStore, in_tx, now};
use crate::Tracking;
use crate::plan::{quote_ident, quote_literal};
use crate::{ColumnInfo, Result, StoreError, TableInfo};

pub(crate) fn table_info(
    c: &mut impl postgres::GenericClient,
    table: &str,
) -> Result<Option<TableInfo>> {
    // Tables of the search path only (the organisation's schema), never fieldsync's.
    let Some(row) = c.query_opt(
        "SELECT c.oid, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = $1 AND c.relkind IN ('r', 'p') AND n.nspname = ANY (current_schemas(false))
           AND n.nspname <> 'fieldsync'
         ORDER BY array_position(current_schemas(false), n.nspname::name) LIMIT 1",
        &[&table],
    )?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let name: String = row.get(1);
    let rows = c.query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                coalesce(a.attnum = ANY (i.indkey::int2[]), false) AND i.indnatts = 1
         FROM pg_attribute a
         LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum",
        &[&oid],
    )?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut primary_key = String::new();
    for r in rows {
        let col: String = r.get(0);
        let declared: String = r.get(1);
        if r.get::<_, bool>(4) {
            primary_key = col.clone();
        }
        columns.push(ColumnInfo {
            column_type: types::kind(&declared)
                .map_or(fieldsync_proto::ColumnType::Text, Kind::column_type),
            name: col,
            declared_type: declared,
            not_null: r.get(2),
            has_default: r.get(3),
        });
    }
    let key_type = columns
        .iter()
        .find(|c| c.name == primary_key)
        .map(|c| c.declared_type.as_str())
        .unwrap_or_default();
    let tracked = tracking_intact(c, oid, &name, &primary_key, key_type)?;
    // The sequence behind a serial or identity key: where devices' blocks come from.
    let key_source = if matches!(key_type, "smallint" | "integer" | "bigint") {
        c.query_one(
            "SELECT pg_get_serial_sequence($1::oid::regclass::text, $2)",
            &[&oid, &primary_key],
        )?
        .get::<_, Option<String>>(0)
    } else {
        None
    };
    Ok(Some(TableInfo {
        name,
        primary_key,
        columns,
        tracked,
        key_source,
    }))
}

/// The statement triggers every tracked table has: name, event, `pg_trigger.tgtype`
/// (AFTER, FOR EACH STATEMENT, the event) and the transition tables they reference.
type TriggerShape = (
    &'static str,
    &'static str,
    i16,
    Option<&'static str>,
    Option<&'static str>,
);
const TRACKING_TRIGGERS: [TriggerShape; 4] = [
    ("fieldsync_ins", "INSERT", 4, None, Some("new_rows")),
    (
        "fieldsync_upd",
        "UPDATE",
        16,
        Some("old_rows"),
        Some("new_rows"),
    ),
    ("fieldsync_del", "DELETE", 8, Some("old_rows"), None),
    ("fieldsync_truncate", "TRUNCATE", 32, None, None),
];

/// The name (in schema `fieldsync`) of a table's trigger function: one function per
/// table, named by a digest of the table's name (names are limited to 63 bytes).
fn tracking_function(table: &str) -> String {
    format!("track_{}", &crate::sha256_hex(table)[..24])
}

/// The source (`pg_proc.prosrc`) of a table's trigger function as this build creates
/// it for the table's `watch`: what `table_info` compares the installed function with.
/// It records under the table's name, so a function left from before a rename is
/// stale.
///
/// Each statement's rows are stamped with its transaction; a write that may have moved
/// a row into or out of a slice also sets `moved`: a delete, a truncate, a key change,
/// or an update of a watched column (compared as text, so any change of value counts,
/// whatever the column's type and collation). A delta names a key gone only when its
/// `moved` transaction is one the cursor's snapshot does not see.
fn tracking_body(table: &str, primary_key: &str, key_type: &str, watch: &[String]) -> String {
    let pk = quote_ident(primary_key);
    let name_lit = quote_literal(table);
    let upsert = |source: &str, alias: &str, deleted: bool, moved: &str, rest: &str| {
        let key = types::key_text(&format!("{alias}.{pk}"), key_type);
        format!(
            "INSERT INTO fieldsync.rows (tbl, pk, xid, deleted, moved)
             SELECT {name_lit}, {key}, pg_current_xact_id(), {deleted}, {moved} FROM {source} {alias} {rest}
             ON CONFLICT (tbl, pk) DO UPDATE SET xid = excluded.xid, deleted = {deleted},
                 moved = coalesce(excluded.moved, fieldsync.rows.moved);"
        )
    };
    let inserted = upsert("new_rows", "n", false, "NULL::xid8", "");
    // An updated row moved when a watched column changed. A key new to the table is
    // not a move: a device held it only if it was deleted or rekeyed since, which
    // set its `moved` then (kept by the upsert).
    let changed: Vec<String> = watch
        .iter()
        .map(|c| {
            let c = quote_ident(c);
            format!("o.{c}::text IS DISTINCT FROM n.{c}::text")
        })
        .collect();
    let moved_by_update = if changed.is_empty() {
        "NULL::xid8".to_string()
    } else {
        format!(
            "CASE WHEN o.{pk} IS NOT NULL AND ({}) THEN pg_current_xact_id() END",
            changed.join(" OR ")
        )
    };
    let join = format!("LEFT JOIN old_rows o ON o.{pk} = n.{pk}");
    let mut updated = upsert("new_rows", "n", false, &moved_by_update, &join);
    if !changed.is_empty() {
        // A watched column dropped or renamed by the office since: every updated row
        // counts as moved (one subtransaction per statement, not per row), and the
        // office's writes go on.
        let every = upsert("new_rows", "n", false, "pg_current_xact_id()", &join);
        updated = format!(
            "BEGIN
                 {updated}
             EXCEPTION WHEN undefined_column THEN
                 {every}
             END;"
        );
    }
    // A key change retires the old key (a tombstone).
    let rekeyed = upsert(
        "old_rows",
        "o",
        true,
        "pg_current_xact_id()",
        &format!("WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.{pk} = o.{pk})"),
    );
    let deleted = upsert("old_rows", "o", true, "pg_current_xact_id()", "");
    format!(
        "
         BEGIN
             IF TG_OP = 'INSERT' THEN
                 {inserted}
             ELSIF TG_OP = 'UPDATE' THEN
                 {rekeyed}
                 {updated}
             ELSIF TG_OP = 'DELETE' THEN
                 {deleted}
             ELSIF TG_OP = 'TRUNCATE' THEN
                 UPDATE fieldsync.rows SET xid = pg_current_xact_id(), deleted = true,
                     moved = pg_current_xact_id()
                 WHERE tbl = {name_lit} AND NOT deleted;
             END IF;
             RETURN NULL;
         END
         "
    )
}

/// `CREATE OR REPLACE FUNCTION` of a table's trigger function for `watch`.
fn function_sql(table: &str, primary_key: &str, key_type: &str, watch: &[String]) -> String {
    let function = format!("fieldsync.{}", quote_ident(&tracking_function(table)));
    // A dollar-quote tag no table name can end the body with.
    let tag = format!("$fs{}$", crate::random_hex(6));
    let body = tracking_body(table, primary_key, key_type, watch);
    format!(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {tag}{body}{tag};"
    )
}

/// The watch recorded with a table's tracking (none for a table not tracked).
fn recorded_watch(c: &mut impl postgres::GenericClient, table: &str) -> Result<Vec<String>> {
    match c.query_opt(
        "SELECT watch FROM fieldsync.tracked WHERE name = $1",
        &[&table],
    )? {
        None => Ok(Vec::new()),
        Some(r) => serde_json::from_str(r.get::<_, &str>(0))
            .map_err(|e| StoreError::Db(format!("the watch of `{table}` is unreadable: {e}"))),
    }
}

/// The stored tasks, read once for every table a change rewatches
/// ([`crate::plan::watch_columns`]).
fn stored_tasks(c: &mut impl postgres::GenericClient) -> Result<Vec<TaskDef>> {
    let jsons: Vec<String> = c
        .query("SELECT definition FROM fieldsync.tasks", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    crate::plan::stored_tasks(jsons)
}

/// Replaces `info`'s trigger function by the current one for `watch` (the triggers
/// call it by name) and records the watch.
fn install_function(
    c: &mut impl postgres::GenericClient,
    info: &TableInfo,
    watch: &[String],
) -> Result<()> {
    let key_type = key_type_of(info);
    c.batch_execute(&function_sql(
        &info.name,
        &info.primary_key,
        &key_type,
        watch,
    ))?;
    c.execute(
        "UPDATE fieldsync.tracked SET watch = $2 WHERE name = $1",
        &[
            &info.name,
            &serde_json::to_string(watch).expect("a list of names"),
        ],
    )?;
    Ok(())
}

fn key_type_of(info: &TableInfo) -> String {
    info.column(&info.primary_key)
        .map(|c| c.declared_type.clone())
        .unwrap_or_default()
}

/// Sets every tracked table's watch to what the stored tasks filter and link parents
/// by, in the caller's transaction, after a task was stored or deleted (as on SQLite:
/// a column joining the watch counts every earlier write as a move).
pub(crate) fn rewatch(c: &mut impl postgres::GenericClient) -> Result<()> {
    let tables: Vec<String> = c
        .query("SELECT name FROM fieldsync.tracked ORDER BY name", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tasks = stored_tasks(c)?;
    for table in tables {
        let Some(info) = table_info(c, &table)? else {
            continue;
        };
        if !info.tracked {
            continue;
        }
        let before = recorded_watch(c, &info.name)?;
        let watch = crate::plan::watch_columns(&tasks, &info)?;
        if watch == before {
            continue;
        }
        if watch.iter().any(|col| !before.contains(col)) {
            c.execute(
                "UPDATE fieldsync.rows SET moved = xid WHERE tbl = $1 AND moved IS DISTINCT FROM xid",
                &[&info.name],
            )?;
        }
        install_function(c, &info, &watch)?;
    }
    Ok(())
}

/// Trigger functions of an older fieldsync put right where the table's triggers are
/// all in place (the upgrade of `init`): the transactions they recorded stay good, so
/// no row is stamped anew; rows recorded before `moved` existed count as moved.
pub(crate) fn renew_functions(c: &mut impl postgres::GenericClient) -> Result<()> {
    let tables: Vec<String> = c
        .query("SELECT name FROM fieldsync.tracked ORDER BY name", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let names: Vec<&str> = TRACKING_TRIGGERS.iter().map(|t| t.0).collect();
    let tasks = stored_tasks(c)?;
    for table in tables {
        let Some(info) = table_info(c, &table)? else {
            continue;
        };
        if info.tracked || info.primary_key.is_empty() {
            continue;
        }
        let present: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
                 WHERE tg.tgrelid = $1::text::regclass AND tg.tgname::text = ANY ($2)
                   AND p.pronamespace = 'fieldsync'::regnamespace AND p.proname::text = $3",
                &[
                    &quote_ident(&info.name),
                    &names,
                    &tracking_function(&info.name),
                ],
            )?
            .get(0);
        if present != names.len() as i64 {
            continue;
        }
        let watch = crate::plan::watch_columns(&tasks, &info)?;
        install_function(c, &info, &watch)?;
    }
    Ok(())
}

/// The trigger function and triggers that track a table: a function of its own with
/// static SQL (PL/pgSQL caches its plans; a shared function would have to build the
/// SQL per statement, three times slower per office statement), and statement
/// triggers with transition tables: one upsert per office statement, not per row.
fn tracking_sql(table: &str, primary_key: &str, key_type: &str, watch: &[String]) -> String {
    let t = quote_ident(table);
    let function = format!("fieldsync.{}", quote_ident(&tracking_function(table)));
    let mut sql = function_sql(table, primary_key, key_type, watch);
    for (name, event, _, old, new) in TRACKING_TRIGGERS {
        let mut referencing = String::new();
        if let Some(o) = old {
            referencing.push_str(&format!(" OLD TABLE AS {o}"));
        }
        if let Some(n) = new {
            referencing.push_str(&format!(" NEW TABLE AS {n}"));
        }
        if !referencing.is_empty() {
            referencing = format!(" REFERENCING{referencing}");
        }
        sql.push_str(&format!(
            "\nCREATE TRIGGER {} AFTER {event} ON {t}{referencing} FOR EACH STATEMENT EXECUTE FUNCTION {function}();",
            quote_ident(name)
        ));
    }
    sql
}

/// Whether a table's tracking is in place: recorded under its name with its primary
/// key, and on the table itself (by oid) the four triggers, enabled, calling the
/// function this build would create now (its source compared). One query, as
/// `table_info` runs per download and per upload.
fn tracking_intact(
    c: &mut impl postgres::GenericClient,
    oid: u32,
    table: &str,
    primary_key: &str,
    key_type: &str,
) -> Result<bool> {
    if primary_key.is_empty() {
        return Ok(false);
    }
    let names: Vec<&str> = TRACKING_TRIGGERS.iter().map(|t| t.0).collect();
    let kinds: Vec<i16> = TRACKING_TRIGGERS.iter().map(|t| t.2).collect();
    let olds: Vec<&str> = TRACKING_TRIGGERS
        .iter()
        .map(|t| t.3.unwrap_or_default())
        .collect();
    let news: Vec<&str> = TRACKING_TRIGGERS
        .iter()
        .map(|t| t.4.unwrap_or_default())
        .collect();
    // The recorded watch (NULL when the table is not recorded), the triggers of the
    // right shape calling the table's function, and that function's source, which
    // must be what this build makes for the watch.
    let row = c.query_one(
        "SELECT (SELECT watch FROM fieldsync.tracked WHERE name = $2 AND primary_key = $3),
                (SELECT count(*) FROM pg_trigger tg
                 JOIN unnest($5::text[], $6::int2[], $7::text[], $8::text[]) AS w (name, kind, old_rows, new_rows)
                   ON tg.tgname::text = w.name AND tg.tgtype = w.kind
                  AND coalesce(tg.tgoldtable::text, '') = w.old_rows
                  AND coalesce(tg.tgnewtable::text, '') = w.new_rows
                 JOIN pg_proc p ON p.oid = tg.tgfoid
                 WHERE tg.tgrelid = $1 AND tg.tgenabled IN ('O', 'A') AND tg.tgnargs = 0
                   AND p.pronamespace = 'fieldsync'::regnamespace AND p.proname::text = $4
                   AND p.pronargs = 0),
                (SELECT prosrc FROM pg_proc WHERE pronamespace = 'fieldsync'::regnamespace
                   AND proname::text = $4 AND pronargs = 0)",
        &[
            &oid,
            &table,
            &primary_key,
            &tracking_function(table),
            &names,
            &kinds,
            &olds,
            &news,
        ],
    )?;
    let (Some(watch), 4, Some(source)) = (
        row.get::<_, Option<&str>>(0),
        row.get::<_, i64>(1),
        row.get::<_, Option<&str>>(2),
    ) else {
        return Ok(false);
    };
    let watch: Vec<String> = serde_json::from_str(watch)
        .map_err(|e| StoreError::Db(format!("the watch of `{table}` is unreadable: {e}")))?;
    Ok(source == tracking_body(table, primary_key, key_type, &watch))
}

impl Tracking for PgStore {
    fn table_info(&self, table: &str) -> Result<Option<TableInfo>> {
        table_info(&mut *self.conn()?, table)
    }

    fn track_table(&self, table: &str) -> Result<TableInfo> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            tx.execute("SELECT pg_advisory_xact_lock(7366836482672)", &[])?;
            let info = table_info(tx, table)?.ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no table `{}` in the main database",
                    table.escape_debug()
                ))
            })?;
            if info.primary_key.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "table `{}` cannot be tracked: it needs a single-column primary key",
                    info.name
                )));
            }
            let unsupported: Vec<String> = info
                .columns
                .iter()
                .filter(|c| types::kind(&c.declared_type).is_none())
                .map(|c| format!("`{}` ({})", c.name, c.declared_type))
                .collect();
            if !unsupported.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "table `{}` cannot be tracked: column {} of a type fieldsync does not carry \
                     (supported: integer types, numeric, real/double precision, text/varchar/char, \
                     boolean, date/time/timestamp, uuid, bytea, json/jsonb)",
                    info.name,
                    unsupported.join(", ")
                )));
            }
            if info.tracked {
                return Ok(info);
            }
            // Missing or stale tracking (first time, a table rebuilt or renamed since, an
            // older fieldsync's function): whatever fieldsync triggers the table has go
            // (after a rename they still call the function recording under the old
            // name), the current ones come, and every row is stamped anew, so changes
            // made while nothing stamped them count as changed for every device
            // (compared by value, never overwritten silently).
            let oid: u32 = tx
                .query_one(
                    "SELECT $1::text::regclass::oid",
                    &[&quote_ident(&info.name)],
                )?
                .get(0);
            let stale = tx.query(
                "SELECT tg.tgname::text, tg.tgfoid, p.proname::text FROM pg_trigger tg
                 JOIN pg_proc p ON p.oid = tg.tgfoid
                 WHERE tg.tgrelid = $1 AND NOT tg.tgisinternal
                   AND (tg.tgname LIKE 'fieldsync\\_%' OR p.pronamespace = 'fieldsync'::regnamespace)",
                &[&oid],
            )?;
            let t = quote_ident(&info.name);
            let mut functions: Vec<(u32, String)> = Vec::new();
            for r in &stale {
                let name: String = r.get(0);
                tx.batch_execute(&format!("DROP TRIGGER {} ON {t}", quote_ident(&name)))?;
                let f = (r.get(1), r.get(2));
                if !functions.contains(&f) {
                    functions.push(f);
                }
            }
            // A function no trigger calls any more goes too, with the bookkeeping of
            // the name it recorded under (the table's old name after a rename).
            let current = tracking_function(&info.name);
            let recorded: Vec<String> = tx
                .query("SELECT name FROM fieldsync.tracked", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for (foid, proname) in functions {
                if proname == current {
                    continue;
                }
                let unused: bool = tx
                    .query_one(
                        "SELECT NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = $1)
                            AND EXISTS (SELECT 1 FROM pg_proc WHERE oid = $1
                                        AND pronamespace = 'fieldsync'::regnamespace)",
                        &[&foid],
                    )?
                    .get(0);
                if !unused {
                    continue;
                }
                tx.batch_execute(&format!(
                    "DROP FUNCTION fieldsync.{}()",
                    quote_ident(&proname)
                ))?;
                for old in recorded.iter().filter(|n| tracking_function(n) == proname) {
                    tx.execute("DELETE FROM fieldsync.tracked WHERE name = $1", &[old])?;
                }
            }
            let key_type = key_type_of(&info);
            let watch = crate::plan::watch_columns(&stored_tasks(tx)?, &info)?;
            let sql = tracking_sql(&info.name, &info.primary_key, &key_type, &watch);
            tx.batch_execute(&sql)?;
            // Every row stamped anew counts as moved: a device's next delta names every
            // key outside its slice once.
            let key = types::key_text(&format!("s.{}", quote_ident(&info.primary_key)), &key_type);
            tx.execute(
                &format!(
                    "INSERT INTO fieldsync.rows (tbl, pk, xid, deleted, moved)
                     SELECT $1, {key}, pg_current_xact_id(), false, pg_current_xact_id() FROM {t} s
                     ON CONFLICT (tbl, pk) DO UPDATE SET xid = excluded.xid, deleted = false,
                         moved = excluded.moved"
                ),
                &[&info.name],
            )?;
            // Rows deleted while nothing stamped them leave tombstones now.
            tx.execute(
                &format!(
                    "UPDATE fieldsync.rows r SET xid = pg_current_xact_id(), deleted = true,
                         moved = pg_current_xact_id()
                     WHERE r.tbl = $1 AND NOT r.deleted
                       AND NOT EXISTS (SELECT 1 FROM {t} s WHERE {key} = r.pk)"
                ),
                &[&info.name],
            )?;
            tx.execute(
                "INSERT INTO fieldsync.tracked (name, primary_key, tracked_at, watch) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET primary_key = excluded.primary_key,
                     tracked_at = excluded.tracked_at, watch = excluded.watch",
                &[
                    &info.name,
                    &info.primary_key,
                    &now(),
                    &serde_json::to_string(&watch).expect("a list of names"),
                ],
            )?;
            Ok(TableInfo {
                tracked: true,
                ..info
            })
        })
    }

    /// The id of the last transaction that wrote the row (a version only equality
    /// can compare; see the module comment).
    fn row_version(&self, table: &str, key: &Value) -> Result<Option<(i64, bool)>> {
        let mut c = self.conn()?;
        Ok(c.query_opt(
            "SELECT xid::text::int8, deleted FROM fieldsync.rows WHERE tbl = $1 AND pk = $2",
            &[&table, &types::text_of(key)],
        )?
        .map(|r| (r.get(0), r.get(1))))
    }
}
