//! Unit and property tests of the filter language (some need PostgreSQL).

use std::cell::RefCell;
use std::collections::BTreeSet;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestRunner;
use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;

use super::eval::like_match;
use super::sql::sql_literal;
use super::*;

fn params() -> Params {
    Params {
        user: "ana".to_string(),
        device: "tab-7".to_string(),
    }
}

fn col(name: &str) -> Operand {
    Operand::column(name)
}

fn text(s: &str) -> Operand {
    Operand::Text(s.to_string())
}

fn cmp(left: Operand, op: CmpOp, right: Operand) -> Expr {
    Expr::Compare { left, op, right }
}

fn and(left: Expr, right: Expr) -> Expr {
    Expr::And(Box::new(left), Box::new(right))
}

fn or(left: Expr, right: Expr) -> Expr {
    Expr::Or(Box::new(left), Box::new(right))
}

fn not(inner: Expr) -> Expr {
    Expr::Not(Box::new(inner))
}

fn err(src: &str) -> String {
    parse(src).unwrap_err().to_string()
}

/// The columns of the test table `t`, as a task's table would have them.
fn table_lookup(name: &str) -> Option<ColumnType> {
    match name {
        "id" | "score" => Some(ColumnType::Integer),
        "weight" => Some(ColumnType::Real),
        "amount" => Some(ColumnType::Numeric),
        "name" | "region" | "note" | "status" | "inspector" => Some(ColumnType::Text),
        "photo" => Some(ColumnType::Blob),
        _ => None,
    }
}

fn t_column(name: &str) -> String {
    format!("\"t\".{}", quote_ident(name))
}

// -----------------------------------------------------------------------------------
// Parsing

#[test]
fn parses_the_design_examples() {
    assert_eq!(
        parse("region = 'north' AND status <> 'retired'").unwrap(),
        and(
            cmp(col("region"), CmpOp::Eq, text("north")),
            cmp(col("status"), CmpOp::Ne, text("retired")),
        )
    );
    assert_eq!(
        parse("inspector = $user").unwrap(),
        cmp(col("inspector"), CmpOp::Eq, Operand::Param(Param::User))
    );
}

#[test]
fn precedence_is_or_and_not_predicate() {
    let a = || cmp(col("a"), CmpOp::Eq, Operand::Integer(1));
    let b = || cmp(col("b"), CmpOp::Eq, Operand::Integer(2));
    let c = || cmp(col("c"), CmpOp::Eq, Operand::Integer(3));
    assert_eq!(
        parse("a = 1 OR b = 2 AND NOT c = 3").unwrap(),
        or(a(), and(b(), not(c())))
    );
    assert_eq!(
        parse("a = 1 AND b = 2 AND c = 3").unwrap(),
        and(and(a(), b()), c())
    );
    assert_eq!(
        parse("(a = 1 OR b = 2) AND c = 3").unwrap(),
        and(or(a(), b()), c())
    );
    assert_eq!(parse("NOT NOT (a = 1)").unwrap(), not(not(a())));
}

#[test]
fn keywords_are_case_insensitive() {
    assert_eq!(
        parse("x not in (1, 2) and y is not null or z Like 'a%' AND w between true and False")
            .unwrap(),
        parse("x NOT IN (1, 2) AND y IS NOT NULL OR z LIKE 'a%' AND w BETWEEN 1 AND 0").unwrap()
    );
}

#[test]
fn literals() {
    let right = |src: &str| match parse(&format!("x = {src}")).unwrap() {
        Expr::Compare { right, .. } => right,
        other => panic!("not a comparison: {other:?}"),
    };
    assert_eq!(right("'it''s'"), text("it's"));
    assert_eq!(right("''"), text(""));
    assert_eq!(right("'été \"x\"'"), text("été \"x\""));
    assert_eq!(right("TRUE"), Operand::Integer(1));
    assert_eq!(right("false"), Operand::Integer(0));
    assert_eq!(right("NULL"), Operand::Null);
    assert_eq!(right("-42"), Operand::Integer(-42));
    assert_eq!(right("-9223372036854775808"), Operand::Integer(i64::MIN));
    assert_eq!(right("1.5"), Operand::Real(1.5));
    assert_eq!(right("-.25"), Operand::Real(-0.25));
    assert_eq!(right("2."), Operand::Real(2.0));
    assert_eq!(right("1e3"), Operand::Real(1000.0));
    assert_eq!(right("2.5E-3"), Operand::Real(0.0025));
    assert_eq!(right("$USER"), Operand::Param(Param::User));
    assert_eq!(right("$device"), Operand::Param(Param::Device));
}

