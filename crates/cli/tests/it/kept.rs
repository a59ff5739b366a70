//! A big slice's whole stream kept by the server and sent again (server/src/kept.rs):
//! to another device of the crew and to the same one, only while nothing in the slice
//! changed, and what it gets is exactly the slice, with a cursor its next deltas start
//! from. On both engines.

use std::time::{Duration, Instant};

use crate::harness::*;

const TASK: &str = "north-inspections";

/// The sync history's newest record once there are `n` of them.
fn newest_of(office: &Office, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = office.admin(&["history", "--json"], "").ok().stdout;
        let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        if all.len() >= n || Instant::now() > deadline {
            assert_eq!(all.len(), n, "{all:#?}");
            return all[n - 1].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the download the history recorded as its `n`th sent the kept stream.
fn resent(office: &Office, n: usize) -> bool {
    let record = newest_of(office, n);
    assert_eq!(record["result"], "ok", "{record}");
    let message = record["message"].as_str().unwrap();
    message.ends_with("the slice's kept stream")
}

fn ana_device(office: &Office, id: &str) -> DeviceDir {
    let dev = office.device(id, &[TASK]);
    dev.login("ana").ok();
    dev
}

#[test]
fn a_big_slices_stream_is_sent_again_only_while_nothing_in_it_changed() {
    // 15,000 north assets and their inspections: above the server's 20,000 rows.
    let office = Office::new(40_000);
    let tab1 = ana_device(&office, "tab1");
    tab1.run(&["download", TASK], "").ok();
    assert!(!resent(&office, 1), "the first download reads the slice");
    let slice = replica_content(&tab1);
    assert!(slice.len() > 20_000, "{}", slice.len());

    // Other tablets of the crew: the kept stream, exactly the slice.
    let tab2 = ana_device(&office, "tab2");
    tab2.run(&["download", TASK], "").ok();
    assert!(resent(&office, 2));
    assert_eq!(replica_content(&tab2), slice);
    assert_eq!(tab2.status()["last_sync"]["full_reason"], "no-cursor");

    // A change outside the slice: still the slice.
    office.execute_batch("UPDATE assets SET name = 'south, renamed' WHERE id = 2");
    let tab3 = ana_device(&office, "tab3");
    tab3.run(&["download", TASK], "").ok();
    assert!(resent(&office, 3));
    assert_eq!(replica_content(&tab3), slice);

    // A device that asks for the slice read anew (`--full`) gets it read.
    tab1.run(&["download", TASK, "--full"], "").ok();
    assert!(!resent(&office, 4));
    assert_eq!(replica_content(&tab1), slice);

    // A change inside: the slice is read again, and that stream is kept next.
    office.execute_batch(
        "UPDATE assets SET name = 'north, renamed' WHERE id = (SELECT min(id) FROM assets
         WHERE region = 'north' AND status <> 'retired')",
    );
    let tab4 = ana_device(&office, "tab4");
    tab4.run(&["download", TASK], "").ok();
    assert!(!resent(&office, 5));
    let changed = replica_content(&tab4);
    assert_ne!(changed, slice);
    assert!(changed.iter().any(|r| r[1] == "tnorth, renamed"));
    let tab5 = ana_device(&office, "tab5");
    tab5.run(&["download", TASK], "").ok();
    assert!(resent(&office, 6));
    assert_eq!(replica_content(&tab5), changed);

    // The tablet that got the kept stream before the change has a cursor of its own
    // download's snapshot: its delta brings the change and nothing else.
    tab2.run(&["download", TASK], "").ok();
    assert!(!resent(&office, 7));
    let last = tab2.status()["last_sync"].clone();
    assert_eq!(last["full"], false, "{last}");
    assert!(last["rows_down"].as_u64().unwrap() >= 1, "{last}");
    assert_eq!(replica_content(&tab2), changed);

    // The inspections are each user's own (`inspector = $user`): ben's slice is
    // another, read for him and kept apart.
    office
        .admin(&["task", "assign", TASK, "--user", "ben"], "")
        .ok();
    let ben_rows = |dev: &DeviceDir| rows(&dev.replica(), "SELECT inspector FROM inspections");
    let bens = office.device("tab6", &[TASK]);
    bens.login("ben").ok();
    bens.run(&["download", TASK], "").ok();
    assert!(!resent(&office, 8));
    let inspectors = ben_rows(&bens);
    assert!(!inspectors.is_empty() && inspectors.iter().all(|r| r[0] == "tben"));
    let bens_too = office.device("tab7", &[TASK]);
    bens_too.login("ben").ok();
    bens_too.run(&["download", TASK], "").ok();
    assert!(resent(&office, 9));
    assert_eq!(replica_content(&bens_too), replica_content(&bens));
}

crate::also_on_postgres!(a_big_slices_stream_is_sent_again_only_while_nothing_in_it_changed);
