//! How PostgreSQL columns travel (docs/protocol.md, "PostgreSQL types"): every
//! supported type is read through one canonical SQL expression of four physical
//! kinds (int8, float8, text, bytea) and written back from a text (or bytea)
//! parameter cast to the column's own type.
//!
//! Nothing that travels depends on the session's settings: times are formatted
//! explicitly in UTC (`to_char`, never `::text` or `to_json`, which follow `TimeZone`
//! and `DateStyle`), numerics are their exact text, floats travel binary. The pool's
//! connections also pin the settings that steer input (`connection_options`).

use fieldsync_proto::filter::Dialect;
use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::{ColumnType, Value};
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::dialect::SqlDialect;

/// What a column's values are on the wire, and how they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// smallint, integer, bigint: integers.
    Int,
    /// boolean: 0 or 1.
    Bool,
    /// real, double precision.
    Float,
    /// numeric: its exact text, as PostgreSQL prints it (`0.10`).
    Numeric,
    /// text, varchar, char, name.
    Text,
    /// date, time, timetz, timestamp, timestamptz: fixed-width UTC text.
    Temporal(Temporal),
    /// uuid, json, jsonb: their text form.
    TextForm,
    /// bytea.
    Bytes,
}

/// The date/time types. Each travels as fixed-width text in UTC, so text order is time
/// order (docs/protocol.md, "PostgreSQL types"), whatever the session's `TimeZone`
/// and `DateStyle`; microseconds, PostgreSQL's precision. `infinity` and
/// `-infinity` travel as those words (which sort after and before every digit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Temporal {
    /// `YYYY-MM-DD`
    Date,
    /// `HH:MM:SS.ffffff`
    Time,
    /// `HH:MM:SS.ffffffZ` (converted to UTC)
    TimeTz,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`: the wall-clock time taken as UTC.
    Timestamp,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`: the instant in UTC.
    TimestampTz,
}

/// `to_char` pattern of a timestamp in the travelling form.
const TIMESTAMP_FORM: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

impl Temporal {
    /// The canonical text of a column of this type. `to_char` with these patterns
    /// depends on no setting (no `TM` prefix).
    fn read_expr(self, column: &str) -> String {
        let finite = |formatted: String| {
            format!("(CASE WHEN isfinite({column}) THEN {formatted} ELSE {column}::text END)")
        };
        match self {
            Temporal::Date => finite(format!("to_char({column}, 'YYYY-MM-DD')")),
            Temporal::Time => format!("to_char({column}, 'HH24:MI:SS.US')"),
            Temporal::TimeTz => {
                format!("to_char(({column} AT TIME ZONE 'UTC')::time, 'HH24:MI:SS.US\"Z\"')")
            }
            Temporal::Timestamp => finite(format!("to_char({column}, {TIMESTAMP_FORM})")),
            Temporal::TimestampTz => finite(format!(
                "to_char({column} AT TIME ZONE 'UTC', {TIMESTAMP_FORM})"
            )),
        }
    }
}

/// The kind of a type as `format_type` spells it; `None`: not supported.
pub(crate) fn kind(declared: &str) -> Option<Kind> {
    let base = declared.split('(').next().unwrap_or("").trim();
    Some(match base {
        "smallint" | "integer" | "bigint" => Kind::Int,
        "boolean" => Kind::Bool,
        "real" | "double precision" => Kind::Float,
        "numeric" => Kind::Numeric,
        "text" | "character varying" | "character" | "name" | "\"char\"" => Kind::Text,
        "date" => Kind::Temporal(Temporal::Date),
        "time without time zone" => Kind::Temporal(Temporal::Time),
        "time with time zone" => Kind::Temporal(Temporal::TimeTz),
        "timestamp without time zone" => Kind::Temporal(Temporal::Timestamp),
        "timestamp with time zone" => Kind::Temporal(Temporal::TimestampTz),
        "uuid" | "json" | "jsonb" => Kind::TextForm,
        "bytea" => Kind::Bytes,
        _ => {
            // `time(3) without time zone` spells its precision in the middle.
            let squeezed: String = declared
                .split(['(', ')'])
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(_, s)| s)
                .collect::<Vec<_>>()
                .join("");
            let squeezed = squeezed.split_whitespace().collect::<Vec<_>>().join(" ");
            if squeezed != declared {
                return kind(&squeezed);
            }
            return None;
        }
    })
}

