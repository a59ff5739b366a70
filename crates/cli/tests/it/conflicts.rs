//! DESIGN.md's conflict table, cell by cell, under each policy: an office change made
//! with plain SQL on the main database, a device change made with plain SQL on the
//! replica, a send; then the main database, the conflict log and the journal. Also
//! `admin conflicts resolve`.

use serde_json::{Value as Json, json};

use crate::harness::*;

/// The row every cell starts from: in ana's slice of the `cells-*` tasks.
const ROW: &str = "cell-1";
/// The key the office and the device both insert in the "key exists" cell.
const NEW_ROW: &str = "cell-2";
const DEVICE_ID: &str = "tab1";

const SERVER_WINS: &str = "server-wins";
const DEVICE_WINS: &str = "device-wins";
const FIELD_MERGE: &str = "field-merge";

/// ROW as the office created it, with `changes` on top (JSON forms of the values).
fn row(changes: Json) -> Json {
    let mut r = json!({
        "id": ROW,
        "asset_id": 1,
        "inspector": "ana",
        "inspected_at": "2026-05-01T08:00:00.000Z",
        "result": "ok",
        "notes": "routine",
    });
    for (k, v) in changes.as_object().expect("changes are an object") {
        r[k] = v.clone();
    }
    r
}

/// An office with a task `cells-POLICY` (inspections alone, ana's rows, every write),
/// ROW in its main database, and a device of ana's that downloaded the task.
struct Cell {
    policy: &'static str,
    office: Office,
    dev: DeviceDir,
    /// `last_sync.conflicts` of the device's last send.
    sent_conflicts: std::cell::Cell<Option<u64>>,
    /// What the device's last send printed.
    sent_stdout: std::cell::RefCell<String>,
}

impl Cell {
    fn new(policy: &'static str) -> Cell {
        let office = Office::new(20);
        office.execute_batch(&format!(
            "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
             VALUES ('{ROW}', 1, 'ana', '2026-05-01T08:00:00.000Z', 'ok', 'routine')"
        ));
        let task = format!("cells-{policy}");
        let path = office.dir.0.join(format!("{task}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
name = "{task}"
[[tables]]
name = "inspections"
filter = "inspector = $user"
write = ["insert", "update", "delete"]
conflict = "{policy}"
"#
            ),
        )
        .unwrap();
        office
            .admin(&["task", "apply", path.to_str().unwrap()], "")
            .ok();
        office
            .admin(&["task", "assign", &task, "--user", "ana"], "")
            .ok();
        let dev = office.device(DEVICE_ID, &[&task]);
        dev.login("ana").ok();
        dev.run(&["download", &task], "").ok();
        let cell = Cell {
            policy,
            office,
            dev,
            sent_conflicts: std::cell::Cell::new(None),
            sent_stdout: Default::default(),
        };
        assert_eq!(
            cell.replica_row(ROW),
            Some(row(json!({}))),
            "{policy}: the device has ROW"
        );
        cell
    }

    fn task(&self) -> String {
        format!("cells-{}", self.policy)
    }

    /// A program of the office writes the main database.
    fn office_sql(&self, sql: &str) {
        self.office.execute_batch(sql);
    }

    /// Any SQLite client on the device writes the replica; the triggers journal it.
    fn device_sql(&self, sql: &str) {
        self.dev.replica().execute_batch(sql).unwrap();
    }

    /// Sends the journal: exit 0 (conflicts settled by policy are ok), journal empty.
    fn send(&self) -> Run {
        let run = self.dev.run(&["send"], "");
        assert_eq!(
            run.code, 0,
            "{}: a send with conflicts settled by policy exits 0: {run:?}",
            self.policy
        );
        let journal: Json =
            serde_json::from_str(&self.dev.run(&["journal", "--json"], "").ok().stdout).unwrap();
        assert_eq!(
            journal,
            json!([]),
            "{}: the journal is empty after the send",
            self.policy
        );
        let status = self.dev.status();
        assert_eq!(status["pending"], 0, "{}: {status:#}", self.policy);
        assert_eq!(status["last_sync"]["op"], "send", "{}", self.policy);
        self.sent_conflicts
            .set(status["last_sync"]["conflicts"].as_u64());
        self.sent_stdout.replace(run.stdout.clone());
        run
    }

