//! Conformance of integer key blocks (`KeyBlocks`): reserved from the table's own key
//! source, disjoint between devices and from the office's later inserts, topped up
//! below half a block, void for a revoked device.

use fieldsync_proto::wire::KeyBlock;
use fieldsync_store::KeyKind;

use super::*;

fn blocks(s: &dyn Store, device: &str) -> Vec<KeyBlock> {
    s.key_blocks(device, "sites", 10).expect("key_blocks")
}

fn keys(b: &[KeyBlock]) -> Vec<i64> {
    b.iter().flat_map(|b| b.next..=b.last).collect()
}

pub(super) fn key_blocks_reserved_topped_up_and_void_when_revoked(fx: &Fixture) {
    setup(fx);
    let mut office = fx.office();
    let (table_sql, own) = match fx.engine {
        Engine::Sqlite => (
            "CREATE TABLE sites (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);
             INSERT INTO sites (name) VALUES ('office-1');",
            ("fieldsync_key_blocks", "fieldsync_devices", "1"),
        ),
        Engine::Postgres => (
            "CREATE TABLE sites (id bigserial PRIMARY KEY, name text);
             INSERT INTO sites (name) VALUES ('office-1');",
            ("fieldsync.key_blocks", "fieldsync.devices", "true"),
        ),
    };
    office.exec(table_sql);
    let s = fx.store();
    let info = s.track_table("sites").expect("track");
    assert!(matches!(info.key_kind(), KeyKind::Numbered(_)), "{info:?}");
    s.device_add(&device("dev2", "code-2")).expect("dev2");

    let one = blocks(s, "dev1");
    assert_eq!(keys(&one).len(), 10, "{one:?}");
    assert!(
        one.iter().all(|b| b.first > 1),
        "above the office's row: {one:?}"
    );
    assert_eq!(
        blocks(s, "dev1"),
        one,
        "no top-up while half a block is left"
    );
    let two = blocks(s, "dev2");
    assert_eq!(keys(&two).len(), 10);
    assert!(
        keys(&one).iter().all(|k| !keys(&two).contains(k)),
        "{one:?} {two:?}"
    );
    // The office's next key is none of theirs.
    office.exec("INSERT INTO sites (name) VALUES ('office-2')");
    let Value::Integer(office_key) = office.value("SELECT id FROM sites WHERE name = 'office-2'")
    else {
        panic!("an integer key")
    };
    assert!(!keys(&one).contains(&office_key) && !keys(&two).contains(&office_key));

    // Six keys used: fewer than half left, a new block comes.
    office.exec(&format!(
        "UPDATE {} SET next_key = first_key + 6 WHERE device = 'dev1'",
        own.0
    ));
    let topped = blocks(s, "dev1");
    assert_eq!(keys(&topped).len(), 14, "{topped:?}");
    assert!(keys(&topped).iter().all(|k| *k != office_key));

    // A revoked device's blocks are void.
    office.exec(&format!(
        "UPDATE {} SET revoked = {} WHERE id = 'dev1'",
        own.1, own.2
    ));
    assert_eq!(blocks(s, "dev1"), vec![]);
    assert_eq!(blocks(s, "dev2"), two, "another device keeps its own");
}
