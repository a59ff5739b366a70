//! Applying a delta (the changes since the replica's cursor) to the installed replica
//! in place, in the transaction of a writer hold: apps that keep the replica open
//! keep working and see the new rows at their next read. The whole delta is one
//! transaction: a refused stream, a cancel or a crash leaves the replica as it was.

use fieldsync_proto::stream::{Event, SliceReader};
use fieldsync_proto::wire::ReplicaPosition;

use super::build::{stream_err, to_sql};
use super::*;

/// What a delta did to the replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// Rows the replica held that came again (changed, or sent again because a row of
    /// their parent chain changed).
    pub changed: u64,
    /// Rows new to the replica (inserted by the office, or entered the slice).
    pub entered: u64,
    /// Rows removed: named gone, or under a parent that went.
    pub left: u64,
    /// Rows and keys the stream carried, per lane.
    pub rows_per_lane: Vec<u64>,
}

/// Where the replica behind `conn` stands, for a download that may come as a delta;
/// `None` when it cannot take one (incomplete, retired, or made before replicas kept
/// their header).
pub fn position(conn: &Connection) -> Result<Option<ReplicaPosition>> {
    let get = |key: &str| record_value(conn, key);
    if get("complete")?.as_deref() != Some("1") || get("retired")?.as_deref() == Some("1") {
        return Ok(None);
    }
    let (Some(header), Some(cursor)) = (read_header(conn)?, get("cursor")?) else {
        return Ok(None);
    };
    let Ok(cursor) = cursor.parse() else {
        return Ok(None);
    };
    Ok(Some(ReplicaPosition {
        shape: header.shape_digest(),
        task: get("task")?.unwrap_or_default(),
        task_hash: get("task_hash")?.unwrap_or_default(),
        epoch: get("epoch")?.unwrap_or_default(),
        user: get("user")?.unwrap_or_default(),
        cursor,
    }))
}

/// Per table, the key below which the replica's blocks are used (`wire::KeysUsed`):
/// the highest next key of a block it used any of; none before any use.
pub fn keys_used(conn: &Connection) -> Result<Vec<fieldsync_proto::wire::KeysUsed>> {
    let has_keys: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'fieldsync_keys'",
        [],
        |r| r.get(0),
    )?;
    if !has_keys {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT tbl, max(next) FROM fieldsync_keys WHERE next > first GROUP BY tbl ORDER BY tbl",
    )?;
    let used = stmt.query_map([], |r| {
        Ok(fieldsync_proto::wire::KeysUsed {
            table: r.get(0)?,
            next: r.get(1)?,
        })
    })?;
    Ok(used.collect::<rusqlite::Result<_>>()?)
}

/// Refuses a delta that does not fit the replica it would be applied to: another
/// task, another shape of tables, another history.
fn check_fits(stored: &SliceHeader, delta: &SliceHeader) -> Result<()> {
    let fits = stored.task == delta.task
        && stored.epoch == delta.epoch
        && stored.shape_digest() == delta.shape_digest();
    if fits {
        Ok(())
    } else {
        Err(ClientError::Stream(
            "the server's changes do not fit this replica (another task, table shape or history)"
                .into(),
        ))
    }
}

/// Applies the rest of `reader`'s delta (its header already read) under `hold`, and
/// records the new cursor. On any error nothing of it stays.
pub fn apply_delta<R: Read>(
    hold: &WriterHold,
    reader: &mut SliceReader<R>,
    header: &SliceHeader,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
) -> Result<Applied> {
    let conn = hold.conn();
    refuse_unsent(conn, 0)?;
    let stored = read_header(conn)?.ok_or_else(|| {
        ClientError::Replica("the replica keeps no header; download it again".into())
    })?;
    check_fits(&stored, header)?;
    // The delta is a transaction of its own under the hold (what came before is
    // committed), so that a failure rolls back exactly the delta. Not a savepoint:
    // SQLite copies every page a savepoint changes into a sub-journal, a fifth of a
    // delta's time when its rows are spread over the table.
    hold.commit_and_hold()?;
    // The server prepared the changes: its header is here.
    progress(&Progress {
        phase: Phase::Prepare,
        done: 1,
        total: 1,
        unit: "steps",
        bytes: None,
    });
    let applied = apply_in_transaction(conn, reader, header, progress, cancel);
    if applied.is_err() {
        hold.rollback_and_hold()?;
    }
    applied
}

