//! The download stream: length-prefixed frames (header, row batches, trailer, error),
//! zstd-compressed on the wire by the caller. Encoding and decoding only; no IO here
//! beyond `std::io::Read` on the decoded stream.
//!
//! Frame: `kind: u8`, `len: u32 LE`, `payload: [u8; len]`.
//! Row batch payload: `table_idx: varint`, `n_rows: varint`, then per row and column one
//! value: tag `0` NULL, `1` integer (zigzag varint), `2` real (f64 LE), `3` text
//! (varint length, UTF-8), `4` blob (varint length, bytes).
//!
//! A row batch whose payload exceeds [`FRAME_MAX_BYTES`] (a row with a value of many
//! megabytes) travels split: its first pieces as `KIND_ROWS_PART` frames of exactly
//! [`FRAME_MAX_BYTES`], its last piece as the closing `KIND_ROWS` frame. The reader
//! joins the pieces into the one payload; every piece is covered by the stream
//! checksum like any frame. Batches of ordinary rows never split.

use std::io::{self, Read};

use crate::value::Value;
use crate::wire::{Cursor, ErrorBody, SliceHeader, SliceTrailer};

pub const KIND_HEADER: u8 = 1;
pub const KIND_ROWS: u8 = 2;
pub const KIND_TRAILER: u8 = 3;
pub const KIND_ERROR: u8 = 4;
/// A leading piece of a row batch too big for one frame; the batch ends with the next
/// `KIND_ROWS` frame.
pub const KIND_ROWS_PART: u8 = 5;

/// A frame larger than this is refused as corrupt; bigger row batches are split.
pub const FRAME_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Encoders flush a row batch once it reaches this size.
pub const BATCH_TARGET_BYTES: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream read failed: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt stream: {0}")]
    Corrupt(String),
}

fn corrupt(what: impl Into<String>) -> FrameError {
    FrameError::Corrupt(what.into())
}

/// CRC-32 of a byte string (upload bodies; its home is `upload_body`).
pub use crate::upload_body::crc32;

/// A borrowed cell, decoded in place from a row batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    pub fn to_owned(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(t.to_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    put_frame_of(out, kind, &[payload]);
}

