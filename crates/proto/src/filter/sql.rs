//! The filter written as SQL for SQLite or PostgreSQL, bound or inline.

use super::eval::like_to_glob;
use super::*;

impl Expr {
    /// Parameterised SQL for a WHERE clause; binds are pushed to `binds` in order.
    ///
    /// Placeholders are `?` for SQLite and `$N::type` for PostgreSQL, where N is
    /// `binds.len()` after the push, so numbering continues after binds already present.
    /// `NULL` is written inline. `column_sql` renders a column reference; the caller
    /// qualifies and quotes it (e.g. `"t"."region"`, see [`quote_ident`]).
    ///
    /// For PostgreSQL a comparison gets `COLLATE "C"` when one side is a string or a
    /// parameter; a comparison of two text columns uses their own collation unless
    /// `column_sql` adds `COLLATE "C"` to text columns (it knows their types; this does
    /// not). A real literal beyond ±2^53 (a whole number) is bound as the integer it is,
    /// and a comparison with an integer literal no double holds becomes a few exact
    /// comparisons, so that int8 and float8 columns alike compare exactly.
    pub fn to_sql(
        &self,
        dialect: Dialect,
        column_sql: &dyn Fn(&str) -> String,
        params: &Params,
        binds: &mut Vec<Value>,
    ) -> String {
        let mut writer = SqlWriter {
            dialect,
            column_sql,
            params,
            binds: Some(binds),
            out: String::new(),
        };
        writer.expr(self);
        writer.out
    }

    /// The same SQL as [`Expr::to_sql`] with literals and parameters written inline as
    /// quoted SQL literals, for SQLite triggers (which cannot take bound parameters).
    /// Strings are quoted with `''` doubling (NUL characters as `char(0)`), reals in
    /// Rust's shortest round-trip form, blobs as `X'..'`.
    pub fn to_sql_inline(
        &self,
        dialect: Dialect,
        column_sql: &dyn Fn(&str) -> String,
        params: &Params,
    ) -> String {
        let mut writer = SqlWriter {
            dialect,
            column_sql,
            params,
            binds: None,
            out: String::new(),
        };
        writer.expr(self);
        writer.out
    }
}

struct SqlWriter<'a> {
    dialect: Dialect,
    column_sql: &'a dyn Fn(&str) -> String,
    params: &'a Params,
    /// `None`: write values inline as literals.
    binds: Option<&'a mut Vec<Value>>,
    out: String,
}

