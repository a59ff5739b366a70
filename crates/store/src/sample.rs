//! A sample asset-management main database (assets, inspections, work orders in two
//! regions) from a fixed generator: the demo, the tests and the benchmark all use it.

use rusqlite::{Connection, params};

use crate::{Result, StoreError};

/// The organisation's tables, as a desktop application would have made them.
pub const SCHEMA: &str = r#"
CREATE TABLE assets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    status TEXT NOT NULL,
    region TEXT NOT NULL,
    x REAL,
    y REAL,
    installed TEXT,
    notes TEXT
);
CREATE TABLE inspections (
    id TEXT PRIMARY KEY,
    asset_id INTEGER NOT NULL REFERENCES assets (id),
    inspector TEXT NOT NULL,
    inspected_at TEXT NOT NULL,
    result TEXT,
    notes TEXT
);
CREATE TABLE work_orders (
    id TEXT PRIMARY KEY,
    asset_id INTEGER NOT NULL REFERENCES assets (id),
    title TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 3,
    status TEXT NOT NULL DEFAULT 'open',
    due TEXT
);
"#;

/// The demo's task files.
pub const TASK_NORTH: &str = r#"
name = "north-inspections"
description = "Assets of the north region and their inspections"
[[tables]]
name = "assets"
filter = "region = 'north' AND status <> 'retired'"
columns = ["id", "name", "category", "status", "region", "x", "y"]
write = ["update"]
[[tables]]
name = "inspections"
parent = { table = "assets", key = "asset_id" }
filter = "inspector = $user"
write = ["insert", "update"]
conflict = "field-merge"
"#;

pub const TASK_SOUTH: &str = r#"
name = "south-work-orders"
description = "Open work orders of the south region"
[[tables]]
name = "assets"
filter = "region = 'south'"
columns = ["id", "name", "category", "status", "region"]
[[tables]]
name = "work_orders"
parent = { table = "assets", key = "asset_id" }
filter = "status IN ('open', 'in-progress')"
write = ["update"]
"#;

const CATEGORIES: [&str; 6] = ["pump", "valve", "hydrant", "meter", "pipe", "tank"];
const STATUSES: [&str; 4] = ["active", "active", "maintenance", "retired"];
const INSPECTORS: [&str; 3] = ["ana", "ben", "chloe"];
const RESULTS: [&str; 3] = ["ok", "worn", "failed"];

/// A small deterministic generator (xorshift64*), so every run makes the same rows.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One asset row (~200 bytes), as the benchmark's fixed generator makes it:
/// `(id, name, category, status, region, x, y, installed, notes)`.
pub struct AssetRow {
    pub id: i64,
    pub name: String,
    pub category: &'static str,
    pub status: &'static str,
    pub region: &'static str,
    pub x: f64,
    pub y: f64,
    pub installed: String,
    pub notes: String,
}

impl AssetRow {
    /// The row as a line of COPY's text format (tab-separated, newline-ended); the
    /// generator makes no tabs, newlines or backslashes.
    pub fn copy_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{:?}\t{:?}\t{}\t{}\n",
            self.id,
            self.name,
            self.category,
            self.status,
            self.region,
            self.x,
            self.y,
            self.installed,
            self.notes
        )
    }
}

pub fn asset_row(g: &mut Gen, id: i64, region: &'static str) -> AssetRow {
    let category = g.pick(&CATEGORIES);
    AssetRow {
        id,
        name: format!("{category}-{id:07}"),
        category,
        status: g.pick(&STATUSES),
        region,
        x: 14.0 + g.below(1_000_000) as f64 / 1e6,
        y: 50.0 + g.below(1_000_000) as f64 / 1e6,
        installed: format!(
            "20{:02}-{:02}-{:02}T00:00:00.000Z",
            10 + g.below(15),
            1 + g.below(12),
            1 + g.below(28)
        ),
        notes: format!(
            "serial {:012x}; access via {} gate; last repainted {}; crew remarks: {}",
            g.next_u64() & 0xffff_ffff_ffff,
            if g.below(2) == 0 { "north" } else { "service" },
            2000 + g.below(25),
            ["none", "check seal", "noisy bearing", "paint flaking", "ok"][g.below(5) as usize]
        ),
    }
}

/// The PostgreSQL spelling of [`SCHEMA`]: the same tables with PostgreSQL's types.
pub const PG_SCHEMA: &str = r#"
CREATE TABLE assets (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    category text NOT NULL,
    status text NOT NULL,
    region text NOT NULL,
    x double precision,
    y double precision,
    installed text,
    notes text
);
CREATE TABLE inspections (
    id text PRIMARY KEY,
    asset_id bigint NOT NULL REFERENCES assets (id),
    inspector text NOT NULL,
    inspected_at text NOT NULL,
    result text,
    notes text
);
CREATE TABLE work_orders (
    id text PRIMARY KEY,
    asset_id bigint NOT NULL REFERENCES assets (id),
    title text NOT NULL,
    priority integer NOT NULL DEFAULT 3,
    status text NOT NULL DEFAULT 'open',
    due text
);
"#;

