//! Files made on a device: `device file attach` queues them (refused at once for a row
//! outside the replica, a table outside `[files]` or read-only), the next send uploads
//! the content and records the attachment with the journal's entries, once; another
//! device of the slice then fetches it intact; a forged queue record is refused.

use super::{keys, office, sha256_of};
use crate::harness::*;

fn list(office: &Office) -> Vec<serde_json::Value> {
    let out = office.admin(&["file", "list", "--json"], "").ok().stdout;
    serde_json::from_str(&out).unwrap()
}

fn photo(dev: &DeviceDir, name: &str, content: &[u8]) -> String {
    let path = dev.path().join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

fn queued(dev: &DeviceDir) -> Vec<serde_json::Value> {
    let out = dev.run(&["file", "list", "--json"], "").ok().stdout;
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_photo_attached_on_the_device_is_recorded_once_and_reaches_other_devices() {
    let office = office();
    let (north, south) = keys(&office);
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    // A row inserted on the device, and a photo of it, in the same send.
    dev.replica()
        .execute_batch(&format!(
            "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
             VALUES ('dev-1', {north}, 'ana', '2026-05-01T08:00:00.000Z', 'ok', 'new')"
        ))
        .unwrap();
    let (a, b) = (
        b"jpeg bytes of the pump".repeat(5000),
        b"a second photo".to_vec(),
    );
    let pa = photo(&dev, "pump.jpg", &a);
    let pb = photo(&dev, "inspection.png", &b);
    dev.run(&["file", "attach", "assets", &north, &pa], "").ok();
    dev.run(&["file", "attach", "inspections", "dev-1", &pb], "")
        .ok();
    let q = queued(&dev);
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!(q[0]["content_type"], "image/jpeg");
    assert_eq!(q[0]["sha256"], sha256_of(&a).as_str());
    assert_eq!(q[0]["user"], "ana");

    // Refused at attach time: a row outside the replica, a table outside `[files]`
    // (there is none in this task but a missing one), a read-only table.
    for (table, key, says) in [
        ("assets", south.as_str(), "no row"),
        ("work_orders", "1", "not in task"),
    ] {
        let run = dev.run(&["file", "attach", table, key, &pa], "");
        assert_ne!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains(says), "{says}: {run:?}");
    }
    assert_eq!(queued(&dev).len(), 2);

    let out = dev.run(&["send", "--progress", "json"], "").ok();
    assert!(queued(&dev).is_empty(), "{out:?}");
    // The content's progress comes in bytes, before the entries'.
    let reports: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let units: Vec<&str> = reports
        .iter()
        .map(|r| r["unit"].as_str().unwrap())
        .collect();
    let first_entries = units.iter().position(|u| *u == "entries").unwrap();
    assert!(
        first_entries > 0 && units[..first_entries].iter().all(|u| *u == "bytes"),
        "{units:?}"
    );
    let last_bytes = &reports[first_entries - 1];
    let total = (a.len() + b.len()) as u64;
    assert_eq!(
        (last_bytes["done"].as_u64(), last_bytes["total"].as_u64()),
        (Some(total), Some(total)),
        "{reports:?}"
    );
    let files = list(&office);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files
            .iter()
            .any(|f| f["table"] == "inspections" && f["key"] == "dev-1" && f["added_by"] == "ana")
    );
    // A second send sends nothing more and records nothing twice.
    dev.run(&["send"], "").ok();
    assert_eq!(list(&office).len(), 2);

    // Another device of the slice fetches the photos intact.
    let dev2 = office.device("d2", &["north-inspections"]);
    dev2.login("ana").ok();
    dev2.run(&["download", "north-inspections", "--files"], "")
        .ok();
    let got = std::fs::read(
        dev2.path()
            .join("files/by-row/assets")
            .join(&north)
            .join("pump.jpg"),
    )
    .unwrap();
    assert_eq!(got, a);
    let got = std::fs::read(
        dev2.path()
            .join("files/by-row/inspections/dev-1/inspection.png"),
    )
    .unwrap();
    assert_eq!(got, b);
}

