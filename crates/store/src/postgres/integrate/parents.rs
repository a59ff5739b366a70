//! Whether an inserted row's parent is in the slice (and whether it left it after the
//! entry's base), asked of the database per parent key, and read ahead for a window's
//! inserts in one statement per parent table, user and base: asked one by one, each
//! new parent cost a round trip and sent the writes batched so far (a 5,000-entry
//! upload under 1,000 parents made about 2,000 statements instead of a handful).

use super::*;
use fieldsync_proto::task::WriteOp;

/// The parent query of one table for one user: its filter's binds, the query for one
/// key, and the same for an array of keys (as text), each row led by its key.
pub(super) struct ParentQuery {
    binds: Vec<Value>,
    one: String,
    many: String,
}

impl PgUpload<'_, '_> {
    /// Makes the parent query of `table` for `params.user` (once per upload). Both
    /// forms answer `(inside, left)`: the parent row is in the slice now; it (or a row
    /// of its chain) changed after the entry's base.
    pub(super) fn parent_query(
        &mut self,
        def: &TaskDef,
        table: &str,
        params: &Params,
    ) -> Result<(), StoreError> {
        let qkey = (table.to_string(), params.user.clone());
        if self.parent_queries.contains_key(&qkey) {
            return Ok(());
        }
        let info = self
            .info(table)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{table}` is gone")))?;
        let declared = declared_of(&info, &info.primary_key);
        let parent = def.table(table).expect("checked: parent is in the task");
        let infos = self.task_infos(def)?;
        let (cond, binds) = plan::row_condition(def, parent, params, &types::PgDialect, &|n| {
            Ok(infos.get(n).cloned().flatten())
        })?;
        let pt = quote_ident(table);
        let pk = quote_ident(&info.primary_key);
        let n = binds.len();
        let (left, ancestors) = left_sql(&ancestor_xids(&infos, def, parent)?);
        // An unknown base (never handed out: forged) cannot show that the parent left
        // the slice after the device saw it: the insert is then refused.
        let answer = format!(
            "{pt}.{pk} IS NOT NULL AND coalesce(({cond}), false), b.snap IS NOT NULL AND coalesce({left}, false)"
        );
        let base = |at: usize| {
            format!("LEFT JOIN (SELECT snap, xid FROM fieldsync.bases WHERE id = ${at}) b ON true")
        };
        let one = format!(
            "SELECT {answer}
             FROM (SELECT 1) one
             LEFT JOIN fieldsync.rows r ON r.tbl = ${tbl} AND r.pk = ${key_text}
             LEFT JOIN {pt} ON {pt}.{pk} = {key_param}
             {ancestors}
             {base}",
            tbl = n + 1,
            key_text = n + 2,
            key_param = types::write_param(n + 3, declared),
            base = base(n + 4),
        );
        // The same for `$n+2`, an array of keys as text.
        let many = format!(
            "SELECT k.t, {answer}
             FROM unnest(${keys}::text[]) AS k(t)
             LEFT JOIN fieldsync.rows r ON r.tbl = ${tbl} AND r.pk = k.t
             LEFT JOIN {pt} ON {pt}.{pk} = CAST(k.t AS {declared})
             {ancestors}
             {base}",
            tbl = n + 1,
            keys = n + 2,
            base = base(n + 3),
        );
        self.parent_queries
            .insert(qkey, ParentQuery { binds, one, many });
        Ok(())
    }

    /// Asks the database about one parent key (after sending the batched writes,
    /// which it must see).
    pub(super) fn ask_parent(
        &mut self,
        table: &str,
        params: &Params,
        key: &Value,
        base: Option<i64>,
    ) -> Result<(bool, bool), StoreError> {
        let info = self
            .info(table)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{table}` is gone")))?;
        let declared = declared_of(&info, &info.primary_key);
        let Some(typed_key) = types::key_param(key, declared) else {
            return Ok((false, false));
        };
        self.flush()?;
        let q = &self.parent_queries[&(table.to_string(), params.user.clone())];
        let (sql, binds) = (q.one.clone(), q.binds.clone());
        let text_key = types::text_of(key);
        let bound: Vec<Bind<'_>> = binds.iter().map(Bind).collect();
        let mut all: Params_<'_> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        all.push(&info.name);
        all.push(&text_key);
        all.push(&typed_key);
        all.push(&base);
        let rows = self.query(&sql, &all)?;
        let r = rows.first().expect("one row from (SELECT 1)");
        Ok((r.get(0), r.get(1)))
    }

    /// Reads the parents of the inserts among `entries` (a window, its writes before
    /// it sent) into `parents`, as `parent` would find them one by one. Only a cache:
    /// an insert whose written row names another parent is asked about on its own, and
    /// a write to a parent table forgets them all (`forget_parents`).
    pub(super) fn read_parents(
        &mut self,
        def: &TaskDef,
        device: &str,
        entries: &[UploadEntry],
    ) -> Result<(), StoreError> {
        type Group = (String, String, Option<i64>);
        let mut groups: BTreeMap<Group, BTreeMap<String, Value>> = BTreeMap::new();
        for e in entries {
            if e.op != WriteOp::Insert {
                continue;
            }
            let Some(p) = def.table(&e.table).and_then(|t| t.parent.as_ref()) else {
                continue;
            };
            let Some(key) = e.new.get(&p.key) else {
                continue;
            };
            if !self
                .parents
                .contains_key(&parent_id(&p.table, &e.user, key, e.base_version))
            {
                groups
                    .entry((p.table.clone(), e.user.clone(), e.base_version))
                    .or_default()
                    .insert(types::text_of(key), key.clone());
            }
        }
        for ((table, user, base), keys) in groups {
            let Some(info) = self.info(&table)? else {
                continue;
            };
            let declared = declared_of(&info, &info.primary_key);
            let keys: BTreeMap<String, Value> = keys
                .into_iter()
                .filter(|(_, k)| types::key_param(k, declared).is_some())
                .collect();
            if keys.is_empty() {
                continue;
            }
            let params = Params {
                user: user.clone(),
                device: device.to_string(),
            };
            self.parent_query(def, &table, &params)?;
            let q = &self.parent_queries[&(table.clone(), user.clone())];
            let (sql, binds) = (q.many.clone(), q.binds.clone());
            let texts: Vec<&str> = keys.keys().map(String::as_str).collect();
            let bound: Vec<Bind<'_>> = binds.iter().map(Bind).collect();
            let mut all: Params_<'_> = bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
            all.push(&info.name);
            all.push(&texts);
            all.push(&base);
            for r in self.query(&sql, &all)? {
                let text: String = r.get(0);
                if let Some(key) = keys.get(&text) {
                    let id = parent_id(&table, &user, key, base);
                    self.parents.insert(id, (r.get(1), r.get(2)));
                }
            }
        }
        Ok(())
    }
}
