//! Fuzzes the slice stream reader: uncompressed frames, compressed by the entry point.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fieldsync_proto::fuzz::slice_stream(data);
});
