//! Issue #20 (a fleet at once): uploads beyond the server's integration threads wait
//! their turn in order instead of being told "busy" (200 devices syncing at once used
//! to see three refusals each and give up), within bounds: one device has at most two
//! uploads in the server's hands, and a turn is waited for at most 30 s
//! (`server/integrators.rs`).

use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::limits_store::{
    device_headers, hold_row, latest_base, north_ids, on_server, post_upload, rename,
    send_in_thread, upload_of,
};

/// Eight devices' uploads of a row the office holds take every turn the server has
/// (two threads, each upload waiting 1.5 s for the row, and four next in line); four
/// more devices then `device send` at once with no retry allowed
/// (`FIELDSYNC_RETRIES=1`): each waits its turn behind them and succeeds. Before the
/// queue, they were told "busy" at once and failed. The locked uploads themselves are
/// told "row locked in the office, retry", as before.
#[test]
fn sends_beyond_the_servers_threads_wait_their_turn_instead_of_failing() {
    let office = Office::new_pg(40);
    let mut command = Command::new(BIN);
    command.env("FIELDSYNC_LOCK_TIMEOUT_MS", "1500");
    let server = Server::start_by(command, &office.db_url);
    let url = server.url.clone();
    let on_server = |id: String| on_server(&office, &url, &id);
    let lockers: Vec<(String, DeviceDir)> = (0..8)
        .map(|i| (format!("lk{i}"), on_server(format!("lk{i}"))))
        .collect();
    let senders: Vec<DeviceDir> = (0..4).map(|i| on_server(format!("sd{i}"))).collect();
    let ids = north_ids(&office);
    let locked = ids[0];
    for (i, dev) in senders.iter().enumerate() {
        dev.replica()
            .execute_batch(&format!(
                "UPDATE assets SET name = 'from sd{i}' WHERE id = {}",
                ids[1 + i]
            ))
            .unwrap();
    }

    let mut holder = hold_row(&office, locked);
    let waiting: Vec<_> = lockers
        .iter()
        .map(|(id, dev)| {
            let base = latest_base(&office, id);
            let (url, headers) = (url.clone(), device_headers(dev));
            std::thread::spawn(move || {
                let upload = upload_of(vec![rename(0, locked, base, "locked".into())]);
                post_upload(&url, &headers, &upload)
            })
        })
        .collect();
    // The locked uploads reach the server first.
    std::thread::sleep(Duration::from_millis(500));
    let sends: Vec<_> = senders.iter().map(|dev| send_in_thread(dev, 1)).collect();
    let mut slowest = Duration::ZERO;
    for t in sends {
        let (run, took) = t.join().unwrap();
        assert_eq!(run.code, 0, "a send behind the locked uploads: {run:?}");
        slowest = slowest.max(took);
    }
    let mut told_locked = 0;
    for t in waiting {
        let answer = t.join().unwrap();
        assert_eq!(answer.status, 503, "{}", answer.text());
        let body = answer.json();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("row locked in the office, retry"),
            "{body}"
        );
        told_locked += 1;
    }
    holder.batch_execute("ROLLBACK").unwrap();
    for (i, id) in ids[1..5].iter().enumerate() {
        assert_eq!(
            office.value(&format!("SELECT name FROM assets WHERE id = {id}")),
            format!("from sd{i}")
        );
    }
    eprintln!(
        "4 sends behind {told_locked} uploads waiting 1.5 s each on a locked row: slowest {slowest:?}"
    );
    // Eight locked uploads, two at a time, 1.5 s each: about 6 s of queue ahead.
    assert!(
        slowest > Duration::from_secs(2),
        "the sends did not wait: {slowest:?}"
    );
    drop(server);
}
