//! The PostgreSQL side of integrating an upload (`crate::integrate` has the rules):
//! one READ COMMITTED transaction per upload. Before an entry's row is judged, its
//! row in the table and its tracking row are locked (`FOR UPDATE`), so a concurrent
//! office writer or another upload either committed before the check (and is seen)
//! or waits until this upload commits: nothing comes between the check and the write.
//! A transaction that deadlocks with an office writer is retried.
//!
//! `writes.rs` batches the writes, `tx.rs` is the [`UploadTx`] the rules run over.

mod parents;
mod tx;
mod writes;

use tx::Reads;
use writes::{PendingWrites, WRITE_BATCH, current_of, refused};

use std::collections::{BTreeMap, HashMap};

use fieldsync_proto::Value;
use fieldsync_proto::conflict::{Current, Row, Write};
use fieldsync_proto::filter::Params;
use fieldsync_proto::task::{TaskDef, TaskTable};
use fieldsync_proto::wire::{Upload, UploadEntry, UploadOutcome};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Statement, Transaction};

use super::PgStore;
use super::types::{self, Bind, Param};
use super::{pg_message, table_info};
use crate::Uploads;
use crate::integrate::{
    self, ApplyError, BaseKind, ConflictLog, Lookups, TableCtx, UploadTx, op_name,
};
use crate::plan::{self, quote_ident};
use crate::{IntegrateContext, IntegrateError, StoreError, TableInfo};

/// Every statement of an upload finds its rows by key. With the default costs the
/// planner read a table of some 10,000–300,000 rows whole instead (a hash join for a
/// batch of 500 updates, a filter for 1,000 keys to lock): a scan of the table per
/// batch, 12 ms a batch of 500 updates at 100,000 rows against 7 ms by key.
/// Sequential scans are still taken where nothing else can be (a table without an
/// index that an office trigger reads); they only stop being preferred, for this
/// transaction. The plans are generic from the first execution: an upload prepares
/// its statements anew, and planning each of the first five executions for its
/// 1,000 keys cost more than running it (a window's read-ahead: 21 ms planned each
/// time, 10 ms generic). These settings also hold for the office's triggers that the
/// upload's writes fire, and end with the transaction. JIT is off as well: the first
/// setting costs a scan that can only be sequential past `jit_above_cost`, and
/// PostgreSQL then compiled it at every execution. An office trigger reading a table
/// of 1,000 rows without an index made an insert of 100 rows take 1,725 ms instead of
/// 6 ms (JIT compiling the trigger's query for each row); no statement of an upload
/// gains from JIT.
const PLAN_BY_KEYS: &str = "SET LOCAL enable_seqscan = off; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off";

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
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}; {PLAN_BY_KEYS}",
            lock_timeout_ms()
        ))
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
            locked: HashMap::new(),
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

/// The [`ParentId`] of `key` in `table` for `user`'s entry based on `base`: one form for
/// the read-ahead that fills `PgUpload::parents` and the lookups that read it.
fn parent_id(table: &str, user: &str, key: &Value, base: Option<i64>) -> ParentId {
    (
        table.to_string(),
        user.to_string(),
        serde_json::to_string(key).expect("serializes"),
        base,
    )
}

/// The current-row query of one table for one user.
struct CurrentQuery {
    lock_sql: String,
    sql: String,
    /// The same for many entries: `(key, base)` pairs from two arrays, no locks (the
    /// rows are locked ahead), each row led by its key and base.
    batch_sql: String,
    binds: Vec<Value>,
}

/// Entries read ahead per round. Each round flushes the writes before it, so it also
/// bounds a batched write (`WRITE_BATCH`). 2,500 made a send of 100,000 updates ~5%
/// faster than 1,000 but its server peak 4.5 MB higher (30.9 MB, the rows read ahead):
/// BENCHMARKS.md, "PostgreSQL's send: fewer statements".
const WINDOW: usize = 1000;

struct PgUpload<'c, 'u> {
    tx: Transaction<'c>,
    statements: HashMap<String, Statement>,
    queries: HashMap<(String, String), CurrentQuery>,
    /// Parent membership learnt in this upload: (table, user, key, base) → (inside, left).
    parents: HashMap<ParentId, (bool, bool)>,
    parent_queries: HashMap<(String, String), parents::ParentQuery>,
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
    /// Each with whether it has a tracking row (locked with it): the others are new.
    locked: HashMap<(String, String), bool>,
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

/// "Changed since the base" for a transaction id expression `x`, with the base joined
/// as `b` (snapshot `b.snap`, own transaction `b.xid`): written by a transaction the
/// base's snapshot does not see, other than the base's own. An unknown base (no row
/// `b`) counts every row as changed, so values are compared and nothing is lost.
fn changed_sql(x: &str) -> String {
    format!(
        "({x} IS NOT NULL AND (b.snap IS NULL OR NOT (coalesce({x} = b.xid, false) OR pg_visible_in_snapshot({x}, b.snap))))"
    )
}

/// A column's declared type (`text` for a column the table does not have).
fn declared_of<'i>(info: &'i TableInfo, column: &str) -> &'i str {
    info.column(column)
        .map_or("text", |c| c.declared_type.as_str())
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
                    .and_then(Option::as_ref)
                    .map(|info| declared_of(info, &info.primary_key))
                    .unwrap_or_default();
                format!(
                    "(SELECT v.xid FROM fieldsync.rows v WHERE v.tbl = {} AND v.pk = {})",
                    plan::quote_literal(&table),
                    types::key_text(&format!("({key_sql})"), key_type)
                )
            })
            .collect(),
    )
}

