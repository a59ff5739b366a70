//! The slice stream end to end: what the writer makes the reader takes, and every
//! stream out of order, cut, damaged or miscounted is refused.

use super::*;
use crate::frame::{FrameEncoder, KIND_ERROR, KIND_HEADER, KIND_ROWS, KIND_TRAILER, ValueRef};
use crate::value::{ColumnType, Value};
use crate::wire::{ColumnDef, Cursor, ErrorCode, SliceTrailer, TableSchema};

fn table(name: &str, width: usize) -> TableSchema {
    TableSchema {
        name: name.into(),
        primary_key: "id".into(),
        columns: (0..width)
            .map(|i| ColumnDef {
                name: if i == 0 { "id".into() } else { format!("c{i}") },
                column_type: ColumnType::Integer,
            })
            .collect(),
        rows_estimate: 0,
        write: vec![],
        filter: None,
        parent: None,
    }
}

fn header() -> SliceHeader {
    SliceHeader {
        protocol: 1,
        epoch: "e".into(),
        task: "t".into(),
        task_hash: "h".into(),
        user: "u".into(),
        device: "d".into(),
        tables: vec![table("a", 2), table("b", 1)],
        since: None,
        full_reason: None,
        assigned: vec![],
        key_blocks: Vec::new(),
        file_tables: Vec::new(),
    }
}

fn row(i: i64) -> [Value; 2] {
    [Value::Integer(i), Value::Text(format!("row {i}"))]
}

/// A stream of `n` rows of table `a` and one of `b`, written by the writer.
fn written(n: i64) -> Vec<u8> {
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&header()).unwrap();
    for i in 0..n {
        w.row(0, row(i).iter().map(ValueRef::from)).unwrap();
    }
    w.row(1, [ValueRef::Integer(7)]).unwrap();
    assert_eq!(w.rows(), [n as u64, 1]);
    w.trailer(Cursor::from_raw(99)).unwrap();
    w.finish().unwrap()
}

/// What a whole stream holds: header, rows (table, values), trailer.
type Slice = (SliceHeader, Vec<(usize, Vec<Value>)>, SliceTrailer);

/// Everything a stream holds, or why it was refused.
fn read_all(bytes: &[u8]) -> Result<Slice, StreamError> {
    let mut r = SliceReader::new(bytes)?;
    let mut header = None;
    let mut rows = Vec::new();
    loop {
        match r.next_event()? {
            Some(Event::Header(h)) => header = Some(h),
            Some(Event::Rows(mut batch)) => {
                let t = batch.table();
                let mut values = Vec::new();
                while batch.next_row(&mut values)? {
                    rows.push((t, values.iter().map(|v| ValueRef::to_owned(*v)).collect()));
                }
            }
            Some(Event::Trailer(t)) => {
                assert!(r.next_event()?.is_none(), "nothing after the trailer");
                return Ok((header.expect("a header"), rows, t));
            }
            None => unreachable!("None comes only after the trailer"),
        }
    }
}

fn refusal(bytes: &[u8]) -> String {
    match read_all(bytes) {
        Ok(_) => panic!("a bad stream was accepted"),
        Err(e) => e.to_string(),
    }
}

fn compress(raw: &[u8]) -> Vec<u8> {
    zstd::encode_all(raw, 1).unwrap()
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A trailer frame that matches `before` (every frame before it) with these counts.
fn trailer_after(before: &[u8], rows: Vec<u64>, cursor: Cursor) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(before);
    let checksum = crate::frame::trailer_checksum(crc, &rows, cursor);
    let t = SliceTrailer {
        rows,
        checksum,
        cursor,
    };
    frame(KIND_TRAILER, &serde_json::to_vec(&t).unwrap())
}

/// A row batch payload by hand: table, declared count, then the values as encoded.
fn batch(table: u8, n_rows: u8, ints: &[u8]) -> Vec<u8> {
    let mut p = vec![table, n_rows];
    for &i in ints {
        p.extend_from_slice(&[1, i << 1]);
    }
    p
}

fn header_frame(h: &SliceHeader) -> Vec<u8> {
    frame(KIND_HEADER, &serde_json::to_vec(h).unwrap())
}

#[test]
fn what_the_writer_writes_the_reader_reads() {
    let (h, rows, t) = read_all(&written(1000)).unwrap();
    assert_eq!(h, header());
    assert_eq!(rows.len(), 1001);
    assert_eq!(rows[5], (0, row(5).to_vec()));
    assert_eq!(rows[1000], (1, vec![Value::Integer(7)]));
    assert_eq!(t.rows, [1000, 1]);
    assert_eq!(t.cursor, Cursor::from_raw(99));
}

