//! Integrating an upload into a SQLite main database: one IMMEDIATE transaction checks
//! every entry, applies what `conflict::decide` says, logs conflicts and records the
//! upload id, or rolls everything back when any entry is forbidden.

use std::collections::{BTreeMap, HashMap};

use fieldsync_proto::Value;
use fieldsync_proto::conflict::{self, ConflictNote, Current, Decision, Write};
use fieldsync_proto::filter::{self, Dialect, Expr, Params};
use fieldsync_proto::task::{TaskTable, WriteOp};
use fieldsync_proto::wire::{NewVersion, Upload, UploadEntry, UploadOutcome};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{SqliteStore, table_info, to_sql_value};
use crate::plan::{self, quote_ident};
use crate::{IntegrateContext, IntegrateError, StoreError, TableInfo};

/// What integration needs to know about one table of the task.
struct TableCtx<'t> {
    task_table: &'t TaskTable,
    info: TableInfo,
    columns: Vec<String>,
    filter: Option<Expr>,
}

fn value_of(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef as R;
    match v {
        R::Null => Value::Null,
        R::Integer(i) => Value::Integer(i),
        R::Real(r) => Value::Real(r),
        R::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_string()),
            Err(_) => Value::Blob(t.to_vec()),
        },
        R::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn op_name(op: WriteOp) -> &'static str {
    match op {
        WriteOp::Insert => "insert",
        WriteOp::Update => "update",
        WriteOp::Delete => "delete",
    }
}

/// Names an entry in refusals: its position, operation, table and key.
fn entry_label(i: usize, e: &UploadEntry) -> String {
    format!(
        "entry {} ({} of `{}` key {}, journal #{})",
        i + 1,
        op_name(e.op),
        e.table,
        serde_json::to_string(&e.key).unwrap_or_default(),
        e.seq_first
    )
}

/// The entry a refusal names; built only when refusing (the hot path never formats).
struct Label<'a>(usize, &'a UploadEntry);

fn forbidden(label: &Label<'_>, why: impl std::fmt::Display) -> IntegrateError {
    IntegrateError::Forbidden(format!("{}: {why}", entry_label(label.0, label.1)))
}

