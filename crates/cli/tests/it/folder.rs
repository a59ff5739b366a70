//! The device folder in the shapes ordinary tools leave it in (DESIGN.md promise 10;
//! issue "[promises]" point 4): copied with `cp -rL`, `cp -r`, `rsync -rL`, through a
//! kill -9, and an app renaming a copy into place. Pending edits must be counted, sent
//! exactly once, refuse a download (exit 6) or go to a backup file, and no file holding
//! journal entries is ever deleted. Also (point 10) the read-only commands on a
//! read-only folder and on a full disk.
//!
//! On the original code (the replica found only through `read_link`) every test here
//! fails: a plain `replica.sqlite` showed no replica and 0 pending, `send` sent nothing,
//! a download replaced it without exit 6 or backup, and recovery deleted the copied
//! generation file holding the journal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::harness::*;

/// A device of ana's with a downloaded north replica.
fn north_device(office: &Office, id: &str) -> DeviceDir {
    let dev = office.device(id, &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev
}

#[track_caller]
fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "`{cmd}` failed: {out:?}");
}

/// An edit by the `sqlite3` shell, as any SQLite client would make it.
#[track_caller]
fn sqlite3(db: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(format!("PRAGMA busy_timeout = 10000; {sql}"))
        .output()
        .expect("the sqlite3 shell is installed");
    assert!(out.status.success(), "sqlite3 {sql}: {out:?}");
}

