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
    zstd: Frames<W>,
    state: State,
    /// Width of each lane of the header (its tables, and in a delta their left keys).
    widths: Vec<usize>,
    /// A whole slice's stream: its rows are a zstd frame of their own.
    whole: bool,
}

fn misuse(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("slice stream: {what}"))
}

impl<W: Write> SliceWriter<W> {
    /// A stream into `inner`, compressed at [`super::ZSTD_LEVEL`] with a window of
    /// [`super::ZSTD_WINDOW_LOG`] and zstd's own checksum.
    pub fn new(inner: W) -> io::Result<Self> {
        Ok(SliceWriter {
            frames: FrameEncoder::new(),
            out: Vec::with_capacity(DRAIN_BYTES + frame::BATCH_TARGET_BYTES + 1024),
            zstd: Frames::new(inner)?,
            whole: false,
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
        self.drain(true)?;
        // A whole slice's header is a zstd frame of its own, and so are the rows after
        // it: a stream's rows can be kept as they were sent and sent again after
        // another header (`splice_rows`). A delta's (never kept) stays one frame.
        self.whole = header.since.is_none();
        if self.whole {
            self.zstd.end_frame()?;
        }
        Ok(())
    }

    /// The rows of another whole slice's stream of the same lanes, as that stream's
    /// zstd frame of rows (what its writer wrote between [`header`](Self::header) and
    /// [`trailer`](Self::trailer) returning), copied into `W` by `copy`: `rows` per
    /// lane and `crc`, the checksum of their frames
    /// ([`FrameEncoder::rows_checksum`]), count as written here. Only right after the
    /// header; the caller vouches for the copied bytes (the reader checks them).
    pub fn splice_rows(
        &mut self,
        rows: &[u64],
        crc: crc32fast::Hasher,
        copy: impl FnOnce(&mut W) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.state != State::Rows || !self.out.is_empty() || !self.whole {
            return Err(misuse(
                "rows spliced other than right after a whole slice's header",
            ));
        }
        if !self.frames.splice(rows, crc) {
            return Err(misuse("rows spliced after rows, or of other lanes"));
        }
        copy(&mut self.zstd.inner)
    }

    /// The inner writer (between zstd frames, whole frames have reached it).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.zstd.inner
    }

    /// The checksum of the rows written so far (complete once
    /// [`trailer`](Self::trailer) returned).
    pub fn rows_checksum(&self) -> crc32fast::Hasher {
        self.frames.rows_checksum()
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
        if self.whole {
            // The rows' zstd frame ends before the trailer, which goes in one of its own.
            self.frames.flush(&mut self.out);
            self.drain(true)?;
            self.zstd.end_frame()?;
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
        self.zstd.end_frame()?;
        Ok(self.zstd.inner)
    }
}

/// zstd frames one after another into `W`, each ended when the writer says: at
/// [`super::ZSTD_LEVEL`], with a window of [`super::ZSTD_WINDOW_LOG`], blocks of at
/// most [`super::ZSTD_BLOCK_MAX`] and zstd's own checksum of each frame.
struct Frames<W> {
    zstd: zstd::stream::raw::Encoder<'static>,
    inner: W,
    /// What the compressor gives back, on its way to `inner`.
    buf: Vec<u8>,
    /// A frame begun and not ended.
    open: bool,
}

impl<W: Write> Frames<W> {
    fn new(inner: W) -> io::Result<Self> {
        use zstd::stream::raw::CParameter;
        let mut zstd = zstd::stream::raw::Encoder::new(super::ZSTD_LEVEL)?;
        zstd.set_parameter(CParameter::ChecksumFlag(true))?;
        zstd.set_parameter(CParameter::WindowLog(super::ZSTD_WINDOW_LOG))?;
        zstd.set_parameter(CParameter::MaxBlockSize(super::ZSTD_BLOCK_MAX))?;
        Ok(Frames {
            zstd,
            inner,
            buf: Vec::with_capacity(zstd::zstd_safe::CCtx::out_size()),
            open: false,
        })
    }

    /// Compresses `data` into the open frame (a new one if none is).
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        if data.is_empty() {
            return Ok(());
        }
        self.open = true;
        let mut input = InBuffer::around(data);
        while input.pos() < data.len() {
            self.buf.clear();
            let mut out = OutBuffer::around(&mut self.buf);
            self.zstd.run(&mut input, &mut out)?;
            self.inner.write_all(out.as_slice())?;
        }
        Ok(())
    }

    /// Ends the open frame, if one is: what it holds reaches `inner`.
    fn end_frame(&mut self) -> io::Result<()> {
        use zstd::stream::raw::{Operation, OutBuffer};
        if !self.open {
            return Ok(());
        }
        loop {
            self.buf.clear();
            let mut out = OutBuffer::around(&mut self.buf);
            let left = self.zstd.finish(&mut out, false)?;
            self.inner.write_all(out.as_slice())?;
            if left == 0 {
                break;
            }
        }
        self.open = false;
        self.zstd.reinit()
    }
}