    /// After a download the device holds what the main database holds for ROW and
    /// NEW_ROW (when the row is in ana's slice), whoever won.
    #[track_caller]
    fn assert_device_catches_up(&self) {
        self.dev.run(&["download", &self.task()], "").ok();
        for id in [ROW, NEW_ROW] {
            let main = self.main_row(id).filter(|r| r["inspector"] == "ana");
            assert_eq!(
                self.replica_row(id),
                main,
                "{}: the replica's {id} after a download",
                self.policy
            );
        }
    }

    fn main_row(&self, id: &str) -> Option<Json> {
        match self.office.engine() {
            Engine::Sqlite => row_json(&self.office.sql(), id),
            Engine::Postgres => pg_row_json(&mut self.office.pg(), id),
        }
    }

    fn replica_row(&self, id: &str) -> Option<Json> {
        row_json(&self.dev.replica(), id)
    }

    fn conflicts(&self) -> Vec<Json> {
        let run = self.office.admin(&["conflicts", "list", "--json"], "").ok();
        serde_json::from_str::<Json>(&run.stdout)
            .unwrap()
            .as_array()
            .expect("conflicts list --json prints an array")
            .clone()
    }

    /// The main database holds `expected` as the inspection `id` (`None`: no such row).
    #[track_caller]
    fn assert_main(&self, id: &str, expected: Option<Json>, what: &str) {
        assert_eq!(
            self.main_row(id),
            expected,
            "{}: main database, {what}",
            self.policy
        );
    }

    #[track_caller]
    fn assert_nothing_logged(&self) {
        let all = self.conflicts();
        assert!(
            all.is_empty(),
            "{}: nothing to log, but the log holds {all:#?}",
            self.policy
        );
        assert_eq!(
            self.sent_conflicts.get(),
            Some(0),
            "{}: the send counted no conflict",
            self.policy
        );
    }

    /// The log holds exactly one conflict, this one, unresolved; returns it.
    #[track_caller]
    fn assert_logged(&self, expected: Logged) -> Json {
        let all = self.conflicts();
        let p = self.policy;
        assert_eq!(all.len(), 1, "{p}: one conflict logged: {all:#?}");
        let c = all[0].clone();
        let fields = [
            ("kind", json!(expected.kind)),
            ("resolution", json!(expected.resolution)),
            ("op", json!(expected.op)),
            ("key", json!(expected.key)),
            ("device_values", expected.device_values),
            ("server_values", expected.server_values),
            ("device", json!(DEVICE_ID)),
            ("user", json!("ana")),
            ("task", json!(self.task())),
            ("table", json!("inspections")),
            ("policy", json!(p)),
            ("resolved_at", Json::Null),
            ("resolved_take", Json::Null),
        ];
        for (field, want) in fields {
            assert_eq!(c[field], want, "{p}: conflict field `{field}` in {c:#}");
        }
        let at = c["at"].as_str().unwrap_or_default();
        assert!(
            at.len() >= 20 && at.starts_with("20") && at.contains('T') && at.ends_with('Z'),
            "{p}: `at` is a UTC RFC 3339 time: {c:#}"
        );
        assert!(c["id"].is_i64(), "{p}: an id: {c:#}");
        if expected.op != "insert" {
            let base = c["base_version"].as_i64();
            let server = c["server_version"].as_i64();
            assert!(
                matches!((base, server), (Some(b), Some(s)) if s > b),
                "{p}: the row changed on the server since the device's base: {c:#}"
            );
        }
        assert_eq!(
            self.sent_conflicts.get(),
            Some(1),
            "{p}: the send counted the conflict"
        );
        c
    }

