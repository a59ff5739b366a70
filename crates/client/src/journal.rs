//! The journal: every insert, update and delete made on the replica by any SQLite
//! client, recorded by triggers (`replica.rs` creates them). Here: reading it,
//! compacting it into an upload, the backup file for discarded entries.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use fieldsync_proto::task::WriteOp;
use fieldsync_proto::wire::{SliceHeader, UploadEntry};
use fieldsync_proto::{Value, filter};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

use fieldsync_proto::Row;

/// One journal entry, as `device journal --json` and the backup file show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JournalEntry {
    pub seq: i64,
    pub table: String,
    pub key: Value,
    pub op: WriteOp,
    pub old: Row,
    pub new: Row,
    pub base_version: Option<i64>,
    pub user: String,
    pub at: String,
}

fn parse_row(json: Option<String>) -> Result<Row> {
    match json {
        None => Ok(Row::new()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| ClientError::Replica(format!("journal entry unreadable: {e}"))),
    }
}

/// The journal's entries with `seq` in `range` (inclusive), in order.
pub fn read(conn: &Connection, min_seq: i64, max_seq: i64) -> Result<Vec<JournalEntry>> {
    let mut stmt = conn.prepare(
        "SELECT seq, tbl, pk, op, old, new, base_version, user, at FROM fieldsync_journal
         WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
    )?;
    let mut rows = stmt.query([min_seq, max_seq])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(entry(r)?);
    }
    Ok(out)
}

