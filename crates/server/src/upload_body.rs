//! An upload's body, read only after its sender was checked: streamed from the socket
//! with a cap on its size and a deadline on its arrival, decompressed with a cap on
//! the text it inflates to, and parsed entry by entry with a cap on their number, so
//! that one upload's memory is bounded by the caps, whatever its sender wrote
//! (ARCHITECTURE.md "Boundaries").

use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, header};
use fieldsync_proto::task::check_name;
use fieldsync_proto::wire::{
    ErrorCode, HEADER_BODY_CRC32, UPLOAD_BODY_GRACE_SECS, UPLOAD_BODY_MAX_BYTES,
    UPLOAD_BODY_MIN_RATE, UPLOAD_JSON_MAX_BYTES, UPLOAD_MAX_ENTRIES, Upload, UploadEntry,
};
use http_body::Body as _;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::ApiError;

/// The largest zstd window an upload may use (8 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

fn too_large(message: String) -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, message)
}

/// The `Content-Length` a request declares, if any.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// When a body that has brought `received` bytes since `started` must have brought
/// its next ones: a grace, plus one second per [`UPLOAD_BODY_MIN_RATE`] bytes.
fn deadline(started: Instant, received: usize) -> Instant {
    started
        + Duration::from_secs(UPLOAD_BODY_GRACE_SECS)
        + Duration::from_secs_f64(received as f64 / UPLOAD_BODY_MIN_RATE as f64)
}

/// The next piece of data of `body` before `until`: `Ok(None)` at its end.
async fn next_data(body: &mut Body, until: Instant) -> Result<Option<bytes::Bytes>, ApiError> {
    loop {
        let frame = tokio::time::timeout_at(
            until.into(),
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)),
        )
        .await
        .map_err(|_| {
            ApiError::bad_request(format!(
                "the upload body arrived too slowly (less than {} KiB/s after {UPLOAD_BODY_GRACE_SECS} s); cut",
                UPLOAD_BODY_MIN_RATE / 1024
            ))
        })?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "unreadable request body: {e}"
                )));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The whole compressed body, read as it arrives: refused (413) as soon as it passes