    /// The device's own list of its values not kept (`device conflicts --json`), as
    /// `[column, device value, kept value, policy, resolution]` rows; the crew sees
    /// exactly these.
    #[track_caller]
    fn assert_device_sees(&self, expected: Json) {
        let run = self.dev.run(&["conflicts", "--json"], "").ok();
        let list: Json = serde_json::from_str(&run.stdout).unwrap();
        let seen: Vec<Json> = list
            .as_array()
            .expect("device conflicts --json prints an array")
            .iter()
            .map(|c| {
                assert_eq!(c["table"], "inspections", "{c:#}");
                assert_eq!(c["user"], "ana", "{c:#}");
                assert!(c["at"].as_str().is_some_and(|a| a.ends_with('Z')), "{c:#}");
                json!([
                    c["column"],
                    c["device"],
                    c["kept"],
                    c["policy"],
                    c["resolution"]
                ])
            })
            .collect();
        assert_eq!(
            Json::from(seen),
            expected,
            "{}: device conflicts",
            self.policy
        );
        let text = self.dev.run(&["conflicts"], "").ok().stdout;
        assert_eq!(
            text.lines().count(),
            expected.as_array().map_or(0, Vec::len),
            "{}: one line per value: {text}",
            self.policy
        );
    }

    fn resolve(&self, id: &Json, take: &str) -> Run {
        self.office.admin(
            &["conflicts", "resolve", &id.to_string(), "--take", take],
            "",
        )
    }
}

/// One expected conflict-log record.
struct Logged {
    op: &'static str,
    kind: &'static str,
    resolution: &'static str,
    key: &'static str,
    device_values: Json,
    server_values: Json,
}

/// An inspection row as JSON (the JSON forms of the values), or `None`.
/// `row_json` of a PostgreSQL main database (`asset_id` is a bigint there).
fn pg_row_json(c: &mut ::postgres::Client, id: &str) -> Option<Json> {
    let r = c
        .query_opt(
            "SELECT id, asset_id, inspector, inspected_at, result, notes FROM inspections WHERE id = $1",
            &[&id],
        )
        .unwrap()?;
    Some(json!({
        "id": r.get::<_, String>(0),
        "asset_id": r.get::<_, i64>(1),
        "inspector": r.get::<_, String>(2),
        "inspected_at": r.get::<_, String>(3),
        "result": r.get::<_, Option<String>>(4),
        "notes": r.get::<_, Option<String>>(5),
    }))
}

fn row_json(conn: &rusqlite::Connection, id: &str) -> Option<Json> {
    use rusqlite::OptionalExtension;
    use rusqlite::types::ValueRef;
    conn.query_row(
        "SELECT id, asset_id, inspector, inspected_at, result, notes FROM inspections WHERE id = ?1",
        [id],
        |r| {
            let mut m = serde_json::Map::new();
            for (i, name) in ["id", "asset_id", "inspector", "inspected_at", "result", "notes"]
                .into_iter()
                .enumerate()
            {
                let v = match r.get_ref(i)? {
                    ValueRef::Null => Json::Null,
                    ValueRef::Integer(v) => json!(v),
                    ValueRef::Real(v) => json!(v),
                    ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                    ValueRef::Blob(b) => json!(format!("blob {b:?}")),
                };
                m.insert(name.to_string(), v);
            }
            Ok(Json::Object(m))
        },
    )
    .optional()
    .unwrap()
}

/// Runs one cell: the office change, the device change, the send.
fn cell(policy: &'static str, office_sql: &str, device_sql: &str) -> Cell {
    let c = Cell::new(policy);
    c.office_sql(office_sql);
    c.device_sql(device_sql);
    c.send();
    c.assert_device_catches_up();
    c
}

// --- update / update, different columns --------------------------------------------

const OFFICE_NOTES: &str = "UPDATE inspections SET notes = 'office note' WHERE id = 'cell-1'";
const DEVICE_RESULT: &str = "UPDATE inspections SET result = 'worn' WHERE id = 'cell-1'";

#[test]
fn update_update_different_columns_server_wins_keeps_the_server_row_and_logs_the_device_values() {
    let c = cell(SERVER_WINS, OFFICE_NOTES, DEVICE_RESULT);
    c.assert_main(
        ROW,
        Some(row(json!({"notes": "office note"}))),
        "server row kept",
    );
    c.assert_logged(Logged {
        op: "update",
        kind: "update-update",
        resolution: "server-kept",
        key: ROW,
        device_values: json!({"result": "worn"}),
        server_values: json!({"result": "ok"}),
    });
}

