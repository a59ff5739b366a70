//! The HTTP API without a socket (`tower::ServiceExt::oneshot`), on a real SQLite
//! main database: status codes, error codes, and a decoded download stream.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fieldsync_proto::frame::{Frame, FrameReader, RowBatch};
use fieldsync_proto::wire::{ErrorBody, ErrorCode, LoginResponse, PairResponse};
use fieldsync_server::{AppState, admin, router};
use fieldsync_store::Store;
use fieldsync_testkit::{TempDir, sample};
use tower::ServiceExt;

struct Fixture {
    _dir: TempDir,
    store: Arc<dyn Store>,
    code: String,
}

fn fixture(tag: &str) -> Fixture {
    let dir = TempDir::new(&format!("server-it-{tag}"));
    let path = dir.path().join("main.sqlite");
    sample::create(&mut rusqlite::Connection::open(&path).unwrap(), 40).unwrap();
    let store: Arc<dyn Store> =
        Arc::from(fieldsync_store::open(&format!("sqlite:{}", path.display())).unwrap());
    store.init().unwrap();
    for t in ["assets", "inspections"] {
        admin::table_track(&*store, t).unwrap();
    }
    admin::user_add(&*store, "ana", false, "pw").unwrap();
    let code = admin::device_add(&*store, "tab1", None).unwrap();
    admin::task_apply(&*store, sample::TASK_NORTH).unwrap();
    admin::task_assign(
        &*store,
        "north-inspections",
        &["ana".into()],
        &["tab1".into()],
    )
    .unwrap();
    Fixture {
        _dir: dir,
        store,
        code,
    }
}

async fn call(f: &Fixture, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = router(AppState::new(f.store.clone(), Default::default()))
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body.to_vec())
}

fn post(path: &str) -> axum::http::request::Builder {
    Request::post(path)
        .header("x-fieldsync-protocol", "1")
        .header("content-type", "application/json")
}

fn error(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn health_and_openapi() {
    let f = fixture("health");
    let (status, body) = call(&f, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, b"ok".as_slice())
    );
    let (status, body) = call(
        &f,
        Request::get("/api/openapi.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for path in [
        "/api/v1/pair",
        "/api/v1/login",
        "/api/v1/logout",
        "/api/v1/tickets/redeem",
        "/api/v1/tasks",
        "/api/v1/tasks/{name}/download",
        "/api/v1/tasks/{name}/files",
        "/api/v1/files/{sha256}",
        "/api/v1/files/{sha256}/upload",
        "/api/v1/uploads",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
}

#[tokio::test]
async fn malformed_requests_get_stable_error_codes() {
    let f = fixture("malformed");
    let no_version = Request::post("/api/v1/pair")
        .body(Body::from("{}"))
        .unwrap();
    let (status, body) = call(&f, no_version).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&body).code, ErrorCode::BadRequest);

    let future = Request::post("/api/v1/pair")
        .header("x-fieldsync-protocol", "2")
        .body(Body::from("{}"))
        .unwrap();
    let (status, body) = call(&f, future).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert!(error(&body).message.contains("update fieldsync"));

    let (status, body) = call(
        &f,
        post("/api/v1/pair").body(Body::from("{not json")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(&body).message.contains("malformed request body"));

    let huge = format!(
        "{{\"device_id\":\"tab1\",\"code\":\"{}\"}}",
        "x".repeat(200_000)
    );
    let (status, body) = call(&f, post("/api/v1/pair").body(Body::from(huge)).unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error(&body).code, ErrorCode::PayloadTooLarge);

    let bad_id = r#"{"device_id":"../etc","code":"x"}"#;
    let (status, body) = call(&f, post("/api/v1/pair").body(Body::from(bad_id)).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(&body).message.contains("bad device name"));

    let (status, body) = call(
        &f,
        post("/api/v1/login")
            .body(Body::from(r#"{"user":"ana","password":"pw"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error(&body).message.contains("not paired"));
    // The enrollment code still works: nothing above consumed it.
    let pair = format!(r#"{{"device_id":"tab1","code":"{}"}}"#, f.code);
    let (status, _) = call(&f, post("/api/v1/pair").body(Body::from(pair)).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_download_stream_decodes_to_the_slice() {
    let f = fixture("stream");
    let pair = format!(r#"{{"device_id":"tab1","code":"{}"}}"#, f.code);
    let (status, body) = call(&f, post("/api/v1/pair").body(Body::from(pair)).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let secret = serde_json::from_slice::<PairResponse>(&body)
        .unwrap()
        .device_secret;
    let login = post("/api/v1/login")
        .header("x-fieldsync-device", "tab1")
        .header("x-fieldsync-device-secret", &secret)
        .body(Body::from(r#"{"user":"ana","password":"pw"}"#))
        .unwrap();
    let (status, body) = call(&f, login).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let token = serde_json::from_slice::<LoginResponse>(&body)
        .unwrap()
        .token;
    let get = |path: &str, token: &str| {
        Request::get(path)
            .header("x-fieldsync-protocol", "1")
            .header("x-fieldsync-device", "tab1")
            .header("x-fieldsync-device-secret", &secret)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let (status, body) = call(&f, get("/api/v1/tasks/south-work-orders/download", &token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error(&body).code, ErrorCode::Forbidden);
    let (status, _) = call(
        &f,
        get("/api/v1/tasks/north-inspections/download", "forged"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = call(&f, get("/api/v1/tasks/north-inspections/download", &token)).await;
    assert_eq!(status, StatusCode::OK);
    let mut reader = FrameReader::new(zstd::stream::read::Decoder::new(body.as_slice()).unwrap());
    let Some(Frame::Header(header)) = reader.next_frame().unwrap() else {
        panic!("no header")
    };
    assert_eq!(header.task, "north-inspections");
    assert_eq!(
        header
            .tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["assets", "inspections"]
    );
    let mut ids = Vec::new();
    let trailer = loop {
        match reader.next_frame().unwrap() {
            Some(Frame::Rows(p)) => {
                let mut batch = RowBatch::parse(&p).unwrap();
                let width = header.tables[batch.table_idx].columns.len();
                for _ in 0..batch.n_rows {
                    let first = batch.value().unwrap().to_owned();
                    for _ in 1..width {
                        batch.value().unwrap();
                    }
                    if batch.table_idx == 0 {
                        ids.push(first);
                    }
                }
            }
            Some(Frame::Trailer(t)) => break t,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(trailer.rows[0], ids.len() as u64);
    assert_eq!(header.tables[0].rows_estimate, ids.len() as u64);
    assert!(trailer.cursor.raw() > 0);
    let conn = rusqlite::Connection::open(f.store_path()).unwrap();
    let expected: Vec<i64> = conn
        .prepare("SELECT id FROM assets WHERE region = 'north' AND status <> 'retired' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let got: Vec<i64> = ids
        .into_iter()
        .map(|v| match v {
            fieldsync_proto::Value::Integer(i) => i,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, expected);

    // Logout revokes the token.
    let logout = Request::post("/api/v1/logout")
        .header("x-fieldsync-protocol", "1")
        .header("x-fieldsync-device", "tab1")
        .header("x-fieldsync-device-secret", &secret)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&f, logout).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&f, get("/api/v1/tasks", &token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

impl Fixture {
    fn store_path(&self) -> std::path::PathBuf {
        self._dir.0.join("main.sqlite")
    }
}

mod routes;
