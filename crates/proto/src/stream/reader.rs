//! Reading a slice stream: a pull API over the compressed bytes that hands out the
//! header, the rows of each batch and the trailer, and refuses, as soon as it shows, a
//! stream out of order, cut, damaged, miscounted or with anything after its trailer.

use std::io::{BufReader, Read};

use super::{StreamError, check_header, invalid};
use crate::frame::{Frame, FrameReader, RowBatch, ValueRef};
use crate::wire::{SliceHeader, SliceTrailer};

/// What the stream holds next.
#[derive(Debug)]
pub enum Event<'r> {
    /// The slice's tables, checked ([`check_header`]); always first.
    Header(SliceHeader),
    /// A batch of rows of one table; read them with [`Rows::next_row`].
    Rows(Rows<'r>),
    /// The end: its counts and checksum matched, and nothing follows it.
    Trailer(SliceTrailer),
}

/// Where the caller left the last batch: the reader checks the rest of it before it
/// reads on, so a batch the caller did not read to its end is still checked whole.
#[derive(Debug, Clone, Copy)]
struct Pending {
    pos: usize,
    table: usize,
    n_rows: u64,
    left: u64,
    width: usize,
    /// A value of the batch could not be decoded: the stream is refused from here on.
    failed: bool,
}

/// Reads one slice stream from its compressed bytes.
pub struct SliceReader<R: Read> {
    frames: FrameReader<zstd::stream::read::Decoder<'static, BufReader<R>>>,
    header: Option<SliceHeader>,
    /// Rows announced by the batches so far, per lane.
    rows: Vec<u64>,
    /// Width of each lane of the header.
    widths: Vec<usize>,
    payload: Vec<u8>,
    pending: Option<Pending>,
    ended: bool,
}

impl<R: Read> SliceReader<R> {
    pub fn new(compressed: R) -> Result<Self, StreamError> {
        let decoder =
            zstd::stream::read::Decoder::new(compressed).map_err(crate::frame::FrameError::Io)?;
        Ok(SliceReader {
            frames: FrameReader::new(decoder),
            header: None,
            rows: Vec::new(),
            widths: Vec::new(),
            payload: Vec::new(),
            pending: None,
            ended: false,
        })
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&SliceHeader> {
        self.header.as_ref()
    }

    /// The next event; `Ok(None)` only after the trailer. An error frame from the
    /// server is [`StreamError::Server`].
    pub fn next_event(&mut self) -> Result<Option<Event<'_>>, StreamError> {
        self.settle()?;
        if self.ended {
            return Ok(None);
        }
        let frame = self
            .frames
            .next_frame()?
            .ok_or_else(|| invalid("the stream ended before its trailer"))?;
        let Some(_) = &self.header else {
            return match frame {
                Frame::Header(h) => {
                    check_header(&h)?;
                    self.widths = h.lanes();
                    self.rows = vec![0; self.widths.len()];
                    self.header = Some(h.clone());
                    Ok(Some(Event::Header(h)))
                }
                Frame::Error(e) => Err(StreamError::Server(e)),
                _ => Err(invalid("the stream does not start with a header")),
            };
        };
        match frame {
            Frame::Header(_) => Err(invalid("a second header in the stream")),
            Frame::Error(e) => Err(StreamError::Server(e)),
            Frame::Rows(payload) => {
                self.payload = payload;
                let batch = RowBatch::parse(&self.payload)?;
                let table = batch.table_idx;
                let Some(&width) = self.widths.get(table) else {
                    return Err(invalid(format!("row batch for unknown table {table}")));
                };
                self.rows[table] = self.rows[table]
                    .checked_add(batch.n_rows)
                    .ok_or_else(|| invalid("row count overflows"))?;
                let pending = self.pending.insert(Pending {
                    pos: batch.position(),
                    table,
                    n_rows: batch.n_rows,
                    left: batch.n_rows,
                    width,
                    failed: false,
                });
                Ok(Some(Event::Rows(Rows { batch, pending })))
            }
            Frame::Trailer(trailer) => {
                if trailer.rows != self.rows {
                    return Err(invalid(format!(
                        "row counts differ from the trailer (got {:?}, trailer {:?})",
                        self.rows, trailer.rows
                    )));
                }
                if !self.frames.at_end()? {
                    return Err(invalid("data after the trailer"));
                }
                self.ended = true;
                Ok(Some(Event::Trailer(trailer)))
            }
        }
    }

    /// Checks what the caller left unread of the last batch.
    fn settle(&mut self) -> Result<(), StreamError> {
        let Some(p) = self.pending else {
            return Ok(());
        };
        if p.failed {
            return Err(invalid("the stream was refused"));
        }
        let batch = RowBatch::resume(&self.payload, p.pos, p.table, p.n_rows);
        let mut rows = Rows {
            batch,
            pending: self.pending.as_mut().expect("pending"),
        };
        let mut values = Vec::with_capacity(p.width);
        while rows.next_row(&mut values)? {}
        Ok(())
    }
}

/// The rows of one batch, decoded in place as they are asked for.
pub struct Rows<'r> {
    batch: RowBatch<'r>,
    pending: &'r mut Pending,
}

impl std::fmt::Debug for Rows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows")
            .field("table", &self.pending.table)
            .field("n_rows", &self.pending.n_rows)
            .field("left", &self.pending.left)
            .finish()
    }
}

impl<'r> Rows<'r> {
    /// The lane the rows belong to: an index into the header's tables, or in a delta
    /// `tables + i` for keys that left table `i` (see `SliceHeader::lanes`).
    pub fn table(&self) -> usize {
        self.pending.table
    }

    /// How many rows the batch holds.
    pub fn len(&self) -> u64 {
        self.pending.n_rows
    }

    pub fn is_empty(&self) -> bool {
        self.pending.n_rows == 0
    }

    /// The next row's values into `values` (cleared first, one per column); `false`
    /// after the last row, once the batch was found to end exactly there.
    pub fn next_row(&mut self, values: &mut Vec<ValueRef<'r>>) -> Result<bool, StreamError> {
        values.clear();
        if self.pending.left == 0 {
            if !self.batch.is_exhausted() {
                self.pending.failed = true;
                return Err(invalid("row batch has trailing bytes"));
            }
            return Ok(false);
        }
        for _ in 0..self.pending.width {
            match self.batch.value() {
                Ok(v) => values.push(v),
                Err(e) => {
                    self.pending.failed = true;
                    return Err(e.into());
                }
            }
        }
        self.pending.left -= 1;
        self.pending.pos = self.batch.position();
        Ok(true)
    }
}