/// A frame whose payload is `parts` one after the other, written without joining them.
fn put_frame_of(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Builds the frames of one stream and keeps the running checksum the trailer needs:
/// the header's and the rows' apart, so that a stream's rows can be checksummed (and
/// kept, and [spliced](Self::splice) into another stream) on their own.
#[derive(Default)]
pub struct FrameEncoder {
    /// The header's frame.
    head: crc32fast::Hasher,
    /// The frames after the header.
    crc: crc32fast::Hasher,
    batch: Vec<u8>,
    batch_table: Option<usize>,
    batch_rows: u64,
    rows: Vec<u64>,
}

impl FrameEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
        let start = out.len();
        put_frame(out, kind, payload);
        self.crc.update(&out[start..]);
    }

    pub fn header(&mut self, out: &mut Vec<u8>, header: &SliceHeader) {
        self.rows = vec![0; header.lanes().len()];
        let json = serde_json::to_vec(header).expect("header serializes");
        self.emit(out, KIND_HEADER, &json);
        self.head = std::mem::take(&mut self.crc);
    }

    /// Adds one row of table `table_idx`; a batch is written to `out` when full.
    pub fn row<'v>(
        &mut self,
        out: &mut Vec<u8>,
        table_idx: usize,
        values: impl IntoIterator<Item = ValueRef<'v>>,
    ) {
        self.row_of_width(out, table_idx, None, values);
    }

    /// Adds one row as [`row`](Self::row) does, unless it has not `width` values
    /// (`Some`): then nothing of it is kept and the answer is `false`.
    pub fn row_of_width<'v>(
        &mut self,
        out: &mut Vec<u8>,
        table_idx: usize,
        width: Option<usize>,
        values: impl IntoIterator<Item = ValueRef<'v>>,
    ) -> bool {
        if self.batch_table != Some(table_idx) {
            self.flush(out);
            self.batch_table = Some(table_idx);
        }
        let mark = self.batch.len();
        let mut n = 0usize;
        for v in values {
            n += 1;
            let b = &mut self.batch;
            match v {
                ValueRef::Null => b.push(0),
                ValueRef::Integer(i) => {
                    b.push(1);
                    put_varint(b, ((i << 1) ^ (i >> 63)) as u64);
                }
                ValueRef::Real(r) => {
                    b.push(2);
                    b.extend_from_slice(&r.to_le_bytes());
                }
                ValueRef::Text(t) => {
                    b.push(3);
                    put_varint(b, t.len() as u64);
                    b.extend_from_slice(t.as_bytes());
                }
                ValueRef::Blob(x) => {
                    b.push(4);
                    put_varint(b, x.len() as u64);
                    b.extend_from_slice(x);
                }
            }
        }
        if width.is_some_and(|w| w != n) {
            self.batch.truncate(mark);
            return false;
        }
        self.batch_rows += 1;
        self.rows[table_idx] += 1;
        if self.batch.len() >= BATCH_TARGET_BYTES {
            self.flush(out);
        }
        true
    }

    /// Writes the pending row batch, if any.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        let Some(table_idx) = self.batch_table else {
            return;
        };
        if self.batch_rows == 0 {
            return;
        }
        let mut prefix = Vec::with_capacity(20);
        put_varint(&mut prefix, table_idx as u64);
        put_varint(&mut prefix, self.batch_rows);
        if prefix.len() + self.batch.len() <= FRAME_MAX_BYTES {
            // The usual case: one frame, written from its two pieces without a copy
            // (as `emit` would write it joined).
            let start = out.len();
            put_frame_of(out, KIND_ROWS, &[&prefix, &self.batch]);
            self.crc.update(&out[start..]);
        } else {
            prefix.extend_from_slice(&self.batch);
            let mut rest = &prefix[..];
            while rest.len() > FRAME_MAX_BYTES {
                let (piece, tail) = rest.split_at(FRAME_MAX_BYTES);
                self.emit(out, KIND_ROWS_PART, piece);
                rest = tail;
            }
            self.emit(out, KIND_ROWS, rest);
        }
        self.batch.clear();
        self.batch_rows = 0;
    }

    /// Rows encoded so far, per table.
    pub fn rows(&self) -> &[u64] {
        &self.rows
    }

    /// The checksum of the frames written after the header (call [`flush`](Self::flush)
    /// first for all of them).
    pub fn rows_checksum(&self) -> crc32fast::Hasher {
        self.crc.clone()
    }

    /// Takes `rows` per table, whose frames (checksummed `crc`) the caller wrote after
    /// the header itself, as if they had been encoded here. Refused (`false`, nothing
    /// changed) unless no row was encoded yet and `rows` names every lane.
    pub fn splice(&mut self, rows: &[u64], crc: crc32fast::Hasher) -> bool {
        let fresh = self.batch_table.is_none() && self.rows.iter().all(|n| *n == 0);
        if !fresh || rows.len() != self.rows.len() {
            return false;
        }
        self.rows = rows.to_vec();
        self.crc = crc;
        true
    }

    pub fn trailer(&mut self, out: &mut Vec<u8>, cursor: Cursor) {
        self.flush(out);
        let mut all = self.head.clone();
        all.combine(&self.crc);
        let checksum = trailer_checksum(all, &self.rows, cursor);
        let trailer = SliceTrailer {
            rows: self.rows.clone(),
            checksum,
            cursor,
        };
        let json = serde_json::to_vec(&trailer).expect("trailer serializes");
        put_frame(out, KIND_TRAILER, &json);
    }
}

/// The trailer's checksum covers every frame before it and the trailer's own counts
/// and cursor, so no bit of the stream can change unnoticed.
pub(crate) fn trailer_checksum(mut crc: crc32fast::Hasher, rows: &[u64], cursor: Cursor) -> u32 {
    for n in rows {
        crc.update(&n.to_le_bytes());
    }
    crc.update(&cursor.raw().to_le_bytes());
    crc.finalize()
}

/// Encodes an error frame (the server failed after the stream had started).
pub fn error_frame(out: &mut Vec<u8>, error: &ErrorBody) {
    let json = serde_json::to_vec(error).expect("error serializes");
    put_frame(out, KIND_ERROR, &json);
}

/// One decoded frame. Row batches are handed out raw; decode them with [`RowBatch`].
#[derive(Debug)]
pub enum Frame {
    Header(SliceHeader),
    Rows(Vec<u8>),
    Trailer(SliceTrailer),
    Error(ErrorBody),
}

