//! What a request costs the main database (the "[limits]" issue, points 6 and 7):
//! authorization is one indexed query whatever the number of tasks; a forbidden
//! upload is refused before the SQLite write lock is taken; an upload waiting on a
//! row the office holds (PostgreSQL) gives up, retryably, and gives its connection
//! back.
//!
//! The requests here are plain HTTP/1.1 on loopback made by the test itself, with the
//! device's own credentials: the time measured is the server's answer, not the start
//! of a `fieldsync` process, and an upload can be crafted at any size.
//!
//! `FIELDSYNC_TEST_FORBIDDEN_ENTRIES` sets the size of the forbidden upload (default
//! 200,000; the issue's figure is 1,000,000:
//! `FIELDSYNC_TEST_FORBIDDEN_ENTRIES=1000000 cargo nextest run -p fieldsync-cli --test it
//! limits_store::a_forbidden_upload --no-capture`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fieldsync_proto::Value;
use fieldsync_proto::task::WriteOp;
use fieldsync_proto::wire::{Upload, UploadEntry};

use crate::harness::*;

/// A server's answer: status and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    body: Vec<u8>,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.status, self.text()))
    }
}

/// One HTTP/1.1 request on a new loopback connection, read to its end.
pub(crate) fn http(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Answer {
    let addr = addr_of(url);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(180)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server that answers before reading the whole body may close early.
    let _ = stream.write_all(body);
    // An answer sent before the whole body was read (413) may end in a reset: what
    // was read is the answer.
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "no answer from the server: {e}");
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    let mut body = raw[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut plain = Vec::new();
        let mut rest = &body[..];
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap().trim(), 16)
                    .unwrap();
            if size == 0 {
                break;
            }
            plain.extend_from_slice(&rest[line + 2..line + 2 + size]);
            rest = &rest[line + 2 + size + 2..];
        }
        body = plain;
    }
    Answer { status, body }
}

/// What a paired, logged-in device sends with each request (from its state file).
pub(crate) fn device_headers(dev: &DeviceDir) -> Vec<(&'static str, String)> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    let mut headers = vec![
        ("x-fieldsync-protocol", "1".to_string()),
        ("x-fieldsync-device", text(&state["device_id"])),
        ("x-fieldsync-device-secret", text(&state["device_secret"])),
    ];
    if let Some(token) = state["session"]["token"].as_str() {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    headers
}

/// Sends an upload as the device's client does (zstd-compressed JSON, its CRC-32).
pub(crate) fn post_upload(
    url: &str,
    headers: &[(&'static str, String)],
    upload: &Upload,
) -> Answer {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    serde_json::to_writer(&mut encoder, upload).unwrap();
    let body = encoder.finish().unwrap();
    let mut headers = headers.to_vec();
    headers.extend([
        ("x-fieldsync-upload-id", upload.upload_id.clone()),
        ("x-fieldsync-op", "send".to_string()),
        ("x-fieldsync-kind", "manual".to_string()),
        (
            "content-type",
            "application/x-fieldsync-upload+zstd".to_string(),
        ),
        (
            "x-fieldsync-body-crc32",
            format!("{:08x}", fieldsync_proto::frame::crc32(&body)),
        ),
    ]);
    http(url, "POST", "/api/v1/uploads", &headers, &body)
}

/// An update of one asset's name by ana, based on `base`.
pub(crate) fn rename(i: usize, key: i64, base: i64, name: String) -> UploadEntry {
    UploadEntry {
        seq_first: i as i64 + 1,
        seq_last: i as i64 + 1,
        table: "assets".into(),
        key: Value::Integer(key),
        op: WriteOp::Update,
        base_version: Some(base),
        user: "ana".into(),
        old: Default::default(),
        new: [("name".to_string(), Value::Text(name))].into(),
    }
}

pub(crate) fn upload_of(entries: Vec<UploadEntry>) -> Upload {
    Upload {
        upload_id: fieldsync_store::random_hex(16),
        task: NORTH_TASK.into(),
        epoch: None,
        task_hash: None,
        cursor: None,
        entries,
        attachments: Vec::new(),
    }
}

const NORTH_TASK: &str = "north-inspections";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The ids of the assets in the north slice.
/// A device of the north task paired with the server at `url`, logged in as ana and
/// downloaded.
pub(crate) fn on_server(office: &Office, url: &str, id: &str) -> DeviceDir {
    let dev = office.device(id, &[NORTH_TASK]);
    dev.use_server(url);
    dev.login("ana").ok();
    dev.run(&["download", NORTH_TASK], "").ok();
    dev
}

/// `device send` of `dev` on a thread of its own, with `retries` attempts in all:
/// its outcome and how long it took.
pub(crate) fn send_in_thread(
    dev: &DeviceDir,
    retries: u32,
) -> std::thread::JoinHandle<(Run, Duration)> {
    let dir = dev.path().to_path_buf();
    std::thread::spawn(move || {
        let started = Instant::now();
        let run: Run = Command::new(BIN)
            .args(["device", "send", "--dir"])
            .arg(&dir)
            .env("FIELDSYNC_RETRIES", retries.to_string())
            .output()
            .unwrap()
            .into();
        (run, started.elapsed())
    })
}

pub(crate) fn north_ids(office: &Office) -> Vec<i64> {
    office
        .rows("SELECT id FROM assets WHERE region = 'north' AND status <> 'retired' ORDER BY id")
        .iter()
        .map(|r| r[0][1..].parse().unwrap())
        .collect()
}

/// The office holds the `assets` row `id` (`SELECT … FOR UPDATE` in an open
/// transaction) until the returned connection is dropped or commits.
pub(crate) fn hold_row(office: &Office, id: i64) -> postgres::Client {
    let mut holder = office.pg();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM assets WHERE id = {id} FOR UPDATE"
        ))
        .unwrap();
    holder
}

