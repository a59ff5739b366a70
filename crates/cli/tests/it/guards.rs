//! The administrator's guard rails (issue [admin-day] point 4): deleting or unassigning
//! a task, disabling a user and dropping a table or column from a task are refused
//! while devices concerned reported unsent changes, unless `--force`; the device is
//! then told plainly what happened; a disabled user hears so, not "expired".

use crate::harness::*;

const TASK: &str = "north-inspections";

/// A device of ana's with the north task and two unsent changes it has reported (a
/// request after the edits: the task list).
fn device_with_unsent(office: &Office) -> DeviceDir {
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    dev.replica()
        .execute_batch(
            "UPDATE assets SET name = 'one' WHERE id = (SELECT min(id) FROM assets);
             UPDATE assets SET name = 'two' WHERE id = (SELECT max(id) FROM assets);",
        )
        .unwrap();
    dev.run(&["tasks"], "").ok();
    dev
}

#[track_caller]
fn assert_guarded(run: &Run, change: &str) {
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "error: {change} would leave unsent changes behind: device `tab1` (2 unsent change(s)"
        )) && run.stderr.contains("--force"),
        "{run:?}"
    );
}

fn task_columns(office: &Office) -> serde_json::Value {
    let out = office
        .admin(&["task", "show", TASK, "--json"], "")
        .ok()
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["definition"]["tables"][0]["columns"].clone()
}

#[test]
fn changes_that_strand_unsent_edits_are_refused_unless_forced() {
    let office = Office::new(40);
    let dev = device_with_unsent(&office);
    assert_guarded(
        &office.admin(&["task", "delete", TASK], ""),
        &format!("deleting task `{TASK}`"),
    );
    assert_guarded(
        &office.admin(&["task", "unassign", TASK, "--device", "tab1"], ""),
        &format!("unassigning task `{TASK}`"),
    );
    assert_guarded(
        &office.admin(&["user", "disable", "ana"], ""),
        "disabling user `ana`",
    );
    // A new version dropping a column of a table the device edits.
    let columns = task_columns(&office);
    let narrower = office.dir.0.join("narrower.toml");
    std::fs::write(
        &narrower,
        fieldsync_store::sample::TASK_NORTH.replace("\"id\", \"name\", ", "\"id\", "),
    )
    .unwrap();
    assert_guarded(
        &office.admin(&["task", "apply", narrower.to_str().unwrap()], ""),
        &format!("dropping column `assets.name` from task `{TASK}`"),
    );
    // Refused means unchanged: the task, its assignment, the user.
    assert_eq!(task_columns(&office), columns);
    dev.run(&["tasks"], "").ok();
    // Unassigning another user, or a version that drops nothing, concerns no one.
    office
        .admin(&["user", "add", "cy", "--password-stdin"], "cy-pw\n")
        .ok();
    office
        .admin(&["task", "assign", TASK, "--user", "cy"], "")
        .ok();
    office
        .admin(&["task", "unassign", TASK, "--user", "cy"], "")
        .ok();
    let same = office.dir.0.join("same.toml");
    std::fs::write(&same, fieldsync_store::sample::TASK_NORTH).unwrap();
    office
        .admin(&["task", "apply", same.to_str().unwrap()], "")
        .ok();
    // Forced: the task goes. The crew's synchronize sends the changes, which the
    // server keeps aside (not applied: the task is gone), and is told plainly.
    office.admin(&["task", "delete", TASK, "--force"], "").ok();
    let refused = dev.run(&["sync"], "");
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "the task `{TASK}` this device holds is no longer assigned to this user and device (the office deleted or unassigned it"
        )) && refused.stderr.contains("listed by `device conflicts`"),
        "{refused:?}"
    );
    assert!(
        refused
            .stdout
            .contains("sent 2 change(s), 2 conflict(s); download failed: "),
        "{refused:?}"
    );
    let kept: serde_json::Value =
        serde_json::from_str(&dev.run(&["conflicts", "--json"], "").ok().stdout).unwrap();
    let kept = kept.as_array().unwrap();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter()
            .all(|c| c["kind"] == "task-changed" && c["resolution"] == "not-applied"),
        "{kept:?}"
    );
    assert_eq!(
        conflicts(&office).len(),
        2,
        "in the office's conflict log too"
    );
}

#[test]
fn once_the_device_sent_its_changes_nothing_is_stranded() {
    let office = Office::new(40);
    let dev = device_with_unsent(&office);
    dev.run(&["send"], "").ok();
    // The send reported 2 before sending; the next request reports none left.
    dev.run(&["tasks"], "").ok();
    office.admin(&["user", "disable", "ana"], "").ok();
    // A disabled user hears so, not that a session expired.
    let run = dev.run(&["tasks"], "");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("user `ana` is disabled by the office"),
        "{run:?}"
    );
    // Enabled again, the old session is gone: log in afresh.
    office.admin(&["user", "enable", "ana"], "").ok();
    let run = dev.run(&["tasks"], "");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("not logged in"), "{run:?}");
    dev.login("ana").ok();
    dev.run(&["tasks"], "").ok();
    office.admin(&["task", "delete", TASK], "").ok();
    // With no task left, the task list says so instead of printing nothing.
    let none = dev.run(&["tasks"], "").ok();
    assert_eq!(
        none.stdout.trim(),
        "no task is assigned to both this user and this device; ask the office"
    );
    assert_eq!(dev.run(&["tasks", "--json"], "").ok().stdout.trim(), "[]");
}

