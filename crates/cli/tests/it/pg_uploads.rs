//! An upload's statements on PostgreSQL. The server reads an upload's rows ahead a
//! window of 1,000 entries at a time and sends a window's inserts or updates of one
//! table as one statement (`store/src/postgres/integrate/`); the window tests send
//! uploads of more than one window in which a read of the second window depends on
//! the first window's writes (an office trigger's, a key's, a parent's), or the first
//! window's batch is refused, and check each is judged as if entry by entry. The
//! upload's planner settings must not make the office's own triggers slow.

use crate::harness::*;
use crate::limits_store::{device_headers, latest_base, north_ids, post_upload, upload_of};
use fieldsync_proto::Value;
use fieldsync_proto::task::WriteOp;
use fieldsync_proto::wire::UploadEntry;
use std::time::{Duration, Instant};

const NORTH_TASK: &str = "north-inspections";

/// An office on PostgreSQL with tab1 (ana) holding the north task.
fn office_with_tablet() -> (Office, DeviceDir) {
    let office = Office::new_pg(40);
    let dev = office.device("tab1", &[NORTH_TASK]);
    dev.login("ana").ok();
    dev.run(&["download", NORTH_TASK], "").ok();
    (office, dev)
}

/// `n` inspections of `asset` by ana written on the tablet's replica (its triggers
/// journal them), keyed `{prefix}-00001` on.
fn inspect_on_tablet(dev: &DeviceDir, prefix: &str, asset: i64, n: usize) {
    dev.replica()
        .execute_batch(&format!(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {n})
             INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
             SELECT printf('{prefix}-%05d', i), {asset}, 'ana', '2026-12-06T08:00:00.000Z',
                    'ok', NULL
             FROM k;"
        ))
        .unwrap();
}

/// ana's insert of inspection `id` of `asset`, as the i-th entry of an upload.
fn insert(i: usize, id: &str, asset: i64, result: &str, base: i64) -> UploadEntry {
    let row = [
        ("id", Value::Text(id.into())),
        ("asset_id", Value::Integer(asset)),
        ("inspector", Value::Text("ana".into())),
        (
            "inspected_at",
            Value::Text("2026-12-06T08:00:00.000Z".into()),
        ),
        ("result", Value::Text(result.into())),
        ("notes", Value::Null),
    ];
    UploadEntry {
        seq_first: i as i64 + 1,
        seq_last: i as i64 + 1,
        table: "inspections".into(),
        key: Value::Text(id.into()),
        op: WriteOp::Insert,
        base_version: Some(base),
        user: "ana".into(),
        old: Default::default(),
        new: row.into_iter().map(|(c, v)| (c.to_string(), v)).collect(),
    }
}

/// An office trigger on `inspections` renames the inspected asset. The tablet inserts
/// 1,000 inspections of one asset (the upload's first window) and renames that asset
/// (its second): the rename must be judged against the asset as the first window's
/// inserts left it, renamed by the office in the same transaction, so it is a
/// conflict, logged. Read before the inserts ran, the asset would look untouched
/// since the tablet's download and the office's name would be overwritten silently.
#[test]
fn an_office_triggers_write_in_one_window_is_seen_by_the_next() {
    let (office, dev) = office_with_tablet();
    let asset = north_ids(&office)[0];
    office
        .pg()
        .batch_execute(
            "CREATE FUNCTION office_seen() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 UPDATE assets SET name = 'seen by the office' WHERE id = NEW.asset_id;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER office_seen AFTER INSERT ON inspections
                 FOR EACH ROW EXECUTE FUNCTION office_seen();",
        )
        .unwrap();
    inspect_on_tablet(&dev, "win", asset, 1000);
    dev.replica()
        .execute_batch(&format!(
            "UPDATE assets SET name = 'renamed on the tablet' WHERE id = {asset}"
        ))
        .unwrap();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'win-%'"),
        "1000"
    );
    let conflicts = office.rows(&format!(
        "SELECT tbl, key, kind, resolution FROM fieldsync.conflicts WHERE tbl = 'assets' AND key = '{asset}'"
    ));
    assert_eq!(
        conflicts.len(),
        1,
        "the tablet's rename of asset {asset} after the office's trigger renamed it in the \
         same upload is a conflict: {conflicts:?} (name now {})",
        office.value(&format!("SELECT name FROM assets WHERE id = {asset}"))
    );
}

/// An upload (made by hand: a device's journal would have merged the two) inserts
/// inspection `dup-00005` in its first window and updates it in its second: the
/// update finds the row the insert wrote and applies.
#[test]
fn a_row_inserted_in_one_window_and_updated_in_the_next_is_updated() {
    let (office, dev) = office_with_tablet();
    let asset = north_ids(&office)[0];
    let base = latest_base(&office, "tab1");
    let mut entries: Vec<UploadEntry> = (0..1000)
        .map(|i| insert(i, &format!("dup-{i:05}"), asset, "ok", base))
        .collect();
    entries.push(UploadEntry {
        seq_first: 1001,
        seq_last: 1001,
        table: "inspections".into(),
        key: Value::Text("dup-00005".into()),
        op: WriteOp::Update,
        base_version: Some(base),
        user: "ana".into(),
        old: [("result".to_string(), Value::Text("ok".into()))].into(),
        new: [("result".to_string(), Value::Text("fixed".into()))].into(),
    });
    let answer = post_upload(
        &office.server.url,
        &device_headers(&dev),
        &upload_of(entries),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'dup-%'"),
        "1000"
    );
    assert_eq!(
        office.value("SELECT result FROM inspections WHERE id = 'dup-00005'"),
        "fixed",
        "the update in the second window of the row inserted in the first: {}",
        answer.text()
    );
}