/// The latest base the PostgreSQL server handed to `device`.
pub(crate) fn latest_base(office: &Office, device: &str) -> i64 {
    office
        .value(&format!(
            "SELECT max(id) FROM fieldsync.bases WHERE device = '{device}'"
        ))
        .parse()
        .unwrap_or_else(|e| panic!("no base for {device}: {e}"))
}

/// `n` more tasks, written the way `task apply` and `task assign` store them, in one
/// transaction (10,000 `fieldsync admin` processes would take minutes): copies of the
/// north task, each assigned to one of 100 other users and one of 100 other devices;
/// 1 % also to `user` (on other devices), another 1 % also to `device` (for other
/// users). None is assigned to both.
fn bulk_tasks(office: &Office, n: usize, user: &str, device: &str) {
    let t = |name: &str| office.own_table(name);
    let numbers = numbers_table(office, n);
    let (name, user_col) = match office.engine() {
        Engine::Sqlite => ("printf('bulk-%05d', i)", "user"),
        Engine::Postgres => ("'bulk-' || lpad(i::text, 5, '0')", "user_name"),
    };
    office.execute_batch(&format!(
        "BEGIN;
         {numbers}
         INSERT INTO {users} (name, password_hash, created_at)
           SELECT 'bulk-user-' || i, 'x', '2026-01-01T00:00:00Z' FROM n WHERE i < 100;
         INSERT INTO {devices} (id, created_at)
           SELECT 'bulk-dev-' || i, '2026-01-01T00:00:00Z' FROM n WHERE i < 100;
         INSERT INTO {tasks} (name, definition, hash, updated_at)
           SELECT {name}, replace(t.definition, '\"name\":\"{NORTH_TASK}\"', '\"name\":\"' || {name} || '\"'),
                  'hash-' || {name}, t.updated_at
           FROM n, {tasks} t WHERE t.name = '{NORTH_TASK}';
         INSERT INTO {versions} (hash, name, definition, at)
           SELECT hash, name, definition, updated_at FROM {tasks} WHERE name LIKE 'bulk-%';
         INSERT INTO {task_users} (task, {user_col}) SELECT {name}, 'bulk-user-' || (i % 100) FROM n;
         INSERT INTO {task_devices} (task, device) SELECT {name}, 'bulk-dev-' || (i % 100) FROM n;
         INSERT INTO {task_users} (task, {user_col}) SELECT {name}, '{user}' FROM n WHERE i % 100 = 7;
         INSERT INTO {task_devices} (task, device) SELECT {name}, '{device}' FROM n WHERE i % 100 = 8;
         DROP TABLE n;
         COMMIT;",
        users = t("users"),
        devices = t("devices"),
        tasks = t("tasks"),
        versions = t("task_versions"),
        task_users = t("task_users"),
        task_devices = t("task_devices"),
    ));
    // Each copy names itself (the definition's own name was replaced).
    assert_eq!(
        office.value(&format!(
            "SELECT count(*) FROM {} WHERE definition LIKE '%\"name\":\"bulk-%'",
            t("tasks")
        )),
        n.to_string()
    );
}

