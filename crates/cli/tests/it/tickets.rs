//! Auto-sync tickets on the server (issue #14, item 2): every online login returns a
//! ticket; the requests of the pair's user sessions renew it (a download records its
//! task); `POST /api/v1/tickets/redeem` turns it, once, into an automatic session that
//! may only upload and download that task. The device does not keep the ticket yet,
//! so the tests log in and redeem by hand, over plain HTTP on loopback, with the
//! device's own credentials from its state file; the automatic session's uploads and
//! downloads go through the real `fieldsync device` commands.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

const NORTH_TASK: &str = "north-inspections";
const SOUTH_TASK: &str = "south-work-orders";

/// One HTTP/1.1 request with a JSON body (or none) on a new loopback connection: the
/// status and the JSON answer (`null` for an empty one).
fn http(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, serde_json::Value) {
    let addr = addr_of(url);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         content-type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    // A streamed answer (a download's slice) is not JSON: named as such.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, "a streamed body".into());
    }
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {body}"))
    };
    (status, json)
}

/// The device's state file.
fn state(dev: &DeviceDir) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap()
}

/// The paired device's credentials (no session), as its requests carry them.
fn device_headers(dev: &DeviceDir) -> Vec<(&'static str, String)> {
    let state = state(dev);
    vec![
        ("x-fieldsync-protocol", "1".to_string()),
        (
            "x-fieldsync-device",
            state["device_id"].as_str().unwrap().to_string(),
        ),
        (
            "x-fieldsync-device-secret",
            state["device_secret"].as_str().unwrap().to_string(),
        ),
    ]
}

/// The device's credentials with the bearer `token`.
fn session_headers(dev: &DeviceDir, token: &str) -> Vec<(&'static str, String)> {
    let mut headers = device_headers(dev);
    headers.push(("authorization", format!("Bearer {token}")));
    headers
}

/// `user` logs in on `dev` by hand (the device's credentials, the user's password):
/// the login's answer, with its ticket.
fn login_by_hand(url: &str, dev: &DeviceDir, user: &str) -> serde_json::Value {
    let body = serde_json::json!({"user": user, "password": format!("{user}-pw")}).to_string();
    let (status, answer) = http(url, "POST", "/api/v1/login", &device_headers(dev), &body);
    assert_eq!(status, 200, "{answer}");
    answer
}

/// The ticket of a login's answer: 32 random bytes as hex.
fn ticket_of(login: &serde_json::Value) -> String {
    let ticket = login["ticket"]
        .as_str()
        .expect("the login returns a ticket");
    assert!(
        ticket.len() == 64 && ticket.bytes().all(|b| b.is_ascii_hexdigit()),
        "{ticket}"
    );
    ticket.to_string()
}

/// Redeems `ticket` with `dev`'s credentials: status and answer.
fn redeem(url: &str, dev: &DeviceDir, ticket: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({ "ticket": ticket }).to_string();
    http(
        url,
        "POST",
        "/api/v1/tickets/redeem",
        &device_headers(dev),
        &body,
    )
}

#[track_caller]
fn assert_refused(answer: &(u16, serde_json::Value), status: u16, code: &str, message: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    assert_eq!(answer.1["message"], message, "{}", answer.1);
}

/// The stored ticket of `secret`: its task and whether it was used (`None`: no row).
fn stored_ticket(office: &Office, secret: &str) -> Option<(String, bool)> {
    let hash = fieldsync_store::sha256_hex(secret);
    let rows = office.rows(&format!(
        "SELECT coalesce(task, ''), CASE WHEN used_at IS NULL THEN 0 ELSE 1 END FROM {}
         WHERE hash = '{hash}'",
        office.own_table("tickets")
    ));
    rows.first().map(|r| (r[0][1..].to_string(), r[1] == "i1"))
}

/// Puts `token` in the device's state file as its session's token, so that the
/// device's own commands use it.
fn use_token(dev: &DeviceDir, token: &str) {
    let mut state = state(dev);
    state["session"]["token"] = token.into();
    std::fs::write(
        dev.path().join("state.json"),
        serde_json::to_vec_pretty(&state).unwrap(),
    )
    .unwrap();
}

