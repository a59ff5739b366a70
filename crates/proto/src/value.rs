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

/// JSON form of a value (journal entries, uploads, the conflict log): `null`, a number
/// (integers without, reals with a fraction or exponent), a string, `{"blob": "HEX"}`,
/// or `{"real": "inf" | "-inf"}` for infinities, which JSON numbers cannot hold.
impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Value::Null => s.serialize_none(),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Real(r) if r.is_finite() => s.serialize_f64(*r),
            Value::Real(r) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("real", if *r > 0.0 { "inf" } else { "-inf" })?;
                m.end()
            }
            Value::Text(t) => s.serialize_str(t),
            Value::Blob(b) => {
                let mut m = s.serialize_map(Some(1))?;
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                m.serialize_entry("blob", &hex)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let json = serde_json::Value::deserialize(d)?;
        Value::from_json(&json).map_err(D::Error::custom)
    }
}

impl Value {
    /// Reads the JSON form (see the `Serialize` impl).
    pub fn from_json(json: &serde_json::Value) -> Result<Value, String> {
        Ok(match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Integer(i64::from(*b)),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64().filter(|_| !n.is_f64()) {
                    Value::Integer(i)
                } else {
                    Value::Real(
                        n.as_f64()
                            .ok_or_else(|| format!("number {n} out of range"))?,
                    )
                }
            }
            serde_json::Value::String(s) => Value::Text(s.clone()),
            serde_json::Value::Object(m) if m.len() == 1 => match m.iter().next() {
                Some((k, serde_json::Value::String(h))) if k == "blob" => {
                    if h.len() % 2 != 0 || !h.is_ascii() {
                        return Err("bad blob hex".into());
                    }
                    Value::Blob(
                        (0..h.len())
                            .step_by(2)
                            .map(|i| u8::from_str_radix(&h[i..i + 2], 16))
                            .collect::<Result<_, _>>()
                            .map_err(|_| "bad blob hex".to_string())?,
                    )
                }
                Some((k, serde_json::Value::String(r))) if k == "real" && r == "inf" => {
                    Value::Real(f64::INFINITY)
                }
                Some((k, serde_json::Value::String(r))) if k == "real" && r == "-inf" => {
                    Value::Real(f64::NEG_INFINITY)
                }
                _ => return Err(format!("unknown value {json}")),
            },
            other => return Err(format!("unknown value {other}")),
        })
    }

    /// Equality as values travel (conflict detection): same storage class and same
    /// value; an integer and a real are equal when numerically equal, as in SQLite.
    pub fn same(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Null, _) | (_, Value::Null) => false,
            _ => self.sql_cmp(other) == Some(Ordering::Equal),
        }
    }
}

#[cfg(test)]
mod json_tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("NaN is NULL in SQLite", |f| !f.is_nan())
                .prop_map(Value::Real),
            ".{0,20}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Blob),
        ]
    }

    proptest! {
        #[test]
        fn json_round_trip(v in value()) {
            let text = serde_json::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            match (&v, &back) {
                (Value::Real(a), Value::Real(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
                _ => prop_assert_eq!(&v, &back),
            }
        }
    }

    #[test]
    fn sqlite_json_quote_forms_read_back() {
        assert_eq!(
            Value::from_json(&serde_json::json!(5)).unwrap(),
            Value::Integer(5)
        );
        assert_eq!(
            serde_json::from_str::<Value>("5.0").unwrap(),
            Value::Real(5.0)
        );
        assert_eq!(
            serde_json::from_str::<Value>("1e300").unwrap(),
            Value::Real(1e300)
        );
        assert_eq!(
            serde_json::from_str::<Value>(r#"{"blob":"00ff"}"#).unwrap(),
            Value::Blob(vec![0, 255])
        );
        assert!(Value::Integer(2).same(&Value::Real(2.0)));
        assert!(!Value::Text("2".into()).same(&Value::Integer(2)));
    }
}
