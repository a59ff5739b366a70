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

/// A decimal's text as a number, for exact comparison: PostgreSQL's `numeric` input
/// forms (surrounding spaces, a sign, digits with an optional point, an exponent,
/// `NaN`, `Infinity`/`inf`, case-insensitive).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decimal {
    NegInfinity,
    /// `negative`, the significant digits without leading or trailing zeros (empty for
    /// zero), and `exponent`: the value is `0.d1d2… × 10^exponent`.
    Finite {
        negative: bool,
        digits: Vec<u8>,
        exponent: i64,
    },
    Infinity,
    /// PostgreSQL orders NaN above every other numeric and equal to itself.
    NaN,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let (negative, body) = match t.as_bytes().first()? {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let lower = body.to_ascii_lowercase();
        if lower == "nan" && body.len() == t.len() {
            return Some(Decimal::NaN);
        }
        if lower == "inf" || lower == "infinity" {
            return Some(if negative {
                Decimal::NegInfinity
            } else {
                Decimal::Infinity
            });
        }
        let (mantissa, exp) = match body.find(['e', 'E']) {
            Some(at) => (&body[..at], Some(&body[at + 1..])),
            None => (body, None),
        };
        let exp: i64 = match exp {
            Some(e) => {
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty()
                    || digits.len() > 9
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                e.parse().ok()?
            }
            None => 0,
        };
        let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty() && frac.is_empty()
            || !whole
                .bytes()
                .chain(frac.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let all: Vec<u8> = whole.bytes().chain(frac.bytes()).collect();
        let lead = all.iter().take_while(|b| **b == b'0').count();
        let digits: Vec<u8> = {
            let rest = &all[lead..];
            let end = rest.len() - rest.iter().rev().take_while(|b| **b == b'0').count();
            rest[..end].to_vec()
        };
        let exponent = if digits.is_empty() {
            0
        } else {
            whole.len() as i64 - lead as i64 + exp
        };
        Some(Decimal::Finite {
            negative: negative && !digits.is_empty(),
            digits,
            exponent,
        })
    }

    fn cmp(&self, other: &Decimal) -> Ordering {
        use Decimal::*;
        fn rank(d: &Decimal) -> u8 {
            match d {
                NegInfinity => 0,
                Finite { .. } => 1,
                Infinity => 2,
                NaN => 3,
            }
        }
        match (self, other) {
            (
                Finite {
                    negative: an,
                    digits: ad,
                    exponent: ae,
                },
                Finite {
                    negative: bn,
                    digits: bd,
                    exponent: be,
                },
            ) => {
                let sign = |n: bool, d: &Vec<u8>| {
                    if d.is_empty() {
                        0
                    } else if n {
                        -1
                    } else {
                        1
                    }
                };
                let (sa, sb) = (sign(*an, ad), sign(*bn, bd));
                if sa != sb || sa == 0 {
                    return sa.cmp(&sb);
                }
                let magnitude = ae.cmp(be).then_with(|| ad.cmp(bd));
                if sa < 0 {
                    magnitude.reverse()
                } else {
                    magnitude
                }
            }
            (a, b) => rank(a).cmp(&rank(b)),
        }
    }
}

/// Whether `text` is a decimal PostgreSQL's `numeric` takes.
pub fn is_decimal(text: &str) -> bool {
    Decimal::parse(text).is_some()
}