/// Issue #11, point 7: with 10,000 tasks, `device tasks`, a download and an upload
/// cost what they cost with one. Each request used to load every task with its users
/// and devices (0.4 s per request at 1,000 tasks); now it asks the assignment tables
/// by index for the tasks of this user and this device. And with 100,000 more devices
/// assigned to the device's own task (a fleet on one task): each request read the
/// task's whole list of devices, which it does not need; now it reads its users only.
///
/// Measured: the HTTP request itself, made by the test on loopback with the device's
/// credentials (a `fieldsync device tasks` process would add its own start and login
/// state reading, a few milliseconds that are not the server's): the median of 21
/// requests after 3 to warm up; the server is the debug build the tests run.
fn device_requests_cost_the_same_with_many_tasks_and_devices() {
    let office = Office::new(40);
    let dev = office.device("tab1", &[NORTH_TASK]);
    dev.login("ana").ok();
    dev.run(&["download", NORTH_TASK], "").ok();
    let base: i64 = office
        .value(match office.engine() {
            Engine::Sqlite => "SELECT max(high) FROM fieldsync_bases WHERE device = 'tab1'",
            Engine::Postgres => "SELECT max(id) FROM fieldsync.bases WHERE device = 'tab1'",
        })
        .parse()
        .unwrap();
    let ids = north_ids(&office);
    assert!(ids.len() >= 15, "{ids:?}");
    let headers = device_headers(&dev);
    let url = &office.server.url;
    let time = |path: &str| {
        let mut times = Vec::new();
        for i in 0..24 {
            let started = Instant::now();
            let answer = http(url, "GET", path, &headers, b"");
            let took = started.elapsed();
            assert_eq!(answer.status, 200, "{path}: {}", answer.text());
            if i >= 3 {
                times.push(took);
            }
        }
        median(times)
    };
    // Uploads of one change each, to rows of their own (`ids[from..from + 5]`).
    let uploads = |from: usize| {
        let times = (from..from + 5)
            .map(|i| {
                let upload = upload_of(vec![rename(0, ids[i], base, format!("renamed {i}"))]);
                let started = Instant::now();
                let answer = post_upload(url, &headers, &upload);
                let took = started.elapsed();
                assert_eq!(answer.status, 200, "{}", answer.text());
                assert_eq!(answer.json()["applied"], 1);
                took
            })
            .collect();
        median(times)
    };
    let download_path = format!("/api/v1/tasks/{NORTH_TASK}/download");
    let before = (time("/api/v1/tasks"), time(&download_path), uploads(0));

    bulk_tasks(&office, 10_000, "ana", "tab1");
    // The real command lists exactly the task assigned to both.
    let listed = dev.run(&["tasks"], "").ok().stdout;
    let names: Vec<&str> = listed
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(names, [NORTH_TASK], "{listed}");
    let tasks = http(url, "GET", "/api/v1/tasks", &headers, b"").json();
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
    assert_eq!(tasks[0]["name"], NORTH_TASK);
    // A task assigned to the user on other devices only, or to the device for other
    // users only, stays refused.
    for other in ["bulk-00007", "bulk-00008", "bulk-00009"] {
        let refused = http(
            url,
            "GET",
            &format!("/api/v1/tasks/{other}/download"),
            &headers,
            b"",
        );
        assert_eq!(refused.status, 403, "{other}: {}", refused.text());
    }
    let after = (time("/api/v1/tasks"), time(&download_path), uploads(5));
    eprintln!(
        "{:?}, medians with 2 tasks / with 10,002 tasks: GET tasks {:?} / {:?}, \
         download {:?} / {:?}, one-entry upload {:?} / {:?}",
        office.engine(),
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2
    );
    // A gross bound only (the list took 2-3 ms on a quiet machine, 29 ms under a
    // load of 6, so 20 ms failed there); the comparison below is the point.
    assert!(
        after.0 < Duration::from_millis(250),
        "the task list took {:?} with 10,000 tasks",
        after.0
    );
    // The same cost, give or take the noise of a shared machine.
    let same = |what: &str, before: Duration, after: Duration| {
        assert!(
            after < before * 2 + Duration::from_millis(10),
            "{what}: {before:?} with 2 tasks, {after:?} with 10,002"
        );
    };
    same("GET tasks", before.0, after.0);
    same("download", before.1, after.1);
    same("upload", before.2, after.2);

    fleet_on_task(&office, 100_000, NORTH_TASK);
    let fleet = (time("/api/v1/tasks"), time(&download_path), uploads(10));
    eprintln!(
        "{:?}, medians with 100,000 more devices on the task: GET tasks {:?}, download {:?}, \
         one-entry upload {:?}",
        office.engine(),
        fleet.0,
        fleet.1,
        fleet.2
    );
    same("GET tasks", before.0, fleet.0);
    same("download", before.1, fleet.1);
    same("upload", before.2, fleet.2);
}

