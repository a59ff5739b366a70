//! The core's promises under clients nobody here wrote: the `sqlite3` shell and a
//! Python app on the replica (every SQLite write form), a hand-edited journal (the
//! replica is in the hands of whoever holds the device), lost acknowledgements
//! followed by refusals. Each test failed before its fix.

use std::process::{Command, Stdio};

use crate::harness::*;
use crate::proxy::{Action, Fault, FaultProxy};

/// Applies a task file and assigns it to ana (and to `more` users).
fn apply_task(office: &Office, toml: &str, more: &[&str]) -> String {
    let name = toml
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a task file with a name")
        .to_string();
    let path = office.dir.0.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    let mut args = vec!["task", "assign", name.as_str(), "--user", "ana"];
    for u in more {
        args.extend_from_slice(&["--user", u]);
    }
    office.admin(&args, "").ok();
    name
}

/// A device of ana's holding `task`.
fn crew_device(office: &Office, id: &str, task: &str) -> DeviceDir {
    let dev = office.device(id, &[task]);
    dev.login("ana").ok();
    dev.run(&["download", task], "").ok();
    dev
}

/// Runs SQL with the `sqlite3` shell on the replica, as a crew's tool would.
fn sqlite3(dev: &DeviceDir, sql: &str) -> Run {
    Command::new("sqlite3")
        .arg("-bail")
        .arg(dev.replica_path())
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .expect("the sqlite3 shell runs (Debian's sqlite3 package)")
        .into()
}

/// Runs a Python program with the replica's path as `sys.argv[1]`.
fn python(dev: &DeviceDir, program: &str) -> Run {
    Command::new("python3")
        .arg("-c")
        .arg(program)
        .arg(dev.replica_path())
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs")
        .into()
}

/// Adds an entry to the journal by hand, as someone holding the device could.
fn forge(dev: &DeviceDir, op: &str, key: &str, old: &str, new: &str, base: &str, user: &str) {
    let q = |s: &str| {
        if s == "NULL" {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', "''"))
        }
    };
    sqlite3(
        dev,
        &format!(
            "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
             VALUES ('work_orders', {}, '{op}', {}, {}, {base}, '{user}', '2026-12-02T10:00:00.000Z')",
            q(key),
            q(old),
            q(new)
        ),
    )
    .ok();
}

/// A work order of the office, outside every sample slice's rows.
fn office_order(office: &Office, id: &str, priority: i64, status: &str) {
    office.execute_batch(&format!(
        "INSERT INTO work_orders (id, asset_id, title, priority, status) VALUES ('{id}', 1, 'office title', {priority}, '{status}')"
    ));
}

fn order(office: &Office, id: &str, col: &str) -> String {
    office.value(&format!("SELECT {col} FROM work_orders WHERE id = '{id}'"))
}

fn n_orders(office: &Office, id: &str) -> String {
    office.value(&format!(
        "SELECT count(*) FROM work_orders WHERE id = '{id}'"
    ))
}

#[track_caller]
fn assert_refused(run: &Run, code: i32, fragment: &str) {
    assert_eq!(run.code, code, "{run:?}");
    assert!(
        run.stderr.contains(fragment),
        "expected {fragment:?}: {run:?}"
    );
}

const INSERT_ONLY: &str = r#"
name = "crew-new-orders"
[[tables]]
name = "work_orders"
filter = "priority >= 5"
write = ["insert"]
"#;

