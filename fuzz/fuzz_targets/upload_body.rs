//! Fuzzes the server's upload decoder: a body whose checksum header matches.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fieldsync_proto::fuzz::upload_body(data);
});
