//! Building a new generation from a download's slice stream: checks the header,
//! creates the tables and triggers, writes the rows, and makes it durable.

use super::*;

/// A new generation, complete and durable, not yet installed.
pub struct Built {
    pub path: PathBuf,
    pub header: SliceHeader,
    pub rows_per_table: Vec<u64>,
}

pub(super) fn check_header(h: &SliceHeader) -> Result<()> {
    let bad = |m: String| Err(ClientError::Stream(format!("bad slice header: {m}")));
    if h.tables.is_empty() {
        return bad("no tables".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for t in &h.tables {
        let lower = t.name.to_ascii_lowercase();
        if t.name.is_empty()
            || lower.starts_with("fieldsync_")
            || lower.starts_with("sqlite_")
            || !names.insert(lower)
        {
            return bad(format!("table name `{}`", t.name.escape_debug()));
        }
        let mut cols = std::collections::BTreeSet::new();
        if t.columns.is_empty() || t.columns[0].name != t.primary_key {
            return bad(format!(
                "table `{}`: the primary key must come first",
                t.name
            ));
        }
        for c in &t.columns {
            if c.name.is_empty() || !cols.insert(c.name.to_ascii_lowercase()) {
                return bad(format!(
                    "table `{}`: column `{}`",
                    t.name,
                    c.name.escape_debug()
                ));
            }
        }
    }
    Ok(())
}

/// Whether the slice depends on the user it was cut for: a table's filter uses
/// `$user` (a child table follows its parent's rows, so its parent's filter counts
/// too, and every table is in the header). An unreadable filter counts as dependent.
pub(super) fn depends_on_user(h: &SliceHeader) -> bool {
    h.tables.iter().any(|t| {
        t.filter.as_deref().is_some_and(|f| {
            fieldsync_proto::filter::parse(f)
                .map_or(true, |e| e.uses_param(fieldsync_proto::filter::Param::User))
        })
    })
}

pub(super) fn create_table_sql(t: &TableSchema) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut def = format!("{} {}", quote(&c.name), c.column_type.sql_name());
            if i == 0 {
                def.push_str(" PRIMARY KEY NOT NULL");
                // A plain INSERT without a key works on tables that accept inserts.
                if t.write.contains(&WriteOp::Insert) && c.column_type == ColumnType::Text {
                    def.push_str(&format!(" DEFAULT {}", triggers::UUID_SQL));
                }
            }
            def
        })
        .collect();
    format!("CREATE TABLE {} ({})", quote(&t.name), cols.join(", "))
}

/// Counts the compressed bytes as they arrive.
pub struct CountingReader<R> {
    pub inner: R,
    pub n_bytes: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n_bytes += n as u64;
        Ok(n)
    }
}