/// A login returns a ticket (stored only as its hash); a download records its task;
/// another device cannot redeem it; its device redeems it once, for an automatic
/// session that sends and downloads that task and nothing else.
#[test]
fn login_returns_a_ticket_redeemed_once_for_its_last_task() {
    let office = Office::new(20);
    let url = office.server.url.clone();
    // Ana may download both tasks on tab1: a refusal of the other task is the scope's.
    office
        .admin(&["task", "assign", SOUTH_TASK, "--user", "ana"], "")
        .ok();
    let dev = office.device("tab1", &[NORTH_TASK, SOUTH_TASK]);
    let other = office.device("tab2", &[NORTH_TASK]);
    other.login("ana").ok();
    dev.login("ana").ok();
    let ticket = ticket_of(&login_by_hand(&url, &dev, "ana"));
    let other_ticket = ticket_of(&login_by_hand(&url, &other, "ana"));
    assert_eq!(
        stored_ticket(&office, &ticket),
        Some((String::new(), false))
    );
    let plain = office.value(&format!(
        "SELECT count(*) FROM {} WHERE hash = '{ticket}'",
        office.own_table("tickets")
    ));
    assert_eq!(plain, "0", "the ticket itself is not stored");

    // A download by the pair's user session records its task in the ticket.
    dev.run(&["download", NORTH_TASK], "").ok();
    assert_eq!(
        stored_ticket(&office, &ticket),
        Some((NORTH_TASK.into(), false))
    );

    // Another device's credentials: unknown, and the ticket stays unused.
    let unknown = "unknown or already used ticket";
    assert_refused(&redeem(&url, &other, &ticket), 401, "unauthorized", unknown);
    assert_eq!(
        stored_ticket(&office, &ticket),
        Some((NORTH_TASK.into(), false))
    );

    let (status, answer) = redeem(&url, &dev, &ticket);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user"], "ana");
    assert_eq!(answer["task"], NORTH_TASK);
    let token = answer["token"].as_str().unwrap().to_string();
    assert!(
        answer["expires_at"].as_str().unwrap().ends_with('Z'),
        "{answer}"
    );
    assert_eq!(
        stored_ticket(&office, &ticket),
        Some((NORTH_TASK.into(), true))
    );
    // Single use.
    assert_refused(&redeem(&url, &dev, &ticket), 401, "unauthorized", unknown);
    // The other device's own ticket is its own: no task downloaded under it.
    let (status, theirs) = redeem(&url, &other, &other_ticket);
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(theirs["task"], serde_json::Value::Null);

    // The automatic session sends and downloads its task, through the device.
    dev.replica()
        .execute(
            "UPDATE assets SET name = 'auto-sent' WHERE id = (SELECT min(id) FROM assets)",
            [],
        )
        .unwrap();
    use_token(&dev, &token);
    dev.run(&["send"], "").ok();
    assert_eq!(
        office.value("SELECT count(*) FROM assets WHERE name = 'auto-sent'"),
        "1"
    );
    dev.run(&["download", NORTH_TASK], "").ok();

    // Nothing else: the tasks list, another task, a logout.
    let auto = session_headers(&dev, &token);
    let only = "an automatic synchronization's session may only send and download its last task";
    assert_refused(
        &http(&url, "GET", "/api/v1/tasks", &auto, ""),
        403,
        "forbidden",
        only,
    );
    let run = dev.run(&["tasks"], "");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains(only), "{run:?}");
    let south = format!("/api/v1/tasks/{SOUTH_TASK}/download");
    assert_refused(
        &http(&url, "GET", &south, &auto, ""),
        403,
        "forbidden",
        &format!("an automatic synchronization may download only task `{NORTH_TASK}`"),
    );
    assert_refused(
        &http(&url, "POST", "/api/v1/logout", &auto, ""),
        403,
        "forbidden",
        only,
    );
    // The other device's automatic session has no task to download.
    let theirs_auto = session_headers(&other, theirs["token"].as_str().unwrap());
    let north = format!("/api/v1/tasks/{NORTH_TASK}/download");
    let (status, refused) = http(&url, "GET", &north, &theirs_auto, "");
    assert_eq!(status, 403, "{refused}");
    // The user session is as it was.
    let login = login_by_hand(&url, &dev, "ana");
    let user = session_headers(&dev, login["token"].as_str().unwrap());
    let (status, tasks) = http(&url, "GET", "/api/v1/tasks", &user, "");
    assert_eq!(
        (status, tasks.as_array().map(Vec::len)),
        (200, Some(2)),
        "{tasks}"
    );
}

/// A ticket past its time to live (`--ticket-ttl`, by the database's clock) is
/// refused as expired; a request of the pair's user session renews it.
#[test]
fn expired_ticket_refused_and_renewed_by_requests() {
    let office = Office::new(10);
    let dev = office.device("tab1", &[NORTH_TASK]);
    let server = Server::start_with(&office.db_url, &["--ticket-ttl", "1s"]);
    dev.use_server(&server.url);
    dev.login("ana").ok();
    let ticket = ticket_of(&login_by_hand(&server.url, &dev, "ana"));
    std::thread::sleep(Duration::from_millis(2500));
    assert_refused(
        &redeem(&server.url, &dev, &ticket),
        401,
        "unauthorized",
        "expired ticket",
    );
    assert_eq!(
        stored_ticket(&office, &ticket),
        Some((String::new(), false))
    );
    drop(server);

    // Renewed: three seconds after a request, not after the login.
    let server = Server::start_with(&office.db_url, &["--ticket-ttl", "3s"]);
    dev.use_server(&server.url);
    let ticket = ticket_of(&login_by_hand(&server.url, &dev, "ana"));
    std::thread::sleep(Duration::from_millis(1800));
    dev.run(&["tasks"], "").ok();
    std::thread::sleep(Duration::from_millis(1800));
    let (status, answer) = redeem(&server.url, &dev, &ticket);
    assert_eq!(
        status, 200,
        "renewed 1.8 s ago, 3.6 s after the login: {answer}"
    );
}

/// A new login of the same device and user replaces the unused ticket.
#[test]
fn new_login_makes_the_previous_ticket_unknown() {
    let office = Office::new(10);
    let url = office.server.url.clone();
    let dev = office.device("tab1", &[NORTH_TASK]);
    let first = ticket_of(&login_by_hand(&url, &dev, "ana"));
    let second = ticket_of(&login_by_hand(&url, &dev, "ana"));
    assert_ne!(first, second);
    assert_eq!(stored_ticket(&office, &first), None);
    assert_refused(
        &redeem(&url, &dev, &first),
        401,
        "unauthorized",
        "unknown or already used ticket",
    );
    let (status, answer) = redeem(&url, &dev, &second);
    assert_eq!(status, 200, "{answer}");
}

crate::also_on_postgres!(
    login_returns_a_ticket_redeemed_once_for_its_last_task,
    expired_ticket_refused_and_renewed_by_requests,
    new_login_makes_the_previous_ticket_unknown,
);