#[test]
fn the_frames_are_the_frame_encoders_bytes() {
    // The wire stays what it was: the writer's frames, decompressed, are exactly what
    // the frame encoder makes, and a zstd frame with its checksum carries them.
    let bytes = written(3000);
    let mut want = Vec::new();
    let mut enc = FrameEncoder::new();
    enc.header(&mut want, &header());
    for i in 0..3000 {
        enc.row(&mut want, 0, row(i).iter().map(ValueRef::from));
    }
    enc.row(&mut want, 1, [ValueRef::Integer(7)]);
    enc.trailer(&mut want, Cursor::from_raw(99));
    assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), want);
    // Frame header descriptor: checksum flag set.
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    assert_ne!(bytes[4] & 0x04, 0, "zstd content checksum");
}

/// The compressor's window is the stream's 64 KiB (`ZSTD_WINDOW_LOG`), not level 1's
/// default for a stream of unknown size (512 KiB): a server holds one per download.
#[test]
fn the_stream_is_compressed_with_a_window_of_64_kib() {
    let bytes = written(3000);
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    // No single segment (the size is not known ahead), so a window descriptor follows
    // the frame header descriptor: exponent (window log - 10) and mantissa.
    assert_eq!(bytes[4] & 0x20, 0, "a window descriptor is present");
    let (exponent, mantissa) = (bytes[5] >> 3, bytes[5] & 0x07);
    assert_eq!(
        (10 + u32::from(exponent), mantissa),
        (super::ZSTD_WINDOW_LOG, 0)
    );
    assert_eq!(super::ZSTD_WINDOW_LOG, 16);
}

/// The compressor's blocks are at most `ZSTD_BLOCK_MAX` (32 KiB, where the 64 KiB
/// window alone would give 64 KiB blocks): its buffers are sized by the block. Rows of
/// random bytes do not compress, so zstd stores them as raw blocks, whose size field is
/// their content's size.
#[test]
fn the_streams_blocks_are_at_most_32_kib() {
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&header()).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..300 {
        let blob: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        w.row(0, [ValueRef::Integer(i), ValueRef::Blob(&blob)])
            .unwrap();
    }
    w.trailer(Cursor::from_raw(1)).unwrap();
    let bytes = w.finish().unwrap();
    let frames = zstd_frames(&bytes);
    assert_eq!(
        frames.len(),
        3,
        "header, rows and trailer, a zstd frame each"
    );
    let raw: Vec<usize> = frames.into_iter().flatten().collect();
    assert!(raw.len() >= 8, "random rows are stored raw: {raw:?}");
    assert_eq!(raw.iter().max(), Some(&(super::ZSTD_BLOCK_MAX as usize)));
}

/// The zstd frames of `bytes`, each as the sizes of its raw (stored) blocks; each
/// frame checked to have the stream's shape on the way.
fn zstd_frames(bytes: &[u8]) -> Vec<Vec<usize>> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert_eq!(
            &bytes[at..at + 4],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "magic at {at}"
        );
        // Frame header descriptor (no dictionary, no content size), window descriptor.
        assert_eq!(bytes[at + 4] & 0xe7, 0x04, "checksum flag only");
        at += 6;
        let mut raw = Vec::new();
        loop {
            let h = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], 0]);
            let (last, kind, size) = (h & 1 == 1, (h >> 1) & 3, (h >> 3) as usize);
            at += 3;
            match kind {
                0 => {
                    raw.push(size);
                    at += size;
                }
                1 => at += 1,
                _ => at += size,
            }
            if last {
                break;
            }
        }
        // The content checksum ends the frame.
        at += 4;
        frames.push(raw);
    }
    assert_eq!(at, bytes.len());
    frames
}

/// The bytes a stream's writer put out between its header and its trailer: the zstd
/// frame of its rows, as a server keeps it.
fn rows_frame(n: i64) -> (Vec<u8>, Vec<u64>, crc32fast::Hasher) {
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&header()).unwrap();
    let start = w.get_mut().len();
    for i in 0..n {
        w.row(0, row(i).iter().map(ValueRef::from)).unwrap();
    }
    w.row(1, [ValueRef::Integer(7)]).unwrap();
    w.trailer(Cursor::from_raw(5)).unwrap();
    let kept = w.get_mut()[start..].to_vec();
    (kept, w.rows().to_vec(), w.rows_checksum())
}

