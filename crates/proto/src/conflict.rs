//! What the server does with one upload entry, given the row as it is now: apply it,
//! skip it, or refuse the whole upload; and what goes to the conflict log. A pure
//! function of its inputs (DESIGN.md "What a device may write" and "Conflicts").

use crate::task::{ConflictPolicy, WriteOp};
use crate::value::Value;
use crate::wire::{NotKept, UploadEntry};

pub use crate::row::Row;

/// The entry's row in the main database now.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    /// The row's version in the main database (for the conflict log).
    pub version: i64,
    /// A tombstone: the row was deleted at `version`.
    pub deleted: bool,
    /// The live row is in the slice of the entry's user (meaningless for tombstones).
    pub in_slice: bool,
    /// Somebody changed or deleted the row since the version the entry is based on.
    /// The store judges it: how versions compare is the engine's business.
    pub changed: bool,
    /// The row or a row its slice membership depends on (its parent chain) changed
    /// since the entry's base: a row whose parent the office moved out of the slice
    /// left the slice then, though the row itself did not change.
    pub left: bool,
    /// The live row's values in the task's columns.
    pub values: Row,
}

/// A write to make in the main database.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Insert(Row),
    /// The columns to set (never the key).
    Update(Row),
    Delete,
}

/// A conflict-log record: both sides, how it was settled.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflictNote {
    /// `update-update`, `update-delete` (device update, office delete), `delete-update`
    /// (device delete, office update), `insert-exists`, `left-slice`.
    pub kind: &'static str,
    /// `server-kept`, `device-applied`, `merged`, `stays-deleted`, `row-kept`,
    /// `row-deleted`, `not-applied`.
    pub resolution: &'static str,
    /// The device's values in question (empty for a delete).
    pub device: Row,
    /// The server's values in question (empty when the row is gone).
    pub server: Row,
}

