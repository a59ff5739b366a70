//! Building a new generation from a download's slice stream: `proto::stream`'s reader
//! checks the stream (order, header, counts, checksums); this creates the tables and
//! triggers, writes the rows into SQLite, and makes the file durable.

use fieldsync_proto::stream::{Event, SliceReader, StreamError};

use super::*;

/// A new generation, complete and durable, not yet installed.
pub struct Built {
    pub path: PathBuf,
    pub header: SliceHeader,
    pub rows_per_table: Vec<u64>,
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
                // An integer key the device's blocks give (`triggers::key_triggers`): not
                // SQLite's rowid, whose own numbering would show a keyless insert to the
                // triggers as key -1.
                if triggers::takes_block_keys(t) {
                    def = format!("{} INT PRIMARY KEY NOT NULL", quote(&c.name));
                }
            }
            def
        })
        .collect();
    format!("CREATE TABLE {} ({})", quote(&t.name), cols.join(", "))
}

/// The bulk load's SQLite page cache, in KiB: the device's memory target (48 MB) bounds
/// it. Beyond it SQLite writes pages out during the load instead of at the commit (no
/// journal, so no extra write). Rows keyed in order (integer keys) lose nothing: 64 MiB
/// took a 1,000,000-row download to 84 MB and was no faster; 16 MiB keeps it near 30 MB.
/// Keys that arrive in random order (random text keys) reread and rewrite index pages
/// the cache no longer holds: ~50% slower at 1,000,000 rows (BENCHMARKS.md).
const LOAD_CACHE_KIB: u32 = 16 * 1024;

/// The page cache while the indexes are built: `CREATE INDEX`'s sorter keeps up to the
/// cache's size of keys in memory (more goes to temporary files), on top of the cache.
const INDEX_CACHE_KIB: u32 = 4 * 1024;

/// Records the key blocks a download brought (`SliceHeader::key_blocks`): new ones as
/// they are, known ones with the later of the two next keys (the server knows the
/// keys sent, the replica those used since).
pub(super) fn keep_key_blocks(conn: &Connection, header: &SliceHeader) -> Result<()> {
    let mut put = conn.prepare(
        "INSERT INTO fieldsync_keys (tbl, first, last, next) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (tbl, first) DO UPDATE SET last = excluded.last, next = max(next, excluded.next)",
    )?;
    for b in &header.key_blocks {
        put.execute(rusqlite::params![b.table, b.first, b.last, b.next])?;
    }
    Ok(())
}

