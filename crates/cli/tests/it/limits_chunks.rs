//! A journal of any length goes as a sequence of bounded uploads (issue #11 [limits],
//! point 2), each applied at most once, in order, a kill between them losing nothing;
//! the next made while one is away, and sent only after its acknowledgement.
//!
//! `FIELDSYNC_TEST_JOURNAL_ENTRIES` sets the journal of the chunked-send test (default
//! 100,000; BENCHMARKS.md measures 2,000,000).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::limits_upload::north_device;

/// Issue #20's bounds for a long send, with a test build's margin (release targets:
/// server 32 MB, device 48 MB; a test build's server peaks at 35 MB, its login's
/// hashing included, and its device at 32-33 MB for 100,000 entries in uploads of
/// 5,000 (39 MB in uploads of 10,000); the server's single integration thread on
/// SQLite shows in release builds, `integrators::tests` checks it).
const SEND_SERVER_MB: u64 = 48;
const SEND_DEVICE_MB: u64 = 48;

/// Inserts `n` inspections on the replica in one transaction (its triggers journal
/// them), ids `{prefix}NNNNNNNN`.
fn insert_inspections(dev: &DeviceDir, prefix: &str, n: u64) {
    let conn = dev.replica();
    let asset: i64 = conn
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    conn.execute(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
         INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
         SELECT printf('%s%08d', ?2, i), ?3, 'ana', '2026-11-26T09:00:00.000Z', 'ok',
                'bulk inspection ' || i FROM k",
        rusqlite::params![n as i64, prefix, asset],
    )
    .unwrap();
}

fn journal_len(dev: &DeviceDir) -> i64 {
    dev.replica()
        .query_row("SELECT count(*) FROM fieldsync_journal", [], |r| r.get(0))
        .unwrap()
}