/// The first journal entries after `after` up to `max_seq`, in order, as one upload
/// takes them (`after` is the last entry of an upload still away, or `i64::MIN`): at
/// most `max_entries`, and no entry that would take the row values read past
/// `max_bytes` (but always the first, however big). Only these entries are read.
///
/// Each update or delete carries the newer of its own base and the row's base now:
/// an earlier upload of this device (an earlier chunk of the same send, or a send
/// that went while the entry was made) acknowledged a newer version of the row, and
/// the entry was made on top of it (see `sync::acknowledge`, which keeps a row's old
/// base where the office's row was not the device's and an edit was made on top).
pub fn read_chunk(
    conn: &Connection,
    after: i64,
    max_seq: i64,
    max_entries: usize,
    max_bytes: usize,
) -> Result<Vec<JournalEntry>> {
    let mut stmt = conn.prepare(
        "SELECT j.seq, j.tbl, j.pk, j.op, j.old, j.new,
                CASE WHEN j.op <> 'insert' AND b.version > coalesce(j.base_version, 0)
                     THEN b.version ELSE j.base_version END,
                j.user, j.at,
                coalesce(length(CAST(j.old AS BLOB)), 0) + coalesce(length(CAST(j.new AS BLOB)), 0)
         FROM fieldsync_journal AS j
         LEFT JOIN fieldsync_base AS b ON b.tbl = j.tbl AND b.pk = j.pk
         WHERE j.seq > ?3 AND j.seq <= ?1 ORDER BY j.seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(rusqlite::params![max_seq, max_entries as i64, after])?;
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    while let Some(r) = rows.next()? {
        let size = r.get::<_, i64>(9)?.max(0) as usize;
        if !out.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        out.push(entry(r)?);
    }
    Ok(out)
}

/// One journal row (`seq, tbl, pk, op, old, new, base_version, user, at`).
fn entry(r: &rusqlite::Row<'_>) -> Result<JournalEntry> {
    {
        let key = match r.get_ref(2)? {
            rusqlite::types::ValueRef::Integer(i) => Value::Integer(i),
            rusqlite::types::ValueRef::Real(f) => Value::Real(f),
            rusqlite::types::ValueRef::Text(t) => {
                Value::Text(String::from_utf8_lossy(t).into_owned())
            }
            rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            rusqlite::types::ValueRef::Null => Value::Null,
        };
        let op = match r.get::<_, String>(3)?.as_str() {
            "insert" => WriteOp::Insert,
            "update" => WriteOp::Update,
            "delete" => WriteOp::Delete,
            other => {
                return Err(ClientError::Replica(format!(
                    "journal entry with unknown op `{other}`"
                )));
            }
        };
        Ok(JournalEntry {
            seq: r.get(0)?,
            table: r.get(1)?,
            key,
            op,
            old: parse_row(r.get(4)?)?,
            new: parse_row(r.get(5)?)?,
            base_version: r.get(6)?,
            user: r.get(7)?,
            at: r.get(8)?,
        })
    }
}

pub fn read_all(conn: &Connection) -> Result<Vec<JournalEntry>> {
    read(conn, i64::MIN, i64::MAX)
}

/// What compaction needs to know of the task: which tables allow update, and each
/// table's filter and parent key, so that it never folds a row's edits into an
/// operation the device's edits did not allow. A table it knows nothing of (a replica
/// made before the header was kept) is never folded into another operation.
#[derive(Default)]
pub struct CompactRules {
    tables: BTreeMap<String, TableRule>,
    device: String,
}

struct TableRule {
    update: bool,
    /// `None` with `known_filter`: every row is in the slice by the filter.
    filter: Option<filter::Expr>,
    known_filter: bool,
    parent_key: Option<String>,
}

impl CompactRules {
    pub fn from_header(h: &SliceHeader) -> CompactRules {
        let tables = h
            .tables
            .iter()
            .map(|t| {
                let filter = t.filter.as_deref().map(filter::parse);
                let known_filter = !matches!(filter, Some(Err(_)));
                let rule = TableRule {
                    update: t.write.contains(&WriteOp::Update),
                    filter: filter.and_then(|f| f.ok()),
                    known_filter,
                    parent_key: t.parent.as_ref().map(|p| p.key.clone()),
                };
                (t.name.clone(), rule)
            })
            .collect();
        CompactRules {
            tables,
            device: h.device.clone(),
        }
    }

    /// Delete then insert of a key may become one update.
    fn may_update(&self, table: &str) -> bool {
        self.tables.get(table).is_some_and(|t| t.update)
    }

    /// An insert and a later update may become one insert: the row as updated is
    /// still in the slice by the filter and keeps its parent.
    fn stays_in_slice(&self, table: &str, user: &str, row: &Row, update: &Row) -> bool {
        let Some(t) = self.tables.get(table) else {
            return false;
        };
        if !t.known_filter {
            return false;
        }
        if let Some(k) = &t.parent_key
            && update.contains_key(k)
        {
            return false;
        }
        let Some(f) = &t.filter else {
            return true;
        };
        let params = filter::Params {
            user: user.to_string(),
            device: self.device.clone(),
        };
        f.matches(
            &|c| {
                update
                    .get(c)
                    .or_else(|| row.get(c))
                    .cloned()
                    .unwrap_or(Value::Null)
            },
            &params,
        )
    }
}

/// One net change of a row by one user, and the journal entries it stands for.
enum Net {
    /// The row, and the version of its parent the device knew (see the triggers).
    Insert(Row, Option<i64>),
    Update {
        old: Row,
        new: Row,
        base: Option<i64>,
    },
    Delete {
        old: Row,
        base: Option<i64>,
    },
}

struct Step {
    net: Net,
    seq_first: i64,
    seq_last: i64,
}

/// Compacts entries per row and user into as few net changes as the task allows
/// (DESIGN.md: insert+update = insert, insert+delete = nothing, update+delete = delete,
/// delete+insert = update), in the order each row was first changed. A delete and an
/// insert stay two entries where the task allows no update; an insert and the update
/// that moved its row out of the slice stay two entries.
pub fn compact(mut entries: Vec<JournalEntry>, rules: &CompactRules) -> Vec<UploadEntry> {
    // A stable grouping without hashing: sort by row and user (seq order within),
    // fold each group, then put the rows back in the order they were first changed.
    entries.sort_by(|a, b| {
        a.table
            .cmp(&b.table)
            .then_with(|| a.user.cmp(&b.user))
            .then_with(|| key_order(&a.key, &b.key))
            .then(a.seq.cmp(&b.seq))
    });
    let mut out = Vec::new();
    let mut rest = entries.into_iter().peekable();
    while let Some(first) = rest.next() {
        let (table, user, key) = (first.table.clone(), first.user.clone(), first.key.clone());
        let mut steps = Vec::new();
        fold(&mut steps, first, rules);
        while let Some(e) =
            rest.next_if(|n| n.table == table && n.user == user && key_order(&n.key, &key).is_eq())
        {
            fold(&mut steps, e, rules);
        }
        for step in steps {
            if let Some(entry) = finish(step, table.clone(), key.clone(), user.clone()) {
                out.push(entry);
            }
        }
    }
    out.sort_by_key(|e| e.seq_first);
    out
}

/// A total order of keys (a row's key keeps its storage class).
fn key_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    let rank = |v: &Value| match v {
        Value::Null => 0,
        Value::Integer(_) => 1,
        Value::Real(_) => 2,
        Value::Text(_) => 3,
        Value::Blob(_) => 4,
    };
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
        (Value::Real(x), Value::Real(y)) => x.total_cmp(y),
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Adds one more entry of the same row and user to its net changes so far.
fn fold(steps: &mut Vec<Step>, e: JournalEntry, rules: &CompactRules) {
    let seq = e.seq;
    let fresh = |net| Step {
        net,
        seq_first: seq,
        seq_last: seq,
    };
    match e.op {
        WriteOp::Insert => {
            let deleted = match steps.last() {
                Some(Step {
                    net: Net::Delete { .. },
                    ..
                }) => rules.may_update(&e.table),
                _ => false,
            };
            if deleted {
                let Some(Step {
                    net: Net::Delete { old, base },
                    seq_first,
                    ..
                }) = steps.pop()
                else {
                    unreachable!("checked above")
                };
                let changed: Vec<String> = e
                    .new
                    .keys()
                    .filter(|k| !old.get(k).is_some_and(|v| v.same(&e.new[*k])))
                    .cloned()
                    .collect();
                steps.push(Step {
                    net: Net::Update {
                        old: changed
                            .iter()
                            .filter_map(|k| old.get(k).map(|v| (k.clone(), v.clone())))
                            .collect(),
                        new: changed
                            .iter()
                            .map(|k| (k.clone(), e.new[k].clone()))
                            .collect(),
                        base,
                    },
                    seq_first,
                    seq_last: seq,
                });
            } else {
                steps.push(fresh(Net::Insert(e.new, e.base_version)));
            }
        }
        WriteOp::Update => match steps.last_mut() {
            Some(Step {
                net: Net::Insert(row, _),
                seq_last,
                ..
            }) if rules.stays_in_slice(&e.table, &e.user, row, &e.new) => {
                row.extend(e.new);
                *seq_last = seq;
            }
            Some(Step {
                net: Net::Update { old, new, .. },
                seq_last,
                ..
            }) => {
                for (k, v) in e.old {
                    if !old.contains_key(&k) {
                        old.insert(k, v);
                    }
                }
                new.extend(e.new);
                *seq_last = seq;
            }
            _ => steps.push(fresh(Net::Update {
                old: e.old,
                new: e.new,
                base: e.base_version,
            })),
        },
        WriteOp::Delete => {
            // The row's current life began with an insert of this journal: it never
            // reached the server, and neither does anything of that life.
            if let Some(i) = steps.iter().rposition(|s| matches!(s.net, Net::Insert(..))) {
                steps.truncate(i);
                return;
            }
            match steps.pop() {
                Some(Step {
                    net: Net::Update { old, base, .. },
                    seq_first,
                    ..
                }) => {
                    let mut full = e.old;
                    full.extend(old);
                    steps.push(Step {
                        net: Net::Delete { old: full, base },
                        seq_first,
                        seq_last: seq,
                    });
                }
                other => {
                    // Sequences the triggers cannot produce (a delete after a delete):
                    // the later entry stands.
                    steps.extend(other);
                    steps.push(fresh(Net::Delete {
                        old: e.old,
                        base: e.base_version,
                    }));
                }
            }
        }
    }
}

/// The upload entry of a net change; `None` when nothing is left to send.
fn finish(step: Step, table: String, key: Value, user: String) -> Option<UploadEntry> {
    let (op, old, new, base_version) = match step.net {
        Net::Insert(row, base) => (WriteOp::Insert, Row::new(), row, base),
        Net::Update { old, new, base } => {
            // Columns changed and changed back are no change.
            let new: Row = new
                .into_iter()
                .filter(|(k, v)| !old.get(k).is_some_and(|o| o.same(v) && variant_eq(o, v)))
                .collect();
            if new.is_empty() {
                return None;
            }
            let old = old
                .into_iter()
                .filter(|(k, _)| new.contains_key(k))
                .collect();
            (WriteOp::Update, old, new, base)
        }
        Net::Delete { old, base } => (WriteOp::Delete, old, Row::new(), base),
    };
    Some(UploadEntry {
        seq_first: step.seq_first,
        seq_last: step.seq_last,
        table,
        key,
        op,
        base_version,
        user,
        old,
        new,
    })
}

/// Same storage class as well as same value (an integer changed to an equal real is a change).
fn variant_eq(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Appends entries to a new timestamped backup file (JSON lines) and makes it durable.
pub fn write_backup(dir: &Path, entries: &[JournalEntry]) -> Result<PathBuf> {
    let stamp = fieldsync_proto::time::now_rfc3339().replace([':', '.'], "-");
    let path = dir.join(format!("backup-{stamp}-{}.jsonl", crate::random_hex(3)));
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    for e in entries {
        serde_json::to_writer(&mut f, e).map_err(|e| ClientError::Io(e.to_string()))?;
        f.write_all(b"\n")?;
    }
    f.sync_all()?;
    crate::state::sync_dir(dir)?;
    Ok(path)
}

mod restore;
pub use restore::{read_backup, redo};

#[cfg(test)]
mod tests;