pub(super) fn to_sql(v: ValueRef<'_>) -> rusqlite::types::ValueRef<'_> {
    use rusqlite::types::ValueRef as R;
    match v {
        ValueRef::Null => R::Null,
        ValueRef::Integer(i) => R::Integer(i),
        ValueRef::Real(r) => R::Real(r),
        ValueRef::Text(t) => R::Text(t.as_bytes()),
        ValueRef::Blob(b) => R::Blob(b),
    }
}

/// Streams a slice into a new generation file. On any error the file is removed and
/// the installed replica is untouched.
pub fn build<R: Read>(
    dir: &DeviceDir,
    stream: &mut CountingReader<R>,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
) -> Result<Built> {
    let path = dir
        .root
        .join(format!("replica-{}.sqlite", crate::random_hex(8)));
    let result = build_into(&path, dir, stream, progress, cancel);
    if result.is_err() {
        remove_generation(&path);
    }
    result
}

pub(super) fn build_into<R: Read>(
    path: &Path,
    dir: &DeviceDir,
    stream: &mut CountingReader<R>,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
) -> Result<Built> {
    let decoder =
        zstd::stream::read::Decoder::new(stream).map_err(|e| ClientError::Stream(e.to_string()))?;
    let mut frames = FrameReader::new(decoder);
    let stream_err = |e: fieldsync_proto::frame::FrameError| ClientError::Stream(e.to_string());
    let header = match frames.next_frame().map_err(stream_err)? {
        Some(Frame::Header(h)) => h,
        Some(Frame::Error(e)) => {
            return Err(ClientError::Server {
                code: e.code,
                message: e.message,
            });
        }
        _ => {
            return Err(ClientError::Stream(
                "the stream does not start with a header".into(),
            ));
        }
    };
    check_header(&header)?;
    progress(&Progress {
        phase: Phase::Prepare,
        done: 1,
        total: 1,
        unit: "steps",
    });
    let total_rows: u64 = header.tables.iter().map(|t| t.rows_estimate).sum();

    let mut conn = Connection::open(path)?;
    // A generation is invisible until installed and removed if incomplete, so the bulk
    // load needs no journal; durability comes from the fsync before install.
    conn.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -65536;",
    )?;
    let mut rows_per_table = vec![0u64; header.tables.len()];
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TABLE fieldsync_replica (key TEXT PRIMARY KEY, value)")?;
    tx.execute_batch(triggers::REPLICA_TABLES)?;
    for t in &header.tables {
        tx.execute_batch(&create_table_sql(t))?;
    }
    let trailer = {
        let mut stmts = Vec::with_capacity(header.tables.len());
        for t in &header.tables {
            let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
            let marks = vec!["?"; cols.len()].join(", ");
            stmts.push(tx.prepare(&format!(
                "INSERT INTO {} ({}) VALUES ({marks})",
                quote(&t.name),
                cols.join(", ")
            ))?);
        }
        let mut done = 0u64;
        let mut last_report = Instant::now();
        loop {
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
            match frames.next_frame().map_err(stream_err)? {
                Some(Frame::Rows(payload)) => {
                    let mut batch = RowBatch::parse(&payload).map_err(stream_err)?;
                    let idx = batch.table_idx;
                    let Some(stmt) = stmts.get_mut(idx) else {
                        return Err(ClientError::Stream(format!(
                            "row batch for unknown table {idx}"
                        )));
                    };
                    let width = header.tables[idx].columns.len();
                    for _ in 0..batch.n_rows {
                        for col in 0..width {
                            let v = batch.value().map_err(stream_err)?;
                            stmt.raw_bind_parameter(
                                col + 1,
                                rusqlite::types::ToSqlOutput::Borrowed(to_sql(v)),
                            )?;
                        }
                        stmt.raw_execute().map_err(|e| {
                            ClientError::Stream(format!(
                                "row of table `{}` cannot be stored: {e}",
                                header.tables[idx].name
                            ))
                        })?;
                    }
                    if !batch.is_exhausted() {
                        return Err(ClientError::Stream("row batch has trailing bytes".into()));
                    }
                    rows_per_table[idx] += batch.n_rows;
                    done += batch.n_rows;
                    if last_report.elapsed() >= Duration::from_millis(100) {
                        last_report = Instant::now();
                        progress(&Progress {
                            phase: Phase::Transfer,
                            done,
                            total: total_rows.max(done),
                            unit: "rows",
                        });
                    }
                }
                Some(Frame::Trailer(t)) => {
                    progress(&Progress {
                        phase: Phase::Transfer,
                        done,
                        total: total_rows.max(done),
                        unit: "rows",
                    });
                    break t;
                }
                Some(Frame::Error(e)) => {
                    return Err(ClientError::Server {
                        code: e.code,
                        message: e.message,
                    });
                }
                Some(Frame::Header(_)) => {
                    return Err(ClientError::Stream("a second header in the stream".into()));
                }
                None => {
                    return Err(ClientError::Stream(
                        "the stream ended before its trailer".into(),
                    ));
                }
            }
        }
    };
    if trailer.rows != rows_per_table {
        return Err(ClientError::Stream(format!(
            "row counts differ from the trailer (got {rows_per_table:?}, trailer {:?})",
            trailer.rows
        )));
    }
    const STORE_STEPS: u64 = 3;
    progress(&Progress {
        phase: Phase::Store,
        done: 0,
        total: STORE_STEPS,
        unit: "steps",
    });
    // Indexes after the bulk load: the parent keys apps join on.
    for t in &header.tables {
        for c in t.columns.iter().skip(1).filter(|c| c.name.ends_with("_id")) {
            tx.execute_batch(&format!(
                "CREATE INDEX {} ON {} ({})",
                quote(&format!("fieldsync_idx_{}_{}", t.name, c.name)),
                quote(&t.name),
                quote(&c.name)
            ))?;
        }
        tx.execute_batch(&triggers::table_triggers(&header, t, &dir.replica_path()))?;
    }
    {
        let mut put = tx.prepare("INSERT INTO fieldsync_replica (key, value) VALUES (?1, ?2)")?;
        let cursor = trailer.cursor.to_string();
        // The header, for what the device judges later (compaction, rows that left).
        let header_json = serde_json::to_string(&header).expect("a header serializes");
        for (k, v) in [
            ("header", header_json.as_str()),
            ("task", header.task.as_str()),
            ("task_hash", &header.task_hash),
            ("epoch", &header.epoch),
            ("cursor", &cursor),
            ("user", &header.user),
            ("device", &header.device),
            ("login", &header.user),
            ("per_user", if depends_on_user(&header) { "1" } else { "0" }),
            ("retired", "0"),
            ("complete", "1"),
        ] {
            put.execute([k, v])?;
        }
    }
    tx.commit()?;
    progress(&Progress {
        phase: Phase::Store,
        done: 1,
        total: STORE_STEPS,
        unit: "steps",
    });
    if cancel.is_cancelled() {
        return Err(ClientError::Cancelled);
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        return Err(ClientError::Replica(format!(
            "cannot switch the replica to WAL (got {mode})"
        )));
    }
    conn.close().map_err(|(_, e)| ClientError::from(e))?;
    fs::File::open(path)?.sync_all()?;
    sync_dir(&dir.root)?;
    progress(&Progress {
        phase: Phase::Store,
        done: 2,
        total: STORE_STEPS,
        unit: "steps",
    });
    Ok(Built {
        path: path.to_path_buf(),
        header,
        rows_per_table,
    })
}
