-- A small asset-management database for the example tasks (docs/tasks.md).
-- Plain SQL that SQLite and PostgreSQL both take:
--   sqlite3 main.sqlite < examples/schema.sql
--   psql -d office -f examples/schema.sql

CREATE TABLE categories (
    code TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    inspect_every_days INTEGER NOT NULL
);
CREATE TABLE assets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL REFERENCES categories (code),
    status TEXT NOT NULL,
    region TEXT NOT NULL,
    x REAL,
    y REAL,
    purchase_price REAL
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
    crew_member TEXT NOT NULL,
    title TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    done_at TEXT,
    report TEXT
);

INSERT INTO categories (code, label, inspect_every_days) VALUES
    ('pump', 'Pump', 90),
    ('valve', 'Valve', 180),
    ('hydrant', 'Fire hydrant', 365);

INSERT INTO assets (id, name, category, status, region, x, y, purchase_price) VALUES
    (1, 'Pump station Birchwood', 'pump', 'active', 'north', 15.1, 46.2, 120000),
    (2, 'Valve Birchwood 1', 'valve', 'active', 'north', 15.2, 46.2, 900),
    (3, 'Hydrant Mill Street', 'hydrant', 'retired', 'north', 15.3, 46.3, 1500),
    (4, 'Hydrant Oak Lane', 'hydrant', 'maintenance', 'north', 15.3, 46.4, 1500),
    (5, 'Pump station Riverside', 'pump', 'active', 'south', 14.9, 45.8, 98000),
    (6, 'Valve Riverside 2', 'valve', 'active', 'south', 14.8, 45.8, 950);

INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes) VALUES
    ('i-1', 1, 'ana', '2026-11-02T08:30:00.000Z', 'ok', NULL),
    ('i-2', 2, 'ben', '2026-11-03T10:00:00.000Z', 'worn', 'seal leaks'),
    ('i-3', 3, 'ana', '2026-10-01T09:00:00.000Z', 'failed', 'retired after this'),
    ('i-4', 5, 'ben', '2026-11-04T11:15:00.000Z', 'ok', NULL);

INSERT INTO work_orders (id, asset_id, crew_member, title, status, done_at, report) VALUES
    ('w-1', 2, 'ana', 'Replace the valve seal', 'open', NULL, NULL),
    ('w-2', 4, 'ana', 'Repaint the hydrant', 'in-progress', NULL, NULL),
    ('w-3', 1, 'ana', 'Grease the pump bearings', 'done', '2026-11-10T14:00:00.000Z', 'done'),
    ('w-4', 5, 'ben', 'Check the pressure gauge', 'open', NULL, NULL);
