//! Whether the parent rows of an upload's inserts are in the user's slice, remembered
//! for the upload (`integrate.rs` asks).

use fieldsync_proto::Value;
use fieldsync_proto::filter::Params;
use fieldsync_proto::task::TaskDef;
use rusqlite::Transaction;

use super::integrate::ancestor_versions;
use super::{table_info, to_sql_value};
use crate::StoreError;
use crate::integrate::HashMap;
use crate::plan::{self, quote_ident};

/// Whether parent rows are in a user's slice, remembered for the upload: a bulk of
/// children of a few parents asks the database once per parent. Any write to a parent
/// table forgets what was learnt.
#[derive(Default)]
pub(super) struct ParentSlices {
    queries: HashMap<(String, String), (String, Vec<Value>)>,
    /// By table, then user, then key: looked up by reference, with no key made per
    /// entry (a bulk of children asks once per child; three strings made and dropped
    /// per ask were ~5% of a send's integration).
    known: HashMap<String, HashMap<String, Known>>,
}

/// What was learnt of one table's parents for one user, by key.
#[derive(Default)]
struct Known {
    integers: HashMap<i64, (bool, i64)>,
    texts: HashMap<String, (bool, i64)>,
    /// Keys of other kinds, by their JSON.
    others: HashMap<String, (bool, i64)>,
}

impl Known {
    fn get(&self, key: &Value) -> Option<(bool, i64)> {
        match key {
            Value::Integer(i) => self.integers.get(i),
            Value::Text(t) => self.texts.get(t.as_str()),
            other => self.others.get(&json(other)),
        }
        .copied()
    }

    fn insert(&mut self, key: &Value, inside: (bool, i64)) {
        match key {
            Value::Integer(i) => self.integers.insert(*i, inside),
            Value::Text(t) => self.texts.insert(t.clone(), inside),
            other => self.others.insert(json(other), inside),
        };
    }
}

fn json(key: &Value) -> String {
    serde_json::to_string(key).expect("serializes")
}

impl ParentSlices {
    pub fn forget(&mut self) {
        self.known.clear();
    }

    /// Whether the parent row is in the slice, and the highest version among it and
    /// its own parent chain (when it left the slice, at the latest).
    pub fn check(
        &mut self,
        tx: &Transaction<'_>,
        def: &TaskDef,
        table: &str,
        params: &Params,
        key: &Value,
    ) -> Result<(bool, i64), StoreError> {
        if let Some(known) = self
            .known
            .get(table)
            .and_then(|users| users.get(params.user.as_str()))
            .and_then(|keys| keys.get(key))
        {
            return Ok(known);
        }
        let qkey = (table.to_string(), params.user.clone());
        if !self.queries.contains_key(&qkey) {
            let parent = def.table(table).expect("checked: parent is in the task");
            let info = table_info(tx, table)?
                .ok_or_else(|| StoreError::NotFound(format!("table `{table}` is gone")))?;
            let (cond, mut binds) =
                plan::row_condition(def, parent, params, &super::SqliteDialect, &|n| {
                    table_info(tx, n)
                })?;
            let pt = quote_ident(table);
            let pk = quote_ident(&info.primary_key);
            let version = ancestor_versions(tx, def, parent)?
                .into_iter()
                .fold("r.version".to_string(), |acc, v| {
                    format!("max({acc}, coalesce({v}, 0))")
                });
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {pt} WHERE {pt}.{pk} = ? AND {cond}),
                        coalesce((SELECT {version} FROM fieldsync_rows r LEFT JOIN {pt} ON {pt}.{pk} = r.pk
                                  WHERE r.tbl = ? AND r.pk = ?), 0)"
            );
            binds.push(Value::Text(info.name.clone()));
            self.queries.insert(qkey.clone(), (sql, binds));
        }
        let (sql, binds) = &self.queries[&qkey];
        // Placeholders in text order: the key, the condition's binds, the table, the key.
        let all: Vec<_> = std::iter::once(key)
            .chain(binds.iter())
            .chain(std::iter::once(key))
            .map(to_sql_value)
            .collect();
        let inside = tx
            .prepare_cached(sql)?
            .query_row(rusqlite::params_from_iter(all.iter()), |r| {
                Ok((r.get::<_, bool>(0)?, r.get::<_, i64>(1)?))
            })?;
        self.known
            .entry(table.to_string())
            .or_default()
            .entry(params.user.clone())
            .or_default()
            .insert(key, inside);
        Ok(inside)
    }
}