/// "Changed since the base" for a row (`r`) or any row of its parent chain, and the
/// join that reads the chain's transaction ids (`ancestor_xids`) once per row, as
/// `anc.x0`, `anc.x1`, …: written inline, each scalar subquery ran three times
/// (`changed_sql` names its expression thrice). The join goes after the table's own.
fn left_sql(ancestors: &[String]) -> (String, String) {
    let left = (0..ancestors.len()).fold(changed_sql("r.xid"), |acc, i| {
        format!("{acc} OR {}", changed_sql(&format!("anc.x{i}")))
    });
    if ancestors.is_empty() {
        return (left, String::new());
    }
    let xids: Vec<String> = ancestors
        .iter()
        .enumerate()
        .map(|(i, x)| format!("{x} AS x{i}"))
        .collect();
    let join = format!(
        "LEFT JOIN LATERAL (SELECT {} OFFSET 0) anc ON true",
        xids.join(", ")
    );
    (left, join)
}

fn current_query(
    infos: &Infos,
    def: &TaskDef,
    t: &TableCtx<'_>,
    params: &Params,
) -> Result<CurrentQuery, StoreError> {
    let (cond, binds) =
        plan::row_condition(def, t.task_table, params, &types::PgDialect, &|name| {
            Ok(infos.get(name).cloned().flatten())
        })?;
    let table = quote_ident(&t.info.name);
    let pk = quote_ident(&t.info.primary_key);
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            types::read_expr(
                &format!("{table}.{}", quote_ident(c)),
                declared_of(&t.info, c),
            )
        })
        .collect();
    let (left, ancestors) = left_sql(&ancestor_xids(infos, def, t.task_table)?);
    let n = binds.len();
    let key_param = types::write_param(n + 3, declared_of(&t.info, &t.info.primary_key));
    let sql = format!(
        "SELECT r.xid::text::int8, r.deleted, {changed}, {left},
                CASE WHEN {table}.{pk} IS NULL THEN false ELSE ({cond}) END, {cols}
         FROM fieldsync.rows r
         LEFT JOIN (SELECT snap, xid FROM fieldsync.bases WHERE id = ${base}) b ON true
         LEFT JOIN {table} ON {table}.{pk} = {key_param}
         {ancestors}
         WHERE r.tbl = ${tbl} AND r.pk = ${key_text}
         FOR UPDATE OF r",
        changed = changed_sql("r.xid"),
        cols = cols.join(", "),
        tbl = n + 1,
        key_text = n + 2,
        base = n + 4,
    );
    let pk_declared = declared_of(&t.info, &t.info.primary_key);
    // Each entry's rows by their keys (`LATERAL … OFFSET 0`: never flattened into a
    // join the planner may make a hash of whole tables, as it did while the
    // statistics still said the tables were small: 30-120 ms a window of 1,000).
    let batch_sql = format!(
        "SELECT e.pk, e.base, r.xid::text::int8, r.deleted, {changed}, {left},
                CASE WHEN {table}.{pk} IS NULL THEN false ELSE ({cond}) END, {cols}
         FROM unnest(${keys}::text[], ${bases}::int8[]) AS e (pk, base)
         JOIN LATERAL (SELECT * FROM fieldsync.rows WHERE tbl = ${tbl} AND pk = e.pk OFFSET 0) r ON true
         LEFT JOIN LATERAL (SELECT snap, xid FROM fieldsync.bases WHERE id = e.base OFFSET 0) b ON true
         LEFT JOIN LATERAL (SELECT * FROM {table} WHERE {pk} = CAST(e.pk AS {pk_declared}) OFFSET 0) {table} ON true
         {ancestors}",
        changed = changed_sql("r.xid"),
        cols = cols.join(", "),
        tbl = n + 1,
        keys = n + 2,
        bases = n + 3,
    );
    let lock_sql = format!(
        "SELECT 1 FROM {table} WHERE {pk} = {} FOR UPDATE",
        types::write_param(1, pk_declared)
    );
    Ok(CurrentQuery {
        lock_sql,
        sql,
        batch_sql,
        binds,
    })
}

impl Uploads for PgStore {
    fn integrate(
        &self,
        ctx: &IntegrateContext<'_>,
        upload: &Upload,
    ) -> Result<UploadOutcome, IntegrateError> {
        let mut c = self.conn()?;
        integrate(&mut c, ctx, upload)
    }

    fn upload_recorded(&self, upload_id: &str) -> crate::Result<Option<(String, String, String)>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT device, user_name, outcome FROM fieldsync.uploads WHERE upload_id = $1",
                &[&upload_id],
            )?
            .map(|r| (r.get(0), r.get(1), r.get(2))))
    }
}
