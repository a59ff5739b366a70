//! CI's share of the fuzzing: every input of `fuzz/corpus/TARGET/` (seeds and what the
//! fuzzer kept) and `fuzz/regressions/TARGET/` (inputs that once crashed) goes through
//! the target's entry point again, which must return. `write_seeds` (ignored) makes
//! the seeds with the real encoders.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use super::*;
use crate::frame::ValueRef;
use crate::stream::SliceWriter;
use crate::task::{ParentRef, WriteOp};
use crate::wire::{
    ColumnDef, Cursor, ErrorBody, ErrorCode, FullReason, KeyBlock, SliceHeader, TableSchema,
    UploadAttachment, UploadEntry,
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The inputs of one target: its corpus (which must not be empty) and its regressions.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert_ne!(kind, "corpus", "no corpus at {}", dir.display());
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    assert!(
        out.len() >= 3,
        "{target}: only {} inputs; run `cargo test -p fieldsync-proto --lib -- --ignored write_seeds`",
        out.len()
    );
    out
}

/// Runs `f` on every input of `target`; names every input it panicked on.
fn replay<T, E>(target: &str, f: impl Fn(&[u8]) -> Result<T, E>) -> (usize, usize) {
    let (mut ok, mut refused, mut panicked) = (0, 0, Vec::new());
    for (path, bytes) in inputs(target) {
        match catch_unwind(AssertUnwindSafe(|| f(&bytes))) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panicked.push(path.display().to_string()),
        }
    }
    assert!(panicked.is_empty(), "{target} panicked on {panicked:?}");
    (ok, refused)
}

#[test]
fn slice_stream_corpus_replays() {
    let (ok, _) = replay("slice_stream", slice_stream);
    assert!(ok >= 1, "the seeds hold at least one whole slice");
}

#[test]
fn upload_body_corpus_replays() {
    let (ok, _) = replay("upload_body", upload_body);
    assert!(ok >= 1, "the seeds hold at least one good upload");
}

#[test]
fn task_file_corpus_replays() {
    let (ok, _) = replay("task_file", task_file);
    assert!(ok >= 1, "the seeds hold at least one good task file");
}

#[test]
fn filter_corpus_replays() {
    let (ok, _) = replay("filter", filter);
    assert!(ok >= 1, "the seeds hold at least one good filter");
}

#[test]
fn entry_points_refuse_garbage_without_panicking() {
    for bytes in [&b""[..], b"\xff\xfe", b"\x01\x05\x00\x00\x00{}"] {
        assert!(slice_stream(bytes).is_err());
        assert!(upload_body(bytes).is_err());
        assert!(task_file(bytes).is_err());
    }
    assert!(filter(b"a = ").is_err());
}

// ---------------------------------------------------------------------------------------
// Seeds, made by the real encoders

fn column(name: &str, column_type: ColumnType) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        column_type,
    }
}

fn slice_header(since: Option<Cursor>) -> SliceHeader {
    let assets = TableSchema {
        name: "assets".into(),
        primary_key: "id".into(),
        columns: vec![
            column("id", ColumnType::Integer),
            column("name", ColumnType::Text),
            column("x", ColumnType::Real),
            column("photo", ColumnType::Blob),
            column("price", ColumnType::Decimal),
        ],
        rows_estimate: 3,
        write: vec![WriteOp::Insert, WriteOp::Update],
        filter: Some("name <> 'retired' AND x BETWEEN 0 AND 10".into()),
        parent: None,
    };
    let orders = TableSchema {
        name: "work_orders".into(),
        primary_key: "code".into(),
        columns: vec![
            column("code", ColumnType::Text),
            column("asset_id", ColumnType::Integer),
            column("qty", ColumnType::Numeric),
        ],
        rows_estimate: 2,
        write: vec![WriteOp::Delete],
        filter: Some("crew = $user".into()),
        parent: Some(ParentRef {
            table: "assets".into(),
            key: "asset_id".into(),
        }),
    };
    SliceHeader {
        protocol: 1,
        epoch: "0123456789abcdef".into(),
        task: "inspections".into(),
        task_hash: "feedc0de".into(),
        user: "ana".into(),
        device: "tab-7".into(),
        tables: vec![assets, orders],
        full_reason: since.is_none().then_some(FullReason::NoCursor),
        since,
        assigned: vec!["ana".into(), "bo".into()],
        key_blocks: vec![KeyBlock {
            table: "assets".into(),
            first: 1000,
            last: 1999,
            next: 1003,
        }],
        file_tables: vec!["assets".into()],
    }
}