/// A statement making the temporary table `n` of the numbers `0..n` (column `i`).
fn numbers_table(office: &Office, n: usize) -> String {
    match office.engine() {
        Engine::Sqlite => format!(
            "CREATE TEMP TABLE n AS WITH RECURSIVE c (i) AS
               (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < {n} - 1) SELECT i FROM c;"
        ),
        Engine::Postgres => {
            format!("CREATE TEMP TABLE n AS SELECT generate_series(0, {n} - 1) AS i;")
        }
    }
}

/// `n` devices more, each assigned to `task`.
fn fleet_on_task(office: &Office, n: usize, task: &str) {
    let t = |name: &str| office.own_table(name);
    let numbers = numbers_table(office, n);
    office.execute_batch(&format!(
        "BEGIN;
         {numbers}
         INSERT INTO {devices} (id, created_at) SELECT 'fleet-' || i, '2026-01-01T00:00:00Z' FROM n;
         INSERT INTO {task_devices} (task, device) SELECT '{task}', 'fleet-' || i FROM n;
         DROP TABLE n;
         COMMIT;",
        devices = t("devices"),
        task_devices = t("task_devices"),
    ));
    assert_eq!(
        office.value(&format!(
            "SELECT count(*) FROM {} WHERE task = '{task}'",
            t("task_devices")
        )),
        (n + 1).to_string()
    );
}

#[test]
fn device_requests_cost_the_same_with_ten_thousand_tasks_and_a_fleet_sqlite() {
    on_engine(
        Engine::Sqlite,
        device_requests_cost_the_same_with_many_tasks_and_devices,
    );
}

#[test]
fn device_requests_cost_the_same_with_ten_thousand_tasks_and_a_fleet_postgres() {
    on_engine(
        Engine::Postgres,
        device_requests_cost_the_same_with_many_tasks_and_devices,
    );
}

/// Entries of the forbidden upload (`FIELDSYNC_TEST_FORBIDDEN_ENTRIES`).
fn forbidden_entries() -> usize {
    std::env::var("FIELDSYNC_TEST_FORBIDDEN_ENTRIES")
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(200_000)
}

