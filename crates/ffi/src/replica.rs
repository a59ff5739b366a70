//! The replica for an app's own reads and writes, through this library's SQLite: the
//! replica's triggers check and journal every write, as they do any client's. Each
//! call opens the installed generation afresh, so a download that replaced it is never
//! read around, and no connection of the app holds a retired generation.

use std::sync::Arc;

use rusqlite::types::{Value, ValueRef};

use crate::error::Result;

/// One SQLite value.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum SqlValue {
    Null,
    Integer { value: i64 },
    Real { value: f64 },
    Text { value: String },
    Blob { value: Vec<u8> },
}

impl From<SqlValue> for Value {
    fn from(v: SqlValue) -> Self {
        match v {
            SqlValue::Null => Value::Null,
            SqlValue::Integer { value } => Value::Integer(value),
            SqlValue::Real { value } => Value::Real(value),
            SqlValue::Text { value } => Value::Text(value),
            SqlValue::Blob { value } => Value::Blob(value),
        }
    }
}

impl From<ValueRef<'_>> for SqlValue {
    fn from(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(value) => SqlValue::Integer { value },
            ValueRef::Real(value) => SqlValue::Real { value },
            ValueRef::Text(t) => SqlValue::Text {
                value: String::from_utf8_lossy(t).into_owned(),
            },
            ValueRef::Blob(b) => SqlValue::Blob { value: b.to_vec() },
        }
    }
}

/// What a query returned: its column names, and its rows in order.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// The device's installed replica (`Device.replica()`).
#[derive(uniffi::Object)]
pub struct Replica {
    device: Arc<fieldsync_client::Device>,
}

impl Replica {
    pub(crate) fn new(device: Arc<fieldsync_client::Device>) -> Replica {
        Replica { device }
    }
}

#[uniffi::export]
impl Replica {
    /// Runs one SQL statement that returns rows; `params` bind `?1`, `?2`, … in order.
    pub fn query(&self, sql: String, params: Vec<SqlValue>) -> Result<Rows> {
        let conn = self.device.open_replica()?;
        let mut stmt = conn.prepare(&sql)?;
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let n = columns.len();
        let mut rows = Vec::new();
        let mut cursor = stmt.query(rusqlite::params_from_iter(
            params.into_iter().map(Value::from),
        ))?;
        while let Some(row) = cursor.next()? {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(row.get_ref(i)?.into());
            }
            rows.push(values);
        }
        Ok(Rows { columns, rows })
    }

    /// Runs one SQL statement that changes rows (its own transaction); returns how
    /// many rows it changed. The task's rules apply: a write the task does not allow,
    /// or made with nobody logged in, fails with the trigger's message.
    pub fn execute(&self, sql: String, params: Vec<SqlValue>) -> Result<u64> {
        let conn = self.device.open_replica()?;
        let changed = conn.execute(
            &sql,
            rusqlite::params_from_iter(params.into_iter().map(Value::from)),
        )?;
        Ok(changed as u64)
    }
}
