//! Fuzzes the filter language: parse, check, SQL for both engines, evaluation, canonical text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fieldsync_proto::fuzz::filter(data);
});