#[test]
fn column_names() {
    let expr = parse(r#""order date" = 'x' AND "a""b" IS NULL AND "and" = 1 AND _x1 = 2"#).unwrap();
    assert_eq!(expr.columns(), ["order date", "a\"b", "and", "_x1"]);
    assert_eq!(
        expr.to_string(),
        r#""order date" = 'x' AND "a""b" IS NULL AND "and" = 1 AND _x1 = 2"#
    );
    assert_eq!(
        parse("region = 'n' AND (score > 1 OR region LIKE $user)")
            .unwrap()
            .columns(),
        ["region", "score"]
    );
}

#[test]
fn uses_param() {
    let expr = parse("region = 'n' AND (score > 1 OR name LIKE $user)").unwrap();
    assert!(expr.uses_param(Param::User));
    assert!(!expr.uses_param(Param::Device));
    assert!(
        parse("x IN (1, $device)")
            .unwrap()
            .uses_param(Param::Device)
    );
}

#[test]
fn display_is_canonical_source() {
    for (src, canonical) in [
        ("a=1 and b!=2", "a = 1 AND b <> 2"),
        ("a = 1 OR b = 2 AND c = 3", "a = 1 OR (b = 2 AND c = 3)"),
        ("a = 1 AND (b = 2 AND c = 3)", "a = 1 AND (b = 2 AND c = 3)"),
        ("(a = 1 AND b = 2) AND c = 3", "a = 1 AND b = 2 AND c = 3"),
        ("not (a = 1 or b = 2)", "NOT (a = 1 OR b = 2)"),
        ("not not a = 1", "NOT NOT a = 1"),
        ("x not between -1 and 2.50", "x NOT BETWEEN -1 AND 2.5"),
        (
            "\"my col\" in ('a', $user, null)",
            "\"my col\" IN ('a', $user, NULL)",
        ),
        ("name not like 'it''s%'", "name NOT LIKE 'it''s%'"),
        ("flag = true", "flag = 1"),
        ("w >= 1e16 AND w < 0.0000001", "w >= 1e16 AND w < 1e-7"),
        ("'north' = region", "'north' = region"),
    ] {
        let expr = parse(src).unwrap();
        assert_eq!(expr.to_string(), canonical);
        assert_eq!(parse(canonical).unwrap(), expr);
    }
}

// -----------------------------------------------------------------------------------
// Errors

#[test]
fn refuses_sql_and_names_the_position() {
    for (src, message) in [
        (
            "region = 'north'; DROP TABLE assets",
            "unexpected `;` at 17, expected AND, OR or end of filter",
        ),
        (
            "region = 'north' -- AND status = 'x'",
            "comments are not allowed (`--` at 18)",
        ),
        (
            "region = 'north' /* x */",
            "unexpected `/` at 18, expected AND, OR or end of filter",
        ),
        (
            "inspector = $usr",
            "unknown parameter `$usr` at 13 (the parameters are $user and $device)",
        ),
        (
            "lower(region) = 'north'",
            "function calls are not allowed (`lower(` at 1)",
        ),
        (
            "id IN (SELECT id FROM t)",
            "unexpected `SELECT` at 8, expected a value or a parameter",
        ),
        (
            "x = 'a' || 'b'",
            "unexpected `|` at 9, expected AND, OR or end of filter",
        ),
        ("region = 'north", "unterminated string starting at 10"),
        (
            "\"region = 1",
            "unterminated quoted column name starting at 1",
        ),
        ("", "unexpected end of filter at 1, expected a condition"),
        (
            "region =",
            "unexpected end of filter at 9, expected a column, a value or a parameter",
        ),
        (
            "region",
            "unexpected end of filter at 7, expected a comparison operator, IS, IN, LIKE or BETWEEN",
        ),
        (
            "région = 1",
            "unexpected `é` at 2, expected a comparison operator, IS, IN, LIKE or BETWEEN",
        ),
        (
            "x == 1",
            "unexpected `=` at 4, expected a column, a value or a parameter",
        ),
        ("x = 12abc", "invalid number `12abc` at 5"),
        ("x = 1.2.3", "invalid number `1.2.3` at 5"),
        ("x = 1e", "invalid number `1e` at 5"),
        (
            "x = 99999999999999999999",
            "number `99999999999999999999` at 5 is out of range",
        ),
        ("x = 1e999", "number `1e999` at 5 is out of range"),
        (
            "x IN ()",
            "unexpected `)` at 7, expected a value or a parameter",
        ),
        (
            "x IN (y)",
            "unexpected `y` at 7, expected a value or a parameter",
        ),
        ("x IN (1 2)", "unexpected `2` at 9, expected `,` or `)`"),
        (
            "x LIKE y",
            "unexpected `y` at 8, expected a string or a parameter",
        ),
        (
            "x LIKE 'a!%' ESCAPE '!'",
            "unexpected `ESCAPE` at 14, expected AND, OR or end of filter",
        ),
        ("x IS 1", "unexpected `1` at 6, expected NULL"),
        (
            "x NOT = 1",
            "unexpected `=` at 7, expected IN, LIKE or BETWEEN",
        ),
        ("x BETWEEN 1 OR 2", "unexpected `OR` at 13, expected AND"),
        ("and = 1", "unexpected `and` at 1, expected a condition"),
        (
            "(x = 1",
            "unexpected end of filter at 7, expected AND, OR or `)`",
        ),
        (
            "x = 1)",
            "unexpected `)` at 6, expected AND, OR or end of filter",
        ),
        ("x = 'a\0'", "NUL character at 7"),
        ("\"\" = 1", "unexpected `\"\"` at 1, expected a column name"),
        (
            "x = 'a very long string that goes on' y",
            "unexpected `y` at 39, expected AND, OR or end of filter",
        ),
        (
            "x = 1 'a very long string that goes on'",
            "unexpected `'a very long string that…` at 7, expected AND, OR or end of filter",
        ),
    ] {
        assert_eq!(err(src), message, "{src}");
    }
}

#[test]
fn limits_nesting_and_length() {
    let nested = |n: usize| format!("{}x = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(parse(&nested(MAX_DEPTH)).is_ok());
    assert_eq!(
        err(&nested(MAX_DEPTH + 1)),
        "filter nested too deeply at 65: at most 64 levels of parentheses and NOT"
    );
    let nots = |n: usize| format!("{}x = 1", "NOT ".repeat(n));
    assert!(parse(&nots(MAX_DEPTH)).is_ok());
    assert_eq!(
        err(&nots(MAX_DEPTH + 1)),
        "filter nested too deeply at 257: at most 64 levels of parentheses and NOT"
    );
    // Hostile input fails fast instead of exhausting the stack.
    assert!(matches!(
        parse(&"(".repeat(MAX_FILTER_BYTES)),
        Err(FilterError::TooDeep { .. })
    ));
    assert!(matches!(
        parse(&"NOT (".repeat(MAX_FILTER_BYTES / 5)),
        Err(FilterError::TooDeep { .. })
    ));
    let long = format!("x = '{}'", "a".repeat(MAX_FILTER_BYTES));
    assert_eq!(err(&long), "filter too long: 4102 bytes, at most 4096");
}

#[test]
fn longest_chain_runs_in_sqlite() {
    // AND/OR chains are not nesting; only the length limit bounds them. The compiled
    // SQL of the longest must stay within SQLite's expression depth limit (1000).
    let mut src = "a=1".to_string();
    while src.len() + " OR a=1".len() <= MAX_FILTER_BYTES {
        src.push_str(" OR a=1");
    }
    let expr = parse(&src).unwrap();
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER); INSERT INTO t VALUES (1, 1), (2, 2);",
    )
    .unwrap();
    let mut binds = Vec::new();
    let sql = expr.to_sql(Dialect::Sqlite, &t_column, &Params::default(), &mut binds);
    assert_eq!(select_ids(&conn, &sql, &binds), BTreeSet::from([1]));
    let sql = expr.to_sql_inline(Dialect::Sqlite, &t_column, &Params::default());
    assert_eq!(select_ids(&conn, &sql, &[]), BTreeSet::from([1]));
    assert_eq!(
        select_ids(&conn, &format!("NOT ({sql})"), &[]),
        BTreeSet::from([2])
    );
}

// -----------------------------------------------------------------------------------
// Type checking

#[test]
fn check_reports_unknown_columns_and_type_errors() {
    let check = |src: &str| {
        parse(src)
            .unwrap()
            .check(&table_lookup)
            .map_err(|e| e.to_string())
    };
    for (src, message) in [
        ("regoin = 'north'", "unknown column `regoin` (at 1)"),
        ("score > 1 AND NOT x IS NULL", "unknown column `x` (at 19)"),
        (
            "region = 5",
            "type error: cannot compare text column `region` (at 1) with a number",
        ),
        (
            "score = 'high'",
            "type error: cannot compare integer column `score` (at 1) with a string",
        ),
        (
            "amount > $user",
            "type error: cannot compare numeric column `amount` (at 1) with parameter `$user`",
        ),
        (
            "weight IN (1, 'a')",
            "type error: cannot compare real column `weight` (at 1) with a string",
        ),
        (
            "region = score",
            "type error: cannot compare text column `region` (at 1) with integer column `score` (at 10)",
        ),
        (
            "note BETWEEN 'a' AND 9",
            "type error: cannot compare text column `note` (at 1) with a number",
        ),
        (
            "score LIKE '1%'",
            "type error: LIKE needs text, but integer column `score` (at 1) is not text",
        ),
        (
            "photo = name",
            "type error: cannot compare blob column `photo` (at 1) with text column `name` (at 9)",
        ),
        (
            "$device = 1",
            "type error: cannot compare parameter `$device` with a number",
        ),
        (
            "score < weight",
            "type error: cannot compare integer column `score` (at 1) with real column `weight` (at 9): PostgreSQL would round the integers to reals",
        ),
        (
            "weight NOT BETWEEN 0 AND id",
            "type error: cannot compare real column `weight` (at 1) with integer column `id` (at 26): PostgreSQL would round the integers to reals",
        ),
    ] {
        assert_eq!(check(src), Err(message.to_string()), "{src}");
    }
    for src in [
        "region = name",
        "score < id AND amount >= 1.5 AND weight > amount AND amount < score",
        "score < 2.5 AND weight >= 9007199254740993",
        "score = TRUE",
        "region = NULL AND NULL = score",
        "region IN ('a', NULL, $device)",
        "photo IS NULL",
        "name LIKE $user AND 'x' LIKE 'y'",
        "NOT (region = 'a' OR score NOT BETWEEN 1.5 AND id)",
    ] {
        assert_eq!(check(src), Ok(()), "{src}");
    }
}

// -----------------------------------------------------------------------------------
// SQL

