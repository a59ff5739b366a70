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

/// Creates the sample tables in `conn` and fills them: `n_assets` assets alternating
/// between regions `north` and `south`, two inspections and one work order per
/// three assets. One transaction.
pub fn create(conn: &mut Connection, n_assets: i64) -> Result<()> {
    let tx = conn
        .transaction()
        .map_err(|e| StoreError::Db(e.to_string()))?;
    tx.execute_batch(SCHEMA)
        .map_err(|e| StoreError::Db(format!("creating sample tables: {e}")))?;
    {
        let mut g = Gen::new(42);
        let mut assets = tx.prepare(
            "INSERT INTO assets (id, name, category, status, region, x, y, installed, notes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut insp = tx.prepare(
            "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut orders = tx.prepare("INSERT INTO work_orders (id, asset_id, title, priority, status, due) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        for id in 1..=n_assets {
            let region = if id % 2 == 1 { "north" } else { "south" };
            let a = asset_row(&mut g, id, region);
            assets.execute(params![
                a.id,
                a.name,
                a.category,
                a.status,
                a.region,
                a.x,
                a.y,
                a.installed,
                a.notes
            ])?;
            for k in 0..2 {
                insp.execute(params![
                    format!("insp-{id:07}-{k}"),
                    id,
                    g.pick(&INSPECTORS),
                    format!(
                        "2026-{:02}-{:02}T{:02}:00:00.000Z",
                        1 + g.below(10),
                        1 + g.below(28),
                        7 + g.below(10)
                    ),
                    g.pick(&RESULTS),
                    if g.below(3) == 0 {
                        None
                    } else {
                        Some("routine")
                    },
                ])?;
            }
            if id % 3 == 0 {
                orders.execute(params![
                    format!("wo-{id:07}"),
                    id,
                    format!("service {}", a.name),
                    1 + g.below(5) as i64,
                    ["open", "in-progress", "done"][g.below(3) as usize],
                    format!("2026-12-{:02}T00:00:00.000Z", 1 + g.below(28)),
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}