impl Kind {
    pub(crate) fn column_type(self) -> ColumnType {
        match self {
            Kind::Int | Kind::Bool => ColumnType::Integer,
            Kind::Float => ColumnType::Real,
            Kind::Numeric => ColumnType::Decimal,
            Kind::Text | Kind::Temporal(_) | Kind::TextForm => ColumnType::Text,
            Kind::Bytes => ColumnType::Blob,
        }
    }
}

/// PostgreSQL's SQL for the engine-neutral code: columns read and compared through
/// their canonical expressions, values bound as text cast to the column's type, rows
/// held `FOR UPDATE`.
pub(crate) struct PgDialect;

impl SqlDialect for PgDialect {
    fn filter_dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn read_expr(&self, column: &str, declared: &str) -> String {
        read_expr(column, declared)
    }

    fn typed_filters(&self) -> bool {
        true
    }

    fn filter_expr(&self, column: &str, declared: &str) -> String {
        filter_expr(column, declared)
    }

    fn param(&self, n: usize, declared: &str) -> String {
        write_param(n, declared)
    }

    fn lock_row(&self) -> &'static str {
        " FOR UPDATE"
    }
}

/// The canonical expression a column is read (and filtered) through.
pub(crate) fn read_expr(column: &str, declared: &str) -> String {
    match kind(declared) {
        Some(Kind::Int) => format!("{column}::int8"),
        Some(Kind::Bool) => format!("{column}::int4::int8"),
        Some(Kind::Float) => format!("{column}::float8"),
        Some(Kind::Numeric) => format!("{column}::text"),
        Some(Kind::Text) => format!("{column}::text"),
        Some(Kind::Temporal(t)) => t.read_expr(column),
        Some(Kind::TextForm) | None => format!("{column}::text"),
        Some(Kind::Bytes) => column.to_string(),
    }
}

/// The expression the filter language compares: numbers stay numbers (so indexes
/// and numeric comparisons work), everything else is its canonical text.
/// Text compares binary (`COLLATE "C"`) also when two columns are compared.
pub(crate) fn filter_expr(column: &str, declared: &str) -> String {
    match kind(declared) {
        Some(Kind::Int | Kind::Float | Kind::Numeric | Kind::Bytes) => column.to_string(),
        Some(Kind::Bool) => read_expr(column, declared),
        Some(Kind::Text) => format!("({column} COLLATE \"C\")"),
        _ => format!("({} COLLATE \"C\")", read_expr(column, declared)),
    }
}

/// A placeholder for a value written to a column of this type.
pub(crate) fn write_param(n: usize, declared: &str) -> String {
    cast_to(&raw_param(n, declared), declared)
}

/// The parameter itself, as sent: bytea for a bytea column, text for every other.
pub(crate) fn raw_param(n: usize, declared: &str) -> String {
    match kind(declared) {
        Some(Kind::Bytes) => format!("${n}::bytea"),
        _ => format!("${n}::text"),
    }
}

/// An array of [`raw_param`]s: `$n` as `bytea[]` for a bytea column, `text[]` for
/// every other (a batch's values of one column).
pub(crate) fn array_param(n: usize, declared: &str) -> String {
    format!("{}[]", raw_param(n, declared))
}

/// An expression of [`raw_param`]'s type as the column's own type.
///
/// A timestamp without time zone is taken as UTC: the text goes through
/// `timestamptz` (whose input honours a zone or offset the text carries, and takes
/// UTC, the pool's session zone, when it carries none) and then to UTC wall-clock
/// time. `timestamptz` input keeps the instant the text names whatever the session.
pub(crate) fn cast_to(expr: &str, declared: &str) -> String {
    match kind(declared) {
        Some(Kind::Bytes) => expr.to_string(),
        Some(Kind::Temporal(Temporal::Timestamp)) => {
            format!("CAST((CAST({expr} AS timestamptz) AT TIME ZONE 'UTC') AS {declared})")
        }
        _ => format!("CAST({expr} AS {declared})"),
    }
}

