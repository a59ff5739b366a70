use super::*;

/// A device folder whose `replica.sqlite` is a plain file with the replica's own
/// tables and a record saying it is complete, of task `work`, for `user`.
fn folder_with_replica(user: &str) -> (tempfile::TempDir, DeviceDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DeviceDir::new(tmp.path().join("dev"));
    dir.create().unwrap();
    let conn = Connection::open(dir.replica_path()).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    conn.execute_batch(crate::triggers::REPLICA_TABLES).unwrap();
    conn.execute_batch("CREATE TABLE fieldsync_replica (key TEXT PRIMARY KEY, value)")
        .unwrap();
    conn.execute(
        "INSERT INTO fieldsync_replica (key, value) VALUES
         ('task', 'work'), ('complete', '1'), ('per_user', '1'), ('user', ?1)",
        [user],
    )
    .unwrap();
    (tmp, dir)
}

fn journal_entry(conn: &Connection) {
    conn.execute(
        "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
         VALUES ('items', 1, 'insert', NULL, '{}', NULL, 'ana', '')",
        [],
    )
    .unwrap();
}

#[test]
fn the_held_replica_is_counted_through_its_hold() {
    let (_tmp, dir) = folder_with_replica("ana");
    journal_entry(&Connection::open(dir.replica_path()).unwrap());
    let hold = hold_writers(&dir).unwrap().unwrap();
    journal_entry(hold.conn());
    // A connection of its own sees what is committed; the hold's also what it wrote.
    assert_eq!(pending_total_with(&dir, None).unwrap(), 1);
    assert_eq!(pending_total_with(&dir, Some(hold.open_file())).unwrap(), 2);
    // A connection open on another file is not this replica's.
    let other = tempfile::NamedTempFile::new().unwrap();
    let elsewhere = Connection::open(other.path()).unwrap();
    assert_eq!(
        pending_total_with(&dir, Some((other.path(), &elsewhere))).unwrap(),
        1
    );
}

#[test]
fn a_record_read_before_is_used_only_for_the_file_it_was_read_from() {
    // The current replica is Bea's; Ana logs in: it is set aside for Bea.
    let (_tmp, dir) = folder_with_replica("bea");
    let mut anas = read_info(&dir.replica_path()).unwrap().unwrap();
    anas.user = "ana".into();
    let elsewhere = dir.root.join("replica-00000000000000aa.sqlite");
    recover::settle_user_knowing(&dir, "ana", Some((elsewhere, anas.clone()))).unwrap();
    assert!(
        installed_file(&dir).is_none(),
        "Bea's replica was set aside"
    );
    assert_eq!(set_aside_files(&dir).unwrap().len(), 1);

    // Read from the current file, the record is taken as it was read.
    let (_tmp, dir) = folder_with_replica("bea");
    recover::settle_user_knowing(&dir, "ana", Some((dir.replica_path(), anas))).unwrap();
    assert_eq!(installed_file(&dir), Some(dir.replica_path()));
}