/// The uncompressed frames a real writer makes: `write` drives the writer.
fn frames(write: impl FnOnce(&mut SliceWriter<Vec<u8>>)) -> Vec<u8> {
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    write(&mut w);
    zstd::decode_all(w.finish().unwrap().as_slice()).unwrap()
}

fn asset(i: i64) -> Vec<Value> {
    vec![
        Value::Integer(i),
        Value::Text(format!("pump {i} – nord")),
        Value::Real(i as f64 * 1.5),
        if i % 2 == 0 {
            Value::Null
        } else {
            Value::Blob(vec![0, 0xff, i as u8])
        },
        Value::Text("12.50".into()),
    ]
}

fn row(w: &mut SliceWriter<Vec<u8>>, lane: usize, values: &[Value]) {
    w.row(lane, values.iter().map(ValueRef::from)).unwrap();
}

fn slice_stream_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let server_error = ErrorBody {
        code: ErrorCode::Internal,
        message: "the main database went away".into(),
        keep_changes: false,
    };
    let order = [
        Value::Text("WO-1".into()),
        Value::Integer(1),
        Value::Integer(3),
    ];
    vec![
        (
            "full",
            frames(|w| {
                w.header(&slice_header(None)).unwrap();
                for i in 0..3 {
                    row(w, 0, &asset(i));
                }
                row(w, 1, &order);
                w.trailer(Cursor::from_raw(42)).unwrap();
            }),
        ),
        (
            "empty",
            frames(|w| {
                w.header(&slice_header(None)).unwrap();
                w.trailer(Cursor::from_raw(1)).unwrap();
            }),
        ),
        (
            "delta",
            frames(|w| {
                w.header(&slice_header(Some(Cursor::from_raw(40)))).unwrap();
                row(w, 0, &asset(7));
                row(w, 2, &[Value::Integer(5)]);
                row(w, 3, &[Value::Text("WO-9".into())]);
                w.trailer(Cursor::from_raw(43)).unwrap();
            }),
        ),
        ("error-only", frames(|w| w.error(&server_error).unwrap())),
        (
            "error-after-rows",
            frames(|w| {
                w.header(&slice_header(None)).unwrap();
                row(w, 0, &asset(1));
                w.error(&server_error).unwrap();
            }),
        ),
    ]
}

fn upload(entries: Vec<UploadEntry>, attachments: Vec<UploadAttachment>) -> Vec<u8> {
    let upload = Upload {
        upload_id: "0123456789abcdef0123456789abcdef".into(),
        task: "inspections".into(),
        epoch: Some("0123456789abcdef".into()),
        task_hash: Some("feedc0de".into()),
        cursor: Some(Cursor::from_raw(42)),
        entries,
        attachments,
    };
    upload_body::encode(&upload).unwrap().body
}

