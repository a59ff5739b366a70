//! The download stream's channel: a blocking thread reads the slice from the store
//! into `proto::stream::SliceWriter`, whose compressed bytes go into a bounded channel
//! that the HTTP body drains. Memory is
//! bounded by the channel, whatever the slice's size; a client that goes away closes
//! the channel, which stops the read.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::HeaderMap;
use bytes::Bytes;
use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::stream::SliceWriter;
use fieldsync_proto::wire::{
    Cursor, FullReason, HEADER_FULL, HEADER_REPLICA, ReplicaPosition, SliceHeader,
};
use fieldsync_store::{HistoryRecord, SlicePlan, SliceSink, Store, StoreError};
use http_body::Frame;
use tokio::sync::mpsc;

use crate::download_turns::DownloadTurn;
use crate::error::ApiError;
use crate::kept::{self, Kept, KeptStream, Recording};

/// Bytes handed to the HTTP body at a time, and how many may wait in the channel: at
/// most ~160 KiB per download in flight (with 64 KiB chunks and eight of them, the
/// chunks waiting for devices that read slowly were a fleet's largest holder after the
/// compressors; BENCHMARKS.md, "A download's buffers").
const CHUNK_BYTES: usize = 32 * 1024;
const CHANNEL_CHUNKS: usize = 4;

/// The receiving end of the channel as an HTTP body.
pub struct ChannelBody(mpsc::Receiver<Result<Bytes, io::Error>>);

impl ChannelBody {
    /// A body of what comes through `rx` (also a file's content, `files/routes.rs`).
    pub(crate) fn new(rx: mpsc::Receiver<Result<Bytes, io::Error>>) -> ChannelBody {
        ChannelBody(rx)
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// Collects compressed bytes and sends them on in chunks.
struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
    /// Compressed bytes handed to the body so far.
    n_bytes: u64,
    /// While a whole stream's rows go through, their bytes kept too (`kept.rs`); gone
    /// at the recording's first failure.
    recording: Option<Recording>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.n_bytes += self.buf.len() as u64;
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the device closed the download")
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(r) = &mut self.recording
            && r.write(data).is_err()
        {
            self.recording = None;
        }
        if self.buf.len() + data.len() > self.buf.capacity() {
            self.send()?;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Feeds the store's rows to the slice writer (`proto::stream`, which owns the
/// stream's order, counts, checksum and compression).
struct StreamSink {
    header: SliceHeader,
    writer: SliceWriter<ChunkWriter>,
    cursor: Cursor,
    /// The device closed the download: not a server error, nothing more to send.
    device_gone: bool,
    /// The kept streams and this slice's key in them, for a whole stream to be
    /// recorded.
    kept: (Arc<Kept>, String),
}

impl StreamSink {
    /// A kept stream's rows after a header of this download's own, at `cursor` (the
    /// snapshot in which the store found them still the slice's).
    /// A file of them that cannot be read is forgotten, and the download fails as a
    /// server error (the device tries again later and gets the slice read).
    fn resend(&mut self, stream: &Arc<KeptStream>, cursor: Cursor) -> Result<Vec<u64>, StoreError> {
        self.cursor = cursor;
        self.send_header(stream.rows())?;
        let mut unreadable = false;
        let copied = self.writer.splice_rows(stream.rows(), stream.crc(), |w| {
            stream.copy_to(w, &mut unreadable)
        });
        match copied {
            Ok(()) => Ok(stream.rows().to_vec()),
            Err(e) if unreadable => {
                let (kept, key) = &self.kept;
                kept.forget(key, stream);
                Err(StoreError::Db(format!(
                    "reading the slice's kept stream: {e}"
                )))
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The header, with each table's rows to come as its estimate.
    fn send_header(&mut self, rows_per_table: &[u64]) -> Result<(), StoreError> {
        for (t, n) in self.header.tables.iter_mut().zip(rows_per_table) {
            t.rows_estimate = *n;
        }
        self.writer.header(&self.header).map_err(|e| self.failed(e))
    }

    /// A failed write: the device went away, unless the writer refused its input.
    fn failed(&mut self, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::InvalidInput {
            return StoreError::Db(e.to_string());
        }
        self.device_gone = true;
        StoreError::Db(format!("stream aborted: {e}"))
    }
}

impl SliceSink for StreamSink {
    fn begin(
        &mut self,
        cursor: Cursor,
        rows_per_table: &[u64],
        refused_delta: Option<FullReason>,
    ) -> Result<(), StoreError> {
        self.cursor = cursor;
        if let Some(reason) = refused_delta {
            self.header.since = None;
            self.header.full_reason = Some(reason);
        }
        self.send_header(rows_per_table)?;
        // A whole stream expected to be big is recorded, to be kept.
        let whole = self.header.since.is_none();
        if whole && rows_per_table.iter().sum::<u64>() >= kept::MIN_ROWS {
            let (kept, key) = &self.kept;
            self.writer.get_mut().recording = Recording::start(kept, key);
        }
        Ok(())
    }

    fn row(
        &mut self,
        table_idx: usize,
        values: &mut dyn Iterator<Item = ValueRef<'_>>,
    ) -> Result<(), StoreError> {
        self.writer
            .row(table_idx, values)
            .map_err(|e| self.failed(e))
    }
}

/// The replica a download request says the device holds, and whether it asks for
/// the whole slice; a header that is not what a device sends is refused.
pub fn requested(headers: &HeaderMap) -> Result<(Option<ReplicaPosition>, bool), ApiError> {
    let bad = |what: &str| ApiError::bad_request(format!("bad {what} header"));
    let position = match headers.get(HEADER_REPLICA) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| s.len() <= 4096)
                .and_then(|s| serde_json::from_str(s).ok())
                .ok_or_else(|| bad(HEADER_REPLICA))?,
        ),
    };
    let full = match headers.get(HEADER_FULL).map(|v| v.as_bytes()) {
        None | Some(b"0") => false,
        Some(b"1") => true,
        Some(_) => return Err(bad(HEADER_FULL)),
    };
    Ok((position, full))
}

/// The keys the device's replica used (`HEADER_KEYS_USED`); absent: none.
pub fn keys_used(headers: &HeaderMap) -> Result<Vec<fieldsync_proto::wire::KeysUsed>, ApiError> {
    match headers.get(fieldsync_proto::wire::HEADER_KEYS_USED) {
        None => Ok(Vec::new()),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| s.len() <= 16 * 1024)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "bad {} header",
                    fieldsync_proto::wire::HEADER_KEYS_USED
                ))
            }),
    }
}