/// Point 1: REPLACE deletes without firing delete triggers; an upsert updates. On a
/// table the task lets the crew only insert into, every form that changes an existing
/// row is refused on the device, by the shell and by a Python app alike.
#[test]
fn every_sqlite_form_that_changes_an_existing_row_is_refused_where_the_task_forbids_it() {
    let office = Office::new(5);
    office_order(&office, "wo-big", 7, "open");
    let task = apply_task(&office, INSERT_ONLY, &[]);
    let dev = crew_device(&office, "tab1", &task);
    let values = "('wo-big', 1, 'hijack', 9, 'open')";
    let cols = "work_orders (id, asset_id, title, priority, status)";
    for sql in [
        format!("INSERT OR REPLACE INTO {cols} VALUES {values}"),
        format!("REPLACE INTO {cols} VALUES {values}"),
        format!(
            "INSERT INTO {cols} VALUES {values} ON CONFLICT (id) DO UPDATE SET title = excluded.title"
        ),
        "UPDATE work_orders SET title = 'hijack' WHERE id = 'wo-big'".to_string(),
        "UPDATE OR REPLACE work_orders SET title = 'hijack' WHERE id = 'wo-big'".to_string(),
        "DELETE FROM work_orders WHERE id = 'wo-big'".to_string(),
    ] {
        let run = sqlite3(&dev, &sql);
        assert_ne!(run.code, 0, "{sql}: {run:?}");
        assert!(run.stderr.contains("fieldsync: task"), "{sql}: {run:?}");
    }
    let py = python(
        &dev,
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1])\n\
         try:\n\
         \x20   c.execute(\"INSERT OR REPLACE INTO work_orders (id, asset_id, title, priority, status) VALUES ('wo-big', 1, 'hijack', 9, 'open')\")\n\
         \x20   c.commit()\n\
         \x20   print('accepted')\n\
         except sqlite3.DatabaseError as e:\n\
         \x20   print('refused:', e)\n",
    );
    assert!(py.stdout.starts_with("refused: fieldsync: task"), "{py:?}");
    // What the task allows still works: a new order, from the shell.
    sqlite3(
        &dev,
        &format!("INSERT INTO {cols} VALUES ('wo-new', 1, 'new on the tablet', 6, 'open')"),
    )
    .ok();
    let replica_title = rows(
        &dev.replica(),
        "SELECT title FROM work_orders WHERE id = 'wo-big'",
    );
    assert_eq!(replica_title, vec![vec!["toffice title".to_string()]]);
    dev.run(&["send"], "").ok();
    assert_eq!(order(&office, "wo-big", "title"), "office title");
    assert_eq!(order(&office, "wo-new", "title"), "new on the tablet");
}

/// Point 1, server side: an insert onto a key the slice holds would be an update the
/// task does not allow; whatever the journal says, it is logged and not applied.
fn a_forged_insert_onto_an_existing_key_is_logged_not_applied() {
    let office = Office::new(5);
    office_order(&office, "wo-big", 7, "open");
    let task = apply_task(&office, INSERT_ONLY, &[]);
    let dev = crew_device(&office, "tab1", &task);
    forge(
        &dev,
        "insert",
        "wo-big",
        "NULL",
        r#"{"id":"wo-big","asset_id":1,"title":"hijack","priority":9,"status":"open","due":null}"#,
        "NULL",
        "ana",
    );
    dev.run(&["send"], "").ok();
    assert_eq!(order(&office, "wo-big", "title"), "office title");
    let logged = conflicts(&office);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["kind"], "insert-exists");
    assert_eq!(logged[0]["resolution"], "not-applied");
}

