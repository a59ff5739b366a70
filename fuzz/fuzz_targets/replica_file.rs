//! Fuzzes the replica opener: the input is a device's `replica.sqlite`, opened the ways
//! the device opens it, in a folder of this process made anew for each input.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("fieldsync-fuzz-replica-{}", std::process::id()))
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fieldsync_client::fuzz::replica_file(&DIR, data);
});
