//! An upload's body, both ways: the device's encoder (the upload as JSON, serialized
//! straight into zstd) and the server's decoder (the body's CRC checked first, then
//! decompressed with a cap on the text it inflates to, then parsed entry by entry with
//! a cap on their number), so that one upload's memory is bounded by the caps,
//! whatever its sender wrote (ARCHITECTURE.md "Boundaries"). The caps are values the
//! caller passes ([`UploadLimits`]); reading the body off a socket is the server's.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::task::check_name;
use crate::wire::{
    ErrorCode, HEADER_BODY_CRC32, UPLOAD_BODY_MAX_BYTES, UPLOAD_JSON_MAX_BYTES, UPLOAD_MAX_ENTRIES,
    Upload, UploadEntry,
};

/// The zstd level devices compress uploads with, with the slice stream's window
/// ([`crate::stream::ZSTD_WINDOW_LOG`], 64 KiB): the server's decoder holds the window
/// the body asks for (level 1 alone asks 512 KiB of a body of unknown size).
pub const ZSTD_LEVEL: i32 = 1;
/// The largest zstd window an upload may use (8 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// CRC-32 of a byte string (an upload body as sent).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The value of [`HEADER_BODY_CRC32`] for `body`: its CRC-32 in 8 hex digits.
pub fn crc_header(body: &[u8]) -> String {
    format!("{:08x}", crc32(body))
}

/// The caps an upload must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Compressed bytes of the body.
    pub max_body: usize,
    /// Bytes of JSON once decompressed.
    pub max_json: usize,
    /// Entries in the upload.
    pub max_entries: usize,
}

impl UploadLimits {
    /// The caps the protocol publishes, which servers apply and devices stay within.
    pub const PUBLISHED: UploadLimits = UploadLimits {
        max_body: UPLOAD_BODY_MAX_BYTES,
        max_json: UPLOAD_JSON_MAX_BYTES,
        max_entries: UPLOAD_MAX_ENTRIES,
    };
}

/// An encoded upload: the body as sent and the size of its JSON.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub json_len: usize,
}

impl Encoded {
    /// Whether a server with `limits` takes it (an upload of `n_entries`).
    pub fn within(&self, limits: &UploadLimits, n_entries: usize) -> bool {
        self.json_len <= limits.max_json
            && self.body.len() <= limits.max_body
            && n_entries <= limits.max_entries
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    n: usize,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Encodes an upload: JSON serialized straight into the compressor, so no copy of the
/// whole JSON is ever in memory.
pub fn encode(upload: &Upload) -> io::Result<Encoded> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
    encoder.window_log(crate::stream::ZSTD_WINDOW_LOG)?;
    let mut writer = io::BufWriter::with_capacity(
        256 * 1024,
        Counting {
            inner: encoder,
            n: 0,
        },
    );
    serde_json::to_writer(&mut writer, upload).map_err(io::Error::other)?;
    let counted = writer.into_inner().map_err(|e| e.into_error())?;
    let json_len = counted.n;
    let body = counted.inner.finish()?;
    Ok(Encoded { body, json_len })
}

/// Why a body was refused; [`UploadBodyError::code`] is the answer's code.
#[derive(Debug, thiserror::Error)]
pub enum UploadBodyError {
    #[error("missing or bad header {HEADER_BODY_CRC32}")]
    BadChecksumHeader,
    /// The device sends it again.
    #[error("the upload was damaged in transit (checksum mismatch)")]
    Damaged,
    #[error("upload is not zstd: {0}")]
    NotZstd(io::Error),
    /// The decoder could not be set up (the server's fault, not the body's).
    #[error("setting up the upload's decoder: {0}")]
    Decoder(io::Error),
    #[error(
        "upload over {0} bytes once decompressed; a device sends its journal in smaller uploads"
    )]
    TooLargeJson(usize),
    #[error("upload of more than {0} entries; a device sends its journal in smaller uploads")]
    TooManyEntries(usize),
    #[error("corrupt upload stream: {0}")]
    Corrupt(serde_json::Error),
    #[error("malformed upload: {0}")]
    Malformed(serde_json::Error),
    #[error("bad upload id (32 hex digits)")]
    BadId,
    #[error("{0}")]
    BadTask(String),
}