/// Issue #11, point 6: a forbidden upload whose forbidden entry is the last of a
/// very large one (200,000 entries by default, 1,000,000 for the issue's figure) is
/// refused without ever holding SQLite's write lock. Every entry before the last is
/// a valid rename of a north asset; the last deletes one, which the task does not
/// allow. It used to be judged entry by entry inside `BEGIN IMMEDIATE` (every rename
/// written, then all rolled back): office writers were locked out the whole time (8 s
/// for 1.2 M entries, release build).
///
/// While the server reads and judges the upload, an office program writes in a loop
/// with `busy_timeout = 0` (`BEGIN IMMEDIATE`, an insert, `COMMIT`, 1 ms pause) and
/// measures the longest stretch in which it could not get the write lock. The only
/// write of the refused upload is one row of the sync history, a millisecond; the
/// bound is 200 ms. The largest upload the server accepts is sent: when it answers
/// 413 (a cap on an upload's size or entries), the test halves the entries and sends
/// again, so the upload is always one the server judges.
#[test]
fn a_forbidden_upload_never_holds_the_sqlite_write_lock() {
    let office = Office::new(40);
    let dev = office.device("tab1", &[NORTH_TASK]);
    dev.login("ana").ok();
    dev.run(&["download", NORTH_TASK], "").ok();
    let base: i64 = office
        .value("SELECT max(high) FROM fieldsync_bases WHERE device = 'tab1'")
        .parse()
        .unwrap();
    let ids = north_ids(&office);
    office.execute_batch("CREATE TABLE office_notes (id INTEGER PRIMARY KEY, at TEXT)");
    let headers = device_headers(&dev);

    let mut n = forbidden_entries().max(2);
    loop {
        let mut entries: Vec<UploadEntry> = (0..n - 1)
            .map(|i| rename(i, ids[i % ids.len()], base, format!("forbidden-{i}")))
            .collect();
        let mut last = rename(n - 1, ids[0], base, String::new());
        last.op = WriteOp::Delete;
        last.new.clear();
        entries.push(last);
        let upload = upload_of(entries);

        let stop = Arc::new(AtomicBool::new(false));
        let office_writer = {
            let (path, stop) = (office.db_path.clone(), stop.clone());
            std::thread::spawn(move || office_writes(&path, &stop))
        };
        let started = Instant::now();
        let answer = post_upload(&office.server.url, &headers, &upload);
        let took = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        let (longest_wait, commits, busy) = office_writer.join().unwrap();
        if answer.status == 413 && n > 1_000 {
            eprintln!("{n} entries: 413 ({}); sending half as many", answer.text());
            n /= 2;
            continue;
        }
        eprintln!(
            "forbidden upload of {n} entries: answered in {took:?}; office writer: {commits} \
             commits, {busy} busy attempts, longest without the write lock {longest_wait:?}"
        );
        assert_eq!(answer.status, 403, "{}", answer.text());
        let message = answer.json()["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(&format!("entry {n} (delete of `assets`"))
                && message.contains("does not allow delete"),
            "{message}"
        );
        assert!(commits > 0, "the office wrote while the upload was judged");
        assert!(
            longest_wait < Duration::from_millis(200),
            "the office could not write for {longest_wait:?} while a forbidden upload of \
             {n} entries was judged ({busy} busy attempts)"
        );
        break;
    }
    // Nothing of it was applied.
    assert_eq!(
        office.value("SELECT count(*) FROM assets WHERE name LIKE 'forbidden-%'"),
        "0"
    );
    assert_eq!(office.uploads_recorded(), 0);
}

/// An office program writing in a loop without waiting for locks until `stop`: the
/// longest stretch it could not take the write lock, its commits, its busy attempts.
fn office_writes(path: &Path, stop: &AtomicBool) -> (Duration, u64, u64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::ZERO).unwrap();
    let (mut longest, mut commits, mut busy) = (Duration::ZERO, 0u64, 0u64);
    let mut blocked_since: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                if let Some(since) = blocked_since.take() {
                    longest = longest.max(since.elapsed());
                }
                conn.execute(
                    "INSERT INTO office_notes (at) VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    [],
                )
                .unwrap();
                conn.execute_batch("COMMIT").unwrap();
                commits += 1;
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                busy += 1;
                blocked_since.get_or_insert_with(Instant::now);
            }
            Err(e) => panic!("office write: {e}"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Some(since) = blocked_since {
        longest = longest.max(since.elapsed());
    }
    (longest, commits, busy)
}