/// Full or delta (DESIGN's "Full or delta"): why the download must be the whole
/// slice, judged on what the server knows of the task, the user and its own history;
/// `None`: a delta from the position's cursor, unless the store finds that cursor
/// ahead of its history or older than what it kept (`stream_slice`).
pub fn full_reason(
    position: Option<&ReplicaPosition>,
    full: bool,
    header: &SliceHeader,
) -> Option<FullReason> {
    let Some(p) = position else {
        return Some(if full {
            FullReason::Requested
        } else {
            FullReason::NoCursor
        });
    };
    Some(if full {
        FullReason::Requested
    } else if p.task != header.task {
        FullReason::OtherTask
    } else if p.user != header.user && header.depends_on_user() {
        FullReason::OtherUser
    } else if p.task_hash != header.task_hash {
        FullReason::TaskChanged
    } else if p.shape != header.shape_digest() {
        FullReason::SchemaChanged
    } else if p.epoch != header.epoch {
        FullReason::EpochChanged
    } else {
        return None;
    })
}

/// Who asked for the stream, for the sync history.
pub struct SessionInfo {
    pub device: String,
    pub user: String,
    pub op: fieldsync_proto::wire::SyncOp,
    pub trigger: fieldsync_proto::wire::Trigger,
    pub started_at: fieldsync_proto::time::Timestamp,
    pub started: std::time::Instant,
}

/// What a download may take from and leave for the next ones: the estimates of
/// slices' rows (`estimates.rs`) and the kept streams (`kept.rs`), each with this
/// download's slice's key in it.
pub struct Lately {
    pub(crate) estimates: (Arc<crate::estimates::Estimates>, String),
    pub(crate) kept: (Arc<Kept>, String),
}

