//! Files attached to rows: `admin file`, the file store beside the main database (or
//! `--files`), and the server's file routes: a slice's files only, by hash, with
//! ranges; any other file is answered as an unknown one.

use crate::harness::*;

mod device;
mod outbox;
mod s3;
mod upload;

/// The north task with files of its assets and inspections.
pub fn north_with_files() -> String {
    format!("{NORTH}[files]\ntables = [\"assets\", \"inspections\"]\n")
}

/// The `--files` flags of the office: none on SQLite (the default folder beside the
/// database is what is tested), a folder on PostgreSQL (which has no default).
pub fn files_flags(office: &Office) -> Vec<String> {
    match office.engine() {
        Engine::Sqlite => Vec::new(),
        Engine::Postgres => vec![
            "--files".into(),
            office.dir.0.join("files").display().to_string(),
        ],
    }
}

/// An office whose north task has a `[files]` rule, its server serving files.
pub fn office() -> Office {
    let mut office = Office::new(20);
    let path = office.dir.0.join("north-files.toml");
    std::fs::write(&path, north_with_files()).unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    let flags = files_flags(&office);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    office.server = Server::start_with(&office.db_url, &flags);
    office
}

/// `admin file attach TABLE KEY PATH` of `content` named `name`: the attachment's id.
pub fn attach(office: &Office, table: &str, key: &str, name: &str, content: &[u8]) -> Run {
    let path = office.dir.0.join(name);
    std::fs::write(&path, content).unwrap();
    let mut args = vec!["file", "attach", table, key, path.to_str().unwrap()];
    let flags = files_flags(office);
    args.extend(flags.iter().map(String::as_str));
    office.admin(&args, "")
}

fn list(office: &Office) -> Vec<serde_json::Value> {
    let out = office.admin(&["file", "list", "--json"], "").ok().stdout;
    serde_json::from_str(&out).unwrap()
}

/// An asset of the north slice and one outside it (south).
pub fn keys(office: &Office) -> (String, String) {
    (
        office.value("SELECT min(id) FROM assets WHERE region = 'north' AND status <> 'retired'"),
        office.value("SELECT min(id) FROM assets WHERE region = 'south'"),
    )
}

pub fn sha256_of(bytes: &[u8]) -> String {
    let path = std::env::temp_dir().join(format!("fieldsync-sha-{}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn admin_attaches_lists_and_detaches_files() {
    let office = office();
    let (north, _) = keys(&office);
    let content = b"a drawing of the pump".repeat(1000);
    let out = attach(&office, "assets", &north, "drawing.pdf", &content).ok();
    assert!(out.stdout.contains("attached file 1"), "{out:?}");
    let files = list(&office);
    assert_eq!(files.len(), 1);
    let f = &files[0];
    assert_eq!(f["table"], "assets");
    assert_eq!(f["key"], north.as_str());
    assert_eq!(f["name"], "drawing.pdf");
    assert_eq!(f["size"], content.len());
    assert_eq!(f["sha256"], sha256_of(&content).as_str());
    assert_eq!(f["content_type"], "application/pdf");
    assert_eq!(f["added_by"], "admin");
    // The content is in the store, by hash, whole.
    let root = match office.engine() {
        Engine::Sqlite => office.dir.0.join("main.sqlite.files"),
        Engine::Postgres => office.dir.0.join("files"),
    };
    let sha = sha256_of(&content);
    let stored = std::fs::read(root.join("objects").join(&sha[..2]).join(&sha)).unwrap();
    assert_eq!(stored, content);
    // The same name on the same row again, a missing row, a bad key, a missing table.
    let again = attach(&office, "assets", &north, "drawing.pdf", b"other");
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("already has a file"), "{again:?}");
    for (table, key, says) in [
        ("assets", "999999", "no row"),
        ("assets", "x1", "integer primary key"),
        ("nope", "1", "no such table"),
    ] {
        let run = attach(&office, table, key, "a.txt", b"x");
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains(says), "{says}: {run:?}");
    }
    assert_eq!(list(&office).len(), 1);
    let out = office.admin(&["file", "detach", "1"], "").ok();
    assert!(out.stdout.contains("detached file 1"), "{out:?}");
    assert!(list(&office).is_empty());
    let gone = office.admin(&["file", "detach", "1"], "");
    assert_eq!(gone.code, 1, "{gone:?}");
}

/// A GET as the logged-in device `dev` sends it.
fn get(
    office: &Office,
    dev: &DeviceDir,
    path: &str,
    range: Option<&str>,
) -> (u16, Vec<u8>, String) {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let mut req = ureq::get(&format!("{}{path}", office.server.url))
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
    if let Some(r) = range {
        req = req.set("range", r);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    let content_range = resp.header("content-range").unwrap_or("").to_string();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    (status, body, content_range)
}

#[test]
fn the_server_serves_only_files_of_the_devices_slice() {
    let office = office();
    let (north, south) = keys(&office);
    let inside: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let outside = b"the south's secret drawing".to_vec();
    attach(&office, "assets", &north, "inside.bin", &inside).ok();
    attach(&office, "assets", &south, "outside.bin", &outside).ok();
    let dev = office.device("d1", &["north-inspections"]);
    dev.login("ana").ok();

    let (status, body, _) = get(&office, &dev, "/api/v1/tasks/north-inspections/files", None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "inside.bin");
    assert_eq!(listed[0]["key"], north.as_str());
    let (sha_in, sha_out) = (sha256_of(&inside), sha256_of(&outside));
    assert_eq!(listed[0]["sha256"], sha_in.as_str());

    let (status, body, _) = get(&office, &dev, &format!("/api/v1/files/{sha_in}"), None);
    assert_eq!(status, 200);
    assert_eq!(body, inside);
    let (status, body, range) = get(
        &office,
        &dev,
        &format!("/api/v1/files/{sha_in}"),
        Some("bytes=150000-"),
    );
    assert_eq!(status, 206);
    assert_eq!(body, inside[150_000..]);
    assert_eq!(range, format!("bytes 150000-199999/{}", inside.len()));
    let (status, _, range) = get(
        &office,
        &dev,
        &format!("/api/v1/files/{sha_in}"),
        Some("bytes=200000-"),
    );
    assert_eq!(status, 416);
    assert_eq!(range, "bytes */200000");

    // Another slice's file and a file nobody has get the same answer.
    let (status, refused, _) = get(&office, &dev, &format!("/api/v1/files/{sha_out}"), None);
    assert_eq!(status, 404);
    let (status, unknown, _) = get(
        &office,
        &dev,
        &format!("/api/v1/files/{}", "ab".repeat(32)),
        None,
    );
    assert_eq!(status, 404);
    assert_eq!(refused, unknown);
    let (status, _, _) = get(&office, &dev, "/api/v1/files/..%2Fmain.sqlite", None);
    assert_eq!(status, 404);

    // The row leaves the slice: its file is refused from then on.
    office.execute_batch(&format!(
        "UPDATE assets SET region = 'south' WHERE id = {north}"
    ));
    let (status, body, _) = get(&office, &dev, &format!("/api/v1/files/{sha_in}"), None);
    assert_eq!(status, 404);
    assert_eq!(body, unknown);
}

crate::also_on_postgres!(
    admin_attaches_lists_and_detaches_files,
    the_server_serves_only_files_of_the_devices_slice,
);