fn asset_ids(dev: &DeviceDir, n: i64) -> Vec<i64> {
    dev.replica()
        .prepare("SELECT id FROM assets ORDER BY id LIMIT ?1")
        .unwrap()
        .query_map([n], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn rename(dev: &DeviceDir, id: i64, name: &str) {
    sqlite3(
        &dev.replica_path(),
        &format!("UPDATE assets SET name = '{name}' WHERE id = {id};"),
    );
}

fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// The journal of every SQLite file in the folder (copies included), each as its rows,
/// sorted.
fn journals(dir: &Path) -> Vec<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".sqlite") || is_link(&path) {
            continue;
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let Ok(mut stmt) = conn
            .prepare("SELECT seq, tbl, pk, op, new, user, at FROM fieldsync_journal ORDER BY seq")
        else {
            continue;
        };
        let width = stmt.column_count();
        let rows: Vec<Vec<String>> = stmt
            .query_map([], |r| {
                (0..width)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect()
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        if !rows.is_empty() {
            out.push(rows);
        }
    }
    out.sort();
    out
}

/// Every journal entry as `table:key:new` still somewhere: in a journal of the folder
/// or in a backup file.
fn entries_anywhere(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".sqlite") && !is_link(&path) {
            let conn =
                Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
            let Ok(mut stmt) = conn.prepare(
                "SELECT tbl || ':' || pk || ':' || coalesce(new, '') FROM fieldsync_journal",
            ) else {
                continue;
            };
            out.extend(
                stmt.query_map([], |r| r.get::<_, String>(0))
                    .unwrap()
                    .map(|r| r.unwrap()),
            );
        } else if name.ends_with(".jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let e: serde_json::Value = serde_json::from_str(line).unwrap();
                out.push(format!(
                    "{}:{}:{}",
                    e["table"].as_str().unwrap(),
                    e["key"],
                    e["new"]
                ));
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Copy {
    /// `cp -rL`: the link becomes a plain file, the generation is copied beside it.
    CpL,
    /// `cp -r`: the link is kept.
    CpR,
    /// `rsync -rL` (the link becomes a plain file).
    RsyncL,
}

/// A copy of the device folder, made the way `how` says; the copy is the device now.
fn copy_folder(dev: &DeviceDir, how: Copy) -> DeviceDir {
    let to = TempDir::new("copy");
    let (from, dest) = (dev.path().display(), to.0.display());
    match how {
        Copy::CpL => sh(&format!("cp -rL '{from}/.' '{dest}/'")),
        Copy::CpR => sh(&format!("cp -r '{from}/.' '{dest}/'")),
        Copy::RsyncL => sh(&format!("rsync -rL '{from}/' '{dest}/'")),
    }
    let copy = DeviceDir { dir: to };
    assert_eq!(
        is_link(&copy.replica_path()),
        how == Copy::CpR,
        "{how:?} left replica.sqlite in the expected shape"
    );
    copy
}

fn pending(dev: &DeviceDir) -> u64 {
    dev.status()["pending"].as_u64().unwrap()
}

/// The whole life of unsent edits in a copied folder: counted, listed, kept by
/// recovery, refusing a download, sent exactly once, then a discarding download backs
/// the new one up.
fn unsent_edits_survive(office: &Office, dev: &DeviceDir, ids: &[i64], expect_before: u64) {
    rename(dev, ids[2], "after the copy");
    let n = expect_before + 1;
    let status = dev.status();
    assert_eq!(status["pending"], n, "{status}");
    assert!(status["replica"].is_string(), "{status}");
    let listed: serde_json::Value =
        serde_json::from_str(&dev.run(&["journal", "--json"], "").ok().stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len() as u64, n);

    // Recovery (every locked command runs it) keeps every journal entry: a copy's
    // file goes only when each of its entries is in the current replica's journal.
    let before = journals(dev.path());
    dev.run(&["mode", "online"], "").ok();
    let after: Vec<Vec<String>> = journals(dev.path()).into_iter().flatten().collect();
    for entry in before.iter().flatten() {
        assert!(
            after.contains(entry),
            "recovery lost {entry:?}: {before:?} -> {after:?}"
        );
    }
    assert_eq!(pending(dev), n);

    let refused = dev.run(&["download", "north-inspections"], "");
    assert_eq!(refused.code, 6, "{refused:?}");
    assert_eq!(pending(dev), n);

    let sent = dev.run(&["send"], "").ok();
    assert!(
        sent.stdout.starts_with(&format!("sent {n} change(s)")),
        "{sent:?}"
    );
    assert_eq!(main_name(office, ids[0]), "before the copy 1");
    assert_eq!(main_name(office, ids[1]), "before the copy 2");
    assert_eq!(main_name(office, ids[2]), "after the copy");
    let uploads = office.uploads_recorded();
    let again = dev.run(&["send"], "").ok();
    assert!(again.stdout.starts_with("sent 0 change(s)"), "{again:?}");
    assert_eq!(office.uploads_recorded(), uploads);
    assert_eq!(pending(dev), 0);

    rename(dev, ids[0], "to be discarded");
    assert_eq!(dev.run(&["download", "north-inspections"], "").code, 6);
    let discarded = dev
        .run(
            &["download", "north-inspections", "--discard-local-changes"],
            "",
        )
        .ok();
    let backup = discarded
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("local changes backed up to "))
        .unwrap_or_else(|| panic!("no backup: {discarded:?}"));
    assert!(
        std::fs::read_to_string(backup)
            .unwrap()
            .contains("to be discarded")
    );
    assert_eq!(pending(dev), 0);
    assert!(
        is_link(&dev.replica_path()),
        "the install made the link again"
    );
    assert_eq!(office.uploads_recorded(), uploads);
}

fn main_name(office: &Office, id: i64) -> String {
    office.value(&format!("SELECT name FROM assets WHERE id = {id}"))
}

fn copied_folder_keeps_unsent_edits(how: Copy) {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let ids = asset_ids(&dev, 3);
    rename(&dev, ids[0], "before the copy 1");
    rename(&dev, ids[1], "before the copy 2");
    let copy = copy_folder(&dev, how);
    drop(dev);
    unsent_edits_survive(&office, &copy, &ids, 2);
}

/// `cp -rL`: a plain `replica.sqlite` and the generation file beside it, the same
/// journal twice; it is counted and sent once, the duplicate kept, never sent.
#[test]
fn a_folder_copied_with_cp_rl_keeps_and_sends_its_unsent_edits_once() {
    copied_folder_keeps_unsent_edits(Copy::CpL);
}

/// `rsync -rL` (the same shape as `cp -rL` by another tool).
#[test]
fn a_folder_copied_with_rsync_rl_keeps_and_sends_its_unsent_edits_once() {
    copied_folder_keeps_unsent_edits(Copy::RsyncL);
}

/// `cp -r` keeps the link; then the copy is copied again with `cp -rL` (a card's way
/// back): both shapes in one life. (The `cp -r` half alone already worked on the
/// original code; the `-L` half fails there.)
#[test]
fn a_folder_copied_with_cp_r_then_cp_rl_keeps_its_unsent_edits() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let ids = asset_ids(&dev, 3);
    rename(&dev, ids[0], "before the copy 1");
    let kept_link = copy_folder(&dev, Copy::CpR);
    drop(dev);
    assert_eq!(pending(&kept_link), 1);
    rename(&kept_link, ids[1], "before the copy 2");
    let plain = copy_folder(&kept_link, Copy::CpL);
    drop(kept_link);
    unsent_edits_survive(&office, &plain, &ids, 2);
}

/// An app copies the replica to a temporary file, edits the copy, and renames it over
/// `replica.sqlite` (a common "safe save"): the plain file is the replica, its edits
/// and the ones before the copy are sent once; the original generation, holding the
/// journal up to the copy, is removed only once every entry of it is known to be in
/// the plain file's journal.
#[test]
fn an_app_renaming_a_copy_into_place_loses_no_edit() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let ids = asset_ids(&dev, 3);
    rename(&dev, ids[0], "before the copy 1");
    let tmp = dev.path().join("app-save.tmp");
    std::fs::copy(dev.replica_path(), &tmp).unwrap();
    sqlite3(
        &tmp,
        &format!(
            "UPDATE assets SET name = 'before the copy 2' WHERE id = {};",
            ids[1]
        ),
    );
    std::fs::rename(&tmp, dev.replica_path()).unwrap();
    assert!(!is_link(&dev.replica_path()));
    unsent_edits_survive(&office, &dev, &ids, 2);
}

