//! The SQLite side of integrating an upload (`crate::integrate` has the rules): one
//! IMMEDIATE transaction, so no writer can come between a row's check and its write.
//! Versions are numbers stamped in commit order (writers are serialized), so "changed
//! since the base" is `version > base`.

use fieldsync_proto::Value;
use fieldsync_proto::conflict::{Current, Write};
use fieldsync_proto::filter::Params;
use fieldsync_proto::task::{TaskDef, TaskTable};
use fieldsync_proto::wire::{NewVersion, Upload, UploadOutcome};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::batch::{self, Flush, InsertRun, WriteSql};
use super::parents::ParentSlices;
use super::{SqliteStore, table_info, to_sql_value, value_ref};
use crate::Uploads;
use crate::integrate::{
    self, ApplyError, BaseKind, ConflictLog, Lookups, TableCtx, UploadTx, op_name,
};
use crate::plan::{self, quote_ident};
use crate::{IntegrateContext, IntegrateError, StoreError, TableInfo};

pub(super) fn integrate(
    store: &SqliteStore,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    let (mut conn, file) = kept::take(store)?;
    let outcome = integrate_on(&mut conn, ctx, upload);
    kept::give_back(store, conn, file);
    outcome
}

fn integrate_on(
    conn: &mut Connection,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    // Everything that needs no write lock first, in a read transaction (WAL: office
    // writers go on): a forbidden entry refuses the upload before `BEGIN IMMEDIATE`.
    {
        let read = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
        if let Some(known) = integrate::precheck(&mut Reads(&read), ctx, upload)? {
            return Ok(known);
        }
        read.commit()?;
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let start_version: i64 = tx.query_row(
        "SELECT coalesce(max(version), 0) FROM fieldsync_rows",
        [],
        |r| r.get(0),
    )?;
    let mut upload_tx = SqliteUpload {
        tx: &tx,
        start_version,
        queries: Vec::new(),
        max_version: tx.prepare_cached("SELECT max(version) FROM fieldsync_rows")?,
        write_sql: WriteSql::default(),
        run: InsertRun::default(),
        last_run: None,
        refused: None,
        parents: ParentSlices::default(),
        fresh: Vec::new(),
    };
    let outcome = integrate::integrate(&mut upload_tx, ctx, upload)?;
    upload_tx.flush()?;
    drop(upload_tx);
    tx.commit()?;
    Ok(outcome)
}

/// The integration's connection, kept on its thread from one upload to the next (on
/// a SQLite main database uploads are integrated on one thread, `server/integrators.rs`).
/// Opening a connection per upload read the schema again, prepared every statement
/// again, and, as the last connection to close, checkpointed the WAL into the
/// database: ~15% of a 5,000-entry upload's time (BENCHMARKS.md, "The integration's
/// connection kept"). The connection is kept only for the same file: a path that now
/// names another file (one copied in place) gets a connection of its own.
mod kept {
    use std::cell::RefCell;

    use rusqlite::Connection;

    use super::super::{FileId, file_id};
    use super::SqliteStore;
    use crate::StoreError;

    struct Kept {
        path: String,
        /// The file it was opened on.
        file: FileId,
        conn: Connection,
    }

    thread_local! {
        static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
    }

    /// This thread's kept connection to `store`'s file, or a new one; and the file it
    /// was opened on.
    pub(super) fn take(store: &SqliteStore) -> Result<(Connection, Option<FileId>), StoreError> {
        let kept = KEPT.with(|k| k.borrow_mut().take());
        if let Some(k) = kept
            && k.path == store.path
            && file_id(&store.path) == Some(k.file)
        {
            return Ok((k.conn, Some(k.file)));
        }
        let (conn, file) = store.conn()?.into_parts();
        conn.set_prepared_statement_cache_capacity(256);
        // Statement journals (each write with triggers may need a partial rollback)
        // stay in memory instead of temp-file writes. A page cache of 1 MiB: a
        // 10,000-entry upload touched 3.5 MB of pages, and with 1 MiB (the pages past
        // it go to the WAL before the commit) a 100,000-entry send peaked 1.5 MB lower
        // at the same speed, inserts and updates (BENCHMARKS.md, "A send within 32 MB").
        conn.execute_batch("PRAGMA temp_store = MEMORY; PRAGMA cache_size = -1024;")?;
        Ok((conn, file))
    }

    /// Keeps `conn`, opened on `file`, for this thread's next upload, if no transaction
    /// is left open on it and the file is known.
    pub(super) fn give_back(store: &SqliteStore, conn: Connection, file: Option<FileId>) {
        let Some(file) = file.filter(|_| conn.is_autocommit()) else {
            return;
        };
        KEPT.with(|k| {
            *k.borrow_mut() = Some(Kept {
                path: store.path.clone(),
                file,
                conn,
            })
        });
    }
}

struct SqliteUpload<'c> {
    tx: &'c Transaction<'c>,
    /// The highest version before this upload: its own writes are stamped above.
    start_version: i64,
    /// The current-row query per table and user (a few: looked up in order, no key
    /// made per entry).
    queries: Vec<(String, String, CurrentQuery<'c>)>,
    /// The highest version there is (prepared once: asked once per entry written).
    max_version: rusqlite::CachedStatement<'c>,
    write_sql: WriteSql,
    /// Inserts waiting to be written in one statement (`batch.rs`).
    run: InsertRun,
    /// The last write went into the run: the index of its version there.
    last_run: Option<usize>,
    /// A write of the run the database refused.
    refused: Option<batch::Refused>,
    parents: ParentSlices,
    /// Per entry: an insert of a key never tracked, whose row is none without a read
    /// (`fresh.rs`).
    fresh: Vec<bool>,
}

impl SqliteUpload<'_> {
    /// Writes the waiting inserts.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.run.table().is_none() {
            return Ok(());
        }
        let before: Option<i64> = self.max_version.query_row([], |r| r.get(0))?;
        match self.run.flush(self.tx, before.unwrap_or(0)) {
            Ok(()) => Ok(()),
            Err(Flush::Db(e)) => Err(e),
            Err(Flush::Refused(r)) => {
                let why = r.why.clone();
                self.refused = Some(r);
                Err(StoreError::Db(why))
            }
        }
    }

    /// Writes the waiting inserts if a read of `table` (and the tables above it in
    /// the task, whose versions it reads) could see them: any read of their table
    /// with one of their keys, or of a table under theirs.
    fn flush_before_read(
        &mut self,
        def: &TaskDef,
        table: &str,
        key: Option<&Value>,
    ) -> Result<(), StoreError> {
        let Some(waiting) = self.run.table() else {
            return Ok(());
        };
        let sees = if waiting == table {
            key.is_none_or(|k| self.run.holds_key(k))
        } else {
            let mut up = def.table(table).and_then(|t| t.parent.as_ref());
            let mut hit = false;
            while let Some(p) = up {
                if p.table == waiting {
                    hit = true;
                    break;
                }
                up = def.table(&p.table).and_then(|t| t.parent.as_ref());
            }
            hit
        };
        if sees { self.flush() } else { Ok(()) }
    }
}