#[test]
fn sqlite_sql_shape() {
    let sql = |src: &str| {
        let mut binds = Vec::new();
        let sql = parse(src)
            .unwrap()
            .to_sql(Dialect::Sqlite, &t_column, &params(), &mut binds);
        (sql, binds)
    };
    let inline = |src: &str| {
        parse(src)
            .unwrap()
            .to_sql_inline(Dialect::Sqlite, &t_column, &params())
    };
    let src = "region = 'north' AND status <> 'retired'";
    assert_eq!(
        sql(src),
        (
            r#"("t"."region" COLLATE BINARY = ? AND +"t"."region" COLLATE BINARY = ?) AND +"t"."status" COLLATE BINARY <> ?"#.to_string(),
            vec![
                Value::Text("north".into()),
                Value::Text("north".into()),
                Value::Text("retired".into())
            ]
        )
    );
    assert_eq!(
        inline(src),
        r#"+"t"."region" COLLATE BINARY = 'north' AND +"t"."status" COLLATE BINARY <> 'retired'"#
    );
    let src = "name LIKE 'a_%*?[]' AND inspector = $user";
    assert_eq!(
        sql(src),
        (
            r#""t"."name" GLOB ? AND ("t"."inspector" COLLATE BINARY = ? AND +"t"."inspector" COLLATE BINARY = ?)"#.to_string(),
            vec![
                Value::Text("a?*[*][?][[]]".into()),
                Value::Text("ana".into()),
                Value::Text("ana".into())
            ]
        )
    );
    assert_eq!(
        inline(src),
        r#""t"."name" GLOB 'a?*[*][?][[]]' AND +"t"."inspector" COLLATE BINARY = 'ana'"#
    );
    assert_eq!(
        inline("x NOT IN (1, NULL, 2.5) OR NOT (y IS NOT NULL AND z NOT BETWEEN -1 AND $device)"),
        r#"+"t"."x" COLLATE BINARY NOT IN (1, NULL, 2.5) OR NOT ("t"."y" IS NOT NULL AND +"t"."z" COLLATE BINARY NOT BETWEEN -1 AND 'tab-7')"#
    );
    assert_eq!(
        inline("name NOT LIKE $device OR (a = 1 OR b = 2) AND c = 3"),
        r#""t"."name" NOT GLOB 'tab-7' OR ((+"t"."a" COLLATE BINARY = 1 OR +"t"."b" COLLATE BINARY = 2) AND +"t"."c" COLLATE BINARY = 3)"#
    );
}

#[test]
fn postgres_sql_shape() {
    let expr = parse(
        "region = 'north' AND (score BETWEEN 1 AND 2.5 OR name NOT LIKE $user) AND id IN (1, NULL)",
    )
    .unwrap();
    // Numbering continues after binds already present.
    let mut binds = vec![Value::Integer(7)];
    assert_eq!(
        expr.to_sql(Dialect::Postgres, &t_column, &params(), &mut binds),
        r#""t"."region" COLLATE "C" = $2::text AND ("t"."score" BETWEEN $3::int8 AND $4::float8 OR "t"."name" COLLATE "C" NOT LIKE $5::text ESCAPE '') AND "t"."id" IN ($6::int8, NULL)"#
    );
    assert_eq!(
        binds,
        [
            Value::Integer(7),
            Value::Text("north".into()),
            Value::Integer(1),
            Value::Real(2.5),
            Value::Text("ana".into()),
            Value::Integer(1),
        ]
    );
    assert_eq!(
        expr.to_sql_inline(Dialect::Postgres, &t_column, &params()),
        r#""t"."region" COLLATE "C" = 'north' AND ("t"."score" BETWEEN 1 AND '2.5'::float8 OR "t"."name" COLLATE "C" NOT LIKE 'ana' ESCAPE '') AND "t"."id" IN (1, NULL)"#
    );
    let expr = parse(r"note LIKE 'a\%' AND name <> 'it''s'").unwrap();
    assert_eq!(
        expr.to_sql_inline(Dialect::Postgres, &t_column, &params()),
        r#""t"."note" COLLATE "C" LIKE E'a\\%' ESCAPE '' AND "t"."name" COLLATE "C" <> 'it''s'"#
    );
}

#[test]
fn postgres_sql_keeps_integers_and_reals_exact() {
    let inline = |src: &str| {
        parse(src)
            .unwrap()
            .to_sql_inline(Dialect::Postgres, &t_column, &params())
    };
    // A whole real beyond 2^53 is the integer it is (2^63 as a numeric constant).
    assert_eq!(
        inline("score < 9007199254740992.0 OR score >= 9223372036854775808.0"),
        r#""t"."score" < 9007199254740992 OR "t"."score" >= 9223372036854775808"#
    );
    // An integer no double holds is bracketed by the doubles next to it.
    assert_eq!(
        inline("weight = 9007199254740993"),
        r#"("t"."weight" = 9007199254740993 AND "t"."weight" > 9007199254740992 AND "t"."weight" < 9007199254740994)"#
    );
    assert_eq!(
        inline("9223372036854775807 > weight"),
        r#"("t"."weight" <= 9223372036854774784 OR ("t"."weight" < 9223372036854775807 AND "t"."weight" < 9223372036854775808))"#
    );
    assert_eq!(
        inline("weight NOT BETWEEN 0 AND 9007199254740993"),
        r#"NOT ("t"."weight" >= 0 AND ("t"."weight" <= 9007199254740992 OR ("t"."weight" <= 9007199254740993 AND "t"."weight" < 9007199254740994)))"#
    );
    // IN mixing integers and reals is single comparisons, not one float8 list.
    assert_eq!(
        inline("score IN (1, 2.5) AND id NOT IN (3, NULL, 0.5)"),
        r#"("t"."score" = 1 OR "t"."score" = '2.5'::float8) AND ("t"."id" <> 3 AND "t"."id" <> NULL AND "t"."id" <> '0.5'::float8)"#
    );
    assert_eq!(
        inline("score IN (1, 2) AND weight IN (0.5, 2.5)"),
        r#""t"."score" IN (1, 2) AND "t"."weight" IN ('0.5'::float8, '2.5'::float8)"#
    );
    let mut binds = Vec::new();
    let sql = parse("weight <> 9007199254740993 OR score = 1e17")
        .unwrap()
        .to_sql(Dialect::Postgres, &t_column, &params(), &mut binds);
    assert_eq!(
        sql,
        r#"("t"."weight" <> $1::int8 OR "t"."weight" <= $2::int8 OR "t"."weight" >= $3::int8) OR "t"."score" = $4::int8"#
    );
    assert_eq!(
        binds,
        [
            Value::Integer(9_007_199_254_740_993),
            Value::Integer(9_007_199_254_740_992),
            Value::Integer(9_007_199_254_740_994),
            Value::Integer(100_000_000_000_000_000),
        ]
    );
    // A column as lower bound of BETWEEN is parenthesised: PostgreSQL's grammar
    // takes no COLLATE there, which a caller's text column carries.
    assert_eq!(
        parse("name BETWEEN region AND note")
            .unwrap()
            .to_sql_inline(
                Dialect::Postgres,
                &|c| format!("{} COLLATE \"C\"", t_column(c)),
                &params()
            ),
        r#""t"."name" COLLATE "C" BETWEEN ("t"."region" COLLATE "C") AND "t"."note" COLLATE "C""#
    );
}

