//! Integrating an upload, engine-neutral: check every entry, apply what
//! `conflict::decide` says, log conflicts and record the upload id, or refuse the
//! whole upload when any entry is forbidden. The engine supplies one open transaction
//! ([`UploadTx`]); it commits when this returns `Ok` and rolls back otherwise.

use std::collections::HashMap;

use fieldsync_proto::conflict::{self, ConflictNote, Current, Decision, Write};
use fieldsync_proto::filter::{self, Expr, Params};
use fieldsync_proto::task::{TaskDef, TaskTable, WriteOp};
use fieldsync_proto::wire::{NewVersion, Upload, UploadEntry, UploadOutcome};
use fieldsync_proto::{ColumnType, Value};

use crate::plan;
use crate::{IntegrateContext, IntegrateError, StoreError, TableInfo};

/// What integration needs to know about one table of the task.
pub(crate) struct TableCtx<'t> {
    pub task_table: &'t TaskTable,
    pub info: TableInfo,
    /// The task's columns of the table, primary key first.
    pub columns: Vec<String>,
    pub filter: Option<Expr>,
}

/// A write the main database refused, or a failure of the database itself.
pub(crate) enum ApplyError {
    /// A constraint or a value the database would not take: the upload is refused.
    Refused(String),
    Store(StoreError),
}

/// One upload's transaction in the engine: reads judged against the entry's base
/// version (how versions compare is the engine's own), writes, and the logs.
pub(crate) trait UploadTx {
    /// The device and recorded outcome (JSON) of an upload id seen before.
    fn recorded(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError>;
    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>, StoreError>;
    fn user_enabled(&mut self, user: &str) -> Result<bool, StoreError>;
    /// The entry's row now, for the slice of `params`' user, locked against concurrent
    /// writers until the transaction ends.
    fn current(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        key: &Value,
        base: Option<i64>,
    ) -> Result<Option<Current>, StoreError>;
    /// The upload's entries before any is judged, in order: an engine may read and
    /// lock their rows ahead in a few statements instead of one per entry. `current`
    /// is then called once per entry, in this order.
    fn read_ahead(&mut self, _entries: &[UploadEntry]) {}
    /// Whether a parent row is in the slice; when not, whether it (or its own parent
    /// chain) changed since `base`, i.e. left the slice after the device saw it.
    fn parent(
        &mut self,
        def: &TaskDef,
        table: &str,
        params: &Params,
        key: &Value,
        base: Option<i64>,
    ) -> Result<(bool, bool), StoreError>;
    /// Puts a device's values of `row` in the form they travel in: an engine whose
    /// columns have a canonical text (PostgreSQL's times and numerics) gives the text
    /// the device would download (`2026-11-26T08:30:00Z` becomes
    /// `2026-11-26T08:30:00.000000Z`, `0.2` in a `numeric(6,2)` column `0.20`), so a
    /// device's own value written in another form compares equal to the row as read.
    /// A value the column cannot take is left as it is (its write is refused later).
    fn canonical(&mut self, _info: &TableInfo, _row: &mut conflict::Row) -> Result<(), StoreError> {
        Ok(())
    }
    /// A parent table was written: what `parent` learnt may be stale.
    fn forget_parents(&mut self);
    fn apply(&mut self, info: &TableInfo, key: &Value, write: &Write) -> Result<(), ApplyError>;
    /// The version a device may take as its base of a row this upload wrote cleanly.
    fn new_version(&mut self) -> Result<i64, StoreError>;
    fn log_conflict(&mut self, c: &ConflictLog<'_>) -> Result<(), StoreError>;
    /// Records the upload id with its outcome (JSON), in the same transaction.
    fn record(
        &mut self,
        ctx: &IntegrateContext<'_>,
        upload_id: &str,
        outcome: &str,
    ) -> Result<(), StoreError>;
}

/// One conflict-log record as the engine stores it.
pub(crate) struct ConflictLog<'a> {
    pub ctx: &'a IntegrateContext<'a>,
    pub entry: &'a UploadEntry,
    pub policy: &'a str,
    pub note: &'a ConflictNote,
    pub server_version: Option<i64>,
}

pub(crate) fn op_name(op: WriteOp) -> &'static str {
    match op {
        WriteOp::Insert => "insert",
        WriteOp::Update => "update",
        WriteOp::Delete => "delete",
    }
}

