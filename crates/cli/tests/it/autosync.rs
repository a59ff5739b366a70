//! Automatic synchronization (issue "[auto-sync]"): the options the crew sets on the
//! device. The watcher and tickets come later; their rules are tested on their own in
//! the client library (`autosync/tests.rs`).

use crate::harness::*;

#[test]
fn device_options_are_shown_set_and_kept_in_the_folder() {
    let office = Office::new(20);
    let dev = office.device("tab1", &["north-inspections"]);

    let shown = dev.run(&["options"], "").ok();
    assert_eq!(
        shown.stdout, "auto-sync: off\ndownload-data: on\ndownload-files: off\n",
        "the defaults"
    );

    let set = dev
        .run(
            &["options", "--auto-sync", "on", "--download-files", "on"],
            "",
        )
        .ok();
    assert_eq!(
        set.stdout,
        "auto-sync: on\ndownload-data: on\ndownload-files: on\n"
    );
    // Kept in the folder: a new process reads them, as does `device status`.
    let json: serde_json::Value =
        serde_json::from_str(&dev.run(&["options", "--json"], "").ok().stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"auto_sync": true, "download_data": true, "download_files": true})
    );
    assert_eq!(dev.status()["options"], json);

    // Files come only in addition to data: the option is kept but said inactive.
    let off = dev.run(&["options", "--download-data", "off"], "").ok();
    assert!(
        off.stdout
            .contains("download-files: on (acts only with download-data on)"),
        "{off:?}"
    );

    // A bad value is a usage error and changes nothing.
    let bad = dev.run(&["options", "--auto-sync", "maybe"], "");
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(
        dev.status()["options"],
        serde_json::json!({"auto_sync": true, "download_data": false, "download_files": true})
    );
}
