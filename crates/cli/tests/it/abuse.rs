//! Hostile bodies (issue [security], acceptance 2): every POST and PUT route of the real
//! `fieldsync server run`, given random bytes, JSON nested 100,000 deep, a 64 MB body
//! and slowloris clients (headers, then a body, a byte a second), answers 4xx or
//! closes the connection, never 5xx, never hangs; `/health` answers 200 within 1 s
//! all along, and the server's memory stays bounded. Each route is tried without
//! credentials and with a logged-in device's, so that its body is read.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The POST and PUT routes, as `/api/openapi.json` names them: a new one fails the
/// test until it is added here (and so tried below).
const WRITE_ROUTES: [(&str, &str); 6] = [
    ("POST", "/api/v1/pair"),
    ("POST", "/api/v1/login"),
    ("POST", "/api/v1/logout"),
    ("POST", "/api/v1/tickets/redeem"),
    ("PUT", "/api/v1/files/{sha256}/upload"),
    ("POST", "/api/v1/uploads"),
];

/// The server's header and idle timeouts here (seconds): small, so slowloris clients
/// are cut quickly.
const HEADER_TIMEOUT: u64 = 2;
const IDLE_TIMEOUT: u64 = 3;
/// A body's grace before it must keep the minimum rate (`UPLOAD_BODY_GRACE_SECS`).
const BODY_GRACE: u64 = fieldsync_proto::wire::UPLOAD_BODY_GRACE_SECS;
/// The server's memory bound during the test, in MB.
const BOUND_MB: u64 = 150;

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// An answer with this status.
    Status(u16),
    /// The server closed (or reset) the connection without an answer.
    Closed,
}

/// The credentials a request carries: device id, secret, session token.
type Creds = Option<(String, String, String)>;

struct Target {
    addr: String,
    creds: (String, String),
}

impl Target {
    /// A new session of ana on the device (logouts end them, so each request has
    /// its own).
    fn login(&self) -> Creds {
        let (id, secret) = &self.creds;
        let body = r#"{"user":"ana","password":"ana-pw"}"#;
        let head = format!(
            "POST /api/v1/login HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             x-fieldsync-protocol: 1\r\nx-fieldsync-device: {id}\r\n\
             x-fieldsync-device-secret: {secret}\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let json = answer.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        Some((
            id.clone(),
            secret.clone(),
            json["token"].as_str().unwrap().to_string(),
        ))
    }

    /// The request head of `method route` with `creds`, announcing `length` bytes of
    /// body whose CRC-32 is `crc` (for uploads).
    fn head(&self, method: &str, route: &str, creds: &Creds, length: u64, crc: u32) -> String {
        let path = route.replace("{sha256}", &"ab".repeat(32));
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             x-fieldsync-protocol: 1\r\nContent-Length: {length}\r\n\
             content-type: application/json\r\nx-fieldsync-body-crc32: {crc:08x}\r\n\
             x-fieldsync-file-offset: 0\r\nx-fieldsync-file-size: {length}\r\n",
            self.addr
        );
        if let Some((id, secret, token)) = creds {
            head += &format!(
                "x-fieldsync-device: {id}\r\nx-fieldsync-device-secret: {secret}\r\n\
                 Authorization: Bearer {token}\r\n"
            );
        }
        head + "\r\n"
    }

    /// Sends `head` then the body `chunks` yields (at most one chunk in memory), and
    /// reads how it ended within `patience`.
    fn send(&self, head: &str, chunks: impl Iterator<Item = Vec<u8>>, patience: Duration) -> End {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_write_timeout(Some(patience)).unwrap();
        s.set_read_timeout(Some(patience)).unwrap();
        let started = Instant::now();
        if s.write_all(head.as_bytes()).is_ok() {
            for chunk in chunks {
                if s.write_all(&chunk).is_err() {
                    break;
                }
                assert!(
                    started.elapsed() < patience,
                    "still taking the body after {patience:?}"
                );
            }
        }
        ended(&mut s, started, patience, Vec::new())
    }
}

/// How the connection ended: the answer's status, or closed; a read that waits past
/// `patience` is a hang.
fn ended(s: &mut TcpStream, started: Instant, patience: Duration, mut answer: Vec<u8>) -> End {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if is_wait(&e) => {
                panic!(
                    "no answer and no close after {:?} (patience {patience:?})",
                    started.elapsed()
                )
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&answer);
    match text.split(' ').nth(1).and_then(|c| c.parse().ok()) {
        Some(status) => End::Status(status),
        None => End::Closed,
    }
}