/// Whether the column's values have a canonical text that a device may write in
/// another form (times, numerics): [`canonical_expr`] turns such a value into it.
pub(crate) fn has_canonical_text(declared: &str) -> bool {
    matches!(kind(declared), Some(Kind::Temporal(_) | Kind::Numeric))
}

/// The canonical text of parameter `$n` (text) as a value of the column: what the
/// column would hold, read as it travels.
pub(crate) fn canonical_expr(n: usize, declared: &str) -> String {
    read_expr(&format!("({})", write_param(n, declared)), declared)
}

/// The key as a parameter for a key column of this type, or `None` when it cannot be
/// one ([`key_fits`], or not writable as the type): such a key names no row.
pub(crate) fn key_param(key: &Value, declared: &str) -> Option<Param> {
    let typed = write_value(key, declared);
    (key_fits(key, declared) && !matches!(typed, Param::Invalid)).then_some(typed)
}

/// Whether a key value can be a key of a column of this type at all: a key that
/// cannot names no row (an unknown key), and must not reach the database as a cast
/// that fails.
pub(crate) fn key_fits(key: &Value, declared: &str) -> bool {
    match (kind(declared), key) {
        // Within the column's own range: a key beyond it names no row (and a cast of
        // it would fail the statement).
        (Some(Kind::Int), Value::Integer(i)) => {
            let d = declared.to_ascii_lowercase();
            if d == "smallint" || d == "int2" || d == "smallserial" {
                i16::try_from(*i).is_ok()
            } else if d == "integer" || d == "int" || d == "int4" || d == "serial" {
                i32::try_from(*i).is_ok()
            } else {
                true
            }
        }
        (Some(Kind::Bool), Value::Integer(_)) => true,
        (Some(Kind::Int | Kind::Bool), _) => false,
        (Some(Kind::Float), v) => {
            matches!(v, Value::Integer(_)) || matches!(v, Value::Real(r) if r.is_finite())
        }
        (Some(Kind::Numeric), v) => match v {
            Value::Integer(_) => true,
            Value::Real(r) => r.is_finite(),
            Value::Text(t) => fieldsync_proto::value::is_decimal(t),
            _ => false,
        },
        (Some(Kind::Text), v) => matches!(v, Value::Text(_) | Value::Integer(_)),
        (Some(Kind::TextForm), Value::Text(t)) if declared == "uuid" => is_uuid(t),
        (Some(Kind::Bytes), v) => matches!(v, Value::Blob(_) | Value::Text(_)),
        (_, Value::Null | Value::Blob(_)) => false,
        // date/time and json keys: the database judges them.
        _ => true,
    }
}

