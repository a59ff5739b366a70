use super::*;

#[test]
fn a_chunk_is_bounded_in_entries_and_bytes_and_takes_the_rows_base_now() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(crate::triggers::REPLICA_TABLES).unwrap();
    let add = |op: &str, pk: i64, new: &str, base: Option<i64>| {
        conn.execute(
            "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
             VALUES ('t', ?1, ?2, '{}', ?3, ?4, 'u', '')",
            rusqlite::params![pk, op, new, base],
        )
        .unwrap();
    };
    add("update", 1, r#"{"a":1}"#, Some(5));
    add("insert", 2, r#"{"a":2}"#, None);
    let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(1000));
    add("update", 3, &big, Some(5));
    add("update", 1, r#"{"a":3}"#, Some(5));
    // An earlier upload's acknowledgement gave row 1 version 9, row 2 version 8.
    conn.execute_batch(
        "INSERT INTO fieldsync_base (tbl, pk, version) VALUES ('t', 1, 9), ('t', 2, 8)",
    )
    .unwrap();
    let seqs = |c: &[JournalEntry]| c.iter().map(|e| e.seq).collect::<Vec<_>>();
    // By entries.
    let c = read_chunk(&conn, i64::MIN, i64::MAX, 2, usize::MAX).unwrap();
    assert_eq!(seqs(&c), [1, 2]);
    // The update takes the row's newer base; the insert keeps none.
    assert_eq!((c[0].base_version, c[1].base_version), (Some(9), None));
    // By bytes: stops before the entry that would pass them...
    let c = read_chunk(&conn, i64::MIN, i64::MAX, 10, 100).unwrap();
    assert_eq!(seqs(&c), [1, 2]);
    // ...but always takes the first, however big.
    conn.execute("DELETE FROM fieldsync_journal WHERE seq <= 2", [])
        .unwrap();
    let c = read_chunk(&conn, i64::MIN, i64::MAX, 10, 100).unwrap();
    assert_eq!(seqs(&c), [3]);
    assert_eq!(c[0].base_version, Some(5), "no newer base for row 3");
    // Never past the send's last entry.
    assert!(read_chunk(&conn, i64::MIN, 2, 10, 100).unwrap().is_empty());
    let c = read_chunk(&conn, i64::MIN, i64::MAX, 10, usize::MAX).unwrap();
    assert_eq!((seqs(&c), c[1].base_version), (vec![3, 4], Some(9)));
}

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

/// Rules for table `t`: update allowed or not, and a filter.
fn rules(update: bool, filter: Option<&str>) -> CompactRules {
    let mut r = CompactRules::default();
    r.tables.insert(
        "t".into(),
        TableRule {
            update,
            filter: filter.map(|f| filter::parse(f).unwrap()),
            known_filter: true,
            parent_key: Some("parent".into()),
        },
    );
    r
}

#[test]
fn never_folds_into_an_operation_the_edits_did_not_allow() {
    use WriteOp::*;
    // Delete then re-insert where the task allows no update: two entries.
    let c = compact(
        vec![
            e(1, Delete, &[("a", 1), ("b", 1)], &[]),
            e(2, Insert, &[], &[("a", 1), ("b", 2)]),
        ],
        &rules(false, None),
    );
    let ops: Vec<WriteOp> = c.iter().map(|x| x.op).collect();
    assert_eq!(ops, vec![Delete, Insert]);
    // Insert, then an update that moves the row out of the slice: two entries.
    let c = compact(
        vec![
            e(1, Insert, &[], &[("a", 1), ("b", 1)]),
            e(2, Update, &[("a", 1)], &[("a", 2)]),
            e(3, Update, &[("b", 1)], &[("b", 3)]),
        ],
        &rules(true, Some("a = 1")),
    );
    let summary: Vec<(WriteOp, i64, i64)> =
        c.iter().map(|x| (x.op, x.seq_first, x.seq_last)).collect();
    assert_eq!(summary, vec![(Insert, 1, 1), (Update, 2, 3)]);
    assert_eq!(c[0].new["a"], Value::Integer(1));
    // Still in the slice: one insert. A changed parent key: two entries.
    let c = compact(
        vec![
            e(1, Insert, &[], &[("a", 1)]),
            e(2, Update, &[("b", 1)], &[("b", 2)]),
        ],
        &rules(true, Some("a = 1")),
    );
    assert_eq!(c.len(), 1);
    let c = compact(
        vec![
            e(1, Insert, &[], &[("a", 1), ("parent", 1)]),
            e(2, Update, &[("parent", 1)], &[("parent", 2)]),
        ],
        &rules(true, None),
    );
    assert_eq!(c.len(), 2);
    // Delete, insert, then delete again: only the first delete is left.
    let c = compact(
        vec![
            e(1, Delete, &[("a", 1)], &[]),
            e(2, Insert, &[], &[("a", 2)]),
            e(3, Delete, &[("a", 2)], &[]),
        ],
        &rules(false, None),
    );
    assert_eq!(
        c.iter().map(|x| (x.op, x.seq_first)).collect::<Vec<_>>(),
        vec![(Delete, 1)]
    );
    // A table compaction knows nothing of is never folded into another operation.
    let c = compact(
        vec![
            e(1, Delete, &[("a", 1)], &[]),
            e(2, Insert, &[], &[("a", 1)]),
        ],
        &CompactRules::default(),
    );
    assert_eq!(c.len(), 2);
}

#[test]
fn compaction_rules_of_design() {
    use WriteOp::*;
    let c = compact(
        vec![
            e(1, Insert, &[], &[("a", 1), ("b", 1)]),
            e(2, Update, &[("a", 1)], &[("a", 2)]),
        ],
        &rules(true, None),
    );
    assert_eq!(
        (c.len(), c[0].op, c[0].new["a"].clone(), c[0].seq_last),
        (1, Insert, Value::Integer(2), 2)
    );
    assert!(
        compact(
            vec![
                e(1, Insert, &[], &[("a", 1)]),
                e(2, Delete, &[("a", 1)], &[])
            ],
            &rules(true, None)
        )
        .is_empty()
    );
    let c = compact(
        vec![
            e(1, Update, &[("a", 1)], &[("a", 2)]),
            e(2, Delete, &[("a", 2), ("b", 5)], &[]),
        ],
        &rules(true, None),
    );
    assert_eq!(
        (c[0].op, c[0].old["a"].clone(), c[0].base_version),
        (Delete, Value::Integer(1), Some(7))
    );
    let c = compact(
        vec![
            e(1, Delete, &[("a", 1), ("b", 1)], &[]),
            e(2, Insert, &[], &[("a", 1), ("b", 2)]),
        ],
        &rules(true, None),
    );
    assert_eq!(c[0].op, Update);
    assert_eq!(
        c[0].new,
        [("b".to_string(), Value::Integer(2))].into_iter().collect()
    );
    let c = compact(
        vec![
            e(1, Update, &[("a", 1)], &[("a", 2)]),
            e(2, Update, &[("a", 2)], &[("a", 1)]),
        ],
        &rules(true, None),
    );
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
    let c = compact(
        vec![
            e(3, Update, &[("a", 1)], &[("a", 5)]),
            b,
            e(6, Update, &[("a", 5)], &[("a", 6)]),
            b2,
            other_user,
        ],
        &rules(true, None),
    );
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
