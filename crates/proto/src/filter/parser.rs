//! The filter parsed by recursive descent (precedence OR < AND < NOT < predicate),
//! and written back as canonical source.

use super::lexer::{Lexer, Tok, Token};
use super::sql::needs_parens;
use super::*;

pub(super) struct Parser {
    pub(super) lexer: Lexer,
    /// The current (not yet consumed) token.
    pub(super) token: Token,
    /// Open parentheses and `NOT`s around the current token.
    pub(super) depth: usize,
}

impl Parser {
    pub(super) fn new(src: &str) -> Result<Parser, FilterError> {
        let mut lexer = Lexer {
            chars: src.chars().collect(),
            pos: 0,
        };
        let token = lexer.next_token()?;
        Ok(Parser {
            lexer,
            token,
            depth: 0,
        })
    }

    /// Consumes the current token and returns it.
    fn bump(&mut self) -> Result<Token, FilterError> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.token, next))
    }

    fn at_keyword(&self, keyword: &str) -> bool {
        matches!(&self.token.tok, Tok::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> Result<bool, FilterError> {
        if self.at_keyword(keyword) {
            self.bump()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn expect(&mut self, tok: Tok, expected: &'static str) -> Result<(), FilterError> {
        if self.token.tok == tok {
            self.bump()?;
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    pub(super) fn unexpected(&self, expected: &'static str) -> FilterError {
        let found = if self.token.tok == Tok::End {
            "end of filter".to_string()
        } else {
            let mut text: String = self.token.text.chars().take(24).collect();
            if text.len() < self.token.text.len() {
                text.push('…');
            }
            format!("`{text}`")
        };
        FilterError::Unexpected {
            found,
            at: self.token.at,
            expected,
        }
    }

    fn enter(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError::TooDeep {
                at: self.token.at,
                max: MAX_DEPTH,
            });
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    pub(super) fn parse_or(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.parse_and()?;
        while self.eat_keyword("OR")? {
            let right = self.parse_and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_and(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.parse_not()?;
        while self.eat_keyword("AND")? {
            let right = self.parse_not()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_not(&mut self) -> Result<Expr, FilterError> {
        if !self.at_keyword("NOT") {
            return self.parse_predicate();
        }
        self.enter()?;
        self.bump()?;
        let inner = self.parse_not()?;
        self.leave();
        Ok(Expr::Not(Box::new(inner)))
    }

    fn parse_predicate(&mut self) -> Result<Expr, FilterError> {
        if self.token.tok == Tok::LParen {
            self.enter()?;
            self.bump()?;
            let inner = self.parse_or()?;
            self.expect(Tok::RParen, "AND, OR or `)`")?;
            self.leave();
            return Ok(inner);
        }
        let operand = self.parse_operand("a condition")?;
        if let Tok::Op(op) = self.token.tok {
            self.bump()?;
            let right = self.parse_operand("a column, a value or a parameter")?;
            return Ok(Expr::Compare {
                left: operand,
                op,
                right,
            });
        }
        if self.eat_keyword("IS")? {
            let negated = self.eat_keyword("NOT")?;
            if !self.eat_keyword("NULL")? {
                return Err(self.unexpected("NULL"));
            }
            return Ok(Expr::IsNull { operand, negated });
        }
        let negated = self.eat_keyword("NOT")?;
        if self.eat_keyword("IN")? {
            self.expect(Tok::LParen, "`(`")?;
            let mut list = vec![self.parse_value("a value or a parameter")?];
            while self.token.tok == Tok::Comma {
                self.bump()?;
                list.push(self.parse_value("a value or a parameter")?);
            }
            self.expect(Tok::RParen, "`,` or `)`")?;
            return Ok(Expr::In {
                operand,
                list,
                negated,
            });
        }
        if self.eat_keyword("LIKE")? {
            let pattern = match &self.token.tok {
                Tok::Str(s) => Pattern::Text(s.clone()),
                Tok::Param(param) => Pattern::Param(*param),
                _ => return Err(self.unexpected("a string or a parameter")),
            };
            self.bump()?;
            return Ok(Expr::Like {
                operand,
                pattern,
                negated,
            });
        }
        if self.eat_keyword("BETWEEN")? {
            let low = self.parse_operand("a column, a value or a parameter")?;
            if !self.eat_keyword("AND")? {
                return Err(self.unexpected("AND"));
            }
            let high = self.parse_operand("a column, a value or a parameter")?;
            return Ok(Expr::Between {
                operand,
                low,
                high,
                negated,
            });
        }
        Err(self.unexpected(if negated {
            "IN, LIKE or BETWEEN"
        } else {
            "a comparison operator, IS, IN, LIKE or BETWEEN"
        }))
    }

    /// A column, a literal or a parameter.
    fn parse_operand(&mut self, expected: &'static str) -> Result<Operand, FilterError> {
        let name = match &self.token.tok {
            Tok::Word(word) if !RESERVED.iter().any(|kw| kw.eq_ignore_ascii_case(word)) => {
                word.clone()
            }
            Tok::Quoted(name) => name.clone(),
            _ => return self.parse_value(expected),
        };
        let token = self.bump()?;
        if self.token.tok == Tok::LParen {
            return Err(FilterError::FunctionCall {
                name: token.text,
                at: token.at,
            });
        }
        Ok(Operand::Column {
            name,
            at: Pos(token.at),
        })
    }

    /// A literal or a parameter.
    fn parse_value(&mut self, expected: &'static str) -> Result<Operand, FilterError> {
        let value = match &self.token.tok {
            Tok::Word(w) if w.eq_ignore_ascii_case("NULL") => Operand::Null,
            Tok::Word(w) if w.eq_ignore_ascii_case("TRUE") => Operand::Integer(1),
            Tok::Word(w) if w.eq_ignore_ascii_case("FALSE") => Operand::Integer(0),
            Tok::Str(s) => Operand::Text(s.clone()),
            Tok::Int(i) => Operand::Integer(*i),
            Tok::Real(r) => Operand::Real(*r),
            Tok::Param(param) => Operand::Param(*param),
            _ => return Err(self.unexpected(expected)),
        };
        self.bump()?;
        Ok(value)
    }
}

// ---------------------------------------------------------------------------------------
// Canonical source

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Column { name, .. } => {
                if is_bare_identifier(name) {
                    f.write_str(name)
                } else {
                    f.write_str(&quote_ident(name))
                }
            }
            Operand::Param(param) => write!(f, "{param}"),
            Operand::Null => f.write_str("NULL"),
            Operand::Integer(i) => write!(f, "{i}"),
            // `{:?}` is the shortest text that reads back as the same f64, and always
            // has a `.` or an exponent, so it reads back as a decimal.
            Operand::Real(r) => write!(f, "{r:?}"),
            Operand::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Pattern::Param(param) => write!(f, "{param}"),
        }
    }
}

/// Prints the canonical source of the filter, which [`parse`] reads back to an equal
/// expression when it is within [`MAX_FILTER_BYTES`]: it may be longer than the source
/// it was parsed from (`a=1` prints as `a = 1`), so a filter near the
/// limit can print past it.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |negated: bool| if negated { " NOT" } else { "" };
        match self {
            Expr::Compare { left, op, right } => write!(f, "{left} {op} {right}"),
            Expr::In {
                operand,
                list,
                negated,
            } => {
                let items: Vec<String> = list.iter().map(Operand::to_string).collect();
                write!(f, "{operand}{} IN ({})", not(*negated), items.join(", "))
            }
            Expr::Between {
                operand,
                low,
                high,
                negated,
            } => write!(f, "{operand}{} BETWEEN {low} AND {high}", not(*negated)),
            Expr::Like {
                operand,
                pattern,
                negated,
            } => write!(f, "{operand}{} LIKE {pattern}", not(*negated)),
            Expr::IsNull { operand, negated } => write!(f, "{operand} IS{} NULL", not(*negated)),
            Expr::Not(inner) => {
                f.write_str("NOT ")?;
                write_child(f, self, inner, false)
            }
            Expr::And(left, right) | Expr::Or(left, right) => {
                let keyword = if matches!(self, Expr::And(..)) {
                    "AND"
                } else {
                    "OR"
                };
                write_child(f, self, left, false)?;
                write!(f, " {keyword} ")?;
                write_child(f, self, right, true)
            }
        }
    }
}

fn write_child(
    f: &mut fmt::Formatter<'_>,
    parent: &Expr,
    child: &Expr,
    is_right: bool,
) -> fmt::Result {
    if needs_parens(parent, child, is_right) {
        write!(f, "({child})")
    } else {
        write!(f, "{child}")
    }
}

fn is_bare_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    starts_well
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.iter().any(|kw| kw.eq_ignore_ascii_case(name))
}
