//! Files attached to rows on PostgreSQL (`fieldsync.files`).

use postgres::{IsolationLevel, Row};

use super::types::Bind;
use super::{PgStore, in_tx, table_info, time_at};
use crate::files::{FileRecord, NewFile, check_new, slice_files_sql};
use crate::plan::{SlicePlan, quote_ident};
use crate::{Files, Result, StoreError};

const COLUMNS: &str = "id, tbl, pk, name, size, sha256, content_type, added_by, added_at";

fn record(r: &Row) -> Result<FileRecord> {
    Ok(FileRecord {
        id: r.try_get(0)?,
        table: r.try_get(1)?,
        key: r.try_get(2)?,
        name: r.try_get(3)?,
        size: r.try_get::<_, i64>(4)?.max(0) as u64,
        sha256: r.try_get(5)?,
        content_type: r.try_get(6)?,
        added_by: r.try_get(7)?,
        added_at: time_at(r, 8, "added_at")?,
    })
}

impl Files for PgStore {
    fn file_attach(&self, file: &NewFile) -> Result<FileRecord> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let (info, _) = check_new(file, table_info(tx, &file.table)?)?;
            let pk = info
                .column(&info.primary_key)
                .expect("primary key is a column");
            // The key's text cast to the column's type, so the primary key's index
            // finds the row; a key the type cannot hold is no row.
            let found = tx.query_opt(
                &format!(
                    "SELECT 1 FROM {} WHERE {}::text = $1 AND {} = $1::text::{}",
                    quote_ident(&info.name),
                    quote_ident(&info.primary_key),
                    quote_ident(&info.primary_key),
                    pk.declared_type
                ),
                &[&file.key],
            );
            let exists = match found {
                Ok(row) => row.is_some(),
                Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => false,
                Err(e) => return Err(e.into()),
            };
            if !exists {
                return Err(StoreError::NotFound(format!(
                    "table `{}` has no row with key `{}`",
                    file.table, file.key
                )));
            }
            let row = tx.query_opt(
                &format!(
                    "INSERT INTO fieldsync.files (tbl, pk, name, size, sha256, content_type, added_by, added_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tbl, pk, name) DO NOTHING
                     RETURNING {COLUMNS}"
                ),
                &[
                    &info.name,
                    &file.key,
                    &file.name,
                    &(file.size as i64),
                    &file.sha256,
                    &file.content_type,
                    &file.added_by,
                    &file.added_at.to_string(),
                ],
            )?;
            match row {
                Some(r) => record(&r),
                None => Err(StoreError::AlreadyExists(format!(
                    "row `{}` of table `{}` already has a file named `{}`",
                    file.key, file.table, file.name
                ))),
            }
        })
    }

    fn file_detach(&self, id: i64) -> Result<FileRecord> {
        let row = self.conn()?.query_opt(
            &format!("DELETE FROM fieldsync.files WHERE id = $1 RETURNING {COLUMNS}"),
            &[&id],
        )?;
        match row {
            Some(r) => record(&r),
            None => Err(StoreError::NotFound(format!(
                "no attached file with id {id}"
            ))),
        }
    }

    fn file_list(&self) -> Result<Vec<FileRecord>> {
        self.conn()?
            .query(
                &format!("SELECT {COLUMNS} FROM fieldsync.files ORDER BY id"),
                &[],
            )?
            .iter()
            .map(record)
            .collect()
    }

    fn slice_files(
        &self,
        plan: &SlicePlan,
        tables: &[String],
        sha256: Option<&str>,
    ) -> Result<Vec<FileRecord>> {
        // The key's text cast to the primary key's declared type (attachments are
        // checked at attach to name a row, so the cast holds).
        let queries = slice_files_sql(
            plan,
            tables,
            sha256,
            "fieldsync.files",
            &|k, _, declared| format!("{k}::{declared}"),
        )?;
        let mut c = self.conn()?;
        // One snapshot for every table, as the slice itself is read.
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let mut out = Vec::new();
        for (sql, binds) in &queries {
            let binds: Vec<Bind<'_>> = binds.iter().map(Bind).collect();
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                binds.iter().map(|b| b as _).collect();
            for r in tx.query(sql, &refs)? {
                out.push(record(&r)?);
            }
        }
        tx.commit()?;
        Ok(out)
    }
}
