//! The task filter language: parser, type checker, SQL compiler and in-Rust evaluator.
//!
//! A task's `filter` picks the rows of a table that belong to its slice. The same filter
//! runs in three places: as SQL on the main database (SQLite or PostgreSQL), inside the
//! replica's SQLite triggers (inlined, since triggers cannot take bound parameters), and
//! in Rust ([`Expr::eval`]). All three give it one meaning:
//!
//! - Text compares as binary bytes (UTF-8 memcmp), whatever collation the column
//!   declares: SQLite gets `COLLATE BINARY`, PostgreSQL `COLLATE "C"`.
//! - `LIKE` is case-sensitive and knows only `%` (any run of characters) and `_` (one
//!   character). There is no `ESCAPE` clause, and `\` is an ordinary character. SQLite's
//!   own `LIKE` ignores ASCII case, so for SQLite it compiles to `GLOB` with the pattern
//!   translated (`%` → `*`, `_` → `?`, and GLOB's `*`, `?`, `[` written as `[*]`, `[?]`,
//!   `[[]`).
//! - SQL's three-valued logic: a comparison with NULL is unknown (`None` in Rust), and
//!   `AND`, `OR`, `NOT`, `IN` and `BETWEEN` follow the SQL truth tables. A row belongs to
//!   the slice only when the filter is true.
//! - Integers and reals compare numerically and exactly ([`Value::sql_cmp`]). Text never
//!   silently turns into a number or back: the type checker refuses mixed comparisons,
//!   and the SQLite SQL compares `+column` (an expression without type affinity).
//!   PostgreSQL compares an int8 with a float8 by rounding the int8 to a double, so its
//!   SQL writes literals beyond ±2^53 so that they compare exactly with either, and the
//!   checker refuses to compare an integer column with a real column.
//! - Decimal columns ([`ColumnType::Decimal`], PostgreSQL's `numeric`) hold their exact
//!   text and compare as numbers: PostgreSQL compares the `numeric` column itself,
//!   [`Expr::eval_typed`] compares the text exactly (as a double with a real, as
//!   PostgreSQL does), and the device's SQLite, whose caller writes the column as
//!   `CAST(col AS NUMERIC)`, compares SQLite's number for it (exact to 15 digits).
//!
//! Grammar (keywords are case-insensitive):
//!
//! ```text
//! filter    = or
//! or        = and { OR and }
//! and       = not { AND not }
//! not       = NOT not | predicate
//! predicate = "(" or ")"
//!           | operand ( "=" | "<>" | "!=" | "<" | "<=" | ">" | ">=" ) operand
//!           | operand IS [NOT] NULL
//!           | operand [NOT] IN "(" value { "," value } ")"
//!           | operand [NOT] LIKE ( string | param )
//!           | operand [NOT] BETWEEN operand AND operand
//! operand   = column | value
//! value     = string | integer | decimal | TRUE | FALSE | NULL | param
//! column    = [A-Za-z_][A-Za-z0-9_]*  |  '"' name with "" for a quote '"'
//! param     = $user | $device
//! ```
//!
//! Strings are single-quoted with `''` for a quote; `TRUE` and `FALSE` are the integers
//! 1 and 0; numbers may carry a leading `-` and decimals an exponent (`1.5e-3`). Nothing
//! else is accepted: no `;`, comments, functions, subqueries or other parameters. A
//! filter has at most [`MAX_FILTER_BYTES`] bytes and [`MAX_DEPTH`] levels of
//! parentheses and `NOT`, so hostile input cannot exhaust the stack. Positions in errors
//! are 1-based character columns.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::value::{ColumnType, Value, decimal_cmp};
use lexer::Tok;
use parser::Parser;

/// Longest filter [`parse`] accepts, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;

/// Deepest nesting of parentheses and `NOT` that [`parse`] accepts.
pub const MAX_DEPTH: usize = 64;

/// Words that are keywords of the language; as column names they must be double-quoted.
const RESERVED: [&str; 10] = [
    "AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "BETWEEN", "TRUE", "FALSE",
];

/// The values of the parameters `$user` and `$device` (both text).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// The value of `$user`: the user logged in on the device.
    pub user: String,
    /// The value of `$device`: the device's id.
    pub device: String,
}

/// A parameter of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    /// `$user`
    User,
    /// `$device`
    Device,
}

impl Param {
    /// The parameter's value in `params`.
    pub fn value(self, params: &Params) -> &str {
        match self {
            Param::User => &params.user,
            Param::Device => &params.device,
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Param::User => "$user",
            Param::Device => "$device",
        })
    }
}

/// Where something starts in the filter's source: a 1-based character column, or 0 for
/// expressions built in code. A position is not part of an expression's meaning, so all
/// positions compare equal (like spans in `syn`): `parse(a) == parse(b)` when `a` and
/// `b` differ only in spacing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pos(pub usize);

impl PartialEq for Pos {
    fn eq(&self, _other: &Pos) -> bool {
        true
    }
}