#[test]
fn inline_literals_read_back_exactly_in_sqlite() {
    assert_eq!(
        sql_literal(Dialect::Sqlite, &Value::Text("it's".into())),
        "'it''s'"
    );
    assert_eq!(
        sql_literal(Dialect::Sqlite, &Value::Text("a\0b".into())),
        "('a' || char(0) || 'b')"
    );
    assert_eq!(
        sql_literal(Dialect::Postgres, &Value::Text("a\\'b".into())),
        r"E'a\\''b'"
    );
    assert_eq!(sql_literal(Dialect::Sqlite, &Value::Real(1e-7)), "1e-7");
    assert_eq!(sql_literal(Dialect::Sqlite, &Value::Real(f64::NAN)), "NULL");
    assert_eq!(
        sql_literal(Dialect::Sqlite, &Value::Real(f64::INFINITY)),
        "9e999"
    );
    assert_eq!(
        sql_literal(Dialect::Sqlite, &Value::Blob(vec![0, 255])),
        "X'00ff'"
    );
    let conn = Connection::open_in_memory().unwrap();
    for value in [
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Integer(-1),
        Value::Real(0.1),
        Value::Real(-2.5),
        Value::Real(1e-7),
        Value::Real(1e16),
        Value::Real(f64::MAX),
        Value::Real(f64::MIN_POSITIVE),
        Value::Real(5e-324),
        Value::Real(f64::INFINITY),
        Value::Real(f64::NEG_INFINITY),
        Value::Text("it's \"quoted\" \\ é 😀".into()),
        Value::Text("\0a\0\0b\0".into()),
        Value::Blob(vec![0, 1, 255]),
    ] {
        let literal = sql_literal(Dialect::Sqlite, &value);
        let back: SqlValue = conn
            .query_row(&format!("SELECT {literal}"), [], |row| row.get(0))
            .unwrap();
        assert_eq!(from_sqlite(back), value, "{literal}");
    }
}

