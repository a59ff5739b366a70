//! From a task definition and the schema to a slice plan: the columns each table sends
//! and the query that selects its rows. Engine-neutral; the filter language renders
//! the dialect's SQL.

use fieldsync_proto::filter::{self, Params};
use fieldsync_proto::task::{TaskDef, TaskTable, WriteOp};
use fieldsync_proto::wire::{ColumnDef, Cursor, TableSchema};
use fieldsync_proto::{ColumnType, Value};

use crate::dialect::SqlDialect;
use crate::{KeyKind, Result, StoreError, TableInfo};

/// One table of a slice: what the header describes and the queries that read it.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub schema: TableSchema,
    /// `SELECT <columns> FROM <table> WHERE …`, with `binds` for its placeholders.
    pub select_sql: String,
    /// The columns `select_sql` reads, as it reads them (the table unaliased).
    pub select_list: String,
    pub count_sql: String,
    /// The condition that a row (the table itself, unaliased) is in the slice, with
    /// `binds` for its placeholders: what `select_sql` and `count_sql` end with.
    pub condition: String,
    pub binds: Vec<Value>,
    /// The main database's declared type of each column (how the engine reads it).
    pub declared: Vec<String>,
}

/// The whole slice of a task for one user and device, in the task's table order.
#[derive(Debug, Clone)]
pub struct SlicePlan {
    pub tables: Vec<TablePlan>,
    /// The device the slice is for: the download's cursor is recorded as its base.
    pub device: String,
    /// The device's cursor, when it asked for only the changes since (a delta). The
    /// store streams the whole slice instead when it cannot serve a right delta
    /// from it (a cursor ahead or unknown, history pruned).
    pub since: Option<Cursor>,
    /// The device whose download `since` was, when not `device`: a server checking
    /// that a slice streamed for one device is still the slice now, with a delta from
    /// that stream's cursor (`server/src/kept.rs`). Never from a request.
    pub since_of: Option<String>,
    /// The rows each table is expected to send if the stream is a whole slice, for
    /// the header's `rows_estimate` (the device's progress, nothing else): when the
    /// caller has one for every table, the store sends it and does not count the
    /// slice, a scan of it before the first row goes out.
    pub rows_estimate: Option<Vec<u64>>,
}

impl SlicePlan {
    /// The device whose download the cursor `since` must be.
    pub(crate) fn since_owner(&self) -> &str {
        self.since_of.as_deref().unwrap_or(&self.device)
    }

    /// The index of table `name` in the plan.
    pub fn table_index(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.schema.name == name)
    }

    /// The rows each table of a whole slice is expected to send: the plan's
    /// `rows_estimate` when it has one for every table, else `count` of each table.
    pub(crate) fn rows_expected(
        &self,
        count: impl FnMut(&TablePlan) -> Result<u64>,
    ) -> Result<Vec<u64>> {
        match &self.rows_estimate {
            Some(rows) if rows.len() == self.tables.len() => Ok(rows.clone()),
            _ => self.tables.iter().map(count).collect(),
        }
    }
}

/// Double-quotes an identifier (SQLite and PostgreSQL alike).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Single-quotes a text literal (SQLite and PostgreSQL alike): only for names the
/// schema spelled (tables in fieldsync's tracking rows), never for values.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn invalid(msg: String) -> StoreError {
    StoreError::Invalid(msg)
}

/// The columns a table of the task sends: the listed ones (or all), with the primary
/// key and the parent key always included, primary key first.
pub fn slice_columns(t: &TaskTable, info: &TableInfo) -> Vec<String> {
    let mut cols: Vec<String> = match &t.columns {
        Some(list) => list.clone(),
        None => info.columns.iter().map(|c| c.name.clone()).collect(),
    };
    if let Some(p) = &t.parent
        && !cols.contains(&p.key)
    {
        cols.push(p.key.clone());
    }
    cols.retain(|c| *c != info.primary_key);
    cols.insert(0, info.primary_key.clone());
    cols
}

/// A table whose change tracking is missing or stale is neither served nor written:
/// changes to it could go unseen.
pub fn untracked(table: &str) -> StoreError {
    invalid(format!(
        "table `{table}`: its change tracking is missing or stale (the table was rebuilt or renamed since?); \
         the office runs `fieldsync admin table track {table}`"
    ))
}

/// Stored task definitions (JSON, as the catalog keeps them), parsed.
pub(crate) fn stored_tasks(jsons: impl IntoIterator<Item = String>) -> Result<Vec<TaskDef>> {
    jsons
        .into_iter()
        .map(|json| {
            serde_json::from_str(&json)
                .map_err(|e| StoreError::Db(format!("stored task unreadable: {e}")))
        })
        .collect()
}

