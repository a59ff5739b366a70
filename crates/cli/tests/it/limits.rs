//! Bounded resources under crowds and hostile clients (the "[limits]" issue): what a
//! crowd of requests may cost the server.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// One raw HTTP/1.1 request to the server; the status code of its answer.
fn raw_request(url: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let addr = addr_of(url);
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Each argon2 verification takes about 19 MiB: 64 logins at once must not take 64
/// times that (they took 1.9 GB, 1.3 GB on this machine). Verifications run on one
/// thread per core, each in memory given back to the system when it ends (a plain
/// fresh allocation per verification peaked at 147–208 MB, as glibc kept it; memory
/// kept for the next login held 19 MiB per thread for good); measured 52 MB. The
/// issue's target is 200 MB; asserted: 100 MB, and that the hash memory is gone once
/// the logins are answered.
#[test]
fn sixty_four_concurrent_logins_stay_far_below_one_verification_each() {
    let mut office = Office::new(5);
    let dev = office.device("tab1", &["north-inspections"]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let secret = state["device_secret"].as_str().unwrap().to_string();
    // 32 wrong passwords on purpose: a server that throttles none of them.
    let mut cmd = std::process::Command::new(BIN);
    cmd.env("FIELDSYNC_LOGIN_LIMIT", "1000");
    office.server = Server::start_by(cmd, &office.db_url);
    let before_kb = office.server.peak_rss_kb();
    let logins: Vec<_> = (0..64)
        .map(|i| {
            let (url, secret) = (office.server.url.clone(), secret.clone());
            std::thread::spawn(move || {
                // Right and wrong passwords cost the same verification.
                let password = if i % 2 == 0 { "ana-pw" } else { "wrong" };
                raw_request(
                    &url,
                    "POST",
                    "/api/v1/login",
                    &[
                        ("content-type", "application/json"),
                        ("x-fieldsync-protocol", "1"),
                        ("x-fieldsync-device", "tab1"),
                        ("x-fieldsync-device-secret", &secret),
                    ],
                    &format!(r#"{{"user":"ana","password":"{password}"}}"#),
                )
            })
        })
        .collect();
    let codes: Vec<u16> = logins.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 32, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 32, "{codes:?}");
    let peak_mb = office.server.peak_rss_kb() / 1024;
    let after_kb = office.server.rss_kb();
    eprintln!(
        "64 concurrent logins: server peak RSS {peak_mb} MB (before: {} MB, after: {} MB)",
        before_kb / 1024,
        after_kb / 1024
    );
    assert!(peak_mb < 100, "server peak RSS {peak_mb} MB");
    // Less than one verification's 19 MiB stays (two stayed, one per hashing thread).
    assert!(
        after_kb < before_kb + 12 * 1024,
        "server RSS {after_kb} kB after the logins, {before_kb} kB before"
    );
}

/// A task `photos` over a table of `rows` rows of 8,000 random hex characters each
/// (about 4 KB compressed per row): a slice far larger than the socket buffers, so
/// that a client that stops reading stalls the server's stream.
fn photos_task(office: &Office, rows: u32) {
    let sql = match office.engine() {
        Engine::Sqlite => format!(
            "CREATE TABLE photos (id TEXT PRIMARY KEY, data TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO photos SELECT 'p' || i, hex(randomblob(4000)) FROM n;"
        ),
        Engine::Postgres => format!(
            "CREATE TABLE photos (id text PRIMARY KEY, data text);
             INSERT INTO photos SELECT 'p' || i,
                 (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 250) j)
             FROM generate_series(1, {rows}) i;"
        ),
    };
    office.execute_batch(&sql);
    office.admin(&["table", "track", "photos"], "").ok();
    let toml = "name = \"photos\"\n[[tables]]\nname = \"photos\"\n";
    office.apply_task("photos.toml", toml, "photos", "ana");
}

/// A device of `office` with the photos task, logged in as ana, using `server`.
fn photos_device(office: &Office, id: &str, server: &Server) -> DeviceDir {
    let dev = office.device(id, &["photos"]);
    dev.login("ana").ok();
    dev.use_server(&server.url);
    dev
}

/// The request headers of a device's session (from its state file).
fn session_headers(dev: &DeviceDir) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    format!(
        "x-fieldsync-protocol: 1\r\nx-fieldsync-device: {}\r\nx-fieldsync-device-secret: {}\r\nauthorization: Bearer {}\r\n",
        state["device_id"].as_str().unwrap(),
        state["device_secret"].as_str().unwrap(),
        state["session"]["token"].as_str().unwrap()
    )
}