impl SqlWriter<'_> {
    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::Compare { left, op, right } => self.compare(left, *op, right),
            Expr::In {
                operand,
                list,
                negated,
            } => {
                if self.dialect == Dialect::Postgres && pg_in_as_comparisons(operand, list) {
                    // What SQL defines IN as: `x IN (a, b)` is `x = a OR x = b`, and
                    // `x NOT IN (a, b)` is `x <> a AND x <> b`, NULLs included.
                    let (op, joiner) = if *negated {
                        (CmpOp::Ne, " AND ")
                    } else {
                        (CmpOp::Eq, " OR ")
                    };
                    self.out.push('(');
                    for (idx, item) in list.iter().enumerate() {
                        if idx > 0 {
                            self.out.push_str(joiner);
                        }
                        self.compare(operand, op, item);
                    }
                    self.out.push(')');
                    return;
                }
                let textual = operand.is_text_value() || list.iter().any(Operand::is_text_value);
                self.compared(operand);
                self.collate_c(textual);
                self.out
                    .push_str(if *negated { " NOT IN (" } else { " IN (" });
                for (idx, item) in list.iter().enumerate() {
                    if idx > 0 {
                        self.out.push_str(", ");
                    }
                    self.compared(item);
                }
                self.out.push(')');
            }
            Expr::Between {
                operand,
                low,
                high,
                negated,
            } => {
                if self.dialect == Dialect::Postgres
                    && [operand, low, high]
                        .iter()
                        .any(|o| inexact_integer(o).is_some())
                {
                    // `x BETWEEN a AND b` is `x >= a AND x <= b`, each kept exact.
                    if *negated {
                        self.out.push_str("NOT ");
                    }
                    self.out.push('(');
                    self.compare(operand, CmpOp::Ge, low);
                    self.out.push_str(" AND ");
                    self.compare(operand, CmpOp::Le, high);
                    self.out.push(')');
                    return;
                }
                let textual = [operand, low, high].iter().any(|o| o.is_text_value());
                self.compared(operand);
                self.collate_c(textual);
                self.out.push_str(if *negated {
                    " NOT BETWEEN "
                } else {
                    " BETWEEN "
                });
                // PostgreSQL's grammar takes no COLLATE in the lower bound, which a
                // caller's column (`"t"."name" COLLATE "C"`) may carry.
                let paren =
                    self.dialect == Dialect::Postgres && matches!(low, Operand::Column { .. });
                if paren {
                    self.out.push('(');
                }
                self.compared(low);
                if paren {
                    self.out.push(')');
                }
                self.out.push_str(" AND ");
                self.compared(high);
            }
            Expr::Like {
                operand,
                pattern,
                negated,
            } => {
                let pattern = pattern.text(self.params);
                self.plain(operand);
                let not = if *negated { " NOT" } else { "" };
                match self.dialect {
                    // SQLite's LIKE ignores ASCII case unless a pragma says otherwise;
                    // GLOB is always case-sensitive.
                    Dialect::Sqlite => {
                        self.out.push_str(&format!("{not} GLOB "));
                        self.value(Value::Text(like_to_glob(pattern)));
                    }
                    // PostgreSQL's LIKE is case-sensitive; `\` is its default escape.
                    Dialect::Postgres => {
                        self.collate_c(true);
                        self.out.push_str(&format!("{not} LIKE "));
                        self.value(Value::Text(pattern.to_string()));
                        self.out.push_str(" ESCAPE ''");
                    }
                }
            }
            Expr::IsNull { operand, negated } => {
                self.plain(operand);
                self.out
                    .push_str(if *negated { " IS NOT NULL" } else { " IS NULL" });
            }
            Expr::Not(inner) => {
                self.out.push_str("NOT (");
                self.expr(inner);
                self.out.push(')');
            }
            Expr::And(left, right) => self.binary(expr, left, "AND", right),
            Expr::Or(left, right) => self.binary(expr, left, "OR", right),
        }
    }

    /// `left op right`. On PostgreSQL a comparison with an integer literal that a
    /// double cannot hold goes through [`SqlWriter::pg_inexact`].
    fn compare(&mut self, left: &Operand, op: CmpOp, right: &Operand) {
        if self.dialect == Dialect::Postgres {
            if let Some(i) = inexact_integer(right) {
                return self.pg_inexact(left, op, i);
            }
            if let Some(i) = inexact_integer(left) {
                return self.pg_inexact(right, op.flipped(), i);
            }
        }
        if self.dialect == Dialect::Sqlite && op == CmpOp::Eq && self.binds.is_some() {
            let pair = match (left, right) {
                (Operand::Column { .. }, Operand::Column { .. }) => None,
                (Operand::Column { .. }, _) => Some((left, right)),
                (_, Operand::Column { .. }) => Some((right, left)),
                _ => None,
            };
            if let Some((column, value)) = pair {
                return self.sqlite_indexed_eq(column, value);
            }
        }
        let textual = left.is_text_value() || right.is_text_value();
        self.compared(left);
        self.collate_c(textual);
        self.out.push_str(&format!(" {op} "));
        self.compared(right);
    }

    /// `column = value` on SQLite, bound: `(col COLLATE BINARY = v AND +col COLLATE
    /// BINARY = v)`. The second term is the comparison's meaning (no affinity applied,
    /// [`SqlWriter::compared`]); the first lets SQLite find the rows by an index on the
    /// column, which the unary `+` alone hides. The first holds wherever the second
    /// does (two values equal without affinity stay equal once the column's affinity
    /// converts the value: a stored value was converted the same way when written),
    /// and each is NULL exactly when the column or the value is, so the pair means the
    /// second alone, under NOT too. Only where values are bound (the server's slice
    /// and upload queries); a device's triggers keep the single term.
    fn sqlite_indexed_eq(&mut self, column: &Operand, value: &Operand) {
        let Operand::Column { name, .. } = column else {
            unreachable!("called with a column")
        };
        let col = (self.column_sql)(name);
        self.out.push_str(&format!("({col} COLLATE BINARY = "));
        self.compared(value);
        self.out.push_str(" AND ");
        self.compared(column);
        self.out.push_str(" = ");
        self.compared(value);
        self.out.push(')');
    }

    /// `x op i` on PostgreSQL, for an integer `i` that no double holds (beyond ±2^53),
    /// exact whether `x` is an integer or a double; the writer does not know which.
    ///
    /// PostgreSQL compares int8 with float8 by rounding the int8 to float8, so a
    /// double column compared with `$1::int8` would meet `i` rounded to a neighbour.
    /// With `below < i < above` the doubles next to `i` (whole numbers, written as
    /// exact integers), each form below means `x op i` for an integer `x` (the terms
    /// with `below` and `above` follow from it) and for a double `x`, which is never
    /// strictly between them (the term with `i` then only restates them):
    ///
    /// - `x < i`, `x <= i`: `x <= below OR (x op i AND x < above)`
    /// - `x > i`, `x >= i`: `x >= above OR (x op i AND x > below)`
    /// - `x = i`: `x = i AND x > below AND x < above`
    /// - `x <> i`: `x <> i OR x <= below OR x >= above`
    ///
    /// A NULL `x` makes every term and so the whole NULL.
    fn pg_inexact(&mut self, x: &Operand, op: CmpOp, i: i64) {
        let rounded = i as f64;
        let (below, above) = if (rounded as i128) < i128::from(i) {
            (rounded, rounded.next_up())
        } else {
            (rounded.next_down(), rounded)
        };
        // Whole numbers within [-2^63, 2^63]: exact as i128.
        let (below, above) = (below as i128, above as i128);
        let i = i128::from(i);
        // Three terms and the two words between them; `OR (` opens a group that the
        // end closes.
        let (terms, joiners) = match op {
            CmpOp::Lt | CmpOp::Le => (
                [(CmpOp::Le, below), (op, i), (CmpOp::Lt, above)],
                [" OR (", " AND "],
            ),
            CmpOp::Gt | CmpOp::Ge => (
                [(CmpOp::Ge, above), (op, i), (CmpOp::Gt, below)],
                [" OR (", " AND "],
            ),
            CmpOp::Eq => (
                [(CmpOp::Eq, i), (CmpOp::Gt, below), (CmpOp::Lt, above)],
                [" AND ", " AND "],
            ),
            CmpOp::Ne => (
                [(CmpOp::Ne, i), (CmpOp::Le, below), (CmpOp::Ge, above)],
                [" OR ", " OR "],
            ),
        };
        self.out.push('(');
        for (idx, (term_op, n)) in terms.into_iter().enumerate() {
            if idx > 0 {
                self.out.push_str(joiners[idx - 1]);
            }
            self.whole_term(x, term_op, n);
        }
        if joiners[0].ends_with('(') {
            self.out.push(')');
        }
        self.out.push(')');
    }

    /// `x op n` for a whole number `n` in [-2^63, 2^63]: an int8 value, or for 2^63
    /// (beyond int8) the numeric constant, which PostgreSQL compares exactly with an
    /// int8 and turns into the double 2^63 for a float8.
    fn whole_term(&mut self, x: &Operand, op: CmpOp, n: i128) {
        self.compared(x);
        self.out.push_str(&format!(" {op} "));
        match i64::try_from(n) {
            Ok(n) => self.value(Value::Integer(n)),
            Err(_) => {
                assert_eq!(n, 1 << 63, "a neighbour of an i64 beyond int8");
                self.out.push_str(TWO_POW_63);
            }
        }
    }

    fn binary(&mut self, parent: &Expr, left: &Expr, keyword: &str, right: &Expr) {
        self.child(parent, left, false);
        self.out.push_str(&format!(" {keyword} "));
        self.child(parent, right, true);
    }

    fn child(&mut self, parent: &Expr, child: &Expr, is_right: bool) {
        if needs_parens(parent, child, is_right) {
            self.out.push('(');
            self.expr(child);
            self.out.push(')');
        } else {
            self.expr(child);
        }
    }

    /// An operand of a comparison, `IN` or `BETWEEN`. In SQLite a column is written
    /// `+col COLLATE BINARY`: the unary `+` makes an expression without type affinity
    /// (so no operand is converted before comparing) and the explicit collation
    /// overrides one the column declares (`COLLATE NOCASE`).
    fn compared(&mut self, operand: &Operand) {
        match (operand, self.dialect) {
            (Operand::Column { name, .. }, Dialect::Sqlite) => {
                let column = (self.column_sql)(name);
                self.out.push_str(&format!("+{column} COLLATE BINARY"));
            }
            _ => self.plain(operand),
        }
    }

    /// `COLLATE "C"` after the left operand of a PostgreSQL text comparison.
    fn collate_c(&mut self, textual: bool) {
        if textual && self.dialect == Dialect::Postgres {
            self.out.push_str(" COLLATE \"C\"");
        }
    }

    fn plain(&mut self, operand: &Operand) {
        match operand {
            Operand::Column { name, .. } => {
                let column = (self.column_sql)(name);
                self.out.push_str(&column);
            }
            Operand::Param(param) => {
                self.value(Value::Text(param.value(self.params).to_string()));
            }
            Operand::Null => self.out.push_str("NULL"),
            Operand::Integer(i) => self.value(Value::Integer(*i)),
            Operand::Real(r) => match (self.dialect, pg_whole_real(*r)) {
                // PostgreSQL would compare an int8 column with `$1::float8` by rounding
                // the column's values to float8; the integer the real is compares
                // exactly with int8 and float8 alike.
                (Dialect::Postgres, Some(n)) => match i64::try_from(n) {
                    Ok(n) => self.value(Value::Integer(n)),
                    Err(_) => self.out.push_str(TWO_POW_63),
                },
                _ => self.value(Value::Real(*r)),
            },
            Operand::Text(s) => self.value(Value::Text(s.clone())),
        }
    }

    /// A bind placeholder, or the literal when inlining.
    fn value(&mut self, value: Value) {
        if value.is_null() || matches!(value, Value::Real(r) if r.is_nan()) {
            self.out.push_str("NULL");
            return;
        }
        let Some(binds) = self.binds.as_deref_mut() else {
            self.out.push_str(&sql_literal(self.dialect, &value));
            return;
        };
        let pg_type = match &value {
            Value::Integer(_) => "int8",
            Value::Real(_) => "float8",
            Value::Text(_) => "text",
            Value::Blob(_) | Value::Null => "bytea",
        };
        binds.push(value);
        match self.dialect {
            Dialect::Sqlite => self.out.push('?'),
            Dialect::Postgres => self.out.push_str(&format!("${}::{pg_type}", binds.len())),
        }
    }
}

