//! Kept streams: the rows of a big slice's last whole stream, as the compressed bytes
//! that went to the device, in an unnamed temporary file. The next whole download of
//! the same slice (the crew's other tablets in the morning, a device whose replica is
//! of another task or user; never one that asked for the slice read anew, `--full`)
//! gets them again after a header of its own when nothing in the slice changed since,
//! which the store answers as it answers a delta: from the kept stream's cursor, in the
//! new download's snapshot. Sending them again costs the server a file's read instead
//! of reading, encoding and compressing the slice, and PostgreSQL nothing.
//!
//! What makes that right: the slice stream's rows are a zstd frame of their own,
//! checksummed apart from the header (`proto::stream::SliceWriter::splice_rows`), and
//! a delta that sends nothing proves the slice now is the slice then (the delta's
//! promise, its property test). The device gets the new snapshot's cursor, recorded as
//! its base as for any download.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::wire::{Cursor, FullReason, SliceHeader};
use fieldsync_store::{SlicePlan, SliceSink, Store, StoreError};

/// Slices kept at most; when full, the one least lately used goes.
const MAX_STREAMS: usize = 8;
/// Bytes kept at most, all streams together; a stream bigger alone is not kept.
const MAX_BYTES: u64 = 1 << 30;
/// How long a stream is kept after it was made.
const KEEP: Duration = Duration::from_secs(12 * 3600);
/// A whole stream is kept only when it is expected to hold at least these rows: below
/// that, streaming the slice costs about what checking it did not change does.
pub(crate) const MIN_ROWS: u64 = 20_000;
/// Streams recorded at once, at most (each up to `MAX_BYTES`), one per slice: the
/// crew's morning downloads of one region record it once.
const RECORDING_AT_ONCE: usize = 2;

/// One slice's rows as they were sent.
pub(crate) struct KeptStream {
    file: File,
    len: u64,
    /// Rows per lane, and the checksum of their frames.
    rows: Vec<u64>,
    crc: crc32fast::Hasher,
    /// The snapshot they were read in, and the device it was recorded for.
    cursor: Cursor,
    device: String,
    made: Instant,
}

impl KeptStream {
    pub(crate) fn rows(&self) -> &[u64] {
        &self.rows
    }

    pub(crate) fn crc(&self) -> crc32fast::Hasher {
        self.crc.clone()
    }

    /// Copies the kept bytes into `out`. A failure to read them (not to write) sets
    /// `unreadable`.
    pub(crate) fn copy_to(&self, out: &mut impl Write, unreadable: &mut bool) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < self.len {
            let n = buf.len().min((self.len - at) as usize);
            if let Err(e) = self.file.read_exact_at(&mut buf[..n], at) {
                *unreadable = true;
                return Err(e);
            }
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Whether the slice of `plan` (a whole download's, for its own device) is still
    /// what this stream holds, judged by the store in a snapshot of its own; if so,
    /// that snapshot's cursor, recorded as the device's base. Any error, a refused
    /// delta or a row that changed: `None` (the slice is then streamed as always).
    pub(crate) fn still_current(&self, store: &dyn Store, plan: &SlicePlan) -> Option<Cursor> {
        let mut probe = plan.clone();
        probe.since = Some(self.cursor);
        probe.since_of = Some(self.device.clone());
        // A refused cursor turns the delta whole: not counted, it stops at `begin`.
        probe.rows_estimate = Some(vec![0; plan.tables.len()]);
        let mut sink = Unchanged { cursor: None };
        store.stream_slice(&probe, &mut sink).ok()?;
        sink.cursor
    }
}

/// A delta's sink that stops at the first sign of a change.
struct Unchanged {
    cursor: Option<Cursor>,
}

impl SliceSink for Unchanged {
    fn begin(
        &mut self,
        cursor: Cursor,
        _rows: &[u64],
        refused: Option<FullReason>,
    ) -> Result<(), StoreError> {
        if refused.is_some() {
            return Err(StoreError::Db("the kept stream's cursor is refused".into()));
        }
        self.cursor = Some(cursor);
        Ok(())
    }

    fn row(
        &mut self,
        _table: usize,
        _values: &mut dyn Iterator<Item = ValueRef<'_>>,
    ) -> Result<(), StoreError> {
        self.cursor = None;
        Err(StoreError::Db(
            "the slice changed since its kept stream".into(),
        ))
    }
}

/// A stream's rows being written to a file as they go to the device.
pub(crate) struct Recording {
    file: io::BufWriter<File>,
    len: u64,
    slice: Recorded,
}

/// A slice counted as being recorded while this lives.
struct Recorded(Arc<Kept>, String);

impl Drop for Recorded {
    fn drop(&mut self) {
        let Recorded(kept, key) = self;
        kept.recording
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

impl Recording {
    /// A recording of slice `key` into a fresh unnamed file; `None` while the slice
    /// or `RECORDING_AT_ONCE` others are being recorded, or when no file can be made
    /// (a full or read-only temporary folder; said once in the log): the download
    /// goes on unrecorded.
    pub(crate) fn start(kept: &Arc<Kept>, key: &str) -> Option<Recording> {
        {
            let mut recording = kept.recording.lock().unwrap_or_else(|e| e.into_inner());
            if recording.len() >= RECORDING_AT_ONCE || !recording.insert(key.to_string()) {
                return None;
            }
        }
        let slice = Recorded(kept.clone(), key.to_string());
        match tempfile::tempfile() {
            Ok(file) => Some(Recording {
                file: io::BufWriter::with_capacity(64 * 1024, file),
                len: 0,
                slice,
            }),
            Err(e) => {
                if !kept.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        "big slices' streams are not kept: no file in the temporary folder \
                         ({e}; TMPDIR names another)"
                    );
                }
                None
            }
        }
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.len += data.len() as u64;
        if self.len > MAX_BYTES {
            return Err(io::Error::other("too big to keep"));
        }
        self.file.write_all(data)
    }
}

/// The kept streams, by slice.
#[derive(Default)]
pub(crate) struct Kept {
    streams: Mutex<HashMap<String, (Instant, Arc<KeptStream>)>>,
    /// The slices being recorded.
    recording: Mutex<HashSet<String>>,
    /// A recording could not make its file, and the log said so.
    warned: AtomicBool,
}

impl Kept {
    /// What names a slice's rows as a stream: every table's query and the values it
    /// binds (the user and device, for filters that name them), the columns and
    /// their types as the header tells them and as the main database declares them
    /// (an office's change of a column's declared type rewrites values without
    /// writing rows: `numeric(10,2)` to `numeric(10,3)`), and the main database's
    /// epoch.
    pub(crate) fn key(plan: &SlicePlan, header: &SliceHeader) -> String {
        let mut key = format!("{}\u{0}{}\u{0}", header.shape_digest(), header.epoch);
        for t in &plan.tables {
            let _ = write!(
                key,
                "{}\u{0}{:?}\u{0}{:?}\u{0}",
                t.select_sql, t.binds, t.declared
            );
        }
        key
    }

    /// The stream kept for `key`, if one is, marked as used now.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<Arc<KeptStream>> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.retain(|_, (_, s)| now.saturating_duration_since(s.made) < KEEP);
        let (used, stream) = streams.get_mut(key)?;
        *used = now;
        Some(stream.clone())
    }

    /// Forgets `stream` as `key`'s (no longer the slice, or unreadable), unless
    /// another took its place.
    pub(crate) fn forget(&self, key: &str, stream: &Arc<KeptStream>) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams
            .get(key)
            .is_some_and(|(_, s)| Arc::ptr_eq(s, stream))
        {
            streams.remove(key);
        }
    }