#[test]
fn rows_kept_from_one_stream_are_sent_again_after_another_header() {
    let (kept, rows, crc) = rows_frame(2000);
    assert_eq!(zstd_frames(&kept).len(), 1, "the rows are one zstd frame");
    let mut other = header();
    other.device = "another device".into();
    other.full_reason = Some(crate::wire::FullReason::Requested);
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&other).unwrap();
    w.splice_rows(&rows, crc.clone(), |out| {
        out.extend_from_slice(&kept);
        Ok(())
    })
    .unwrap();
    assert_eq!(w.rows(), [2000, 1]);
    w.trailer(Cursor::from_raw(77)).unwrap();
    let (h, got, t) = read_all(&w.finish().unwrap()).unwrap();
    assert_eq!(h, other);
    let (_, want, _) = read_all(&written(2000)).unwrap();
    assert_eq!(got, want, "the same rows as the stream they were kept from");
    assert_eq!((t.rows, t.cursor), (vec![2000, 1], Cursor::from_raw(77)));

    // Rows that are not what their checksum says fail the trailer's checksum.
    let (fewer, _, _) = rows_frame(1999);
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&other).unwrap();
    w.splice_rows(&[1999, 1], crc.clone(), |out| {
        out.extend_from_slice(&fewer);
        Ok(())
    })
    .unwrap();
    w.trailer(Cursor::from_raw(77)).unwrap();
    assert!(refusal(&w.finish().unwrap()).contains("checksum"));

    // A delta's stream is one zstd frame, and takes no spliced rows.
    let mut delta = header();
    delta.since = Some(Cursor::from_raw(3));
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&delta).unwrap();
    w.row(0, row(1).iter().map(ValueRef::from)).unwrap();
    w.trailer(Cursor::from_raw(4)).unwrap();
    assert_eq!(zstd_frames(&w.finish().unwrap()).len(), 1);
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&delta).unwrap();
    let keys = [2000, 1, 0, 0];
    assert!(w.splice_rows(&keys, crc.clone(), |_| Ok(())).is_err());

    // Only right after the header, and for every lane.
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&other).unwrap();
    let copied = |_: &mut Vec<u8>| Ok(());
    assert!(w.splice_rows(&[1], crc.clone(), copied).is_err());
    w.row(1, [ValueRef::Integer(7)]).unwrap();
    assert!(w.splice_rows(&rows, crc, copied).is_err());
}

#[test]
fn a_cut_stream_is_refused_wherever_it_is_cut() {
    let bytes = written(300);
    for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut} accepted");
    }
    let raw = zstd::decode_all(&bytes[..]).unwrap();
    for cut in (0..raw.len()).step_by(5) {
        assert!(read_all(&compress(&raw[..cut])).is_err(), "cut at {cut}");
    }
}

#[test]
fn damage_fails_the_checksum() {
    let raw = zstd::decode_all(&written(50)[..]).unwrap();
    // A bit of a value in the last row batch: decodes, but the trailer disagrees.
    let at = raw.len() - 100;
    let mut bad = raw.clone();
    bad[at] ^= 0x01;
    let e = refusal(&compress(&bad));
    assert!(e.contains("corrupt stream"), "{e}");
    // A bit of the compressed bytes: zstd or the checksum refuses.
    let mut bytes = written(50);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    refusal(&bytes);
}

#[test]
fn the_header_comes_first_and_once() {
    let rows = frame(KIND_ROWS, &batch(0, 1, &[1, 2]));
    let e = refusal(&compress(&rows));
    assert_eq!(e, "the stream does not start with a header");
    let h = header_frame(&header());
    let e = refusal(&compress(&[h.clone(), h].concat()));
    assert_eq!(e, "a second header in the stream");
    let e = refusal(&compress(&[]));
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn a_bad_header_is_refused() {
    type Damage = fn(&mut SliceHeader);
    let cases: [(&str, Damage); 6] = [
        ("no tables", |h| h.tables.clear()),
        ("table name `fieldsync_x`", |h| {
            h.tables[0].name = "fieldsync_x".into()
        }),
        ("table name `SQLITE_x`", |h| {
            h.tables[0].name = "SQLITE_x".into()
        }),
        ("table name `A`", |h| h.tables[1].name = "A".into()),
        ("the primary key must come first", |h| {
            h.tables[0].primary_key = "c1".into()
        }),
        ("column `ID`", |h| h.tables[0].columns[1].name = "ID".into()),
    ];
    for (want, damage) in cases {
        let mut h = header();
        damage(&mut h);
        let e = refusal(&compress(&header_frame(&h)));
        assert!(
            e.starts_with("bad slice header: ") && e.contains(want),
            "{want}: {e}"
        );
    }
}

#[test]
fn the_servers_error_frame_is_its_error_wherever_it_comes() {
    let body = crate::wire::ErrorBody {
        code: ErrorCode::Internal,
        message: "disk on fire".into(),
        keep_changes: false,
    };
    let err = frame(KIND_ERROR, &serde_json::to_vec(&body).unwrap());
    for stream in [err.clone(), [header_frame(&header()), err].concat()] {
        match read_all(&compress(&stream)) {
            Err(StreamError::Server(e)) => assert_eq!(e.message, "disk on fire"),
            other => panic!("{other:?}"),
        }
    }
    // The writer's error path makes the same.
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&header()).unwrap();
    w.row(0, row(1).iter().map(ValueRef::from)).unwrap();
    w.error(&body).unwrap();
    assert!(matches!(
        read_all(&w.finish().unwrap()),
        Err(StreamError::Server(_))
    ));
}

