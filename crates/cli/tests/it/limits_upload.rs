//! Uploads within bounded memory (issue #11 [limits], points 1 and 2): nothing of a body
//! is read before its sender is checked; a body is capped compressed, decompressed and
//! in entries (413). A journal sent in chunks: `limits_chunks.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

/// The memory bound the issue sets for the server and the device, in MB.
const BOUND_MB: u64 = 100;

/// The device's credentials and session token, from its state file.
fn credentials(dev: &DeviceDir) -> (String, String, String) {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    (
        state["device_id"].as_str().unwrap().to_string(),
        state["device_secret"].as_str().unwrap().to_string(),
        state["session"]["token"].as_str().unwrap().to_string(),
    )
}

/// POSTs `body` as an upload with the device's credentials; the status and the answer.
fn post_upload(url: &str, dev: &DeviceDir, body: &[u8]) -> (u16, String) {
    let (id, secret, token) = credentials(dev);
    let addr = addr_of(url);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let head = format!(
        "POST /api/v1/uploads HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\nx-fieldsync-protocol: 1\r\nx-fieldsync-device: {id}\r\n\
         x-fieldsync-device-secret: {secret}\r\nAuthorization: Bearer {token}\r\n\
         x-fieldsync-body-crc32: {:08x}\r\ncontent-type: application/x-fieldsync-upload+zstd\r\n\r\n",
        body.len(),
        fieldsync_proto::upload_body::crc32(body)
    );
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer before the whole body is in (a refusal): ignore a reset.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// zstd-compresses what `write` writes, as it goes (a bomb is never whole in memory).
fn zstd_of(write: impl FnOnce(&mut dyn Write)) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    write(&mut enc);
    enc.finish().unwrap()
}

/// A device of ana with the north task downloaded.
pub(crate) fn north_device(office: &Office, id: &str) -> DeviceDir {
    let dev = office.device(id, &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev
}

fn health(url: &str) -> bool {
    let addr = addr_of(url);
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok")
}

/// 100 uploads without credentials, each declaring 30 MiB and sending 4 MiB of it,
/// their sockets held open: the server reads none of those bodies (it refused each
/// before its body), stays under the bound and answers `/health`. (Before: each body
/// was read into memory before any check, 400 MB here.)
#[test]
fn a_hundred_unauthenticated_half_sent_uploads_hold_no_memory() {
    let office = Office::new(5);
    let url = office.server.url.clone();
    let addr = addr_of(&url).to_string();
    let declared = 30 * 1024 * 1024;
    let sent = 4 * 1024 * 1024;
    let senders: Vec<_> = (0..100)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                let head = format!(
                    "POST /api/v1/uploads HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {declared}\r\n\
                     x-fieldsync-protocol: 1\r\nx-fieldsync-upload-id: {i:032x}\r\n\
                     x-fieldsync-body-crc32: 00000000\r\n\r\n"
                );
                let _ = s.write_all(head.as_bytes());
                let piece = vec![b'x'; 64 * 1024];
                for _ in 0..sent / piece.len() {
                    if s.write_all(&piece).is_err() {
                        break;
                    }
                }
                s
            })
        })
        .collect();
    let held: Vec<TcpStream> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(health(&url), "/health answers with the uploads held open");
    let peak_mb = office.server.peak_rss_kb() / 1024;
    eprintln!("100 unauthenticated half-sent uploads: server peak RSS {peak_mb} MB");
    assert!(peak_mb < BOUND_MB, "server peak RSS {peak_mb} MB");
    drop(held);
}

/// An upload whose 40 KB-ish body inflates to 600 MB is refused with 413 once the
/// decompressed cap is passed, and the server's memory stays bounded (before: the
/// server inflated 512 MiB into memory, then refused).
#[test]
fn a_decompression_bomb_is_refused_with_413_in_bounded_memory() {
    let office = Office::new(20);
    let dev = north_device(&office, "bomb-1");
    let body = zstd_of(|w| {
        write!(
            w,
            r#"{{"upload_id":"{}","task":"north-inspections","entries":[{{"seq_first":1,"seq_last":1,"table":"inspections","key":"b","op":"insert","base_version":null,"user":"ana","new":{{"notes":""#,
            "b".repeat(32)
        )
        .unwrap();
        let piece = vec![b'A'; 1024 * 1024];
        for _ in 0..600 {
            w.write_all(&piece).unwrap();
        }
        w.write_all(br#""}}]}"#).unwrap();
    });
    eprintln!("decompression bomb: {} bytes compressed", body.len());
    assert!(body.len() < 1024 * 1024);
    let (status, answer) = post_upload(&office.server.url, &dev, &body);
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer.contains("payload_too_large") && answer.contains("decompressed"),
        "{answer}"
    );
    let peak_mb = office.server.peak_rss_kb() / 1024;
    eprintln!("decompression bomb: server peak RSS {peak_mb} MB");
    assert!(peak_mb < BOUND_MB, "server peak RSS {peak_mb} MB");
    assert!(health(&office.server.url));
}

/// 200,000 tiny entries in a small body (about 19 MB of JSON, under the text cap) are
/// refused with 413 once the entry cap is passed, within bounded memory (before: all
/// parsed, over a GB at 2,000,000, then refused).
#[test]
fn an_entry_bomb_is_refused_with_413_in_bounded_memory() {
    let office = Office::new(20);
    let dev = north_device(&office, "bomb-2");
    let body = zstd_of(|w| {
        write!(
            w,
            r#"{{"upload_id":"{}","task":"north-inspections","entries":["#,
            "c".repeat(32)
        )
        .unwrap();
        let one = br#"{"seq_first":1,"seq_last":1,"table":"t","key":1,"op":"insert","base_version":null,"user":"u"}"#;
        let mut piece = Vec::new();
        for _ in 0..1000 {
            piece.extend_from_slice(one);
            piece.push(b',');
        }
        for _ in 0..200 {
            w.write_all(&piece).unwrap();
        }
        w.write_all(one).unwrap();
        w.write_all(b"]}").unwrap();
    });
    eprintln!("entry bomb: {} bytes compressed", body.len());
    assert!(body.len() < 1024 * 1024);
    let (status, answer) = post_upload(&office.server.url, &dev, &body);
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer.contains("payload_too_large") && answer.contains("entries"),
        "{answer}"
    );
    let peak_mb = office.server.peak_rss_kb() / 1024;
    eprintln!("entry bomb: server peak RSS {peak_mb} MB");
    assert!(peak_mb < BOUND_MB, "server peak RSS {peak_mb} MB");
}
