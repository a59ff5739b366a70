//! Replicas built from written streams, installed, kept on any failure, recovered.

use super::*;
use crate::fake::{failed_slice, slice};
use fieldsync_client::{ClientError, Mode};
use fieldsync_proto::wire::ErrorCode;

fn rows(n: i64) -> Vec<(i64, String)> {
    (1..=n).map(|i| (i, format!("item {i}"))).collect()
}

#[test]
fn a_written_stream_becomes_the_installed_replica() {
    let fake = Fake::new(&[(1, "one"), (2, "two")]);
    let (_tmp, dev) = device(&fake);
    let report = download(&dev).unwrap();
    assert_eq!(report.rows_down, 2);
    assert_eq!(report.tables, [("items".to_string(), 2)]);
    assert_eq!(items(&dev), [(1, "one".into()), (2, "two".into())]);
    assert_eq!(dev.status().unwrap().task.as_deref(), Some("work"));
    let first = generations(&dev);
    assert_eq!(first.len(), 1);
    // The next download replaces it; the old generation goes.
    *fake.rows.lock().unwrap() = rows(5000);
    assert_eq!(download(&dev).unwrap().rows_down, 5000);
    assert_eq!(items(&dev).len(), 5000);
    assert_eq!(items(&dev)[4999], (5000, "item 5000".into()));
    let second = generations(&dev);
    assert_eq!(second.len(), 1);
    assert_ne!(first, second);
}

#[test]
fn a_damaged_or_cut_stream_keeps_the_old_replica_after_its_retries() {
    let fake = Fake::new(&[(1, "one")]);
    let (_tmp, dev) = device(&fake);
    download(&dev).unwrap();
    let before = (items(&dev), generations(&dev));
    let good = slice(&rows(2000));
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x04;
    let cut = good[..good.len() - 9].to_vec();
    for (n, bad) in [flipped, cut].into_iter().enumerate() {
        *fake.body.lock().unwrap() = Some(bad);
        let e = download(&dev).unwrap_err();
        assert!(matches!(e, ClientError::Stream(_)), "{e:?}");
        assert_eq!((items(&dev), generations(&dev)), before);
        // Each attempt asked again: a damaged stream is transient.
        assert_eq!(fake.count("/download"), 1 + 3 * (n + 1));
    }
}

#[test]
fn the_servers_error_frame_is_its_error_and_keeps_the_old_replica() {
    let fake = Fake::new(&[(1, "one")]);
    let (_tmp, dev) = device(&fake);
    download(&dev).unwrap();
    let before = (items(&dev), generations(&dev));
    *fake.body.lock().unwrap() = Some(failed_slice(&rows(10)));
    match download(&dev).unwrap_err() {
        ClientError::Server { code, message } => {
            assert_eq!(code, ErrorCode::Internal);
            assert_eq!(message, "the office database went away");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((items(&dev), generations(&dev)), before);
}

#[test]
fn a_bad_header_is_refused_before_any_file_is_made() {
    let fake = Fake::new(&[]);
    let (_tmp, dev) = device(&fake);
    let mut h = fake::header();
    h.tables[0].name = "sqlite_master".into();
    let mut w = fieldsync_proto::stream::SliceWriter::new(Vec::new()).unwrap();
    w.header(&h).unwrap();
    w.trailer(fieldsync_proto::wire::Cursor::from_raw(1))
        .unwrap();
    *fake.body.lock().unwrap() = Some(w.finish().unwrap());
    let e = download(&dev).unwrap_err();
    assert!(e.to_string().contains("bad slice header"), "{e}");
    assert!(generations(&dev).is_empty());
}

#[test]
fn a_lost_link_is_made_again_and_an_unfinished_build_removed() {
    let fake = Fake::new(&[(1, "one")]);
    let (_tmp, dev) = device(&fake);
    download(&dev).unwrap();
    let generation = generations(&dev);
    // A crash mid-build leaves a generation that never completed; a copy lost the link.
    let stray = dev.dir().root.join("replica-00000000000000aa.sqlite");
    rusqlite::Connection::open(&stray)
        .unwrap()
        .execute_batch("CREATE TABLE fieldsync_replica (key TEXT PRIMARY KEY, value)")
        .unwrap();
    std::fs::remove_file(dev.dir().replica_path()).unwrap();
    // Any command under the folder lock recovers.
    dev.set_mode(Mode::Online).unwrap();
    assert_eq!(generations(&dev), generation);
    let link = std::fs::read_link(dev.dir().replica_path()).unwrap();
    assert!(link.to_string_lossy().ends_with(&generation[0]), "{link:?}");
    assert_eq!(items(&dev), [(1, "one".into())]);
}

#[test]
fn an_install_interrupted_after_its_commit_point_rolls_forward() {
    let fake = Fake::new(&[(1, "one")]);
    let (_tmp, dev) = device(&fake);
    download(&dev).unwrap();
    let old = dev.dir().root.join(&generations(&dev)[0]);
    // The new generation is complete and durable; the old one was retired (the commit
    // point); the link was not swapped yet when the device died.
    let new = dev.dir().root.join("replica-00000000000000bb.sqlite");
    std::fs::copy(&old, &new).unwrap();
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute(
            "UPDATE fieldsync_replica SET value = '1' WHERE key = 'retired'",
            [],
        )
        .unwrap();
    dev.set_mode(Mode::Online).unwrap();
    let link = std::fs::read_link(dev.dir().replica_path()).unwrap();
    assert!(
        link.to_string_lossy()
            .ends_with("replica-00000000000000bb.sqlite"),
        "{link:?}"
    );
    assert_eq!(generations(&dev), ["replica-00000000000000bb.sqlite"]);
    assert_eq!(items(&dev), [(1, "one".into())]);
}

#[test]
fn the_journal_goes_up_in_an_upload_and_leaves_on_its_acknowledgement() {
    let fake = Fake::new(&[(1, "one"), (2, "two")]);
    let (_tmp, dev) = device(&fake);
    download(&dev).unwrap();
    let conn = rusqlite::Connection::open(dev.dir().replica_path()).unwrap();
    conn.execute_batch(
        "INSERT INTO items (id, name) VALUES (10, 'ten');
         UPDATE items SET name = 'uno' WHERE id = 1;
         UPDATE items SET name = 'eins' WHERE id = 1;
         DELETE FROM items WHERE id = 2;",
    )
    .unwrap();
    drop(conn);
    assert_eq!(dev.journal().unwrap().len(), 4);
    let report = dev.send(&mut |_| {}, &Cancel::default()).unwrap();
    let uploads = fake.uploads.lock().unwrap();
    assert_eq!(uploads.len(), 1);
    // Compacted: two updates of a row go as one.
    assert_eq!(uploads[0].entries.len(), 3);
    assert_eq!(uploads[0].task, "work");
    assert_eq!(uploads[0].epoch.as_deref(), Some("epoch-1"));
    assert_eq!(report.rows_up, 3);
    assert!(dev.journal().unwrap().is_empty());
    assert_eq!(dev.status().unwrap().pending, 0);
}