#[test]
fn update_update_different_columns_device_wins_applies_the_device_columns() {
    let c = cell(DEVICE_WINS, OFFICE_NOTES, DEVICE_RESULT);
    c.assert_main(
        ROW,
        Some(row(json!({"notes": "office note", "result": "worn"}))),
        "device columns applied, the office's column kept",
    );
    c.assert_nothing_logged();
}

#[test]
fn update_update_different_columns_field_merge_applies_both() {
    let c = cell(FIELD_MERGE, OFFICE_NOTES, DEVICE_RESULT);
    c.assert_main(
        ROW,
        Some(row(json!({"notes": "office note", "result": "worn"}))),
        "both applied",
    );
    c.assert_nothing_logged();
}

// --- update / update, same column ---------------------------------------------------

/// Both change `result`; the office also changes `inspected_at`, the device `notes`.
const OFFICE_RESULT_AND_TIME: &str = "UPDATE inspections
     SET result = 'failed', inspected_at = '2026-05-02T09:00:00.000Z' WHERE id = 'cell-1'";
const DEVICE_RESULT_AND_NOTES: &str =
    "UPDATE inspections SET result = 'worn', notes = 'device note' WHERE id = 'cell-1'";

#[test]
fn update_update_same_column_server_wins_keeps_the_server_value_and_logs_the_device_value() {
    let c = cell(SERVER_WINS, OFFICE_RESULT_AND_TIME, DEVICE_RESULT_AND_NOTES);
    c.assert_main(
        ROW,
        Some(row(
            json!({"result": "failed", "inspected_at": "2026-05-02T09:00:00.000Z"}),
        )),
        "server row kept, none of the device's values",
    );
    c.assert_logged(Logged {
        op: "update",
        kind: "update-update",
        resolution: "server-kept",
        key: ROW,
        device_values: json!({"result": "worn", "notes": "device note"}),
        server_values: json!({"result": "failed", "notes": "routine"}),
    });
    c.assert_device_sees(json!([
        [
            "notes",
            "device note",
            "routine",
            SERVER_WINS,
            "server-kept"
        ],
        ["result", "worn", "failed", SERVER_WINS, "server-kept"],
    ]));
}

#[test]
fn update_update_same_column_device_wins_applies_the_device_value_and_logs_the_server_value() {
    let c = cell(DEVICE_WINS, OFFICE_RESULT_AND_TIME, DEVICE_RESULT_AND_NOTES);
    c.assert_main(
        ROW,
        Some(row(json!({
            "result": "worn",
            "notes": "device note",
            "inspected_at": "2026-05-02T09:00:00.000Z",
        }))),
        "device values applied, the office's other column kept",
    );
    c.assert_logged(Logged {
        op: "update",
        kind: "update-update",
        resolution: "device-applied",
        key: ROW,
        device_values: json!({"result": "worn"}),
        server_values: json!({"result": "failed"}),
    });
    // Every value of the crew's was kept: nothing to tell them.
    c.assert_device_sees(json!([]));
}

#[test]
fn update_update_same_column_field_merge_keeps_the_server_value_and_merges_the_rest() {
    let c = cell(FIELD_MERGE, OFFICE_RESULT_AND_TIME, DEVICE_RESULT_AND_NOTES);
    c.assert_main(
        ROW,
        Some(row(json!({
            "result": "failed",
            "notes": "device note",
            "inspected_at": "2026-05-02T09:00:00.000Z",
        }))),
        "server value kept for `result`, other columns merged",
    );
    c.assert_logged(Logged {
        op: "update",
        kind: "update-update",
        resolution: "merged",
        key: ROW,
        device_values: json!({"result": "worn"}),
        server_values: json!({"result": "failed"}),
    });
    c.assert_device_sees(json!(
        [["result", "worn", "failed", FIELD_MERGE, "merged"],]
    ));
    let said = c.sent_stdout.take();
    assert!(
        said.contains("not kept: inspections")
            && said.contains("\"worn\"")
            && said.contains("\"failed\""),
        "the send names the value not kept and the value kept: {said}"
    );
}

// --- device update / office delete --------------------------------------------------

const OFFICE_DELETE: &str = "DELETE FROM inspections WHERE id = 'cell-1'";