/// Counts the compressed bytes as they arrive, in a counter the progress reports
/// read while the stream is being taken.
pub struct CountingReader<R> {
    pub inner: R,
    pub n_bytes: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n_bytes.set(self.n_bytes.get() + n as u64);
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

/// A refused stream: the server's error frame is its error, anything else a damaged
/// or cut stream (retried).
pub(super) fn stream_err(e: StreamError) -> ClientError {
    match e {
        StreamError::Server(e) => ClientError::Server {
            code: e.code,
            message: e.message,
        },
        other => ClientError::Stream(other.to_string()),
    }
}

/// Opens a download's stream and reads its header: the whole slice or a delta.
pub fn open_stream<R: Read>(stream: R) -> Result<(SliceReader<R>, SliceHeader)> {
    let mut reader = SliceReader::new(stream).map_err(stream_err)?;
    match reader.next_event().map_err(stream_err)? {
        Some(Event::Header(h)) => Ok((reader, h)),
        _ => Err(ClientError::Stream(
            "the stream does not start with a header".into(),
        )),
    }
}

/// Streams a whole slice (its header already read) into a new generation file. On
/// any error the file is removed and the installed replica is untouched.
pub fn build<R: Read>(
    dir: &DeviceDir,
    reader: &mut SliceReader<R>,
    header: SliceHeader,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
) -> Result<Built> {
    let path = dir
        .root
        .join(format!("replica-{}.sqlite", crate::random_hex(8)));
    let result = build_into(&path, dir, reader, header, progress, cancel);
    if result.is_err() {
        remove_generation(&path);
    }
    result
}

pub(super) fn build_into<R: Read>(
    path: &Path,
    dir: &DeviceDir,
    reader: &mut SliceReader<R>,
    header: SliceHeader,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
) -> Result<Built> {
    if header.since.is_some() {
        return Err(ClientError::Stream(
            "a delta where the whole slice was expected".into(),
        ));
    }
    progress(&Progress {
        phase: Phase::Prepare,
        done: 1,
        total: 1,
        unit: "steps",
        bytes: None,
    });
    let total_rows: u64 = header.tables.iter().map(|t| t.rows_estimate).sum();

    let mut conn = Connection::open(path)?;
    // A generation is invisible until installed and removed if incomplete, so the bulk
    // load needs no journal; durability comes from the fsync before install.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -{LOAD_CACHE_KIB};"
    ))?;
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TABLE fieldsync_replica (key TEXT PRIMARY KEY, value)")?;
    tx.execute_batch(triggers::REPLICA_TABLES)?;
    tx.execute_batch(triggers::KEY_TABLES)?;
    keep_key_blocks(&tx, &header)?;
    for t in &header.tables {
        tx.execute_batch(&create_table_sql(t))?;
    }
    // The reader holds the stream to its order, counts and checksum; this writes rows.
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
            match reader.next_event().map_err(stream_err)? {
                Some(Event::Rows(mut rows)) => {
                    let idx = rows.table();
                    let Some(stmt) = stmts.get_mut(idx) else {
                        return Err(ClientError::Stream(format!(
                            "row batch for unknown table {idx}"
                        )));
                    };
                    let mut values = Vec::with_capacity(header.tables[idx].columns.len());
                    while rows.next_row(&mut values).map_err(stream_err)? {
                        for (col, v) in values.iter().enumerate() {
                            stmt.raw_bind_parameter(
                                col + 1,
                                rusqlite::types::ToSqlOutput::Borrowed(to_sql(*v)),
                            )?;
                        }
                        stmt.raw_execute().map_err(|e| {
                            ClientError::Stream(format!(
                                "row of table `{}` cannot be stored: {e}",
                                header.tables[idx].name
                            ))
                        })?;
                    }
                    done += rows.len();
                    if last_report.elapsed() >= Duration::from_millis(100) {
                        last_report = Instant::now();
                        progress(&Progress {
                            phase: Phase::Transfer,
                            done,
                            total: total_rows.max(done),
                            unit: "rows",
                            bytes: None,
                        });
                    }
                }
                Some(Event::Trailer(t)) => {
                    progress(&Progress {
                        phase: Phase::Transfer,
                        done,
                        total: total_rows.max(done),
                        unit: "rows",
                        bytes: None,
                    });
                    break t;
                }
                // The reader refuses both before they show; kept an error all the same.
                Some(Event::Header(_)) | None => {
                    return Err(ClientError::Stream("the stream is out of order".into()));
                }
            }
        }
    };
    let rows_per_table = trailer.rows.clone();
    const STORE_STEPS: u64 = 3;
    progress(&Progress {
        phase: Phase::Store,
        done: 0,
        total: STORE_STEPS,
        unit: "steps",
        bytes: None,
    });
    // Indexes after the bulk load: the parent keys apps join on (and a delta removes
    // the rows under a parent that went by). Each one's sort holds up to the page
    // cache's size in memory beside the cache, so the cache shrinks first.
    tx.execute_batch(&format!("PRAGMA cache_size = -{INDEX_CACHE_KIB};"))?;
    for t in &header.tables {
        let parent_key = t.parent.as_ref().map(|p| p.key.as_str());
        for c in t
            .columns
            .iter()
            .skip(1)
            .filter(|c| c.name.ends_with("_id") || Some(c.name.as_str()) == parent_key)
        {
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
        let assigned = serde_json::to_string(&header.assigned).expect("names serialize");
        for (k, v) in [
            ("header", header_json.as_str()),
            ("assigned", &assigned),
            ("task", header.task.as_str()),
            ("task_hash", &header.task_hash),
            ("epoch", &header.epoch),
            ("cursor", &cursor),
            ("user", &header.user),
            ("device", &header.device),
            ("login", &header.user),
            ("per_user", if header.depends_on_user() { "1" } else { "0" }),
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
        bytes: None,
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
        bytes: None,
    });
    Ok(Built {
        path: path.to_path_buf(),
        header,
        rows_per_table,
    })
}
