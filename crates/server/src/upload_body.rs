//! An upload's body as HTTP brings it, read only after its sender was checked:
//! streamed from the socket with a cap on its size and a deadline on its arrival, then
//! handed to `proto::upload_body::decode` (checksum, capped decompression, entries
//! parsed one by one with a cap on their number) with this server's caps, so that one
//! upload's memory is bounded by them, whatever its sender wrote (ARCHITECTURE.md
//! "Boundaries").

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, header};
use fieldsync_proto::upload_body::{self, UploadBodyError, UploadLimits};
use fieldsync_proto::wire::{
    ErrorCode, HEADER_BODY_CRC32, UPLOAD_BODY_GRACE_SECS, UPLOAD_BODY_MAX_BYTES,
    UPLOAD_BODY_MIN_RATE, UPLOAD_JSON_MAX_BYTES, UPLOAD_MAX_ENTRIES, Upload,
};
use http_body::Body as _;
use std::future::Future as _;

use crate::error::ApiError;

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

/// Holds every request body to an upload's pace (the router wraps each in it): the
/// grace, then [`UPLOAD_BODY_MIN_RATE`] bytes a second on average, else the body
/// fails and its route answers `400`. A body trickled a byte at a time (a slowloris)
/// moves bytes, so the idle timeout never comes: without this it held its connection
/// as long as its size allowed (64 KiB at a byte a second: 18 hours of a login) and a
/// file's upload for ever.
pub(crate) async fn paced(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    next.run(req.map(|body| Body::new(Paced::new(body)))).await
}

/// A body that fails once its bytes come slower than [`deadline`] allows.
struct Paced {
    inner: Body,
    started: Instant,
    received: usize,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Paced {
    fn new(inner: Body) -> Paced {
        let started = Instant::now();
        Paced {
            inner,
            started,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(deadline(started, 0).into())),
        }
    }
}

impl http_body::Body for Paced {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(format!(
                    "the request body arrived too slowly (less than {} KiB/s after {UPLOAD_BODY_GRACE_SECS} s); cut",
                    UPLOAD_BODY_MIN_RATE / 1024
                ))))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len();
                    let next = deadline(this.started, this.received);
                    this.timer.as_mut().reset(next.into());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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

/// Checks the body's checksum (a damaged body is refused before anything is read from
/// it; the device sends it again), then decompresses and parses it, within
/// [`UPLOAD_JSON_MAX_BYTES`] and [`UPLOAD_MAX_ENTRIES`] (413 past either): the
/// decoding is `proto::upload_body`'s, the answer's code and message this server's.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Upload, ApiError> {
    parse_with(headers, body, UPLOAD_JSON_MAX_BYTES, UPLOAD_MAX_ENTRIES)
}

fn parse_with(
    headers: &HeaderMap,
    body: &[u8],
    max_json: usize,
    max_entries: usize,
) -> Result<Upload, ApiError> {
    let claimed = headers.get(HEADER_BODY_CRC32).and_then(|v| v.to_str().ok());
    let limits = UploadLimits {
        max_body: UPLOAD_BODY_MAX_BYTES,
        max_json,
        max_entries,
    };
    upload_body::decode(claimed, body, &limits).map_err(|e| match e {
        UploadBodyError::Decoder(e) => ApiError::internal(e),
        e => ApiError::new(e.code(), e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> (HeaderMap, Vec<u8>) {
        let z = zstd::encode_all(json.as_bytes(), 1).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            HEADER_BODY_CRC32,
            upload_body::crc_header(&z).parse().unwrap(),
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