/// Whether a child of AND/OR/NOT needs parentheses. AND and OR associate to the left,
/// so `a AND b AND c` is `(a AND b) AND c`; mixed AND/OR are always parenthesised for
/// the reader, though AND binds tighter.
pub(super) fn needs_parens(parent: &Expr, child: &Expr, is_right: bool) -> bool {
    match (parent, child) {
        (Expr::Not(_), Expr::And(..) | Expr::Or(..)) => true,
        (Expr::And(..), Expr::Or(..)) | (Expr::Or(..), Expr::And(..)) => true,
        (Expr::And(..), Expr::And(..)) | (Expr::Or(..), Expr::Or(..)) => is_right,
        _ => false,
    }
}

/// 2^63, one past `i64::MAX`, as a PostgreSQL numeric constant.
const TWO_POW_63: &str = "9223372036854775808";

/// 2^53: beyond it a double holds only some integers, and PostgreSQL's int8 → float8
/// conversion (how it compares int8 with float8) rounds.
const F64_EXACT_INTEGERS: f64 = (1u64 << 53) as f64;

/// 2^63 as a double.
const F64_TWO_POW_63: f64 = (1u64 << 63) as f64;

/// An integer literal no double holds exactly (so beyond ±2^53).
fn inexact_integer(operand: &Operand) -> Option<i64> {
    match operand {
        Operand::Integer(i) if (*i as f64) as i128 != i128::from(*i) => Some(*i),
        _ => None,
    }
}

