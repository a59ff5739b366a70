//! The PostgreSQL side of integrating an upload (`crate::integrate` has the rules):
//! one READ COMMITTED transaction per upload. Before an entry's row is judged, its
//! row in the table and its tracking row are locked (`FOR UPDATE`), so a concurrent
//! office writer or another upload either committed before the check (and is seen)
//! or waits until this upload commits: nothing comes between the check and the write.
//! A transaction that deadlocks with an office writer is retried.

use std::collections::{BTreeMap, HashMap};

use fieldsync_proto::Value;
use fieldsync_proto::conflict::{Current, Row, Write};
use fieldsync_proto::filter::{Dialect, Params};
use fieldsync_proto::task::{TaskDef, TaskTable};
use fieldsync_proto::wire::{Upload, UploadEntry, UploadOutcome};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Statement, Transaction};

use super::types::{self, Bind, Param};
use super::{pg_message, table_info};
use crate::integrate::{
    self, ApplyError, BaseKind, ConflictLog, Lookups, TableCtx, UploadTx, op_name,
};
use crate::plan::{self, quote_ident};
use crate::{IntegrateContext, IntegrateError, StoreError, TableInfo};

/// Attempts of an upload that deadlocked or failed to serialize.
const ATTEMPTS: usize = 4;

pub(super) fn integrate(
    client: &mut Client,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    // Everything that needs no lock first, by plain reads: a forbidden entry refuses
    // the upload before any row is locked.
    if let Some(known) = integrate::precheck(&mut Reads(client), ctx, upload)? {
        return Ok(known);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = client.transaction().map_err(StoreError::from)?;
        // An office transaction holding a row this upload writes makes it give up
        // after a while (`StoreError::Locked`, retried by the device) instead of
        // holding a pooled connection for as long as the office does.
        tx.batch_execute(&format!("SET LOCAL lock_timeout = {}", lock_timeout_ms()))
            .map_err(StoreError::from)?;
        let mut up = PgUpload {
            tx,
            statements: HashMap::new(),
            queries: HashMap::new(),
            parents: HashMap::new(),
            parent_queries: HashMap::new(),
            new_base: None,
            infos: HashMap::new(),
            planned: Vec::new(),
            asked: 0,
            next: 0,
            ahead: HashMap::new(),
            locked: Default::default(),
            pending: None,
            entries: &upload.entries,
            refused: None,
            retryable: false,
        };
        let result = integrate::integrate(&mut up, ctx, upload);
        let retryable = up.retryable;
        // A batched insert refused while the loop was already further on: the
        // refusal names its own entry.
        let result = match (result, up.refused.take()) {
            (Err(_), Some(why)) => Err(IntegrateError::Forbidden(why)),
            (result, _) => result,
        };
        match result {
            Ok(outcome) => match up.tx.commit() {
                Ok(()) => return Ok(outcome),
                Err(e) if is_retryable(&e) && attempt < ATTEMPTS => continue,
                Err(e) => return Err(StoreError::from(e).into()),
            },
            Err(_) if retryable && attempt < ATTEMPTS => {
                drop(up);
                std::thread::sleep(std::time::Duration::from_millis(20 * attempt as u64));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long an upload waits for a row lock, in milliseconds:
/// `FIELDSYNC_LOCK_TIMEOUT_MS`, default 5 s (0 would wait for ever, so it is refused).
pub(crate) fn lock_timeout_ms() -> u64 {
    static MS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        std::env::var("FIELDSYNC_LOCK_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .unwrap_or(DEFAULT_LOCK_TIMEOUT_MS)
    });
    *MS
}

const DEFAULT_LOCK_TIMEOUT_MS: u64 = 5_000;

fn is_retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

type Params_<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// Tables of the main database by name (`None`: no such table).
type Infos = HashMap<String, Option<TableInfo>>;

/// An entry as reading ahead needs it: table, user, key as text, base.
type Planned = (String, String, String, Option<i64>);

/// A row read ahead for one entry: its user, its base, the row as it was then.
type ReadAhead = (String, Option<i64>, Option<Current>);

/// An entry's key (as text) and base.
type KeyAndBase<'a> = (&'a str, Option<i64>);

/// A parent row asked about: table, user, key (JSON) and the entry's base.
type ParentId = (String, String, String, Option<i64>);

/// The current-row query of one table for one user.
struct CurrentQuery {
    lock_sql: String,
    sql: String,
    /// The same for many entries: `(key, base)` pairs from two arrays, no locks (the
    /// rows are locked ahead), each row led by its key and base.
    batch_sql: String,
    binds: Vec<Value>,
}

/// Entries read ahead per round.
const WINDOW: usize = 1000;

struct PgUpload<'c, 'u> {
    tx: Transaction<'c>,
    statements: HashMap<String, Statement>,
    queries: HashMap<(String, String), CurrentQuery>,
    /// Parent membership learnt in this upload: (table, user, key, base) → (inside, left).
    parents: HashMap<ParentId, (bool, bool)>,
    parent_queries: HashMap<(String, String), (String, Vec<Value>)>,
    new_base: Option<i64>,
    /// Tables asked about in this upload.
    infos: HashMap<String, Option<TableInfo>>,
    /// The upload's entries (table, user, key as text, base), for reading ahead;
    /// `None` for an entry whose key cannot be a key of its table (read one by one).
    planned: Vec<Option<Planned>>,
    /// Entries `current` was asked about so far; the first not read ahead yet.
    asked: usize,
    next: usize,
    /// Rows read ahead, by (table, key as text): (user, base, the row then). A write
    /// to the row, or to a parent table, drops what was read.
    ahead: HashMap<(String, String), Vec<ReadAhead>>,
    /// Rows locked ahead (table, key as text): their lock statement is not needed.
    locked: std::collections::HashSet<(String, String)>,
    /// Writes not sent yet: consecutive inserts (or updates) of one table with the
    /// same columns go as one statement (one run of the tracking trigger).
    pending: Option<PendingWrites>,
    /// The upload's entries, to name one in a refusal found late.
    entries: &'u [UploadEntry],
    /// A batched insert the database refused: the refusal, naming its entry.
    refused: Option<String>,
    /// A statement failed by deadlock or serialization: the whole upload may be retried.
    retryable: bool,
}

impl PgUpload<'_, '_> {
    /// Sends the pending writes, as one statement. When the database refuses it, the
    /// rows go again one by one to find the entry it refuses, which is recorded in
    /// `refused` (the upload is refused, so nothing after it matters).
    fn flush(&mut self) -> Result<(), StoreError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let sql = p.sql(p.rows.len());
        let refs: Params_<'_> = p
            .rows
            .iter()
            .flat_map(|(_, values)| values.iter())
            .map(|v| v as &(dyn ToSql + Sync))
            .collect();
        let savepoint = p.rows.len() > 1;
        if savepoint {
            self.tx
                .batch_execute("SAVEPOINT fieldsync_writes")
                .map_err(|e| self.note(e))?;
        }
        match self.execute(&sql, &refs) {
            Ok(_) if savepoint => self
                .tx
                .batch_execute("RELEASE SAVEPOINT fieldsync_writes")
                .map_err(|e| self.note(e)),
            Ok(_) => Ok(()),
            Err(e) if !refused(&e) => Err(self.note(e)),
            Err(e) => {
                if savepoint {
                    self.tx
                        .batch_execute("ROLLBACK TO SAVEPOINT fieldsync_writes")
                        .map_err(|e| self.note(e))?;
                }
                let single = p.sql(1);
                let mut why = (p.rows[0].0, pg_message(&e));
                for (index, values) in &p.rows {
                    let refs: Params_<'_> =
                        values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    if let Err(e) = self.execute(&single, &refs) {
                        why = (*index, pg_message(&e));
                        break;
                    }
                }
                let (index, message) = why;
                let label = integrate::entry_label(index, &self.entries[index]);
                self.refused = Some(format!("{label}: the main database refused it: {message}"));
                Err(StoreError::Invalid("upload refused".into()))
            }
        }
    }

    /// The task's tables (by name), read once per upload.
    fn task_infos(&mut self, def: &TaskDef) -> Result<Infos, StoreError> {
        let mut infos = HashMap::new();
        for t in &def.tables {
            let info = self.info(&t.name)?;
            infos.insert(t.name.clone(), info);
        }
        Ok(infos)
    }

    /// The current-row queries of a table for a user, built once per upload.
    fn query_for(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
    ) -> Result<&CurrentQuery, StoreError> {
        let id = (t.info.name.clone(), params.user.clone());
        if !self.queries.contains_key(&id) {
            let infos = self.task_infos(def)?;
            let q = current_query(&infos, def, t, params)?;
            self.queries.insert(id.clone(), q);
        }
        Ok(&self.queries[&id])
    }

    /// A table of the main database, read once per upload.
    fn info(&mut self, table: &str) -> Result<Option<TableInfo>, StoreError> {
        if let Some(known) = self.infos.get(table) {
            return Ok(known.clone());
        }
        let info = table_info(&mut self.tx, table)?;
        self.infos.insert(table.to_string(), info.clone());
        Ok(info)
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn note(&mut self, e: postgres::Error) -> StoreError {
        if is_retryable(&e) {
            self.retryable = true;
        }
        StoreError::from(e)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let r = match self.statement(sql) {
            Ok(s) => self.tx.query(&s, params),
            Err(e) => Err(e),
        };
        r.map_err(|e| self.note(e))
    }

    fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.tx.execute(&s, params)
    }
}

/// "Changed since the base" for a transaction id expression `x`, with the base joined
/// as `b` (snapshot `b.snap`, own transaction `b.xid`): written by a transaction the
/// base's snapshot does not see, other than the base's own. An unknown base (no row
/// `b`) counts every row as changed, so values are compared and nothing is lost.
fn changed_sql(x: &str) -> String {
    format!(
        "({x} IS NOT NULL AND (b.snap IS NULL OR NOT (coalesce({x} = b.xid, false) OR pg_visible_in_snapshot({x}, b.snap))))"
    )
}

fn declared_of(info: &TableInfo, column: &str) -> String {
    info.column(column)
        .map(|c| c.declared_type.clone())
        .unwrap_or_else(|| "text".into())
}

/// SQL expressions for the transaction ids of a table's parent chain, for the row
/// joined as the table itself: its parent's, the grandparent's, and so on.
fn ancestor_xids(infos: &Infos, def: &TaskDef, t: &TaskTable) -> Result<Vec<String>, StoreError> {
    Ok(
        plan::ancestor_keys(def, t, &mut |name| Ok(infos.get(name).cloned().flatten()))?
            .into_iter()
            .map(|(table, key_sql)| {
                // The parent's key as its triggers record it.
                let key_type = infos
                    .get(&table)
                    .cloned()
                    .flatten()
                    .map(|info| declared_of(&info, &info.primary_key))
                    .unwrap_or_default();
                format!(
                    "(SELECT v.xid FROM fieldsync.rows v WHERE v.tbl = '{}' AND v.pk = {})",
                    table.replace('\'', "''"),
                    types::key_text(&format!("({key_sql})"), &key_type)
                )
            })
            .collect(),
    )
}

fn current_query(
    infos: &Infos,
    def: &TaskDef,
    t: &TableCtx<'_>,
    params: &Params,
) -> Result<CurrentQuery, StoreError> {
    let mut binds = Vec::new();
    let cond = plan::slice_condition(
        def,
        t.task_table,
        params,
        Dialect::Postgres,
        &mut binds,
        &|name| Ok(infos.get(name).cloned().flatten()),
        true,
    )?;
    let table = quote_ident(&t.info.name);
    let pk = quote_ident(&t.info.primary_key);
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            types::read_expr(
                &format!("{table}.{}", quote_ident(c)),
                &declared_of(&t.info, c),
            )
        })
        .collect();
    let left = ancestor_xids(infos, def, t.task_table)?
        .iter()
        .fold(changed_sql("r.xid"), |acc, x| {
            format!("{acc} OR {}", changed_sql(x))
        });
    let n = binds.len();
    let key_param = types::write_param(n + 3, &declared_of(&t.info, &t.info.primary_key));
    let sql = format!(
        "SELECT r.xid::text::int8, r.deleted, {changed}, {left},
                CASE WHEN {table}.{pk} IS NULL THEN false ELSE ({cond}) END, {cols}
         FROM fieldsync.rows r
         LEFT JOIN (SELECT snap, xid FROM fieldsync.bases WHERE id = ${base}) b ON true
         LEFT JOIN {table} ON {table}.{pk} = {key_param}
         WHERE r.tbl = ${tbl} AND r.pk = ${key_text}
         FOR UPDATE OF r",
        changed = changed_sql("r.xid"),
        cols = cols.join(", "),
        tbl = n + 1,
        key_text = n + 2,
        base = n + 4,
    );
    let pk_declared = declared_of(&t.info, &t.info.primary_key);
    let batch_sql = format!(
        "SELECT e.pk, e.base, r.xid::text::int8, r.deleted, {changed}, {left},
                CASE WHEN {table}.{pk} IS NULL THEN false ELSE ({cond}) END, {cols}
         FROM unnest(${keys}::text[], ${bases}::int8[]) AS e (pk, base)
         JOIN fieldsync.rows r ON r.tbl = ${tbl} AND r.pk = e.pk
         LEFT JOIN fieldsync.bases b ON b.id = e.base
         LEFT JOIN {table} ON {table}.{pk} = CAST(e.pk AS {pk_declared})",
        changed = changed_sql("r.xid"),
        cols = cols.join(", "),
        tbl = n + 1,
        keys = n + 2,
        bases = n + 3,
    );
    let lock_sql = format!(
        "SELECT 1 FROM {table} WHERE {pk} = {} FOR UPDATE",
        types::write_param(1, &pk_declared)
    );
    Ok(CurrentQuery {
        lock_sql,
        sql,
        batch_sql,
        binds,
    })
}

