//! The entry points the fuzz targets (`fuzz/`, outside the workspace) and the corpus
//! replay tests call: each takes arbitrary bytes the way the real code takes them off
//! the wire or a file, and must return, never panic, whatever the bytes are. A fuzz
//! target is one line calling one of these, so what the fuzzer explored is what CI
//! replays (docs/fuzzing.md).

use crate::filter::{self, Dialect, Params};
use crate::stream::{Event, SliceReader, StreamError};
use crate::task::{TaskDef, TaskError};
use crate::upload_body::{self, UploadBodyError, UploadLimits};
use crate::value::{ColumnType, Value};
use crate::wire::Upload;

/// Reads a slice stream to its end as a device does, from `frames`: the uncompressed
/// frames (header, row batches, trailer, error), compressed here so that the fuzzer's
/// changes reach the frame and row decoders rather than die in zstd. Batches of odd
/// lanes are left unread, as a device that skips rows does, so the reader's own check
/// of the rest of a batch runs too.
pub fn slice_stream(frames: &[u8]) -> Result<(), StreamError> {
    let compressed = zstd::encode_all(frames, crate::stream::ZSTD_LEVEL)
        .map_err(crate::frame::FrameError::Io)?;
    let mut reader = SliceReader::new(compressed.as_slice())?;
    while let Some(event) = reader.next_event()? {
        match event {
            Event::Header(h) => {
                let _ = (h.lanes(), h.shape_digest(), h.depends_on_user());
            }
            Event::Rows(mut rows) if rows.table() % 2 == 0 => {
                let mut values = Vec::new();
                while rows.next_row(&mut values)? {
                    for v in &values {
                        let _ = v.to_owned();
                    }
                }
            }
            Event::Rows(_) | Event::Trailer(_) => {}
        }
    }
    Ok(())
}

/// Decodes an upload body as the server does, with the published caps. The checksum
/// header is computed from `body`, so that the fuzzer gets past it to the decoder.
pub fn upload_body(body: &[u8]) -> Result<Upload, UploadBodyError> {
    let crc = upload_body::crc_header(body);
    upload_body::decode(Some(&crc), body, &UploadLimits::PUBLISHED)
}

/// Parses and checks a task file as `admin task apply` does (a file that is not UTF-8 is
/// refused before the parser, as reading it to a string does), then compiles each
/// table's filter as the store does.
pub fn task_file(bytes: &[u8]) -> Result<TaskDef, TaskError> {
    let text = std::str::from_utf8(bytes).map_err(|e| TaskError::Toml(e.to_string()))?;
    let def = TaskDef::from_toml(text)?;
    let _ = def.uses_user();
    for t in &def.tables {
        if let Some(f) = &t.filter {
            let _ = filter_text(f);
        }
    }
    Ok(def)
}

/// Parses a filter and, when it parses, uses it every way fieldsync does: its columns
/// and parameters, the type check, SQL for both engines (bound and inline), and an
/// evaluation on a row of every type. The canonical text it prints must read back to
/// the same filter (the promise of `Expr`'s `Display`).
pub fn filter(bytes: &[u8]) -> Result<(), filter::FilterError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => filter_text(text),
        Err(_) => Ok(()),
    }
}

/// The column types and values a fuzzed filter sees: chosen by the column's name, so
/// that one filter meets every type.
fn column_type(name: &str) -> ColumnType {
    const TYPES: [ColumnType; 6] = [
        ColumnType::Integer,
        ColumnType::Real,
        ColumnType::Text,
        ColumnType::Blob,
        ColumnType::Numeric,
        ColumnType::Decimal,
    ];
    TYPES[name.len() % TYPES.len()]
}

fn column_value(name: &str) -> Value {
    let n = name.bytes().map(i64::from).sum::<i64>();
    match (column_type(name), n % 3) {
        (_, 0) => Value::Null,
        (ColumnType::Integer, _) => Value::Integer(n - 300),
        (ColumnType::Real, _) => Value::Real(n as f64 / 7.0),
        (ColumnType::Text, _) => Value::Text(name.chars().rev().collect()),
        (ColumnType::Blob, _) => Value::Blob(name.as_bytes().to_vec()),
        (ColumnType::Numeric, _) => Value::Integer(i64::MAX - n),
        (ColumnType::Decimal, _) => Value::Text(format!("{n}.10")),
    }
}

fn filter_text(text: &str) -> Result<(), filter::FilterError> {
    let expr = filter::parse(text)?;
    let canonical = expr.to_string();
    // The canonical text may be longer than the source (`a=1` prints as `a = 1`); past
    // the length limit it is refused like any long filter.
    if canonical.len() <= filter::MAX_FILTER_BYTES {
        match filter::parse(&canonical) {
            Ok(again) => assert_eq!(again, expr, "the canonical text {canonical:?} reads back"),
            Err(e) => panic!("the canonical text {canonical:?} does not parse: {e}"),
        }
    }
    let _ = expr.columns();
    let _ = expr.uses_param(filter::Param::User);
    let typed = expr.check(&|name| Some(column_type(name))).is_ok();
    let params = Params {
        user: "ana".into(),
        device: "tab-7".into(),
    };
    let column_sql = |name: &str| format!("\"t\".{}", filter::quote_ident(name));
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let mut binds = Vec::new();
        let _ = expr.to_sql(dialect, &column_sql, &params, &mut binds);
        let _ = expr.to_sql_inline(dialect, &column_sql, &params);
    }
    let decimal = |name: &str| typed && column_type(name) == ColumnType::Decimal;
    let _ = expr.eval_typed(&column_value, &decimal, &params);
    let _ = expr.eval(&column_value, &params);
    Ok(())
}

#[cfg(test)]
mod tests;
