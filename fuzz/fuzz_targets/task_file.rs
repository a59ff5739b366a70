//! Fuzzes the task-file parser and its checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fieldsync_proto::fuzz::task_file(data);
});