/// Inserts or updates waiting to go as one statement: the table, the columns (for
/// updates the key first), each row's values with the index of its entry.
struct PendingWrites {
    update: bool,
    info: TableInfo,
    columns: Vec<String>,
    rows: Vec<(usize, Vec<Param>)>,
}

impl PendingWrites {
    /// The statement for `n` rows: a multi-row INSERT, or an UPDATE from a VALUES list
    /// joined on the key.
    fn sql(&self, n: usize) -> String {
        let table = quote_ident(&self.info.name);
        let declared: Vec<String> = self
            .columns
            .iter()
            .map(|c| declared_of(&self.info, c))
            .collect();
        let width = declared.len();
        let values = |cast: bool| -> String {
            (0..n)
                .map(|r| {
                    let marks: Vec<String> = declared
                        .iter()
                        .enumerate()
                        .map(|(i, d)| {
                            let n = 1 + r * width + i;
                            if cast {
                                types::write_param(n, d)
                            } else {
                                types::raw_param(n, d)
                            }
                        })
                        .collect();
                    format!("({})", marks.join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.update {
            let names: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
            return format!(
                "INSERT INTO {table} ({}) VALUES {}",
                names.join(", "),
                values(true)
            );
        }
        // v (c0, c1, …): c0 is the key.
        let aliases: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
        let sets: Vec<String> = self.columns[1..]
            .iter()
            .zip(&declared[1..])
            .enumerate()
            .map(|(i, (c, d))| {
                format!(
                    "{} = {}",
                    quote_ident(c),
                    types::cast_to(&format!("v.c{}", i + 1), d)
                )
            })
            .collect();
        format!(
            "UPDATE {table} SET {} FROM (VALUES {}) AS v ({}) WHERE {table}.{} = {}",
            sets.join(", "),
            values(false),
            aliases.join(", "),
            quote_ident(&self.columns[0]),
            types::cast_to("v.c0", &declared[0])
        )
    }
}

/// Rows per batched statement (fewer when the columns are many: at most 65,535 binds).
const WRITE_BATCH: usize = 500;

/// Whether the database refused a value or a constraint (the upload is refused),
/// rather than failing itself.
fn refused(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let class = &c.code()[..2];
        class == "22" || class == "23"
    })
}

/// A row of a current-row query as [`Current`]; `at`: where its version column is.
fn current_of(t: &TableCtx<'_>, r: &postgres::Row, at: usize) -> Current {
    let deleted: bool = r.get(at + 1);
    let mut values = BTreeMap::new();
    if !deleted {
        for (i, c) in t.columns.iter().enumerate() {
            let kind = types::kind(&declared_of(&t.info, c));
            values.insert(c.clone(), types::value_ref(r, at + 5 + i, kind).to_owned());
        }
    }
    Current {
        version: r.get(at),
        deleted,
        changed: r.get(at + 2),
        left: r.get(at + 3),
        in_slice: r.get::<_, Option<bool>>(at + 4).unwrap_or(false),
        values,
    }
}

impl PgUpload<'_, '_> {
    /// Locks and reads the rows of the next [`WINDOW`] entries from `from` in a few
    /// statements: per table, its rows then their tracking rows in key order (the
    /// order writers lock them in), then per table and user the rows judged against
    /// each entry's base. A window that fails (a key its column cannot take) is rolled
    /// back; its entries are then read one by one, as without reading ahead.
    fn read_window(&mut self, def: &TaskDef, device: &str, from: usize) -> Result<(), StoreError> {
        self.flush()?;
        let to = (from + WINDOW).min(self.planned.len());
        self.next = to;
        let window: Vec<Planned> = self.planned[from..to].iter().flatten().cloned().collect();
        self.tx
            .batch_execute("SAVEPOINT fieldsync_read_ahead")
            .map_err(|e| self.note(e))?;
        match self.try_read_window(def, device, &window) {
            Ok(()) => self
                .tx
                .batch_execute("RELEASE SAVEPOINT fieldsync_read_ahead")
                .map_err(|e| self.note(e)),
            // A row locked in the office is locked one by one as well.
            Err(e) if self.retryable || matches!(e, StoreError::Locked) => Err(e),
            Err(_) => {
                self.tx
                    .batch_execute("ROLLBACK TO SAVEPOINT fieldsync_read_ahead")
                    .map_err(|e| self.note(e))?;
                for (table, _, key, _) in &window {
                    self.locked.remove(&(table.clone(), key.clone()));
                    self.ahead.remove(&(table.clone(), key.clone()));
                }
                Ok(())
            }
        }
    }

    fn try_read_window(
        &mut self,
        def: &TaskDef,
        device: &str,
        window: &[Planned],
    ) -> Result<(), StoreError> {
        let mut by_table: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
        let mut by_user: BTreeMap<(&str, &str), Vec<KeyAndBase<'_>>> = BTreeMap::new();
        for (table, user, key, base) in window {
            if def.table(table).is_none() {
                continue;
            }
            by_table.entry(table).or_default().insert(key);
            by_user.entry((table, user)).or_default().push((key, *base));
        }
        for (table, keys) in &by_table {
            let Some(info) = self.info(table)? else {
                continue;
            };
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            let t = quote_ident(&info.name);
            let pk = quote_ident(&info.primary_key);
            let declared = declared_of(&info, &info.primary_key);
            self.query(
                &format!(
                    "SELECT 1 FROM {t} WHERE {pk} = ANY (CAST($1::text[] AS {declared}[])) ORDER BY {pk} FOR UPDATE"
                ),
                &[&keys],
            )?;
            self.query(
                "SELECT 1 FROM fieldsync.rows WHERE tbl = $1 AND pk = ANY ($2::text[]) ORDER BY pk FOR UPDATE",
                &[&info.name, &keys],
            )?;
            for k in keys {
                self.locked.insert((info.name.clone(), k));
            }
        }
        for ((table, user), entries) in &by_user {
            let Some(info) = self.info(table)? else {
                continue;
            };
            let task_table = def.table(table).expect("checked above");
            let filter = task_table
                .filter
                .as_deref()
                .map(fieldsync_proto::filter::parse)
                .transpose()
                .map_err(|e| StoreError::Db(e.to_string()))?;
            let t = TableCtx {
                task_table,
                columns: plan::slice_columns(task_table, &info),
                info,
                filter,
            };
            let params = Params {
                user: user.to_string(),
                device: device.to_string(),
            };
            let (sql, binds) = {
                let q = self.query_for(def, &t, &params)?;
                (q.batch_sql.clone(), q.binds.clone())
            };
            let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
            let bases: Vec<Option<i64>> = entries.iter().map(|(_, b)| *b).collect();
            let bound: Vec<Bind<'_>> = binds.iter().map(Bind).collect();
            let mut all: Params_<'_> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
            all.push(&t.info.name);
            all.push(&keys);
            all.push(&bases);
            let rows = self.query(&sql, &all)?;
            let mut found: HashMap<(String, Option<i64>), Current> = HashMap::new();
            for r in &rows {
                found.insert((r.get(0), r.get(1)), current_of(&t, r, 2));
            }
            for (key, base) in entries {
                let current = found.get(&(key.to_string(), *base)).cloned();
                self.ahead
                    .entry((t.info.name.clone(), key.to_string()))
                    .or_default()
                    .push((user.to_string(), *base, current));
            }
        }
        Ok(())
    }
}

/// The reads of the checks before any lock, outside a transaction.
struct Reads<'c>(&'c mut Client);

impl Lookups for Reads<'_> {
    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>, StoreError> {
        table_info(self.0, table)
    }