#[test]
fn attach_refuses_a_read_only_table_and_the_server_refuses_a_forged_record() {
    let office = office();
    let (north, south) = keys(&office);
    // Assets read-only in this version of the task.
    let path = office.dir.0.join("ro.toml");
    std::fs::write(
        &path,
        super::north_with_files().replace("write = [\"update\"]", "write = []"),
    )
    .unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    let p = photo(&dev, "pump.jpg", b"photo");
    let run = dev.run(&["file", "attach", "assets", &north, &p], "");
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("read-only"), "{run:?}");

    // A photo of a row of its own, the queue record then pointed at another slice's row.
    let insp = dev
        .replica()
        .query_row("SELECT min(id) FROM inspections", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap();
    dev.run(&["file", "attach", "inspections", &insp, &p], "")
        .ok();
    let outbox = dev.path().join("files/outbox");
    let record = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    json["table"] = "assets".into();
    json["key"] = south.clone().into();
    std::fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("pump.jpg"), "{run:?}");
    assert!(list(&office).is_empty());
    assert_eq!(queued(&dev).len(), 1);
}

/// A crash after the acknowledgement, before the queue was cleared: the queue is as it
/// was, the next send carries the attachment again in a new upload, and the main
/// database still holds it once.
#[test]
fn an_attachment_sent_again_after_a_crash_is_recorded_once() {
    let office = office();
    let (north, _) = keys(&office);
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    let p = photo(&dev, "pump.jpg", b"the pump, photographed");
    dev.run(&["file", "attach", "assets", &north, &p], "").ok();
    let outbox = dev.path().join("files/outbox");
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    // The journal is empty: the attachment rides alone.
    let out = dev.run(&["send"], "").ok();
    assert!(queued(&dev).is_empty(), "{out:?}");
    assert_eq!(list(&office).len(), 1);
    for (p, bytes) in &saved {
        std::fs::write(p, bytes).unwrap();
    }
    assert_eq!(queued(&dev).len(), 1);
    dev.run(&["send"], "").ok();
    assert!(queued(&dev).is_empty());
    let files = list(&office);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0]["name"], "pump.jpg");
}

/// Discarding every local change takes the queued files along, beside the backup file.
#[test]
fn discarding_all_changes_moves_queued_files_beside_the_backup() {
    let office = office();
    let (north, _) = keys(&office);
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev.replica()
        .execute_batch(&format!(
            "UPDATE assets SET status = 'broken' WHERE id = {north}"
        ))
        .unwrap();
    let p = photo(&dev, "pump.jpg", b"broken pump");
    dev.run(&["file", "attach", "assets", &north, &p], "").ok();
    let out = dev.run(&["journal", "discard", "--all"], "").ok();
    assert!(queued(&dev).is_empty(), "{out:?}");
    let backup = std::fs::read_dir(dev.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "files"))
        .expect("a backup folder of files");
    let mut names: Vec<String> = std::fs::read_dir(&backup)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .extension()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["bin", "json"]);
    assert!(backup.with_extension("jsonl").exists());
    dev.run(&["send"], "").ok();
    assert!(list(&office).is_empty());
}