pub(super) fn integrate(
    store: &SqliteStore,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    let mut conn = store.conn()?;
    conn.set_prepared_statement_cache_capacity(256);
    // Statement journals (each write with triggers may need a partial rollback) and a
    // large transaction's pages stay in memory instead of temp-file writes.
    conn.execute_batch("PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536;")?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let recorded: Option<(String, String)> = tx
        .query_row(
            "SELECT device, outcome FROM fieldsync_uploads WHERE upload_id = ?1",
            [&upload.upload_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((device, outcome)) = recorded {
        if device != ctx.device {
            return Err(IntegrateError::Forbidden(
                "the upload id belongs to another device".into(),
            ));
        }
        let mut outcome: UploadOutcome = serde_json::from_str(&outcome)
            .map_err(|e| StoreError::Db(format!("recorded outcome unreadable: {e}")))?;
        outcome.repeated = true;
        return Ok(outcome);
    }

    let def = &ctx.task.def;
    let mut tables: HashMap<&str, TableCtx<'_>> = HashMap::new();
    for t in &def.tables {
        let info = table_info(&tx, &t.name)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", t.name)))?;
        let columns = plan::slice_columns(t, &info);
        let filter = t
            .filter
            .as_deref()
            .map(filter::parse)
            .transpose()
            .map_err(|e| StoreError::Db(e.to_string()))?;
        tables.insert(
            t.name.as_str(),
            TableCtx {
                task_table: t,
                info,
                columns,
                filter,
            },
        );
    }
    let mut user_ok: HashMap<&str, bool> = HashMap::new();
    let mut queries: HashMap<(&str, &str), (CurrentQuery, Params)> = HashMap::new();
    let mut write_sql = WriteSql::default();
    let mut parents = ParentSlices::default();
    let parent_tables: std::collections::HashSet<&str> = def
        .tables
        .iter()
        .filter_map(|t| t.parent.as_ref().map(|p| p.table.as_str()))
        .collect();
    let mut outcome = UploadOutcome {
        upload_id: upload.upload_id.clone(),
        applied: 0,
        conflicts: 0,
        versions: Vec::with_capacity(upload.entries.len()),
        repeated: false,
    };
    for (i, e) in upload.entries.iter().enumerate() {
        let label = Label(i, e);
        let t = tables.get(e.table.as_str()).ok_or_else(|| {
            forbidden(
                &label,
                format!("table `{}` is not in task `{}`", e.table, def.name),
            )
        })?;
        if !t.task_table.write.contains(&e.op) {
            return Err(forbidden(
                &label,
                format!(
                    "task `{}` does not allow {} on table `{}`",
                    def.name,
                    op_name(e.op),
                    e.table
                ),
            ));
        }
        for col in e.new.keys().chain(e.old.keys()) {
            if !t.columns.contains(col) {
                return Err(forbidden(
                    &label,
                    format!("column `{col}` is not in the task"),
                ));
            }
        }
        let pk = &t.info.primary_key;
        if e.op == WriteOp::Update && e.new.contains_key(pk) {
            return Err(forbidden(&label, "primary-key values cannot be updated"));
        }
        if e.op == WriteOp::Insert && !e.new.get(pk).is_some_and(|k| k.same(&e.key)) {
            return Err(forbidden(&label, "an insert must carry its key"));
        }
        let assigned = *user_ok.entry(e.user.as_str()).or_insert_with(|| {
            ctx.task.users.contains(&e.user) && super::user_enabled(&tx, &e.user).unwrap_or(false)
        });
        if !assigned {
            return Err(forbidden(
                &label,
                format!(
                    "user `{}` is not assigned to task `{}` (or is disabled)",
                    e.user, def.name
                ),
            ));
        }
        let key = (e.table.as_str(), e.user.as_str());
        if let std::collections::hash_map::Entry::Vacant(slot) = queries.entry(key) {
            let params = Params {
                user: e.user.clone(),
                device: ctx.device.to_string(),
            };
            let q = current_query(&tx, def, t, &params)?;
            slot.insert((q, params));
        }
        let (query, params) = &queries[&key];
        let current = read_current(&tx, t, query, &e.key)?;
        let insert_in_slice = e.op == WriteOp::Insert
            && t.filter.as_ref().is_none_or(|f| {
                f.matches(&|c| e.new.get(c).cloned().unwrap_or(Value::Null), params)
            });
        let decision = conflict::decide(
            e,
            current.as_ref(),
            insert_in_slice,
            t.task_table.conflict,
            pk,
        );
        let (write, note) = match decision {
            Decision::Forbidden(why) => return Err(forbidden(&label, why)),
            Decision::Apply(w, n) => (Some(w), n),
            Decision::Skip(n) => (None, n),
        };
        // The device's row equals the main database's row after the write only when
        // nobody changed the row since the device's base: only then is the new
        // version the device's base. Otherwise it keeps its base, and its next edit is
        // judged against the office's change again.
        let base = e.base_version.unwrap_or(i64::MIN);
        let clean = note.is_none() && current.as_ref().is_none_or(|c| c.version <= base);
        // The row's own filter was checked in `decide`; its parent chain is the
        // database's to judge, before the row is written.
        let (write, note) = match (&write, &t.task_table.parent) {
            (Some(Write::Insert(row)), Some(p)) => {
                let parent_key = row.get(&p.key).unwrap_or(&Value::Null);
                let (inside, parent_version) =
                    parents.check(&tx, def, &p.table, params, parent_key)?;
                if inside {
                    (write, note)
                } else if e.base_version.is_some_and(|base| parent_version > base) {
                    // The office moved the parent out of the slice after the device
                    // saw it: the new row is logged, not applied.
                    let lost = ConflictNote {
                        kind: "left-slice",
                        resolution: "not-applied",
                        device: e.new.clone(),
                        server: Default::default(),
                    };
                    (None, Some(lost))
                } else {
                    return Err(forbidden(
                        &label,
                        format!("the parent `{}` row is not in the task's slice", p.table),
                    ));
                }
            }
            _ => (write, note),
        };
        let clean = clean && write.is_some();
        let mut version = None;
        if let Some(w) = &write {
            apply(&tx, &mut write_sql, &t.info, &e.key, w)
                .map_err(|err| forbidden(&label, format!("the main database refused it: {err}")))?;
            outcome.applied += 1;
            if parent_tables.contains(e.table.as_str()) {
                parents.forget();
            }
            match w {
                // One meaning of the slice: the database's own evaluation, parents included.
                // The row's own filter was checked in `decide`; its parent chain is
                // the database's to judge.
                Write::Insert(_) => {
                    if clean {
                        version = Some(highest_version(&tx)?);
                    }
                }
                // The write just stamped the highest version there is.
                Write::Update(_) if clean => version = Some(highest_version(&tx)?),
                Write::Update(_) | Write::Delete => {}
            }
        }
        if let Some(n) = &note {
            log_conflict(&tx, ctx, e, t, n, current.as_ref().map(|c| c.version))?;
            outcome.conflicts += 1;
        }
        outcome.versions.push(NewVersion {
            table: e.table.clone(),
            key: e.key.clone(),
            version,
        });
    }
    tx.execute(
        "INSERT INTO fieldsync_uploads (upload_id, device, user, task, outcome, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![upload.upload_id, ctx.device, ctx.sender, def.name, serde_json::to_string(&outcome).expect("serializes"), ctx.at],
    )?;
    tx.commit()?;
    Ok(outcome)
}

/// The query that reads an entry's row for one table and user, and its binds.
struct CurrentQuery {
    sql: String,
    binds: Vec<Value>,
}

fn current_query(
    tx: &Transaction<'_>,
    def: &fieldsync_proto::task::TaskDef,
    t: &TableCtx<'_>,
    params: &Params,
) -> Result<CurrentQuery, IntegrateError> {
    let mut binds = Vec::new();
    let cond = plan::slice_condition(
        def,
        t.task_table,
        params,
        Dialect::Sqlite,
        &mut binds,
        &|name| table_info(tx, name),
        true,
    )?;
    let table = quote_ident(&t.info.name);
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("{table}.{}", quote_ident(c)))
        .collect();
    let slice_version = ancestor_versions(tx, def, t.task_table)?
        .into_iter()
        .fold("r.version".to_string(), |acc, v| {
            format!("max({acc}, coalesce({v}, 0))")
        });
    let sql = format!(
        "SELECT r.version, r.deleted, CASE WHEN {table}.{pk} IS NULL THEN 0 ELSE ({cond}) END, {slice_version}, {cols}
         FROM fieldsync_rows r LEFT JOIN {table} ON {table}.{pk} = r.pk
         WHERE r.tbl = ? AND r.pk = ?",
        pk = quote_ident(&t.info.primary_key),
        cols = cols.join(", ")
    );
    binds.push(Value::Text(t.info.name.clone()));
    Ok(CurrentQuery { sql, binds })
}

/// SQL expressions for the row versions of a table's parent chain, for the row joined
/// as the table itself: its parent's version, the grandparent's, and so on.
fn ancestor_versions(
    tx: &Transaction<'_>,
    def: &fieldsync_proto::task::TaskDef,
    t: &TaskTable,
) -> Result<Vec<String>, IntegrateError> {
    let mut out = Vec::new();
    let mut child = t;
    // The SQL that yields the current ancestor's key.
    let mut key_sql = String::new();
    while let Some(p) = &child.parent {
        let parent = def.table(&p.table).expect("checked: parent is in the task");
        let parent_info = table_info(tx, &p.table)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", p.table)))?;
        let ct = quote_ident(&child.name);
        key_sql = if key_sql.is_empty() {
            format!("{ct}.{}", quote_ident(&p.key))
        } else {
            let child_info = table_info(tx, &child.name)?
                .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", child.name)))?;
            format!(
                "(SELECT {ct}.{} FROM {ct} WHERE {ct}.{} = {key_sql})",
                quote_ident(&p.key),
                quote_ident(&child_info.primary_key)
            )
        };
        out.push(format!(
            "(SELECT v.version FROM fieldsync_rows v WHERE v.tbl = '{}' AND v.pk = {key_sql})",
            parent_info.name.replace('\'', "''")
        ));
        child = parent;
    }
    Ok(out)
}

/// The entry's row now: version, tombstone, slice membership for this user, values.
fn read_current(
    tx: &Transaction<'_>,
    t: &TableCtx<'_>,
    q: &CurrentQuery,
    key: &Value,
) -> Result<Option<Current>, IntegrateError> {
    let mut stmt = tx.prepare_cached(&q.sql)?;
    let binds: Vec<_> = q
        .binds
        .iter()
        .chain(std::iter::once(key))
        .map(to_sql_value)
        .collect();
    Ok(stmt
        .query_row(rusqlite::params_from_iter(binds.iter()), |r| {
            let deleted: bool = r.get(1)?;
            let mut values = BTreeMap::new();
            if !deleted {
                for (i, c) in t.columns.iter().enumerate() {
                    values.insert(c.clone(), value_of(r.get_ref(4 + i)?));
                }
            }
            Ok(Current {
                version: r.get(0)?,
                deleted,
                in_slice: r.get::<_, Option<bool>>(2)?.unwrap_or(false),
                slice_version: r.get(3)?,
                values,
            })
        })
        .optional()?)
}

/// The SQL of the last write per table and kind, reused while the columns repeat
/// (a bulk upload writes the same columns over and over).
#[derive(Default)]
struct WriteSql<'t>(HashMap<(&'t str, &'static str), (Vec<String>, String)>);

impl<'t> WriteSql<'t> {
    fn get(
        &mut self,
        info: &'t TableInfo,
        kind: &'static str,
        row: &fieldsync_proto::conflict::Row,
    ) -> &str {
        let slot = self.0.entry((info.name.as_str(), kind)).or_default();
        if !slot.0.iter().eq(row.keys()) || slot.1.is_empty() {
            let table = quote_ident(&info.name);
            let pk = quote_ident(&info.primary_key);
            let sql = match kind {
                "insert" => {
                    let cols: Vec<String> = row.keys().map(|c| quote_ident(c)).collect();
                    let marks = vec!["?"; cols.len()].join(", ");
                    format!("INSERT INTO {table} ({}) VALUES ({marks})", cols.join(", "))
                }
                "update" => {
                    let sets: Vec<String> = row
                        .keys()
                        .map(|c| format!("{} = ?", quote_ident(c)))
                        .collect();
                    format!("UPDATE {table} SET {} WHERE {pk} = ?", sets.join(", "))
                }
                _ => format!("DELETE FROM {table} WHERE {pk} = ?"),
            };
            *slot = (row.keys().cloned().collect(), sql);
        }
        &slot.1
    }
}

fn apply<'t>(
    tx: &Transaction<'_>,
    sql: &mut WriteSql<'t>,
    info: &'t TableInfo,
    key: &Value,
    write: &Write,
) -> rusqlite::Result<()> {
    let none = fieldsync_proto::conflict::Row::new();
    match write {
        Write::Insert(row) => {
            let mut stmt = tx.prepare_cached(sql.get(info, "insert", row))?;
            stmt.execute(rusqlite::params_from_iter(row.values().map(to_sql_value)))?;
        }
        Write::Update(row) => {
            let mut stmt = tx.prepare_cached(sql.get(info, "update", row))?;
            stmt.execute(rusqlite::params_from_iter(
                row.values().chain(std::iter::once(key)).map(to_sql_value),
            ))?;
        }
        Write::Delete => {
            tx.prepare_cached(sql.get(info, "delete", &none))?
                .execute([to_sql_value(key)])?;
        }
    }
    Ok(())
}