#[test]
fn batches_must_fit_their_table_and_end_with_their_rows() {
    let h = header_frame(&header());
    let ok_before = |payload: Vec<u8>| {
        let mut s = h.clone();
        s.extend(frame(KIND_ROWS, &payload));
        let t = trailer_after(&s, vec![1, 0], Cursor::from_raw(1));
        s.extend(t);
        compress(&s)
    };
    // The hand-made batch is right when it is right.
    read_all(&ok_before(vec![0, 1, 1, 2, 3, 1, b'x'])).unwrap();
    assert_eq!(
        refusal(&ok_before(batch(5, 1, &[1]))),
        "row batch for unknown table 5"
    );
    assert_eq!(
        refusal(&ok_before(batch(0, 1, &[1, 2, 3]))),
        "row batch has trailing bytes"
    );
    let e = refusal(&ok_before(batch(0, 1, &[1])));
    assert!(e.contains("ends inside a value"), "{e}");
    let e = refusal(&ok_before(vec![0, 1, 9, 0]));
    assert!(e.contains("unknown value tag 9"), "{e}");
}

#[test]
fn counts_must_match_the_trailer() {
    // A checksum that matches, counts that do not: the rows per table are the reader's.
    let mut s = header_frame(&header());
    s.extend(frame(KIND_ROWS, &batch(0, 2, &[1, 2, 3, 4])));
    let t = trailer_after(&s, vec![1, 0], Cursor::from_raw(1));
    s.extend(t);
    assert_eq!(
        refusal(&compress(&s)),
        "row counts differ from the trailer (got [2, 0], trailer [1, 0])"
    );
}

#[test]
fn nothing_may_follow_the_trailer() {
    let mut raw = zstd::decode_all(&written(3)[..]).unwrap();
    raw.push(0);
    assert_eq!(refusal(&compress(&raw)), "data after the trailer");
    let mut two = written(3);
    two.extend(written(3));
    assert_eq!(refusal(&two), "data after the trailer");
}

#[test]
fn a_batch_the_caller_leaves_is_still_checked_whole() {
    let mut s = header_frame(&header());
    s.extend(frame(KIND_ROWS, &batch(0, 1, &[1, 2, 3])));
    let t = trailer_after(&s, vec![1, 0], Cursor::from_raw(1));
    s.extend(t);
    let bytes = compress(&s);
    let mut r = SliceReader::new(&bytes[..]).unwrap();
    assert!(matches!(r.next_event().unwrap(), Some(Event::Header(_))));
    assert!(matches!(r.next_event().unwrap(), Some(Event::Rows(_))));
    let e = r.next_event().unwrap_err();
    assert_eq!(e.to_string(), "row batch has trailing bytes");
    // A good batch skipped is fine.
    let bytes = written(10);
    let mut r = SliceReader::new(&bytes[..]).unwrap();
    let mut n = 0;
    while let Some(ev) = r.next_event().unwrap() {
        n += 1;
        if let Event::Trailer(t) = ev {
            assert_eq!(t.rows, [10, 1]);
        }
    }
    assert_eq!(n, 4);
}