/// Pseudo-random bytes (xorshift), the same every run.
fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn nested(depth: usize) -> Vec<u8> {
    let mut v = vec![b'['; depth];
    v.extend(std::iter::repeat_n(b']', depth));
    v
}

/// An upload body as a device sends it (zstd), of JSON `text`.
fn zstd(text: &[u8]) -> Vec<u8> {
    zstd::encode_all(text, 3).unwrap()
}

/// GET /health every 100 ms until stopped: the slowest answer, and any that was not
/// 200 or took over 1 s.
fn watch_health(
    addr: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Duration, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut slowest, mut bad) = (Duration::ZERO, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let answer = (|| {
                let mut s = TcpStream::connect(&addr).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                s.write_all(
                    format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .ok()?;
                let mut text = String::new();
                s.read_to_string(&mut text).ok()?;
                Some(text)
            })();
            let took = t.elapsed();
            slowest = slowest.max(took);
            match answer {
                Some(text) if text.starts_with("HTTP/1.1 200") && took < Duration::from_secs(1) => {
                }
                other => bad.push(format!("after {took:?}: {other:?}")),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (slowest, bad)
    })
}

/// Sends `head`, then `bytes` one a second until the server answers or closes the
/// connection: how it ended, and when.
fn trickle(
    addr: &str,
    head: &[u8],
    bytes: impl Iterator<Item = u8>,
    patience: Duration,
) -> (End, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = s.write_all(head);
    for b in bytes {
        if s.write_all(&[b]).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                break;
            }
            Err(e) if is_wait(&e) => {}
            Err(_) => break,
        }
        assert!(
            started.elapsed() < patience,
            "trickled for {patience:?}, neither answered nor cut"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    s.set_read_timeout(Some(patience)).unwrap();
    let rest = ended(&mut s, started, patience, got);
    (rest, started.elapsed())
}