/// One side of a predicate: a column, a literal or a parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A column of the filtered table, by name as written (unquoted).
    Column {
        /// The column's name.
        name: String,
        /// Where the column is named in the source.
        at: Pos,
    },
    /// `$user` or `$device` (text).
    Param(Param),
    /// `NULL`.
    Null,
    /// An integer literal (also `TRUE` = 1 and `FALSE` = 0).
    Integer(i64),
    /// A decimal literal.
    Real(f64),
    /// A string literal.
    Text(String),
}

impl Operand {
    /// A column reference without a source position.
    pub fn column(name: &str) -> Operand {
        Operand::Column {
            name: name.to_string(),
            at: Pos(0),
        }
    }

    /// The operand's value on one row.
    fn value(&self, row: &dyn Fn(&str) -> Value, params: &Params) -> Value {
        match self {
            Operand::Column { name, .. } => row(name),
            Operand::Param(param) => Value::Text(param.value(params).to_string()),
            Operand::Null => Value::Null,
            Operand::Integer(i) => Value::Integer(*i),
            // SQL has no NaN; the compiled SQL says NULL for it, so does the evaluator.
            Operand::Real(r) if r.is_nan() => Value::Null,
            Operand::Real(r) => Value::Real(*r),
            Operand::Text(s) => Value::Text(s.clone()),
        }
    }

