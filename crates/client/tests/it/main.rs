//! The client library without a server: a device in a temporary folder talks to a
//! fake server through the [`Transport`] seam, which answers with streams written by
//! `proto`'s `SliceWriter` and reads uploads with `proto`'s decoder. Builds, installs
//! and recovers replicas; sends the journal; the retries of transient failures.

mod fake;
mod replica;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use fieldsync_client::{Cancel, ClientConfig, Device, DownloadOptions};

pub use fake::Fake;

/// Three attempts with a 1 ms backoff, busy answers asked again for `busy_patience`.
pub fn quick_config(busy_patience: Duration) -> ClientConfig {
    ClientConfig {
        attempts: 3,
        backoff: Duration::from_millis(1),
        busy_patience,
        ..ClientConfig::default()
    }
}

/// A paired, logged-in device in a fresh folder, calling `fake`, with no patience for
/// a busy server ([`quick_config`]).
pub fn device(fake: &Arc<Fake>) -> (tempfile::TempDir, Device) {
    let dir = tempfile::tempdir().unwrap();
    device_with(fake, dir, quick_config(Duration::ZERO))
}

/// A paired, logged-in device in `dir`, calling `fake`, with `config`.
pub fn device_with(
    fake: &Arc<Fake>,
    dir: tempfile::TempDir,
    config: ClientConfig,
) -> (tempfile::TempDir, Device) {
    let device = Device::open_with_transport(dir.path().join("dev"), config, fake.clone());
    device.pair("fake://office", "tab1", "CODE").unwrap();
    device.login("ana", "pw").unwrap();
    (dir, device)
}

pub fn download(device: &Device) -> fieldsync_client::Result<fieldsync_client::Report> {
    device.download(
        "work",
        &DownloadOptions::default(),
        &mut |_| {},
        &Cancel::default(),
    )
}

/// The replica's rows of `items`, by id.
pub fn items(device: &Device) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(device.dir().replica_path()).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, name FROM items ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The generation files in the device folder.
pub fn generations(device: &Device) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&device.dir().root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("replica-") && n.ends_with(".sqlite"))
        .collect();
    names.sort();
    names
}
