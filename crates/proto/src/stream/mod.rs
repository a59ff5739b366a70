//! The slice stream as a whole: what a download's body is. A [`SliceWriter`] makes it
//! (header, row batches, trailer or an error frame, zstd-compressed) and a
//! [`SliceReader`] takes it apart, refusing every stream that is out of order, cut,
//! damaged or miscounted, so neither the server nor the device repeats these rules.
//! `frame.rs` is the codec of the single frames both use.
//!
//! Order: one header first (or an error frame alone), then row batches of the header's
//! tables, then one trailer whose counts and checksum match what came before, then
//! nothing. An error frame may end the stream at any point before the trailer: the
//! server failed after it had started to answer.

mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use reader::{Event, Rows, SliceReader};
pub use writer::SliceWriter;

use std::collections::BTreeSet;

use crate::frame::FrameError;
use crate::wire::{ErrorBody, SliceHeader};

/// The zstd level the server compresses with: fast enough to keep ahead of the
/// device's inserts on one core.
pub const ZSTD_LEVEL: i32 = 1;

/// The compressor's window, as a power of two: 64 KiB. Level 1 would take 512 KiB for
/// a stream of unknown size, and a server streaming many downloads at once holds one
/// window and its input buffer per download: 12 of the 28 MB of heap at the peak of a
/// 200-device round with 512 KiB (heaptrack; BENCHMARKS.md, "The stream's compression
/// window" and "A download's buffers"). Readers accept any window up to zstd's default
/// limit, so this is the writer's choice alone; devices compress uploads with it too.
pub const ZSTD_WINDOW_LOG: u32 = 16;

/// The compressor's largest block, 32 KiB (the window alone would give 64 KiB): the
/// compressor's buffers are sized by it, ~0.35 MB per stream in all against ~0.98 MB
/// with a 128 KiB window and its blocks, for 0.1% more bytes.
pub const ZSTD_BLOCK_MAX: u32 = 32 * 1024;

/// Why a slice stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A frame could not be read, or is damaged (checksum, truncation, bad values).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Well-formed frames that do not make a slice (order, counts, header).
    #[error("{0}")]
    Invalid(String),
    /// The server's error frame: it failed after the stream had started.
    #[error("server: {}", .0.message)]
    Server(ErrorBody),
}

fn invalid(what: impl Into<String>) -> StreamError {
    StreamError::Invalid(what.into())
}

/// Refuses a header no replica can be made from: no tables, a table named like
/// fieldsync's or SQLite's own objects or twice, a table whose primary key is not its
/// first column, a column without a name or twice.
pub fn check_header(h: &SliceHeader) -> Result<(), StreamError> {
    let bad = |m: String| Err(invalid(format!("bad slice header: {m}")));
    if h.tables.is_empty() {
        return bad("no tables".into());
    }
    let mut names = BTreeSet::new();
    for t in &h.tables {
        let lower = t.name.to_ascii_lowercase();
        if t.name.is_empty()
            || lower.starts_with("fieldsync_")
            || lower.starts_with("sqlite_")
            || !names.insert(lower)
        {
            return bad(format!("table name `{}`", t.name.escape_debug()));
        }
        let mut cols = BTreeSet::new();
        if t.columns.is_empty() || t.columns[0].name != t.primary_key {
            return bad(format!(
                "table `{}`: the primary key must come first",
                t.name
            ));
        }
        for c in &t.columns {
            if c.name.is_empty() || !cols.insert(c.name.to_ascii_lowercase()) {
                return bad(format!(
                    "table `{}`: column `{}`",
                    t.name,
                    c.name.escape_debug()
                ));
            }
        }
    }
    Ok(())
}