fn device_update_office_delete(policy: &'static str) {
    let c = cell(policy, OFFICE_DELETE, DEVICE_RESULT);
    c.assert_main(ROW, None, "stays deleted");
    c.assert_logged(Logged {
        op: "update",
        kind: "update-delete",
        resolution: "stays-deleted",
        key: ROW,
        device_values: json!({"result": "worn"}),
        server_values: json!({}),
    });
    c.assert_device_sees(json!([["result", "worn", null, policy, "stays-deleted"]]));
}

#[test]
fn device_update_office_delete_server_wins_stays_deleted_and_logs_the_update() {
    device_update_office_delete(SERVER_WINS);
}

#[test]
fn device_update_office_delete_device_wins_stays_deleted_and_logs_the_update() {
    device_update_office_delete(DEVICE_WINS);
}

#[test]
fn device_update_office_delete_field_merge_stays_deleted_and_logs_the_update() {
    device_update_office_delete(FIELD_MERGE);
}

// --- device delete / office update --------------------------------------------------

const OFFICE_RESULT: &str = "UPDATE inspections SET result = 'failed' WHERE id = 'cell-1'";
const DEVICE_DELETE: &str = "DELETE FROM inspections WHERE id = 'cell-1'";

/// The row kept, the delete logged against the server row.
fn device_delete_office_update_keeps_the_row(policy: &'static str) {
    let c = cell(policy, OFFICE_RESULT, DEVICE_DELETE);
    let office_row = row(json!({"result": "failed"}));
    c.assert_main(ROW, Some(office_row.clone()), "row kept");
    c.assert_logged(Logged {
        op: "delete",
        kind: "delete-update",
        resolution: "row-kept",
        key: ROW,
        device_values: json!({}),
        server_values: office_row,
    });
    c.assert_device_sees(json!([[null, null, null, policy, "row-kept"]]));
}

#[test]
fn device_delete_office_update_server_wins_keeps_the_row_and_logs_the_delete() {
    device_delete_office_update_keeps_the_row(SERVER_WINS);
}

#[test]
fn device_delete_office_update_device_wins_deletes_the_row_and_logs_the_server_row() {
    let c = cell(DEVICE_WINS, OFFICE_RESULT, DEVICE_DELETE);
    c.assert_main(ROW, None, "row deleted");
    c.assert_logged(Logged {
        op: "delete",
        kind: "delete-update",
        resolution: "row-deleted",
        key: ROW,
        device_values: json!({}),
        server_values: row(json!({"result": "failed"})),
    });
}

#[test]
fn device_delete_office_update_field_merge_keeps_the_row_and_logs_the_delete() {
    device_delete_office_update_keeps_the_row(FIELD_MERGE);
}

// --- device insert / key exists in the slice ----------------------------------------

/// The office's row NEW_ROW, made after the device's download, inside the slice.
fn office_new_row() -> Json {
    row(json!({"id": NEW_ROW, "inspected_at": "2026-06-01T08:00:00.000Z", "notes": "office"}))
}

/// The device's row with the same key: same `inspected_at`, other `result` and `notes`.
fn device_new_row() -> Json {
    row(json!({
        "id": NEW_ROW,
        "inspected_at": "2026-06-01T08:00:00.000Z",
        "result": "failed",
        "notes": "device",
    }))
}

fn insert_sql(r: &Json) -> String {
    format!(
        "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
         VALUES ('{}', {}, '{}', '{}', '{}', '{}')",
        r["id"].as_str().unwrap(),
        r["asset_id"],
        r["inspector"].as_str().unwrap(),
        r["inspected_at"].as_str().unwrap(),
        r["result"].as_str().unwrap(),
        r["notes"].as_str().unwrap(),
    )
}

fn insert_exists(policy: &'static str) -> Cell {
    let c = Cell::new(policy);
    assert_eq!(c.replica_row(NEW_ROW), None, "{policy}: not on the device");
    c.office_sql(&insert_sql(&office_new_row()));
    c.device_sql(&insert_sql(&device_new_row()));
    c.send();
    c.assert_device_catches_up();
    c.assert_main(ROW, Some(row(json!({}))), "the other row untouched");
    c
}

