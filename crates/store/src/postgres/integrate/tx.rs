//! The PostgreSQL [`UploadTx`]: the reads, locks, checks and logs the engine-neutral
//! rules of `crate::integrate` ask for, inside the upload's transaction.

use super::*;

/// The reads of the checks before any lock, outside a transaction.
pub(super) struct Reads<'c>(pub(super) &'c mut Client);

impl Lookups for Reads<'_> {
    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>, StoreError> {
        table_info(self.0, table)
    }

    fn user_enabled(&mut self, user: &str) -> Result<bool, StoreError> {
        let rows = self.0.query(USER_ENABLED, &[&user])?;
        Ok(rows.first().is_some_and(|r| !r.get::<_, bool>(0)))
    }

    fn user_logged_in(&mut self, device: &str, user: &str) -> Result<bool, StoreError> {
        Ok(!self.0.query(USER_LOGGED_IN, &[&device, &user])?.is_empty())
    }

    fn recorded_now(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
        let rows = self.0.query(RECORDED, &[&upload_id])?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

pub(super) const USER_ENABLED: &str = "SELECT disabled FROM fieldsync.users WHERE name = $1";
pub(super) const USER_LOGGED_IN: &str =
    "SELECT 1 FROM fieldsync.device_users WHERE device = $1 AND user_name = $2";
pub(super) const RECORDED: &str =
    "SELECT device, outcome FROM fieldsync.uploads WHERE upload_id = $1";

impl Lookups for PgUpload<'_, '_> {
    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>, StoreError> {
        self.info(table)
    }

    fn user_enabled(&mut self, user: &str) -> Result<bool, StoreError> {
        let rows = self.query(USER_ENABLED, &[&user])?;
        Ok(rows.first().is_some_and(|r| !r.get::<_, bool>(0)))
    }

    fn user_logged_in(&mut self, device: &str, user: &str) -> Result<bool, StoreError> {
        Ok(!self.query(USER_LOGGED_IN, &[&device, &user])?.is_empty())
    }

    fn recorded_now(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
        let rows = self.query(RECORDED, &[&upload_id])?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

impl UploadTx for PgUpload<'_, '_> {
    fn recorded(&mut self, upload_id: &str) -> Result<Option<(String, String)>, StoreError> {
        // The same upload sent to two servers at once: the second waits for the
        // first's commit, then finds its record.
        self.query(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 7366836482673))",
            &[&upload_id],
        )?;
        self.recorded_now(upload_id)
    }

    fn base_kind(&mut self, device: &str, base: i64) -> Result<Option<BaseKind>, StoreError> {
        // This upload's own base, made a moment ago: no device was ever handed it.
        if self.new_base == Some(base) {
            return Ok(None);
        }
        // A base without a device was handed out before bases recorded theirs.
        let rows = self.query(
            "SELECT xid IS NOT NULL, device IS NULL OR device = $2 FROM fieldsync.bases WHERE id = $1",
            &[&base, &device],
        )?;
        if let Some(r) = rows.first() {
            return Ok(Some(match (r.get::<_, bool>(0), r.get::<_, bool>(1)) {
                (true, true) => BaseKind::Upload,
                (false, true) => BaseKind::Download,
                // Another device's: bases are recorded with their download, so this
                // one was never handed to this device.
                (_, false) => return Ok(None),
            }));
        }
        // Past every base there is: never handed out. Otherwise (bases emptied after a
        // restore) compared by value.
        let past = self.query("SELECT $1 > max(id) FROM fieldsync.bases", &[&base])?;
        Ok(
            match past.first().and_then(|r| r.get::<_, Option<bool>>(0)) {
                Some(true) => None,
                _ => Some(BaseKind::Unknown),
            },
        )
    }

    fn pruned_through(&mut self) -> Result<Option<i64>, StoreError> {
        let rows = self.query(
            "SELECT value::int8 FROM fieldsync.meta WHERE key = 'pruned_through'",
            &[],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn stored_in_slice(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        key: &Value,
    ) -> Result<bool, StoreError> {
        self.flush()?;
        let infos = self.task_infos(def)?;
        let (cond, binds) =
            plan::row_condition(def, t.task_table, params, &types::PgDialect, &|name| {
                Ok(infos.get(name).cloned().flatten())
            })?;
        let table = quote_ident(&t.info.name);
        let declared = declared_of(&t.info, &t.info.primary_key);
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE {table}.{pk} = {key_param} AND ({cond}))",
            pk = quote_ident(&t.info.primary_key),
            key_param = types::write_param(binds.len() + 1, declared),
        );
        let typed_key = types::write_value(key, declared);
        let bound: Vec<Bind<'_>> = binds.iter().map(Bind).collect();
        let mut all: Params_<'_> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        all.push(&typed_key);
        let rows = self.query(&sql, &all)?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    fn canonical(&mut self, info: &TableInfo, row: &mut Row) -> Result<(), StoreError> {
        let cols: Vec<(String, &str)> = row
            .iter()
            .filter(|(_, v)| matches!(v, Value::Text(_) | Value::Integer(_) | Value::Real(_)))
            .map(|(c, _)| (c.clone(), declared_of(info, c)))
            .filter(|(_, d)| types::has_canonical_text(d))
            .collect();
        if cols.is_empty() {
            return Ok(());
        }
        let exprs: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, (_, d))| types::canonical_expr(i + 1, d))
            .collect();
        let sql = format!("SELECT {}", exprs.join(", "));
        let values: Vec<String> = cols.iter().map(|(c, _)| types::text_of(&row[c])).collect();
        let refs: Params_<'_> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        // A value the column cannot take fails the cast: it stays as it is, and the
        // transaction goes on.
        self.tx
            .batch_execute("SAVEPOINT fieldsync_canonical")
            .map_err(|e| self.note(e))?;
        let read = match self.statement(&sql) {
            Ok(s) => self.tx.query_one(&s, &refs),
            Err(e) => Err(e),
        };
        match read {
            Ok(r) => {
                self.tx
                    .batch_execute("RELEASE SAVEPOINT fieldsync_canonical")
                    .map_err(|e| self.note(e))?;
                for (i, (c, _)) in cols.iter().enumerate() {
                    if let Some(text) = r.get::<_, Option<String>>(i) {
                        row.insert(c.clone(), Value::Text(text));
                    }
                }
            }
            Err(e) if refused(&e) => {
                self.tx
                    .batch_execute("ROLLBACK TO SAVEPOINT fieldsync_canonical")
                    .map_err(|e| self.note(e))?;
            }
            Err(e) => return Err(self.note(e)),
        }
        Ok(())
    }

    fn read_ahead(&mut self, entries: &[UploadEntry]) {
        let mut planned = Vec::with_capacity(entries.len());
        // Each table's key type, looked up once (not a copy of its description per entry).
        let mut key_types: HashMap<&str, Option<String>> = HashMap::new();
        for e in entries {
            if !key_types.contains_key(e.table.as_str()) {
                let key_type = match self.info(&e.table) {
                    Ok(Some(info)) => Some(declared_of(&info, &info.primary_key).to_string()),
                    _ => None,
                };
                key_types.insert(&e.table, key_type);
            }
            let fits = key_types[e.table.as_str()]
                .as_deref()
                .is_some_and(|declared| types::key_fits(&e.key, declared));
            planned.push(fits.then(|| {
                (
                    e.table.clone(),
                    e.user.clone(),
                    types::text_of(&e.key),
                    e.base_version,
                )
            }));
        }
        self.planned = planned;
    }

    fn current(
        &mut self,
        def: &TaskDef,
        t: &TableCtx<'_>,
        params: &Params,
        _entry: usize,
        key: &Value,
        base: Option<i64>,
    ) -> Result<Option<Current>, StoreError> {
        let index = self.asked;
        self.asked += 1;
        let text_key = types::text_of(key);
        if index >= self.next && index < self.planned.len() {
            self.read_window(def, &params.device, index)?;
        }
        let row_id = (t.info.name.clone(), text_key.clone());
        if let Some(read) = self.ahead.get_mut(&row_id)
            && let Some(at) = read
                .iter()
                .position(|(user, b, _)| *user == params.user && *b == base)
        {
            return Ok(read.swap_remove(at).2);
        }
        let declared = declared_of(&t.info, &t.info.primary_key);
        let Some(typed_key) = types::key_param(key, declared) else {
            return Ok(None);
        };
        let (lock_sql, sql, binds) = {
            let q = self.query_for(def, t, params)?;
            (q.lock_sql.clone(), q.sql.clone(), q.binds.clone())
        };
        self.flush()?;
        // The table's row first, as every writer locks it (then its tracking row):
        // one order, no deadlock with a single-row office transaction.
        if !self.locked.contains_key(&row_id) {
            self.query(&lock_sql, &[&typed_key])?;
        }
        let bound: Vec<Bind<'_>> = binds.iter().map(Bind).collect();
        let mut all: Params_<'_> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        all.push(&t.info.name);
        all.push(&text_key);
        all.push(&typed_key);
        all.push(&base);
        let rows = self.query(&sql, &all)?;
        Ok(rows.first().map(|r| current_of(t, r, 0)))
    }

    fn parent(
        &mut self,
        def: &TaskDef,
        table: &str,
        params: &Params,
        key: &Value,
        base: Option<i64>,
    ) -> Result<(bool, bool), StoreError> {
        let id = parent_id(table, &params.user, key, base);
        if let Some(known) = self.parents.get(&id) {
            return Ok(*known);
        }
        self.parent_query(def, table, params)?;
        let known = self.ask_parent(table, params, key, base)?;
        self.parents.insert(id, known);
        Ok(known)
    }

    fn forget_parents(&mut self) {
        self.parents.clear();
        // Slice membership and parent versions of rows read ahead may have changed.
        self.ahead.clear();
    }

    fn apply(
        &mut self,
        _entry: usize,
        info: &TableInfo,
        key: &Value,
        write: &Write,
    ) -> Result<(), ApplyError> {
        // What was read ahead of this row is no longer what it is.
        self.ahead.remove(&(info.name.clone(), types::text_of(key)));
        let table = quote_ident(&info.name);
        let pk = quote_ident(&info.primary_key);
        let pk_declared = declared_of(info, &info.primary_key);
        fn cells(row: &fieldsync_proto::conflict::Row) -> Vec<(&str, &Value)> {
            row.iter().map(|(c, v)| (c.as_str(), v)).collect()
        }
        let batched = match write {
            Write::Insert(row) => Some((false, cells(row))),
            // The key first, then the columns set.
            Write::Update(row) if !row.is_empty() => {
                let mut keyed = vec![(info.primary_key.as_str(), key)];
                keyed.extend(cells(row));
                Some((true, keyed))
            }
            _ => None,
        };
        if let Some((update, cells)) = batched {
            let values: Vec<Param> = cells
                .iter()
                .map(|(c, v)| types::write_value(v, declared_of(info, c)))
                .collect();
            if values.iter().any(|v| matches!(v, Param::Invalid)) {
                return Err(ApplyError::Refused(
                    "bytes that are not UTF-8 cannot be stored in a text column".into(),
                ));
            }
            let same_shape = self.pending.as_ref().is_some_and(|p| {
                p.update == update
                    && p.info.name == info.name
                    && p.columns
                        .iter()
                        .map(String::as_str)
                        .eq(cells.iter().map(|(c, _)| *c))
            });
            if !same_shape {
                self.flush().map_err(ApplyError::Store)?;
                self.pending = Some(PendingWrites {
                    update,
                    info: info.clone(),
                    columns: cells.iter().map(|(c, _)| c.to_string()).collect(),
                    rows: Vec::new(),
                });
            }
            let index = self.asked.saturating_sub(1);
            let p = self.pending.as_mut().expect("set above");
            p.rows.push((index, values));
            let limit = WRITE_BATCH.min(60_000 / p.columns.len().max(1));
            if p.rows.len() >= limit {
                self.flush().map_err(ApplyError::Store)?;
            }
            return Ok(());
        }
        self.flush().map_err(ApplyError::Store)?;
        let mut values: Vec<Param> = Vec::new();
        let sql = match write {
            Write::Insert(row) => {
                let mut names = Vec::new();
                let mut marks = Vec::new();
                for (c, v) in row {
                    let d = declared_of(info, c);
                    values.push(types::write_value(v, d));
                    names.push(quote_ident(c));
                    marks.push(types::write_param(values.len(), d));
                }
                format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    names.join(", "),
                    marks.join(", ")
                )
            }
            Write::Update(row) => {
                let mut sets = Vec::new();
                for (c, v) in row {
                    let d = declared_of(info, c);
                    values.push(types::write_value(v, d));
                    sets.push(format!(
                        "{} = {}",
                        quote_ident(c),
                        types::write_param(values.len(), d)
                    ));
                }
                values.push(types::write_value(key, pk_declared));
                format!(
                    "UPDATE {table} SET {} WHERE {pk} = {}",
                    sets.join(", "),
                    types::write_param(values.len(), pk_declared)
                )
            }
            Write::Delete => {
                values.push(types::write_value(key, pk_declared));
                format!(
                    "DELETE FROM {table} WHERE {pk} = {}",
                    types::write_param(1, pk_declared)
                )
            }
        };
        if values.iter().any(|v| matches!(v, Param::Invalid)) {
            return Err(ApplyError::Refused(
                "bytes that are not UTF-8 cannot be stored in a text column".into(),
            ));
        }
        let refs: Params_<'_> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        match self.execute(&sql, &refs) {
            Ok(_) => Ok(()),
            Err(e) => {
                let refused = e.code().is_some_and(|c| {
                    let class = &c.code()[..2];
                    class == "22" || class == "23"
                });
                if refused {
                    Err(ApplyError::Refused(pg_message(&e)))
                } else {
                    Err(ApplyError::Store(self.note(e)))
                }
            }
        }
    }

    /// One base per upload: its snapshot plus its own transaction, so the rows it
    /// wrote count as seen and later writers' do not.
    /// An upload's base records its transaction; a row's version is the transaction
    /// that last wrote it.
    fn wrote(&mut self, base: i64, version: i64) -> Result<bool, StoreError> {
        let rows = self.query(
            "SELECT xid::text::int8 = $2 FROM fieldsync.bases WHERE id = $1",
            &[&base, &version],
        )?;
        Ok(rows
            .first()
            .is_some_and(|r| r.get::<_, Option<bool>>(0) == Some(true)))
    }

    fn new_version(&mut self, device: &str) -> Result<i64, StoreError> {
        if let Some(id) = self.new_base {
            return Ok(id);
        }
        let rows = self.query(
            "INSERT INTO fieldsync.bases (snap, xid, device) VALUES (pg_current_snapshot(), pg_current_xact_id(), $1) RETURNING id",
            &[&device],
        )?;
        let id: i64 = rows[0].get(0);
        self.new_base = Some(id);
        Ok(id)
    }

    fn attach_file(&mut self, info: &TableInfo, f: &crate::NewFile) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO fieldsync.files (tbl, pk, name, size, sha256, content_type, added_by, added_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tbl, pk, name) DO NOTHING",
            &[
                &info.name,
                &f.key,
                &f.name,
                &(f.size as i64),
                &f.sha256,
                &f.content_type,
                &f.added_by,
                &f.added_at.to_string(),
            ],
        )?;
        Ok(())
    }

    fn claim_key(&mut self, device: &str, table: &str, key: i64) -> Result<bool, StoreError> {
        let rows = self.query(super::super::keys::CLAIM_KEY, &[&device, &table, &key])?;
        Ok(!rows.is_empty())
    }

    fn log_conflict(&mut self, c: &ConflictLog<'_>) -> Result<(), StoreError> {
        let (e, n) = (c.entry, c.note);
        let key = serde_json::to_string(&e.key).expect("serializes");
        let device = serde_json::to_string(&n.device).expect("serializes");
        let server = serde_json::to_string(&n.server).expect("serializes");
        let at = c.ctx.at.to_string();
        let r = self.execute(
            "INSERT INTO fieldsync.conflicts (at, device, user_name, task, tbl, key, op, kind, policy, resolution,
                 device_values, server_values, base_version, server_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &at,
                &c.ctx.device,
                &e.user,
                &c.ctx.task.name,
                &e.table,
                &key,
                &op_name(e.op),
                &n.kind,
                &c.policy,
                &n.resolution,
                &device,
                &server,
                &e.base_version,
                &c.server_version,
            ],
        );
        r.map(|_| ()).map_err(|e| self.note(e))
    }

    fn record(
        &mut self,
        ctx: &IntegrateContext<'_>,
        upload_id: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.flush()?;
        let at = ctx.at.to_string();
        let r = self.execute(
            "INSERT INTO fieldsync.uploads (upload_id, device, user_name, task, outcome, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &upload_id,
                &ctx.device,
                &ctx.sender,
                &ctx.task.name,
                &outcome,
                &at,
            ],
        );
        r.map(|_| ()).map_err(|e| self.note(e))
    }
}
