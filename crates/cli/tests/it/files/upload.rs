//! A device's upload of a file's content: resumable from where the server stands,
//! stored only whole and matching its SHA-256, once, and never telling whether the
//! server already had it.

use super::{office, sha256_of};
use crate::harness::*;

/// A request as the logged-in device `dev` makes it: status and JSON answer.
fn call(
    office: &Office,
    dev: &DeviceDir,
    method: &str,
    sha: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, serde_json::Value) {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let mut req = ureq::request(
        method,
        &format!("{}/api/v1/files/{sha}/upload", office.server.url),
    )
    .set("x-fieldsync-protocol", "1")
    .set("x-fieldsync-device", state["device_id"].as_str().unwrap())
    .set(
        "x-fieldsync-device-secret",
        state["device_secret"].as_str().unwrap(),
    )
    .set(
        "authorization",
        &format!("Bearer {}", state["session"]["token"].as_str().unwrap()),
    );
    for (name, value) in headers {
        req = req.set(name, value);
    }
    let sent = if method == "PUT" {
        req.send_bytes(body)
    } else {
        req.call()
    };
    let resp = match sent {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    (status, resp.into_json().unwrap_or(serde_json::Value::Null))
}

fn put(
    office: &Office,
    dev: &DeviceDir,
    sha: &str,
    offset: usize,
    size: usize,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let headers = [
        ("x-fieldsync-file-offset", offset.to_string()),
        ("x-fieldsync-file-size", size.to_string()),
    ];
    call(office, dev, "PUT", sha, &headers, body)
}

#[test]
fn a_photos_content_uploads_in_pieces_resumes_and_is_stored_once_whole() {
    let office = office();
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();
    let photo: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let sha = sha256_of(&photo);
    let stored = office.dir.0.join(match office.engine() {
        Engine::Sqlite => "main.sqlite.files",
        Engine::Postgres => "files",
    });
    let object = stored.join("objects").join(&sha[..2]).join(&sha);

    let (status, answer) = call(&office, &dev, "GET", &sha, &[], b"");
    assert_eq!((status, &answer["received"]), (200, &0.into()), "{answer}");
    // A first piece; then a resend from the wrong place is refused, nothing changes.
    let (status, answer) = put(&office, &dev, &sha, 0, photo.len(), &photo[..120_000]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"received": 120_000, "stored": false})
    );
    let (status, answer) = put(&office, &dev, &sha, 0, photo.len(), &photo[..1000]);
    assert_eq!(status, 400, "{answer}");
    // A long one reads the refusal too, not a reset connection: the server reads and
    // drops what it still sends (a short one raced its close, now and then).
    let long = vec![0u8; 8 * 1024 * 1024];
    let (status, answer) = put(&office, &dev, &sha, 0, photo.len(), &long);
    assert_eq!(status, 400, "{answer}");
    let (_, answer) = call(&office, &dev, "GET", &sha, &[], b"");
    assert_eq!(answer["received"], 120_000);
    assert!(!object.exists(), "a partial content was stored");
    // The rest from where the server stands.
    let (status, answer) = put(&office, &dev, &sha, 120_000, photo.len(), &photo[120_000..]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"received": photo.len(), "stored": true})
    );
    assert_eq!(std::fs::read(&object).unwrap(), photo);
    // Again, whole: the same answer, the object as it was (create-only).
    let (status, answer) = put(&office, &dev, &sha, 0, photo.len(), &photo);
    assert_eq!((status, answer["stored"].as_bool()), (200, Some(true)));
    assert_eq!(std::fs::read(&object).unwrap(), photo);
    // Content that is not what its name says is refused and forgotten.
    let other = "ab".repeat(32);
    let (status, answer) = put(&office, &dev, &other, 0, 5000, &photo[..5000]);
    assert_eq!(status, 400, "{answer}");
    let (_, answer) = call(&office, &dev, "GET", &other, &[], b"");
    assert_eq!(answer["received"], 0);
    assert!(!stored.join("objects").join("ab").join(&other).exists());
    // More than announced is refused.
    let (status, _) = put(&office, &dev, &other, 0, 10, &photo[..11]);
    assert_eq!(status, 413);
    assert_eq!(
        std::fs::read_dir(stored.join("uploads")).unwrap().count(),
        0
    );

    // A device whose tasks let it add no files is refused.
    let ben = office.device("d2", &["south-work-orders"]);
    ben.login("ben").ok();
    let (status, _) = put(&office, &ben, &sha, 0, photo.len(), &photo);
    assert_eq!(status, 403);
    // It reads the refusal, not a reset connection, however much it was sending.
    let (status, answer) = put(&office, &ben, &sha, 0, long.len(), &long);
    assert_eq!(status, 403, "{answer}");
}

crate::also_on_postgres!(a_photos_content_uploads_in_pieces_resumes_and_is_stored_once_whole);
