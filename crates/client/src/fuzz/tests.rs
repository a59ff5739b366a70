//! CI's share of fuzzing the replica opener: every input of
//! `fuzz/corpus/replica_file/` and `fuzz/regressions/replica_file/` opened again, which
//! must return. `write_seeds` (ignored) makes the seeds: replicas the device built.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::stream::SliceWriter;
use fieldsync_proto::task::WriteOp;
use fieldsync_proto::value::ColumnType;
use fieldsync_proto::wire::{ColumnDef, Cursor, KeyBlock, SliceHeader, TableSchema};
use rusqlite::Connection;

use super::*;
use crate::{Cancel, replica};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn replica_file_corpus_replays() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut opened, mut panicked, mut n) = (0, Vec::new(), 0);
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz_dir().join(kind).join("replica_file")) else {
            assert_ne!(kind, "corpus", "no corpus for replica_file");
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            n += 1;
            let dir = tmp.path().join(n.to_string());
            match catch_unwind(AssertUnwindSafe(|| replica_file(&dir, &bytes))) {
                Ok(Ok(())) => opened += 1,
                Ok(Err(_)) => {}
                Err(_) => panicked.push(path.display().to_string()),
            }
        }
    }
    assert!(panicked.is_empty(), "replica_file panicked on {panicked:?}");
    assert!(n >= 3, "only {n} inputs; run the ignored test write_seeds");
    assert!(
        opened >= 1,
        "the seeds hold at least one replica that opens"
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_without_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    assert!(replica_file(&dir, b"not a database, a shopping list").is_err());
    // The folder is made anew for each input: an empty file is an empty database,
    // which holds no replica.
    let e = replica_file(&dir, b"").unwrap_err();
    assert!(e.to_string().contains("fieldsync_replica"), "{e}");
}

fn header() -> SliceHeader {
    let col = |name: &str, column_type| ColumnDef {
        name: name.into(),
        column_type,
    };
    let table = |name: &str, columns, write, filter: Option<&str>| TableSchema {
        name: String::from(name),
        primary_key: "id".into(),
        columns,
        rows_estimate: 2,
        write,
        filter: filter.map(String::from),
        parent: None,
    };
    SliceHeader {
        protocol: fieldsync_proto::wire::PROTOCOL_VERSION,
        epoch: "epoch-1".into(),
        task: "work".into(),
        task_hash: "hash-1".into(),
        user: "ana".into(),
        device: "tab1".into(),
        tables: vec![
            table(
                "items",
                vec![
                    col("id", ColumnType::Integer),
                    col("name", ColumnType::Text),
                    col("weight", ColumnType::Real),
                    col("photo", ColumnType::Blob),
                ],
                vec![WriteOp::Insert, WriteOp::Update, WriteOp::Delete],
                Some("crew = $user OR weight > 2"),
            ),
            table(
                "codes",
                vec![
                    col("id", ColumnType::Text),
                    col("price", ColumnType::Decimal),
                ],
                vec![WriteOp::Update],
                None,
            ),
        ],
        since: None,
        full_reason: None,
        assigned: vec!["ana".into()],
        key_blocks: vec![KeyBlock {
            table: "items".into(),
            first: 100,
            last: 199,
            next: 100,
        }],
        file_tables: Vec::new(),
    }
}

/// A replica the device built from a real stream, installed in `dir`.
fn built_replica(dir: &DeviceDir) -> PathBuf {
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&header()).unwrap();
    for i in 1..=2 {
        let name = format!("item {i}");
        let photo = [i as u8, 0xff];
        let item = [
            ValueRef::Integer(i),
            ValueRef::Text(&name),
            ValueRef::Real(i as f64 * 1.5),
            ValueRef::Blob(&photo),
        ];
        w.row(0, item).unwrap();
    }
    w.row(1, [ValueRef::Text("A-1"), ValueRef::Text("12.50")])
        .unwrap();
    w.trailer(Cursor::from_raw(41)).unwrap();
    let stream = w.finish().unwrap();
    dir.create().unwrap();
    let (mut reader, h) = replica::open_stream(stream.as_slice()).unwrap();
    let built = replica::build(dir, &mut reader, h, &mut |_| {}, &Cancel::default()).unwrap();
    replica::install(dir, &built, None, 0).unwrap();
    replica::installed_file(dir).unwrap()
}

/// Writes the seeds of `replica_file` into `fuzz/corpus/replica_file/`. Run after
/// changing what a replica holds:
/// `cargo test -p fieldsync-client --lib -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let out = fuzz_dir().join("corpus/replica_file");
    fs::create_dir_all(&out).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = DeviceDir::new(tmp.path().join("dev"));
    let path = built_replica(&dir);
    let write = |name: &str, bytes: &[u8]| {
        replica_file(&tmp.path().join("check"), bytes).unwrap();
        fs::write(out.join(format!("seed-{name}")), bytes).unwrap();
    };
    write("fresh", &fs::read(&path).unwrap());
    // Edits by a logged-in user: the journal holds them.
    replica::set_login(&dir, Some("ana")).unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "UPDATE items SET name = 'renamed', weight = 9.5 WHERE id = 1;
         DELETE FROM items WHERE id = 2;
         UPDATE codes SET price = '13.00' WHERE id = 'A-1';
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    drop(conn);
    assert!(replica::journal_len(&path).unwrap() >= 3);
    write("edited", &fs::read(&path).unwrap());
    // The same replica in small pages and without WAL: a file a tenth the size, so
    // the fuzzer's changes land on the pages that matter.
    let small = tmp.path().join("small.sqlite");
    let conn = Connection::open(&path).unwrap();
    conn.execute("VACUUM INTO ?1", [small.to_str().unwrap()])
        .unwrap();
    drop(conn);
    let conn = Connection::open(&small).unwrap();
    conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA page_size = 512; VACUUM;")
        .unwrap();
    drop(conn);
    write("edited-small", &fs::read(&small).unwrap());
    // An empty file is an empty database, no replica: refused.
    assert!(replica_file(&tmp.path().join("check"), b"").is_err());
    fs::write(out.join("seed-empty"), b"").unwrap();
}