#[test]
fn the_writer_refuses_what_the_reader_would() {
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    let misuse = |e: std::io::Error| assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    misuse(w.row(0, [ValueRef::Integer(1)]).unwrap_err());
    misuse(w.trailer(Cursor::from_raw(1)).unwrap_err());
    w.header(&header()).unwrap();
    misuse(w.header(&header()).unwrap_err());
    misuse(w.row(2, [ValueRef::Integer(1)]).unwrap_err());
    misuse(w.row(0, [ValueRef::Integer(1)]).unwrap_err());
    w.row(0, row(1).iter().map(ValueRef::from)).unwrap();
    w.trailer(Cursor::from_raw(5)).unwrap();
    misuse(w.trailer(Cursor::from_raw(5)).unwrap_err());
    misuse(w.row(0, row(2).iter().map(ValueRef::from)).unwrap_err());
    let (_, rows, t) = read_all(&w.finish().unwrap()).unwrap();
    assert_eq!((rows.len(), t.rows), (1, vec![1, 0]));
    // A stream never ended is refused as cut.
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&header()).unwrap();
    assert!(refusal(&w.finish().unwrap()).contains("truncated"));
}

#[test]
fn a_delta_carries_the_keys_that_left_in_lanes_after_the_tables() {
    let mut h = header();
    h.since = Some(Cursor::from_raw(5));
    assert_eq!(h.lanes(), [2, 1, 1, 1]);
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&h).unwrap();
    w.row(0, row(1).iter().map(ValueRef::from)).unwrap();
    // Table `a`'s left keys are lane 2, of width 1: a whole row there is refused.
    let refused = w.row(2, row(2).iter().map(ValueRef::from)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    w.row(2, [ValueRef::Integer(2)]).unwrap();
    w.row(3, [ValueRef::Integer(3)]).unwrap();
    assert!(w.row(4, [ValueRef::Integer(4)]).is_err(), "no fifth lane");
    w.trailer(Cursor::from_raw(9)).unwrap();
    let (got, rows, trailer) = read_all(&w.finish().unwrap()).unwrap();
    assert_eq!(got.since, Some(Cursor::from_raw(5)));
    assert_eq!(trailer.rows, [1, 0, 1, 1]);
    assert_eq!(
        rows,
        [
            (0, row(1).to_vec()),
            (2, vec![Value::Integer(2)]),
            (3, vec![Value::Integer(3)])
        ]
    );
}

#[test]
fn a_deltas_rows_and_left_keys_may_interleave() {
    // One query gives a table's rows and its keys that left, in the order it finds
    // them: the batches follow that order, and the reader takes them as they come.
    let mut h = header();
    h.since = Some(Cursor::from_raw(5));
    let mut w = SliceWriter::new(Vec::new()).unwrap();
    w.header(&h).unwrap();
    w.row(0, row(1).iter().map(ValueRef::from)).unwrap();
    w.row(2, [ValueRef::Integer(2)]).unwrap();
    w.row(0, row(3).iter().map(ValueRef::from)).unwrap();
    w.row(0, row(4).iter().map(ValueRef::from)).unwrap();
    w.row(2, [ValueRef::Integer(5)]).unwrap();
    w.trailer(Cursor::from_raw(9)).unwrap();
    let (_, rows, trailer) = read_all(&w.finish().unwrap()).unwrap();
    assert_eq!(trailer.rows, [3, 0, 2, 0]);
    assert_eq!(
        rows,
        [
            (0, row(1).to_vec()),
            (2, vec![Value::Integer(2)]),
            (0, row(3).to_vec()),
            (0, row(4).to_vec()),
            (2, vec![Value::Integer(5)])
        ]
    );
}

#[test]
fn a_full_stream_has_no_lanes_for_left_keys() {
    // A key batch (lane 2) in a stream whose header is not a delta is refused.
    let mut raw = Vec::new();
    FrameEncoder::new().header(&mut raw, &header());
    raw.extend(frame(KIND_ROWS, &batch(2, 1, &[4])));
    raw.extend(trailer_after(
        &raw.clone(),
        vec![0, 0, 1],
        Cursor::from_raw(1),
    ));
    assert!(refusal(&compress(&raw)).contains("unknown table 2"));
}

#[test]
fn full_reasons_round_trip_by_their_names_only() {
    use crate::wire::FullReason;
    for r in FullReason::ALL {
        assert_eq!(FullReason::parse(r.as_str()), Some(r));
        assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
    }
    assert_eq!(FullReason::parse("No-Cursor"), None);
    // A header's shape digest moves with a column's name and type, not with counts.
    let mut h = header();
    let d = h.shape_digest();
    h.tables[0].rows_estimate = 9;
    assert_eq!(h.shape_digest(), d);
    h.tables[0].columns[1].column_type = ColumnType::Text;
    assert_ne!(h.shape_digest(), d);
}