fn entry(op: WriteOp, key: Value, old: &[(&str, Value)], new: &[(&str, Value)]) -> UploadEntry {
    let map = |kv: &[(&str, Value)]| -> crate::Row {
        kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    UploadEntry {
        seq_first: 1,
        seq_last: 3,
        table: "assets".into(),
        key,
        op,
        base_version: (op != WriteOp::Insert).then_some(7),
        user: "ana".into(),
        old: map(old),
        new: map(new),
    }
}

fn upload_body_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let update = entry(
        WriteOp::Update,
        Value::Integer(1),
        &[("name", Value::Text("old".into()))],
        &[("name", Value::Text("new".into())), ("x", Value::Real(2.5))],
    );
    let insert = entry(
        WriteOp::Insert,
        Value::Integer(1001),
        &[],
        &[
            ("id", Value::Integer(1001)),
            ("photo", Value::Blob(vec![1, 2, 3])),
            ("note", Value::Null),
        ],
    );
    let delete = entry(
        WriteOp::Delete,
        Value::Text("WO-1".into()),
        &[("qty", Value::Integer(3))],
        &[],
    );
    let attachment = UploadAttachment {
        table: "assets".into(),
        key: "1".into(),
        name: "pump.jpg".into(),
        size: 3,
        sha256: "a".repeat(64),
        content_type: "image/jpeg".into(),
        user: "ana".into(),
        added_at: "2026-05-01T08:00:00Z".parse().unwrap(),
    };
    vec![
        ("empty", upload(vec![], vec![])),
        ("update", upload(vec![update.clone()], vec![])),
        ("mixed", upload(vec![update, insert, delete], vec![])),
        ("attachment", upload(vec![], vec![attachment])),
    ]
}

const FILTER_SEEDS: &[&str] = &[
    "region = 'north' AND status <> 'retired'",
    "crew_member = $user AND status IN ('open', 'in-progress')",
    "inspector = $user",
    "priority >= 5",
    "(a = 1 OR b = 2) AND c = 3",
    "NOT NOT (a = 1)",
    "a = 1 OR b = 2 AND NOT c = 3",
    "name = 'x''); DROP TABLE t; --' OR name = $device",
    "name BETWEEN region AND note",
    "region = 'n' AND (score > 1 OR name LIKE $user)",
    "weight <> 9007199254740993 OR score = 1e17",
    "x IN (1, $device)",
    "x NOT IN (1, 2) AND y IS NOT NULL OR z LIKE 'a%' AND w BETWEEN 1 AND 0",
    "x not in (1, 2) and y is not null or z Like 'a%' AND w between true and False",
    "\"odd \"\" name\" = -0.5e-3 AND price <= 12.50",
    "note IS NULL OR note LIKE '%\\_x'",
];

/// A task file with what the examples leave out: a parent, a conflict policy, files.
const TASK_SEED: &str = r#"name = "site-visits"
description = "Visits and their photos"

[[tables]]
name = "sites"
filter = "region IN ('north', 'east') AND NOT closed = 1"
write = ["insert", "update"]
conflict = "device-wins"

[[tables]]
name = "visits"
columns = ["id", "site_id", "note", "at"]
parent = { table = "sites", key = "site_id" }
write = ["insert", "update", "delete"]

[files]
tables = ["visits"]
"#;

/// Writes the seeds of the four proto targets into `fuzz/corpus/` (examples' task
/// files included). Run after changing an encoder:
/// `cargo test -p fieldsync-proto --lib -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    for (name, bytes) in slice_stream_seeds() {
        assert!(
            name.starts_with("error") || slice_stream(&bytes).is_ok(),
            "{name}"
        );
        write("slice_stream", name, &bytes);
    }
    for (name, bytes) in upload_body_seeds() {
        upload_body(&bytes).unwrap();
        write("upload_body", name, &bytes);
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for e in std::fs::read_dir(examples).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let bytes = std::fs::read(&path).unwrap();
            task_file(&bytes).unwrap();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            write("task_file", &name, &bytes);
        }
    }
    task_file(TASK_SEED.as_bytes()).unwrap();
    write("task_file", "parent-files", TASK_SEED.as_bytes());
    for (i, f) in FILTER_SEEDS.iter().enumerate() {
        write("filter", &i.to_string(), f.as_bytes());
    }
}
