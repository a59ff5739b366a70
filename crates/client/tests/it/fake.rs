//! A fake server behind the transport seam: pairs, logs in, serves a slice stream it
//! writes with `SliceWriter`, and takes uploads through `proto`'s decoder.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::Mutex;

use fieldsync_client::transport::{Request, Response, Transport, TransportError};
use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::stream::SliceWriter;
use fieldsync_proto::task::WriteOp;
use fieldsync_proto::upload_body::{self, UploadLimits};
use fieldsync_proto::value::ColumnType;
use fieldsync_proto::wire::{
    ColumnDef, ErrorBody, ErrorCode, HEADER_BODY_CRC32, LoginResponse, NewVersion,
    PROTOCOL_VERSION, PairResponse, SliceHeader, TableSchema, Upload, UploadOutcome,
};

/// An answer the fake gives instead of its own, once.
pub enum Scripted {
    Status(u16, Vec<(String, String)>, String),
    Broken(String),
}

#[derive(Default)]
pub struct Fake {
    /// `items` rows the next download serves.
    pub rows: Mutex<Vec<(i64, String)>>,
    /// The download body, when a test wants other bytes than the slice.
    pub body: Mutex<Option<Vec<u8>>>,
    pub script: Mutex<VecDeque<Scripted>>,
    /// Every request: method and path.
    pub log: Mutex<Vec<(String, String)>>,
    pub uploads: Mutex<Vec<Upload>>,
}

pub fn header() -> SliceHeader {
    let col = |name: &str, t| ColumnDef {
        name: name.into(),
        column_type: t,
    };
    SliceHeader {
        protocol: PROTOCOL_VERSION,
        epoch: "epoch-1".into(),
        task: "work".into(),
        task_hash: "hash-1".into(),
        user: "ana".into(),
        device: "tab1".into(),
        tables: vec![TableSchema {
            name: "items".into(),
            primary_key: "id".into(),
            columns: vec![
                col("id", ColumnType::Integer),
                col("name", ColumnType::Text),
            ],
            rows_estimate: 0,
            write: vec![WriteOp::Insert, WriteOp::Update, WriteOp::Delete],
            filter: None,
            parent: None,
        }],
        since: None,
        full_reason: None,
        assigned: vec![],
        key_blocks: Vec::new(),
        file_tables: Vec::new(),
    }
}

/// A slice stream of `rows`, as the server writes it.
pub fn slice(rows: &[(i64, String)]) -> Vec<u8> {
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    let mut h = header();
    h.tables[0].rows_estimate = rows.len() as u64;
    w.header(&h).unwrap();
    for (id, name) in rows {
        w.row(0, [ValueRef::Integer(*id), ValueRef::Text(name)])
            .unwrap();
    }
    w.trailer(fieldsync_proto::wire::Cursor::from_raw(41))
        .unwrap();
    w.finish().unwrap()
}

/// A stream the server broke off with an error frame after `rows`.
pub fn failed_slice(rows: &[(i64, String)]) -> Vec<u8> {
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&header()).unwrap();
    for (id, name) in rows {
        w.row(0, [ValueRef::Integer(*id), ValueRef::Text(name)])
            .unwrap();
    }
    w.error(&ErrorBody {
        code: ErrorCode::Internal,
        message: "the office database went away".into(),
        keep_changes: false,
    })
    .unwrap();
    w.finish().unwrap()
}

fn answer(status: u16, body: Vec<u8>) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Box::new(Cursor::new(body)),
    }
}

fn json(value: &impl serde::Serialize) -> Response {
    answer(200, serde_json::to_vec(value).unwrap())
}

impl Fake {
    pub fn new(rows: &[(i64, &str)]) -> std::sync::Arc<Fake> {
        let fake = Fake::default();
        *fake.rows.lock().unwrap() = rows.iter().map(|(i, n)| (*i, n.to_string())).collect();
        std::sync::Arc::new(fake)
    }

    pub fn then(&self, s: Scripted) {
        self.script.lock().unwrap().push_back(s);
    }

    pub fn count(&self, path_end: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|(_, p)| p.ends_with(path_end)).count()
    }
}

impl Transport for Fake {
    fn request(&self, req: Request<'_>) -> Result<Response, TransportError> {
        let path = req
            .url
            .strip_prefix("fake://office")
            .expect("the paired server's URL")
            .to_string();
        self.log
            .lock()
            .unwrap()
            .push((req.method.to_string(), path.clone()));
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("x-fieldsync-protocol"),
            Some(PROTOCOL_VERSION.to_string())
        );
        if let Some(s) = self.script.lock().unwrap().pop_front() {
            return match s {
                Scripted::Status(status, headers, body) => Ok(Response {
                    status,
                    headers,
                    body: Box::new(Cursor::new(body.into_bytes())),
                }),
                Scripted::Broken(why) => Err(TransportError(why)),
            };
        }
        Ok(match (req.method, path.as_str()) {
            ("POST", "/api/v1/pair") => json(&PairResponse {
                device_secret: "secret".into(),
            }),
            ("POST", "/api/v1/login") => json(&LoginResponse {
                user: "ana".into(),
                token: "token".into(),
                expires_at: "2099-01-01T00:00:00Z".parse().expect("time"),
                ticket: None,
            }),
            ("GET", "/api/v1/tasks/work/download") => {
                assert_eq!(header("authorization").as_deref(), Some("Bearer token"));
                let body = self.body.lock().unwrap().clone();
                let body = body.unwrap_or_else(|| slice(&self.rows.lock().unwrap()));
                answer(200, body)
            }
            ("POST", "/api/v1/uploads") => {
                let body = req.body.expect("an upload has a body");
                let crc = header(HEADER_BODY_CRC32);
                let upload = upload_body::decode(crc.as_deref(), body, &UploadLimits::PUBLISHED)
                    .expect("the device's upload decodes");
                assert_eq!(
                    header("x-fieldsync-upload-id"),
                    Some(upload.upload_id.clone())
                );
                let outcome = UploadOutcome {
                    upload_id: upload.upload_id.clone(),
                    applied: upload.entries.len() as u64,
                    conflicts: 0,
                    versions: upload
                        .entries
                        .iter()
                        .enumerate()
                        .map(|(i, e)| NewVersion {
                            table: e.table.clone(),
                            key: e.key.clone(),
                            version: Some(100 + i as i64),
                            row: None,
                        })
                        .collect(),
                    repeated: false,
                    not_kept: vec![],
                };
                self.uploads.lock().unwrap().push(upload);
                json(&outcome)
            }
            other => panic!("the fake has no answer to {other:?}"),
        })
    }
}