#[test]
fn insert_exists_server_wins_keeps_the_server_row_and_logs_the_device_row() {
    let c = insert_exists(SERVER_WINS);
    c.assert_main(NEW_ROW, Some(office_new_row()), "server row kept");
    c.assert_logged(Logged {
        op: "insert",
        kind: "insert-exists",
        resolution: "server-kept",
        key: NEW_ROW,
        device_values: device_new_row(),
        server_values: office_new_row(),
    });
}

#[test]
fn insert_exists_device_wins_applies_the_device_row_and_logs_the_server_row() {
    let c = insert_exists(DEVICE_WINS);
    c.assert_main(NEW_ROW, Some(device_new_row()), "device row applied");
    c.assert_logged(Logged {
        op: "insert",
        kind: "insert-exists",
        resolution: "device-applied",
        key: NEW_ROW,
        device_values: device_new_row(),
        server_values: office_new_row(),
    });
}

/// "As update/update with the server row as base": the device's values are its changes
/// to the server row, which the office has not changed since; they are applied, and
/// the server values they replace are logged so that nothing is lost silently.
#[test]
fn insert_exists_field_merge_applies_the_differing_device_values_and_logs_the_replaced_ones() {
    let c = insert_exists(FIELD_MERGE);
    c.assert_main(
        NEW_ROW,
        Some(device_new_row()),
        "the device's differing values applied onto the server row",
    );
    c.assert_logged(Logged {
        op: "insert",
        kind: "insert-exists",
        resolution: "merged",
        key: NEW_ROW,
        device_values: json!({"result": "failed", "notes": "device"}),
        server_values: json!({"result": "ok", "notes": "office"}),
    });
}

/// A device row equal to the server row changes nothing and loses nothing: no log.
#[test]
fn insert_exists_field_merge_with_equal_rows_logs_nothing() {
    let c = Cell::new(FIELD_MERGE);
    c.office_sql(&insert_sql(&office_new_row()));
    c.device_sql(&insert_sql(&office_new_row()));
    c.send();
    c.assert_device_catches_up();
    c.assert_main(NEW_ROW, Some(office_new_row()), "the row as both made it");
    c.assert_nothing_logged();
}

// --- delete / delete ----------------------------------------------------------------

fn delete_delete(policy: &'static str) {
    let c = cell(policy, OFFICE_DELETE, DEVICE_DELETE);
    c.assert_main(ROW, None, "deleted");
    c.assert_main(
        NEW_ROW,
        None,
        "nothing else appeared (sanity of the helper)",
    );
    c.assert_nothing_logged();
}

#[test]
fn delete_delete_server_wins_logs_nothing() {
    delete_delete(SERVER_WINS);
}

#[test]
fn delete_delete_device_wins_logs_nothing() {
    delete_delete(DEVICE_WINS);
}

#[test]
fn delete_delete_field_merge_logs_nothing() {
    delete_delete(FIELD_MERGE);
}

// --- row left the slice meanwhile ---------------------------------------------------

const OFFICE_MOVES_OUT: &str = "UPDATE inspections SET inspector = 'ben' WHERE id = 'cell-1'";

/// The device updates a row the office moved out of ana's slice: logged, not applied.
fn left_slice_update(policy: &'static str) {
    let c = cell(policy, OFFICE_MOVES_OUT, DEVICE_RESULT);
    c.assert_main(
        ROW,
        Some(row(json!({"inspector": "ben"}))),
        "the device's change not applied",
    );
    c.assert_logged(Logged {
        op: "update",
        kind: "left-slice",
        resolution: "not-applied",
        key: ROW,
        device_values: json!({"result": "worn"}),
        server_values: json!({"result": "ok"}),
    });
}

/// The device deletes a row the office moved out of ana's slice: logged, not applied.
fn left_slice_delete(policy: &'static str) {
    let c = cell(policy, OFFICE_MOVES_OUT, DEVICE_DELETE);
    let office_row = row(json!({"inspector": "ben"}));
    c.assert_main(ROW, Some(office_row.clone()), "the delete not applied");
    c.assert_logged(Logged {
        op: "delete",
        kind: "left-slice",
        resolution: "not-applied",
        key: ROW,
        device_values: json!({}),
        server_values: office_row,
    });
}

