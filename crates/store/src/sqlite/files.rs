//! Files attached to rows on SQLite (`fieldsync_files`).

use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteStore, table_info, time_at, to_sql_value};
use crate::files::{FileRecord, NewFile, check_new, slice_files_sql};
use crate::plan::{SlicePlan, quote_ident};
use crate::{Files, Result, StoreError};

const COLUMNS: &str = "id, tbl, pk, name, size, sha256, content_type, added_by, added_at";

fn record(r: &Row<'_>) -> rusqlite::Result<FileRecord> {
    Ok(FileRecord {
        id: r.get(0)?,
        table: r.get(1)?,
        key: r.get(2)?,
        name: r.get(3)?,
        size: r.get(4)?,
        sha256: r.get(5)?,
        content_type: r.get(6)?,
        added_by: r.get(7)?,
        added_at: time_at(r, 8, "added_at")?,
    })
}

impl Files for SqliteStore {
    fn file_attach(&self, file: &NewFile) -> Result<FileRecord> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (info, key) = check_new(file, table_info(&tx, &file.table)?)?;
        let exists: bool = tx.query_row(
            &format!(
                "SELECT count(*) FROM {} WHERE {} = ?1",
                quote_ident(&info.name),
                quote_ident(&info.primary_key)
            ),
            [to_sql_value(&key)],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(StoreError::NotFound(format!(
                "table `{}` has no row with key `{}`",
                file.table, file.key
            )));
        }
        let inserted = tx.execute(
            "INSERT INTO fieldsync_files (tbl, pk, name, size, sha256, content_type, added_by, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (tbl, pk, name) DO NOTHING",
            params![
                info.name,
                file.key,
                file.name,
                file.size,
                file.sha256,
                file.content_type,
                file.added_by,
                file.added_at.to_string()
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "row `{}` of table `{}` already has a file named `{}`",
                file.key, file.table, file.name
            )));
        }
        let id = tx.last_insert_rowid();
        let rec = tx.query_row(
            &format!("SELECT {COLUMNS} FROM fieldsync_files WHERE id = ?1"),
            [id],
            record,
        )?;
        tx.commit()?;
        Ok(rec)
    }

    fn file_detach(&self, id: i64) -> Result<FileRecord> {
        let conn = self.conn()?;
        let rec = conn
            .query_row(
                &format!("DELETE FROM fieldsync_files WHERE id = ?1 RETURNING {COLUMNS}"),
                [id],
                record,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("no attached file with id {id}")))?;
        Ok(rec)
    }

    fn file_list(&self) -> Result<Vec<FileRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM fieldsync_files ORDER BY id"
        ))?;
        let rows = stmt.query_map([], record)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn slice_files(
        &self,
        plan: &SlicePlan,
        tables: &[String],
        sha256: Option<&str>,
    ) -> Result<Vec<FileRecord>> {
        let queries = slice_files_sql(
            plan,
            tables,
            sha256,
            "fieldsync_files",
            &|k, ty, _| match ty {
                fieldsync_proto::ColumnType::Integer => format!("CAST({k} AS INTEGER)"),
                _ => k.to_string(),
            },
        )?;
        let mut conn = self.conn()?;
        // One snapshot for every table, as the slice itself is read.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
        let mut out = Vec::new();
        for (sql, binds) in queries {
            let binds: Vec<_> = binds.iter().map(to_sql_value).collect();
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(binds.iter()), record)?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }
}