/// Compares a decimal (its text, [`ColumnType::Decimal`]) with a value as PostgreSQL
/// compares a `numeric` with it: exactly with an integer or another decimal's text,
/// as a double with a real (PostgreSQL turns the numeric into float8, correctly
/// rounded; NaN above everything). `None` when either side is NULL or is not a number.
pub fn decimal_cmp(text: &str, other: &Value) -> Option<Ordering> {
    let d = Decimal::parse(text)?;
    match other {
        Value::Integer(i) => Some(d.cmp(&Decimal::parse(&i.to_string())?)),
        Value::Text(t) => Some(d.cmp(&Decimal::parse(t)?)),
        Value::Real(r) => {
            let a = match d {
                Decimal::NaN => f64::NAN,
                Decimal::Infinity => f64::INFINITY,
                Decimal::NegInfinity => f64::NEG_INFINITY,
                Decimal::Finite { .. } => text.trim().parse::<f64>().ok()?,
            };
            Some(match (a.is_nan(), r.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => a.partial_cmp(r)?,
            })
        }
        Value::Null | Value::Blob(_) => None,
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
    /// An exact decimal (PostgreSQL `numeric`) travelling as its text (`0.10`, 40
    /// digits intact). The replica declares it `TEXT` so SQLite keeps the text as is
    /// (a `NUMERIC` column would turn `0.10` into the real 0.1); the filter language
    /// compares it as a number ([`decimal_cmp`]).
    Decimal,
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
            ColumnType::Decimal => "TEXT",
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
    fn decimals_compare_exactly() {
        let int = |i| Value::Integer(i);
        assert_eq!(
            decimal_cmp("0.10", &Value::Real(0.1)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            decimal_cmp("0.10", &Value::Text("0.1".into())),
            Some(Ordering::Equal)
        );
        assert_eq!(decimal_cmp("5.00", &int(5)), Some(Ordering::Equal));
        assert_eq!(
            decimal_cmp("4.9999999999999999999999", &int(5)),
            Some(Ordering::Less)
        );
        assert_eq!(
            decimal_cmp("5.0000000000000000000001", &int(5)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            decimal_cmp("123456789012345678901234567890.0000000001", &int(i64::MAX)),
            Some(Ordering::Greater)
        );
        assert_eq!(decimal_cmp("-0.5", &int(0)), Some(Ordering::Less));
        assert_eq!(decimal_cmp("-0.000", &int(0)), Some(Ordering::Equal));
        assert_eq!(decimal_cmp("-12", &int(-3)), Some(Ordering::Less));
        assert_eq!(decimal_cmp("1e3", &int(1000)), Some(Ordering::Equal));
        assert_eq!(
            decimal_cmp(" .5 ", &Value::Real(0.5)),
            Some(Ordering::Equal)
        );
        assert_eq!(decimal_cmp("NaN", &int(i64::MAX)), Some(Ordering::Greater));
        assert_eq!(
            decimal_cmp("-Infinity", &int(i64::MIN)),
            Some(Ordering::Less)
        );
        assert_eq!(
            decimal_cmp("Infinity", &Value::Text("NaN".into())),
            Some(Ordering::Less)
        );
        assert_eq!(decimal_cmp("abc", &int(1)), None);
        assert_eq!(decimal_cmp("1", &Value::Null), None);
        assert!(!is_decimal("1.2.3") && !is_decimal("") && !is_decimal(".") && is_decimal("7."));
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

/// Read straight from the parser, with no `serde_json::Value` between (a server parses
/// every value of every upload); the same forms and answers as [`Value::from_json`].
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a value: null, a number, a string, {\"blob\": HEX} or {\"real\": \"inf\"}")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Integer(i64::from(b)))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Integer(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        // Past i64, as `from_json` reads it: the nearest real.
        Ok(i64::try_from(u).map_or(Value::Real(u as f64), Value::Integer))
    }
    fn visit_f64<E>(self, r: f64) -> Result<Value, E> {
        Ok(Value::Real(r))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Text(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Text(s))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(serde::de::Error::custom("unknown value: an array"))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // The two object forms have one member each; anything else is refused.
        let mut json = serde_json::Map::new();
        while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
            json.insert(k, v);
            if json.len() > 1 {
                break;
            }
        }
        if json.len() > 1 {
            return Err(serde::de::Error::custom(
                "unknown value: an object of several members",
            ));
        }
        Value::from_json(&serde_json::Value::Object(json)).map_err(serde::de::Error::custom)
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

    /// The parser reads every form as `from_json` over a `serde_json::Value` does.
    #[test]
    fn parsed_straight_as_from_json_reads_it() {
        let forms = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "-0.0",
            "7",
            "-9223372036854775808",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "1e400",
            "1.5",
            "\"text\"",
            "\"\\u00e9\"",
            r#"{"blob":"00ff"}"#,
            r#"{"blob":"0g"}"#,
            r#"{"blob":"0"}"#,
            r#"{"blob":5}"#,
            r#"{"real":"inf"}"#,
            r#"{"real":"-inf"}"#,
            r#"{"real":"nan"}"#,
            r#"{"blob":"00","real":"inf"}"#,
            r#"{"x":1,"y":2,"z":3}"#,
            "{}",
            "[]",
            "[1]",
        ];
        for text in forms {
            let via_json = serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| e.to_string())
                .and_then(|j| Value::from_json(&j));
            let straight = serde_json::from_str::<Value>(text);
            match (&via_json, &straight) {
                (Ok(a), Ok(b)) => assert!(
                    a == b
                        || matches!((a, b), (Value::Real(x), Value::Real(y)) if x.to_bits() == y.to_bits()),
                    "{text}: {a:?} against {b:?}"
                ),
                (Err(_), Err(_)) => {}
                _ => panic!("{text}: {via_json:?} against {straight:?}"),
            }
        }
    }
}