#[test]
fn left_slice_update_server_wins_is_logged_not_applied() {
    left_slice_update(SERVER_WINS);
}

#[test]
fn left_slice_update_device_wins_is_logged_not_applied() {
    left_slice_update(DEVICE_WINS);
}

#[test]
fn left_slice_update_field_merge_is_logged_not_applied() {
    left_slice_update(FIELD_MERGE);
}

#[test]
fn left_slice_delete_server_wins_is_logged_not_applied() {
    left_slice_delete(SERVER_WINS);
}

#[test]
fn left_slice_delete_device_wins_is_logged_not_applied() {
    left_slice_delete(DEVICE_WINS);
}

#[test]
fn left_slice_delete_field_merge_is_logged_not_applied() {
    left_slice_delete(FIELD_MERGE);
}

// --- admin conflicts resolve --------------------------------------------------------

/// The one logged conflict after the resolve: marked with `take` and a time.
#[track_caller]
fn assert_resolved(c: &Cell, take: &str) {
    let all = c.conflicts();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["resolved_take"], take, "{:#}", all[0]);
    let at = all[0]["resolved_at"].as_str().unwrap_or_default();
    assert!(
        at.starts_with("20") && at.ends_with('Z'),
        "resolved_at is a UTC time: {:#}",
        all[0]
    );
}

#[test]
fn resolve_take_device_applies_the_logged_device_values() {
    // Server-wins kept the office's row; the administrator takes the device's after all.
    let c = cell(SERVER_WINS, OFFICE_RESULT_AND_TIME, DEVICE_RESULT_AND_NOTES);
    let logged = c.assert_logged(Logged {
        op: "update",
        kind: "update-update",
        resolution: "server-kept",
        key: ROW,
        device_values: json!({"result": "worn", "notes": "device note"}),
        server_values: json!({"result": "failed", "notes": "routine"}),
    });
    let run = c.resolve(&logged["id"], "device").ok();
    assert!(run.stdout.contains("resolved"), "{run:?}");
    c.assert_main(
        ROW,
        Some(row(json!({
            "result": "worn",
            "notes": "device note",
            "inspected_at": "2026-05-02T09:00:00.000Z",
        }))),
        "the logged device values applied",
    );
    assert_resolved(&c, "device");

    let again = c.resolve(&logged["id"], "server");
    assert_eq!(again.code, 1, "resolving twice is refused: {again:?}");
    assert!(
        again.stderr.starts_with("error: ") && again.stderr.contains("was resolved"),
        "{again:?}"
    );
    c.assert_main(
        ROW,
        Some(row(json!({
            "result": "worn",
            "notes": "device note",
            "inspected_at": "2026-05-02T09:00:00.000Z",
        }))),
        "the refused second resolve changed nothing",
    );
    assert_resolved(&c, "device");
}

#[test]
fn resolve_take_server_applies_the_logged_server_values() {
    // Device-wins applied the device's `result`; the administrator takes the office's.
    let c = cell(DEVICE_WINS, OFFICE_RESULT_AND_TIME, DEVICE_RESULT_AND_NOTES);
    let logged = c.assert_logged(Logged {
        op: "update",
        kind: "update-update",
        resolution: "device-applied",
        key: ROW,
        device_values: json!({"result": "worn"}),
        server_values: json!({"result": "failed"}),
    });
    c.resolve(&logged["id"], "server").ok();
    c.assert_main(
        ROW,
        Some(row(json!({
            "result": "failed",
            "notes": "device note",
            "inspected_at": "2026-05-02T09:00:00.000Z",
        }))),
        "the logged server value applied, the rest as it was",
    );
    assert_resolved(&c, "server");

    let again = c.resolve(&logged["id"], "server");
    assert_eq!(again.code, 1, "resolving twice is refused: {again:?}");
    assert!(
        again.stderr.starts_with("error: ") && again.stderr.contains("was resolved"),
        "{again:?}"
    );
    assert_resolved(&c, "server");
}