/// A large photo goes up in bounded memory on both sides; cut at half, the next send
/// moves about the other half.
#[test]
fn a_large_photo_uploads_in_bounded_memory_and_resumes_after_a_cut() {
    use super::device::{content, large_bytes};
    use crate::proxy::{Action, Fault, FaultProxy};
    let office = office();
    let (north, _) = keys(&office);
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    let n = large_bytes();
    let big = content(n, 7);
    let p = photo(&dev, "site.jpg", &big);
    dev.run(&["file", "attach", "assets", &north, &p], "").ok();
    let upstream = office.server.addr();
    let proxy = FaultProxy::start(upstream, Fault::up(Action::Cut(n as u64 / 2)).first(1));
    dev.use_server(&proxy.url());
    let one_try = [("FIELDSYNC_RETRIES", "1")];
    let cut = dev.run_env(&["send"], &one_try);
    assert_ne!(cut.code, 0, "{cut:?}");
    assert!(list(&office).is_empty());
    proxy.set_fault(Fault::PASS);
    let (run, device_kb) = dev.run_measured(&["send"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let moved = dev.status()["last_sync"]["bytes_up"].as_u64().unwrap();
    assert!(
        moved > n as u64 / 3 && moved < n as u64 * 3 / 4,
        "moved {moved} of {n}"
    );
    let server_kb = office.server.peak_rss_kb();
    eprintln!(
        "photo of {n} bytes: {moved} bytes sent after the cut, device peak {device_kb} kB, \
         server peak {server_kb} kB"
    );
    assert!(device_kb < 64 * 1024, "device peak {device_kb} kB");
    assert!(server_kb < 64 * 1024, "server peak {server_kb} kB");
    let files = list(&office);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["sha256"], sha256_of(&big).as_str());
}

/// The acknowledgement of the upload carrying an attachment is lost: the next send
/// sends the same upload id again, answered with the recorded outcome; recorded once.
#[test]
fn an_attachment_whose_acknowledgement_was_lost_is_recorded_once() {
    use crate::proxy::{Action, Fault, FaultProxy};
    let office = office();
    let (north, _) = keys(&office);
    let upstream = office.server.addr();
    let proxy = FaultProxy::start(upstream, Fault::PASS);
    // The same exchange on two devices: the first measures the bytes coming down, the
    // second has the last answer (the upload's acknowledgement) cut short.
    let mut down = 0;
    for (i, id) in ["d1", "d2"].into_iter().enumerate() {
        let dev = office.device(id, &["north-inspections"]);
        dev.login("ana").ok();
        dev.run(&["download", "north-inspections"], "").ok();
        let p = photo(&dev, &format!("pump{i}.jpg"), b"the pump, photographed");
        dev.run(&["file", "attach", "assets", &north, &p], "").ok();
        dev.use_server(&proxy.url());
        let before = proxy.stats();
        if i == 0 {
            dev.run(&["send"], "").ok();
            let after = proxy.stats();
            assert_eq!(
                after.connections - before.connections,
                1,
                "one connection per send"
            );
            down = after.bytes_down - before.bytes_down;
            continue;
        }
        proxy.set_fault(Fault::down(Action::Cut(down - 30)).first(1));
        let run = dev.run_env(&["send"], &[("FIELDSYNC_RETRIES", "1")]);
        assert_ne!(run.code, 0, "{run:?}");
        assert_eq!(queued(&dev).len(), 1, "not acknowledged: still queued");
        assert_eq!(list(&office).len(), 2, "recorded by the cut upload");
        proxy.set_fault(Fault::PASS);
        dev.run(&["send"], "").ok();
        assert!(queued(&dev).is_empty());
        assert_eq!(list(&office).len(), 2);
    }
}

/// The bytes in the server's spool of uploads (`uploads/` of its file store) under
/// `dir`.
fn spooled(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if d.file_name().is_some_and(|n| n == "uploads") {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

/// The server killed (kill -9) while a photo's content comes up: restarted, the next
/// send goes on from what it kept and records the attachment once.
#[test]
fn a_photo_upload_survives_a_server_killed_midway() {
    use super::device::content;
    use crate::proxy::{Action, Fault, FaultProxy};
    let mut office = office();
    let (north, _) = keys(&office);
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    let big = content(3 << 20, 11);
    let p = photo(&dev, "site.jpg", &big);
    dev.run(&["file", "attach", "assets", &north, &p], "").ok();
    let upstream = office.server.addr();
    let proxy = FaultProxy::start(upstream, Fault::up(Action::Throttle(1 << 20)));
    dev.use_server(&proxy.url());
    let mut send = std::process::Command::new(BIN)
        .args(["device", "send", "--dir"])
        .arg(dev.path())
        .env("FIELDSYNC_RETRIES", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the server has kept part of it (its spool file), not merely once
    // the proxy passed bytes on: on a loaded machine those may not be written yet.
    let t0 = std::time::Instant::now();
    while spooled(&office.dir.0) < 512 << 10 && t0.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        spooled(&office.dir.0) < big.len() as u64,
        "sent whole before the kill"
    );
    office.server.child.kill().unwrap();
    office.server.child.wait().unwrap();
    let status = send.wait().unwrap();
    assert!(!status.success());
    assert!(list(&office).is_empty());
    let flags = super::files_flags(&office);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    office.server = Server::start_with(&office.db_url, &flags);
    dev.use_server(&office.server.url);
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 0, "{run:?}");
    let moved = dev.status()["last_sync"]["bytes_up"].as_u64().unwrap();
    assert!(moved < big.len() as u64, "resumed, not sent whole: {moved}");
    let files = list(&office);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0]["sha256"], sha256_of(&big).as_str());
    assert!(queued(&dev).is_empty());
}

crate::also_on_postgres!(
    a_photo_attached_on_the_device_is_recorded_once_and_reaches_other_devices,
    attach_refuses_a_read_only_table_and_the_server_refuses_a_forged_record,
    an_attachment_sent_again_after_a_crash_is_recorded_once,
    an_attachment_whose_acknowledgement_was_lost_is_recorded_once,
    a_large_photo_uploads_in_bounded_memory_and_resumes_after_a_cut,
    a_photo_upload_survives_a_server_killed_midway,
);