/// Names an entry in refusals: its position, operation, table and key.
pub(crate) fn entry_label(i: usize, e: &UploadEntry) -> String {
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

pub(crate) fn integrate(
    tx: &mut dyn UploadTx,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    if let Some((device, outcome)) = tx.recorded(&upload.upload_id)? {
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
        let info = tx
            .table_info(&t.name)?
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
    tx.read_ahead(&upload.entries);
    let mut user_ok: HashMap<&str, bool> = HashMap::new();
    let mut params_of: HashMap<&str, Params> = HashMap::new();
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
        let assigned = match user_ok.get(e.user.as_str()) {
            Some(ok) => *ok,
            None => {
                let ok = ctx.task.users.contains(&e.user) && tx.user_enabled(&e.user)?;
                user_ok.insert(e.user.as_str(), ok);
                ok
            }
        };
        if !assigned {
            return Err(forbidden(
                &label,
                format!(
                    "user `{}` is not assigned to task `{}` (or is disabled)",
                    e.user, def.name
                ),
            ));
        }
        let params = params_of.entry(e.user.as_str()).or_insert_with(|| Params {
            user: e.user.clone(),
            device: ctx.device.to_string(),
        });
        let current = tx.current(def, t, params, &e.key, e.base_version)?;
        // Values compare as they travel: the device's own, in the canonical form.
        let canonical_entry;
        let e = if current
            .as_ref()
            .is_some_and(|c| c.changed || e.op == WriteOp::Insert)
        {
            let mut c = e.clone();
            tx.canonical(&t.info, &mut c.old)?;
            tx.canonical(&t.info, &mut c.new)?;
            canonical_entry = c;
            &canonical_entry
        } else {
            e
        };
        let filtered = match (&t.filter, e.op) {
            (Some(f), WriteOp::Insert) => {
                let mut probe: conflict::Row = f
                    .columns()
                    .into_iter()
                    .filter_map(|c| e.new.get(&c).map(|v| (c, v.clone())))
                    .collect();
                tx.canonical(&t.info, &mut probe)?;
                probe
            }
            _ => Default::default(),
        };
        let insert_in_slice = e.op == WriteOp::Insert
            && t.filter.as_ref().is_none_or(|f| {
                f.matches_typed(
                    &|c| filtered.get(c).cloned().unwrap_or(Value::Null),
                    &|c| {
                        t.info
                            .column(c)
                            .is_some_and(|c| c.column_type == ColumnType::Decimal)
                    },
                    params,
                )
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
        let clean = note.is_none() && current.as_ref().is_none_or(|c| !c.changed);
        // The row's own filter was checked in `decide`; its parent chain is the
        // database's to judge, before the row is written.
        let (write, note) = match (&write, &t.task_table.parent) {
            (Some(Write::Insert(row)), Some(p)) => {
                let parent_key = row.get(&p.key).unwrap_or(&Value::Null);
                let (inside, left) =
                    tx.parent(def, &p.table, params, parent_key, e.base_version)?;
                if inside {
                    (write, note)
                } else if e.base_version.is_some() && left {
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
        let mut version = None;
        if let Some(w) = &write {
            tx.apply(&t.info, &e.key, w).map_err(|err| match err {
                ApplyError::Refused(why) => {
                    forbidden(&label, format!("the main database refused it: {why}"))
                }
                ApplyError::Store(s) => IntegrateError::Store(s),
            })?;
            outcome.applied += 1;
            if parent_tables.contains(e.table.as_str()) {
                tx.forget_parents();
            }
            if clean && !matches!(w, Write::Delete) {
                version = Some(tx.new_version()?);
            }
        }
        if let Some(n) = &note {
            let policy = serde_json::to_value(t.task_table.conflict).expect("serializes");
            tx.log_conflict(&ConflictLog {
                ctx,
                entry: e,
                policy: policy.as_str().unwrap_or_default(),
                note: n,
                server_version: current.as_ref().map(|c| c.version),
            })?;
            outcome.conflicts += 1;
        }
        outcome.versions.push(NewVersion {
            table: e.table.clone(),
            key: e.key.clone(),
            version,
        });
    }
    let recorded = serde_json::to_string(&outcome).expect("serializes");
    tx.record(ctx, &upload.upload_id, &recorded)?;
    Ok(outcome)
}
