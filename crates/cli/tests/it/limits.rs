//! Bounded resources under crowds and hostile clients (the "[limits]" issue): what a
//! crowd of requests may cost the server.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::harness::*;

/// One raw HTTP/1.1 request to the server; the status code of its answer.
fn raw_request(url: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let addr = url.strip_prefix("http://").unwrap();
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
/// thread per core, each in memory of its own allocated once (a fresh allocation per
/// verification still peaked at 147–208 MB); measured 52 MB. The issue's target is
/// 200 MB; asserted: 100 MB.
#[test]
fn sixty_four_concurrent_logins_stay_far_below_one_verification_each() {
    let office = Office::new(5);
    let dev = office.device("tab1", &["north-inspections"]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let secret = state["device_secret"].as_str().unwrap().to_string();
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
    eprintln!(
        "64 concurrent logins: server peak RSS {peak_mb} MB (before: {} MB)",
        before_kb / 1024
    );
    assert!(peak_mb < 100, "server peak RSS {peak_mb} MB");
}
