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

/// The reads the checks of an upload's entries need: the schema and fieldsync's
/// users. None takes a lock: [`precheck`] runs them before the engine locks anything,
/// and the upload's transaction again ([`UploadTx`]).
pub(crate) trait Lookups {
    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>, StoreError>;
    fn user_enabled(&mut self, user: &str) -> Result<bool, StoreError>;
    /// Whether `user` ever logged in on `device` (a journal entry's user must have).
    fn user_logged_in(&mut self, device: &str, user: &str) -> Result<bool, StoreError>;
    /// The device and recorded outcome (JSON) of an upload id seen before, read
    /// without waiting for anything.
    fn recorded_now(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError>;
}

/// One upload's transaction in the engine: reads judged against the entry's base
/// version (how versions compare is the engine's own), writes, and the logs.
pub(crate) trait UploadTx: Lookups {
    /// The device and recorded outcome (JSON) of an upload id seen before (an engine
    /// may wait here for the same upload integrated elsewhere).
    fn recorded(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError>;
    /// What kind of base `base` is for `device`; `None`: past every base the server
    /// ever handed out, so never handed to this device.
    fn base_kind(&mut self, device: &str, base: i64) -> Result<Option<BaseKind>, StoreError>;
    /// Whether the row with `key`, as the main database stores it now (after its own
    /// conversions), is in the slice of `params`' user.
    fn stored_in_slice(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        key: &Value,
    ) -> Result<bool, StoreError>;
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
    /// The version a device may take as its base of a row this upload wrote (handed
    /// to `device`, so recorded as one of its bases).
    fn new_version(&mut self, device: &str) -> Result<i64, StoreError>;
    fn log_conflict(&mut self, c: &ConflictLog<'_>) -> Result<(), StoreError>;
    /// Records the upload id with its outcome (JSON), in the same transaction.
    fn record(
        &mut self,
        ctx: &IntegrateContext<'_>,
        upload_id: &str,
        outcome: &str,
    ) -> Result<(), StoreError>;
}

/// Where a base a device sends came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BaseKind {
    /// A download's cursor (or a base handed out before bases were recorded).
    Download,
    /// An upload's acknowledgement: the version of rows that upload wrote.
    Upload,
    /// Not recorded for this device, but not past anything the server handed out (a
    /// download's base recorded late, bases emptied, a restored history): the entry's
    /// row counts as changed, so its values are compared and nothing is overwritten
    /// silently; a row outside the slice is refused (only a restore excuses it).
    Unknown,
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

/// The recorded outcome of an upload id, as the answer to its repeat.
fn repeated(
    ctx: &IntegrateContext<'_>,
    device: &str,
    outcome: &str,
) -> Result<UploadOutcome, IntegrateError> {
    if device != ctx.device {
        return Err(IntegrateError::Forbidden(
            "the upload id belongs to another device".into(),
        ));
    }
    let mut outcome: UploadOutcome = serde_json::from_str(outcome)
        .map_err(|e| StoreError::Db(format!("recorded outcome unreadable: {e}")))?;
    outcome.repeated = true;
    Ok(outcome)
}

/// The task's tables as they are today (none when the task is gone), each with its
/// columns and filter; a table gone, untracked or without a task column is an error.
fn today_tables<'a, L: Lookups + ?Sized>(
    l: &mut L,
    ctx: &IntegrateContext<'a>,
) -> Result<HashMap<&'a str, TableCtx<'a>>, IntegrateError> {
    let def = ctx.today.map_or(ctx.task, |t| &t.def);
    let mut tables = HashMap::new();
    for t in ctx
        .today
        .map(|t| t.def.tables.as_slice())
        .unwrap_or_default()
    {
        let info = l
            .table_info(&t.name)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", t.name)))?;
        if !info.tracked {
            return Err(plan::untracked(&t.name).into());
        }
        let columns = plan::slice_columns(t, &info);
        if let Some(gone) = columns.iter().find(|c| info.column(c).is_none()) {
            return Err(StoreError::Invalid(format!(
                "column `{gone}` no longer exists in table `{}` of the main database (the office \
                 changed its schema); ask the office to update task `{}`",
                t.name, def.name
            ))
            .into());
        }
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
    Ok(tables)
}

/// Entry users judged so far in an upload: allowed, or why not.
type UserChecks = HashMap<String, Result<(), String>>;

/// The checks of one entry that depend on nothing the upload's transaction locks
/// (the task versions, the schema, the entry's users): a refusal, `None` when the
/// entry is a `task-changed` conflict (logged, not applied), else today's table.
fn judge_static<'t, 'a, L: Lookups + ?Sized>(
    l: &mut L,
    ctx: &IntegrateContext<'a>,
    tables: &'t HashMap<&'a str, TableCtx<'a>>,
    users: &mut UserChecks,
    i: usize,
    e: &UploadEntry,
) -> Result<Option<&'t TableCtx<'a>>, IntegrateError> {
    let label = Label(i, e);
    let device_def = ctx.task;
    // What the device's own task version never allowed refuses the upload.
    let device_table = device_def.table(&e.table).ok_or_else(|| {
        forbidden(
            &label,
            format!("table `{}` is not in task `{}`", e.table, device_def.name),
        )
    })?;
    if !device_table.write.contains(&e.op) {
        return Err(forbidden(
            &label,
            format!(
                "task `{}` does not allow {} on table `{}`",
                device_def.name,
                op_name(e.op),
                e.table
            ),
        ));
    }
    let user_check = match users.get(e.user.as_str()) {
        Some(ok) => ok.clone(),
        None => {
            let ok = if !l.user_enabled(&e.user)? {
                Err(format!("user `{}` is disabled", e.user))
            } else if !l.user_logged_in(ctx.device, &e.user)? {
                Err(format!(
                    "user `{}` never logged in on device `{}`",
                    e.user, ctx.device
                ))
            } else {
                Ok(())
            };
            users.insert(e.user.clone(), ok.clone());
            ok
        }
    };
    user_check.map_err(|why| forbidden(&label, why))?;
    let today = tables.get(e.table.as_str());
    let written = || e.new.keys().chain(e.old.keys());
    if let Some(cols) = &device_table.columns {
        let key = today.map(|t| &t.info.primary_key);
        let parent_key = device_table.parent.as_ref().map(|p| &p.key);
        if let Some(col) =
            written().find(|c| !cols.contains(c) && Some(*c) != key && Some(*c) != parent_key)
        {
            return Err(forbidden(
                &label,
                format!("column `{col}` is not in the task"),
            ));
        }
    }
    let def = ctx.today.map_or(device_def, |t| &t.def);
    // A column the office dropped is its schema change, not the device's fault.
    if let Some(t) = today
        && let Some(col) = written().find(|c| t.info.column(c).is_none())
    {
        return Err(IntegrateError::Store(StoreError::Invalid(format!(
            "{}: column `{col}` no longer exists in table `{}` of the main database \
             (the office changed its schema); ask the office to update task `{}`",
            entry_label(i, e),
            e.table,
            def.name
        ))));
    }
    // What that version allowed and today's task does not (a table, column or
    // permission removed, the user unassigned, the task unassigned, deleted or
    // renamed) is a conflict: logged, not applied; the rest of the upload goes on.
    let allowed_today = |t: &&TableCtx<'_>| {
        ctx.today.is_some_and(|x| x.users.contains(&e.user))
            && t.task_table.write.contains(&e.op)
            && written().all(|c| t.columns.contains(c))
    };
    let Some(t) = today.filter(allowed_today) else {
        return Ok(None);
    };
    let pk = &t.info.primary_key;
    if e.op == WriteOp::Update && e.new.contains_key(pk) {
        return Err(forbidden(&label, "primary-key values cannot be updated"));
    }
    if e.op == WriteOp::Insert && !e.new.get(pk).is_some_and(|k| k.same(&e.key)) {
        return Err(forbidden(&label, "an insert must carry its key"));
    }
    Ok(Some(t))
}

/// The checks of every entry that need no lock (see [`judge_static`]), over the whole
/// upload before the engine takes any: a forbidden entry, even the last of a million,
/// is refused without ever holding a write lock or a row lock. `Some`: the upload id
/// was recorded meanwhile (its outcome is the answer). The upload's transaction
/// checks again what it reads (a user disabled in between is still refused).
pub(crate) fn precheck(
    l: &mut dyn Lookups,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<Option<UploadOutcome>, IntegrateError> {
    let checked = today_tables(l, ctx).and_then(|tables| {
        let mut users = UserChecks::new();
        for (i, e) in upload.entries.iter().enumerate() {
            judge_static(l, ctx, &tables, &mut users, i, e)?;
        }
        Ok(())
    });
    match checked {
        Ok(()) => Ok(None),
        // A known upload is answered with its outcome, whatever changed since.
        Err(refusal) => match l.recorded_now(&upload.upload_id)? {
            Some((device, outcome)) => repeated(ctx, &device, &outcome).map(Some),
            None => Err(refusal),
        },
    }
}

pub(crate) fn integrate(
    tx: &mut dyn UploadTx,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    if let Some((device, outcome)) = tx.recorded(&upload.upload_id)? {
        return repeated(ctx, &device, &outcome);
    }

    // Slices are judged by the task as it is today; what the device could write, by
    // the version it worked under.
    let device_def = ctx.task;
    let def = ctx.today.map_or(device_def, |t| &t.def);
    let task_changed = ctx.today.is_none_or(|t| t.def != *device_def);
    let tables = today_tables(tx, ctx)?;
    tx.read_ahead(&upload.entries);
    let mut users = UserChecks::new();
    let mut params_of: HashMap<&str, Params> = HashMap::new();
    let mut base_kinds: HashMap<i64, Option<BaseKind>> = HashMap::new();
    // Rows an earlier entry of this upload wrote (true) or left alone with a conflict
    // (false): a later entry of the same row (an insert and the update that moved it
    // out of the slice, a delete and the insert that re-created its key) is judged
    // against what that entry did, not as somebody else's change.
    let mut done: HashMap<(&str, String), Done> = HashMap::new();
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
        let Some(t) = judge_static(tx, ctx, &tables, &mut users, i, e)? else {
            not_applied(tx, ctx, e, &mut outcome, "task-changed")?;
            continue;
        };
        let pk = &t.info.primary_key;
        // A base is a version the server handed to this device, never a number the
        // device made up: a made-up one could make an office change look seen.
        let base_kind = match e.base_version {
            None => None,
            Some(b) => {
                let kind = match base_kinds.get(&b) {
                    Some(k) => *k,
                    None => {
                        let k = if ctx.restored {
                            Some(BaseKind::Unknown)
                        } else {
                            tx.base_kind(ctx.device, b)?
                        };
                        base_kinds.insert(b, k);
                        k
                    }
                };
                Some(kind.ok_or_else(|| {
                    forbidden(
                        &label,
                        "its base version was never handed to this device by the server",
                    )
                })?)
            }
        };
        let params = params_of.entry(e.user.as_str()).or_insert_with(|| Params {
            user: e.user.clone(),
            device: ctx.device.to_string(),
        });
        let row_id = (
            e.table.as_str(),
            serde_json::to_string(&e.key).expect("serializes"),
        );
        let earlier = done.get(&row_id).copied();
        let mut current = tx.current(def, t, params, &e.key, e.base_version)?;
        if let Some(c) = current.as_mut() {
            if earlier == Some(Done::Written) {
                // This upload wrote the row itself: not somebody else's change.
                c.changed = false;
                c.left = false;
            } else if base_kind == Some(BaseKind::Unknown) {
                // Compared by value. Only a restore excuses a row outside the slice:
                // otherwise nothing shows it ever was the device's.
                if !ctx.restored && !c.in_slice && !c.deleted {
                    return Err(forbidden(&label, "the row is outside the task's slice"));
                }
                c.changed = true;
                c.left = ctx.restored;
            } else if base_kind == Some(BaseKind::Upload)
                && !c.in_slice
                && !c.changed
                && !task_changed
            {
                // Unchanged since the device's own send wrote it, and outside the slice
                // now: that send moved it out (not a row that never was the device's).
                // Under a task changed since the device's version, the change may have
                // taken it out instead: judged below as `task-changed`, not applied.
                c.left = true;
            }
        }
        if earlier == Some(Done::Written) && current.as_ref().is_some_and(|c| c.deleted) {
            // Deleted by this upload a moment ago: the key is free for its insert.
            current = None;
        }
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
        // The device's own check judged the new row by the values it wrote (a time
        // with an offset, as text); the server by the values as the main database
        // takes them. Where they disagree, the device's check was a courtesy that
        // erred: the row is logged, not applied, and the rest of the upload goes on.
        let device_saw_inside = e.op == WriteOp::Insert
            && !insert_in_slice
            && t.filter.as_ref().is_some_and(|f| {
                f.matches(&|c| e.new.get(c).cloned().unwrap_or(Value::Null), params)
            });
        let decision = if earlier == Some(Done::Skipped) {
            // The entry this one builds on was not applied: neither is this one.
            Decision::Skip(Some(ConflictNote {
                kind: "left-slice",
                resolution: "not-applied",
                device: e.new.clone(),
                server: current
                    .as_ref()
                    .map(|c| c.values.clone())
                    .unwrap_or_default(),
            }))
        } else {
            conflict::decide(
                e,
                current.as_ref(),
                insert_in_slice,
                t.task_table.conflict,
                pk,
            )
        };
        let (write, note) = match decision {
            Decision::Forbidden(_) if device_saw_inside => {
                not_applied(tx, ctx, e, &mut outcome, "outside-slice")?;
                continue;
            }
            // Outside today's slice, under a task changed since the device's version
            // (a narrowed filter): the version allowed it, so a conflict.
            Decision::Forbidden(_) if task_changed => {
                not_applied(tx, ctx, e, &mut outcome, "task-changed")?;
                continue;
            }
            Decision::Forbidden(why) => return Err(forbidden(&label, why)),
            Decision::Apply(w, n) => (Some(w), n),
            Decision::Skip(n) => (None, n),
        };
        // The task is judged on what the write really does: an insert onto a key the
        // slice already holds would be an update. Where the task allows no update,
        // it is logged, not applied (the device's own edits were allowed).
        let (write, note) = match (&write, e.op) {
            (Some(Write::Update(_)), WriteOp::Insert)
                if !t.task_table.write.contains(&WriteOp::Update) =>
            {
                let lost = ConflictNote {
                    kind: "insert-exists",
                    resolution: "not-applied",
                    device: e.new.clone(),
                    server: current
                        .as_ref()
                        .map(|c| c.values.clone())
                        .unwrap_or_default(),
                };
                (None, Some(lost))
            }
            _ => (write, note),
        };
        // The row's own filter was checked in `decide`; its parent chain is the
        // database's to judge, before the row is written.
        let (write, note) = match (&write, &t.task_table.parent) {
            (Some(Write::Insert(row)), Some(p)) => {
                let parent_key = row.get(&p.key).unwrap_or(&Value::Null);
                let (inside, left) =
                    tx.parent(def, &p.table, params, parent_key, e.base_version)?;
                if inside {
                    (write, note)
                } else if e.base_version.is_some()
                    && (left || (ctx.restored && base_kind == Some(BaseKind::Unknown)))
                {
                    // The office moved the parent out of the slice after the device
                    // saw it: the new row is logged, not applied.
                    let lost = ConflictNote {
                        kind: "left-slice",
                        resolution: "not-applied",
                        device: e.new.clone(),
                        server: Default::default(),
                    };
                    (None, Some(lost))
                } else if task_changed {
                    not_applied(tx, ctx, e, &mut outcome, "task-changed")?;
                    continue;
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
        let mut row_after = None;
        if let Some(w) = &write {
            tx.apply(&t.info, &e.key, w).map_err(|err| match err {
                ApplyError::Refused(why) => {
                    forbidden(&label, format!("the main database refused it: {why}"))
                }
                ApplyError::Store(s) => IntegrateError::Store(s),
            })?;
            // Slice membership of a new row is judged on the row as the main database
            // stores it: a value its column converts (text `"1"` into an integer
            // column) must not pass the filter as one thing and be stored as another.
            if let Write::Insert(row) = w
                && needs_stored_check(t, row)
                && !tx.stored_in_slice(def, t, params, &e.key)?
            {
                return Err(forbidden(
                    &label,
                    "the inserted row is outside the task's slice as the main database stores it",
                ));
            }
            outcome.applied += 1;
            if parent_tables.contains(e.table.as_str()) {
                tx.forget_parents();
            }
            if !matches!(w, Write::Delete) {
                version = Some(tx.new_version(ctx.device)?);
                // The device holds its own values; where the main database's row is
                // not exactly those (a conflict, or office changes merged), it gets
                // the row as written, so the version is a true base for it.
                let clean = note.is_none() && current.as_ref().is_none_or(|c| !c.changed);
                if !clean {
                    let mut after = current
                        .as_ref()
                        .map(|c| c.values.clone())
                        .unwrap_or_default();
                    if let Write::Update(cols) | Write::Insert(cols) = w {
                        after.extend(cols.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                    row_after = Some(after);
                }
            }
        }
        done.insert(
            row_id,
            if write.is_some() {
                Done::Written
            } else if note.is_some() && current.is_none() {
                Done::Skipped
            } else {
                Done::Judged
            },
        );
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
            row: row_after,
        });
    }
    let recorded = serde_json::to_string(&outcome).expect("serializes");
    tx.record(ctx, &upload.upload_id, &recorded)?;
    Ok(outcome)
}

/// Logs an entry the device had every reason to make and the server does not apply
/// (`task-changed`: its task version allowed it, today's does not; `outside-slice`:
/// the device judged the new row inside the slice by the values it wrote, the server
/// by the values as the main database takes them), and applies nothing of it.
fn not_applied(
    tx: &mut dyn UploadTx,
    ctx: &IntegrateContext<'_>,
    e: &UploadEntry,
    outcome: &mut UploadOutcome,
    kind: &'static str,
) -> Result<(), IntegrateError> {
    let device = if e.op == WriteOp::Delete {
        e.old.clone()
    } else {
        e.new.clone()
    };
    let note = ConflictNote {
        kind,
        resolution: "not-applied",
        device,
        server: Default::default(),
    };
    tx.log_conflict(&ConflictLog {
        ctx,
        entry: e,
        policy: "",
        note: &note,
        server_version: None,
    })?;
    outcome.conflicts += 1;
    outcome.versions.push(NewVersion {
        table: e.table.clone(),
        key: e.key.clone(),
        version: None,
        row: None,
    });
    Ok(())
}

/// What an earlier entry of the same upload did to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Written,
    /// Logged, not applied, and the row does not exist: later entries cannot apply.
    Skipped,
    /// Judged and left as it was (nothing to build on).
    Judged,
}

/// Whether an inserted row's slice membership must be read back from the database:
/// a filter or parent column whose value is not of the column's own kind may be
/// converted on the way in (the Rust judgment saw the value before conversion).
fn needs_stored_check(t: &TableCtx<'_>, row: &fieldsync_proto::conflict::Row) -> bool {
    let mut cols: Vec<String> = t.filter.as_ref().map(|f| f.columns()).unwrap_or_default();
    if let Some(p) = &t.task_table.parent {
        cols.push(p.key.clone());
    }
    cols.iter().any(|c| {
        let v = row.get(c).unwrap_or(&Value::Null);
        let Some(info) = t.info.column(c) else {
            return true;
        };
        !matches!(
            (v, info.column_type, plain_text(&info.declared_type)),
            (Value::Null, ..)
                | (Value::Integer(_), ColumnType::Integer, _)
                | (Value::Real(_), ColumnType::Real, _)
                | (Value::Text(_), ColumnType::Text, true)
                | (Value::Blob(_), ColumnType::Blob, _)
        )
    })
}

/// A declared type whose values are stored as the text given (no parsing on the way).
fn plain_text(declared: &str) -> bool {
    let d = declared.to_ascii_lowercase();
    d.contains("char") || d.contains("text") || d.contains("clob")
}