    /// Keeps what `recording` holds as the rows of its slice, `rows` per lane with
    /// checksum `crc`, read in the snapshot of `cursor` recorded for `device`.
    pub(crate) fn keep(
        &self,
        recording: Recording,
        (rows, crc): (Vec<u64>, crc32fast::Hasher),
        (cursor, device): (Cursor, String),
        now: Instant,
    ) {
        let Recording { file, len, slice } = recording;
        let Ok(file) = file.into_inner() else {
            return;
        };
        let key = slice.1.clone();
        let stream = Arc::new(KeptStream {
            file,
            len,
            rows,
            crc,
            cursor,
            device,
            made: now,
        });
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.remove(&key);
        while streams.len() >= MAX_STREAMS
            || streams.values().map(|(_, s)| s.len).sum::<u64>() + stream.len > MAX_BYTES
        {
            let Some(oldest) = streams
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            streams.remove(&oldest);
        }
        streams.insert(key, (now, stream));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(kept: &Arc<Kept>, key: &str, bytes: &[u8], now: Instant) {
        let mut r = Recording::start(kept, key).unwrap();
        r.write(bytes).unwrap();
        let crc = crc32fast::Hasher::new();
        let at = (Cursor::from_raw(1), "d".to_string());
        kept.keep(r, (vec![1], crc), at, now);
    }

    #[test]
    fn a_kept_stream_gives_back_its_bytes_until_it_is_too_old() {
        let kept = Arc::new(Kept::default());
        let now = Instant::now();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        keep(&kept, "a", &bytes, now);
        let mut out = Vec::new();
        let mut unreadable = false;
        let stream = kept.get("a", now).unwrap();
        stream.copy_to(&mut out, &mut unreadable).unwrap();
        assert_eq!((out, unreadable), (bytes, false));
        // Found no longer the slice: forgotten.
        kept.forget("a", &stream);
        assert!(kept.get("a", now).is_none());
        keep(&kept, "a", b"again", now);
        assert!(kept.get("b", now).is_none());
        assert!(kept.get("a", now + KEEP).is_none(), "kept past KEEP");
    }

    #[test]
    fn the_least_lately_used_stream_goes_first() {
        let kept = Arc::new(Kept::default());
        let now = Instant::now();
        for i in 0..MAX_STREAMS {
            keep(
                &kept,
                &format!("s{i}"),
                b"rows",
                now + Duration::from_secs(i as u64),
            );
        }
        // s0 used last: s1 is the one least lately used when one more comes.
        let later = now + Duration::from_secs(100);
        assert!(kept.get("s0", later).is_some());
        keep(&kept, "new", b"rows", later);
        assert!(kept.get("s1", later).is_none());
        for key in ["s0", "s2", "new"] {
            assert!(kept.get(key, later).is_some(), "{key} gone");
        }
    }

    #[test]
    fn a_slice_is_recorded_once_at_a_time_and_few_at_once() {
        let kept = Arc::new(Kept::default());
        let first = Recording::start(&kept, "north").unwrap();
        assert!(
            Recording::start(&kept, "north").is_none(),
            "the slice twice"
        );
        let others: Vec<_> = (1..RECORDING_AT_ONCE)
            .map(|i| Recording::start(&kept, &format!("s{i}")).unwrap())
            .collect();
        assert!(Recording::start(&kept, "one more").is_none());
        drop(first);
        assert!(Recording::start(&kept, "north").is_some());
        drop(others);
    }
}
