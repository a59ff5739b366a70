//! The filter evaluated in Rust on one row, with SQL's three-valued logic.

use super::*;

impl Expr {
    /// Evaluates the expression on one row; `None` is SQL's NULL (unknown). `row`
    /// returns a column's value.
    ///
    /// Values compare as [`Value::sql_cmp`] does (SQLite's order, no conversions); the
    /// caller passes numeric values as numbers. `LIKE` on a non-text value matches its
    /// text form, and stops at a NUL character, as SQLite does.
    pub fn eval(&self, row: &dyn Fn(&str) -> Value, params: &Params) -> Option<bool> {
        self.eval_typed(row, &|_| false, params)
    }

    /// [`Expr::eval`] where `decimal` names the [`ColumnType::Decimal`] columns: their
    /// values are text and compare as numbers ([`decimal_cmp`]: exactly with integers
    /// and other decimals, as doubles with reals), as PostgreSQL compares `numeric`.
    pub fn eval_typed(
        &self,
        row: &dyn Fn(&str) -> Value,
        decimal: &dyn Fn(&str) -> bool,
        params: &Params,
    ) -> Option<bool> {
        let ctx = Eval {
            row,
            decimal,
            params,
        };
        ctx.expr(self)
    }

    /// True only when [`Expr::eval_typed`] is `Some(true)`.
    pub fn matches_typed(
        &self,
        row: &dyn Fn(&str) -> Value,
        decimal: &dyn Fn(&str) -> bool,
        params: &Params,
    ) -> bool {
        self.eval_typed(row, decimal, params) == Some(true)
    }

    /// True only when [`Expr::eval`] is `Some(true)`: the rows a WHERE clause keeps.
    pub fn matches(&self, row: &dyn Fn(&str) -> Value, params: &Params) -> bool {
        self.eval(row, params) == Some(true)
    }
}

/// One row's evaluation.
struct Eval<'a> {
    row: &'a dyn Fn(&str) -> Value,
    decimal: &'a dyn Fn(&str) -> bool,
    params: &'a Params,
}

impl Eval<'_> {
    /// An operand's value, and whether it is a decimal column's text.
    fn value(&self, operand: &Operand) -> (Value, bool) {
        let decimal = matches!(operand, Operand::Column { name, .. } if (self.decimal)(name));
        (operand.value(self.row, self.params), decimal)
    }

    fn order(&self, left: &(Value, bool), right: &(Value, bool)) -> Option<Ordering> {
        match (left, right) {
            ((Value::Text(t), true), (other, _)) if !other.is_null() => {
                decimal_cmp(t, other).or_else(|| left.0.sql_cmp(&right.0))
            }
            ((other, _), (Value::Text(t), true)) if !other.is_null() => decimal_cmp(t, other)
                .map(Ordering::reverse)
                .or_else(|| left.0.sql_cmp(&right.0)),
            _ => left.0.sql_cmp(&right.0),
        }
    }

    fn compare(&self, left: &(Value, bool), op: CmpOp, right: &(Value, bool)) -> Option<bool> {
        self.order(left, right).map(|ordering| op.holds(ordering))
    }

    fn expr(&self, expr: &Expr) -> Option<bool> {
        match expr {
            Expr::Compare { left, op, right } => {
                self.compare(&self.value(left), *op, &self.value(right))
            }
            Expr::In {
                operand,
                list,
                negated,
            } => {
                let value = self.value(operand);
                let mut unknown = false;
                for item in list {
                    match self.order(&value, &self.value(item)) {
                        Some(Ordering::Equal) => return Some(!negated),
                        Some(_) => {}
                        None => unknown = true,
                    }
                }
                if unknown { None } else { Some(*negated) }
            }
            Expr::Between {
                operand,
                low,
                high,
                negated,
            } => {
                let value = self.value(operand);
                let inside = and3(
                    self.compare(&value, CmpOp::Ge, &self.value(low)),
                    self.compare(&value, CmpOp::Le, &self.value(high)),
                );
                inside.map(|inside| inside != *negated)
            }
            Expr::Like {
                operand,
                pattern,
                negated,
            } => {
                let value = operand.value(self.row, self.params);
                let text = like_text(&value)?;
                Some(like_match(pattern.text(self.params), &text) != *negated)
            }
            Expr::IsNull { operand, negated } => {
                Some(operand.value(self.row, self.params).is_null() != *negated)
            }
            Expr::Not(inner) => self.expr(inner).map(|b| !b),
            Expr::And(left, right) => and3(self.expr(left), self.expr(right)),
            Expr::Or(left, right) => or3(self.expr(left), self.expr(right)),
        }
    }
}

/// SQL's OR: true wins over unknown, unknown over false.
fn or3(left: Option<bool>, right: Option<bool>) -> Option<bool> {
    match (left, right) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

/// SQL's AND: false wins over unknown, unknown over true.
fn and3(left: Option<bool>, right: Option<bool>) -> Option<bool> {
    match (left, right) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

/// The text `LIKE` sees for a value; `None` for NULL. Only text is expected here (the
/// checker insists on text); other classes are converted roughly as SQLite does.
pub(super) fn like_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::Null => None,
        Value::Text(s) => Some(Cow::Borrowed(s)),
        Value::Integer(i) => Some(Cow::Owned(i.to_string())),
        Value::Real(r) => Some(Cow::Owned(format!("{r:?}"))),
        Value::Blob(b) => Some(String::from_utf8_lossy(b)),
    }
}

/// Case-sensitive LIKE: `%` matches any run of characters, `_` one character. Both
/// strings end at a NUL character, because SQLite's pattern matcher reads C strings.
pub(super) fn like_match(pattern: &str, text: &str) -> bool {
    let until_nul = |s: &str| -> Vec<char> { s.chars().take_while(|&c| c != '\0').collect() };
    let (pattern, text) = (until_nul(pattern), until_nul(text));
    // Greedy matching that backtracks only to the last `%`: linear in practice,
    // O(pattern × text) at worst, never exponential.
    let (mut p, mut t) = (0, 0);
    let mut last_percent: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '%' {
            last_percent = Some((p, t));
            p += 1;
        } else if p < pattern.len() && (pattern[p] == '_' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if let Some((percent_p, percent_t)) = last_percent {
            p = percent_p + 1;
            t = percent_t + 1;
            last_percent = Some((percent_p, percent_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '%')
}

/// The GLOB pattern that matches exactly what the LIKE pattern matches (case-sensitive).
pub(super) fn like_to_glob(pattern: &str) -> String {
    let mut glob = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        match c {
            '%' => glob.push('*'),
            '_' => glob.push('?'),
            '*' => glob.push_str("[*]"),
            '?' => glob.push_str("[?]"),
            '[' => glob.push_str("[[]"),
            c => glob.push(c),
        }
    }
    glob
}