/// A task without `$user`: one replica for every user of the device.
const SHARED: &str = r#"
name = "north-assets"
[[tables]]
name = "assets"
filter = "region = 'north'"
write = ["update"]
"#;

fn sqlite3(dev: &DeviceDir, sql: &str) -> Run {
    std::process::Command::new("sqlite3")
        .arg(dev.replica_path())
        .arg(sql)
        .output()
        .expect("the sqlite3 shell runs")
        .into()
}

fn journal_len(dev: &DeviceDir) -> usize {
    let out = dev.run(&["journal", "--json"], "").ok().stdout;
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

/// Point 5: the replica refuses at write time the edits of a logged-in user the task
/// was not assigned to when it was downloaded (here another user logged in on the
/// device); once the office assigns them and the device synchronizes, they may edit.
#[test]
fn a_user_the_task_is_not_assigned_to_cannot_edit_it() {
    let office = Office::new(40);
    let file = office.dir.0.join("shared.toml");
    std::fs::write(&file, SHARED).unwrap();
    office
        .admin(&["task", "apply", file.to_str().unwrap()], "")
        .ok();
    let dev = office.device("tab1", &[]);
    let assign = [
        "task",
        "assign",
        "north-assets",
        "--user",
        "ana",
        "--device",
        "tab1",
    ];
    office.admin(&assign, "").ok();
    dev.login("ana").ok();
    dev.run(&["download", "north-assets"], "").ok();
    let edit = "UPDATE assets SET name = 'by ' || name WHERE id = (SELECT min(id) FROM assets)";
    dev.run(&["logout"], "").ok();
    dev.login("ben").ok();
    let refused = sqlite3(&dev, edit);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("the logged-in user is not assigned to task north-assets"),
        "{refused:?}"
    );
    assert_eq!(journal_len(&dev), 0, "nothing journaled");
    office
        .admin(&["task", "assign", "north-assets", "--user", "ben"], "")
        .ok();
    dev.run(&["sync"], "").ok();
    let ok = sqlite3(&dev, edit);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(journal_len(&dev), 1);
}

/// Point 5: entries moved to a backup file come back with `journal restore`, checked
/// as any edit is (all or none), and are sent.
#[test]
fn a_backup_file_restored_is_checked_and_sent() {
    let office = Office::new(40);
    let dev = device_with_unsent(&office);
    let out = dev.run(&["journal", "discard", "--all"], "").ok().stdout;
    let path = out.trim().rsplit(" moved to ").next().unwrap().to_string();
    assert!(path.ends_with(".jsonl"), "{out}");
    assert_eq!(journal_len(&dev), 0);
    // A tampered copy (a column the table lacks) restores nothing.
    let text = std::fs::read_to_string(&path).unwrap();
    let tampered = office.dir.0.join("tampered.jsonl");
    std::fs::write(
        &tampered,
        text.replacen("\"new\":{\"name\"", "\"new\":{\"no_such_column\"", 1),
    )
    .unwrap();
    let refused = dev.run(&["journal", "restore", tampered.to_str().unwrap()], "");
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("no column `no_such_column`"),
        "{refused:?}"
    );
    assert_eq!(journal_len(&dev), 0, "all or none");
    // A delete the task does not allow is refused by the replica, as any edit is.
    let forbidden = office.dir.0.join("forbidden.jsonl");
    std::fs::write(
        &forbidden,
        text.replacen("\"op\":\"update\"", "\"op\":\"delete\"", 1),
    )
    .unwrap();
    let refused = dev.run(&["journal", "restore", forbidden.to_str().unwrap()], "");
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("does not allow delete"),
        "{refused:?}"
    );
    assert_eq!(journal_len(&dev), 0);
    let restored = dev.run(&["journal", "restore", &path], "").ok();
    assert!(
        restored
            .stdout
            .starts_with("2 journal entries restored from "),
        "{restored:?}"
    );
    assert_eq!(journal_len(&dev), 2);
    dev.run(&["send"], "").ok();
    assert_eq!(
        office.value("SELECT count(*) FROM assets WHERE name IN ('one', 'two')"),
        "2",
        "the restored edits reached the main database"
    );
}

crate::also_on_postgres!(
    changes_that_strand_unsent_edits_are_refused_unless_forced,
    once_the_device_sent_its_changes_nothing_is_stranded,
    a_user_the_task_is_not_assigned_to_cannot_edit_it,
    a_backup_file_restored_is_checked_and_sent,
);