/// "Changed since the base": a version above it (no base: changed).
fn after(version: i64, base: Option<i64>) -> bool {
    version > base.unwrap_or(i64::MIN)
}

/// The reads of the checks before the write lock, on a read transaction.
struct Reads<'c>(&'c Connection);

impl Lookups for Reads<'_> {
    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>, StoreError> {
        table_info(self.0, table)
    }

    fn user_enabled(&mut self, user: &str) -> Result<bool, StoreError> {
        Ok(super::user_enabled(self.0, user)?)
    }

    fn user_logged_in(&mut self, device: &str, user: &str) -> Result<bool, StoreError> {
        user_logged_in(self.0, device, user)
    }

    fn recorded_now(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
        recorded(self.0, upload_id)
    }
}

fn user_logged_in(conn: &Connection, device: &str, user: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM fieldsync_device_users WHERE device = ?1 AND user = ?2)",
        )?
        .query_row([device, user], |r| r.get(0))?)
}

fn recorded(conn: &Connection, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT device, outcome FROM fieldsync_uploads WHERE upload_id = ?1",
            [upload_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

impl Lookups for SqliteUpload<'_> {
    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>, StoreError> {
        table_info(self.tx, table)
    }

    fn user_enabled(&mut self, user: &str) -> Result<bool, StoreError> {
        Ok(super::user_enabled(self.tx, user)?)
    }

    fn user_logged_in(&mut self, device: &str, user: &str) -> Result<bool, StoreError> {
        user_logged_in(self.tx, device, user)
    }

    fn recorded_now(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
        recorded(self.tx, upload_id)
    }
}

impl UploadTx for SqliteUpload<'_> {
    fn recorded(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
        recorded(self.tx, upload_id)
    }

    fn base_kind(&mut self, device: &str, base: i64) -> Result<Option<BaseKind>, StoreError> {
        // An upload's range first: its versions are the rows it wrote.
        let kind: Option<bool> = self
            .tx
            .prepare_cached(
                "SELECT low = high FROM fieldsync_bases WHERE device = ?1 AND high >= ?2 AND low <= ?2
                 ORDER BY low = high LIMIT 1",
            )?
            .query_row(params![device, base], |r| r.get(0))
            .optional()?;
        Ok(match kind {
            Some(true) => Some(BaseKind::Download),
            Some(false) => Some(BaseKind::Upload),
            // Past every version there is: never handed out. Otherwise compared by
            // value (a download's base recorded late, or one handed out before bases
            // were recorded).
            None if base > self.start_version => None,
            None => Some(BaseKind::Unknown),
        })
    }

    /// Each write takes a version of its own, and the acknowledgement hands each row
    /// its version as its base.
    fn wrote(&mut self, base: i64, version: i64) -> Result<bool, StoreError> {
        Ok(base == version)
    }

    fn pruned_through(&mut self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tx
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM fieldsync_meta WHERE key = 'pruned_through'",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn stored_in_slice(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        key: &Value,
    ) -> Result<bool, StoreError> {
        self.flush()?;
        let (cond, binds) =
            plan::row_condition(def, t.task_table, params, &super::SqliteDialect, &|name| {
                table_info(self.tx, name)
            })?;
        let table = quote_ident(&t.info.name);
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE {table}.{pk} = ? AND ({cond}))",
            pk = quote_ident(&t.info.primary_key)
        );
        let all: Vec<_> = std::iter::once(key)
            .chain(binds.iter())
            .map(to_sql_value)
            .collect();
        Ok(self
            .tx
            .prepare_cached(&sql)?
            .query_row(rusqlite::params_from_iter(all.iter()), |r| r.get(0))?)
    }

    fn current(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        entry: usize,
        key: &Value,
        base: Option<i64>,
    ) -> Result<Option<Current>, StoreError> {
        if self.fresh.get(entry).copied().unwrap_or(false) {
            return Ok(None);
        }
        self.flush_before_read(def, &t.info.name, Some(key))?;
        let known = self
            .queries
            .iter()
            .position(|(table, user, _)| *table == t.info.name && *user == params.user);
        let i = match known {
            Some(i) => i,
            None => {
                let q = current_query(self.tx, def, t, params)?;
                self.queries
                    .push((t.info.name.clone(), params.user.clone(), q));
                self.queries.len() - 1
            }
        };
        read_current(t, &mut self.queries[i].2, key, base)
    }

    fn read_ahead(&mut self, entries: &[fieldsync_proto::wire::UploadEntry]) {
        // Any error: every entry is read as before.
        self.fresh = super::fresh::fresh_inserts(self.tx, entries).unwrap_or_default();
    }

    fn parent(
        &mut self,
        def: &TaskDef,
        table: &str,
        params: &Params,
        key: &Value,
        base: Option<i64>,
    ) -> Result<(bool, bool), StoreError> {
        self.flush_before_read(def, table, None)?;
        let (inside, version) = self.parents.check(self.tx, def, table, params, key)?;
        Ok((inside, after(version, base)))
    }

    fn forget_parents(&mut self) {
        self.parents.forget();
    }

    fn apply(
        &mut self,
        entry: usize,
        info: &TableInfo,
        key: &Value,
        write: &Write,
    ) -> Result<(), ApplyError> {
        self.last_run = None;
        if let Write::Insert(row) = write
            && self
                .run
                .takes(self.tx, info, row)
                .map_err(|e| ApplyError::Store(e.into()))?
        {
            if !self.run.joins(&info.name, row) {
                self.flush().map_err(ApplyError::Store)?;
            }
            self.last_run = Some(self.run.push(entry, info, key, row));
            if self.run.full() {
                self.flush().map_err(ApplyError::Store)?;
            }
            return Ok(());
        }
        self.flush().map_err(ApplyError::Store)?;
        batch::apply(self.tx, &mut self.write_sql, info, key, write)
            .map_err(|e| ApplyError::Refused(e.to_string()))
    }

    /// The write just stamped the highest version there is (the upload's range of
    /// versions is recorded as the device's bases in `record`); an insert waiting in
    /// the run gets a stand-in, settled in `settle_versions` once it is written.
    fn new_version(&mut self, _device: &str) -> Result<i64, StoreError> {
        if let Some(i) = self.last_run {
            return Ok(-1 - i as i64);
        }
        Ok(self.max_version.query_row([], |r| r.get(0))?)
    }

    fn settle_versions(&mut self, versions: &mut [NewVersion]) -> Result<(), StoreError> {
        self.flush()?;
        for v in versions.iter_mut() {
            if let Some(stand_in) = v.version.filter(|v| *v < 0) {
                let i = (-1 - stand_in) as usize;
                v.version = Some(*self.run.versions.get(i).ok_or_else(|| {
                    StoreError::Db(format!("no version for the upload's write {i}"))
                })?);
            }
        }
        Ok(())
    }

    fn refused_write(&mut self) -> Option<(usize, String)> {
        self.refused.take().map(|r| (r.entry, r.why))
    }

    fn attach_file(&mut self, info: &TableInfo, f: &crate::NewFile) -> Result<(), StoreError> {
        self.flush()?;
        self.tx
            .prepare_cached(
                "INSERT INTO fieldsync_files (tbl, pk, name, size, sha256, content_type, added_by, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (tbl, pk, name) DO NOTHING",
            )?
            .execute(params![
                info.name,
                f.key,
                f.name,
                f.size,
                f.sha256,
                f.content_type,
                f.added_by,
                f.added_at.to_string()
            ])?;
        Ok(())
    }

    fn claim_key(&mut self, device: &str, table: &str, key: i64) -> Result<bool, StoreError> {
        super::keys::claim_key(self.tx, device, table, key)
    }

    fn log_conflict(&mut self, c: &ConflictLog<'_>) -> Result<(), StoreError> {
        let (e, n) = (c.entry, c.note);
        self.tx
            .prepare_cached(
                "INSERT INTO fieldsync_conflicts (at, device, user, task, tbl, key, op, kind, policy, resolution,
                     device_values, server_values, base_version, server_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?
            .execute(params![
                c.ctx.at.to_string(),
                c.ctx.device,
                e.user,
                c.ctx.task.name,
                e.table,
                serde_json::to_string(&e.key).expect("serializes"),
                op_name(e.op),
                n.kind,
                c.policy,
                n.resolution,
                serde_json::to_string(&n.device).expect("serializes"),
                serde_json::to_string(&n.server).expect("serializes"),
                e.base_version,
                c.server_version,
            ])?;
        Ok(())
    }

    fn record(
        &mut self,
        ctx: &IntegrateContext<'_>,
        upload_id: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.flush()?;
        self.tx.execute(
            "INSERT INTO fieldsync_uploads (upload_id, device, user, task, outcome, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![upload_id, ctx.device, ctx.sender, ctx.task.name, outcome, ctx.at.to_string()],
        )?;
        // The versions this upload's writes were stamped with: bases of this device.
        // The highest version is read alone: only a bare `max(version)` is one index
        // lookup (with a HAVING or a filter beside it SQLite scans every row's version).
        let high: Option<i64> = self.max_version.query_row([], |r| r.get(0))?;
        let low = self.start_version + 1;
        if let Some(high) = high.filter(|h| *h >= low) {
            self.tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO fieldsync_bases (device, low, high) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![ctx.device, low, high])?;
        }
        Ok(())
    }
}