fn highest_version(tx: &Transaction<'_>) -> Result<i64, IntegrateError> {
    Ok(tx
        .prepare_cached("SELECT max(version) FROM fieldsync_rows")?
        .query_row([], |r| r.get(0))?)
}

/// Whether parent rows are in a user's slice, remembered for the upload: a bulk of
/// children of a few parents asks the database once per parent. Any write to a parent
/// table forgets what was learnt.
#[derive(Default)]
struct ParentSlices {
    queries: HashMap<(String, String), (String, Vec<Value>)>,
    known: HashMap<(String, String, String), (bool, i64)>,
}

impl ParentSlices {
    fn forget(&mut self) {
        self.known.clear();
    }

    /// Whether the parent row is in the slice, and the highest version among it and
    /// its own parent chain (when it left the slice, at the latest).
    fn check(
        &mut self,
        tx: &Transaction<'_>,
        def: &fieldsync_proto::task::TaskDef,
        table: &str,
        params: &Params,
        key: &Value,
    ) -> Result<(bool, i64), IntegrateError> {
        let id = (
            table.to_string(),
            params.user.clone(),
            serde_json::to_string(key).expect("serializes"),
        );
        if let Some(known) = self.known.get(&id) {
            return Ok(*known);
        }
        let qkey = (table.to_string(), params.user.clone());
        if !self.queries.contains_key(&qkey) {
            let parent = def.table(table).expect("checked: parent is in the task");
            let info = table_info(tx, table)?
                .ok_or_else(|| StoreError::NotFound(format!("table `{table}` is gone")))?;
            let mut binds = Vec::new();
            let cond = plan::slice_condition(
                def,
                parent,
                params,
                Dialect::Sqlite,
                &mut binds,
                &|n| table_info(tx, n),
                true,
            )?;
            let pt = quote_ident(table);
            let pk = quote_ident(&info.primary_key);
            let version = ancestor_versions(tx, def, parent)?
                .into_iter()
                .fold("r.version".to_string(), |acc, v| {
                    format!("max({acc}, coalesce({v}, 0))")
                });
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {pt} WHERE {pt}.{pk} = ? AND {cond}),
                        coalesce((SELECT {version} FROM fieldsync_rows r LEFT JOIN {pt} ON {pt}.{pk} = r.pk
                                  WHERE r.tbl = ? AND r.pk = ?), 0)"
            );
            binds.push(Value::Text(info.name.clone()));
            self.queries.insert(qkey.clone(), (sql, binds));
        }
        let (sql, binds) = &self.queries[&qkey];
        // Placeholders in text order: the key, the condition's binds, the table, the key.
        let all: Vec<_> = std::iter::once(key)
            .chain(binds.iter())
            .chain(std::iter::once(key))
            .map(to_sql_value)
            .collect();
        let inside = tx
            .prepare_cached(sql)?
            .query_row(rusqlite::params_from_iter(all.iter()), |r| {
                Ok((r.get::<_, bool>(0)?, r.get::<_, i64>(1)?))
            })?;
        self.known.insert(id, inside);
        Ok(inside)
    }
}

fn log_conflict(
    tx: &Transaction<'_>,
    ctx: &IntegrateContext<'_>,
    e: &UploadEntry,
    t: &TableCtx<'_>,
    n: &ConflictNote,
    server_version: Option<i64>,
) -> Result<(), IntegrateError> {
    let policy = serde_json::to_value(t.task_table.conflict).expect("serializes");
    tx.prepare_cached(
        "INSERT INTO fieldsync_conflicts (at, device, user, task, tbl, key, op, kind, policy, resolution,
             device_values, server_values, base_version, server_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        ctx.at,
        ctx.device,
        e.user,
        ctx.task.def.name,
        e.table,
        serde_json::to_string(&e.key).expect("serializes"),
        op_name(e.op),
        n.kind,
        policy.as_str().unwrap_or_default(),
        n.resolution,
        serde_json::to_string(&n.device).expect("serializes"),
        serde_json::to_string(&n.server).expect("serializes"),
        e.base_version,
        server_version,
    ])?;
    Ok(())
}