    fn user_enabled(&mut self, user: &str) -> Result<bool, StoreError> {
        let rows = self.0.query(USER_ENABLED, &[&user])?;
        Ok(rows.first().is_some_and(|r| !r.get::<_, bool>(0)))
    }

    fn user_logged_in(&mut self, device: &str, user: &str) -> Result<bool, StoreError> {
        Ok(!self.0.query(USER_LOGGED_IN, &[&device, &user])?.is_empty())
    }

    fn recorded_now(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
        let rows = self.0.query(RECORDED, &[&upload_id])?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

const USER_ENABLED: &str = "SELECT disabled FROM fieldsync.users WHERE name = $1";
const USER_LOGGED_IN: &str =
    "SELECT 1 FROM fieldsync.device_users WHERE device = $1 AND user_name = $2";
const RECORDED: &str = "SELECT device, outcome FROM fieldsync.uploads WHERE upload_id = $1";

impl Lookups for PgUpload<'_, '_> {
    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>, StoreError> {
        self.info(table)
    }

    fn user_enabled(&mut self, user: &str) -> Result<bool, StoreError> {
        let rows = self.query(USER_ENABLED, &[&user])?;
        Ok(rows.first().is_some_and(|r| !r.get::<_, bool>(0)))
    }

    fn user_logged_in(&mut self, device: &str, user: &str) -> Result<bool, StoreError> {
        Ok(!self.query(USER_LOGGED_IN, &[&device, &user])?.is_empty())
    }

    fn recorded_now(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
        let rows = self.query(RECORDED, &[&upload_id])?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

impl UploadTx for PgUpload<'_, '_> {
    fn recorded(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
        // The same upload sent to two servers at once: the second waits for the
        // first's commit, then finds its record.
        self.query(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 7366836482673))",
            &[&upload_id],
        )?;
        self.recorded_now(upload_id)
    }

    fn base_kind(&mut self, device: &str, base: i64) -> Result<Option<BaseKind>, StoreError> {
        // A base without a device was handed out before bases recorded theirs.
        let rows = self.query(
            "SELECT xid IS NOT NULL, device IS NULL OR device = $2 FROM fieldsync.bases WHERE id = $1",
            &[&base, &device],
        )?;
        if let Some(r) = rows.first() {
            return Ok(Some(match (r.get::<_, bool>(0), r.get::<_, bool>(1)) {
                (true, true) => BaseKind::Upload,
                (false, true) => BaseKind::Download,
                // Another device's: bases are recorded with their download, so this
                // one was never handed to this device.
                (_, false) => return Ok(None),
            }));
        }
        // Past every base there is: never handed out. Otherwise (bases emptied after a
        // restore) compared by value.
        let past = self.query("SELECT $1 > max(id) FROM fieldsync.bases", &[&base])?;
        Ok(
            match past.first().and_then(|r| r.get::<_, Option<bool>>(0)) {
                Some(true) => None,
                _ => Some(BaseKind::Unknown),
            },
        )
    }

    fn stored_in_slice(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        key: &Value,
    ) -> Result<bool, StoreError> {
        self.flush()?;
        let infos = self.task_infos(def)?;
        let mut binds = Vec::new();
        let cond = plan::slice_condition(
            def,
            t.task_table,
            params,
            Dialect::Postgres,
            &mut binds,
            &|name| Ok(infos.get(name).cloned().flatten()),
            true,
        )?;
        let table = quote_ident(&t.info.name);
        let declared = declared_of(&t.info, &t.info.primary_key);
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE {table}.{pk} = {key_param} AND ({cond}))",
            pk = quote_ident(&t.info.primary_key),
            key_param = types::write_param(binds.len() + 1, &declared),
        );
        let typed_key = types::write_value(key, &declared);
        let bound: Vec<Bind<'_>> = binds.iter().map(Bind).collect();
        let mut all: Params_<'_> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        all.push(&typed_key);
        let rows = self.query(&sql, &all)?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    fn canonical(&mut self, info: &TableInfo, row: &mut Row) -> Result<(), StoreError> {
        let cols: Vec<(String, String)> = row
            .iter()
            .filter(|(_, v)| matches!(v, Value::Text(_) | Value::Integer(_) | Value::Real(_)))
            .map(|(c, _)| (c.clone(), declared_of(info, c)))
            .filter(|(_, d)| types::has_canonical_text(d))
            .collect();
        if cols.is_empty() {
            return Ok(());
        }
        let exprs: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, (_, d))| types::canonical_expr(i + 1, d))
            .collect();
        let sql = format!("SELECT {}", exprs.join(", "));
        let values: Vec<String> = cols.iter().map(|(c, _)| types::text_of(&row[c])).collect();
        let refs: Params_<'_> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        // A value the column cannot take fails the cast: it stays as it is, and the
        // transaction goes on.
        self.tx
            .batch_execute("SAVEPOINT fieldsync_canonical")
            .map_err(|e| self.note(e))?;
        let read = match self.statement(&sql) {
            Ok(s) => self.tx.query_one(&s, &refs),
            Err(e) => Err(e),
        };
        match read {
            Ok(r) => {
                self.tx
                    .batch_execute("RELEASE SAVEPOINT fieldsync_canonical")
                    .map_err(|e| self.note(e))?;
                for (i, (c, _)) in cols.iter().enumerate() {
                    if let Some(text) = r.get::<_, Option<String>>(i) {
                        row.insert(c.clone(), Value::Text(text));
                    }
                }
            }
            Err(e) if refused(&e) => {
                self.tx
                    .batch_execute("ROLLBACK TO SAVEPOINT fieldsync_canonical")
                    .map_err(|e| self.note(e))?;
            }
            Err(e) => return Err(self.note(e)),
        }
        Ok(())
    }

    fn read_ahead(&mut self, entries: &[UploadEntry]) {
        let mut planned = Vec::with_capacity(entries.len());
        for e in entries {
            let fits = match self.info(&e.table) {
                Ok(Some(info)) => types::key_fits(&e.key, &declared_of(&info, &info.primary_key)),
                _ => false,
            };
            planned.push(fits.then(|| {
                (
                    e.table.clone(),
                    e.user.clone(),
                    types::text_of(&e.key),
                    e.base_version,
                )
            }));
        }
        self.planned = planned;
    }

    fn current(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        key: &Value,
        base: Option<i64>,
    ) -> Result<Option<Current>, StoreError> {
        let index = self.asked;
        self.asked += 1;
        let text_key = types::text_of(key);
        if index >= self.next && index < self.planned.len() {
            self.read_window(def, &params.device, index)?;
        }
        let row_id = (t.info.name.clone(), text_key.clone());
        if let Some(read) = self.ahead.get_mut(&row_id)
            && let Some(at) = read
                .iter()
                .position(|(user, b, _)| *user == params.user && *b == base)
        {
            return Ok(read.swap_remove(at).2);
        }
        let declared = declared_of(&t.info, &t.info.primary_key);
        let typed_key = types::write_value(key, &declared);
        if !types::key_fits(key, &declared) || matches!(typed_key, Param::Invalid) {
            return Ok(None);
        }
        let (lock_sql, sql, binds) = {
            let q = self.query_for(def, t, params)?;
            (q.lock_sql.clone(), q.sql.clone(), q.binds.clone())
        };
        self.flush()?;
        // The table's row first, as every writer locks it (then its tracking row):
        // one order, no deadlock with a single-row office transaction.
        if !self.locked.contains(&row_id) {
            self.query(&lock_sql, &[&typed_key])?;
        }
        let bound: Vec<Bind<'_>> = binds.iter().map(Bind).collect();
        let mut all: Params_<'_> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        all.push(&t.info.name);
        all.push(&text_key);
        all.push(&typed_key);
        all.push(&base);
        let rows = self.query(&sql, &all)?;
        Ok(rows.first().map(|r| current_of(t, r, 0)))
    }

    fn parent(
        &mut self,
        def: &TaskDef,
        table: &str,
        params: &Params,
        key: &Value,
        base: Option<i64>,
    ) -> Result<(bool, bool), StoreError> {
        let id = (
            table.to_string(),
            params.user.clone(),
            serde_json::to_string(key).expect("serializes"),
            base,
        );
        if let Some(known) = self.parents.get(&id) {
            return Ok(*known);
        }
        let info = self
            .info(table)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{table}` is gone")))?;
        let declared = declared_of(&info, &info.primary_key);
        let qkey = (table.to_string(), params.user.clone());
        if !self.parent_queries.contains_key(&qkey) {
            let parent = def.table(table).expect("checked: parent is in the task");
            let infos = self.task_infos(def)?;
            let mut binds = Vec::new();
            let cond = plan::slice_condition(
                def,
                parent,
                params,
                Dialect::Postgres,
                &mut binds,
                &|n| Ok(infos.get(n).cloned().flatten()),
                true,
            )?;
            let pt = quote_ident(table);
            let pk = quote_ident(&info.primary_key);
            let n = binds.len();
            let key_param = types::write_param(n + 3, &declared);
            let left = ancestor_xids(&infos, def, parent)?
                .iter()
                .fold(changed_sql("r.xid"), |acc, x| {
                    format!("{acc} OR {}", changed_sql(x))
                });
            // An unknown base (never handed out: forged) cannot show that the parent
            // left the slice after the device saw it: the insert is then refused.
            let sql = format!(
                "SELECT {pt}.{pk} IS NOT NULL AND coalesce(({cond}), false), b.snap IS NOT NULL AND coalesce({left}, false)
                 FROM (SELECT 1) one
                 LEFT JOIN fieldsync.rows r ON r.tbl = ${tbl} AND r.pk = ${key_text}
                 LEFT JOIN {pt} ON {pt}.{pk} = {key_param}
                 LEFT JOIN (SELECT snap, xid FROM fieldsync.bases WHERE id = ${base}) b ON true",
                tbl = n + 1,
                key_text = n + 2,
                base = n + 4,
            );
            self.parent_queries.insert(qkey.clone(), (sql, binds));
        }
        self.flush()?;
        let (sql, binds) = self.parent_queries[&qkey].clone();
        let typed_key = types::write_value(key, &declared);
        if !types::key_fits(key, &declared) || matches!(typed_key, Param::Invalid) {
            return Ok((false, false));
        }
        let text_key = types::text_of(key);
        let bound: Vec<Bind<'_>> = binds.iter().map(Bind).collect();
        let mut all: Params_<'_> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        all.push(&info.name);
        all.push(&text_key);
        all.push(&typed_key);
        all.push(&base);
        let rows = self.query(&sql, &all)?;
        let r = rows.first().expect("one row from (SELECT 1)");
        let known = (r.get(0), r.get(1));
        self.parents.insert(id, known);
        Ok(known)
    }

    fn forget_parents(&mut self) {
        self.parents.clear();
        // Slice membership and parent versions of rows read ahead may have changed.
        self.ahead.clear();
    }

    fn apply(&mut self, info: &TableInfo, key: &Value, write: &Write) -> Result<(), ApplyError> {
        // What was read ahead of this row is no longer what it is.
        self.ahead.remove(&(info.name.clone(), types::text_of(key)));
        let table = quote_ident(&info.name);
        let pk = quote_ident(&info.primary_key);
        let pk_declared = declared_of(info, &info.primary_key);
        let cells = |row: &fieldsync_proto::conflict::Row| -> Vec<(String, Value)> {
            row.iter().map(|(c, v)| (c.clone(), v.clone())).collect()
        };
        let batched = match write {
            Write::Insert(row) => Some((false, cells(row))),
            // The key first, then the columns set.
            Write::Update(row) if !row.is_empty() => {
                let mut keyed = vec![(info.primary_key.clone(), key.clone())];
                keyed.extend(cells(row));
                Some((true, keyed))
            }
            _ => None,
        };
        if let Some((update, cells)) = batched {
            let values: Vec<Param> = cells
                .iter()
                .map(|(c, v)| types::write_value(v, &declared_of(info, c)))
                .collect();
            if values.iter().any(|v| matches!(v, Param::Invalid)) {
                return Err(ApplyError::Refused(
                    "bytes that are not UTF-8 cannot be stored in a text column".into(),
                ));
            }
            let same_shape = self.pending.as_ref().is_some_and(|p| {
                p.update == update
                    && p.info.name == info.name
                    && p.columns.iter().eq(cells.iter().map(|(c, _)| c))
            });
            if !same_shape {
                self.flush().map_err(ApplyError::Store)?;
                self.pending = Some(PendingWrites {
                    update,
                    info: info.clone(),
                    columns: cells.iter().map(|(c, _)| c.clone()).collect(),
                    rows: Vec::new(),
                });
            }
            let index = self.asked.saturating_sub(1);
            let p = self.pending.as_mut().expect("set above");
            p.rows.push((index, values));
            let limit = WRITE_BATCH.min(60_000 / p.columns.len().max(1));
            if p.rows.len() >= limit {
                self.flush().map_err(ApplyError::Store)?;
            }
            return Ok(());
        }
        self.flush().map_err(ApplyError::Store)?;
        let mut values: Vec<Param> = Vec::new();
        let sql = match write {
            Write::Insert(row) => {
                let mut names = Vec::new();
                let mut marks = Vec::new();
                for (c, v) in row {
                    let d = declared_of(info, c);
                    values.push(types::write_value(v, &d));
                    names.push(quote_ident(c));
                    marks.push(types::write_param(values.len(), &d));
                }
                format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    names.join(", "),
                    marks.join(", ")
                )
            }
            Write::Update(row) => {
                let mut sets = Vec::new();
                for (c, v) in row {
                    let d = declared_of(info, c);
                    values.push(types::write_value(v, &d));
                    sets.push(format!(
                        "{} = {}",
                        quote_ident(c),
                        types::write_param(values.len(), &d)
                    ));
                }
                values.push(types::write_value(key, &pk_declared));
                format!(
                    "UPDATE {table} SET {} WHERE {pk} = {}",
                    sets.join(", "),
                    types::write_param(values.len(), &pk_declared)
                )
            }
            Write::Delete => {
                values.push(types::write_value(key, &pk_declared));
                format!(
                    "DELETE FROM {table} WHERE {pk} = {}",
                    types::write_param(1, &pk_declared)
                )
            }
        };
        if values.iter().any(|v| matches!(v, Param::Invalid)) {
            return Err(ApplyError::Refused(
                "bytes that are not UTF-8 cannot be stored in a text column".into(),
            ));
        }
        let refs: Params_<'_> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        match self.execute(&sql, &refs) {
            Ok(_) => Ok(()),
            Err(e) => {
                let refused = e.code().is_some_and(|c| {
                    let class = &c.code()[..2];
                    class == "22" || class == "23"
                });
                if refused {
                    Err(ApplyError::Refused(pg_message(&e)))
                } else {
                    Err(ApplyError::Store(self.note(e)))
                }
            }
        }
    }

    /// One base per upload: its snapshot plus its own transaction, so the rows it
    /// wrote count as seen and later writers' do not.
    fn new_version(&mut self, device: &str) -> Result<i64, StoreError> {
        if let Some(id) = self.new_base {
            return Ok(id);
        }
        let rows = self.query(
            "INSERT INTO fieldsync.bases (snap, xid, device) VALUES (pg_current_snapshot(), pg_current_xact_id(), $1) RETURNING id",
            &[&device],
        )?;
        let id: i64 = rows[0].get(0);
        self.new_base = Some(id);
        Ok(id)
    }

    fn log_conflict(&mut self, c: &ConflictLog<'_>) -> Result<(), StoreError> {
        let (e, n) = (c.entry, c.note);
        let key = serde_json::to_string(&e.key).expect("serializes");
        let device = serde_json::to_string(&n.device).expect("serializes");
        let server = serde_json::to_string(&n.server).expect("serializes");
        let r = self.execute(
            "INSERT INTO fieldsync.conflicts (at, device, user_name, task, tbl, key, op, kind, policy, resolution,
                 device_values, server_values, base_version, server_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &c.ctx.at,
                &c.ctx.device,
                &e.user,
                &c.ctx.task.name,
                &e.table,
                &key,
                &op_name(e.op),
                &n.kind,
                &c.policy,
                &n.resolution,
                &device,
                &server,
                &e.base_version,
                &c.server_version,
            ],
        );
        r.map(|_| ()).map_err(|e| self.note(e))
    }

    fn record(
        &mut self,
        ctx: &IntegrateContext<'_>,
        upload_id: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.flush()?;
        let r = self.execute(
            "INSERT INTO fieldsync.uploads (upload_id, device, user_name, task, outcome, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &upload_id,
                &ctx.device,
                &ctx.sender,
                &ctx.task.name,
                &outcome,
                &ctx.at,
            ],
        );
        r.map(|_| ()).map_err(|e| self.note(e))
    }
}
