//! Integrating an upload, engine-neutral: check every entry, apply what
//! `conflict::decide` says, log conflicts and record the upload id, or refuse the
//! whole upload when any entry is forbidden. The engine supplies one open transaction
//! ([`UploadTx`]); it commits when this returns `Ok` and rolls back otherwise.
//!
//! `judge.rs` judges what needs no lock (the whole upload, before any), `apply.rs`
//! runs the entries in the engine's transaction.

mod apply;
mod attach;
mod judge;

pub(crate) use apply::integrate;
pub(crate) use judge::precheck;
use judge::{UserChecks, judge_static, today_tables};

/// The maps an upload consults once or more per entry: foldhash, where std's SipHash
/// took 4% of a send's integration. Its seeds are random per process and per map, so a
/// device cannot choose colliding keys without learning them; it is not built to
/// resist one that studies the server to do so (its authors say as much), and an
/// upload holds at most `UPLOAD_MAX_ENTRIES` entries, so the worst is one slow
/// upload of an authenticated device.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
    /// Whether the upload whose acknowledgement handed out `base` (a
    /// [`BaseKind::Upload`]) wrote the row whose version is now `version`: a row
    /// merely older than that upload was never written by it.
    fn wrote(&mut self, base: i64, version: i64) -> Result<bool, StoreError>;
    /// The base through which retention pruned the change history (tombstones of
    /// rows deleted before it are gone), if it ever did.
    fn pruned_through(&mut self) -> Result<Option<i64>, StoreError>;
    /// Whether the row with `key`, as the main database stores it now (after its own
    /// conversions), is in the slice of `params`' user.
    fn stored_in_slice(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        key: &Value,
    ) -> Result<bool, StoreError>;
    /// The row of the upload's entry `entry` (its index) now, for the slice of
    /// `params`' user, locked against concurrent writers until the transaction ends.
    fn current(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        entry: usize,
        key: &Value,
        base: Option<i64>,
    ) -> Result<Option<Current>, StoreError>;
    /// The upload's entries before any is judged, in order: an engine may read and
    /// lock their rows ahead in a few statements instead of one per entry. `current`
    /// is then called at most once per entry, in this order.
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
    /// Writes entry `entry`'s row (or lets it wait to be written with the next ones:
    /// then `new_version` may answer a stand-in, settled by `settle_versions`, and a
    /// refusal may come from a later call as a store error, named by `refused_write`).
    fn apply(
        &mut self,
        entry: usize,
        info: &TableInfo,
        key: &Value,
        write: &Write,
    ) -> Result<(), ApplyError>;
    /// The version a device may take as its base of a row this upload wrote (handed
    /// to `device`, so recorded as one of its bases).
    fn new_version(&mut self, device: &str) -> Result<i64, StoreError>;
    /// Writes what waits and puts the true versions in place of stand-ins.
    fn settle_versions(&mut self, _versions: &mut [NewVersion]) -> Result<(), StoreError> {
        Ok(())
    }
    /// The entry whose waiting write the database refused, and why (after a store
    /// error from any call).
    fn refused_write(&mut self) -> Option<(usize, String)> {
        None
    }
    /// Whether `key`, a new row's integer key, lies in one of the blocks of `table`
    /// reserved for `device` (`crate::keys`); if so, the block's next key moves past
    /// it, so a later download never hands it out again.
    fn claim_key(&mut self, device: &str, table: &str, key: i64) -> Result<bool, StoreError>;
    fn log_conflict(&mut self, c: &ConflictLog<'_>) -> Result<(), StoreError>;
    /// Records a file attached to a row of `info` (checked already); one with the same
    /// table, key and name already recorded is left as it is.
    fn attach_file(&mut self, info: &TableInfo, file: &crate::NewFile) -> Result<(), StoreError>;
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