/// Where the task allows update, REPLACE and upserts are updates (journaled as such,
/// applied, no conflict); where it allows delete and insert but not update, REPLACE
/// is a delete and an insert, and so is a delete followed by a re-insert (point 5).
fn replace_and_upsert_are_the_writes_the_task_allows() {
    let office = Office::new(5);
    office_order(&office, "wo-a", 7, "open");
    office_order(&office, "wo-b", 7, "open");
    office_order(&office, "wo-c", 7, "open");
    let updates = apply_task(
        &office,
        "name = \"crew-edit\"\n[[tables]]\nname = \"work_orders\"\nwrite = [\"insert\", \"update\"]\n",
        &[],
    );
    let dev = crew_device(&office, "tab1", &updates);
    let cols = "work_orders (id, asset_id, title, priority, status)";
    sqlite3(
        &dev,
        &format!("INSERT OR REPLACE INTO {cols} VALUES ('wo-a', 1, 'replaced', 7, 'open')"),
    )
    .ok();
    sqlite3(&dev, &format!("INSERT INTO {cols} VALUES ('wo-b', 1, 'upserted', 7, 'open') ON CONFLICT (id) DO UPDATE SET title = excluded.title")).ok();
    let ops = rows(
        &dev.replica(),
        "SELECT op FROM fieldsync_journal ORDER BY seq",
    );
    assert_eq!(ops, vec![vec!["tupdate".to_string()]; 2]);
    dev.run(&["send"], "").ok();
    assert_eq!(order(&office, "wo-a", "title"), "replaced");
    assert_eq!(order(&office, "wo-b", "title"), "upserted");

    let no_update = apply_task(
        &office,
        "name = \"crew-swap\"\n[[tables]]\nname = \"work_orders\"\nwrite = [\"insert\", \"delete\"]\n",
        &[],
    );
    let dev2 = crew_device(&office, "tab2", &no_update);
    sqlite3(
        &dev2,
        &format!("REPLACE INTO {cols} VALUES ('wo-a', 1, 'swapped', 8, 'open')"),
    )
    .ok();
    // Point 5: delete, then re-insert the key, in two statements, with an unrelated
    // insert in the same upload.
    sqlite3(&dev2, "DELETE FROM work_orders WHERE id = 'wo-c'").ok();
    sqlite3(
        &dev2,
        &format!("INSERT INTO {cols} VALUES ('wo-c', 1, 'again', 6, 'open')"),
    )
    .ok();
    sqlite3(
        &dev2,
        &format!("INSERT INTO {cols} VALUES ('wo-d', 1, 'unrelated', 6, 'open')"),
    )
    .ok();
    let run = dev2.run(&["send"], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(order(&office, "wo-a", "title"), "swapped");
    assert_eq!(order(&office, "wo-c", "title"), "again");
    assert_eq!(order(&office, "wo-d", "title"), "unrelated");
    assert!(conflicts(&office).is_empty(), "{:?}", conflicts(&office));
}

/// Point 2a: slice membership of an insert is judged on the row as the main database
/// stores it: the text `"1"` is stored as the number 1, outside `priority >= 5`.
fn a_forged_text_number_outside_the_slice_is_refused() {
    let office = Office::new(5);
    let task = apply_task(&office, INSERT_ONLY, &[]);
    let dev = crew_device(&office, "tab1", &task);
    forge(
        &dev,
        "insert",
        "wo-sly",
        "NULL",
        r#"{"id":"wo-sly","asset_id":1,"title":"sly","priority":"1","status":"open","due":null}"#,
        "NULL",
        "ana",
    );
    let run = dev.run(&["send"], "");
    assert_refused(&run, 4, "outside the task's slice");
    assert_eq!(n_orders(&office, "wo-sly"), "0");
}

const EDIT: &str = r#"
name = "crew-edit"
[[tables]]
name = "work_orders"
write = ["update", "delete"]
"#;

/// Point 2b: a base version the server never handed to this device is refused; it
/// would make the office's change look seen, and overwrite it silently.
fn a_made_up_base_version_is_refused() {
    let office = Office::new(5);
    office_order(&office, "wo-a", 7, "open");
    let task = apply_task(&office, EDIT, &[]);
    let dev = crew_device(&office, "tab1", &task);
    office.execute_batch("UPDATE work_orders SET title = 'office fix' WHERE id = 'wo-a'");
    sqlite3(
        &dev,
        "UPDATE work_orders SET title = 'device' WHERE id = 'wo-a'",
    )
    .ok();
    sqlite3(
        &dev,
        "UPDATE fieldsync_journal SET base_version = 999999999",
    )
    .ok();
    let run = dev.run(&["send"], "");
    assert_refused(&run, 4, "never handed to this device");
    assert_eq!(order(&office, "wo-a", "title"), "office fix");
    // Another device's real base is not this device's either.
    let other = crew_device(&office, "tab2", &task);
    let theirs = dev
        .replica()
        .query_row(
            "SELECT value FROM fieldsync_replica WHERE key = 'cursor'",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap();
    let others: String = other
        .replica()
        .query_row(
            "SELECT value FROM fieldsync_replica WHERE key = 'cursor'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // (The refused upload stays stored until discarded; whoever edits the journal by
    // hand drops it too.)
    sqlite3(
        &dev,
        &format!(
            "UPDATE fieldsync_journal SET base_version = {others}; DELETE FROM fieldsync_upload"
        ),
    )
    .ok();
    if others != theirs {
        // Refused (PostgreSQL records every base with its device), or compared by
        // value (SQLite records a download's base late when the office holds the
        // write lock): never an overwrite of the office's change.
        let run = dev.run(&["send"], "");
        if run.code == 0 {
            assert_eq!(order(&office, "wo-a", "title"), "office fix");
            assert_eq!(conflicts(&office).len(), 1);
            return;
        }
        assert_refused(&run, 4, "never handed to this device");
    }
    // Its own base goes through, as a conflict with the office's change.
    sqlite3(
        &dev,
        &format!(
            "UPDATE fieldsync_journal SET base_version = {theirs}; DELETE FROM fieldsync_upload"
        ),
    )
    .ok();
    dev.run(&["send"], "").ok();
    assert_eq!(order(&office, "wo-a", "title"), "office fix");
    assert_eq!(conflicts(&office).len(), 1);
}

/// Point 2c: an entry's user must have logged in on this device, even one assigned to
/// the task.
fn an_entry_of_a_user_who_never_logged_in_here_is_refused() {
    let office = Office::new(5);
    office_order(&office, "wo-a", 7, "open");
    let task = apply_task(&office, EDIT, &["ben"]);
    let dev = crew_device(&office, "tab1", &task);
    sqlite3(
        &dev,
        "UPDATE work_orders SET title = 'device' WHERE id = 'wo-a'",
    )
    .ok();
    sqlite3(&dev, "UPDATE fieldsync_journal SET user = 'ben'").ok();
    let run = dev.run(&["send"], "");
    assert_refused(&run, 4, "user `ben` never logged in on device `tab1`");
    assert_eq!(order(&office, "wo-a", "title"), "office title");
    // Once ben has logged in here, his entry goes through.
    dev.login("ben").ok();
    dev.run(&["send"], "").ok();
    assert_eq!(order(&office, "wo-a", "title"), "device");
}

fn stored_upload(dev: &DeviceDir) -> Vec<Vec<String>> {
    rows(&dev.replica(), "SELECT upload_id FROM fieldsync_upload")
}

/// Point 3: an upload whose acknowledgement was lost, then a refused send (task
/// unassigned a moment, the session ended by a new password): the server answers the
/// known upload id with its recorded outcome before any other check, the device never
/// drops an upload whose fate it does not know, and a later office correction stands.
fn a_lost_acknowledgement_then_a_refusal_never_applies_the_upload_twice() {
    let office = Office::new(5);
    office_order(&office, "wo-a", 7, "open");
    office_order(&office, "wo-b", 7, "open");
    let task = apply_task(&office, EDIT, &[]);
    let dev = crew_device(&office, "tab1", &task);
    let upstream = office.server.addr();
    let proxy = FaultProxy::start(upstream, Fault::PASS);
    dev.use_server(&proxy.url());
    let one_try = [("FIELDSYNC_RETRIES", "1")];

    // The acknowledgement is cut: applied, not known to the device.
    sqlite3(
        &dev,
        "UPDATE work_orders SET title = 'device' WHERE id = 'wo-a'",
    )
    .ok();
    proxy.set_fault(Fault::down(Action::Cut(0)));
    let run = dev.run_env(&["send"], &one_try);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(order(&office, "wo-a", "title"), "device");
    let stored = stored_upload(&dev);
    assert_eq!(stored.len(), 1);
    office.execute_batch("UPDATE work_orders SET title = 'office fix' WHERE id = 'wo-a'");
    proxy.set_fault(Fault::PASS);
    // Unassigned a moment: the server still answers the known upload.
    office
        .admin(&["task", "unassign", &task, "--user", "ana", "--force"], "")
        .ok();
    let run = dev.run_env(&["send"], &one_try);
    assert_eq!(run.code, 0, "{run:?}");
    office
        .admin(&["task", "assign", &task, "--user", "ana"], "")
        .ok();
    assert!(stored_upload(&dev).is_empty());
    dev.run(&["send"], "").ok();
    assert_eq!(order(&office, "wo-a", "title"), "office fix");

    // The request is cut before the server saw it, then the session ends: refused,
    // and the device keeps the same upload until the server has said.
    sqlite3(
        &dev,
        "UPDATE work_orders SET title = 'device' WHERE id = 'wo-b'",
    )
    .ok();
    proxy.set_fault(Fault::up(Action::Cut(0)));
    assert_ne!(dev.run_env(&["send"], &one_try).code, 0);
    let stored = stored_upload(&dev);
    proxy.set_fault(Fault::PASS);
    office
        .admin(&["user", "passwd", "ana", "--password-stdin"], "ana-pw\n")
        .ok();
    let run = dev.run_env(&["send"], &one_try);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(stored_upload(&dev), stored, "the same upload, kept");
    dev.login("ana").ok();
    dev.run(&["send"], "").ok();
    assert_eq!(order(&office, "wo-b", "title"), "device");
    assert!(stored_upload(&dev).is_empty());
}

const JOBS: &str = r#"
name = "crew-jobs"
[[tables]]
name = "work_orders"
filter = "status IN ('open', 'in-progress')"
write = ["insert", "update"]
"#;

/// Point 8: a crew creates a job and closes it before syncing (insert, then an update
/// that moves the row out of the slice); after a send that moved a row out, further
/// edits of it are refused at write time, and a forged one is a conflict, not a
/// refusal of the whole upload.
fn a_job_created_and_closed_before_a_send_goes_through() {
    let office = Office::new(5);
    office_order(&office, "wo-a", 7, "open");
    let task = apply_task(&office, JOBS, &[]);
    let dev = crew_device(&office, "tab1", &task);
    let cols = "work_orders (id, asset_id, title, priority, status)";
    sqlite3(
        &dev,
        &format!("INSERT INTO {cols} VALUES ('wo-job', 1, 'fix the pump', 3, 'open')"),
    )
    .ok();
    sqlite3(
        &dev,
        "UPDATE work_orders SET status = 'done' WHERE id = 'wo-job'",
    )
    .ok();
    sqlite3(
        &dev,
        "UPDATE work_orders SET status = 'done' WHERE id = 'wo-a'",
    )
    .ok();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(order(&office, "wo-job", "status"), "done");
    assert_eq!(order(&office, "wo-a", "status"), "done");
    assert!(conflicts(&office).is_empty(), "{:?}", conflicts(&office));

    // wo-a left the slice with that send: edits of it are refused until the next
    // download removes it.
    let run = sqlite3(
        &dev,
        "UPDATE work_orders SET title = 'later' WHERE id = 'wo-a'",
    );
    assert!(run.stderr.contains("left the task's slice"), "{run:?}");
    // A forged edit of it, on the base the send handed out: logged, not applied, and
    // the rest of the upload goes through.
    let base: String = dev
        .replica()
        .query_row(
            "SELECT version FROM fieldsync_base WHERE pk = 'wo-a'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        .to_string();
    forge(
        &dev,
        "update",
        "wo-a",
        r#"{"title":"office title"}"#,
        r#"{"title":"later"}"#,
        &base,
        "ana",
    );
    sqlite3(
        &dev,
        &format!("INSERT INTO {cols} VALUES ('wo-next', 1, 'next job', 3, 'open')"),
    )
    .ok();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(order(&office, "wo-a", "title"), "office title");
    assert_eq!(order(&office, "wo-next", "title"), "next job");
    let logged = conflicts(&office);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["kind"], "left-slice");
}

/// Point 9: after a conflict the device won (or office changes merged into its
/// write), the acknowledgement is its base and the replica holds the row as written:
/// its next edit is not a conflict with itself.
fn after_a_merge_the_devices_next_edit_is_not_a_conflict_with_itself() {
    let office = Office::new(5);
    office_order(&office, "wo-a", 7, "open");
    office_order(&office, "wo-b", 7, "open");
    let task = apply_task(&office, EDIT, &[]);
    let merged = crew_device(&office, "tab1", &task);
    let device_wins = apply_task(
        &office,
        "name = \"crew-insist\"\n[[tables]]\nname = \"work_orders\"\nwrite = [\"update\"]\nconflict = \"device-wins\"\n",
        &[],
    );
    let insisting = crew_device(&office, "tab2", &device_wins);
    office.execute_batch(
        "UPDATE work_orders SET title = 'office title 2' WHERE id = 'wo-a';
         UPDATE work_orders SET title = 'office title 2' WHERE id = 'wo-b'",
    );
    // field-merge: different columns, both applied; the replica takes the office's.
    sqlite3(
        &merged,
        "UPDATE work_orders SET priority = 9 WHERE id = 'wo-a'",
    )
    .ok();
    merged.run(&["send"], "").ok();
    assert_eq!(
        rows(
            &merged.replica(),
            "SELECT title, priority FROM work_orders WHERE id = 'wo-a'"
        ),
        vec![vec!["toffice title 2".to_string(), "i9".to_string()]]
    );
    // device-wins: the same column, the device's value applied (one conflict logged).
    sqlite3(
        &insisting,
        "UPDATE work_orders SET title = 'tablet' WHERE id = 'wo-b'",
    )
    .ok();
    insisting.run(&["send"], "").ok();
    let before = conflicts(&office).len();
    assert_eq!(before, 1);
    // Nobody else wrote either row since: no conflict, and the delete is applied.
    sqlite3(&merged, "DELETE FROM work_orders WHERE id = 'wo-a'").ok();
    merged.run(&["send"], "").ok();
    assert_eq!(n_orders(&office, "wo-a"), "0");
    sqlite3(
        &insisting,
        "UPDATE work_orders SET title = 'tablet 2' WHERE id = 'wo-b'",
    )
    .ok();
    insisting.run(&["send"], "").ok();
    assert_eq!(order(&office, "wo-b", "title"), "tablet 2");
    assert_eq!(conflicts(&office).len(), before, "{:?}", conflicts(&office));
}

/// Point 10: a new password ends the user's sessions, as disabling does.
fn a_new_password_ends_the_users_sessions() {
    let office = Office::new(5);
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["tasks"], "").ok();
    office
        .admin(&["user", "passwd", "ana", "--password-stdin"], "new-pw\n")
        .ok();
    let run = dev.run(&["tasks"], "");
    assert_refused(&run, 4, "log in again");
}

macro_rules! on_both_engines {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $test() {
                    super::$test();
                }
            )*
        }
        $crate::also_on_postgres!($($test),*);
    };
}

on_both_engines!(
    a_forged_insert_onto_an_existing_key_is_logged_not_applied,
    replace_and_upsert_are_the_writes_the_task_allows,
    a_forged_text_number_outside_the_slice_is_refused,
    a_made_up_base_version_is_refused,
    an_entry_of_a_user_who_never_logged_in_here_is_refused,
    a_lost_acknowledgement_then_a_refusal_never_applies_the_upload_twice,
    a_job_created_and_closed_before_a_send_goes_through,
    after_a_merge_the_devices_next_edit_is_not_a_conflict_with_itself,
    a_new_password_ends_the_users_sessions,
);
