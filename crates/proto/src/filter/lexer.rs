//! The filter's tokens, read one at a time.

use super::*;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    /// A bare identifier or keyword.
    Word(String),
    /// A double-quoted column name, unquoted.
    Quoted(String),
    /// A string literal, unquoted.
    Str(String),
    Int(i64),
    Real(f64),
    Param(Param),
    Op(CmpOp),
    LParen,
    RParen,
    Comma,
    /// A character the language has no use for (`;`, `+`, `*`, …).
    Other(char),
    End,
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub(super) tok: Tok,
    /// 1-based character column.
    pub(super) at: usize,
    /// The source text, for messages.
    pub(super) text: String,
}

/// Reads tokens one at a time, so the first error in the source is the one reported.
pub(super) struct Lexer {
    pub(super) chars: Vec<char>,
    pub(super) pos: usize,
}

impl Lexer {
    pub(super) fn next_token(&mut self) -> Result<Token, FilterError> {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
        let start = self.pos;
        let at = start + 1;
        let Some(&c) = self.chars.get(start) else {
            return Ok(Token {
                tok: Tok::End,
                at,
                text: String::new(),
            });
        };
        let next = self.chars.get(start + 1).copied();
        let is_digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        self.pos += 1;
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '=' => Tok::Op(CmpOp::Eq),
            '<' if next == Some('=') => self.two(Tok::Op(CmpOp::Le)),
            '<' if next == Some('>') => self.two(Tok::Op(CmpOp::Ne)),
            '<' => Tok::Op(CmpOp::Lt),
            '>' if next == Some('=') => self.two(Tok::Op(CmpOp::Ge)),
            '>' => Tok::Op(CmpOp::Gt),
            '!' if next == Some('=') => self.two(Tok::Op(CmpOp::Ne)),
            '\'' => Tok::Str(self.quoted('\'', "string", at)?),
            '"' => Tok::Quoted(self.quoted('"', "quoted column name", at)?),
            '$' => {
                let name = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
                if name.eq_ignore_ascii_case("user") {
                    Tok::Param(Param::User)
                } else if name.eq_ignore_ascii_case("device") {
                    Tok::Param(Param::Device)
                } else {
                    return Err(FilterError::UnknownParameter { name, at });
                }
            }
            '-' if next == Some('-') => return Err(FilterError::Comment { at }),
            '-' if is_digit(next)
                || (next == Some('.') && is_digit(self.chars.get(start + 2).copied())) =>
            {
                self.number(start)?
            }
            '.' if is_digit(next) => self.number(start)?,
            c if c.is_ascii_digit() => self.number(start)?,
            c if c.is_ascii_alphabetic() || c == '_' => {
                self.pos = start;
                Tok::Word(self.take_while(|c| c.is_ascii_alphanumeric() || c == '_'))
            }
            c => Tok::Other(c),
        };
        Ok(Token {
            tok,
            at,
            text: self.chars[start..self.pos].iter().collect(),
        })
    }

    pub(super) fn two(&mut self, tok: Tok) -> Tok {
        self.pos += 1;
        tok
    }

    pub(super) fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let start = self.pos;
        while self.chars.get(self.pos).is_some_and(|&c| keep(c)) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// The rest of a quoted string or name whose opening quote is consumed; a doubled
    /// quote stands for one.
    pub(super) fn quoted(
        &mut self,
        quote: char,
        what: &'static str,
        at: usize,
    ) -> Result<String, FilterError> {
        let mut text = String::new();
        loop {
            match self.chars.get(self.pos).copied() {
                None => return Err(FilterError::Unterminated { what, at }),
                Some('\0') => return Err(FilterError::NulCharacter { at: self.pos + 1 }),
                Some(c) if c == quote => {
                    self.pos += 1;
                    if self.chars.get(self.pos) == Some(&quote) {
                        text.push(quote);
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                Some(c) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
        if quote == '"' && text.is_empty() {
            return Err(FilterError::Unexpected {
                found: "`\"\"`".to_string(),
                at,
                expected: "a column name",
            });
        }
        Ok(text)
    }

    /// `-? digits [. digits] [e [+-] digits]`, or starting with `.`.
    pub(super) fn number(&mut self, start: usize) -> Result<Tok, FilterError> {
        let digit_at =
            |lexer: &Lexer, idx: usize| lexer.chars.get(idx).is_some_and(|c| c.is_ascii_digit());
        let mut end = start;
        if self.chars[end] == '-' {
            end += 1;
        }
        while digit_at(self, end) {
            end += 1;
        }
        let mut is_real = false;
        if self.chars.get(end) == Some(&'.') {
            is_real = true;
            end += 1;
            while digit_at(self, end) {
                end += 1;
            }
        }
        if matches!(self.chars.get(end), Some('e' | 'E')) {
            let mut exp = end + 1;
            if matches!(self.chars.get(exp), Some('+' | '-')) {
                exp += 1;
            }
            if digit_at(self, exp) {
                is_real = true;
                end = exp;
                while digit_at(self, end) {
                    end += 1;
                }
            }
        }
        let at = start + 1;
        self.pos = end;
        if self
            .chars
            .get(end)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            let rest = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            let text: String = self.chars[start..end].iter().collect::<String>() + &rest;
            return Err(FilterError::InvalidNumber { text, at });
        }
        let text: String = self.chars[start..end].iter().collect();
        let out_of_range = || FilterError::NumberOutOfRange {
            text: text.clone(),
            at,
        };
        if is_real {
            match text.parse::<f64>() {
                Ok(r) if r.is_finite() => Ok(Tok::Real(r)),
                _ => Err(out_of_range()),
            }
        } else {
            text.parse::<i64>()
                .map(Tok::Int)
                .map_err(|_| out_of_range())
        }
    }
}