#[test]
fn injection_attempts_stay_literals() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    for (id, name) in [(1, "x'); DROP TABLE t; --"), (2, "north"), (3, "a\"b")] {
        conn.execute("INSERT INTO t (id, name) VALUES (?, ?)", (id, name))
            .unwrap();
    }
    let hostile = Params {
        user: "x'); DROP TABLE t; --".to_string(),
        device: "'; DELETE FROM t; --".to_string(),
    };
    for (src, want) in [
        ("name = 'x''); DROP TABLE t; --'", vec![1]),
        ("name LIKE 'x''); DROP%'", vec![1]),
        ("name = $user", vec![1]),
        ("name IN ($device, 'north')", vec![2]),
        ("name LIKE $device OR name = 'a\"b'", vec![3]),
        ("name NOT LIKE '%''%'", vec![2, 3]),
    ] {
        let expr = parse(src).unwrap();
        let inline = expr.to_sql_inline(Dialect::Sqlite, &t_column, &hostile);
        let want: BTreeSet<i64> = want.into_iter().collect();
        assert_eq!(select_ids(&conn, &inline, &[]), want, "{inline}");
        let mut binds = Vec::new();
        let sql = expr.to_sql(Dialect::Sqlite, &t_column, &hostile, &mut binds);
        assert_eq!(select_ids(&conn, &sql, &binds), want, "{sql}");
        // The table is still there, with all its rows.
        let n_rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(n_rows, 3);
    }
    // A trigger is where inline SQL really goes: the filter is part of its body.
    let expr = parse("name = 'x''); DROP TABLE t; --' OR name = $device").unwrap();
    let when = expr.to_sql_inline(
        Dialect::Sqlite,
        &|c| format!("NEW.{}", quote_ident(c)),
        &hostile,
    );
    conn.execute_batch(&format!(
        "CREATE TABLE log (id INTEGER);
             CREATE TRIGGER t_ins AFTER INSERT ON t WHEN {when}
             BEGIN INSERT INTO log VALUES (NEW.id); END;
             INSERT INTO t (id, name) VALUES (4, 'x''); DROP TABLE t; --'), (5, 'north'),
                 (6, '''; DELETE FROM t; --');"
    ))
    .unwrap();
    let logged: Vec<i64> = conn
        .prepare("SELECT id FROM log ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(logged, [4, 6]);
    let n_rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
        .unwrap();
    assert_eq!(n_rows, 6);
}

#[test]
fn sqlite_surprises_are_neutralised() {
    let table = load(&[
        // name, region (COLLATE NOCASE), score, weight, note
        vec![
            Value::Text("abc".into()),
            Value::Text("NORTH".into()),
            Value::Integer(2),
            Value::Real(2.0),
            Value::Null,
        ],
        vec![
            Value::Text("ABC".into()),
            Value::Text("north".into()),
            Value::Text("7".into()), // INTEGER affinity stores the number 7
            Value::Integer(9_007_199_254_740_993),
            Value::Text("a*".into()),
        ],
        vec![
            Value::Text("a%c".into()),
            Value::Null,
            Value::Text("high".into()), // stays text in an INTEGER column
            Value::Real(0.5),
            Value::Text("y".into()),
        ],
    ]);
    for (src, want_true) in [
        // NOCASE column: binary comparison anyway.
        ("region = 'north'", vec![2]),
        ("region < 'a'", vec![1]),
        // LIKE is case-sensitive (SQLite's is not).
        ("name LIKE 'a%'", vec![1, 3]),
        ("name LIKE 'A__'", vec![2]),
        // GLOB specials in a LIKE pattern are plain characters.
        ("note LIKE 'a*'", vec![2]),
        ("note LIKE '_*'", vec![2]),
        // Integers and reals compare exactly (2^53 + 1 is no f64).
        ("score = 2.0 AND weight = 2", vec![1]),
        ("weight = 9007199254740993", vec![]),
        ("score = 7", vec![2]),
        // Text in a numeric column sorts after every number, as in SQLite.
        ("score > 1000000", vec![3]),
        // Unknown is neither true nor false.
        ("note IN ('x', NULL)", vec![]),
        ("note NOT IN ('x', NULL)", vec![]),
        ("region BETWEEN 'a' AND 'z'", vec![2]),
    ] {
        let expr = parse(src).unwrap();
        expr.check(&table_lookup).unwrap();
        let want: BTreeSet<i64> = want_true.into_iter().collect();
        assert_eq!(
            eval_ids(&table, &expr, &params(), Some(true)),
            want,
            "{src}"
        );
        assert_agrees(&table, &expr, &params());
    }
}

#[test]
fn sqlite_sql_converts_nothing_even_unchecked() {
    // Without `+column`, SQLite would apply the column's affinity to the other
    // operand: `name = 5` would compare '5' = '5', `score = '5'` 5 = 5. The checker
    // refuses these filters; the SQL still means what `eval` means.
    let table = load(&[
        vec![
            Value::Text("5".into()),
            Value::Null,
            Value::Integer(5),
            Value::Real(5.0),
            Value::Null,
        ],
        vec![
            Value::Text("6".into()),
            Value::Null,
            Value::Text("high".into()),
            Value::Null,
            Value::Null,
        ],
    ]);
    for (src, want_true) in [
        ("name = 5", vec![]),
        ("name > 5", vec![1, 2]),
        ("score = '5'", vec![]),
        ("score IN ('5', 'high')", vec![2]),
        ("weight BETWEEN '0' AND '9'", vec![]),
        ("name = score", vec![]),
    ] {
        let expr = parse(src).unwrap();
        assert!(expr.check(&table_lookup).is_err(), "{src}");
        let want: BTreeSet<i64> = want_true.into_iter().collect();
        assert_eq!(
            eval_ids(&table, &expr, &params(), Some(true)),
            want,
            "{src}"
        );
        assert_agrees(&table, &expr, &params());
    }
}

/// Loads `rows` (name, region, score, weight, note; ids from 1) into SQLite and
/// PostgreSQL; for each filter checks the rows `eval` calls true, and that both
/// engines agree with `eval` on every row.
fn assert_engines_agree(pg: &mut PgTable, rows: &[Vec<Value>], cases: &[(&str, Vec<i64>)]) {
    let table = load(rows);
    pg.load(&table.rows);
    assert_eq!(pg.rows, table.rows, "cells PostgreSQL cannot hold");
    for (src, want_true) in cases {
        let expr = parse(src).unwrap();
        expr.check(&table_lookup)
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        let want: BTreeSet<i64> = want_true.iter().copied().collect();
        assert_eq!(
            eval_ids(&table, &expr, &params(), Some(true)),
            want,
            "{src}"
        );
        assert_agrees(&table, &expr, &params());
        pg.assert_agrees(&expr, &params());
    }
}

#[test]
fn postgres_compares_integers_and_reals_exactly() {
    // PostgreSQL compares int8 with float8 by rounding the int8 to a double:
    // 2^53 + 1 would equal 2^53, and i64::MAX would equal 2^63.
    let row = |score: i64, weight: f64| {
        vec![
            Value::Null,
            Value::Null,
            Value::Integer(score),
            Value::Real(weight),
            Value::Null,
        ]
    };
    let two_53 = 2f64.powi(53);
    let two_63 = 2f64.powi(63);
    let rows = [
        row((1 << 53) + 1, two_53),
        row(i64::MAX, two_63),
        row(1 << 53, two_53 + 2.0),
        row(i64::MIN, -two_63),
    ];
    let mut pg = PgTable::connect(PG_SCHEMA);
    assert_engines_agree(
        &mut pg,
        &rows,
        &[
            // A real column against an integer no double holds.
            ("weight = 9007199254740993", vec![]),
            ("weight <> 9007199254740993", vec![1, 2, 3, 4]),
            ("weight < 9007199254740993", vec![1, 4]),
            ("weight >= 9007199254740993", vec![2, 3]),
            ("weight <= 9223372036854775807", vec![1, 3, 4]),
            ("-9223372036854775807 > weight", vec![4]),
            (
                "weight BETWEEN 9007199254740993 AND 9223372036854775807",
                vec![3],
            ),
            // An integer column against a whole real beyond 2^53.
            ("score = 9007199254740992.0", vec![3]),
            ("score < 9223372036854775808.0", vec![1, 2, 3, 4]),
            ("score >= -9223372036854775808.0", vec![1, 2, 3, 4]),
            // IN lists mixing integers and reals.
            ("score IN (9007199254740993, 0.5)", vec![1]),
            ("score NOT IN (9007199254740992, 0.5)", vec![1, 2, 4]),
            ("weight IN (9007199254740993, 0.5)", vec![]),
            // Literals against literals.
            ("9007199254740993 > 9007199254740992.0 AND id = 1", vec![1]),
            (
                "9223372036854775807 < 9223372036854775808.0 AND id = 2",
                vec![2],
            ),
        ],
    );
}

#[test]
fn postgres_compares_text_binary_whatever_the_collation() {
    // Columns whose own collation orders a < A < b < B, where binary has
    // A < B < a < b < z < é: only `COLLATE "C"` (from the writer, and from the
    // caller's `column_sql` for columns) gives the binary order.
    let schema = PG_SCHEMA.replace(" text", " text COLLATE \"und-x-icu\"");
    let mut pg = PgTable::connect(&schema);
    let row = |name: &str, region: &str| {
        vec![
            Value::Text(name.into()),
            Value::Text(region.into()),
            Value::Null,
            Value::Null,
            Value::Null,
        ]
    };
    let rows = [row("a", "B"), row("B", "a"), row("b", "A"), row("é", "z")];
    assert_engines_agree(
        &mut pg,
        &rows,
        &[
            ("name < 'b'", vec![1, 2]),
            ("name > 'Z'", vec![1, 3, 4]),
            ("name < region", vec![2]),
            ("name BETWEEN region AND 'z'", vec![1, 3]),
            ("region NOT BETWEEN 'B' AND name", vec![2, 3]),
            ("name IN ('A', 'b', $user)", vec![3]),
            ("name LIKE '_' AND name NOT LIKE 'b%'", vec![1, 2, 4]),
        ],
    );
}

// -----------------------------------------------------------------------------------
// Evaluation

#[test]
fn three_valued_logic() {
    // region is NULL, score is 3.
    let row = |name: &str| match name {
        "score" => Value::Integer(3),
        _ => Value::Null,
    };
    for (src, want) in [
        ("region = 'a'", None),
        ("NOT region = 'a'", None),
        ("region = 'a' AND score = 4", Some(false)),
        ("region = 'a' AND score = 3", None),
        ("region = 'a' OR score = 3", Some(true)),
        ("region = 'a' OR score = 4", None),
        ("score IN (1, NULL)", None),
        ("score IN (3, NULL)", Some(true)),
        ("score NOT IN (1, NULL)", None),
        ("score NOT IN (1, 2)", Some(true)),
        ("region IN ('a')", None),
        ("region IS NULL", Some(true)),
        ("score IS NOT NULL", Some(true)),
        ("score BETWEEN NULL AND 2", Some(false)),
        ("score BETWEEN 1 AND NULL", None),
        ("score NOT BETWEEN 4 AND NULL", Some(true)),
        ("region LIKE '%'", None),
        ("region NOT LIKE '%'", None),
        ("score = NULL", None),
        ("score >= 2.5", Some(true)),
    ] {
        let expr = parse(src).unwrap();
        assert_eq!(expr.eval(&row, &params()), want, "{src}");
        assert_eq!(expr.matches(&row, &params()), want == Some(true), "{src}");
    }
}

#[test]
fn like_matching() {
    for (text, pattern, want) in [
        ("abc", "a%", true),
        ("abc", "A%", false),
        ("abc", "_b_", true),
        ("abc", "%c", true),
        ("abc", "%b", false),
        ("", "%", true),
        ("", "_", false),
        ("", "", true),
        ("a", "", false),
        ("aXbXc", "a%b%c", true),
        ("mississippi", "%iss%ppi", true),
        ("mississippi", "%iss%ppx", false),
        ("ab", "a%%b", true),
        ("é", "_", true),
        ("😀x", "_x", true),
        (r"a\b", r"a\b", true),
        ("a*b", "a*b", true),
        ("aXb", "a*b", false),
        ("[x]", "[x]", true),
        ("x", "[x]", false),
        // SQLite's matcher reads C strings: both end at NUL.
        ("abc\0def", "abc", true),
        ("abc", "abc\0zzz", true),
    ] {
        assert_eq!(like_match(pattern, text), want, "{text:?} LIKE {pattern:?}");
    }
}

// -----------------------------------------------------------------------------------
// SQLite harness for the property

const SCHEMA: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, \
        region TEXT COLLATE NOCASE, score INTEGER, weight REAL, note TEXT)";
const DATA_COLUMNS: [&str; 5] = ["name", "region", "score", "weight", "note"];

/// The test table in SQLite, and its rows as SQLite stored them.
struct Table {
    conn: Connection,
    rows: Vec<(i64, Vec<Value>)>,
}

fn to_sqlite(value: &Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(*i),
        Value::Real(r) => SqlValue::Real(*r),
        Value::Text(s) => SqlValue::Text(s.clone()),
        Value::Blob(b) => SqlValue::Blob(b.clone()),
    }
}

fn from_sqlite(value: SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Integer(i),
        SqlValue::Real(r) => Value::Real(r),
        SqlValue::Text(s) => Value::Text(s),
        SqlValue::Blob(b) => Value::Blob(b),
    }
}

fn load(rows: &[Vec<Value>]) -> Table {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    for (idx, row) in rows.iter().enumerate() {
        let id = Value::Integer(idx as i64 + 1);
        let cells = std::iter::once(&id).chain(row).map(to_sqlite);
        conn.execute(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)",
            rusqlite::params_from_iter(cells),
        )
        .unwrap();
    }
    // Read back: column affinity may have converted what was inserted.
    let rows = conn
        .prepare("SELECT id, name, region, score, weight, note FROM t ORDER BY id")
        .unwrap()
        .query_map([], |row| {
            let cells = (1..=DATA_COLUMNS.len())
                .map(|idx| row.get::<_, SqlValue>(idx).map(from_sqlite))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((row.get(0)?, cells))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    Table { conn, rows }
}

fn select_ids(conn: &Connection, where_sql: &str, binds: &[Value]) -> BTreeSet<i64> {
    let sql = format!("SELECT id FROM t WHERE {where_sql}");
    let mut stmt = conn.prepare(&sql).unwrap_or_else(|e| panic!("{e}: {sql}"));
    stmt.query_map(
        rusqlite::params_from_iter(binds.iter().map(to_sqlite)),
        |row| row.get(0),
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn eval_ids(table: &Table, expr: &Expr, params: &Params, want: Option<bool>) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    for (id, cells) in &table.rows {
        let row = |name: &str| {
            if name == "id" {
                return Value::Integer(*id);
            }
            let idx = DATA_COLUMNS
                .iter()
                .position(|c| *c == name)
                .expect("a column of t");
            cells[idx].clone()
        };
        if expr.eval(&row, params) == want {
            ids.insert(*id);
        }
    }
    ids
}

/// SQLite, with bound and with inlined values, selects exactly the rows `eval` calls
/// true, and `NOT (…)` selects exactly those it calls false.
fn assert_agrees(table: &Table, expr: &Expr, params: &Params) {
    let want_true = eval_ids(table, expr, params, Some(true));
    let want_false = eval_ids(table, expr, params, Some(false));
    let mut binds = Vec::new();
    let sql = expr.to_sql(Dialect::Sqlite, &t_column, params, &mut binds);
    let inline = expr.to_sql_inline(Dialect::Sqlite, &t_column, params);
    let context = format!(
        "filter: {expr}\nsql: {sql}\nbinds: {binds:?}\ninline: {inline}\nrows: {:?}",
        table.rows
    );
    assert_eq!(
        select_ids(&table.conn, &sql, &binds),
        want_true,
        "{context}"
    );
    assert_eq!(
        select_ids(&table.conn, &format!("NOT ({sql})"), &binds),
        want_false,
        "NOT\n{context}"
    );
    assert_eq!(
        select_ids(&table.conn, &inline, &[]),
        want_true,
        "inline\n{context}"
    );
    assert_eq!(
        select_ids(&table.conn, &format!("NOT ({inline})"), &[]),
        want_false,
        "NOT inline\n{context}"
    );
}

// -----------------------------------------------------------------------------------
// PostgreSQL harness for the property

/// The environment variable naming the PostgreSQL server of the tests.
const PG_URL_VAR: &str = "FIELDSYNC_TEST_PG";

/// `t` as the main database on PostgreSQL would type it: SQLite's INTEGER, REAL and
/// TEXT become bigint, double precision and text; `region`'s `COLLATE NOCASE`
/// becomes plain text, since the filter compares binary anyway. Temporary, so
/// parallel runs each have their own.
const PG_SCHEMA: &str = "CREATE TEMPORARY TABLE t (id bigint PRIMARY KEY, name text, \
        region text, score bigint, weight double precision, note text)";

/// Connects to the test server, or fails saying how to point the tests elsewhere.
fn pg_connect() -> postgres::Client {
    // FIELDSYNC_TEST_PG, the local server, or a private cluster started for the run.
    let url = fieldsync_testkit::pg::base_url();
    let mut config: postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("{PG_URL_VAR} is not a PostgreSQL URL: {e}"));
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    config.connect(postgres::NoTls).unwrap_or_else(|e| {
        // The URL may hold a password: name the server without it.
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|host| match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        panic!(
            "cannot connect to PostgreSQL (host {}, port {}, database {}, user {}): {}\n\
                 These tests need a PostgreSQL server (15 or later) in which they may create \
                 temporary tables. Set {PG_URL_VAR} to its URL.",
            hosts.join(","),
            ports.join(","),
            config.get_dbname().unwrap_or("(the user's)"),
            config.get_user().unwrap_or("(the OS user)"),
            pg_error(&e),
        )
    })
}

/// An error with its causes (`Display` says only "db error" or "error connecting
/// to server").
fn pg_error(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("PostgreSQL error {}: {}", db.code().code(), db.message());
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// A column reference as a caller of `to_sql` on PostgreSQL writes it: text columns
/// get `COLLATE "C"`, so two text columns compare binary too.
fn pg_column(name: &str) -> String {
    if TEXT_COLUMNS.contains(&name) {
        format!("{} COLLATE \"C\"", t_column(name))
    } else {
        t_column(name)
    }
}

/// A value as a PostgreSQL parameter; `column` types a NULL.
fn pg_param<'a>(value: &'a Value, column: &str) -> &'a (dyn postgres::types::ToSql + Sync) {
    const NULL_INTEGER: Option<i64> = None;
    const NULL_REAL: Option<f64> = None;
    const NULL_TEXT: Option<&str> = None;
    match value {
        Value::Integer(i) => i,
        Value::Real(r) => r,
        Value::Text(s) => s,
        Value::Blob(b) => b,
        Value::Null => match column {
            "id" | "score" => &NULL_INTEGER,
            "weight" => &NULL_REAL,
            _ => &NULL_TEXT,
        },
    }
}

/// PostgreSQL's text cannot hold NUL: text is cut at the first one. (User and device
/// names never hold one, and no row on PostgreSQL can.)
fn pg_text(s: &str) -> String {
    s.split('\0').next().unwrap_or_default().to_string()
}

/// A cell as the PostgreSQL column can hold it: SQLite lets any column hold any
/// storage class, a typed column does not, so what does not fit becomes NULL.
fn pg_cell(column: &str, value: &Value) -> Value {
    match (column, value) {
        ("score", Value::Integer(_)) | ("weight", Value::Real(_)) => value.clone(),
        ("name" | "region" | "note", Value::Text(s)) => Value::Text(pg_text(s)),
        _ => Value::Null,
    }
}

fn pg_params(params: &Params) -> Params {
    Params {
        user: pg_text(&params.user),
        device: pg_text(&params.device),
    }
}

/// The test table in PostgreSQL, and the rows it holds now.
struct PgTable {
    client: postgres::Client,
    rows: Vec<(i64, Vec<Value>)>,
}

impl PgTable {
    /// Connects and creates `t` with `schema` (see [`PG_SCHEMA`]).
    fn connect(schema: &str) -> PgTable {
        let mut client = pg_connect();
        client.batch_execute(schema).unwrap();
        PgTable {
            client,
            rows: Vec::new(),
        }
    }

    /// Replaces the table's rows with `rows` (as SQLite stored them), each cell as
    /// its PostgreSQL column can hold it.
    fn load(&mut self, rows: &[(i64, Vec<Value>)]) {
        self.rows = rows
            .iter()
            .map(|(id, cells)| {
                let cells = DATA_COLUMNS
                    .iter()
                    .zip(cells)
                    .map(|(column, value)| pg_cell(column, value))
                    .collect();
                (*id, cells)
            })
            .collect();
        self.client.batch_execute("DELETE FROM t").unwrap();
        if self.rows.is_empty() {
            return;
        }
        let ids: Vec<Value> = self
            .rows
            .iter()
            .map(|(id, _)| Value::Integer(*id))
            .collect();
        let mut tuples = Vec::new();
        let mut binds: Vec<&(dyn postgres::types::ToSql + Sync)> = Vec::new();
        for ((_, cells), id) in self.rows.iter().zip(&ids) {
            let first = binds.len() + 1;
            binds.push(pg_param(id, "id"));
            for (column, value) in DATA_COLUMNS.iter().zip(cells) {
                binds.push(pg_param(value, column));
            }
            let placeholders: Vec<String> =
                (first..=binds.len()).map(|n| format!("${n}")).collect();
            tuples.push(format!("({})", placeholders.join(", ")));
        }
        let sql = format!("INSERT INTO t VALUES {}", tuples.join(", "));
        self.client.execute(&sql, &binds).unwrap();
    }

    /// PostgreSQL, with bound and with inlined values, gives every row the value
    /// `eval` gives it: true, false or NULL.
    fn assert_agrees(&mut self, expr: &Expr, params: &Params) {
        let params = pg_params(params);
        let mut binds = Vec::new();
        let sql = expr.to_sql(Dialect::Postgres, &pg_column, &params, &mut binds);
        let inline = expr.to_sql_inline(Dialect::Postgres, &pg_column, &params);
        let context = format!(
            "filter: {expr}\nparams: {params:?}\npostgres sql: {sql}\nbinds: {binds:?}\n\
                 inline: {inline}\nrows: {:?}",
            self.rows
        );
        let query = format!("SELECT id, ({sql}), ({inline}) FROM t ORDER BY id");
        let bind_refs: Vec<_> = binds.iter().map(|value| pg_param(value, "")).collect();
        let got: Vec<(i64, Option<bool>, Option<bool>)> = self
            .client
            .query(&query, &bind_refs)
            .unwrap_or_else(|e| panic!("{}\n{context}", pg_error(&e)))
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        let want: Vec<(i64, Option<bool>, Option<bool>)> = self
            .rows
            .iter()
            .map(|(id, cells)| {
                let row = |name: &str| {
                    if name == "id" {
                        return Value::Integer(*id);
                    }
                    let idx = DATA_COLUMNS
                        .iter()
                        .position(|c| *c == name)
                        .expect("a column of t");
                    cells[idx].clone()
                };
                let value = expr.eval(&row, &params);
                (*id, value, value)
            })
            .collect();
        assert_eq!(got, want, "(id, bound, inline)\n{context}");
    }
}

// -----------------------------------------------------------------------------------
// Strategies

/// Characters that trip case folding, UTF-8 and the LIKE and GLOB metacharacters.
const CHARS: &[char] = &[
    'a', 'A', 'b', 'B', 'é', 'É', 'ß', '😀', '%', '_', '*', '?', '[', ']', '^', '-', '\'', '"',
    '\\', ' ',
];
/// Texts that rows, literals and parameters share, so equalities happen.
const TEXTS: &[&str] = &[
    "",
    "a",
    "A",
    "ab",
    "aB",
    "Ab",
    "b",
    "é",
    "É",
    "%",
    "_",
    "a%",
    "a_b",
    "*",
    "?",
    "[",
    "[a]",
    "a*b",
    "north",
    "North",
    "x'); DROP TABLE t; --",
];
const LIKE_CHARS: &[char] = &['a', 'A', 'b', 'é', '%', '_', '*', '?', '[', ']', '\''];
const TEXT_COLUMNS: &[&str] = &["name", "region", "note"];
const NUMBER_COLUMNS: &[&str] = &["id", "score", "weight"];
const INTEGER_COLUMNS: &[&str] = &["id", "score"];
const REAL_COLUMNS: &[&str] = &["weight"];

fn text_value() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        select(TEXTS).prop_map(String::from),
        vec(select(CHARS), 0..5).prop_map(String::from_iter),
    ]
}

/// Text as rows and parameters may hold it: sometimes with a NUL inside.
fn text_with_nul() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => text_value(),
        1 => (text_value(), text_value()).prop_map(|(a, b)| format!("{a}\0{b}")),
    ]
}

fn integer() -> impl Strategy<Value = i64> + Clone {
    prop_oneof![
        6 => -3i64..=3,
        // 2^53 + 1 is the first integer no f64 holds; i64::MAX rounds to 2^63.
        1 => select(&[
            i64::MIN, i64::MIN + 1, i64::MAX, 1 << 53, (1 << 53) + 1, (1 << 53) + 2,
            -(1 << 53) - 1,
        ][..]),
        1 => any::<i64>(),
    ]
}

fn real() -> impl Strategy<Value = f64> + Clone {
    prop_oneof![
        // 2^53 is where f64 stops holding every integer; ±2^63 are i64's bounds.
        4 => select(vec![
            -1.5, -0.0, 0.0, 0.5, 1.0, 2.0, 2.5, 2f64.powi(53), 2f64.powi(53) + 2.0,
            -(2f64.powi(53)), 2f64.powi(63), -(2f64.powi(63)), 1e300,
        ]),
        2 => (-30i32..30).prop_map(|n| f64::from(n) / 4.0),
        1 => any::<f64>().prop_filter("finite", |r| r.is_finite()),
    ]
}

fn text_cell() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::Null),
        8 => text_with_nul().prop_map(Value::Text),
        1 => integer().prop_map(Value::Integer),
    ]
}

fn number_cell() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::Null),
        4 => integer().prop_map(Value::Integer),
        3 => real().prop_map(Value::Real),
        1 => text_value().prop_map(Value::Text),
    ]
}

fn row() -> impl Strategy<Value = Vec<Value>> {
    (
        text_cell(),
        text_cell(),
        number_cell(),
        number_cell(),
        text_cell(),
    )
        .prop_map(|(name, region, score, weight, note)| vec![name, region, score, weight, note])
}

fn param() -> impl Strategy<Value = Param> + Clone {
    select(&[Param::User, Param::Device][..])
}

fn text_literal() -> impl Strategy<Value = Operand> + Clone {
    prop_oneof![
        3 => text_value().prop_map(Operand::Text),
        2 => param().prop_map(Operand::Param),
        1 => Just(Operand::Null),
    ]
}

fn number_literal() -> impl Strategy<Value = Operand> + Clone {
    prop_oneof![
        3 => integer().prop_map(Operand::Integer),
        2 => real().prop_map(Operand::Real),
        1 => Just(Operand::Null),
    ]
}

fn text_operand() -> impl Strategy<Value = Operand> + Clone {
    prop_oneof![
        3 => select(TEXT_COLUMNS).prop_map(Operand::column),
        2 => text_literal(),
    ]
}

fn number_operand(columns: &'static [&'static str]) -> impl Strategy<Value = Operand> + Clone {
    prop_oneof![
        3 => select(columns).prop_map(Operand::column),
        2 => number_literal(),
    ]
}

fn cmp_op() -> impl Strategy<Value = CmpOp> {
    select(
        &[
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
        ][..],
    )
}

fn like_pattern() -> impl Strategy<Value = Pattern> {
    prop_oneof![
        3 => vec(select(LIKE_CHARS), 0..5).prop_map(|chars| Pattern::Text(String::from_iter(chars))),
        1 => param().prop_map(Pattern::Param),
    ]
}

/// Well-typed predicates over `t`, every form of the language.
fn predicate() -> impl Strategy<Value = Expr> {
    let compare = |operand: BoxedStrategy<Operand>| {
        (operand.clone(), cmp_op(), operand).prop_map(|(left, op, right)| Expr::Compare {
            left,
            op,
            right,
        })
    };
    let is_in = |operand: BoxedStrategy<Operand>, literal: BoxedStrategy<Operand>| {
        (operand, vec(literal, 1..4), any::<bool>()).prop_map(|(operand, list, negated)| Expr::In {
            operand,
            list,
            negated,
        })
    };
    let between = |operand: BoxedStrategy<Operand>| {
        (operand.clone(), operand.clone(), operand, any::<bool>()).prop_map(
            |(operand, low, high, negated)| Expr::Between {
                operand,
                low,
                high,
                negated,
            },
        )
    };
    let text = text_operand().boxed();
    // An integer column never meets a real column (the checker refuses that).
    let integer = number_operand(INTEGER_COLUMNS).boxed();
    let real = number_operand(REAL_COLUMNS).boxed();
    prop_oneof![
        2 => compare(text.clone()),
        1 => compare(integer.clone()),
        1 => compare(real.clone()),
        2 => is_in(text.clone(), text_literal().boxed()),
        2 => is_in(number_operand(NUMBER_COLUMNS).boxed(), number_literal().boxed()),
        2 => between(text.clone()),
        1 => between(integer),
        1 => between(real),
        2 => (text, like_pattern(), any::<bool>()).prop_map(|(operand, pattern, negated)| {
            Expr::Like {
                operand,
                pattern,
                negated,
            }
        }),
        2 => (
            select([TEXT_COLUMNS, NUMBER_COLUMNS].concat()).prop_map(Operand::column),
            any::<bool>()
        )
            .prop_map(|(operand, negated)| Expr::IsNull { operand, negated }),
    ]
}

/// Predicates the checker may refuse (text against numbers), except LIKE on numbers,
/// whose text form SQLite and `eval` spell differently for reals.
fn unchecked_predicate() -> impl Strategy<Value = Expr> {
    let any_operand = prop_oneof![text_operand(), number_operand(NUMBER_COLUMNS)].boxed();
    let any_literal = prop_oneof![text_literal(), number_literal()].boxed();
    prop_oneof![
        (any_operand.clone(), cmp_op(), any_operand.clone())
            .prop_map(|(left, op, right)| Expr::Compare { left, op, right }),
        (any_operand.clone(), vec(any_literal, 1..4), any::<bool>()).prop_map(
            |(operand, list, negated)| Expr::In {
                operand,
                list,
                negated,
            }
        ),
        (
            any_operand.clone(),
            any_operand.clone(),
            any_operand,
            any::<bool>()
        )
            .prop_map(|(operand, low, high, negated)| Expr::Between {
                operand,
                low,
                high,
                negated,
            }),
        predicate(),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    predicate().prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| Expr::And(Box::new(l), Box::new(r))),
            (inner.clone(), inner).prop_map(|(l, r)| Expr::Or(Box::new(l), Box::new(r))),
        ]
    })
}

fn params_strategy() -> impl Strategy<Value = Params> {
    (text_with_nul(), text_with_nul()).prop_map(|(user, device)| Params { user, device })
}

/// Source-ish soup for the parser: tokens of the language and of SQL, badly mixed.
fn token_soup() -> impl Strategy<Value = String> {
    const TOKENS: &[&str] = &[
        "(", ")", "NOT", "AND", "OR", "IN", "IS", "NULL", "LIKE", "BETWEEN", "x", "\"y\"", "=",
        "<>", "<=", "'a'", "'", "1", "-2.5e3", "$user", "$x", ",", ";", "--", "f(", "SELECT",
        "1e999",
    ];
    vec(select(TOKENS), 0..24).prop_map(|tokens| tokens.join(" "))
}

/// Cases per property: `PROPTEST_CASES` when set (thousands to measure), else 512.
fn n_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// The heart of the module: SQLite (bound and inlined) and `eval` agree on every
/// row, for the filter and for its negation; so does PostgreSQL (bound and inlined)
/// on the same rows as its typed columns hold them, true, false and NULL alike.
/// Fails when PostgreSQL cannot be reached (see [`pg_connect`]).
#[test]
fn sqlite_postgres_and_eval_agree() {
    let pg = RefCell::new(PgTable::connect(PG_SCHEMA));
    let mut config = ProptestConfig::with_cases(n_cases());
    config.source_file = Some(file!());
    config.test_name = Some(concat!(module_path!(), "::sqlite_postgres_and_eval_agree"));
    let mut runner = TestRunner::new(config);
    let strategy = (vec(row(), 0..12), expr(), params_strategy());
    let result = runner.run(&strategy, |(rows, expr, params)| {
        prop_assert_eq!(expr.check(&table_lookup), Ok(()));
        let table = load(&rows);
        assert_agrees(&table, &expr, &params);
        let mut pg = pg.borrow_mut();
        pg.load(&table.rows);
        pg.assert_agrees(&expr, &params);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
}

/// Decimal columns (PostgreSQL `numeric`, travelling as text): `eval_typed` on the
/// text agrees with PostgreSQL comparing the numeric column, exact digits, NaN and
/// infinities included.
#[test]
fn postgres_numeric_and_eval_typed_agree() {
    let mut client = pg_connect();
    client
        .batch_execute(
            "CREATE TEMPORARY TABLE d (id bigint PRIMARY KEY, amount numeric, other numeric,
                     n bigint, w double precision)",
        )
        .unwrap();
    let amounts = [
        Some("0.10"),
        Some("5"),
        Some("5.00"),
        Some("4.9999999999999999999999"),
        Some("5.0000000000000000001"),
        Some("123456789012345678901234567890.123"),
        Some("-0.5"),
        Some("NaN"),
        Some("Infinity"),
        Some("-Infinity"),
        None,
        Some("9007199254740993"),
        Some("9007199254740992.5"),
    ];
    for (id, amount) in amounts.iter().enumerate() {
        client
            .execute(
                "INSERT INTO d VALUES ($1, $2::text::numeric, 5.0, 5, 0.1)",
                &[&(id as i64), amount],
            )
            .unwrap();
    }
    let column = |name: &str| format!("\"d\".{}", quote_ident(name));
    let lookup = |name: &str| match name {
        "amount" | "other" => Some(ColumnType::Decimal),
        "n" => Some(ColumnType::Integer),
        "w" => Some(ColumnType::Real),
        _ => None,
    };
    for src in [
        "amount >= 5",
        "amount = 0.1",
        "amount < 5.5",
        "amount IN (5, 0.1)",
        "amount NOT IN (5, -0.5)",
        "amount BETWEEN -1 AND 5",
        "amount > 9007199254740992",
        "amount = 9007199254740993",
        "amount <> 5",
        "amount > other",
        "amount = n",
        "amount < w",
        "amount >= 1e30",
        "5 <= amount",
        "amount IS NULL OR amount < -1000",
    ] {
        let expr = parse(src).unwrap();
        expr.check(&lookup).unwrap();
        let mut binds = Vec::new();
        let sql = expr.to_sql(Dialect::Postgres, &column, &Params::default(), &mut binds);
        let refs: Vec<_> = binds.iter().map(|v| pg_param(v, "")).collect();
        let got: Vec<Option<bool>> = client
            .query(&format!("SELECT ({sql}) FROM d ORDER BY id"), &refs)
            .unwrap_or_else(|e| panic!("{src}: {}", pg_error(&e)))
            .iter()
            .map(|r| r.get(0))
            .collect();
        let want: Vec<Option<bool>> = amounts
            .iter()
            .map(|amount| {
                let row = |name: &str| match name {
                    "amount" => amount.map_or(Value::Null, |a| Value::Text(a.into())),
                    "other" => Value::Text("5.0".into()),
                    "n" => Value::Integer(5),
                    "w" => Value::Real(0.1),
                    _ => Value::Null,
                };
                let decimal = |name: &str| matches!(name, "amount" | "other");
                expr.eval_typed(&row, &decimal, &Params::default())
            })
            .collect();
        assert_eq!(got, want, "{src}\nsql: {sql}\nbinds: {binds:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(n_cases()))]

    /// The same without the type checker: the SQL converts nothing either.
    #[test]
    fn sqlite_and_eval_agree_unchecked(
        rows in vec(row(), 0..12),
        expr in unchecked_predicate().prop_recursive(3, 12, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
                (inner.clone(), inner).prop_map(|(l, r)| Expr::And(Box::new(l), Box::new(r))),
            ]
        }),
        params in params_strategy(),
    ) {
        let table = load(&rows);
        assert_agrees(&table, &expr, &params);
    }

    #[test]
    fn display_parses_back(expr in expr()) {
        let src = expr.to_string();
        prop_assert_eq!(parse(&src), Ok(expr), "{}", src);
    }

    #[test]
    fn parse_never_panics(
        soup in token_soup(),
        chars in vec(any::<char>(), 0..48),
    ) {
        let _ = parse(&soup);
        let _ = parse(&String::from_iter(chars));
    }
}