/// The office's own check refuses one row of the first window's batch while the
/// second window is already being judged: the upload is refused naming that entry,
/// and nothing of it is written.
#[test]
fn a_refusal_in_a_windows_batch_names_its_entry_and_writes_nothing() {
    let (office, dev) = office_with_tablet();
    let asset = north_ids(&office)[0];
    office
        .pg()
        .batch_execute(
            "ALTER TABLE inspections ADD CONSTRAINT result_known
                 CHECK (result IN ('ok', 'worn', 'failed'))",
        )
        .unwrap();
    let base = latest_base(&office, "tab1");
    let entries: Vec<UploadEntry> = (0..2000)
        .map(|i| {
            let result = if i == 500 { "broken" } else { "ok" };
            insert(i, &format!("chk-{i:05}"), asset, result, base)
        })
        .collect();
    let answer = post_upload(
        &office.server.url,
        &device_headers(&dev),
        &upload_of(entries),
    );
    assert_eq!(answer.status, 403, "{}", answer.text());
    let message = answer.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("entry 501 (insert of `inspections`")
            && message.contains("the main database refused it")
            && message.contains("result_known"),
        "{message}"
    );
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'chk-%'"),
        "0"
    );
}

/// The first window ends with the tablet retiring asset B (it leaves the north slice,
/// whose filter keeps `status <> 'retired'`); the second inserts an inspection of B.
/// Its parent must be judged as the first window's update left it: outside the slice,
/// so the insert is not applied (told back as having left the slice). Read before the
/// update ran, B would still look inside and the inspection would be written.
#[test]
fn a_parent_written_in_one_window_is_judged_as_written_in_the_next() {
    let (office, dev) = office_with_tablet();
    let ids = north_ids(&office);
    let (asset, retired) = (ids[0], ids[1]);
    let base = latest_base(&office, "tab1");
    let mut entries: Vec<UploadEntry> = (0..999)
        .map(|i| insert(i, &format!("par-{i:05}"), asset, "ok", base))
        .collect();
    entries.push(UploadEntry {
        seq_first: 1000,
        seq_last: 1000,
        table: "assets".into(),
        key: Value::Integer(retired),
        op: WriteOp::Update,
        base_version: Some(base),
        user: "ana".into(),
        old: Default::default(),
        new: [("status".to_string(), Value::Text("retired".into()))].into(),
    });
    entries.push(insert(1000, "par-late", retired, "ok", base));
    let answer = post_upload(
        &office.server.url,
        &device_headers(&dev),
        &upload_of(entries),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    let left: Vec<&serde_json::Value> = body["not_kept"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["key"] == "par-late" && n["kind"] == "left-slice")
        .collect();
    assert!(
        !left.is_empty(),
        "par-late not told back as left: {}",
        body["not_kept"]
    );
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id = 'par-late'"),
        "0",
        "an inspection of the asset the same upload retired was written"
    );
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'par-%'"),
        "999"
    );
    assert_eq!(
        office.value(&format!("SELECT status FROM assets WHERE id = {retired}")),
        "retired"
    );
}

/// An office trigger on `inspections` looks each new row up in a table of 1,000 rows
/// without an index, which only a sequential scan can read. The upload's transaction
/// turns sequential scans off (its own statements find rows by key), which costs such
/// a scan past `jit_above_cost`: with JIT on, PostgreSQL compiled the trigger's query
/// for every inserted row (an insert of 100 rows took 1.7 s instead of 6 ms by hand).
/// The trigger records the setting it ran under; the send of 1,000 inspections must
/// see JIT off and take well under what compiling 1,000 queries takes (with JIT on
/// the send took 21.2 s, with it off 0.26 s, debug build, another test suite running).
#[test]
fn an_office_trigger_with_a_sequential_scan_is_not_compiled_per_row() {
    let (office, dev) = office_with_tablet();
    let asset = north_ids(&office)[0];
    office
        .pg()
        .batch_execute(
            "CREATE TABLE office_log (ref text, note text);
             INSERT INTO office_log SELECT 'ref-' || g, 'x' FROM generate_series(1, 1000) g;
             CREATE TABLE office_jit (setting text);
             CREATE FUNCTION office_check() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM 1 FROM office_log WHERE ref = NEW.id;
                 INSERT INTO office_jit VALUES (current_setting('jit'));
                 RETURN NULL;
             END $$;
             CREATE TRIGGER office_check AFTER INSERT ON inspections
                 FOR EACH ROW EXECUTE FUNCTION office_check();",
        )
        .unwrap();
    inspect_on_tablet(&dev, "jit", asset, 1000);
    let started = Instant::now();
    let run = dev.run(&["send"], "");
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'jit-%'"),
        "1000"
    );
    assert_eq!(
        office.value("SELECT string_agg(DISTINCT setting, ',') FROM office_jit"),
        "off",
        "the office's trigger ran under the upload's settings with JIT on"
    );
    eprintln!("send of 1,000 inspections through the office's trigger: {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "the send of 1,000 inspections through the office's trigger took {took:?}"
    );
}
