//! Refusals with DESIGN.md's exit codes; each leaves the replica as it was.

use crate::harness::*;

/// A device of ana's with a downloaded north replica.
fn downloaded(office: &Office, id: &str) -> DeviceDir {
    let dev = office.device(id, &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev
}

#[track_caller]
/// Exit `code` and one `error:` line naming `fragment`; before it, at most the
/// `retry` lines of transient failures (no phase completed, no panic).
fn assert_refused(run: &Run, code: i32, fragment: &str) {
    assert_eq!(run.code, code, "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    let (last, before) = lines.split_last().expect("an error line");
    assert!(last.starts_with("error: "), "{run:?}");
    assert!(last.contains(fragment), "expected {fragment:?} in {run:?}");
    assert!(
        before.iter().all(|l| l.starts_with("retry    attempt ")),
        "one error line after retries only: {run:?}"
    );
}

#[test]
fn offline_mode_exits_3_and_keeps_the_replica() {
    let office = Office::new(100);
    let dev = downloaded(&office, "tab1");
    let before = replica_content(&dev);
    dev.run(&["mode", "offline"], "").ok();
    assert_eq!(dev.run(&["mode"], "").ok().stdout.trim(), "offline");
    // The office changes a row; an offline device must not fetch it.
    office.execute_batch("UPDATE assets SET name = 'changed' WHERE region = 'north'");
    assert_refused(
        &dev.run(&["download", "north-inspections"], ""),
        3,
        "offline mode",
    );
    assert_refused(&dev.run(&["tasks"], ""), 3, "offline mode");
    assert_eq!(replica_content(&dev), before);
    assert_eq!(dev.status()["mode"], "offline");
    dev.run(&["mode", "online"], "").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    assert_ne!(replica_content(&dev), before);
}

#[test]
fn wrong_password_exits_4() {
    let office = Office::new(50);
    let dev = downloaded(&office, "tab1");
    let before = replica_content(&dev);
    dev.run(&["logout"], "").ok();
    let run = dev.run(&["login", "ana", "--password-stdin"], "not-her-password\n");
    assert_refused(&run, 4, "wrong user name or password");
    let run = dev.run(&["login", "nobody", "--password-stdin"], "x\n");
    assert_refused(&run, 4, "wrong user name or password");
    assert!(dev.status()["user"].is_null());
    assert_eq!(replica_content(&dev), before);
}

#[test]
fn an_unassigned_user_exits_4() {
    let office = Office::new(50);
    let dev = downloaded(&office, "tab1");
    let before = replica_content(&dev);
    dev.run(&["logout"], "").ok();
    dev.login("ben").ok();
    let run = dev.run(&["download", "north-inspections"], "");
    assert_refused(&run, 4, "not assigned");
    // ana's `$user` slice is set aside while ben is logged in, untouched.
    assert_eq!(replica_content(&dev), vec![] as Vec<Vec<String>>);
    let tasks: serde_json::Value =
        serde_json::from_str(&dev.run(&["tasks", "--json"], "").ok().stdout).unwrap();
    assert_eq!(
        tasks,
        serde_json::json!([]),
        "ben is assigned south, tab1 is not"
    );
    dev.run(&["logout"], "").ok();
    dev.login("ana").ok();
    assert_eq!(replica_content(&dev), before);
}

#[test]
fn an_unassigned_device_exits_4() {
    let office = Office::new(50);
    let assigned = downloaded(&office, "tab1");
    let dev = office.device("tab2", &[]);
    dev.login("ana").ok();
    let run = dev.run(&["download", "north-inspections"], "");
    assert_refused(&run, 4, "not assigned");
    assert!(!dev.replica_path().exists());
    // Assigning the device makes the same download work.
    office
        .admin(
            &["task", "assign", "north-inspections", "--device", "tab2"],
            "",
        )
        .ok();
    dev.run(&["download", "north-inspections"], "").ok();
    assert_eq!(replica_content(&dev), replica_content(&assigned));
}

#[test]
fn a_logged_out_device_exits_4_and_its_old_token_is_dead() {
    let office = Office::new(50);
    let dev = downloaded(&office, "tab1");
    let before = replica_content(&dev);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let old_state = state.clone();
    dev.run(&["logout"], "").ok();
    assert_refused(
        &dev.run(&["download", "north-inspections"], ""),
        4,
        "nobody is logged in",
    );
    assert_eq!(replica_content(&dev), before);
    // Restore the old session locally: the server revoked it at logout.
    std::fs::write(
        dev.path().join("state.json"),
        serde_json::to_vec(&old_state).unwrap(),
    )
    .unwrap();
    assert_refused(
        &dev.run(&["download", "north-inspections"], ""),
        4,
        "log in again",
    );
    assert_eq!(replica_content(&dev), before);
}

#[test]
fn a_bad_or_used_enrollment_code_exits_4() {
    let office = Office::new(10);
    let code = office
        .admin(&["device", "add", "tab9"], "")
        .ok()
        .stdout
        .trim()
        .to_string();
    let dev = DeviceDir {
        dir: TempDir::new("tab9"),
    };
    let url = office.server.url.clone();
    let run = dev.run(
        &[
            "pair",
            "--server",
            &url,
            "--device-id",
            "tab9",
            "--code",
            "0000000000",
        ],
        "",
    );
    assert_refused(&run, 4, "enrollment code is wrong");
    assert!(dev.status()["device_id"].is_null());
    dev.run(
        &[
            "pair",
            "--server",
            &url,
            "--device-id",
            "tab9",
            "--code",
            &code,
        ],
        "",
    )
    .ok();
    let other = DeviceDir {
        dir: TempDir::new("tab9b"),
    };
    let run = other.run(
        &[
            "pair",
            "--server",
            &url,
            "--device-id",
            "tab9",
            "--code",
            &code,
        ],
        "",
    );
    assert_refused(&run, 4, "already used");
}

#[test]
fn an_unreachable_server_exits_1_and_keeps_the_replica() {
    let mut office = Office::new(30);
    let dev = downloaded(&office, "tab1");
    let before = replica_content(&dev);
    office.server.child.kill().unwrap();
    office.server.child.wait().unwrap();
    let run = dev.run(&["download", "north-inspections"], "");
    assert_refused(&run, 1, "cannot reach the server");
    assert_eq!(replica_content(&dev), before);
    assert_eq!(dev.status()["last_sync"]["result"], "error");
}

/// A task the asking user and device may not see reads the same whether it exists
/// (another crew's) or not: names cannot be probed.
#[test]
fn a_task_not_yours_reads_alike_whether_it_exists_or_not() {
    let office = Office::new(20);
    let dev = downloaded(&office, "tab1");
    let answer = |task: &str| {
        let run = dev.run(&["download", task], "");
        assert_refused(&run, 4, "not assigned");
        run.stderr.replace(task, "TASK")
    };
    assert_eq!(answer("south-work-orders"), answer("no-such-task"));
}

crate::also_on_postgres!(
    a_task_not_yours_reads_alike_whether_it_exists_or_not,
    offline_mode_exits_3_and_keeps_the_replica,
    wrong_password_exits_4,
    an_unassigned_user_exits_4,
    an_unassigned_device_exits_4,
    a_logged_out_device_exits_4_and_its_old_token_is_dead,
    a_bad_or_used_enrollment_code_exits_4,
    an_unreachable_server_exits_1_and_keeps_the_replica,
);