/// A real literal in [-2^63, 2^63] beyond ±2^53 (so whole), as the integer it is:
/// PostgreSQL compares that integer exactly with both int8 and float8 values, and
/// the real itself only with float8 ones.
fn pg_whole_real(r: f64) -> Option<i128> {
    (r.abs() >= F64_EXACT_INTEGERS && r.abs() <= F64_TWO_POW_63).then_some(r as i128)
}

/// Whether PostgreSQL needs `IN` written as single comparisons: when an integer no
/// double holds is involved, or the list mixes integers and reals, since PostgreSQL
/// converts the operand and the whole list to one type (float8), rounding integers.
fn pg_in_as_comparisons(operand: &Operand, list: &[Operand]) -> bool {
    let integers = list.iter().any(|item| match item {
        Operand::Integer(_) => true,
        Operand::Real(r) => pg_whole_real(*r).is_some(),
        _ => false,
    });
    let reals = list
        .iter()
        .any(|item| matches!(item, Operand::Real(r) if !r.is_nan() && pg_whole_real(*r).is_none()));
    (integers && reals)
        || std::iter::once(operand)
            .chain(list)
            .any(|o| inexact_integer(o).is_some())
}

/// A value as an SQL literal that reads back as exactly that value and cannot escape
/// its quotes.
pub(super) fn sql_literal(dialect: Dialect, value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        // `-9223372036854775808` would be the negation of an out-of-range integer.
        Value::Integer(i64::MIN) => "(-9223372036854775807 - 1)".to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) if r.is_nan() => "NULL".to_string(),
        Value::Real(r) => match dialect {
            // SQLite reads a decimal too large for f64 as infinity.
            Dialect::Sqlite if r.is_infinite() => {
                if *r > 0.0 { "9e999" } else { "-9e999" }.to_string()
            }
            Dialect::Sqlite => format!("{r:?}"),
            Dialect::Postgres if r.is_infinite() => if *r > 0.0 {
                "'Infinity'::float8"
            } else {
                "'-Infinity'::float8"
            }
            .to_string(),
            Dialect::Postgres => format!("'{r:?}'::float8"),
        },
        Value::Text(s) => sql_text(dialect, s),
        Value::Blob(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            match dialect {
                Dialect::Sqlite => format!("X'{hex}'"),
                Dialect::Postgres => format!("decode('{hex}', 'hex')"),
            }
        }
    }
}

/// A string literal. NUL characters cannot appear inside SQL text, so they are spliced
/// in with `char(0)` (SQLite) or `chr(0)` (PostgreSQL, which refuses them anyway).
/// PostgreSQL gets an `E'…'` literal when the text has a backslash, so the literal
/// means the same whatever `standard_conforming_strings` says.
fn sql_text(dialect: Dialect, text: &str) -> String {
    let quote = |piece: &str| -> String {
        let quoted = piece.replace('\'', "''");
        if dialect == Dialect::Postgres && quoted.contains('\\') {
            format!("E'{}'", quoted.replace('\\', "\\\\"))
        } else {
            format!("'{quoted}'")
        }
    };
    if !text.contains('\0') {
        return quote(text);
    }
    let nul = match dialect {
        Dialect::Sqlite => " || char(0) || ",
        Dialect::Postgres => " || chr(0) || ",
    };
    let pieces: Vec<String> = text.split('\0').map(quote).collect();
    format!("({})", pieces.join(nul))
}
