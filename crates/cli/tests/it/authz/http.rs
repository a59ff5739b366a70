//! The authorization matrix's requests by hand (ureq, curl's equivalent), upload
//! bodies, a download stream decoded, and the main database's slices as SQL says.

use std::collections::BTreeSet;

use fieldsync_proto::frame::{Frame, FrameReader, RowBatch};

use super::A;
use crate::harness::*;

/// Who asks: the device headers and bearer token sent, and the user whose password
/// a login sends.
pub(super) struct Asker {
    pub(super) name: &'static str,
    pub(super) device: Option<(String, String)>,
    pub(super) token: Option<String>,
    pub(super) user: &'static str,
}

/// An answer: status, content type, body.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) content_type: String,
    pub(super) body: Vec<u8>,
}

impl Answer {
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.text()))
    }
}

/// `method url` as `asker`, with `headers` and `body`.
pub(super) fn send(
    url: &str,
    asker: &Asker,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> Answer {
    let mut req = ureq::request(method, &format!("{url}{path}"))
        .timeout(std::time::Duration::from_secs(60))
        .set("x-fieldsync-protocol", "1");
    if let Some((id, secret)) = &asker.device {
        req = req
            .set("x-fieldsync-device", id)
            .set("x-fieldsync-device-secret", secret);
    }
    if let Some(token) = &asker.token {
        req = req.set("authorization", &format!("Bearer {token}"));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let sent = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match sent {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path} as {}: {e}", asker.name),
    };
    let status = resp.status();
    let content_type = resp.content_type().to_string();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    Answer {
        status,
        content_type,
        body,
    }
}

pub(super) fn secret_of(dev: &DeviceDir) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    state["device_secret"].as_str().unwrap().to_string()
}

/// A login of `user` on the device `(id, secret)` by hand: its token and ticket.
pub(super) fn login(url: &str, device: &(String, String), user: &'static str) -> (String, String) {
    let asker = Asker {
        name: "login",
        device: Some(device.clone()),
        token: None,
        user,
    };
    let body = format!(r#"{{"user":"{user}","password":"{user}-pw"}}"#);
    let answer = send(
        url,
        &asker,
        "POST",
        "/api/v1/login",
        &[],
        Some(body.as_bytes()),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    (
        json["token"].as_str().unwrap().to_string(),
        json["ticket"].as_str().unwrap().to_string(),
    )
}

/// An upload body of `task` carrying `entries` (JSON texts): the compressed body and
/// its headers.
pub(super) fn upload(task: &str, entries: &[String]) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let id = fieldsync_store::random_hex(16);
    let json = format!(
        r#"{{"upload_id":"{id}","task":"{task}","entries":[{}]}}"#,
        entries.join(",")
    );
    let body = zstd::encode_all(json.as_bytes(), 3).unwrap();
    let headers = vec![
        (
            "x-fieldsync-body-crc32",
            format!("{:08x}", fieldsync_proto::upload_body::crc32(&body)),
        ),
        ("x-fieldsync-upload-id", id),
        (
            "content-type",
            "application/x-fieldsync-upload+zstd".to_string(),
        ),
    ];
    (body, headers)
}

/// A new inspection `id` of asset `asset` by `inspector`, sent by `user`.
pub(super) fn new_inspection(id: &str, asset: &str, inspector: &str, user: &str) -> String {
    format!(
        r#"{{"seq_first":1,"seq_last":1,"table":"inspections","key":"{id}","op":"insert","base_version":null,"user":"{user}","new":{{"id":"{id}","asset_id":{asset},"inspector":"{inspector}","inspected_at":"2026-01-01","result":"ok","notes":null}}}}"#
    )
}

/// `(table, key)` of every row of a download's stream, and its header's task.
pub(super) fn streamed_rows(body: &[u8]) -> (String, BTreeSet<(String, String)>) {
    let mut reader = FrameReader::new(zstd::stream::read::Decoder::new(body).unwrap());
    let Some(Frame::Header(header)) = reader.next_frame().unwrap() else {
        panic!("no header")
    };
    let mut rows = BTreeSet::new();
    loop {
        match reader.next_frame().unwrap() {
            Some(Frame::Rows(p)) => {
                let mut batch = RowBatch::parse(&p).unwrap();
                let table = &header.tables[batch.table_idx];
                for _ in 0..batch.n_rows {
                    let key = batch.value().unwrap().to_owned();
                    for _ in 1..table.columns.len() {
                        batch.value().unwrap();
                    }
                    let key = match key {
                        fieldsync_proto::Value::Integer(i) => format!("i{i}"),
                        fieldsync_proto::Value::Text(t) => format!("t{t}"),
                        other => panic!("{other:?}"),
                    };
                    rows.insert((table.name.clone(), key));
                }
            }
            Some(Frame::Trailer(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    (header.task, rows)
}

/// The rows of the main database a user's slice of a task holds.
pub(super) fn slice_rows(office: &Office, task: &str, user: &str) -> BTreeSet<(String, String)> {
    let mut rows = BTreeSet::new();
    let queries: Vec<(&str, String)> = if task == A {
        vec![
            (
                "assets",
                "SELECT id FROM assets WHERE region = 'north' AND status <> 'retired'".into(),
            ),
            (
                "inspections",
                format!(
                    "SELECT i.id FROM inspections i JOIN assets a ON a.id = i.asset_id \
                     WHERE a.region = 'north' AND a.status <> 'retired' \
                     AND i.inspector = '{user}'"
                ),
            ),
        ]
    } else {
        vec![
            (
                "assets",
                "SELECT id FROM assets WHERE region = 'south'".into(),
            ),
            (
                "work_orders",
                "SELECT w.id FROM work_orders w JOIN assets a ON a.id = w.asset_id \
                 WHERE a.region = 'south' AND w.status IN ('open', 'in-progress')"
                    .into(),
            ),
        ]
    };
    for (table, sql) in queries {
        for row in office.rows(&sql) {
            rows.insert((table.to_string(), row[0].clone()));
        }
    }
    rows
}

/// Everything of the main database an upload of north could touch or must not:
/// all rows of the three tables.
pub(super) fn fingerprint(office: &Office) -> Vec<Vec<String>> {
    let mut all = office.rows("SELECT * FROM assets ORDER BY id");
    all.extend(office.rows("SELECT * FROM inspections ORDER BY id"));
    all.extend(office.rows("SELECT * FROM work_orders ORDER BY id"));
    all
}
