//! Writing a slice stream: frames in the one order the reader accepts, counted and
//! checksummed, compressed into any `Write` as they are made.

use std::io::{self, Write};

use crate::frame::{self, FrameEncoder, ValueRef};
use crate::wire::{Cursor, ErrorBody, SliceHeader};

/// Uncompressed bytes gathered before they go to the compressor.
const DRAIN_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing written: a header or an error may come.
    Fresh,
    /// The header is written: rows, then a trailer or an error.
    Rows,
    /// A trailer or an error ended the stream: only `finish` is left.
    Ended,
}

/// Writes one slice stream: [`header`](Self::header), [`row`](Self::row)s, then
/// [`trailer`](Self::trailer) (or [`error`](Self::error) at any point before it), then
/// [`finish`](Self::finish). Calls out of that order, a row of a table the header does
/// not have or of the wrong width, are refused (`InvalidInput`) and write nothing; an
/// error of `W` (the device went away) is returned as it is.
pub struct SliceWriter<W: Write> {
    frames: FrameEncoder,
    out: Vec<u8>,
    zstd: zstd::stream::write::Encoder<'static, W>,
    state: State,
    /// Width of each lane of the header (its tables, and in a delta their left keys).
    widths: Vec<usize>,
}

fn misuse(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("slice stream: {what}"))
}

impl<W: Write> SliceWriter<W> {
    /// A stream into `inner`, compressed at [`super::ZSTD_LEVEL`] with a window of
    /// [`super::ZSTD_WINDOW_LOG`] and zstd's own checksum.
    pub fn new(inner: W) -> io::Result<Self> {
        let mut zstd = zstd::stream::write::Encoder::new(inner, super::ZSTD_LEVEL)?;
        zstd.include_checksum(true)?;
        zstd.window_log(super::ZSTD_WINDOW_LOG)?;
        zstd.set_parameter(zstd::zstd_safe::CParameter::MaxBlockSize(
            super::ZSTD_BLOCK_MAX,
        ))?;
        Ok(SliceWriter {
            frames: FrameEncoder::new(),
            out: Vec::with_capacity(DRAIN_BYTES + frame::BATCH_TARGET_BYTES + 1024),
            zstd,
            state: State::Fresh,
            widths: Vec::new(),
        })
    }

    /// Hands the gathered bytes to the compressor (always when `force`).
    fn drain(&mut self, force: bool) -> io::Result<()> {
        if force || self.out.len() >= DRAIN_BYTES {
            self.zstd.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// The header, first: the slice's tables and their columns, in the order rows name
    /// them.
    pub fn header(&mut self, header: &SliceHeader) -> io::Result<()> {
        if self.state != State::Fresh {
            return Err(misuse("a second header"));
        }
        self.widths = header.lanes();
        self.frames.header(&mut self.out, header);
        self.state = State::Rows;
        self.drain(true)
    }

    /// One row of lane `table_idx` (see `SliceHeader::lanes`): a table's row, its
    /// values in the header's column order, or in a delta a key that left table
    /// `table_idx - tables`.
    pub fn row<'v>(
        &mut self,
        table_idx: usize,
        values: impl IntoIterator<Item = ValueRef<'v>>,
    ) -> io::Result<()> {
        if self.state != State::Rows {
            return Err(misuse("a row outside header and trailer"));
        }
        let Some(&width) = self.widths.get(table_idx) else {
            return Err(misuse("a row of a table the header does not have"));
        };
        if !self
            .frames
            .row_of_width(&mut self.out, table_idx, Some(width), values)
        {
            return Err(misuse("a row whose width differs from its table's"));
        }
        self.drain(false)
    }

    /// Rows written so far, per table.
    pub fn rows(&self) -> &[u64] {
        self.frames.rows()
    }

    /// The trailer: the rows per table, the snapshot's cursor and the checksum of all
    /// before it. The stream is then complete.
    pub fn trailer(&mut self, cursor: Cursor) -> io::Result<()> {
        if self.state != State::Rows {
            return Err(misuse("a trailer without a header, or twice"));
        }
        self.frames.trailer(&mut self.out, cursor);
        self.state = State::Ended;
        Ok(())
    }

    /// An error frame ends the stream early (the server failed after it had started):
    /// the rows batched so far go first, so the reader sees the error where it struck.
    pub fn error(&mut self, error: &ErrorBody) -> io::Result<()> {
        if self.state == State::Ended {
            return Err(misuse("an error after the end"));
        }
        self.frames.flush(&mut self.out);
        frame::error_frame(&mut self.out, error);
        self.state = State::Ended;
        Ok(())
    }

    /// Compresses what is left, ends the zstd frame and gives `W` back (unflushed).
    /// A stream not ended by a trailer or an error is left for the reader to refuse as
    /// truncated.
    pub fn finish(mut self) -> io::Result<W> {
        self.drain(true)?;
        self.zstd.finish()
    }
}