/// Reads frames from a decompressed stream, verifying the checksum at the trailer.
pub struct FrameReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    done: bool,
    /// The pieces of a split row batch read so far.
    partial: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Whether the stream ends here (nothing after the trailer); reads at most one byte.
    pub(crate) fn at_end(&mut self) -> Result<bool, FrameError> {
        let mut probe = [0u8; 1];
        loop {
            match self.inner.read(&mut probe) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }

    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            crc: crc32fast::Hasher::new(),
            done: false,
            partial: Vec::new(),
        }
    }

    /// The next frame; `Ok(None)` only after a trailer whose checksum matched. A stream
    /// that ends without a trailer is an error (truncated).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(frame) = self.read_frame()? {
                return Ok(Some(frame));
            }
        }
    }

    /// One frame off the stream; `None` for a piece of a split row batch.
    fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut head = [0u8; 5];
        if let Err(e) = self.inner.read_exact(&mut head) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                corrupt("stream ended before its trailer (truncated)")
            } else {
                FrameError::Io(e)
            });
        }
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > FRAME_MAX_BYTES {
            return Err(corrupt(format!("frame of {len} bytes exceeds the limit")));
        }
        let mut payload = vec![0u8; len];
        self.inner.read_exact(&mut payload).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                corrupt("stream ended inside a frame (truncated)")
            } else {
                FrameError::Io(e)
            }
        })?;
        let json_err = |e: serde_json::Error| corrupt(format!("bad frame {kind}: {e}"));
        if kind != KIND_TRAILER {
            self.crc.update(&head);
            self.crc.update(&payload);
        }
        if !self.partial.is_empty() && kind != KIND_ROWS && kind != KIND_ROWS_PART {
            return Err(corrupt(format!("frame {kind} inside a split row batch")));
        }
        let frame = match kind {
            KIND_ROWS_PART => {
                if payload.len() != FRAME_MAX_BYTES {
                    return Err(corrupt("short piece of a split row batch"));
                }
                if self.partial.is_empty() {
                    self.partial = payload;
                } else {
                    self.partial.extend_from_slice(&payload);
                }
                return Ok(None);
            }
            KIND_ROWS if !self.partial.is_empty() => {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(&payload);
                Frame::Rows(whole)
            }
            KIND_HEADER => Frame::Header(serde_json::from_slice(&payload).map_err(json_err)?),
            KIND_ROWS => Frame::Rows(payload),
            KIND_TRAILER => {
                let trailer: SliceTrailer = serde_json::from_slice(&payload).map_err(json_err)?;
                let actual = trailer_checksum(self.crc.clone(), &trailer.rows, trailer.cursor);
                if trailer.checksum != actual {
                    return Err(corrupt(format!(
                        "checksum mismatch (trailer {:08x}, data {actual:08x})",
                        trailer.checksum
                    )));
                }
                self.done = true;
                return Ok(Some(Frame::Trailer(trailer)));
            }
            KIND_ERROR => Frame::Error(serde_json::from_slice(&payload).map_err(json_err)?),
            other => return Err(corrupt(format!("unknown frame kind {other}"))),
        };
        Ok(Some(frame))
    }
}

/// Decodes a row batch payload in place.
pub struct RowBatch<'a> {
    buf: &'a [u8],
    pos: usize,
    pub table_idx: usize,
    pub n_rows: u64,
}