/// One generated row of the sample database.
pub enum SampleRow {
    Asset(AssetRow),
    /// `(id, asset_id, inspector, inspected_at, result, notes)`
    Inspection(
        String,
        i64,
        &'static str,
        String,
        &'static str,
        Option<&'static str>,
    ),
    /// `(id, asset_id, title, priority, status, due)`
    WorkOrder(String, i64, String, i64, &'static str, String),
}

/// Generates the sample rows: `n_assets` assets alternating between regions `north`
/// and `south`, two inspections per asset and one work order per three assets.
pub fn generate(n_assets: i64, mut f: impl FnMut(SampleRow) -> Result<()>) -> Result<()> {
    let mut g = Gen::new(42);
    for id in 1..=n_assets {
        let region = if id % 2 == 1 { "north" } else { "south" };
        let a = asset_row(&mut g, id, region);
        let order = (id % 3 == 0).then(|| format!("service {}", a.name));
        f(SampleRow::Asset(a))?;
        for k in 0..2 {
            let inspector = g.pick(&INSPECTORS);
            let at = format!(
                "2026-{:02}-{:02}T{:02}:00:00.000Z",
                1 + g.below(10),
                1 + g.below(28),
                7 + g.below(10)
            );
            let result = g.pick(&RESULTS);
            let notes = if g.below(3) == 0 {
                None
            } else {
                Some("routine")
            };
            f(SampleRow::Inspection(
                format!("insp-{id:07}-{k}"),
                id,
                inspector,
                at,
                result,
                notes,
            ))?;
        }
        if let Some(title) = order {
            let priority = 1 + g.below(5) as i64;
            let status = ["open", "in-progress", "done"][g.below(3) as usize];
            let due = format!("2026-12-{:02}T00:00:00.000Z", 1 + g.below(28));
            f(SampleRow::WorkOrder(
                format!("wo-{id:07}"),
                id,
                title,
                priority,
                status,
                due,
            ))?;
        }
    }
    Ok(())
}

/// Creates the sample tables in `conn` and fills them ([`generate`]). One transaction.
pub fn create(conn: &mut Connection, n_assets: i64) -> Result<()> {
    let tx = conn
        .transaction()
        .map_err(|e| StoreError::Db(e.to_string()))?;
    tx.execute_batch(SCHEMA)
        .map_err(|e| StoreError::Db(format!("creating sample tables: {e}")))?;
    {
        let mut assets = tx.prepare(
            "INSERT INTO assets (id, name, category, status, region, x, y, installed, notes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut insp = tx.prepare(
            "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut orders = tx.prepare("INSERT INTO work_orders (id, asset_id, title, priority, status, due) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        generate(n_assets, |row| {
            match row {
                SampleRow::Asset(a) => assets.execute(params![
                    a.id,
                    a.name,
                    a.category,
                    a.status,
                    a.region,
                    a.x,
                    a.y,
                    a.installed,
                    a.notes
                ])?,
                SampleRow::Inspection(id, asset, who, at, result, notes) => {
                    insp.execute(params![id, asset, who, at, result, notes])?
                }
                SampleRow::WorkOrder(id, asset, title, priority, status, due) => {
                    orders.execute(params![id, asset, title, priority, status, due])?
                }
            };
            Ok(())
        })?;
    }
    tx.commit()?;
    Ok(())
}

/// Creates the sample tables in a PostgreSQL database ([`PG_SCHEMA`]) and fills them
/// with the same rows as [`create`], by COPY. One transaction.
pub fn create_pg(client: &mut postgres::Client, n_assets: i64) -> Result<()> {
    use std::io::Write;
    let db = |e: postgres::Error| StoreError::Db(crate::postgres::pg_message(&e));
    let mut tx = client.transaction().map_err(db)?;
    tx.batch_execute(PG_SCHEMA).map_err(db)?;
    let mut text = [String::new(), String::new(), String::new()];
    // COPY's text format: tab-separated, `\N` for NULL; the generator makes no tabs,
    // newlines or backslashes.
    generate(n_assets, |row| {
        let (i, line) = match row {
            SampleRow::Asset(a) => (0, a.copy_line()),
            SampleRow::Inspection(id, asset, who, at, result, notes) => (
                1,
                format!(
                    "{id}\t{asset}\t{who}\t{at}\t{result}\t{}\n",
                    notes.unwrap_or("\\N")
                ),
            ),
            SampleRow::WorkOrder(id, asset, title, priority, status, due) => (
                2,
                format!("{id}\t{asset}\t{title}\t{priority}\t{status}\t{due}\n"),
            ),
        };
        text[i].push_str(&line);
        if text[i].len() > 1 << 20 {
            // Parents first: an inspection's asset must be there before it.
            for (i, t) in text.iter_mut().enumerate() {
                flush(&mut tx, i, t)?;
            }
        }
        Ok(())
    })?;
    for (i, t) in text.iter_mut().enumerate() {
        flush(&mut tx, i, t)?;
    }
    tx.commit().map_err(db)?;
    return Ok(());

    fn flush(tx: &mut postgres::Transaction<'_>, table: usize, text: &mut String) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let sql = [
            "COPY assets FROM STDIN",
            "COPY inspections FROM STDIN",
            "COPY work_orders FROM STDIN",
        ][table];
        let db = |e: postgres::Error| StoreError::Db(crate::postgres::pg_message(&e));
        let mut w = tx.copy_in(sql).map_err(db)?;
        w.write_all(text.as_bytes())
            .map_err(|e| StoreError::Db(format!("COPY: {e}")))?;
        w.finish().map_err(db)?;
        text.clear();
        Ok(())
    }
}