    /// Whether the operand is text whatever the row (a string literal or a parameter).
    fn is_text_value(&self) -> bool {
        matches!(self, Operand::Text(_) | Operand::Param(_))
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>` (also written `!=`)
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// Whether two values in the order `ordering` satisfy the operator.
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            CmpOp::Eq => ordering == Ordering::Equal,
            CmpOp::Ne => ordering != Ordering::Equal,
            CmpOp::Lt => ordering == Ordering::Less,
            CmpOp::Le => ordering != Ordering::Greater,
            CmpOp::Gt => ordering == Ordering::Greater,
            CmpOp::Ge => ordering != Ordering::Less,
        }
    }

    /// The operator with its operands swapped: `a < b` is `b > a`.
    fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            CmpOp::Eq | CmpOp::Ne => self,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pattern of a `LIKE`: known when the SQL is compiled, so it can be translated.
#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    /// A string literal.
    Text(String),
    /// `$user` or `$device`, whose value is the pattern (`%` and `_` in it are wildcards).
    Param(Param),
}

impl Pattern {
    fn text<'a>(&'a self, params: &'a Params) -> &'a str {
        match self {
            Pattern::Text(s) => s,
            Pattern::Param(param) => param.value(params),
        }
    }
}

/// A parsed filter: the syntax tree of the language.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// `left op right`
    Compare {
        /// Left operand.
        left: Operand,
        /// The operator.
        op: CmpOp,
        /// Right operand.
        right: Operand,
    },
    /// `operand [NOT] IN (list)`; the list is never empty.
    In {
        /// The value looked up.
        operand: Operand,
        /// The values (literals and parameters) it is compared with.
        list: Vec<Operand>,
        /// `NOT IN`.
        negated: bool,
    },
    /// `operand [NOT] BETWEEN low AND high`, that is `operand >= low AND operand <= high`.
    Between {
        /// The value tested.
        operand: Operand,
        /// Lower bound, inclusive.
        low: Operand,
        /// Upper bound, inclusive.
        high: Operand,
        /// `NOT BETWEEN`.
        negated: bool,
    },
    /// `operand [NOT] LIKE pattern`: case-sensitive, `%` and `_` only, no escape.
    Like {
        /// The text matched.
        operand: Operand,
        /// The pattern.
        pattern: Pattern,
        /// `NOT LIKE`.
        negated: bool,
    },
    /// `operand IS [NOT] NULL`.
    IsNull {
        /// The value tested.
        operand: Operand,
        /// `IS NOT NULL`.
        negated: bool,
    },
    /// `NOT expr`.
    Not(Box<Expr>),
    /// `left AND right`.
    And(Box<Expr>, Box<Expr>),
    /// `left OR right`.
    Or(Box<Expr>, Box<Expr>),
}

/// Why a filter was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FilterError {
    /// The filter is longer than [`MAX_FILTER_BYTES`].
    #[error("filter too long: {len} bytes, at most {max}")]
    TooLong {
        /// The filter's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Parentheses and `NOT` nest deeper than [`MAX_DEPTH`].
    #[error("filter nested too deeply at {at}: at most {max} levels of parentheses and NOT")]
    TooDeep {
        /// Where the limit was passed.
        at: usize,
        /// The limit.
        max: usize,
    },
    /// A token that does not fit the grammar where it stands.
    #[error("unexpected {found} at {at}, expected {expected}")]
    Unexpected {
        /// The token found, quoted, or "end of filter".
        found: String,
        /// Its position.
        at: usize,
        /// What the grammar allows there.
        expected: &'static str,
    },
    /// `--`: the language has no comments.
    #[error("comments are not allowed (`--` at {at})")]
    Comment {
        /// Where the `--` is.
        at: usize,
    },
    /// A string or quoted column name without its closing quote.
    #[error("unterminated {what} starting at {at}")]
    Unterminated {
        /// "string" or "quoted column name".
        what: &'static str,
        /// Where it starts.
        at: usize,
    },
    /// A NUL character inside a string or quoted column name.
    #[error("NUL character at {at}")]
    NulCharacter {
        /// Where it is.
        at: usize,
    },
    /// A `$name` other than `$user` and `$device`.
    #[error("unknown parameter `${name}` at {at} (the parameters are $user and $device)")]
    UnknownParameter {
        /// The name after `$`.
        name: String,
        /// Where it is.
        at: usize,
    },
    /// `name(`: the language has no functions.
    #[error("function calls are not allowed (`{name}(` at {at})")]
    FunctionCall {
        /// The would-be function.
        name: String,
        /// Where it is.
        at: usize,
    },
    /// A malformed number such as `12abc` or `1e`.
    #[error("invalid number `{text}` at {at}")]
    InvalidNumber {
        /// The number as written.
        text: String,
        /// Where it is.
        at: usize,
    },
    /// An integer beyond 64 bits or a decimal beyond the range of `f64`.
    #[error("number `{text}` at {at} is out of range")]
    NumberOutOfRange {
        /// The number as written.
        text: String,
        /// Where it is.
        at: usize,
    },
    /// [`Expr::check`]: the table has no such column.
    #[error("unknown column `{name}`{}", at_suffix(*.at))]
    UnknownColumn {
        /// The column's name.
        name: String,
        /// Where it is named (0: unknown).
        at: usize,
    },
    /// [`Expr::check`]: operands whose types do not line up.
    #[error("type error: {0}")]
    Type(String),
}

fn at_suffix(at: usize) -> String {
    if at == 0 {
        String::new()
    } else {
        format!(" (at {at})")
    }
}

/// The SQL dialect [`Expr::to_sql`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: `?` placeholders, `COLLATE BINARY`, `+column`, `GLOB` for `LIKE`.
    Sqlite,
    /// PostgreSQL: `$N` placeholders with casts, `COLLATE "C"`, `LIKE … ESCAPE ''`, and
    /// numeric literals beyond ±2^53 written to compare exactly with int8 and float8.
    Postgres,
}

/// Parses a filter.
pub fn parse(src: &str) -> Result<Expr, FilterError> {
    if src.len() > MAX_FILTER_BYTES {
        return Err(FilterError::TooLong {
            len: src.len(),
            max: MAX_FILTER_BYTES,
        });
    }
    let mut parser = Parser::new(src)?;
    let expr = parser.parse_or()?;
    if parser.token.tok != Tok::End {
        return Err(parser.unexpected("AND, OR or end of filter"));
    }
    Ok(expr)
}

impl FromStr for Expr {
    type Err = FilterError;

    fn from_str(src: &str) -> Result<Expr, FilterError> {
        parse(src)
    }
}

/// Quotes an identifier for SQL (SQLite and PostgreSQL): `"name"` with `"` doubled.
/// A convenience for writing the `column_sql` argument of [`Expr::to_sql`].
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Expr {
    /// Names of the columns the expression reads, in order of first appearance.
    pub fn columns(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        self.visit_operands(&mut |operand| {
            if let Operand::Column { name, .. } = operand
                && !names.contains(name)
            {
                names.push(name.clone());
            }
        });
        names
    }

    /// Whether the expression uses the parameter (a filter with `$user` changes meaning
    /// when another user logs in).
    pub fn uses_param(&self, param: Param) -> bool {
        match self {
            Expr::Like {
                operand, pattern, ..
            } => *operand == Operand::Param(param) || *pattern == Pattern::Param(param),
            Expr::Not(inner) => inner.uses_param(param),
            Expr::And(left, right) | Expr::Or(left, right) => {
                left.uses_param(param) || right.uses_param(param)
            }
            _ => {
                let mut used = false;
                self.visit_operands(&mut |operand| used |= *operand == Operand::Param(param));
                used
            }
        }
    }

    /// Calls `f` on the operands of this node (not of its children).
    fn visit_operands(&self, f: &mut dyn FnMut(&Operand)) {
        match self {
            Expr::Compare { left, right, .. } => {
                f(left);
                f(right);
            }
            Expr::In { operand, list, .. } => {
                f(operand);
                list.iter().for_each(&mut *f);
            }
            Expr::Between {
                operand, low, high, ..
            } => {
                f(operand);
                f(low);
                f(high);
            }
            Expr::Like { operand, .. } | Expr::IsNull { operand, .. } => f(operand),
            Expr::Not(inner) => inner.visit_operands(f),
            Expr::And(left, right) | Expr::Or(left, right) => {
                left.visit_operands(f);
                right.visit_operands(f);
            }
        }
    }
}

mod check;
mod eval;
mod lexer;
mod parser;
mod sql;

#[cfg(test)]
mod tests;
