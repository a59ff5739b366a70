//! The journal: every insert, update and delete made on the replica by any SQLite
//! client, recorded by triggers (`replica.rs` creates them). Here: reading it,
//! compacting it into an upload, the backup file for discarded entries.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use fieldsync_proto::Value;
use fieldsync_proto::task::WriteOp;
use fieldsync_proto::wire::UploadEntry;
use rusqlite::Connection;
use serde::Serialize;

use crate::error::{ClientError, Result};

type Row = BTreeMap<String, Value>;

/// One journal entry, as `device journal --json` and the backup file show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
        out.push(JournalEntry {
            seq: r.get(0)?,
            table: r.get(1)?,
            key,
            op,
            old: parse_row(r.get(4)?)?,
            new: parse_row(r.get(5)?)?,
            base_version: r.get(6)?,
            user: r.get(7)?,
            at: r.get(8)?,
        });
    }
    Ok(out)
}

pub fn read_all(conn: &Connection) -> Result<Vec<JournalEntry>> {
    read(conn, i64::MIN, i64::MAX)
}

/// Net change of one row by one user so far.
enum Net {
    Gone,
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

/// Compacts entries per row and user into one net change each (DESIGN.md: insert+update
/// = insert, insert+delete = nothing, update+delete = delete, delete+insert = update),
/// in the order each row was first changed.
pub fn compact(mut entries: Vec<JournalEntry>) -> Vec<UploadEntry> {
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
        let (table, user, key, seq_first) = (
            first.table.clone(),
            first.user.clone(),
            first.key.clone(),
            first.seq,
        );
        let mut seq_last = first.seq;
        let mut net = fold(Net::Gone, first);
        while let Some(e) =
            rest.next_if(|n| n.table == table && n.user == user && key_order(&n.key, &key).is_eq())
        {
            seq_last = e.seq;
            net = fold(net, e);
        }
        if let Some(entry) = finish(net, seq_first, seq_last, table, key, user) {
            out.push(entry);
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

/// The net change after one more entry of the same row and user.
fn fold(previous: Net, e: JournalEntry) -> Net {
    match (previous, e.op) {
        (Net::Gone, WriteOp::Insert) => Net::Insert(e.new, e.base_version),
        (Net::Gone, WriteOp::Update) => Net::Update {
            old: e.old,
            new: e.new,
            base: e.base_version,
        },
        (Net::Gone, WriteOp::Delete) => Net::Delete {
            old: e.old,
            base: e.base_version,
        },
        (Net::Insert(mut row, base), WriteOp::Update) => {
            row.extend(e.new);
            Net::Insert(row, base)
        }
        (Net::Insert(..), WriteOp::Delete) => Net::Gone,
        (
            Net::Update {
                mut old,
                mut new,
                base,
            },
            WriteOp::Update,
        ) => {
            for (k, v) in &e.old {
                old.entry(k.clone()).or_insert_with(|| v.clone());
            }
            new.extend(e.new);
            Net::Update { old, new, base }
        }
        (Net::Update { old, base, .. }, WriteOp::Delete) => {
            let mut full = e.old;
            full.extend(old);
            Net::Delete { old: full, base }
        }
        (Net::Delete { old, base }, WriteOp::Insert) => {
            let changed: Vec<String> = e
                .new
                .keys()
                .filter(|k| !old.get(*k).is_some_and(|v| v.same(&e.new[*k])))
                .cloned()
                .collect();
            Net::Update {
                old: changed
                    .iter()
                    .filter_map(|k| old.get(k).map(|v| (k.clone(), v.clone())))
                    .collect(),
                new: changed
                    .iter()
                    .map(|k| (k.clone(), e.new[k].clone()))
                    .collect(),
                base,
            }
        }
        // Sequences the triggers cannot produce (insert after insert, anything
        // after a delete but an insert): the later entry stands.
        (_, WriteOp::Insert) => Net::Insert(e.new, e.base_version),
        (_, WriteOp::Update) => Net::Update {
            old: e.old,
            new: e.new,
            base: e.base_version,
        },
        (_, WriteOp::Delete) => Net::Delete {
            old: e.old,
            base: e.base_version,
        },
    }
}

/// The upload entry of a row's net change; `None` when nothing is left to send.
fn finish(
    net: Net,
    seq_first: i64,
    seq_last: i64,
    table: String,
    key: Value,
    user: String,
) -> Option<UploadEntry> {
    let (op, old, new, base_version) = match net {
        Net::Gone => return None,
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
        seq_first,
        seq_last,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: i64, op: WriteOp, old: &[(&str, i64)], new: &[(&str, i64)]) -> JournalEntry {
        let row = |p: &[(&str, i64)]| {
            p.iter()
                .map(|(k, v)| (k.to_string(), Value::Integer(*v)))
                .collect()
        };
        JournalEntry {
            seq,
            table: "t".into(),
            key: Value::Text("k".into()),
            op,
            old: row(old),
            new: row(new),
            base_version: if op == WriteOp::Insert { None } else { Some(7) },
            user: "u".into(),
            at: String::new(),
        }
    }

    #[test]
    fn compaction_rules_of_design() {
        use WriteOp::*;
        let c = compact(vec![
            e(1, Insert, &[], &[("a", 1), ("b", 1)]),
            e(2, Update, &[("a", 1)], &[("a", 2)]),
        ]);
        assert_eq!(
            (c.len(), c[0].op, c[0].new["a"].clone(), c[0].seq_last),
            (1, Insert, Value::Integer(2), 2)
        );
        assert!(
            compact(vec![
                e(1, Insert, &[], &[("a", 1)]),
                e(2, Delete, &[("a", 1)], &[])
            ])
            .is_empty()
        );
        let c = compact(vec![
            e(1, Update, &[("a", 1)], &[("a", 2)]),
            e(2, Delete, &[("a", 2), ("b", 5)], &[]),
        ]);
        assert_eq!(
            (c[0].op, c[0].old["a"].clone(), c[0].base_version),
            (Delete, Value::Integer(1), Some(7))
        );
        let c = compact(vec![
            e(1, Delete, &[("a", 1), ("b", 1)], &[]),
            e(2, Insert, &[], &[("a", 1), ("b", 2)]),
        ]);
        assert_eq!(c[0].op, Update);
        assert_eq!(
            c[0].new,
            [("b".to_string(), Value::Integer(2))].into_iter().collect()
        );
        let c = compact(vec![
            e(1, Update, &[("a", 1)], &[("a", 2)]),
            e(2, Update, &[("a", 2)], &[("a", 1)]),
        ]);
        assert!(c.is_empty(), "changed and changed back: nothing to send");
    }

    #[test]
    fn rows_stay_apart_and_in_the_order_first_changed() {
        use WriteOp::*;
        let mut b = e(2, Update, &[("a", 1)], &[("a", 2)]);
        b.key = Value::Text("b".into());
        let mut b2 = e(4, Update, &[("a", 2)], &[("a", 3)]);
        b2.key = Value::Text("b".into());
        let mut other_user = e(5, Update, &[("a", 1)], &[("a", 9)]);
        other_user.user = "v".into();
        let c = compact(vec![
            e(3, Update, &[("a", 1)], &[("a", 5)]),
            b,
            e(6, Update, &[("a", 5)], &[("a", 6)]),
            b2,
            other_user,
        ]);
        let summary: Vec<(String, String, i64, i64, Value)> = c
            .iter()
            .map(|x| {
                let key = match &x.key {
                    Value::Text(t) => t.clone(),
                    other => format!("{other:?}"),
                };
                (
                    key,
                    x.user.clone(),
                    x.seq_first,
                    x.seq_last,
                    x.new["a"].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("b".into(), "u".into(), 2, 4, Value::Integer(3)),
                ("k".into(), "u".into(), 3, 6, Value::Integer(6)),
                ("k".into(), "v".into(), 5, 5, Value::Integer(9)),
            ]
        );
    }
}