/// The columns of `info`'s table whose update may move a row into or out of a slice of
/// one of `tasks` (the stored tasks): those their filters read and link parents by,
/// sorted, each once, only those the table has and not its key (a key change always
/// counts). Both engines' tracking keeps this **watch**.
pub(crate) fn watch_columns(tasks: &[TaskDef], info: &TableInfo) -> Result<Vec<String>> {
    let mut watch: Vec<String> = Vec::new();
    for def in tasks {
        for t in def.tables.iter().filter(|t| t.name == info.name) {
            if let Some(f) = &t.filter {
                let expr = filter::parse(f)
                    .map_err(|e| StoreError::Db(format!("stored filter unreadable: {e}")))?;
                watch.extend(expr.columns());
            }
            watch.extend(t.parent.iter().map(|p| p.key.clone()));
        }
    }
    watch.retain(|c| *c != info.primary_key && info.column(c).is_some());
    watch.sort();
    watch.dedup();
    Ok(watch)
}

/// Checks a task against the schema; `lookup` returns a table of the main database.
/// Every error names the table and the field at fault.
pub fn check_task(def: &TaskDef, lookup: &dyn Fn(&str) -> Result<Option<TableInfo>>) -> Result<()> {
    def.check().map_err(|e| invalid(e.to_string()))?;
    for t in &def.tables {
        let at = format!("task file: table `{}`", t.name);
        let info = lookup(&t.name)?
            .ok_or_else(|| invalid(format!("{at}: no such table in the main database")))?;
        if !info.tracked {
            return Err(invalid(format!(
                "{at}: not tracked; run `fieldsync admin table track {}` first",
                t.name
            )));
        }
        if let Some(cols) = &t.columns {
            for c in cols {
                if info.column(c).is_none() {
                    return Err(invalid(format!("{at}: columns: no column `{c}`")));
                }
            }
        }
        if let Some(f) = &t.filter {
            let expr = filter::parse(f).map_err(|e| invalid(format!("{at}: filter: {e}")))?;
            expr.check(&|c| info.column(c).map(|c| c.column_type))
                .map_err(|e| invalid(format!("{at}: filter: {e}")))?;
        }
        if let Some(p) = &t.parent {
            let parent = lookup(&p.table)?
                .ok_or_else(|| invalid(format!("{at}: parent table `{}` not found", p.table)))?;
            let key = info
                .column(&p.key)
                .ok_or_else(|| invalid(format!("{at}: parent key: no column `{}`", p.key)))?;
            let parent_pk = parent
                .column(&parent.primary_key)
                .expect("primary key is a column");
            let numeric = |t: ColumnType| {
                matches!(
                    t,
                    ColumnType::Integer
                        | ColumnType::Real
                        | ColumnType::Numeric
                        | ColumnType::Decimal
                )
            };
            if numeric(key.column_type) != numeric(parent_pk.column_type) {
                return Err(invalid(format!(
                    "{at}: parent key `{}` ({}) cannot hold `{}`.`{}` ({})",
                    p.key, key.declared_type, p.table, parent.primary_key, parent_pk.declared_type
                )));
            }
        }
        if t.write.contains(&WriteOp::Insert) {
            let pk = info
                .column(&info.primary_key)
                .expect("primary key is a column");
            // Devices make keys offline: a UUID, or the next of a block of integers
            // the server reserved from the key's own source (`keys.rs`).
            match info.key_kind() {
                KeyKind::Text | KeyKind::Numbered(_) => {}
                KeyKind::Integer => {
                    return Err(invalid(format!(
                        "{at}: write = insert on an integer key needs a source of keys devices can get blocks from: `{}` has none (on PostgreSQL a serial or identity column, on SQLite INTEGER PRIMARY KEY AUTOINCREMENT)",
                        info.primary_key
                    )));
                }
                KeyKind::Other => {
                    return Err(invalid(format!(
                        "{at}: write = insert needs a text or integer primary key (devices make keys offline); `{}` is {}",
                        info.primary_key, pk.declared_type
                    )));
                }
            }
            let cols = slice_columns(t, &info);
            for c in &info.columns {
                if c.not_null && !c.has_default && !cols.contains(&c.name) {
                    return Err(invalid(format!(
                        "{at}: write = insert is impossible: NOT NULL column `{}` has no default and is not in the task's columns",
                        c.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Plans the slice of a checked task for one user and device.
pub fn plan_slice(
    def: &TaskDef,
    params: &Params,
    dialect: &dyn SqlDialect,
    lookup: &dyn Fn(&str) -> Result<Option<TableInfo>>,
) -> Result<SlicePlan> {
    let mut tables = Vec::with_capacity(def.tables.len());
    for t in &def.tables {
        let info = lookup(&t.name)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", t.name)))?;
        if !info.tracked {
            return Err(untracked(&t.name));
        }
        let cols = slice_columns(t, &info);
        let mut columns = Vec::with_capacity(cols.len());
        let mut declared = Vec::with_capacity(cols.len());
        for c in &cols {
            let ci = info.column(c).ok_or_else(|| {
                invalid(format!(
                    "column `{c}` no longer exists in table `{}` of the main database (the office \
                     changed its schema); ask the office to update task `{}`",
                    t.name, def.name
                ))
            })?;
            columns.push(ColumnDef {
                name: c.clone(),
                column_type: ci.column_type,
            });
            declared.push(ci.declared_type.clone());
        }
        let mut binds = Vec::new();
        let condition = slice_condition(def, t, params, dialect, &mut binds, lookup, false)?;
        let table = quote_ident(&t.name);
        let select_list: Vec<String> = cols
            .iter()
            .zip(&declared)
            .map(|(c, d)| dialect.read_expr(&format!("{table}.{}", quote_ident(c)), d))
            .collect();
        let select_list = select_list.join(", ");
        let select_sql = format!("SELECT {select_list} FROM {table} WHERE {condition}");
        let count_sql = format!("SELECT count(*) FROM {table} WHERE {condition}");
        tables.push(TablePlan {
            schema: TableSchema {
                name: t.name.clone(),
                primary_key: info.primary_key.clone(),
                columns,
                rows_estimate: 0,
                write: t.write.clone(),
                filter: t.filter.clone(),
                parent: t.parent.clone(),
            },
            select_sql,
            select_list,
            count_sql,
            condition,
            binds,
            declared,
        });
    }
    Ok(SlicePlan {
        tables,
        device: params.device.clone(),
        since: None,
        since_of: None,
        rows_estimate: None,
    })
}

/// The condition that one row of task table `t` is in the slice (an upload's checks),
/// with the values it binds.
pub(crate) fn row_condition(
    def: &TaskDef,
    t: &TaskTable,
    params: &Params,
    dialect: &dyn SqlDialect,
    lookup: &dyn Fn(&str) -> Result<Option<TableInfo>>,
) -> Result<(String, Vec<Value>)> {
    let mut binds = Vec::new();
    let cond = slice_condition(def, t, params, dialect, &mut binds, lookup, true)?;
    Ok((cond, binds))
}

/// The WHERE condition of a table: its filter, and membership of its parent's slice.
///
/// `one_row`: the condition tests one row (upload checks), so parent membership is an
/// `EXISTS` probe by key; for a whole slice, `IN (SELECT …)` is evaluated once.
pub(crate) fn slice_condition(
    def: &TaskDef,
    t: &TaskTable,
    params: &Params,
    dialect: &dyn SqlDialect,
    binds: &mut Vec<Value>,
    lookup: &dyn Fn(&str) -> Result<Option<TableInfo>>,
    one_row: bool,
) -> Result<String> {
    let table = quote_ident(&t.name);
    let mut parts = Vec::new();
    if let Some(f) = &t.filter {
        let expr =
            filter::parse(f).map_err(|e| invalid(format!("table `{}`: filter: {e}", t.name)))?;
        let info = if dialect.typed_filters() {
            lookup(&t.name)?
        } else {
            None
        };
        let column_sql = |c: &str| {
            let column = format!("{table}.{}", quote_ident(c));
            match info.as_ref().and_then(|i| i.column(c)) {
                Some(ci) => dialect.filter_expr(&column, &ci.declared_type),
                None => column,
            }
        };
        parts.push(format!(
            "({})",
            expr.to_sql(dialect.filter_dialect(), &column_sql, params, binds)
        ));
    }
    if let Some(p) = &t.parent {
        let parent = def.table(&p.table).expect("checked: parent is in the task");
        let parent_info = lookup(&p.table)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", p.table)))?;
        let inner = slice_condition(def, parent, params, dialect, binds, lookup, one_row)?;
        let pt = quote_ident(&p.table);
        let (key, parent_pk) = (quote_ident(&p.key), quote_ident(&parent_info.primary_key));
        parts.push(if one_row {
            format!(
                "EXISTS (SELECT 1 FROM {pt} WHERE {pt}.{parent_pk} = {table}.{key} AND {inner})"
            )
        } else {
            format!("{table}.{key} IN (SELECT {pt}.{parent_pk} FROM {pt} WHERE {inner})")
        });
    }
    Ok(if parts.is_empty() {
        "1 = 1".to_string()
    } else {
        parts.join(" AND ")
    })
}

/// The parent chain of a task table, for a row joined as the table itself: per
/// ancestor (parent, grandparent, …) its table and the SQL that yields its key.
/// Engines wrap the key SQL in a lookup of their tracking rows.
pub(crate) fn ancestor_keys(
    def: &TaskDef,
    t: &TaskTable,
    lookup: &mut dyn FnMut(&str) -> Result<Option<TableInfo>>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut child = t;
    // The SQL that yields the current ancestor's key.
    let mut key_sql = String::new();
    while let Some(p) = &child.parent {
        let parent = def.table(&p.table).expect("checked: parent is in the task");
        let parent_info = lookup(&p.table)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", p.table)))?;
        let ct = quote_ident(&child.name);
        key_sql = if key_sql.is_empty() {
            format!("{ct}.{}", quote_ident(&p.key))
        } else {
            let child_info = lookup(&child.name)?
                .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", child.name)))?;
            format!(
                "(SELECT {ct}.{} FROM {ct} WHERE {ct}.{} = {key_sql})",
                quote_ident(&p.key),
                quote_ident(&child_info.primary_key)
            )
        };
        out.push((parent_info.name, key_sql.clone()));
        child = parent;
    }
    Ok(out)
}