/// The text forms PostgreSQL's uuid input takes that fieldsync makes or passes on:
/// 32 hex digits, with or without the four hyphens of 8-4-4-4-12, optional braces.
fn is_uuid(text: &str) -> bool {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let hex: String = inner.chars().filter(|c| *c != '-').collect();
    let hyphens_ok = inner.len() == 32
        || (inner.len() == 36
            && inner
                .char_indices()
                .all(|(i, c)| (c == '-') == matches!(i, 8 | 13 | 18 | 23)));
    hyphens_ok && hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// A value as the parameter [`write_param`] declares.
pub(crate) fn write_value(v: &Value, declared: &str) -> Param {
    if kind(declared) == Some(Kind::Bytes) {
        return match v {
            Value::Blob(b) => Param::Bytes(b.clone()),
            Value::Text(t) => Param::Bytes(t.as_bytes().to_vec()),
            Value::Null => Param::Null,
            other => Param::Bytes(text_of(other).into_bytes()),
        };
    }
    match v {
        Value::Null => Param::Null,
        // Bytes for a text column: only valid UTF-8 can be stored.
        Value::Blob(b) => match String::from_utf8(b.clone()) {
            Ok(s) => Param::Text(s),
            Err(_) => Param::Invalid,
        },
        other => Param::Text(text_of(other)),
    }
}

/// A key column's text as `fieldsync.rows` holds it: the text the key travels as, so a
/// device's key names its row. The tracking triggers run in the office's sessions, so
/// it must not depend on their settings: times in their canonical form (`::text`
/// follows `TimeZone` and `DateStyle`); integers, text, uuid and numeric are the same
/// as `::text` in every session.
pub(crate) fn key_text(column: &str, declared: &str) -> String {
    match kind(declared) {
        Some(Kind::Temporal(t)) => t.read_expr(column),
        _ => format!("{column}::text"),
    }
}

/// A value's text form: what a text parameter carries, and a key as
/// `fieldsync.rows` holds it ([`key_text`]).
pub(crate) fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) if r.is_nan() => "NaN".into(),
        Value::Real(r) if r.is_infinite() => if *r > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        Value::Real(r) => format!("{r:?}"),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// A bound parameter: text, bytes or NULL (or a value no column can take).
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Null,
    Text(String),
    Bytes(Vec<u8>),
    /// Bytes that are not UTF-8, for a text column: refused before it is sent.
    Invalid,
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Text(s) => s.to_sql(ty, out),
            Param::Bytes(b) => b.to_sql(ty, out),
            Param::Invalid => Err("bytes that are not UTF-8 cannot be stored as text".into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TEXT | Type::BYTEA)
    }

    to_sql_checked!();
}

/// A filter bind (`$N::int8`, `::float8`, `::text`, `::bytea`) as the writer typed it.
#[derive(Debug)]
pub(crate) struct Bind<'a>(pub &'a Value);

impl ToSql for Bind<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => i.to_sql(ty, out),
            Value::Real(r) => r.to_sql(ty, out),
            Value::Text(t) => t.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8 | Type::FLOAT8 | Type::TEXT | Type::BYTEA | Type::VARCHAR
        )
    }

    to_sql_checked!();
}

/// Column `i` of a row read through [`read_expr`], borrowed from the row.
pub(crate) fn value_ref<'r>(row: &'r postgres::Row, i: usize, kind: Option<Kind>) -> ValueRef<'r> {
    let v = match kind {
        Some(Kind::Int | Kind::Bool) => row.get::<_, Option<i64>>(i).map(ValueRef::Integer),
        Some(Kind::Float) => row.get::<_, Option<f64>>(i).map(ValueRef::Real),
        Some(Kind::Bytes) => row.get::<_, Option<&[u8]>>(i).map(ValueRef::Blob),
        _ => row.get::<_, Option<&str>>(i).map(ValueRef::Text),
    };
    v.unwrap_or(ValueRef::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_to_kinds() {
        assert_eq!(kind("integer"), Some(Kind::Int));
        assert_eq!(kind("character varying(20)"), Some(Kind::Text));
        assert_eq!(kind("numeric(10,2)"), Some(Kind::Numeric));
        assert_eq!(
            kind("timestamp(3) with time zone"),
            Some(Kind::Temporal(Temporal::TimestampTz))
        );
        assert_eq!(
            kind("time(0) without time zone"),
            Some(Kind::Temporal(Temporal::Time))
        );
        assert_eq!(kind("jsonb"), Some(Kind::TextForm));
        assert_eq!(kind("interval"), None);
        assert_eq!(kind("integer[]"), None);
        assert_eq!(kind("point"), None);
    }

    #[test]
    fn keys_that_cannot_be_keys_of_the_column_are_told_apart() {
        assert!(key_fits(&Value::Integer(5), "bigint"));
        assert!(!key_fits(&Value::Text("not-a-number".into()), "bigint"));
        assert!(!key_fits(&Value::Real(1.5), "integer"));
        assert!(key_fits(&Value::Text("a".into()), "text"));
        assert!(key_fits(
            &Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            "uuid"
        ));
        assert!(!key_fits(&Value::Text("a0eebc99-9c0b".into()), "uuid"));
        assert!(!key_fits(
            &Value::Text("a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            "uuid"
        ));
        assert!(!key_fits(&Value::Null, "text"));
    }
}
