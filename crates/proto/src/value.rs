//! Cell values as they travel (SQLite storage classes) and the column types of a slice.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// One cell. Values travel as SQLite storage classes; numeric/decimal values of other
/// engines travel as `Text` so nothing loses precision.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// SQLite's order between values of any storage class, with BINARY collation for
    /// text: NULL < INTEGER/REAL (numerically) < TEXT (bytewise) < BLOB (bytewise).
    /// `None` when either side is NULL (SQL comparison with NULL is unknown).
    pub fn sql_cmp(&self, other: &Value) -> Option<Ordering> {
        use Value::*;
        fn class(v: &Value) -> u8 {
            match v {
                Null => 0,
                Integer(_) | Real(_) => 1,
                Text(_) => 2,
                Blob(_) => 3,
            }
        }
        match (self, other) {
            (Null, _) | (_, Null) => None,
            (Integer(a), Integer(b)) => Some(a.cmp(b)),
            (Real(a), Real(b)) => a.partial_cmp(b),
            (Integer(a), Real(b)) => Some(cmp_int_real(*a, *b)),
            (Real(a), Integer(b)) => Some(cmp_int_real(*b, *a).reverse()),
            (Text(a), Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Blob(a), Blob(b)) => Some(a.cmp(b)),
            (a, b) => Some(class(a).cmp(&class(b))),
        }
    }
}

/// Exact comparison of an integer with a real, as SQLite does it (no rounding of the
/// integer to f64 when that would change the answer).
fn cmp_int_real(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    if r >= 9.223_372_036_854_776e18 {
        return Ordering::Less;
    }
    if r < -9.223_372_036_854_776e18 {
        return Ordering::Greater;
    }
    let t = r.trunc() as i64;
    match i.cmp(&t) {
        Ordering::Equal => {
            let frac = r - r.trunc();
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        other => other,
    }
}

/// The type of a column in a slice, as the replica declares it. Derived from the main
/// database's declared type by SQLite's affinity rules (other engines map onto these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Integer,
    Real,
    Text,
    Blob,
    Numeric,
}

impl ColumnType {
    /// SQLite's affinity rules (https://sqlite.org/datatype3.html, 3.1).
    pub fn from_declared(declared: &str) -> ColumnType {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            ColumnType::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            ColumnType::Text
        } else if t.contains("BLOB") || t.is_empty() {
            ColumnType::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            ColumnType::Real
        } else {
            ColumnType::Numeric
        }
    }

    /// The declared type the replica gives the column.
    pub fn sql_name(self) -> &'static str {
        match self {
            ColumnType::Integer => "INTEGER",
            ColumnType::Real => "REAL",
            ColumnType::Text => "TEXT",
            ColumnType::Blob => "BLOB",
            ColumnType::Numeric => "NUMERIC",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_rules() {
        assert_eq!(ColumnType::from_declared("varchar(20)"), ColumnType::Text);
        assert_eq!(ColumnType::from_declared("BIGINT"), ColumnType::Integer);
        assert_eq!(
            ColumnType::from_declared("double precision"),
            ColumnType::Real
        );
        assert_eq!(
            ColumnType::from_declared("decimal(10,2)"),
            ColumnType::Numeric
        );
        assert_eq!(ColumnType::from_declared(""), ColumnType::Blob);
    }

    #[test]
    fn mixed_class_order_is_sqlites() {
        let one = Value::Integer(1);
        assert_eq!(one.sql_cmp(&Value::Real(1.5)), Some(Ordering::Less));
        assert_eq!(
            Value::Real(2.0).sql_cmp(&Value::Integer(2)),
            Some(Ordering::Equal)
        );
        assert_eq!(one.sql_cmp(&Value::Text("0".into())), Some(Ordering::Less));
        assert_eq!(
            Value::Text("b".into()).sql_cmp(&Value::Text("B".into())),
            Some(Ordering::Greater)
        );
        assert_eq!(one.sql_cmp(&Value::Null), None);
        assert_eq!(i64::MAX.cmp(&i64::MAX), Ordering::Equal);
        assert_eq!(
            cmp_int_real(i64::MAX, 9.223_372_036_854_776e18),
            Ordering::Less
        );
    }
}