/// Starts streaming `plan`; the returned body yields the compressed frames. A whole
/// download of a slice kept unchanged since (`kept.rs`) sends the kept rows again. The
/// session is recorded in the sync history when the stream ends, a whole slice's rows
/// in the estimates and a big whole stream's rows kept, under the slice's keys.
pub fn start(
    store: Arc<dyn Store>,
    metrics: Arc<crate::metrics::Metrics>,
    lately: Lately,
    plan: SlicePlan,
    header: SliceHeader,
    session: SessionInfo,
    turn: DownloadTurn,
) -> Result<ChannelBody, ApiError> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let writer = ChunkWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(CHUNK_BYTES),
        n_bytes: 0,
        recording: None,
    };
    let mut sink = StreamSink {
        header,
        writer: SliceWriter::new(writer).map_err(ApiError::internal)?,
        cursor: Cursor::from_raw(0),
        device_gone: false,
        kept: lately.kept,
    };
    let (estimates, estimate_key) = lately.estimates;
    tokio::task::spawn_blocking(move || {
        // The download's turn ends with this thread.
        let _turn = turn;
        let now = std::time::Instant::now();
        let (kept, kept_key) = sink.kept.clone();
        // A whole download, unless the device asked for the slice read anew (`--full`:
        // after an office change that bypassed the tracking, say).
        let resent = match (sink.header.since, sink.header.full_reason) {
            (None, reason) if reason != Some(FullReason::Requested) => {
                kept.get(&kept_key, now).and_then(|s| {
                    let cursor = s.still_current(&*store, &plan);
                    if cursor.is_none() {
                        kept.forget(&kept_key, &s);
                    }
                    cursor.map(|c| (s, c))
                })
            }
            _ => None,
        };
        let streamed = match &resent {
            Some((stream, cursor)) => sink.resend(stream, *cursor),
            None => store.stream_slice(&plan, &mut sink),
        }
        .and_then(|rows| match sink.writer.trailer(sink.cursor) {
            Ok(()) => Ok(rows),
            Err(e) => Err(sink.failed(e)),
        });
        if let (Ok(rows), None) = (&streamed, sink.header.since) {
            // Whole: the next download of this slice uses its rows as the estimate,
            // and may send them again if they were recorded whole.
            estimates.record(estimate_key, rows.clone(), now);
            if let Some(recording) = sink.writer.get_mut().recording.take() {
                let rows = (rows.clone(), sink.writer.rows_checksum());
                let at = (sink.cursor, sink.header.device.clone());
                kept.keep(recording, rows, at, now);
            }
        }
        let (mut result, mut message) = match &streamed {
            Ok(rows) if resent.is_some() => (
                "ok",
                format!("{} rows, the slice's kept stream", rows.iter().sum::<u64>()),
            ),
            Ok(rows) => ("ok", format!("{} rows", rows.iter().sum::<u64>())),
            Err(_) if sink.device_gone => {
                ("cancelled", "the device closed the download".to_string())
            }
            Err(e) => {
                let err = ApiError::internal(format!("streaming task `{}`: {e}", sink.header.task));
                // Never refused here (no trailer was written); it goes out with `finish`.
                let _ = sink.writer.error(&err.body());
                ("error", e.to_string())
            }
        };
        let rows_down = sink.writer.rows().iter().sum();
        let finished = sink
            .writer
            .finish()
            .and_then(|mut w| w.flush().map(|_| w.n_bytes));
        let bytes_down = match finished {
            Ok(n) => n,
            Err(e) => {
                // The device went away; nothing more to tell it.
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                (result, message) = ("cancelled", "the device closed the download".to_string());
                0
            }
        };
        let record = HistoryRecord {
            device: session.device,
            user: session.user,
            task: Some(sink.header.task.clone()),
            op: session.op,
            trigger: session.trigger,
            result: result.to_string(),
            message,
            rows_down,
            rows_up: 0,
            bytes_down,
            bytes_up: 0,
            conflicts: 0,
            started_at: session.started_at,
            duration_ms: session.started.elapsed().as_millis() as u64,
            full: sink.header.since.is_none(),
            full_reason: sink.header.full_reason.map(|r| r.to_string()),
        };
        crate::request_log::record_sync(&*store, &metrics, &record);
    });
    Ok(ChannelBody(rx))
}

/// The device's blocks of integer keys for each table it may insert into whose key is
/// an integer, topped up at this contact before they run out (`store::keys`).
/// Keys the replica says it used (`HEADER_KEYS_USED`) count as used first.
pub(crate) fn key_blocks(
    store: &dyn Store,
    header: &SliceHeader,
    used: &[fieldsync_proto::wire::KeysUsed],
) -> Result<Vec<fieldsync_proto::wire::KeyBlock>, ApiError> {
    let mut blocks = Vec::new();
    for t in &header.tables {
        let integer_key = t
            .columns
            .first()
            .is_some_and(|c| c.column_type == fieldsync_proto::ColumnType::Integer);
        if integer_key && t.write.contains(&fieldsync_proto::task::WriteOp::Insert) {
            for u in used.iter().filter(|u| u.table == t.name) {
                store.keys_used(&header.device, &t.name, u.next)?;
            }
            blocks.extend(store.key_blocks(
                &header.device,
                &t.name,
                fieldsync_store::KEY_BLOCK_KEYS,
            )?);
        }
    }
    Ok(blocks)
}