/// Starts a download of task `photos` on a raw socket and reads only the status
/// line: the server streams until the socket's buffers are full, then stalls.
fn stalled_download(url: &str, headers: &str) -> (TcpStream, u16) {
    let addr = addr_of(url);
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /api/v1/tasks/photos/download HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n"
    )
    .unwrap();
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).unwrap();
    let code = String::from_utf8_lossy(&status[9..12]).parse().unwrap_or(0);
    (stream, code)
}

/// How long after `start` the server closed `stream` (reading and discarding what it
/// sends); `None` if it is still open `limit` after `start`.
fn closed_within(mut stream: TcpStream, start: Instant, limit: Duration) -> Option<Duration> {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Slowloris: a socket that sends nothing, one that trickles its headers forever,
/// one whose body never comes (a lying Content-Length) and an idle keep-alive were
/// all held open forever. Each is closed within its timeout now, while the server
/// keeps answering.
#[test]
fn slow_and_idle_connections_are_closed_within_their_timeouts() {
    let office = Office::new(5);
    let server = Server::start_with(
        &office.db_url,
        &["--header-timeout", "1", "--idle-timeout", "2"],
    );
    let addr = server.addr().to_string();
    let start = Instant::now();
    let silent = TcpStream::connect(&addr).unwrap();
    let trickle = TcpStream::connect(&addr).unwrap();
    let trickler = trickle.try_clone().unwrap();
    let trickling = std::thread::spawn(move || {
        let mut t = trickler;
        let _ = t.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ");
        for _ in 0..50 {
            if t.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut lying = TcpStream::connect(&addr).unwrap();
    write!(
        lying,
        "POST /api/v1/login HTTP/1.1\r\nHost: {addr}\r\nx-fieldsync-protocol: 1\r\ncontent-type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"user\""
    )
    .unwrap();
    let mut keep_alive = TcpStream::connect(&addr).unwrap();
    write!(keep_alive, "GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = [0u8; 12];
    keep_alive.read_exact(&mut answer).unwrap();
    assert_eq!(&answer[9..12], b"200");

    let limit = Duration::from_secs(15);
    let waits = [
        ("silent", closed_within(silent, start, limit), 1.0),
        (
            "trickled headers",
            closed_within(trickle.try_clone().unwrap(), start, limit),
            1.0,
        ),
        ("body never sent", closed_within(lying, start, limit), 2.0),
        (
            "idle keep-alive",
            closed_within(keep_alive, start, limit),
            2.0,
        ),
    ];
    let _ = trickle.shutdown(std::net::Shutdown::Both);
    trickling.join().unwrap();
    for (what, waited, timeout) in waits {
        let waited = waited.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        eprintln!("{what}: closed after {waited:?}");
        assert!(
            waited.as_secs_f64() < timeout + 1.5,
            "{what}: closed after {waited:?}, timeout {timeout} s"
        );
    }
    assert_eq!(raw_request(&server.url, "GET", "/health", &[], ""), 200);
}

/// A crowd of sockets that send nothing, four times the connection limit: the server
/// keeps at most its limit open, closes each after the header timeout, and a request
/// that comes meanwhile is answered.
#[test]
fn a_crowd_of_idle_sockets_locks_nobody_out() {
    let office = Office::new(5);
    let server = Server::start_with(
        &office.db_url,
        &["--header-timeout", "1", "--max-connections", "50"],
    );
    let addr = server.addr().to_string();
    let start = Instant::now();
    let crowd: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let started = Instant::now();
    assert_eq!(raw_request(&server.url, "GET", "/health", &[], ""), 200);
    let answered = started.elapsed();
    eprintln!("/health answered after {answered:?} behind 200 idle sockets");
    assert!(answered < Duration::from_secs(10), "{answered:?}");
    let closers: Vec<_> = crowd
        .into_iter()
        .map(|s| std::thread::spawn(move || closed_within(s, start, Duration::from_secs(20))))
        .collect();
    let slowest = closers
        .into_iter()
        .map(|t| t.join().unwrap().expect("every idle socket is closed"))
        .max()
        .unwrap();
    // 200 sockets, 50 at a time, one second each: about 4 s.
    eprintln!("the last of 200 idle sockets closed after {slowest:?}");
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");
    let peak_mb = server.peak_rss_kb() / 1024;
    assert!(peak_mb < 100, "server peak RSS {peak_mb} MB");
}

/// The sockets a process holds open (its listener included).
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// A listening port's queues as `ss` shows them: the connections waiting to be
/// accepted now (Recv-Q) and the backlog they may fill (Send-Q).
fn listen_queues(port: u16) -> (u32, u32) {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // State, Recv-Q, Send-Q, local, peer.
    let field = |i: usize| -> u32 {
        text.split_whitespace()
            .nth(i)
            .and_then(|q| q.parse().ok())
            .unwrap_or_else(|| panic!("ss said {text:?}"))
    };
    (field(1), field(2))
}

/// By default the server holds 64 connections at once: a fleet docking together
/// waits past that in the kernel's backlog, which costs the server nothing, instead
/// of in the server's own queues at 16–35 KB a connection (BENCHMARKS.md,
/// "Connections past the turns wait in the kernel").
#[test]
fn by_default_the_server_holds_sixty_four_connections_and_the_kernel_the_rest() {
    let office = Office::new(3);
    let pid = office.server.child.id();
    let addr = office.server.addr();
    let before = sockets_of(pid);
    let crowd: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Within the header timeout (10 s), while none of the crowd was closed yet. The
    // server may still be accepting when all 100 are first counted: the reading
    // counts once it has stayed the same for a quarter of a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut held, mut waiting) = (0, 0);
    let mut same = 0;
    while Instant::now() < deadline {
        let now = (
            sockets_of(pid).saturating_sub(before),
            listen_queues(addr.port()).0,
        );
        same = if now == (held, waiting) { same + 1 } else { 0 };
        (held, waiting) = now;
        if held + waiting as usize == 100 && same >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (held, waiting),
        (64, 36),
        "accepted, waiting in the backlog"
    );
    drop(crowd);
}

/// SIGTERM with a download nobody reads, a half-sent request and an idle keep-alive
/// open: the server stops accepting, and exits within its shutdown deadline (it
/// waited for the download forever).
#[test]
fn sigterm_exits_within_the_shutdown_deadline() {
    let office = Office::new(5);
    photos_task(&office, 6000);
    let mut server = Server::start_with(&office.db_url, &["--shutdown-deadline", "2"]);
    let dev = photos_device(&office, "tab1", &server);
    let (stalled, code) = stalled_download(&server.url, &session_headers(&dev));
    assert_eq!(code, 200);
    let addr = server.addr().to_string();
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let idle = TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    let exited = loop {
        if server.child.try_wait().unwrap().is_some() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server still runs 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("exited {exited:?} after SIGTERM");
    assert!(exited < Duration::from_secs(4), "{exited:?}");
    drop((stalled, half, idle));
}

/// Dead row versions of table `scratch` that VACUUM may not remove yet (an open
/// snapshot may still see them), from VACUUM VERBOSE's report.
fn unremovable_after_vacuum(url: &str) -> u64 {
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut config: postgres::Config = url.parse().unwrap();
    let sink = notices.clone();
    config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    let mut client = config.connect(postgres::NoTls).unwrap();
    client.batch_execute("VACUUM (VERBOSE) scratch").unwrap();
    let report = notices.lock().unwrap().join("\n");
    // "tuples: 0 removed, 100 remain, 100 are dead but not yet removable"
    report
        .split(" are dead but not yet removable")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tuple counts in VACUUM's report: {report}"))
}

/// A hundred downloads whose clients stopped reading, on PostgreSQL: each held its
/// thread, its snapshot and a pool connection `idle in transaction` forever, and 33 of
/// them took every connection. Now at most two per device stream (the rest are told
/// "busy"), other devices log in and download meanwhile, and after the idle timeout
/// the stalled streams are cut: their snapshots no longer keep VACUUM from cleaning.
#[test]
fn a_hundred_stalled_downloads_on_postgres_are_cut_and_block_nobody() {
    let office = Office::new_pg(5);
    photos_task(&office, 3000);
    office.execute_batch(
        "CREATE TABLE scratch (id integer PRIMARY KEY, v integer);
         INSERT INTO scratch SELECT g, 0 FROM generate_series(1, 100) g;",
    );
    // Room on the server for every device's two (the default, 8, is fewer than ten)
    // and for all 100 connections at once (the default, 64, is fewer): the per-device
    // limit is what answers the rest.
    let server = Server::start_with(
        &office.db_url,
        &[
            "--idle-timeout",
            "3",
            "--max-downloads",
            "16",
            "--max-connections",
            "128",
        ],
    );
    let stallers: Vec<String> = (0..5)
        .map(|i| session_headers(&photos_device(&office, &format!("stall{i}"), &server)))
        .collect();
    let other = photos_device(&office, "other", &server);
    let stalled: Vec<(TcpStream, u16)> = (0..100)
        .map(|i| stalled_download(&server.url, &stallers[i % 5]))
        .collect();
    let streaming = stalled.iter().filter(|(_, c)| *c == 200).count();
    let busy = stalled.iter().filter(|(_, c)| *c == 503).count();
    assert_eq!((streaming, busy), (10, 90), "two streams per device");
    // Rows the office changes now are dead to VACUUM only once every snapshot older
    // than the change is gone.
    office.execute_batch("UPDATE scratch SET v = 1");
    let pinned = unremovable_after_vacuum(&office.db_url);
    assert_eq!(
        pinned, 100,
        "the stalled snapshots pin the old row versions"
    );
    // Meanwhile another device logs in and downloads.
    let started = Instant::now();
    other.login("ana").ok();
    other.run(&["download", "photos"], "").ok();
    eprintln!(
        "login and download beside 100 stalled downloads: {:?}",
        started.elapsed()
    );
    // After the idle timeout the stalled streams are cut.
    std::thread::sleep(Duration::from_secs(5));
    let open = office.value(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL",
    );
    assert_eq!(open, "0", "no server session holds a snapshot");
    assert_eq!(unremovable_after_vacuum(&office.db_url), 0);
    drop(stalled);
}

/// A server whose only download turn a stalled client holds until its idle timeout
/// (`idle_timeout` seconds) cuts it, and a device of the same task: the office, the
/// server, the device and the stalled stream.
fn one_turn_held(idle_timeout: &str) -> (Office, Server, DeviceDir, TcpStream) {
    let office = Office::new(5);
    photos_task(&office, 6000);
    let server = Server::start_with(
        &office.db_url,
        &["--max-downloads", "1", "--idle-timeout", idle_timeout],
    );
    let staller = photos_device(&office, "staller", &server);
    let dev = photos_device(&office, "tab1", &server);
    let (stalled, code) = stalled_download(&server.url, &session_headers(&staller));
    assert_eq!(code, 200);
    (office, server, dev, stalled)
}

/// A busy server says how long to wait (`Retry-After`), and the device waits that
/// long before asking again: with the only download turn held by a stalled client,
/// the device's download waits in line (a third of the idle timeout, 1 s), is told
/// "busy, retry in 5 s", and succeeds once the stalled stream is cut (its doubling
/// backoff alone, 0.5 s then 1 s, gave up before that).
#[test]
fn a_busy_download_is_retried_after_the_servers_retry_after() {
    let (_office, server, dev, stalled) = one_turn_held("3");
    let (mut busy, code) = stalled_download(&server.url, &session_headers(&dev));
    assert_eq!(code, 503);
    let mut head = [0u8; 512];
    let n = busy.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
    assert!(head.contains("retry-after: 5"), "{head}");
    let started = Instant::now();
    dev.run(&["download", "photos"], "").ok();
    let took = started.elapsed();
    eprintln!("download after a busy answer: {took:?}");
    assert!(took >= Duration::from_secs(5), "{took:?}");
    drop(stalled);
}

/// A device asks a busy server again as long as its patience lasts, past its attempts:
/// with one attempt and no patience it gives up at the first busy answer; with one
/// attempt and the default patience it is told busy (the stalled stream holds the
/// only slot for 8 s, longer than a download waits in line) and still downloads.
#[test]
fn a_busy_server_is_waited_for_past_the_attempts() {
    let (_office, _server, dev, stalled) = one_turn_held("8");
    let impatient = [
        ("FIELDSYNC_RETRIES", "1"),
        ("FIELDSYNC_BUSY_PATIENCE_MS", "0"),
    ];
    let run = dev.run_env(&["download", "photos"], &impatient);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("busy"), "{run:?}");
    let started = Instant::now();
    let run = dev.run_env(&["download", "photos"], &[("FIELDSYNC_RETRIES", "1")]);
    let took = started.elapsed();
    eprintln!("download with one attempt, past two busy answers: {took:?}");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(took >= Duration::from_secs(5), "{took:?}");
    drop(stalled);
}

/// A download that finds every turn taken waits in line instead of being told "busy":
/// with the only turn held by a stalled client (idle timeout 30 s, so a download may
/// wait 10 s), the device's download starts as soon as the stalled client goes away,
/// without the 5 s a busy answer would have cost it.
#[test]
fn a_download_waits_in_line_for_the_servers_turn() {
    let (_office, _server, dev, stalled) = one_turn_held("30");
    let started = Instant::now();
    let waiting = std::thread::spawn(move || {
        let run = dev.run(&["download", "photos"], "");
        (run, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    drop(stalled);
    let (run, took) = waiting.join().unwrap();
    eprintln!("download behind a stalled stream that went away after 1.5 s: {took:?}");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stderr.contains("busy"), "{run:?}");
    assert!(took >= Duration::from_millis(1500), "it waited: {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "no busy answer and retry: {took:?}"
    );
}

/// The environment `server run` ended up running with (its process's, as the kernel
/// recorded it when the running image started).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn server_environment(server: &Server) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// glibc gave each busy thread of the server an allocator arena of its own (up to
/// eight per core), each keeping what its threads freed: 200 devices syncing at once
/// held the server at 115–119 MB, one arena at 54–69 MB (BENCHMARKS.md, "The
/// server's arenas"), and fixed mapping and trim thresholds took 3 MB off a long
/// send ("A send within 32 MB"). `server run` starts itself again with them set
/// (crates/cli/src/arenas.rs): same process, still serving; an operator's own value
/// of each is kept, and `GLIBC_TUNABLES` leaves all to the operator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_server_runs_with_one_allocator_arena_unless_the_operator_says_otherwise() {
    const OURS: [&str; 3] = [
        "MALLOC_ARENA_MAX=1",
        "MALLOC_MMAP_THRESHOLD_=131072",
        "MALLOC_TRIM_THRESHOLD_=131072",
    ];
    let office = Office::new(3);
    let start = |vars: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        for v in [
            "MALLOC_ARENA_MAX",
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
        ] {
            command.env_remove(v);
        }
        command
            .env_remove("GLIBC_TUNABLES")
            .envs(vars.iter().copied());
        Server::start_by(command, &office.db_url)
    };
    let capped = start(&[]);
    let env = server_environment(&capped);
    for v in OURS {
        assert!(env.iter().any(|e| e == v), "{v} in {env:?}");
    }
    // The process the test started is the one serving, with its arguments.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", capped.child.id())).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("server\0run\0"));
    assert_eq!(raw_request(&capped.url, "GET", "/health", &[], ""), 200);
    // The operator's arena cap is kept; the thresholds it did not set are added.
    let own = start(&[("MALLOC_ARENA_MAX", "3")]);
    let env = server_environment(&own);
    assert!(env.iter().any(|v| v == "MALLOC_ARENA_MAX=3"), "{env:?}");
    assert!(!env.iter().any(|v| v == OURS[0]), "{env:?}");
    assert!(env.iter().any(|v| v == OURS[1]), "{env:?}");
    // glibc's tunables are the operator's whole say.
    let tuned = start(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")]);
    let env = server_environment(&tuned);
    assert!(!env.iter().any(|e| OURS.contains(&e.as_str())), "{env:?}");
    // A server that started itself again once does not a second time, even with the
    // variables gone (glibc may remove them from a program it runs in secure mode).
    let restarted = server_environment(&capped);
    assert!(
        restarted
            .iter()
            .any(|e| e == "FIELDSYNC_SERVER_RESTARTED=1"),
        "{restarted:?}"
    );
    let again = start(&[("FIELDSYNC_SERVER_RESTARTED", "1")]);
    let env = server_environment(&again);
    assert!(!env.iter().any(|e| OURS.contains(&e.as_str())), "{env:?}");
    assert_eq!(raw_request(&again.url, "GET", "/health", &[], ""), 200);
}

/// The server listens with a backlog of 4,096 (`server::LISTEN_BACKLOG`, capped by the
/// system's `net.core.somaxconn`), as `ss` reads it off the listening socket. With the
/// 128 of tokio's own `bind`, a round of 1,000 devices docking at once overflowed the
/// kernel's queue 4,346–4,591 times (`ListenOverflows`), none with 4,096
/// (BENCHMARKS.md, "A listen backlog for a fleet").
#[test]
fn the_server_keeps_four_thousand_connections_waiting_to_be_accepted() {
    let office = Office::new(3);
    let backlog = listen_queues(office.server.addr().port()).1;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(backlog, 4096.min(somaxconn), "somaxconn {somaxconn}");
    assert!(backlog > 128 || somaxconn <= 128, "somaxconn {somaxconn}");
}