/// Issue #11, point 6 on PostgreSQL: an upload waiting on a row the office holds
/// (`SELECT … FOR UPDATE` in an open transaction) gives up after the lock timeout
/// (`FIELDSYNC_LOCK_TIMEOUT_MS`, 1.5 s here) with the retryable "row locked in the
/// office, retry" (503, busy) and gives its pooled connection back. It used to wait
/// as long as the office did, holding a connection; a device's retries each held
/// another, and 32 of them took every connection of the server's pool, so logins and
/// every other device's requests waited (and failed after 30 s).
///
/// Here 40 uploads of the locked row (a device's sends and retries: more than the 32
/// pooled connections) wait together while 15 logins of another device and the sends
/// of two more devices must each be answered within 10 s; the office holds its lock
/// for 20 s. Then the device's own `send` fails with the message, and passes once the
/// office commits.
#[test]
fn uploads_waiting_on_an_office_row_lock_give_up_and_keep_the_pool() {
    let office = Office::new_pg(40);
    let mut command = Command::new(BIN);
    command.env("FIELDSYNC_LOCK_TIMEOUT_MS", "1500");
    let server = Server::start_by(command, &office.db_url);
    let url = server.url.clone();
    let on_server = |id: &str| on_server(&office, &url, id);
    let tab1 = on_server("tab1");
    let others: Vec<DeviceDir> = ["tab2", "tab3"].iter().map(|id| on_server(id)).collect();
    let logins = office.device("tab9", &[NORTH_TASK]);
    logins.use_server(&url);

    let ids = north_ids(&office);
    let (locked, free) = (ids[0], ids[1]);
    tab1.replica()
        .execute_batch(&format!(
            "UPDATE assets SET name = 'from tab1' WHERE id = {locked}"
        ))
        .unwrap();
    for (i, dev) in others.iter().enumerate() {
        dev.replica()
            .execute_batch(&format!(
                "UPDATE assets SET name = 'from tab{}' WHERE id = {}",
                i + 2,
                ids[2 + i]
            ))
            .unwrap();
    }
    let base = latest_base(&office, "tab1");

    // The office holds the row for 20 s.
    let mut holder = hold_row(&office, locked);
    let held_at = Instant::now();

    let headers = device_headers(&tab1);
    let waiting: Vec<_> = (0..40)
        .map(|i| {
            let (url, headers) = (url.clone(), headers.clone());
            std::thread::spawn(move || {
                let upload = upload_of(vec![
                    rename(0, free, base, format!("free {i}")),
                    rename(1, locked, base, format!("retry {i}")),
                ]);
                let started = Instant::now();
                let answer = post_upload(&url, &headers, &upload);
                (answer, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Meanwhile, other requests: logins, other devices' sends.
    let login_headers = device_headers(&logins);
    let login_threads: Vec<_> = (0..15)
        .map(|_| {
            let (url, mut headers) = (url.clone(), login_headers.clone());
            headers.push(("content-type", "application/json".into()));
            std::thread::spawn(move || {
                let started = Instant::now();
                let answer = http(
                    &url,
                    "POST",
                    "/api/v1/login",
                    &headers,
                    br#"{"user":"ana","password":"ana-pw"}"#,
                );
                (answer.status, answer.text(), started.elapsed())
            })
        })
        .collect();
    // Their uploads wait their turn behind the locked ones (or, told "busy", the
    // answer's 5 s once).
    let sends: Vec<_> = others.iter().map(|dev| send_in_thread(dev, 3)).collect();
    for t in login_threads {
        let (status, text, took) = t.join().unwrap();
        assert_eq!(status, 200, "a login during the office lock: {text}");
        assert!(
            took < Duration::from_secs(10),
            "a login waited {took:?} while uploads waited on the office"
        );
    }
    for t in sends {
        let (run, took) = t.join().unwrap();
        assert_eq!(run.code, 0, "another device's send: {run:?}");
        assert!(took < Duration::from_secs(10), "a send took {took:?}");
    }
    // Each is told to retry: those that waited for the row by "row locked", the rest
    // at once, as the server holds only so many uploads of one device at a time.
    let mut slowest = Duration::ZERO;
    let mut told_locked = 0;
    for t in waiting {
        let (answer, took) = t.join().unwrap();
        assert_eq!(answer.status, 503, "{}", answer.text());
        let body = answer.json();
        assert_eq!(body["code"], "busy", "{body}");
        let message = body["message"].as_str().unwrap();
        if message.contains("row locked in the office, retry") {
            told_locked += 1;
        } else {
            assert!(message.contains("uploads in the server's hands"), "{body}");
        }
        slowest = slowest.max(took);
    }
    assert!(told_locked >= 2, "{told_locked} uploads waited for the row");
    eprintln!(
        "40 uploads on a row the office held: slowest answer {slowest:?}; 15 logins and 2 \
         sends answered meanwhile"
    );
    // Far less than the office's 20 s: the device's two uploads in the server's hands
    // wait 1.5 s each for the row.
    assert!(
        slowest < Duration::from_secs(15),
        "an upload waited {slowest:?}"
    );
    assert!(held_at.elapsed() < Duration::from_secs(20));

    // The device itself: told to retry, nothing applied; then it passes.
    let failed = tab1.run_env(&["send"], &[("FIELDSYNC_RETRIES", "1")]);
    assert_ne!(failed.code, 0, "{failed:?}");
    assert!(
        failed.stderr.contains("row locked in the office, retry"),
        "{failed:?}"
    );
    assert_ne!(
        office.value(&format!("SELECT name FROM assets WHERE id = {locked}")),
        "from tab1"
    );
    // The office keeps its lock to the 20 s it promised, then commits.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(held_at.elapsed()));
    holder.batch_execute("COMMIT").unwrap();
    tab1.run(&["send"], "").ok();
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {locked}")),
        "from tab1"
    );
    drop(server);
}
