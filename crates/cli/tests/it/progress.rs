//! Progress a person can trust, and outcomes said exactly (issue [device-ui] items 2
//! and 3): a 50,000-entry send on a pseudo-terminal advances before its end and leaves
//! clean lines; `--progress json` is JSON lines only, the final error too; without a
//! terminal, one line per phase; a synchronize whose download was cancelled or failed
//! after its send says both parts.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::harness::*;
use crate::proxy::{Action, Fault, FaultProxy};

const TASK: &str = "north-inspections";

/// Journal entries of the send the pseudo-terminal watches (the 50,000).
fn send_entries() -> u64 {
    std::env::var("FIELDSYNC_PROGRESS_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

/// A device of ana's holding the north task.
fn north_device(office: &Office) -> DeviceDir {
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    dev
}

/// `n` new inspections of ana's, written on the replica by the sqlite3 shell.
fn insert_inspections(dev: &DeviceDir, n: u64, tag: &str) {
    let asset: i64 = dev
        .replica()
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    let sql = format!(
        "WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < {n})
         INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
         SELECT '{tag}-' || n, {asset}, 'ana', '2026-07-01T08:00:00.000Z', 'ok', 'n' || n FROM i;"
    );
    let out = Command::new("sqlite3")
        .arg(dev.replica_path())
        .arg(&sql)
        .output()
        .expect("the sqlite3 shell runs");
    assert!(out.status.success(), "{out:?}");
}

/// What a terminal shows once `bytes` are written to it: carriage return, "clear
/// line" (`ESC [2K`) and newline as a terminal does them; every line as it ends up.
fn screen(bytes: &str) -> Vec<String> {
    let mut lines = vec![String::new()];
    let mut rest = bytes;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("\x1b[2K") {
            lines.last_mut().unwrap().clear();
            rest = after;
            continue;
        }
        match c {
            // `script` turns each newline into CR LF; a CR alone returns to column 0,
            // and the redraws that follow it begin with a clear.
            '\r' => {}
            '\n' => lines.push(String::new()),
            c => lines.last_mut().unwrap().push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    if lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// The `done` of each drawing of a `send` bar, in the order drawn.
fn send_draws(bytes: &str) -> Vec<(u64, u64, String)> {
    bytes
        .split(['\r', '\n'])
        .map(|d| d.trim_start_matches("\x1b[2K"))
        .filter(|d| d.starts_with("send "))
        .map(|d| {
            let counts = d
                .split_whitespace()
                .find(|w| w.contains('/') && w.chars().next().is_some_and(|c| c.is_ascii_digit()))
                .unwrap_or_else(|| panic!("a bar with counts: {d:?}"));
            let (done, total) = counts.split_once('/').unwrap();
            (done.parse().unwrap(), total.parse().unwrap(), d.to_string())
        })
        .collect()
}

#[test]
fn a_large_send_on_a_terminal_advances_before_its_end_and_leaves_clean_lines() {
    let office = Office::new(30);
    let dev = north_device(&office);
    let n = send_entries();
    insert_inspections(&dev, n, "pty");
    // `script` gives the command a pseudo-terminal and copies what it shows.
    let cmd = format!(
        "{BIN} device send --dir {}",
        dev.path().to_str().expect("a UTF-8 temp path")
    );
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{shown}");
    let draws = send_draws(&shown);
    let midway: Vec<_> = draws.iter().filter(|(d, t, _)| *d > 0 && d < t).collect();
    assert!(
        !midway.is_empty(),
        "the bar advanced before the end: {draws:#?}"
    );
    assert!(
        draws.iter().all(|(_, t, _)| *t == n),
        "every drawing counts the {n} entries: {draws:#?}"
    );
    let dones: Vec<u64> = draws.iter().map(|d| d.0).collect();
    assert!(dones.is_sorted(), "{dones:?}");
    assert!(
        midway
            .iter()
            .any(|(_, _, d)| d.contains("entries/s") && d.contains(" left")),
        "a rate and the time left while it runs: {midway:#?}"
    );
    // What stays on the terminal: the send's complete line, then the summary;
    // nothing of an earlier, longer drawing behind them.
    let lines = screen(&shown);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!(
            "send     [####################] 100% {n}/{n} entries, "
        )) && lines[0].contains(" in "),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with(&format!("sent {n} change(s)")),
        "{lines:#?}"
    );
    eprintln!("{} drawings; the last: {}", draws.len(), lines[0]);
}

/// Each line of `stderr` as JSON; a line that is not JSON fails the test.
fn json_lines(stderr: &str) -> Vec<Json> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn progress_json_is_json_lines_only_and_the_final_error_is_one_too() {
    let office = Office::new(300);
    let dev = north_device(&office);
    insert_inspections(&dev, 20, "json");
    let sent = dev.run(&["sync", "--full", "--progress", "json"], "").ok();
    let lines = json_lines(&sent.stderr);
    let phases: Vec<&str> = lines.iter().filter_map(|l| l["phase"].as_str()).collect();
    for want in ["send", "prepare", "transfer", "store"] {
        assert!(phases.contains(&want), "{want} in {phases:?}");
    }
    for l in &lines {
        assert!(
            l["done"].is_u64() && l["total"].is_u64() && l["unit"].is_string(),
            "{l}"
        );
    }
    let transfer_bytes: Vec<u64> = lines
        .iter()
        .filter(|l| l["phase"] == "transfer")
        .filter_map(|l| l["bytes"].as_u64())
        .collect();
    assert!(
        transfer_bytes.last().is_some_and(|b| *b > 0) && transfer_bytes.is_sorted(),
        "the transfer counts bytes received: {transfer_bytes:?}"
    );
    // A failure: the server is gone. The last line is the error, and there is
    // nothing else on stderr.
    drop(office);
    let failed = dev.run_env(
        &["download", TASK, "--full", "--progress", "json"],
        &[
            ("FIELDSYNC_RETRIES", "1"),
            ("FIELDSYNC_CONNECT_TIMEOUT_MS", "500"),
        ],
    );
    assert_eq!(failed.code, 1, "{failed:?}");
    let lines = json_lines(&failed.stderr);
    let last = lines.last().expect("at least the error line");
    assert_eq!(last["exit"], 1, "{last}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|m| !m.is_empty() && !m.starts_with("error:")),
        "{last}"
    );
}

#[test]
fn without_a_terminal_each_phase_ends_in_one_line() {
    let office = Office::new(300);
    let dev = north_device(&office);
    let run = dev.run(&["download", TASK, "--full"], "").ok();
    let phases: Vec<&str> = run
        .stderr
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(phases, ["prepare", "transfer", "store"], "{}", run.stderr);
    assert!(
        run.stderr
            .lines()
            .all(|l| l.contains(" in ") && !l.contains('\r')),
        "each line says how long its phase took: {}",
        run.stderr
    );
}

/// The rows the replica of `dev` holds in all its tables.
fn replica_rows(dev: &DeviceDir) -> u64 {
    dev.replica()
        .query_row(
            "SELECT (SELECT count(*) FROM assets) + (SELECT count(*) FROM inspections)",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// The rows the header of `dev`'s replica said would come, in all its tables.
fn header_estimate(dev: &DeviceDir) -> u64 {
    let header: String = dev
        .replica()
        .query_row(
            "SELECT value FROM fieldsync_replica WHERE key = 'header'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let header: Json = serde_json::from_str(&header).unwrap();
    header["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rows_estimate"].as_u64().unwrap())
        .sum()
}

/// The header's estimate is the rows phase's total. The first download of a slice
/// counts it; the next one within minutes takes the rows the last one sent (the server
/// does not scan the slice again before its first row), and the total grows to what
/// arrives, never below it; the replica holds every row either way.
#[test]
fn a_slices_next_download_takes_the_last_ones_rows_as_its_estimate() {
    let office = Office::new(300);
    let dev = north_device(&office);
    let n = replica_rows(&dev);
    assert_eq!(header_estimate(&dev), n, "the first download counts");
    office.execute_batch(
        "INSERT INTO assets (id, name, category, status, region) VALUES
         (9001, 'a', 'pump', 'active', 'north'), (9002, 'b', 'pump', 'active', 'north'),
         (9003, 'c', 'pump', 'active', 'north'), (9004, 'd', 'pump', 'active', 'north'),
         (9005, 'e', 'pump', 'active', 'north')",
    );
    let again = dev
        .run(&["download", TASK, "--full", "--progress", "json"], "")
        .ok();
    assert_eq!(replica_rows(&dev), n + 5, "every row arrived");
    assert_eq!(header_estimate(&dev), n, "what the last download sent");
    let rows: Vec<(u64, u64)> = json_lines(&again.stderr)
        .into_iter()
        .filter(|l| l["phase"] == "transfer" && l["unit"] == "rows")
        .map(|l| (l["done"].as_u64().unwrap(), l["total"].as_u64().unwrap()))
        .collect();
    assert_eq!(rows.last(), Some(&(n + 5, n + 5)), "{}", again.stderr);
    // A download after that takes its rows.
    dev.run(&["download", TASK, "--full"], "").ok();
    assert_eq!(header_estimate(&dev), n + 5);
}

/// A north device whose server is reached through a fault proxy, one change pending.
fn device_behind_proxy(office: &Office) -> (DeviceDir, FaultProxy) {
    let dev = north_device(office);
    let upstream: SocketAddr = office.server.addr();
    let proxy = FaultProxy::start(upstream, Fault::PASS);
    dev.use_server(&proxy.url());
    insert_inspections(&dev, 1, "part");
    (dev, proxy)
}

#[test]
fn a_synchronize_whose_download_is_cancelled_after_its_send_says_both() {
    let office = Office::new(20_000);
    let (dev, proxy) = device_behind_proxy(&office);
    let before = replica_content(&dev);
    // The download crawls; a Ctrl-C once its rows begin to arrive.
    proxy.set_fault(Fault::down(Action::Throttle(20_000)));
    let mut child = Command::new(BIN)
        .args(["device", "sync", "--full", "--progress", "json", "--dir"])
        .arg(dev.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("\"transfer\"") {
            let int = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(int.success());
            break;
        }
        assert!(Instant::now() < deadline, "no transfer began: {seen}");
        line.clear();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{stdout} {seen}{rest}");
    assert!(
        stdout.contains(
            "sent 1 change(s), 0 conflict(s); download cancelled, previous local data kept"
        ),
        "{stdout}"
    );
    let error: Json = serde_json::from_str(rest.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {rest}"));
    assert_eq!(
        error["error"],
        "cancelled; previous local database restored"
    );
    let last = &dev.status()["last_sync"];
    assert_eq!(last["result"], "cancelled", "{last}");
    assert_eq!(last["send_result"], "ok", "{last}");
    assert_eq!(last["download_result"], "cancelled", "{last}");
    assert_eq!(last["rows_up"], 1, "{last}");
    assert_eq!(dev.status()["pending"], 0, "the send stands");
    assert_eq!(
        replica_content(&dev),
        before,
        "the previous local data kept"
    );
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id = 'part-1'"),
        "1",
        "the change is in the main database"
    );
}

#[test]
fn a_synchronize_whose_download_fails_after_its_send_says_both() {
    let office = Office::new(20_000);
    let (dev, proxy) = device_behind_proxy(&office);
    // Responses are cut after 4 kB: the acknowledgement passes, the slice does not.
    proxy.set_fault(Fault::down(Action::Cut(4_000)));
    let run = dev.run_env(&["sync", "--full"], &[("FIELDSYNC_RETRIES", "1")]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("sent 1 change(s), 0 conflict(s); download failed: "),
        "{run:?}"
    );
    assert!(
        run.stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: download failed")),
        "{run:?}"
    );
    let last = &dev.status()["last_sync"];
    assert_eq!(
        (
            &last["result"],
            &last["send_result"],
            &last["download_result"]
        ),
        (&"error".into(), &"ok".into(), &"error".into()),
        "{last}"
    );
    // A send alone records only its part.
    proxy.set_fault(Fault::PASS);
    dev.run(&["send"], "").ok();
    let last = &dev.status()["last_sync"];
    assert_eq!(last["send_result"], "ok", "{last}");
    assert_eq!(last["download_result"], Json::Null, "{last}");
}