/// How a delta finds a row the replica holds: an update of its columns by key (held
/// if it changed a row), or, for a table of its key alone, a lookup of the key.
enum Held<'c> {
    Update(rusqlite::Statement<'c>),
    Lookup(rusqlite::Statement<'c>),
}

fn apply_in_transaction<R: Read>(
    conn: &Connection,
    reader: &mut SliceReader<R>,
    header: &SliceHeader,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
) -> Result<Applied> {
    // The journal's triggers stand aside: these are the server's rows, not edits.
    conn.execute(
        "INSERT INTO fieldsync_replica (key, value) VALUES ('applying', '1')
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [],
    )?;
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS fieldsync_gone (tbl TEXT NOT NULL, pk NOT NULL);
         DELETE FROM temp.fieldsync_gone;",
    )?;
    let n = header.tables.len();
    // Per table: an update of every column by key, an insert when it found no row
    // (the row entered the slice); one statement for a row the replica holds.
    let mut update = Vec::with_capacity(n);
    let mut insert = Vec::with_capacity(n);
    let mut delete = Vec::with_capacity(n);
    for t in &header.tables {
        let (table, pk) = (quote(&t.name), quote(&t.primary_key));
        let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
        // Parameter `i + 1` is column `i`'s value; the key is the first column.
        let sets: Vec<String> = (1..cols.len())
            .map(|i| format!("{} = ?{}", cols[i], i + 1))
            .collect();
        update.push(if sets.is_empty() {
            // A table of its key alone: nothing to update; it is held or inserted.
            Held::Lookup(conn.prepare(&format!("SELECT 1 FROM {table} WHERE {pk} = ?1"))?)
        } else {
            Held::Update(conn.prepare(&format!(
                "UPDATE {table} SET {} WHERE {pk} = ?1",
                sets.join(", ")
            ))?)
        });
        insert.push(conn.prepare(&format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            cols.join(", "),
            (1..=cols.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?);
        delete.push(conn.prepare(&format!("DELETE FROM {table} WHERE {pk} = ?1"))?);
    }
    let mut gone = conn.prepare("INSERT INTO temp.fieldsync_gone (tbl, pk) VALUES (?1, ?2)")?;
    let mut applied = Applied::default();
    let mut done = 0u64;
    let mut last_report = Instant::now();
    let trailer = loop {
        if cancel.is_cancelled() {
            return Err(ClientError::Cancelled);
        }
        match reader.next_event().map_err(stream_err)? {
            Some(Event::Rows(mut rows)) => {
                let lane = rows.table();
                let mut values = Vec::new();
                while rows.next_row(&mut values).map_err(stream_err)? {
                    let key = rusqlite::types::ToSqlOutput::Borrowed(to_sql(values[0]));
                    if lane < n {
                        let stored = |stmt: &mut rusqlite::Statement<'_>| -> Result<usize> {
                            for (col, v) in values.iter().enumerate() {
                                let v = rusqlite::types::ToSqlOutput::Borrowed(to_sql(*v));
                                stmt.raw_bind_parameter(col + 1, v)?;
                            }
                            stmt.raw_execute().map_err(|e| {
                                ClientError::Stream(format!(
                                    "row of table `{}` cannot be stored: {e}",
                                    header.tables[lane].name
                                ))
                            })
                        };
                        let held = match &mut update[lane] {
                            Held::Update(stmt) => stored(stmt)? > 0,
                            Held::Lookup(stmt) => stmt.exists([&key])?,
                        };
                        if held {
                            applied.changed += 1;
                        } else {
                            stored(&mut insert[lane])?;
                            applied.entered += 1;
                        }
                    } else if delete[lane - n].execute([&key])? > 0 {
                        applied.left += 1;
                        gone.execute(rusqlite::params![header.tables[lane - n].name, key])?;
                    }
                }
                done += rows.len();
                if last_report.elapsed() >= Duration::from_millis(100) {
                    last_report = Instant::now();
                    progress(&Progress {
                        phase: Phase::Transfer,
                        done,
                        total: done,
                        unit: "rows",
                        bytes: None,
                    });
                }
            }
            Some(Event::Trailer(t)) => break t,
            Some(Event::Header(_)) | None => {
                return Err(ClientError::Stream("the stream is out of order".into()));
            }
        }
    };
    applied.left += remove_orphans(conn, header)?;
    applied.rows_per_lane = trailer.rows.clone();
    // Every row now stands as of the new cursor: the bases of rows the device's own
    // sends wrote, and the rows those sends moved out, are behind it.
    let stored = SliceHeader {
        since: None,
        full_reason: None,
        ..header.clone()
    };
    let header_json = serde_json::to_string(&stored).expect("a header serializes");
    conn.execute_batch("DELETE FROM fieldsync_base; DELETE FROM fieldsync_left;")?;
    conn.execute_batch(crate::triggers::KEY_TABLES)?;
    super::build::keep_key_blocks(conn, header)?;
    let mut put = conn.prepare(
        "INSERT INTO fieldsync_replica (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?;
    let assigned = serde_json::to_string(&header.assigned).expect("names serialize");
    for (k, v) in [
        ("cursor", trailer.cursor.to_string().as_str()),
        ("header", &header_json),
        ("user", &header.user),
        ("assigned", &assigned),
    ] {
        put.execute([k, v])?;
    }
    conn.execute("DELETE FROM fieldsync_replica WHERE key = 'applying'", [])?;
    progress(&Progress {
        phase: Phase::Transfer,
        done,
        total: done,
        unit: "rows",
        bytes: None,
    });
    Ok(applied)
}

/// Removes the rows whose parent left the replica (a row is in the slice only under a
/// parent in it), down the parent chains; returns how many.
fn remove_orphans(conn: &Connection, header: &SliceHeader) -> Result<u64> {
    // Parents before their children: by the length of their parent chain.
    let depth = |t: &TableSchema| {
        let mut d = 0;
        let mut cur = t;
        while let Some(p) = &cur.parent {
            match header.tables.iter().find(|x| x.name == p.table) {
                Some(parent) if d < header.tables.len() => {
                    d += 1;
                    cur = parent;
                }
                _ => break,
            }
        }
        d
    };
    let mut children: Vec<&TableSchema> = header
        .tables
        .iter()
        .filter(|t| t.parent.is_some())
        .collect();
    children.sort_by_key(|t| depth(t));
    let mut removed = 0;
    for t in children {
        let p = t.parent.as_ref().expect("filtered on parent");
        let (table, pk, key) = (quote(&t.name), quote(&t.primary_key), quote(&p.key));
        let under_gone = format!("{key} IN (SELECT pk FROM temp.fieldsync_gone WHERE tbl = ?1)");
        conn.execute(
            &format!("INSERT INTO temp.fieldsync_gone (tbl, pk) SELECT ?2, {pk} FROM {table} WHERE {under_gone}"),
            [&p.table, &t.name],
        )?;
        removed += conn.execute(
            &format!("DELETE FROM {table} WHERE {under_gone}"),
            [&p.table],
        )? as u64;
    }
    Ok(removed)
}
