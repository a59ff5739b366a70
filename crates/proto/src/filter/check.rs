//! The filter checked against the schema: columns exist, types line up.

use super::*;

impl Expr {
    /// Checks every column exists (`lookup` returns its type) and types line up: text
    /// compares only with text, numbers (integer, real, numeric columns and literals)
    /// only with numbers, blob columns only with blob columns; `LIKE` needs text.
    /// Parameters are text; `NULL` goes with anything.
    ///
    /// An integer column does not compare with a real column: PostgreSQL compares
    /// int8 with float8 by rounding the integer to a double, so beyond ±2^53 it would
    /// disagree with SQLite and [`Expr::eval`], which compare exactly, and the SQL
    /// cannot make up for it without knowing which column is which. (Literals are
    /// known, so the PostgreSQL SQL keeps them exact.)
    pub fn check(&self, lookup: &dyn Fn(&str) -> Option<ColumnType>) -> Result<(), FilterError> {
        match self {
            Expr::Compare { left, right, .. } => {
                comparable(&typed(left, lookup)?, &typed(right, lookup)?)
            }
            Expr::In { operand, list, .. } => {
                let operand = typed(operand, lookup)?;
                for item in list {
                    comparable(&operand, &typed(item, lookup)?)?;
                }
                Ok(())
            }
            Expr::Between {
                operand, low, high, ..
            } => {
                let operand = typed(operand, lookup)?;
                comparable(&operand, &typed(low, lookup)?)?;
                comparable(&operand, &typed(high, lookup)?)
            }
            Expr::Like { operand, .. } => {
                let operand = typed(operand, lookup)?;
                match operand.class {
                    Class::Text | Class::Null => Ok(()),
                    Class::Number | Class::Blob => Err(FilterError::Type(format!(
                        "LIKE needs text, but {} is not text",
                        operand.description
                    ))),
                }
            }
            Expr::IsNull { operand, .. } => typed(operand, lookup).map(|_| ()),
            Expr::Not(inner) => inner.check(lookup),
            Expr::And(left, right) | Expr::Or(left, right) => {
                left.check(lookup)?;
                right.check(lookup)
            }
        }
    }
}

/// What a value can be compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Number,
    Text,
    Blob,
    Null,
}

struct Typed {
    class: Class,
    /// The type of the column the operand is, if it is one.
    column: Option<ColumnType>,
    /// The operand in words, for messages: "text column `region` (at 1)", "a number".
    description: String,
}

fn typed(
    operand: &Operand,
    lookup: &dyn Fn(&str) -> Option<ColumnType>,
) -> Result<Typed, FilterError> {
    let mut column = None;
    let (class, description) = match operand {
        Operand::Column { name, at } => {
            let Some(column_type) = lookup(name) else {
                return Err(FilterError::UnknownColumn {
                    name: name.clone(),
                    at: at.0,
                });
            };
            let class = match column_type {
                ColumnType::Integer
                | ColumnType::Real
                | ColumnType::Numeric
                | ColumnType::Decimal => Class::Number,
                ColumnType::Text => Class::Text,
                ColumnType::Blob => Class::Blob,
            };
            column = Some(column_type);
            let type_name = column_type.sql_name().to_ascii_lowercase();
            let description = format!("{type_name} column `{name}`{}", at_suffix(at.0));
            (class, description)
        }
        Operand::Param(param) => (Class::Text, format!("parameter `{param}`")),
        Operand::Null => (Class::Null, "NULL".to_string()),
        Operand::Integer(_) | Operand::Real(_) => (Class::Number, "a number".to_string()),
        Operand::Text(_) => (Class::Text, "a string".to_string()),
    };
    Ok(Typed {
        class,
        column,
        description,
    })
}

fn comparable(left: &Typed, right: &Typed) -> Result<(), FilterError> {
    use ColumnType::{Integer, Real};
    if let (Some(Integer), Some(Real)) | (Some(Real), Some(Integer)) = (left.column, right.column) {
        return Err(FilterError::Type(format!(
            "cannot compare {} with {}: PostgreSQL would round the integers to reals",
            left.description, right.description
        )));
    }
    if left.class == right.class || left.class == Class::Null || right.class == Class::Null {
        Ok(())
    } else {
        Err(FilterError::Type(format!(
            "cannot compare {} with {}",
            left.description, right.description
        )))
    }
}