/// Upload sessions of the sync history: (rows_up, message) of each `send`.
fn sends(office: &Office) -> Vec<(u64, String)> {
    let sessions: serde_json::Value =
        serde_json::from_str(&office.admin(&["sessions", "--json"], "").ok().stdout).unwrap();
    sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["op"] == "send")
        .map(|s| {
            (
                s["rows_up"].as_u64().unwrap(),
                s["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Entries applied by first-time uploads (repeats answered with a recorded outcome
/// apply nothing): every entry exactly once is this sum equal to the journal.
fn applied_once(office: &Office) -> u64 {
    sends(office)
        .iter()
        .filter(|(_, m)| m.ends_with("entries applied"))
        .map(|(n, _)| *n)
        .sum()
}

/// Starts `fieldsync device send` on `dev`, its output discarded, to be killed.
fn spawn_send(dev: &DeviceDir) -> std::process::Child {
    Command::new(BIN)
        .args(["device", "send", "--dir"])
        .arg(dev.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn journal_entries() -> u64 {
    std::env::var("FIELDSYNC_TEST_JOURNAL_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// A long journal goes as a sequence of uploads of at most the published chunk size,
/// every entry applied exactly once, in bounded memory on both sides.
#[test]
fn a_long_journal_is_sent_in_chunks_in_bounded_memory() {
    let n = journal_entries();
    let office = Office::new(20);
    let dev = north_device(&office, "long-1");
    let started = Instant::now();
    insert_inspections(&dev, "bulk-", n);
    eprintln!("{n} journal entries made in {:?}", started.elapsed());
    let started = Instant::now();
    let (run, device_kb) = dev.run_measured(&["send", "--progress", "json"], &[]);
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{run:?}");
    let server_kb = office.server.peak_rss_kb();
    eprintln!(
        "chunked send of {n} entries: {took:?} ({:.0} entries/s), device peak RSS {} MB, server peak RSS {} MB",
        n as f64 / took.as_secs_f64(),
        device_kb / 1024,
        server_kb / 1024
    );
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'bulk-%'"),
        n.to_string()
    );
    assert_eq!(journal_len(&dev), 0);
    assert!(conflicts(&office).is_empty());
    let sends = sends(&office);
    let chunk = fieldsync_proto::wire::UPLOAD_CHUNK_ENTRIES as u64;
    assert_eq!(sends.len() as u64, n.div_ceil(chunk), "{sends:?}");
    assert!(sends.iter().all(|(rows, _)| *rows <= chunk), "{sends:?}");
    assert_eq!(applied_once(&office), n);
    // Progress counts journal entries across the chunks, up to all of them.
    let last_progress = run
        .stderr
        .lines()
        .rfind(|l| l.contains("\"entries\""))
        .unwrap_or_default()
        .to_string();
    assert!(
        last_progress.contains(&format!("\"done\":{n}"))
            && last_progress.contains(&format!("\"total\":{n}")),
        "{last_progress}"
    );
    assert!(
        device_kb / 1024 < SEND_DEVICE_MB,
        "device peak RSS {} MB",
        device_kb / 1024
    );
    assert!(
        server_kb / 1024 < SEND_SERVER_MB,
        "server peak RSS {} MB",
        server_kb / 1024
    );
}

/// A device killed (-9) after some chunks were acknowledged loses nothing and applies
/// nothing twice: the next send goes on from the first unacknowledged chunk (the one
/// stored, if it was stored, is sent again under its id and answered with its outcome).
#[test]
fn a_device_killed_between_chunks_loses_nothing_and_applies_nothing_twice() {
    let chunk = fieldsync_proto::wire::UPLOAD_CHUNK_ENTRIES as u64;
    let n = 3 * chunk - chunk / 2;
    let office = Office::new(20);
    let dev = north_device(&office, "kill-1");
    insert_inspections(&dev, "kill-", n);
    let total = journal_len(&dev);
    assert_eq!(total as u64, n);
    // Kill the device once the first chunk's acknowledgement took its entries away.
    let mut child = spawn_send(&dev);
    let conn = rusqlite::Connection::open_with_flags(
        dev.replica_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut left = total;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if let Ok(c) = conn.query_row("SELECT count(*) FROM fieldsync_journal", [], |r| {
            r.get::<_, i64>(0)
        }) {
            left = c;
        }
        if left < total {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    drop(conn);
    assert!(
        left < total,
        "the first chunk was acknowledged before the kill"
    );
    assert!(
        status.code().is_none() || left > 0,
        "the kill landed before the send ended ({status:?}, {left} left)"
    );
    let after_kill = applied_once(&office);
    eprintln!("killed with {left} of {total} entries left; {after_kill} applied");
    assert!(after_kill >= chunk && after_kill < n, "{after_kill}");
    dev.run(&["send"], "").ok();
    assert_eq!(journal_len(&dev), 0);
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'kill-%'"),
        n.to_string()
    );
    assert_eq!(applied_once(&office), n, "{:?}", sends(&office));
    assert!(conflicts(&office).is_empty());
}

/// The acknowledgement of a middle chunk lost: the device is killed (-9) as soon as the
/// server committed the second upload, mostly before the device took its answer. The
/// next send sends that stored upload again under its id, is answered with the recorded
/// outcome, and goes on: every entry applied exactly once.
#[test]
fn a_middle_chunks_lost_acknowledgement_applies_it_once() {
    let chunk = fieldsync_proto::wire::UPLOAD_CHUNK_ENTRIES as u64;
    let n = 3 * chunk - chunk / 2;
    let office = Office::new(20);
    let dev = north_device(&office, "lost-ack");
    insert_inspections(&dev, "ack-", n);
    let uploads = || office.uploads_recorded();
    let before = uploads();
    let mut child = spawn_send(&dev);
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline && uploads() < before + 2 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "killed before the send ended: {status:?}"
    );
    assert_eq!(uploads(), before + 2, "the second chunk was committed");
    // The third may be on its way (it leaves as soon as the second's answer arrived,
    // its acknowledgement applied meanwhile): the server finishes what it received.
    let mut seen = (uploads(), Instant::now());
    while seen.1.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        if uploads() != seen.0 {
            seen = (uploads(), Instant::now());
        }
    }
    let stored: Vec<String> = {
        let conn = dev.replica();
        let mut stmt = conn
            .prepare("SELECT upload_id FROM fieldsync_upload ORDER BY max_seq")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    // The stored uploads: the second chunk, committed and not acknowledged here (the
    // lost acknowledgement), or acknowledged and not yet applied with the third stored
    // beside it, or already the third alone (the device took the answer in time).
    // Each the server committed is answered as a repeat, once.
    let committed = stored
        .iter()
        .filter(|id| {
            office.value(&format!(
                "SELECT count(*) FROM {} WHERE upload_id = '{id}'",
                office.own_table("uploads")
            )) == "1"
        })
        .count();
    assert!(stored.len() <= 2, "{stored:?}");
    dev.run(&["send"], "").ok();
    assert_eq!(journal_len(&dev), 0);
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'ack-%'"),
        n.to_string()
    );
    assert_eq!(applied_once(&office), n, "{:?}", sends(&office));
    assert_eq!(uploads(), before + 3, "three chunks, each recorded once");
    let repeats = sends(&office)
        .iter()
        .filter(|(_, m)| m.starts_with("repeated upload"))
        .count();
    eprintln!(
        "lost acknowledgement: stored upload after the kill {stored:?} (committed: {committed}), repeats answered {repeats}"
    );
    assert_eq!(repeats, committed, "{:?}", sends(&office));
    assert!(conflicts(&office).is_empty());
}

/// The first chunk's acknowledgement cannot be applied (the crew's app refuses the
/// office's values it brings back) while the second chunk is away: the send fails
/// with both uploads stored and both committed by the server. The next send sends the
/// second again under its own id and is answered with its recorded outcome; it never
/// makes the second's journal entries into an upload of a new id, which the server
/// would apply a second time.
#[test]
fn an_acknowledgement_not_applied_while_the_next_chunk_was_away_applies_nothing_twice() {
    let chunk = fieldsync_proto::wire::UPLOAD_CHUNK_ENTRIES as u64;
    let n = chunk + chunk / 2;
    let office = Office::new(20);
    let dev = north_device(&office, "ack-refused");
    let asset: i64 = dev
        .replica()
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    // The office renames the asset; the crew moves it: merged, so the first chunk's
    // acknowledgement carries the office's row for the replica to take.
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'office-name' WHERE id = {asset}"
    ));
    dev.replica()
        .execute("UPDATE assets SET x = 1.5 WHERE id = ?1", [asset])
        .unwrap();
    insert_inspections(&dev, "refused-", n);
    let total = journal_len(&dev);
    // The crew's app, on its replica, refuses that name.
    dev.replica()
        .execute_batch(
            "CREATE TRIGGER app_refuses BEFORE UPDATE ON assets WHEN NEW.name = 'office-name'
             BEGIN SELECT RAISE(ABORT, 'the app refuses this name'); END;",
        )
        .unwrap();
    let before = office.uploads_recorded();
    let failed = dev.run(&["send"], "");
    assert_ne!(failed.code, 0, "{failed:?}");
    assert_eq!(
        office.uploads_recorded(),
        before + 2,
        "both chunks committed"
    );
    let stored: i64 = dev
        .replica()
        .query_row("SELECT count(*) FROM fieldsync_upload", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 2, "both uploads stored");
    assert_eq!(journal_len(&dev), total, "nothing acknowledged here");

    dev.replica()
        .execute_batch("DROP TRIGGER app_refuses")
        .unwrap();
    dev.run(&["send"], "").ok();
    assert_eq!(journal_len(&dev), 0);
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'refused-%'"),
        n.to_string()
    );
    assert_eq!(applied_once(&office), n + 1, "{:?}", sends(&office));
    assert_eq!(
        office.uploads_recorded(),
        before + 2,
        "{:?}",
        sends(&office)
    );
    assert!(conflicts(&office).is_empty(), "{:?}", conflicts(&office));
    let name: String = dev
        .replica()
        .query_row("SELECT name FROM assets WHERE id = ?1", [asset], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(name, "office-name");
}

/// One row's change over the server's caps cannot go in any upload: the send stops
/// at it with an error naming it, what came before is sent, nothing is lost, and the
/// rest goes once it is set aside. It never loops.
#[test]
fn an_entry_too_large_for_any_upload_is_named_and_kept() {
    let office = Office::new(20);
    let dev = north_device(&office, "big-entry");
    insert_inspections(&dev, "before-", 3);
    let conn = dev.replica();
    let asset: i64 = conn
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    // Not one repeated byte, so that it does not compress below the cap either.
    let big: String = (0..40 * 1024 * 1024u64)
        .map(|i| char::from(b'a' + ((i * 7919 + i / 13) % 26) as u8))
        .collect();
    conn.execute(
        "INSERT INTO inspections (id, asset_id, inspector, inspected_at, notes)
         VALUES ('too-big', ?1, 'ana', '2026-11-26T09:00:00.000Z', ?2)",
        rusqlite::params![asset, big],
    )
    .unwrap();
    drop(big);
    drop(conn);
    insert_inspections(&dev, "after-", 2);
    let big_seq: i64 = dev
        .replica()
        .query_row(
            "SELECT seq FROM fieldsync_journal WHERE pk = 'too-big'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let started = Instant::now();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!("journal entry {big_seq}"))
            && run.stderr.contains("inspections")
            && run.stderr.contains("'too-big'")
            && run.stderr.contains("too large"),
        "{run:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    // What came before went; the big entry and what follows stay.
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'before-%'"),
        "3"
    );
    assert_eq!(journal_len(&dev), 3);
    // The same again (never a loop, never a loss).
    let again = dev.run(&["send"], "");
    assert_eq!(again.code, 1, "{again:?}");
    assert_eq!(journal_len(&dev), 3);
    dev.run(&["journal", "discard", &big_seq.to_string()], "")
        .ok();
    dev.run(&["send"], "").ok();
    assert_eq!(journal_len(&dev), 0);
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'after-%'"),
        "2"
    );
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id = 'too-big'"),
        "0"
    );
}

/// A row edited in an early chunk and again in a later one: the later edit goes with
/// the base the earlier chunk's acknowledgement gave the row, so the device's own
/// earlier chunk is no conflict with it, and the row ends as the device left it.
#[test]
fn a_row_edited_in_two_chunks_is_no_conflict_with_itself() {
    let chunk = fieldsync_proto::wire::UPLOAD_CHUNK_ENTRIES as u64;
    let office = Office::new(20);
    let dev = north_device(&office, "two-chunks");
    let conn = dev.replica();
    let asset: i64 = conn
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    conn.execute(
        "UPDATE assets SET name = 'first edit' WHERE id = ?1",
        [asset],
    )
    .unwrap();
    drop(conn);
    insert_inspections(&dev, "fill-", chunk);
    let conn = dev.replica();
    conn.execute(
        "UPDATE assets SET name = 'second edit', category = 'valve' WHERE id = ?1",
        [asset],
    )
    .unwrap();
    drop(conn);
    dev.run(&["send"], "").ok();
    assert_eq!(journal_len(&dev), 0);
    assert_eq!(sends(&office).len(), 2, "{:?}", sends(&office));
    assert!(conflicts(&office).is_empty(), "{:?}", conflicts(&office));
    assert_eq!(
        office.value(&format!(
            "SELECT name || '/' || category FROM assets WHERE id = {asset}"
        )),
        "second edit/valve"
    );
}

/// Under server-wins, an edit judged against an older base than the device's own last
/// write is the office's change winning: a row written in one chunk and again (or
/// deleted) in the next must go with the base the first chunk's acknowledgement gave
/// it, even when the next chunk was made while the first was away.
#[test]
fn a_row_written_in_two_chunks_goes_with_its_new_base_under_server_wins() {
    let chunk = fieldsync_proto::wire::UPLOAD_CHUNK_ENTRIES as u64;
    let office = Office::new(20);
    office.execute_batch(
        "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes) VALUES
             ('again', 1, 'ana', '2026-05-01T08:00:00.000Z', 'ok', 'office'),
             ('gone', 1, 'ana', '2026-05-01T08:00:00.000Z', 'ok', 'office')",
    );
    let path = office.dir.0.join("chunks-server-wins.toml");
    std::fs::write(
        &path,
        r#"
name = "chunks-server-wins"
[[tables]]
name = "inspections"
filter = "inspector = $user"
write = ["insert", "update", "delete"]
conflict = "server-wins"
"#,
    )
    .unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    office
        .admin(
            &["task", "assign", "chunks-server-wins", "--user", "ana"],
            "",
        )
        .ok();
    let dev = office.device("two-chunks-sw", &["chunks-server-wins"]);
    dev.login("ana").ok();
    dev.run(&["download", "chunks-server-wins"], "").ok();
    let conn = dev.replica();
    conn.execute_batch("UPDATE inspections SET notes = 'first' WHERE id IN ('again', 'gone')")
        .unwrap();
    conn.execute(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
         INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
         SELECT printf('fill-%08d', i), 1, 'ana', '2026-11-26T09:00:00.000Z', 'ok', 'fill' FROM k",
        [chunk as i64],
    )
    .unwrap();
    conn.execute_batch(
        "UPDATE inspections SET notes = 'second' WHERE id = 'again';
         DELETE FROM inspections WHERE id = 'gone';",
    )
    .unwrap();
    drop(conn);
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(journal_len(&dev), 0);
    assert_eq!(sends(&office).len(), 2, "{:?}", sends(&office));
    assert!(conflicts(&office).is_empty(), "{:?}", conflicts(&office));
    assert_eq!(
        office.value("SELECT notes FROM inspections WHERE id = 'again'"),
        "second"
    );
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id = 'gone'"),
        "0"
    );
}