/// The query that reads an entry's row for one table and user, prepared, and its
/// binds.
struct CurrentQuery<'c> {
    stmt: rusqlite::CachedStatement<'c>,
    binds: Vec<Value>,
}

fn current_query<'c>(
    tx: &'c Transaction<'c>,
    def: &TaskDef,
    t: &TableCtx<'_>,
    params: &Params,
) -> Result<CurrentQuery<'c>, StoreError> {
    let (cond, mut binds) =
        plan::row_condition(def, t.task_table, params, &super::SqliteDialect, &|name| {
            table_info(tx, name)
        })?;
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
    Ok(CurrentQuery {
        stmt: tx.prepare_cached(&sql)?,
        binds,
    })
}

/// SQL expressions for the row versions of a table's parent chain, for the row joined
/// as the table itself: its parent's version, the grandparent's, and so on.
pub(super) fn ancestor_versions(
    tx: &Transaction<'_>,
    def: &TaskDef,
    t: &TaskTable,
) -> Result<Vec<String>, StoreError> {
    Ok(plan::ancestor_keys(def, t, &mut |name| table_info(tx, name))?
        .into_iter()
        .map(|(table, key_sql)| {
            // `pk` has no type, so comparing it with a typed column (`asset_id
            // INTEGER`) converts it first and SQLite cannot use the index: every
            // tracking row of the parent table was scanned, per entry. `+key` is the
            // key as stored, no conversion: one index lookup. The converted
            // comparison stays as the fallback for a key stored in another form.
            let v = "SELECT v.version FROM fieldsync_rows v WHERE v.tbl";
            let tbl = plan::quote_literal(&table);
            format!("coalesce(({v} = {tbl} AND v.pk = +{key_sql}), ({v} = {tbl} AND v.pk = {key_sql}))")
        })
        .collect())
}