fn is_wait(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The route that reads no body: a logout with good credentials is a logout
/// whatever follows its headers.
const TAKES_NO_BODY: &str = "/api/v1/logout";

#[track_caller]
fn assert_refused(what: &str, end: &End) {
    match end {
        End::Closed => {}
        End::Status(s) if (400..500).contains(s) => {}
        End::Status(204) if what.contains(TAKES_NO_BODY) && what.contains("credentials: true") => {}
        other => panic!("{what}: {other:?}, not 4xx or a close"),
    }
}

#[test]
fn hostile_bodies_get_4xx_or_a_close_and_the_server_keeps_serving() {
    let mut office = Office::new(20);
    let path = office.dir.0.join("north-files.toml");
    std::fs::write(&path, crate::files::north_with_files()).unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    let mut flags = crate::files::files_flags(&office);
    for f in [
        "--header-timeout",
        &HEADER_TIMEOUT.to_string(),
        "--idle-timeout",
        &IDLE_TIMEOUT.to_string(),
    ] {
        flags.push(f.to_string());
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    office.server = Server::start_with(&office.db_url, &flags);
    let dev = office.device("tab1", &["north-inspections"]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let target = Arc::new(Target {
        addr: office.server.addr().to_string(),
        creds: (
            "tab1".to_string(),
            state["device_secret"].as_str().unwrap().to_string(),
        ),
    });

    // The routes tried are every POST and PUT route the server describes.
    let doc: serde_json::Value = ureq::get(&format!("{}/api/openapi.json", office.server.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let mut described = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if method == "post" || method == "put" {
                described.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let listed: BTreeSet<(String, String)> = WRITE_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        listed, described,
        "WRITE_ROUTES (left) and the server's differ"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let health = watch_health(target.addr.clone(), stop.clone());

    // The slowloris clients run meanwhile, one per route and credentials.
    let slow: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut slowloris = Vec::new();
    for _ in 0..3 {
        let addr = target.addr.clone();
        slowloris.push(std::thread::spawn(move || {
            let (end, took) = trickle(
                &addr,
                b"POST /api/v1/login HTTP/1.1\r\n",
                b"x-fieldsync-protocol: 1\r\nHost: slow\r\n"
                    .iter()
                    .copied()
                    .cycle(),
                Duration::from_secs(HEADER_TIMEOUT + 10),
            );
            assert_refused("slow headers", &end);
            assert!(
                took < Duration::from_secs(HEADER_TIMEOUT + 3),
                "slow headers held {took:?}"
            );
        }));
    }
    for (method, route) in WRITE_ROUTES {
        for authenticated in [false, true] {
            let (target, slow) = (target.clone(), slow.clone());
            slowloris.push(std::thread::spawn(move || {
                let creds = if authenticated { target.login() } else { None };
                let head = target.head(method, route, &creds, 4096, 0);
                let (end, took) = trickle(
                    &target.addr,
                    head.as_bytes(),
                    std::iter::repeat(b'['),
                    Duration::from_secs(BODY_GRACE + 15),
                );
                let what = format!("{method} {route} (credentials: {authenticated})");
                assert_refused(&what, &end);
                slow.lock()
                    .unwrap()
                    .push(format!("{what}: {end:?} after {took:.1?}"));
            }));
        }
    }

    let patience = Duration::from_secs(60);
    let mut seen = Vec::new();
    for (method, route) in WRITE_ROUTES {
        for authenticated in [false, true] {
            let creds = |t: &Target| if authenticated { t.login() } else { None };
            let what =
                |case: &str| format!("{method} {route} (credentials: {authenticated}): {case}");
            // Random bytes.
            let body = garbage(4096, 7);
            let head = target.head(
                method,
                route,
                &creds(&target),
                4096,
                fieldsync_proto::upload_body::crc32(&body),
            );
            let end = target.send(&head, std::iter::once(body), patience);
            assert_refused(&what("random bytes"), &end);
            seen.push(format!("{}: {end:?}", what("random bytes")));
            // JSON nested 100,000 deep, as sent and as an upload carries it (zstd,
            // its checksum right: what the decoder reads), in the places of an upload
            // where JSON nests.
            let deep = nested(100_000);
            // 30,000 deep fits a JSON route's 64 KiB: its parser is reached.
            let mut bodies = vec![deep.clone(), nested(30_000)];
            if route == "/api/v1/uploads" {
                let wrap = |before: &str, after: &str| {
                    let mut v = before.as_bytes().to_vec();
                    v.extend_from_slice(&deep);
                    v.extend_from_slice(after.as_bytes());
                    zstd(&v)
                };
                bodies.push(zstd(&deep));
                bodies.push(wrap(
                    r#"{"upload_id":"x","task":"north-inspections","entries":"#,
                    "}",
                ));
                bodies.push(wrap(
                    r#"{"upload_id":"x","task":"north-inspections","other":"#,
                    r#","entries":[]}"#,
                ));
                bodies.push(wrap(
                    r#"{"upload_id":"x","task":"north-inspections","entries":[{"seq_first":1,"seq_last":1,"table":"inspections","key":"k","op":"insert","base_version":null,"user":"ana","new":{"id":"#,
                    "}}]}",
                ));
                bodies.push(wrap(
                    r#"{"upload_id":"x","task":"north-inspections","entries":[],"attachments":"#,
                    "}",
                ));
            }
            for (i, body) in bodies.into_iter().enumerate() {
                let head = target.head(
                    method,
                    route,
                    &creds(&target),
                    body.len() as u64,
                    fieldsync_proto::upload_body::crc32(&body),
                );
                let end = target.send(&head, std::iter::once(body), patience);
                assert_refused(&what(&format!("nested JSON {i}")), &end);
                seen.push(format!("{}: {end:?}", what(&format!("nested JSON {i}"))));
            }
            // 64 MB, made as it is sent.
            const MB64: u64 = 64 * 1024 * 1024;
            let head = target.head(method, route, &creds(&target), MB64, 0);
            let chunks = (0..MB64 / 65536).map(|i| garbage(65536, i + 1));
            let end = target.send(&head, chunks, patience);
            assert_refused(&what("64 MB"), &end);
            seen.push(format!("{}: {end:?}", what("64 MB")));
        }
    }
    for t in slowloris {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (slowest, bad) = health.join().unwrap();
    eprintln!("{}", seen.join("\n"));
    eprintln!("{}", slow.lock().unwrap().join("\n"));
    eprintln!("slowest /health: {slowest:?}");
    assert!(bad.is_empty(), "/health answered otherwise: {bad:?}");
    let peak = office.server.peak_rss_kb() / 1024;
    eprintln!("server peak memory: {peak} MB");
    assert!(peak < BOUND_MB, "the server's memory reached {peak} MB");
    // Still serving: a device logs in and downloads.
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
}