/// `cp -rL` while an app holds the replica open with edits still in the `-wal`: the
/// plain copy lacks them, the generation copied with its `-wal` has them, and an edit
/// made on the plain copy afterwards makes the two differ: the generation's entries
/// the plain file lacks are kept (`unsent-…`) and sent, so all three edits are counted
/// and sent, each once.
#[test]
fn a_folder_copied_with_its_wal_beside_the_generation_keeps_the_wal_edits() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let ids = asset_ids(&dev, 3);
    let app = dev.replica();
    app.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
    for (i, id) in ids.iter().take(2).enumerate() {
        app.execute(
            "UPDATE assets SET name = ?1 WHERE id = ?2",
            rusqlite::params![format!("before the copy {}", i + 1), id],
        )
        .unwrap();
    }
    let copy = copy_folder(&dev, Copy::CpL);
    drop(app);
    drop(dev);
    unsent_edits_survive(&office, &copy, &ids, 2);
}

/// kill -9 of a discarding download at several points, in a `cp -rL` copy: every
/// entry is afterwards in a journal of the folder or in a backup file.
#[test]
fn kill_9_of_a_discarding_download_in_a_copied_folder_deletes_no_journal() {
    let office = Office::new(400);
    let dev = north_device(&office, "tab1");
    let ids = asset_ids(&dev, 8);
    let copy = copy_folder(&dev, Copy::CpL);
    drop(dev);
    for (round, delay_ms) in [0u64, 5, 15, 30, 60, 120, 250].into_iter().enumerate() {
        rename(&copy, ids[round], &format!("round {round}"));
        let expected = format!("assets:{}:", ids[round]);
        let mut child = Command::new(BIN)
            .args([
                "device",
                "download",
                "north-inspections",
                "--discard-local-changes",
            ])
            .arg("--dir")
            .arg(copy.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Recovery, then the edit must be somewhere.
        copy.run(&["mode", "online"], "").ok();
        let found = entries_anywhere(copy.path());
        assert!(
            found
                .iter()
                .any(|e| e.starts_with(&expected) && e.contains(&format!("round {round}"))),
            "round {round} (kill after {delay_ms} ms): the edit is gone: {found:?}"
        );
        let status = copy.status();
        assert!(status["replica"].is_string(), "{status}");
        // The next round starts from a replica without pending edits.
        if status["pending"].as_u64().unwrap() > 0 {
            copy.run(&["send"], "").ok();
        }
    }
}

/// A mount made for one test, undone when dropped.
struct Mount(PathBuf);

impl Mount {
    /// Runs `mount ARGS`; a failure fails the test (the tests run as root).
    #[track_caller]
    fn new(args: &[&str], target: &Path) -> Mount {
        std::fs::create_dir_all(target).unwrap();
        let out = Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {args:?} {} failed (these tests need root to mount): {out:?}",
            target.display()
        );
        Mount(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn read_only_commands_answer(dev: &DeviceDir, pending: u64) {
    let status = dev.run(&["status", "--json"], "");
    assert_eq!(status.code, 0, "{status:?}");
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["pending"], pending, "{status}");
    assert!(status["replica"].is_string(), "{status}");
    let journal = dev.run(&["journal", "--json"], "");
    assert_eq!(journal.code, 0, "{journal:?}");
    let journal: serde_json::Value = serde_json::from_str(&journal.stdout).unwrap();
    assert_eq!(journal.as_array().unwrap().len() as u64, pending);
    let text = dev.run(&["journal"], "");
    assert_eq!(text.code, 0, "{text:?}");
    let mode = dev.run(&["mode"], "");
    assert_eq!((mode.code, mode.stdout.trim()), (0, "online"), "{mode:?}");
}

/// A device folder behind a read-only bind mount: `status`, `journal` and `mode`
/// answer (the replica's `-shm` cannot be made there), with the right count.
#[test]
fn read_only_commands_answer_on_a_read_only_folder() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let ids = asset_ids(&dev, 2);
    rename(&dev, ids[0], "pending 1");
    rename(&dev, ids[1], "pending 2");
    let view = TempDir::new("ro-view");
    let _bind = Mount::new(&["--bind", dev.path().to_str().unwrap()], &view.0);
    let _ro = Mount::new(&["-o", "remount,ro,bind"], &view.0);
    assert!(
        std::fs::write(view.0.join("probe"), b"x").is_err(),
        "the view is read-only"
    );
    let ro = DeviceDir {
        dir: TempDir(view.0.clone()),
    };
    read_only_commands_answer(&ro, 2);
    std::mem::forget(ro);
}

/// A device folder on a full disk (a small tmpfs filled up): the read-only commands
/// still answer.
#[test]
fn read_only_commands_answer_on_a_full_disk() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let ids = asset_ids(&dev, 1);
    rename(&dev, ids[0], "pending 1");
    let disk = TempDir::new("full-disk");
    let _tmpfs = Mount::new(&["-t", "tmpfs", "-o", "size=4m", "tmpfs"], &disk.0);
    let folder = disk.0.join("device");
    sh(&format!(
        "cp -a '{}' '{}'",
        dev.path().display(),
        folder.display()
    ));
    // Fill the disk to the last byte.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4096"])
        .arg(format!("of={}", disk.0.join("fill").display()))
        .output()
        .unwrap();
    assert!(
        std::fs::write(disk.0.join("probe"), vec![0u8; 8192]).is_err(),
        "the disk is full"
    );
    let full = DeviceDir {
        dir: TempDir(folder),
    };
    read_only_commands_answer(&full, 1);
    std::mem::forget(full);
}