impl<'a> RowBatch<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, FrameError> {
        let mut batch = RowBatch {
            buf,
            pos: 0,
            table_idx: 0,
            n_rows: 0,
        };
        batch.table_idx = usize::try_from(batch.varint()?).map_err(|_| corrupt("table index"))?;
        batch.n_rows = batch.varint()?;
        Ok(batch)
    }

    /// Where decoding stands, to take it up again with [`RowBatch::resume`].
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// A batch whose header was parsed before, decoding on from `pos`.
    pub(crate) fn resume(buf: &'a [u8], pos: usize, table_idx: usize, n_rows: u64) -> Self {
        RowBatch {
            buf,
            pos,
            table_idx,
            n_rows,
        }
    }

    fn varint(&mut self) -> Result<u64, FrameError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| corrupt("row batch ends inside a number"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| corrupt("row batch ends inside a value"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next value of the batch.
    pub fn value(&mut self) -> Result<ValueRef<'a>, FrameError> {
        let tag = self.take(1)?[0];
        Ok(match tag {
            0 => ValueRef::Null,
            1 => {
                let z = self.varint()?;
                ValueRef::Integer(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            2 => ValueRef::Real(f64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            3 => {
                let n = usize::try_from(self.varint()?).map_err(|_| corrupt("length"))?;
                ValueRef::Text(
                    std::str::from_utf8(self.take(n)?).map_err(|_| corrupt("text is not UTF-8"))?,
                )
            }
            4 => {
                let n = usize::try_from(self.varint()?).map_err(|_| corrupt("length"))?;
                ValueRef::Blob(self.take(n)?)
            }
            t => return Err(corrupt(format!("unknown value tag {t}"))),
        })
    }

    /// True once every byte was consumed (a well-formed batch ends exactly after its rows).
    pub fn is_exhausted(&self) -> bool {
        self.pos == self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::ColumnType;
    use crate::wire::{ColumnDef, TableSchema};
    use proptest::prelude::*;

    fn header(n_tables: usize) -> SliceHeader {
        SliceHeader {
            protocol: 1,
            epoch: "e".into(),
            task: "t".into(),
            task_hash: "h".into(),
            user: "u".into(),
            device: "d".into(),
            tables: (0..n_tables)
                .map(|i| TableSchema {
                    name: format!("t{i}"),
                    primary_key: "id".into(),
                    columns: vec![ColumnDef {
                        name: "id".into(),
                        column_type: ColumnType::Integer,
                    }],
                    rows_estimate: 0,
                    write: vec![],
                    filter: None,
                    parent: None,
                })
                .collect(),
            since: None,
            full_reason: None,
            assigned: vec![],
            key_blocks: Vec::new(),
            file_tables: Vec::new(),
        }
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("nan compares unequal", |f| !f.is_nan())
                .prop_map(Value::Real),
            ".{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        ]
    }

    fn encode(rows: &[Vec<Value>]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = FrameEncoder::new();
        enc.header(&mut out, &header(1));
        for row in rows {
            enc.row(&mut out, 0, row.iter().map(ValueRef::from));
        }
        enc.trailer(&mut out, Cursor::from_raw(42));
        out
    }

    fn decode(bytes: &[u8], width: usize) -> Result<Vec<Vec<Value>>, FrameError> {
        let mut reader = FrameReader::new(bytes);
        let mut rows = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            if let Frame::Rows(p) = frame {
                let mut batch = RowBatch::parse(&p)?;
                for _ in 0..batch.n_rows {
                    rows.push(
                        (0..width)
                            .map(|_| batch.value().map(ValueRef::to_owned))
                            .collect::<Result<_, _>>()?,
                    );
                }
                if !batch.is_exhausted() {
                    return Err(corrupt("trailing bytes"));
                }
            }
        }
        Ok(rows)
    }

    #[test]
    fn a_row_bigger_than_a_frame_travels_split_and_intact() {
        let big = "x".repeat(2 * FRAME_MAX_BYTES + 12_345);
        let rows = vec![
            vec![Value::Integer(1), Value::Text("small".into())],
            vec![Value::Integer(2), Value::Text(big.clone())],
            vec![Value::Integer(3), Value::Blob(vec![7; FRAME_MAX_BYTES])],
            vec![Value::Integer(4), Value::Null],
        ];
        let bytes = encode(&rows);
        // Every frame, pieces included, stays within the limit.
        let mut pos = 0;
        let mut kinds = Vec::new();
        while pos < bytes.len() {
            let len = u32::from_le_bytes(bytes[pos + 1..pos + 5].try_into().unwrap()) as usize;
            assert!(len <= FRAME_MAX_BYTES);
            kinds.push(bytes[pos]);
            pos += 5 + len;
        }
        assert!(
            kinds.iter().filter(|&&k| k == KIND_ROWS_PART).count() >= 3,
            "{kinds:?}"
        );
        assert_eq!(decode(&bytes, 2).unwrap(), rows);
        // Damage inside a piece, or a missing piece, is detected.
        let mut flipped = bytes.clone();
        flipped[FRAME_MAX_BYTES] ^= 0x20;
        assert!(decode(&flipped, 2).is_err());
        let second_piece = bytes
            .windows(5)
            .position(|w| {
                w[0] == KIND_ROWS_PART && w[1..] == (FRAME_MAX_BYTES as u32).to_le_bytes()
            })
            .unwrap();
        let mut cut = bytes[..second_piece].to_vec();
        cut.extend_from_slice(&bytes[second_piece + 5 + FRAME_MAX_BYTES..]);
        assert!(decode(&cut, 2).is_err());
        assert!(decode(&bytes[..bytes.len() / 2], 2).is_err());
    }

    proptest! {
        #[test]
        fn rows_round_trip(rows in proptest::collection::vec(proptest::collection::vec(value_strategy(), 3), 0..300)) {
            let bytes = encode(&rows);
            prop_assert_eq!(decode(&bytes, 3).unwrap(), rows);
        }

        #[test]
        fn damage_is_detected(rows in proptest::collection::vec(proptest::collection::vec(value_strategy(), 2), 1..50), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
            let bytes = encode(&rows);
            let truncated = &bytes[..cut.index(bytes.len())];
            prop_assert!(decode(truncated, 2).is_err());
            let mut flipped = bytes.clone();
            let i = flip.index(flipped.len());
            flipped[i] ^= 0x20;
            prop_assert!(decode(&flipped, 2).is_err(), "flip at {} undetected", i);
        }
    }
}