impl ConflictNote {
    /// The device's values of `entry` this conflict did not keep, given the row as the
    /// main database holds it after the entry (`None`: no row there): each value of the
    /// device's in question that the row does not hold, or the row as a whole for a
    /// delete whose row stays (or a change to a row that is not there).
    pub fn not_kept(&self, entry: &UploadEntry, policy: &str, after: Option<&Row>) -> Vec<NotKept> {
        let record =
            |column: Option<&String>, device: Option<&Value>, kept: Option<&Value>| NotKept {
                table: entry.table.clone(),
                key: entry.key.clone(),
                user: entry.user.clone(),
                column: column.cloned(),
                device: device.cloned(),
                kept: kept.cloned(),
                policy: policy.to_string(),
                kind: self.kind.to_string(),
                resolution: self.resolution.to_string(),
            };
        match (entry.op, after) {
            (WriteOp::Delete, Some(_)) => vec![record(None, None, None)],
            (WriteOp::Delete, None) => vec![],
            (_, _) if self.device.is_empty() => vec![record(None, None, None)],
            (_, after) => self
                .device
                .iter()
                .filter_map(|(col, mine)| {
                    let kept = after.and_then(|row| row.get(col));
                    match kept {
                        Some(k) if k.same(mine) => None,
                        _ => Some(record(Some(col), Some(mine), kept)),
                    }
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The whole upload is refused; the text says why.
    Forbidden(String),
    Apply(Write, Option<ConflictNote>),
    Skip(Option<ConflictNote>),
}

fn note(
    kind: &'static str,
    resolution: &'static str,
    device: Row,
    server: Row,
) -> Option<ConflictNote> {
    Some(ConflictNote {
        kind,
        resolution,
        device,
        server,
    })
}

fn pick(row: &Row, cols: &[&String]) -> Row {
    cols.iter()
        .filter_map(|c| row.get(c).map(|v| ((*c).clone(), v.clone())))
        .collect()
}

/// The one refusal of an update or delete whose row is not the device's: the same
/// words whether the key exists outside the slice, was deleted before the device had
/// it, or never existed, so refusals tell a forger nothing of other tasks' keys.
pub const NOT_IN_SLICE: &str = "the row is not in the task's slice";

/// Decides one entry. `insert_in_slice`: for inserts, whether the new row would be in
/// the slice. `key_column` is the table's primary key.
pub fn decide(
    entry: &UploadEntry,
    current: Option<&Current>,
    insert_in_slice: bool,
    policy: ConflictPolicy,
    key_column: &str,
) -> Decision {
    let changed_since = |c: &Current| c.changed;
    let left_since = |c: &Current| c.changed || c.left;
    match entry.op {
        WriteOp::Insert => {
            if !insert_in_slice {
                return Decision::Forbidden("the inserted row is outside the task's slice".into());
            }
            match current {
                None => Decision::Apply(Write::Insert(entry.new.clone()), None),
                Some(c) if c.deleted => Decision::Forbidden(
                    "the key exists in the main database as a deleted row".into(),
                ),
                Some(c) if !c.in_slice => Decision::Forbidden(
                    "the key exists in the main database outside the slice".into(),
                ),
                Some(c) => insert_exists(entry, c, policy, key_column),
            }
        }
        WriteOp::Update | WriteOp::Delete if entry.base_version.is_none() => {
            Decision::Forbidden("an update or delete needs the row version it was based on".into())
        }
        WriteOp::Update => match current {
            None => Decision::Forbidden(NOT_IN_SLICE.into()),
            Some(c) if c.deleted && changed_since(c) => Decision::Skip(note(
                "update-delete",
                "stays-deleted",
                entry.new.clone(),
                Row::new(),
            )),
            Some(c) if c.deleted => Decision::Forbidden(NOT_IN_SLICE.into()),
            Some(c) if !c.in_slice && left_since(c) => {
                let cols: Vec<&String> = entry.new.keys().collect();
                Decision::Skip(note(
                    "left-slice",
                    "not-applied",
                    entry.new.clone(),
                    pick(&c.values, &cols),
                ))
            }
            Some(c) if !c.in_slice => Decision::Forbidden(NOT_IN_SLICE.into()),
            Some(c) if !changed_since(c) => Decision::Apply(Write::Update(entry.new.clone()), None),
            Some(c) => update_update(entry, c, policy),
        },
        WriteOp::Delete => {
            match current {
                None => Decision::Forbidden(NOT_IN_SLICE.into()),
                Some(c) if c.deleted && changed_since(c) => Decision::Skip(None),
                Some(c) if c.deleted => Decision::Forbidden(NOT_IN_SLICE.into()),
                Some(c) if !c.in_slice && left_since(c) => Decision::Skip(note(
                    "left-slice",
                    "not-applied",
                    Row::new(),
                    c.values.clone(),
                )),
                Some(c) if !c.in_slice => Decision::Forbidden(NOT_IN_SLICE.into()),
                Some(c) if !changed_since(c) => Decision::Apply(Write::Delete, None),
                Some(c) => match policy {
                    ConflictPolicy::DeviceWins => Decision::Apply(
                        Write::Delete,
                        note("delete-update", "row-deleted", Row::new(), c.values.clone()),
                    ),
                    ConflictPolicy::ServerWins | ConflictPolicy::FieldMerge => Decision::Skip(
                        note("delete-update", "row-kept", Row::new(), c.values.clone()),
                    ),
                },
            }
        }
    }
}

/// Both sides changed the row: which device columns collide with office changes.
fn update_update(entry: &UploadEntry, c: &Current, policy: ConflictPolicy) -> Decision {
    // The office changed a column when its value now differs from what the device saw;
    // a collision needs the office's value to differ from the device's new one too.
    let colliding: Vec<&String> = entry
        .new
        .iter()
        .filter(|(col, new)| {
            let now = c.values.get(col).unwrap_or(&Value::Null);
            let seen = entry.old.get(col).unwrap_or(&Value::Null);
            !now.same(seen) && !now.same(new)
        })
        .map(|(col, _)| col)
        .collect();
    let all: Vec<&String> = entry.new.keys().collect();
    match policy {
        ConflictPolicy::ServerWins => {
            let lost = entry
                .new
                .iter()
                .any(|(col, new)| !c.values.get(col).unwrap_or(&Value::Null).same(new));
            // Nothing is lost when the office already holds every value the device set.
            let n = if lost {
                note(
                    "update-update",
                    "server-kept",
                    entry.new.clone(),
                    pick(&c.values, &all),
                )
            } else {
                None
            };
            Decision::Skip(n)
        }
        ConflictPolicy::DeviceWins => {
            let n = if colliding.is_empty() {
                None
            } else {
                note(
                    "update-update",
                    "device-applied",
                    pick(&entry.new, &colliding),
                    pick(&c.values, &colliding),
                )
            };
            Decision::Apply(Write::Update(entry.new.clone()), n)
        }
        ConflictPolicy::FieldMerge => {
            let apply: Row = entry
                .new
                .iter()
                .filter(|(k, _)| !colliding.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let n = if colliding.is_empty() {
                None
            } else {
                note(
                    "update-update",
                    "merged",
                    pick(&entry.new, &colliding),
                    pick(&c.values, &colliding),
                )
            };
            if apply.is_empty() {
                Decision::Skip(n)
            } else {
                Decision::Apply(Write::Update(apply), n)
            }
        }
    }
}

/// The device inserted a key that exists in the slice.
fn insert_exists(
    entry: &UploadEntry,
    c: &Current,
    policy: ConflictPolicy,
    key_column: &str,
) -> Decision {
    let without_key: Row = entry
        .new
        .iter()
        .filter(|(k, _)| *k != key_column)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let differing: Vec<&String> = without_key
        .iter()
        .filter(|(k, v)| !c.values.get(k).unwrap_or(&Value::Null).same(v))
        .map(|(k, _)| k)
        .collect();
    match policy {
        ConflictPolicy::ServerWins => Decision::Skip(note(
            "insert-exists",
            "server-kept",
            entry.new.clone(),
            c.values.clone(),
        )),
        ConflictPolicy::DeviceWins => Decision::Apply(
            Write::Update(without_key),
            note(
                "insert-exists",
                "device-applied",
                entry.new.clone(),
                c.values.clone(),
            ),
        ),
        // As update/update with the server row as base: the device's values are its
        // changes to that row, and the office changed nothing since; every server
        // value the merge replaces is logged, so nothing is lost silently.
        ConflictPolicy::FieldMerge => {
            let apply = pick(&without_key, &differing);
            let n = note(
                "insert-exists",
                "merged",
                apply.clone(),
                pick(&c.values, &differing),
            );
            if apply.is_empty() {
                Decision::Skip(None)
            } else {
                Decision::Apply(Write::Update(apply), n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Value)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn entry(op: WriteOp, base: Option<i64>, old: Row, new: Row) -> UploadEntry {
        UploadEntry {
            seq_first: 1,
            seq_last: 1,
            table: "a".into(),
            key: t("k"),
            op,
            base_version: base,
            user: "u".into(),
            old,
            new,
        }
    }

    /// A live row in the slice; `changed`: the office changed it since the base.
    fn live(changed: bool, values: Row) -> Current {
        Current {
            version: 7,
            deleted: false,
            in_slice: true,
            changed,
            left: false,
            values,
        }
    }

    #[test]
    fn unchanged_rows_take_the_write() {
        let e = entry(
            WriteOp::Update,
            Some(5),
            row(&[("name", t("a"))]),
            row(&[("name", t("b"))]),
        );
        let c = live(false, row(&[("name", t("a"))]));
        assert_eq!(
            decide(&e, Some(&c), false, ConflictPolicy::ServerWins, "id"),
            Decision::Apply(Write::Update(row(&[("name", t("b"))])), None)
        );
    }

    #[test]
    fn field_merge_keeps_the_server_value_of_a_colliding_column() {
        let e = entry(
            WriteOp::Update,
            Some(5),
            row(&[("name", t("a")), ("status", t("ok"))]),
            row(&[("name", t("device")), ("status", t("worn"))]),
        );
        let c = live(true, row(&[("name", t("office")), ("status", t("ok"))]));
        let Decision::Apply(Write::Update(cols), Some(n)) =
            decide(&e, Some(&c), false, ConflictPolicy::FieldMerge, "id")
        else {
            panic!()
        };
        assert_eq!(cols, row(&[("status", t("worn"))]));
        assert_eq!((n.kind, n.resolution), ("update-update", "merged"));
        assert_eq!(n.device, row(&[("name", t("device"))]));
        assert_eq!(n.server, row(&[("name", t("office"))]));
    }

    #[test]
    fn not_kept_lists_the_device_values_the_row_does_not_hold() {
        let e = entry(
            WriteOp::Update,
            Some(5),
            row(&[("name", t("a")), ("status", t("ok"))]),
            row(&[("name", t("device")), ("status", t("worn"))]),
        );
        let c = live(true, row(&[("name", t("office")), ("status", t("ok"))]));
        let Decision::Skip(Some(n)) = decide(&e, Some(&c), false, ConflictPolicy::ServerWins, "id")
        else {
            panic!()
        };
        // Server wins: the row stays as the office left it; both values are lost.
        let lost = n.not_kept(&e, "server-wins", Some(&c.values));
        let pairs: Vec<_> = lost
            .iter()
            .map(|l| (l.column.clone().unwrap(), l.device.clone(), l.kept.clone()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("name".to_string(), Some(t("device")), Some(t("office"))),
                ("status".to_string(), Some(t("worn")), Some(t("ok"))),
            ]
        );
        assert_eq!(lost[0].policy, "server-wins");
        assert_eq!(
            (lost[0].kind.as_str(), lost[0].resolution.as_str()),
            ("update-update", "server-kept")
        );
        // A value the row holds after all is not listed; a row that is gone loses all.
        let after = row(&[("name", t("office")), ("status", t("worn"))]);
        assert_eq!(n.not_kept(&e, "server-wins", Some(&after)).len(), 1);
        let gone = n.not_kept(&e, "server-wins", None);
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|l| l.kept.is_none()));
        // A delete whose row stays is the row as a whole; one whose row went, nothing.
        let d = entry(WriteOp::Delete, Some(5), row(&[("name", t("a"))]), row(&[]));
        let Decision::Skip(Some(n)) = decide(&d, Some(&c), false, ConflictPolicy::ServerWins, "id")
        else {
            panic!()
        };
        let kept = n.not_kept(&d, "server-wins", Some(&c.values));
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].column.clone(), kept[0].resolution.as_str()),
            (None, "row-kept")
        );
        assert!(n.not_kept(&d, "server-wins", None).is_empty());
    }

    #[test]
    fn a_row_never_in_the_slice_is_forbidden_and_one_moved_out_is_a_conflict() {
        let e = entry(WriteOp::Update, Some(5), row(&[]), row(&[("name", t("b"))]));
        let mut c = live(false, row(&[("name", t("a"))]));
        c.in_slice = false;
        assert!(matches!(
            decide(&e, Some(&c), false, ConflictPolicy::DeviceWins, "id"),
            Decision::Forbidden(_)
        ));
        c.left = true;
        let d = decide(&e, Some(&c), false, ConflictPolicy::DeviceWins, "id");
        assert!(
            matches!(
                d,
                Decision::Skip(Some(ConflictNote {
                    kind: "left-slice",
                    ..
                }))
            ),
            "{d:?}"
        );
        assert!(matches!(
            decide(&e, None, false, ConflictPolicy::DeviceWins, "id"),
            Decision::Forbidden(_)
        ));
    }

    #[test]
    fn inserts_outside_the_slice_or_onto_tombstones_are_forbidden() {
        let e = entry(WriteOp::Insert, None, row(&[]), row(&[("id", t("k"))]));
        assert!(matches!(
            decide(&e, None, false, ConflictPolicy::FieldMerge, "id"),
            Decision::Forbidden(_)
        ));
        let tomb = Current {
            version: 3,
            deleted: true,
            in_slice: false,
            changed: false,
            left: false,
            values: Row::new(),
        };
        assert!(matches!(
            decide(&e, Some(&tomb), true, ConflictPolicy::FieldMerge, "id"),
            Decision::Forbidden(_)
        ));
        assert!(matches!(
            decide(&e, None, true, ConflictPolicy::FieldMerge, "id"),
            Decision::Apply(Write::Insert(_), None)
        ));
    }
}