/// [`UPLOAD_BODY_MAX_BYTES`] (at once when its `Content-Length` says it will), and cut
/// when it arrives slower than the deadline allows.
pub async fn read(headers: &HeaderMap, mut body: Body) -> Result<Vec<u8>, ApiError> {
    let over = || {
        too_large(format!(
            "upload body over {UPLOAD_BODY_MAX_BYTES} bytes (compressed); a device sends its journal in smaller uploads"
        ))
    };
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > UPLOAD_BODY_MAX_BYTES as u64) {
        return Err(over());
    }
    let started = Instant::now();
    // Room for what is declared, never more than the cap (and a little at first when
    // nothing is declared): memory follows the bytes that really arrive.
    let mut out = Vec::with_capacity(declared.map_or(64 * 1024, |n| n as usize));
    while let Some(data) = next_data(&mut body, deadline(started, out.len())).await? {
        if out.len() + data.len() > UPLOAD_BODY_MAX_BYTES {
            return Err(over());
        }
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// Reads and drops what is left of a body (at most [`UPLOAD_BODY_MAX_BYTES`], within
/// the same deadline), so that a device answered without its body (a recorded
/// outcome, an expired session) reads the answer instead of a reset connection.
/// Holds no memory beyond one piece.
pub async fn drain(mut body: Body) {
    let started = Instant::now();
    let mut seen = 0;
    while let Ok(Some(data)) = next_data(&mut body, deadline(started, seen)).await {
        seen += data.len();
        if seen > UPLOAD_BODY_MAX_BYTES {
            return;
        }
    }
}

/// A reader that stops with an error after `left` bytes, and remembers it did.
struct Capped<'a, R> {
    inner: R,
    left: usize,
    hit: &'a Cell<bool>,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte past the cap tells an upload of exactly the cap from a larger one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.hit.set(true);
                    Err(std::io::Error::other("decompressed size cap reached"))
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
        let mut entries: Option<Vec<UploadEntry>> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "upload_id" => upload_id = Some(map.next_value::<String>()?),
                "task" => task = Some(map.next_value::<String>()?),
                "epoch" => epoch = map.next_value::<Option<String>>()?,
                "task_hash" => task_hash = map.next_value::<Option<String>>()?,
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
            entries: entries.ok_or_else(|| de::Error::missing_field("entries"))?,
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

/// Checks the body's checksum (a damaged body is refused before anything is read from
/// it; the device sends it again), then decompresses and parses it as it goes, within
/// [`UPLOAD_JSON_MAX_BYTES`] and [`UPLOAD_MAX_ENTRIES`] (413 past either).
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Upload, ApiError> {
    parse_with(headers, body, UPLOAD_JSON_MAX_BYTES, UPLOAD_MAX_ENTRIES)
}

fn parse_with(
    headers: &HeaderMap,
    body: &[u8],
    max_json: usize,
    max_entries: usize,
) -> Result<Upload, ApiError> {
    let claimed = headers
        .get(HEADER_BODY_CRC32)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u32::from_str_radix(v, 16).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("missing or bad header {HEADER_BODY_CRC32}"))
        })?;
    if fieldsync_proto::frame::crc32(body) != claimed {
        return Err(ApiError::new(
            ErrorCode::Damaged,
            "the upload was damaged in transit (checksum mismatch)",
        ));
    }
    let mut decoder = zstd::stream::read::Decoder::new(body)
        .map_err(|e| ApiError::bad_request(format!("upload is not zstd: {e}")))?;
    // A frame may ask for a window of up to 128 MiB by default, which the decoder then
    // allocates: devices compress at level 1 (a window of at most 512 KiB).
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(ApiError::internal)?;
    let (inflated, over) = (Cell::new(false), Cell::new(false));
    let capped = Capped {
        inner: decoder,
        left: max_json,
        hit: &inflated,
    };
    let reader = std::io::BufReader::with_capacity(64 * 1024, capped);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = UploadSeed {
        max_entries,
        over: &over,
    }
    .deserialize(&mut de)
    .and_then(|u| de.end().map(|()| u));
    let upload = match parsed {
        Ok(u) => u,
        Err(_) if inflated.get() => {
            return Err(too_large(format!(
                "upload over {max_json} bytes once decompressed; a device sends its journal in smaller uploads"
            )));
        }
        Err(_) if over.get() => {
            return Err(too_large(format!(
                "upload of more than {max_entries} entries; a device sends its journal in smaller uploads"
            )));
        }
        Err(e) if e.is_io() => {
            return Err(ApiError::bad_request(format!("corrupt upload stream: {e}")));
        }
        Err(e) => return Err(ApiError::bad_request(format!("malformed upload: {e}"))),
    };
    let id_ok =
        upload.upload_id.len() == 32 && upload.upload_id.bytes().all(|b| b.is_ascii_hexdigit());
    if !id_ok {
        return Err(ApiError::bad_request("bad upload id (32 hex digits)"));
    }
    check_name("task", &upload.task).map_err(ApiError::bad_request)?;
    Ok(upload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> (HeaderMap, Vec<u8>) {
        let z = zstd::encode_all(json.as_bytes(), 1).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            HEADER_BODY_CRC32,
            format!("{:08x}", fieldsync_proto::frame::crc32(&z))
                .parse()
                .unwrap(),
        );
        (h, z)
    }

    fn entry(i: usize) -> String {
        format!(
            r#"{{"seq_first":{i},"seq_last":{i},"table":"t","key":{i},"op":"insert","base_version":null,"user":"u","new":{{"id":{i}}}}}"#
        )
    }

    fn upload(n: usize, extra: &str) -> String {
        let entries: Vec<String> = (0..n).map(entry).collect();
        format!(
            r#"{{"upload_id":"{}","task":"t",{extra}"entries":[{}]}}"#,
            "a".repeat(32),
            entries.join(",")
        )
    }

    #[test]
    fn parses_as_the_derived_form_does() {
        let text = upload(3, r#""epoch":"e","unknown":[1,{"x":2}],"#);
        let (h, z) = body(&text);
        let got = parse_with(&h, &z, 1 << 20, 3).unwrap();
        let mut want: Upload = serde_json::from_str(&text).unwrap();
        want.entries.truncate(3);
        assert_eq!(got, want);
    }

    #[test]
    fn caps_refuse_with_413() {
        let (h, z) = body(&upload(4, ""));
        let e = parse_with(&h, &z, 1 << 20, 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e:?}");
        assert!(e.message.contains("more than 3 entries"), "{e:?}");
        let text = upload(4, "");
        let e = parse_with(&h, &z, text.len() - 1, 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e:?}");
        assert!(e.message.contains("decompressed"), "{e:?}");
        // Exactly at the cap passes.
        assert!(parse_with(&h, &z, text.len(), 10).is_ok());
        // Trailing bytes, missing fields, damage: 400 of their own.
        let (h, z) = body(&format!("{} x", upload(1, "")));
        assert_eq!(
            parse_with(&h, &z, 1 << 20, 3).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let (h, z) = body(r#"{"task":"t","entries":[]}"#);
        let e = parse_with(&h, &z, 1 << 20, 3).unwrap_err();
        assert!(e.message.contains("upload_id"), "{e:?}");
        let (h, mut z) = body(&upload(1, ""));
        z[5] ^= 1;
        assert_eq!(
            parse_with(&h, &z, 1 << 20, 3).unwrap_err().code,
            ErrorCode::Damaged
        );
    }
}