#[test]
fn resolve_take_server_restores_a_row_device_wins_deleted() {
    let c = cell(DEVICE_WINS, OFFICE_RESULT, DEVICE_DELETE);
    let logged = c.assert_logged(Logged {
        op: "delete",
        kind: "delete-update",
        resolution: "row-deleted",
        key: ROW,
        device_values: json!({}),
        server_values: row(json!({"result": "failed"})),
    });
    c.resolve(&logged["id"], "server").ok();
    c.assert_main(
        ROW,
        Some(row(json!({"result": "failed"}))),
        "the logged server row is back",
    );
    assert_resolved(&c, "server");
}

#[test]
fn resolve_take_device_carries_out_a_delete_that_server_wins_refused() {
    let c = cell(SERVER_WINS, OFFICE_RESULT, DEVICE_DELETE);
    let logged = c.assert_logged(Logged {
        op: "delete",
        kind: "delete-update",
        resolution: "row-kept",
        key: ROW,
        device_values: json!({}),
        server_values: row(json!({"result": "failed"})),
    });
    c.resolve(&logged["id"], "device").ok();
    c.assert_main(ROW, None, "the device's delete carried out");
    assert_resolved(&c, "device");
}

#[test]
fn resolving_an_unknown_conflict_is_refused() {
    let c = Cell::new(FIELD_MERGE);
    let run = c.resolve(&json!(999), "device");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: "), "{run:?}");
}

#[test]
fn resolve_take_device_of_an_update_to_a_deleted_row_is_refused_clearly() {
    let c = cell(FIELD_MERGE, OFFICE_DELETE, DEVICE_RESULT);
    let logged = c.assert_logged(Logged {
        op: "update",
        kind: "update-delete",
        resolution: "stays-deleted",
        key: ROW,
        device_values: json!({"result": "worn"}),
        server_values: json!({}),
    });
    let run = c.resolve(&logged["id"], "device");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("was deleted in the main database"),
        "{run:?}"
    );
    c.assert_main(ROW, None, "no partial row re-created");
    assert!(
        c.conflicts()[0]["resolved_at"].is_null(),
        "the conflict stays open"
    );
}

crate::also_on_postgres!(
    update_update_different_columns_server_wins_keeps_the_server_row_and_logs_the_device_values,
    update_update_different_columns_device_wins_applies_the_device_columns,
    update_update_different_columns_field_merge_applies_both,
    update_update_same_column_server_wins_keeps_the_server_value_and_logs_the_device_value,
    update_update_same_column_device_wins_applies_the_device_value_and_logs_the_server_value,
    update_update_same_column_field_merge_keeps_the_server_value_and_merges_the_rest,
    device_update_office_delete_server_wins_stays_deleted_and_logs_the_update,
    device_update_office_delete_device_wins_stays_deleted_and_logs_the_update,
    device_update_office_delete_field_merge_stays_deleted_and_logs_the_update,
    device_delete_office_update_server_wins_keeps_the_row_and_logs_the_delete,
    device_delete_office_update_device_wins_deletes_the_row_and_logs_the_server_row,
    device_delete_office_update_field_merge_keeps_the_row_and_logs_the_delete,
    insert_exists_server_wins_keeps_the_server_row_and_logs_the_device_row,
    insert_exists_device_wins_applies_the_device_row_and_logs_the_server_row,
    insert_exists_field_merge_applies_the_differing_device_values_and_logs_the_replaced_ones,
    insert_exists_field_merge_with_equal_rows_logs_nothing,
    delete_delete_server_wins_logs_nothing,
    delete_delete_device_wins_logs_nothing,
    delete_delete_field_merge_logs_nothing,
    left_slice_update_server_wins_is_logged_not_applied,
    left_slice_update_device_wins_is_logged_not_applied,
    left_slice_update_field_merge_is_logged_not_applied,
    left_slice_delete_server_wins_is_logged_not_applied,
    left_slice_delete_device_wins_is_logged_not_applied,
    left_slice_delete_field_merge_is_logged_not_applied,
    resolve_take_device_applies_the_logged_device_values,
    resolve_take_server_applies_the_logged_server_values,
    resolve_take_server_restores_a_row_device_wins_deleted,
    resolve_take_device_carries_out_a_delete_that_server_wins_refused,
    resolving_an_unknown_conflict_is_refused,
    resolve_take_device_of_an_update_to_a_deleted_row_is_refused_clearly,
);