/// The entry's row now: version, tombstone, slice membership for this user, values.
fn read_current(
    t: &TableCtx<'_>,
    q: &mut CurrentQuery<'_>,
    key: &Value,
    base: Option<i64>,
) -> Result<Option<Current>, StoreError> {
    let binds: Vec<_> = q
        .binds
        .iter()
        .chain(std::iter::once(key))
        .map(to_sql_value)
        .collect();
    Ok(q.stmt
        .query_row(rusqlite::params_from_iter(binds.iter()), |r| {
            let deleted: bool = r.get(1)?;
            let mut values = fieldsync_proto::Row::new();
            if !deleted {
                for (i, c) in t.columns.iter().enumerate() {
                    values.insert(c.clone(), value_ref(r.get_ref(4 + i)?).to_owned());
                }
            }
            let version = r.get(0)?;
            Ok(Current {
                version,
                deleted,
                in_slice: r.get::<_, Option<bool>>(2)?.unwrap_or(false),
                changed: after(version, base),
                left: after(r.get(3)?, base),
                values,
            })
        })
        .optional()?)
}

impl Uploads for SqliteStore {
    fn integrate(
        &self,
        ctx: &IntegrateContext<'_>,
        upload: &Upload,
    ) -> Result<UploadOutcome, IntegrateError> {
        integrate(self, ctx, upload)
    }

    fn upload_recorded(&self, upload_id: &str) -> crate::Result<Option<(String, String, String)>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT device, user, outcome FROM fieldsync_uploads WHERE upload_id = ?1",
                [upload_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    fn one_writer(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[path = "integrate_tests.rs"]
mod tests;