impl UploadBodyError {
    /// The stable code the server answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            UploadBodyError::Damaged => ErrorCode::Damaged,
            UploadBodyError::TooLargeJson(_) | UploadBodyError::TooManyEntries(_) => {
                ErrorCode::PayloadTooLarge
            }
            UploadBodyError::Decoder(_) => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// Decodes a body whose [`HEADER_BODY_CRC32`] said `claimed_crc`: the checksum first (a
/// damaged body is refused before anything is read from it), then decompressed and
/// parsed, within `limits.max_json` and `limits.max_entries`.
pub fn decode(
    claimed_crc: Option<&str>,
    body: &[u8],
    limits: &UploadLimits,
) -> Result<Upload, UploadBodyError> {
    let claimed = claimed_crc
        .and_then(|v| u32::from_str_radix(v, 16).ok())
        .ok_or(UploadBodyError::BadChecksumHeader)?;
    if crc32(body) != claimed {
        return Err(UploadBodyError::Damaged);
    }
    let mut decoder = zstd::stream::read::Decoder::new(body).map_err(UploadBodyError::NotZstd)?;
    // A frame may ask for a window of up to 128 MiB by default, which the decoder then
    // allocates: devices compress at level 1 (a window of at most 512 KiB).
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(UploadBodyError::Decoder)?;
    let (inflated, over) = (Cell::new(false), Cell::new(false));
    let mut capped = Capped {
        inner: decoder,
        left: limits.max_json,
        hit: &inflated,
    };
    // Inflated whole (within the cap), then parsed from the slice: serde_json parses
    // a slice about twice as fast as a reader, which it takes a byte at a time. The
    // parsed entries are larger than their text, so the peak stays within twice them.
    let mut json = Vec::with_capacity(body.len().saturating_mul(4).min(limits.max_json));
    if let Err(e) = capped.read_to_end(&mut json) {
        return Err(if inflated.get() {
            UploadBodyError::TooLargeJson(limits.max_json)
        } else {
            UploadBodyError::Corrupt(serde_json::Error::io(e))
        });
    }
    let mut de = serde_json::Deserializer::from_slice(&json);
    let parsed = UploadSeed {
        max_entries: limits.max_entries,
        over: &over,
    }
    .deserialize(&mut de)
    .and_then(|u| de.end().map(|()| u));
    drop(json);
    let mut upload = match parsed {
        Ok(u) => u,
        Err(_) if over.get() => return Err(UploadBodyError::TooManyEntries(limits.max_entries)),
        Err(e) => return Err(UploadBodyError::Malformed(e)),
    };
    let id_ok =
        upload.upload_id.len() == 32 && upload.upload_id.bytes().all(|b| b.is_ascii_hexdigit());
    if !id_ok {
        return Err(UploadBodyError::BadId);
    }
    check_name("task", &upload.task).map_err(UploadBodyError::BadTask)?;
    // The entries grew by doubling: up to half their room is empty, and held for the
    // whole integration (a device's 10,000-entry upload in room for 16,384: 1 MB).
    upload.entries.shrink_to_fit();
    Ok(upload)
}

/// A reader that stops with an error after `left` bytes, and remembers it did.
struct Capped<'a, R> {
    inner: R,
    left: usize,
    hit: &'a Cell<bool>,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte past the cap tells an upload of exactly the cap from a larger one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.hit.set(true);
                    Err(io::Error::other("decompressed size cap reached"))
                }
            };
        }
        let n = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got;
        Ok(got)
    }
}

/// Parses an upload object as it streams, with a cap on its entries.
struct UploadSeed<'a> {
    max_entries: usize,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for UploadSeed<'_> {
    type Value = Upload;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Upload, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for UploadSeed<'_> {
    type Value = Upload;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an upload object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Upload, A::Error> {
        let (mut upload_id, mut task, mut epoch, mut task_hash) = (None, None, None, None);
        let mut cursor = None;
        let mut entries: Option<Vec<UploadEntry>> = None;
        let mut attachments: Vec<crate::wire::UploadAttachment> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "upload_id" => upload_id = Some(map.next_value::<String>()?),
                "task" => task = Some(map.next_value::<String>()?),
                "epoch" => epoch = map.next_value::<Option<String>>()?,
                "task_hash" => task_hash = map.next_value::<Option<String>>()?,
                "cursor" => cursor = map.next_value::<Option<crate::wire::Cursor>>()?,
                "attachments" => {
                    attachments = map.next_value()?;
                    if attachments.len() > crate::wire::UPLOAD_MAX_ATTACHMENTS {
                        return Err(de::Error::custom("too many attachments"));
                    }
                }
                "entries" => {
                    let mut got = entries.take().unwrap_or_default();
                    map.next_value_seed(EntriesSeed {
                        out: &mut got,
                        max: self.max_entries,
                        over: self.over,
                    })?;
                    entries = Some(got);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Upload {
            upload_id: upload_id.ok_or_else(|| de::Error::missing_field("upload_id"))?,
            task: task.ok_or_else(|| de::Error::missing_field("task"))?,
            epoch,
            task_hash,
            cursor,
            entries: entries.ok_or_else(|| de::Error::missing_field("entries"))?,
            attachments,
        })
    }
}

/// The entries array, one entry at a time, refused past `max` in all.
struct EntriesSeed<'a, 'b> {
    out: &'a mut Vec<UploadEntry>,
    max: usize,
    over: &'b Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of upload entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(e) = seq.next_element::<UploadEntry>()? {
            if self.out.len() >= self.max {
                self.over.set(true);
                return Err(de::Error::custom("too many entries"));
            }
            self.out.push(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
