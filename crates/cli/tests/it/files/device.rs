//! The device's side of files: `device files` and `download --files` fetch what the
//! device lacks into `files/`, once; a cut transfer resumes where it stopped; files of
//! rows that left the slice go; memory stays flat whatever the file's size.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{attach, keys, office, sha256_of};
use crate::harness::*;
use crate::proxy::{Action, Fault, FaultProxy};

/// `FIELDSYNC_FILES_BYTES` (default 4 MiB): the large file's size.
pub(super) fn large_bytes() -> usize {
    std::env::var("FIELDSYNC_FILES_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4 << 20)
}

/// Content of `n` bytes that compresses badly and differs per `seed`.
pub(super) fn content(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn by_row(dev: &DeviceDir, table: &str, key: &str, name: &str) -> std::path::PathBuf {
    dev.path()
        .join("files/by-row")
        .join(table)
        .join(key)
        .join(name)
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
fn a_device_fetches_its_slices_files_once_and_drops_those_that_leave() {
    let office = office();
    let (north, south) = keys(&office);
    let north2 = office.value(&format!(
        "SELECT min(id) FROM assets WHERE region = 'north' AND status <> 'retired' AND id > {north}"
    ));
    let (a, b, c) = (content(300_000, 1), content(1000, 2), content(500, 3));
    attach(&office, "assets", &north, "drawing.pdf", &a).ok();
    attach(&office, "assets", &north2, "manual.pdf", &b).ok();
    attach(&office, "assets", &south, "south.pdf", &c).ok();
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    let out = dev
        .run(&["download", "north-inspections", "--files"], "")
        .ok();
    assert!(
        out.stdout
            .contains("files: 2 fetched, 301000 byte(s); 2 in the slice"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(by_row(&dev, "assets", &north, "drawing.pdf")).unwrap(),
        a
    );
    assert_eq!(
        std::fs::read(by_row(&dev, "assets", &north2, "manual.pdf")).unwrap(),
        b
    );
    let objects = dev.path().join("files/objects");
    assert_eq!(std::fs::read(objects.join(sha256_of(&a))).unwrap(), a);
    assert!(
        !objects.join(sha256_of(&c)).exists(),
        "another slice's file arrived"
    );
    assert!(!dev.path().join("files/by-row/assets").join(&south).exists());
    assert_eq!(count(&dev.path().join("files/partial")), 0);

    // A second time: nothing moves.
    let out = dev.run(&["files"], "").ok();
    assert!(
        out.stdout
            .contains("files: 0 fetched, 0 byte(s); 2 in the slice"),
        "{out:?}"
    );
    let last = &dev.status()["last_sync"];
    assert_eq!(last["op"], "files");
    assert_eq!(last["result"], "ok");
    assert_eq!(last["bytes_down"], 0);

    // A row leaves the slice: its file leaves the device.
    office.execute_batch(&format!(
        "UPDATE assets SET region = 'south' WHERE id = {north}"
    ));
    dev.run(&["sync"], "").ok();
    let out = dev.run(&["files"], "").ok();
    assert!(out.stdout.contains("1 in the slice"), "{out:?}");
    assert!(!by_row(&dev, "assets", &north, "drawing.pdf").exists());
    assert!(!dev.path().join("files/by-row/assets").join(&north).exists());
    assert!(!objects.join(sha256_of(&a)).exists());
    assert!(by_row(&dev, "assets", &north2, "manual.pdf").exists());
}

#[test]
fn a_large_file_cut_halfway_resumes_with_the_rest_only_in_bounded_memory() {
    let office = office();
    let (north, _) = keys(&office);
    let size = large_bytes();
    let big = content(size, 7);
    let sha = sha256_of(&big);
    attach(&office, "assets", &north, "survey.bin", &big).ok();
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();

    let upstream = office.server.addr();
    let proxy = FaultProxy::start(upstream, Fault::down(Action::Cut(size as u64 / 2)));
    dev.use_server(&proxy.url());
    let cut = dev.run_env(&["files"], &[("FIELDSYNC_RETRIES", "1")]);
    assert_eq!(cut.code, 1, "{cut:?}");
    let partial = dev.path().join(format!("files/partial/{sha}.part"));
    let have = std::fs::metadata(&partial).unwrap().len();
    assert!(
        have > size as u64 / 3 && have <= size as u64 / 2,
        "{have} of {size}"
    );
    assert!(!dev.path().join("files/objects").join(&sha).exists());
    assert!(
        !by_row(&dev, "assets", &north, "survey.bin").exists(),
        "a partial file shows"
    );

    proxy.set_fault(Fault::PASS);
    let before = proxy.stats().bytes_down;
    let (out, device_kb) = dev.run_measured(&["files"], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let moved = proxy.stats().bytes_down - before;
    let rest = size as u64 - have;
    assert!(
        out.stdout
            .contains(&format!("files: 1 fetched, {rest} byte(s)")),
        "{out:?}"
    );
    assert!(
        moved >= rest && moved < rest + 64 * 1024,
        "moved {moved}, the rest is {rest}"
    );
    assert_eq!(
        std::fs::read(by_row(&dev, "assets", &north, "survey.bin")).unwrap(),
        big
    );
    assert!(!partial.exists());
    // The server's history has each content fetch (op `files`): the last, the rest.
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&office.admin(&["history", "--json"], "").ok().stdout).unwrap();
    let fetches: Vec<&serde_json::Value> = history.iter().filter(|h| h["op"] == "files").collect();
    let last = fetches.last().expect("a file fetch in the history");
    assert_eq!(
        (
            &last["device"],
            &last["task"],
            &last["result"],
            &last["kind"]
        ),
        (
            &serde_json::json!("d1"),
            &serde_json::json!("north-inspections"),
            &serde_json::json!("ok"),
            &serde_json::json!("manual")
        ),
        "{history:?}"
    );
    assert_eq!(last["bytes_down"].as_u64(), Some(rest), "{last:?}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains(&format!("file {sha} from byte {have}")),
        "{last:?}"
    );
    let server_kb = office.server.peak_rss_kb();
    eprintln!(
        "file of {size} bytes: {moved} bytes moved after the cut at {have}, \
         device peak {device_kb} kB, server peak {server_kb} kB"
    );
    assert!(device_kb < 64 * 1024, "device peak {device_kb} kB");
    assert!(server_kb < 64 * 1024, "server peak {server_kb} kB");
}

crate::also_on_postgres!(a_device_fetches_its_slices_files_once_and_drops_those_that_leave);

/// Spawns `fieldsync device ARGS` (its output piped).
fn spawn(dev: &DeviceDir, args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .arg("device")
        .args(args)
        .arg("--dir")
        .arg(dev.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_cancel_in_the_files_part_of_a_sync_keeps_the_data_and_the_files_resume() {
    let office = office();
    let (north, _) = keys(&office);
    let size = 1 << 20;
    let big = content(size, 11);
    let sha = sha256_of(&big);
    attach(&office, "assets", &north, "scan.bin", &big).ok();
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'renamed' WHERE id = {north}"
    ));

    let upstream = office.server.addr();
    let proxy = FaultProxy::start(upstream, Fault::down(Action::Throttle(256 * 1024)));
    dev.use_server(&proxy.url());
    let child = spawn(&dev, &["sync", "--files"]);
    let partial = dev.path().join(format!("files/partial/{sha}.part"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 100_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the file never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out: Run = child.wait_with_output().unwrap().into();
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stderr
            .contains("cancelled; data synchronized, files incomplete"),
        "{out:?}"
    );
    // The data part stands.
    assert_eq!(
        rows(
            &dev.replica(),
            &format!("SELECT name FROM assets WHERE id = {north}")
        ),
        vec![vec!["trenamed".to_string()]]
    );
    let last = &dev.status()["last_sync"];
    assert_eq!(last["result"], "cancelled", "{last}");
    assert_eq!(last["send_result"], "ok", "{last}");
    assert!(!by_row(&dev, "assets", &north, "scan.bin").exists());

    // The files resume where the cancel left them.
    let have = std::fs::metadata(&partial).unwrap().len();
    assert!(have > 0 && have < size as u64, "{have}");
    proxy.set_fault(Fault::PASS);
    let out = dev.run(&["files"], "").ok();
    let rest = size as u64 - have;
    assert!(
        out.stdout
            .contains(&format!("files: 1 fetched, {rest} byte(s)")),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(by_row(&dev, "assets", &north, "scan.bin")).unwrap(),
        big
    );
}

#[test]
fn docking_with_download_files_brings_the_files_after_the_data() {
    use crate::docking::{Dock, Watcher, crew};
    let office = office();
    let (north, _) = keys(&office);
    let photo = content(70_000, 5);
    attach(&office, "assets", &north, "before.jpg", &photo).ok();
    let dev = crew(&office, "tab1");
    dev.run(&["options", "--download-files", "on"], "").ok();
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    dev.run(&["logout"], "").ok();
    dock.set(true);
    w.expect("automatic synchronization ok");
    let last = &dev.status()["last_sync"];
    assert_eq!(
        (last["kind"].as_str(), last["op"].as_str()),
        (Some("auto"), Some("sync"))
    );
    assert_eq!(
        std::fs::read(by_row(&dev, "assets", &north, "before.jpg")).unwrap(),
        photo
    );
    w.stop();
    // The server's history says the device fetched it by itself.
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&office.admin(&["history", "--json"], "").ok().stdout).unwrap();
    let fetched: Vec<(&str, &str, u64)> = history
        .iter()
        .filter(|h| h["op"] == "files")
        .map(|h| {
            let s = |k: &str| h[k].as_str().unwrap();
            (s("kind"), s("result"), h["bytes_down"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(fetched, [("auto", "ok", photo.len() as u64)], "{history:?}");
}

#[test]
fn files_failing_after_the_data_keep_the_data_and_say_so() {
    // PostgreSQL without `--files`: this server keeps no files.
    let office = Office::new_pg(10);
    let path = office.dir.0.join("north-files.toml");
    std::fs::write(&path, super::north_with_files()).unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    let out = dev.run(&["download", "north-inspections", "--files"], "");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("keeps no files"), "{out:?}");
    let status = dev.status();
    assert_eq!(status["task"], "north-inspections", "{status}");
    let message = status["last_sync"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("data synchronized, files failed: "),
        "{message}"
    );
    assert!(dev.replica_path().exists());
}
