//! The download stream: a blocking thread reads the slice from the store and writes
//! zstd-compressed frames into a bounded channel that the HTTP body drains. Memory is
//! bounded by the channel, whatever the slice's size; a client that goes away closes
//! the channel, which stops the read.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use fieldsync_proto::frame::{self, FrameEncoder, ValueRef};
use fieldsync_proto::wire::SliceHeader;
use fieldsync_store::{HistoryRecord, SlicePlan, SliceSink, Store, StoreError};
use http_body::Frame;
use tokio::sync::mpsc;

use crate::api::DownloadTurn;
use crate::error::ApiError;

/// Bytes handed to the HTTP body at a time, and how many may wait in the channel.
const CHUNK_BYTES: usize = 64 * 1024;
const CHANNEL_CHUNKS: usize = 8;
/// zstd level: fast enough to keep ahead of the device's inserts on one core.
const ZSTD_LEVEL: i32 = 1;

/// The receiving end of the channel as an HTTP body.
pub struct ChannelBody(mpsc::Receiver<Result<Bytes, io::Error>>);

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

struct StreamSink {
    header: SliceHeader,
    frames: FrameEncoder,
    out: Vec<u8>,
    zstd: zstd::stream::write::Encoder<'static, ChunkWriter>,
    cursor: i64,
    /// The device closed the download: not a server error, nothing more to send.
    device_gone: bool,
}

impl StreamSink {
    fn drain(&mut self, force: bool) -> Result<(), StoreError> {
        if force || self.out.len() >= CHUNK_BYTES {
            if let Err(e) = self.zstd.write_all(&self.out) {
                self.device_gone = true;
                return Err(StoreError::Db(format!("stream aborted: {e}")));
            }
            self.out.clear();
        }
        Ok(())
    }
}

impl SliceSink for StreamSink {
    fn begin(&mut self, cursor: i64, rows_per_table: &[u64]) -> Result<(), StoreError> {
        self.cursor = cursor;
        for (t, n) in self.header.tables.iter_mut().zip(rows_per_table) {
            t.rows_estimate = *n;
        }
        self.frames.header(&mut self.out, &self.header);
        self.drain(true)
    }

    fn row(
        &mut self,
        table_idx: usize,
        values: &mut dyn Iterator<Item = ValueRef<'_>>,
    ) -> Result<(), StoreError> {
        self.frames.row(&mut self.out, table_idx, values);
        self.drain(false)
    }
}

/// Who asked for the stream, for the sync history.
pub struct SessionInfo {
    pub device: String,
    pub user: String,
    pub op: fieldsync_proto::wire::SyncOp,
    pub trigger: fieldsync_proto::wire::Trigger,
    pub started_at: String,
    pub started: std::time::Instant,
}

/// Starts streaming `plan`; the returned body yields the compressed frames. The
/// session is recorded in the sync history when the stream ends.
pub fn start(
    store: Arc<dyn Store>,
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
    };
    let mut zstd =
        zstd::stream::write::Encoder::new(writer, ZSTD_LEVEL).map_err(ApiError::internal)?;
    zstd.include_checksum(true).map_err(ApiError::internal)?;
    let mut sink = StreamSink {
        header,
        frames: FrameEncoder::new(),
        out: Vec::with_capacity(2 * CHUNK_BYTES),
        zstd,
        cursor: 0,
        device_gone: false,
    };
    tokio::task::spawn_blocking(move || {
        // The download's turn ends with this thread.
        let _turn = turn;
        let streamed = store.stream_slice(&plan, &mut sink);
        let (mut result, mut message) = match &streamed {
            Ok(rows) => {
                sink.frames.trailer(&mut sink.out, sink.cursor);
                ("ok", format!("{} rows", rows.iter().sum::<u64>()))
            }
            Err(_) if sink.device_gone => {
                ("cancelled", "the device closed the download".to_string())
            }
            Err(e) => {
                let err = ApiError::internal(format!("streaming task `{}`: {e}", sink.header.task));
                sink.frames.flush(&mut sink.out);
                frame::error_frame(&mut sink.out, &err.body());
                ("error", e.to_string())
            }
        };
        let rows_down = sink.frames.rows().iter().sum();
        let finished = sink
            .drain(true)
            .and_then(|_| {
                sink.zstd
                    .finish()
                    .map_err(|e| StoreError::Db(e.to_string()))
            })
            .and_then(|mut w| {
                w.flush()
                    .map(|_| w.n_bytes)
                    .map_err(|e| StoreError::Db(e.to_string()))
            });
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
        };
        if let Err(e) = store.history_record(&record) {
            eprintln!("fieldsync server: recording a sync session: {e}");
        }
    });
    Ok(ChannelBody(rx))
}
