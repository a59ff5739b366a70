//! PostgreSQL values, at random: a main database whose defaults are a non-UTC
//! `TimeZone` and an odd `DateStyle` (the server restarted after setting them), a table
//! of `numeric(6,2)`, `numeric(40,10)`, `timestamptz`, `timestamp` and `date` columns in
//! a task filtered on a time and a numeric, field-merge, two devices of one user.
//!
//! `FIELDSYNC_PG_VALUES_CASES` (default 3) cases of `FIELDSYNC_PG_VALUES_STEPS` (default
//! 20) steps run with seeds 1, 2, 3, ...; `FIELDSYNC_PG_VALUES_SEED=N` starts at seed N.
//! A failing case prints its seed and the steps it took.
//!
//! Steps: the office writes through its own session, whose `TimeZone` and `DateStyle`
//! differ from the database's again, in local forms (`'2026-03-01 10:00:00+05:30'`,
//! a wall-clock time without zone, `'0.10'`), moving rows into and out of the slice,
//! inserting and deleting; a device edits its replica through the `sqlite3` shell or
//! rusqlite, writing times in the fixed-width UTC form and other RFC 3339 forms
//! (without fraction, without zone, with an offset), numerics as text, integers,
//! reals and exponents, sometimes a value equal to the one it holds in another form;
//! a device inserts inside the slice (on its bounds too) and outside it (refused by the
//! replica, nothing journaled); a device sends or syncs.
//!
//! Values are compared in canonical form, as PostgreSQL reads them: times as
//! fixed-width UTC text, numerics as the column's exact text. Checks:
//!
//! * after every sync the replica equals the slice as plain SQL on PostgreSQL selects
//!   it, in the canonical forms (no row missed, none extra);
//! * send by send (the main database read just before and after; nothing else writes
//!   meanwhile): a cell the send changed is one the upload wrote, to the upload's value,
//!   over the value the device saw (field-merge never overwrites an unseen value); every
//!   device value that is a change (not equal in instant or number to what the device
//!   saw) is in the main database after the send or in the conflict log's device
//!   values of that cell;
//! * no conflict is logged for a row that nobody else (the office, the other device)
//!   wrote since the device's base (its last sync).
//!
//! Left out: a device insert whose time, in an offset form, is on the other side of the
//! filter's bound by its text than by its instant (`'2026-01-01T04:00:00+05:30'` against
//! `due >= '2026-01-01T00:00:00.000000Z'`): the replica's check compares the text and
//! accepts it, the server compares the instant's canonical text and refuses the whole
//! upload as outside the slice. Device times are therefore drawn from January 2nd on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use fieldsync_store::sample::Gen;
use rusqlite::Connection;

use crate::harness::*;

const TABLE: &str = "ledger";
/// The columns besides the key, in the replica's order.
const COLS: [&str; 6] = ["amount", "big", "due", "local", "day", "note"];
const FMT: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"";
const DB_ZONES: [&str; 3] = ["America/New_York", "Asia/Kolkata", "Pacific/Chatham"];
const DB_STYLES: [&str; 2] = ["SQL, DMY", "German"];
const OFFICE_ZONES: [&str; 4] = [
    "Asia/Kathmandu",
    "America/St_Johns",
    "Australia/Adelaide",
    "Europe/Berlin",
];
const OFFICE_STYLES: [&str; 3] = ["Postgres, MDY", "ISO, DMY", "SQL, MDY"];
/// Zones without daylight saving time, with their offsets, for device offset forms.
const OFFSETS: [(&str, &str); 3] = [
    ("Asia/Kolkata", "+05:30"),
    ("America/Caracas", "-04:00"),
    ("Asia/Kathmandu", "+05:45"),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
        })
        .unwrap_or(default)
}

#[test]
fn numbers_and_times_in_any_zone_and_form_are_kept_or_logged() {
    let cases = env_u64("FIELDSYNC_PG_VALUES_CASES", 3);
    let steps = env_u64("FIELDSYNC_PG_VALUES_STEPS", 20) as usize;
    let first = env_u64("FIELDSYNC_PG_VALUES_SEED", 1);
    let started = Instant::now();
    let mut total = Stats::default();
    for seed in first..first + cases {
        let stats = run_case(seed, steps);
        eprintln!("pg_values seed {seed}: {steps} steps, {stats:?}");
        total.add(&stats);
    }
    eprintln!(
        "pg_values: {cases} case(s) of {steps} steps in {:?}: {total:?}",
        started.elapsed()
    );
}

#[derive(Debug, Default)]
struct Stats {
    office_writes: usize,
    device_writes: usize,
    refused_inserts: usize,
    same_value_other_form: usize,
    sends: usize,
    syncs: usize,
    values_sent: usize,
    values_applied: usize,
    values_logged: usize,
    conflicts: usize,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.office_writes += o.office_writes;
        self.device_writes += o.device_writes;
        self.refused_inserts += o.refused_inserts;
        self.same_value_other_form += o.same_value_other_form;
        self.sends += o.sends;
        self.syncs += o.syncs;
        self.values_sent += o.values_sent;
        self.values_applied += o.values_applied;
        self.values_logged += o.values_logged;
        self.conflicts += o.conflicts;
    }
}

/// A cell's canonical value: `None` is NULL.
type Value = Option<String>;
/// The main database's table in canonical form: key → values in `COLS` order.
type Snapshot = BTreeMap<String, Vec<Value>>;

/// One device write of one cell, canonical: `old` is `None` for an insert.
#[derive(Debug, Clone)]
struct Write {
    key: String,
    col: usize,
    old: Option<Value>,
    new: Value,
}

struct Dev {
    name: String,
    dir: DeviceDir,
    pending: Vec<Write>,
    /// Rows somebody else wrote since this device's base.
    others_wrote: HashSet<String>,
}

struct World {
    seed: u64,
    g: Gen,
    office: Office,
    /// The office's own session (its own `TimeZone` and `DateStyle`).
    session: postgres::Client,
    /// A UTC session that reads what devices wrote as PostgreSQL does.
    canon: postgres::Client,
    devs: Vec<Dev>,
    counter: u64,
    step: usize,
    log: Vec<String>,
    last_conflict: i64,
    /// Device values in the conflict log per (device, key, column), canonical.
    logged: HashMap<(String, String, usize), HashSet<Value>>,
    stats: Stats,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "pg_values FAILED with seed {} (replay: FIELDSYNC_PG_VALUES_SEED={} FIELDSYNC_PG_VALUES_CASES=1); steps:\n{}",
                self.seed,
                self.seed,
                self.log.join("\n")
            );
        }
    }
}

fn canonical_select(filter: &str) -> String {
    format!(
        "SELECT id, amount::text, big::text, to_char(due AT TIME ZONE 'UTC', '{FMT}'),
             to_char(local, '{FMT}'), to_char(day, 'YYYY-MM-DD'), note
         FROM {TABLE} {filter} ORDER BY id COLLATE \"C\""
    )
}

const SLICE_FILTER: &str = "WHERE due >= '2026-01-01T00:00:00Z' AND amount >= 5";

fn run_case(seed: u64, steps: usize) -> Stats {
    let mut g = Gen::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let db_zone = g.pick(&DB_ZONES);
    let db_style = g.pick(&DB_STYLES);
    let office_zone = g.pick(&OFFICE_ZONES);
    let office_style = g.pick(&OFFICE_STYLES);
    let mut office = Office::new_pg(2);
    set_database_defaults(
        &mut office,
        &[("TimeZone", db_zone), ("DateStyle", db_style)],
    );
    office
        .pg()
        .batch_execute(&format!(
            "CREATE TABLE {TABLE} (id text PRIMARY KEY, amount numeric(6,2), big numeric(40,10),
                 due timestamptz, local timestamp, day date, note text)"
        ))
        .unwrap();
    office.admin(&["table", "track", TABLE], "").ok();
    let path = office.dir.0.join("ledger.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"{TABLE}\"\n[[tables]]\nname = \"{TABLE}\"\n\
             filter = \"due >= '2026-01-01T00:00:00.000000Z' AND amount >= 5\"\n\
             write = [\"insert\", \"update\"]\nconflict = \"field-merge\"\n"
        ),
    )
    .unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    office
        .admin(&["task", "assign", TABLE, "--user", "ana"], "")
        .ok();
    let mut devs = Vec::new();
    for name in ["tab-v1", "tab-v2"] {
        let dir = office.device(name, &[TABLE]);
        dir.login("ana").ok();
        devs.push(Dev {
            name: name.to_string(),
            dir,
            pending: Vec::new(),
            others_wrote: HashSet::new(),
        });
    }
    let mut session = office.pg();
    session
        .batch_execute(&format!(
            "SET TimeZone = '{office_zone}'; SET DateStyle = '{office_style}'"
        ))
        .unwrap();
    let mut canon = office.pg();
    canon
        .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
        .unwrap();
    let mut w = World {
        seed,
        g,
        office,
        session,
        canon,
        devs,
        counter: 0,
        step: 0,
        log: Vec::new(),
        last_conflict: 0,
        logged: HashMap::new(),
        stats: Stats::default(),
    };
    w.log(format!(
        "database TimeZone {db_zone}, DateStyle {db_style}; office session {office_zone}, {office_style}"
    ));
    for _ in 0..8 {
        w.office_insert();
    }
    for d in 0..w.devs.len() {
        w.devs[d].dir.run(&["download", TABLE], "").ok();
        w.check_replica(d);
    }
    for step in 0..steps {
        w.step = step;
        match w.g.below(100) {
            0..=17 => w.office_update(),
            18..=25 => w.office_insert(),
            26..=29 => w.office_delete(),
            30..=59 => {
                let d = w.g.below(2) as usize;
                w.device_update(d);
            }
            60..=74 => {
                let d = w.g.below(2) as usize;
                w.device_insert(d);
            }
            75..=84 => {
                let d = w.g.below(2) as usize;
                w.send(d, "send");
            }
            _ => {
                let d = w.g.below(2) as usize;
                w.send(d, "sync");
            }
        }
    }
    w.step = steps;
    for d in 0..w.devs.len() {
        w.send(d, "sync");
    }
    // Both devices synced last after any other write but the second's own send.
    w.send(0, "sync");
    std::mem::take(&mut w.stats)
}

/// The database's default session settings; the server restarts so all its sessions
/// are new (as `postgres.rs` does).
fn set_database_defaults(office: &mut Office, settings: &[(&str, &str)]) {
    let mut main = office.pg();
    for (name, value) in settings {
        main.batch_execute(&format!(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET {name} = %L', current_database(), '{value}'); END $$;"
        ))
        .unwrap();
    }
    office.server = Server::start(&office.db_url);
}

/// A value from the conflict log's JSON, as text.
fn json_text(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        other => panic!("unexpected value in the conflict log: {other}"),
    }
}

impl World {
    fn log(&mut self, line: String) {
        self.log.push(format!("[{}] {line}", self.step));
    }

    fn fresh(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// The main database's table, canonical, read by a session with the database's
    /// own (non-UTC) defaults.
    fn snapshot(&self) -> Snapshot {
        self.office
            .pg()
            .query(canonical_select("").as_str(), &[])
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (1..=COLS.len()).map(|i| r.get::<_, Value>(i)).collect(),
                )
            })
            .collect()
    }

    /// A value as PostgreSQL reads it into column `col`, canonical.
    fn canon(&mut self, col: usize, v: &Value) -> Value {
        let v = v.as_ref()?;
        let sql = match COLS[col] {
            "amount" => "SELECT ($1::text)::numeric(6,2)::text".to_string(),
            "big" => "SELECT ($1::text)::numeric(40,10)::text".to_string(),
            "due" | "local" => {
                format!("SELECT to_char(($1::text)::timestamptz AT TIME ZONE 'UTC', '{FMT}')")
            }
            "day" => "SELECT to_char(($1::text)::date, 'YYYY-MM-DD')".to_string(),
            _ => return Some(v.clone()),
        };
        self.canon
            .query_one(sql.as_str(), &[v])
            .unwrap_or_else(|e| panic!("{} value {v:?}: {e}", COLS[col]))
            .get(0)
    }

    // ---- values -------------------------------------------------------------------

    /// A wall-clock time as components (year, month, day, hour, minute, second, µs).
    fn clock(&mut self, inside: bool) -> (u64, u64, u64, u64, u64, u64, u64) {
        let (year, month) = if inside || self.g.below(3) > 0 {
            // From January 2nd: an offset form of an instant inside the slice is
            // inside by the device's text comparison too.
            (2026, 1 + self.g.below(12))
        } else {
            (2025, 10 + self.g.below(3))
        };
        let day = if month == 1 { 2 } else { 1 } + self.g.below(27);
        let us = match self.g.below(3) {
            0 => 0,
            1 => 500_000,
            _ => self.g.below(1_000_000),
        };
        (
            year,
            month,
            day,
            self.g.below(24),
            self.g.below(60),
            self.g.below(60),
            us,
        )
    }

    /// A time literal as the office writes it: local to its session or with an offset.
    fn office_time(&mut self) -> String {
        let (y, mo, d, h, mi, s, us) = self.clock(false);
        let frac = if us == 0 {
            String::new()
        } else {
            format!(".{us:06}")
        };
        let zone = self.g.pick(&["", "", "+05:30", "-03:30", "Z", "+00"]);
        let sep = self.g.pick(&[" ", "T"]);
        format!("'{y}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{zone}'")
    }

    /// A time literal as a device writes it: an RFC 3339 form of an instant in 2026
    /// from January 2nd (inside the slice's bound).
    fn device_time(&mut self) -> String {
        let (y, mo, d, h, mi, s, us) = self.clock(true);
        let fixed = format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z");
        match self.g.below(5) {
            0 | 1 => format!("'{fixed}'"),
            2 => format!("'{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z'"),
            3 => format!("'{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}'"),
            _ => format!("'{}'", self.offset_form(&fixed)),
        }
    }

    /// The same instant as `canonical` (UTC), written with a zone offset.
    fn offset_form(&mut self, canonical: &str) -> String {
        let (zone, offset) = OFFSETS[self.g.below(OFFSETS.len() as u64) as usize];
        let local: String = self
            .canon
            .query_one(
                "SELECT to_char(($1::text)::timestamptz AT TIME ZONE $2, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')",
                &[&canonical, &zone],
            )
            .unwrap()
            .get(0);
        format!("{local}{offset}")
    }

    /// An amount literal in the slice (≥ 5) in one of the forms a device writes.
    fn device_amount(&mut self) -> String {
        let n = 5 + self.g.below(300);
        let c = self.g.below(100);
        match self.g.below(5) {
            0 => format!("'{n}.{c:02}'"),
            1 => format!("{n}"),
            2 => format!("{n}.5"),
            3 => format!("'{n}.{}'", c / 10),
            _ => format!("'{n}{:02}e-2'", c),
        }
    }

    /// An amount literal as the office writes it, either side of the bound 5.
    fn office_amount(&mut self) -> String {
        let n = self.g.below(20);
        let c = self.g.below(100);
        match self.g.below(4) {
            0 => format!("'{n}.{c:02}'"),
            1 => format!("{n}"),
            2 => format!("'0.{}0'", c % 10),
            _ => format!("{n}.{c:02}5"),
        }
    }

    fn big(&mut self) -> String {
        let sign = if self.g.below(4) == 0 { "-" } else { "" };
        match self.g.below(5) {
            0 => format!("'{sign}1e-{}'", 1 + self.g.below(10)),
            1 => format!("'{sign}0.0000000001'"),
            _ => {
                let int_digits = 1 + self.g.below(30);
                let int: String = (0..int_digits)
                    .map(|i| {
                        let d = self.g.below(10);
                        let digit = if i == 0 { 1 + d % 9 } else { d };
                        char::from(b'0' + digit as u8)
                    })
                    .collect();
                let frac_digits = self.g.below(11);
                let frac: String = (0..frac_digits)
                    .map(|_| char::from(b'0' + self.g.below(10) as u8))
                    .collect();
                if frac.is_empty() {
                    format!("'{sign}{int}'")
                } else {
                    format!("'{sign}{int}.{frac}'")
                }
            }
        }
    }

    fn day(&mut self) -> String {
        format!(
            "'{}-{:02}-{:02}'",
            2025 + self.g.below(2),
            1 + self.g.below(12),
            1 + self.g.below(28)
        )
    }

    // ---- the office -----------------------------------------------------------------

    fn office_value(&mut self, col: &str) -> String {
        match col {
            "amount" => self.office_amount(),
            "big" => self.big(),
            "due" | "local" => self.office_time(),
            "day" => self.day(),
            _ => {
                let n = self.fresh();
                format!("'office {n}'")
            }
        }
    }

    fn office_exec(&mut self, sql: String, key: &str) {
        self.log(format!("office: {sql}"));
        self.session.batch_execute(&sql).unwrap();
        self.stats.office_writes += 1;
        for d in &mut self.devs {
            d.others_wrote.insert(key.to_string());
        }
    }

    fn office_insert(&mut self) {
        let n = self.fresh();
        let key = format!("o{n}");
        let values: Vec<String> = COLS
            .iter()
            .map(|c| {
                if *c != "note" && self.g.below(10) == 0 {
                    "NULL".to_string()
                } else {
                    self.office_value(c)
                }
            })
            .collect();
        self.office_exec(
            format!(
                "INSERT INTO {TABLE} VALUES ('{key}', {})",
                values.join(", ")
            ),
            &key,
        );
    }

    fn any_main_key(&mut self) -> Option<String> {
        let keys: Vec<String> = self.snapshot().into_keys().collect();
        if keys.is_empty() {
            return None;
        }
        Some(keys[self.g.below(keys.len() as u64) as usize].clone())
    }

    fn office_update(&mut self) {
        let Some(key) = self.any_main_key() else {
            return;
        };
        let n = 1 + self.g.below(3);
        let mut sets = BTreeMap::new();
        for _ in 0..n {
            let col = COLS[self.g.below(COLS.len() as u64) as usize];
            let v = self.office_value(col);
            sets.insert(col, v);
        }
        let sets: Vec<String> = sets.iter().map(|(c, v)| format!("{c} = {v}")).collect();
        self.office_exec(
            format!("UPDATE {TABLE} SET {} WHERE id = '{key}'", sets.join(", ")),
            &key,
        );
    }

    fn office_delete(&mut self) {
        let Some(key) = self.any_main_key() else {
            return;
        };
        self.office_exec(format!("DELETE FROM {TABLE} WHERE id = '{key}'"), &key);
    }

    // ---- the devices ------------------------------------------------------------------

    /// The replica's row `key`, as text (`None` when absent).
    fn replica_row(&self, d: usize, key: &str) -> Option<Vec<Value>> {
        let c = self.devs[d].dir.replica();
        let sql = format!(
            "SELECT {} FROM {TABLE} WHERE id = ?1",
            COLS.map(|c| format!("CAST({c} AS TEXT)")).join(", ")
        );
        c.query_row(&sql, [key], |r| {
            (0..COLS.len())
                .map(|i| r.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ok()
    }

    fn journal_len(&self, d: usize) -> i64 {
        self.devs[d]
            .dir
            .replica()
            .query_row("SELECT count(*) FROM fieldsync_journal", [], |r| r.get(0))
            .unwrap()
    }

    /// Runs `sql` on device `d`'s replica through the `sqlite3` shell or rusqlite.
    fn device_exec(&mut self, d: usize, sql: &str) -> Result<(), String> {
        let shell = self.g.below(2) == 0;
        self.log(format!(
            "dev {} ({}): {sql}",
            self.devs[d].name,
            if shell { "sqlite3" } else { "rusqlite" }
        ));
        let path = self.devs[d].dir.replica_path();
        if shell {
            let out = std::process::Command::new("sqlite3")
                .arg(&path)
                .arg(sql)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() && err.is_empty() {
                Ok(())
            } else {
                Err(err)
            }
        } else {
            let c = Connection::open(&path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            c.execute_batch(sql).map_err(|e| e.to_string())
        }
    }

    fn device_value(&mut self, col: &str) -> String {
        match col {
            "amount" => self.device_amount(),
            "big" => self.big(),
            "due" => self.device_time(),
            "local" => {
                if self.g.below(2) == 0 {
                    self.device_time()
                } else {
                    self.office_time()
                }
            }
            "day" => self.day(),
            _ => {
                let n = self.fresh();
                format!("'device {n}'")
            }
        }
    }

    /// `value` (canonical or not) of column `col` in another form that PostgreSQL
    /// reads as the same instant or number, if there is one.
    fn other_form(&mut self, col: usize, value: &Value) -> Option<String> {
        let canonical = self.canon(col, value)?;
        match COLS[col] {
            "due" | "local" => Some(format!("'{}'", self.offset_form(&canonical))),
            "amount" | "big" => {
                if canonical.contains('.') && self.g.below(2) == 0 {
                    let t = canonical.trim_end_matches('0').trim_end_matches('.');
                    Some(format!("'{t}'"))
                } else if canonical.contains('.') {
                    Some(format!("'{canonical}0'"))
                } else {
                    Some(format!("'{canonical}.0'"))
                }
            }
            _ => None,
        }
    }

    fn device_update(&mut self, d: usize) {
        let keys: Vec<String> = {
            let c = self.devs[d].dir.replica();
            let mut s = c
                .prepare(&format!("SELECT id FROM {TABLE} ORDER BY id"))
                .unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        if keys.is_empty() {
            return;
        }
        let key = keys[self.g.below(keys.len() as u64) as usize].clone();
        let before = self.replica_row(d, &key).unwrap();
        let n = 1 + self.g.below(3);
        let mut sets = BTreeMap::new();
        let mut same = false;
        for _ in 0..n {
            let col = self.g.below(COLS.len() as u64) as usize;
            let v = if self.g.below(4) == 0 {
                self.other_form(col, &before[col])
            } else {
                None
            };
            let v = match v {
                Some(v) => {
                    same = true;
                    v
                }
                None => self.device_value(COLS[col]),
            };
            sets.insert(col, v);
        }
        let text: Vec<String> = sets
            .iter()
            .map(|(c, v)| format!("{} = {v}", COLS[*c]))
            .collect();
        let sql = format!("UPDATE {TABLE} SET {} WHERE id = '{key}'", text.join(", "));
        if let Err(e) = self.device_exec(d, &sql) {
            panic!("dev {}: update refused: {e}", self.devs[d].name);
        }
        self.stats.device_writes += 1;
        self.stats.same_value_other_form += usize::from(same);
        let after = self.replica_row(d, &key).unwrap();
        for col in sets.into_keys() {
            let old = self.canon(col, &before[col]);
            let new = self.canon(col, &after[col]);
            self.devs[d].pending.push(Write {
                key: key.clone(),
                col,
                old: Some(old),
                new,
            });
        }
    }

    fn device_insert(&mut self, d: usize) {
        let n = self.fresh();
        let key = format!("d{n}-{}", self.devs[d].name);
        let outside = self.g.below(4) == 0;
        let mut values: Vec<String> = COLS.iter().map(|c| self.device_value(c)).collect();
        // On the slice's bounds: the same instant in several forms, the smallest amount.
        match self.g.below(6) {
            0 => values[0] = "'5.00'".into(),
            1 => values[0] = "5".into(),
            2 => {
                values[2] = self
                    .g
                    .pick(&[
                        "'2026-01-01T00:00:00.000000Z'",
                        "'2026-01-01T00:00:00Z'",
                        "'2026-01-01T05:30:00+05:30'",
                    ])
                    .into()
            }
            _ => {}
        }
        if outside {
            if self.g.below(2) == 0 {
                values[0] = self.g.pick(&["'4.99'", "'0.10'", "4", "'-5'"]).into();
            } else {
                values[2] = self
                    .g
                    .pick(&[
                        "'2025-12-31T23:59:59.999999Z'",
                        "'2025-06-01T00:00:00Z'",
                        "'2025-12-31T10:00:00'",
                    ])
                    .into();
            }
        }
        let sql = format!(
            "INSERT INTO {TABLE} (id, {}) VALUES ('{key}', {})",
            COLS.join(", "),
            values.join(", ")
        );
        let journal = self.journal_len(d);
        let result = self.device_exec(d, &sql);
        if outside {
            assert!(
                result.is_err(),
                "dev {}: an insert outside the slice is refused by the replica",
                self.devs[d].name
            );
            assert_eq!(self.journal_len(d), journal, "nothing journaled");
            assert!(self.replica_row(d, &key).is_none());
            self.stats.refused_inserts += 1;
            return;
        }
        if let Err(e) = result {
            panic!(
                "dev {}: insert in the slice refused: {e}",
                self.devs[d].name
            );
        }
        self.stats.device_writes += 1;
        let after = self.replica_row(d, &key).unwrap();
        for (col, v) in after.iter().enumerate() {
            let new = self.canon(col, v);
            self.devs[d].pending.push(Write {
                key: key.clone(),
                col,
                old: None,
                new,
            });
        }
    }

    // ---- sends ------------------------------------------------------------------------

    fn new_conflicts(&mut self) -> Vec<(i64, String, String, String, serde_json::Value)> {
        let rows = self
            .office
            .pg()
            .query(
                "SELECT id, device, key, kind, device_values FROM fieldsync.conflicts
                 WHERE id > $1 ORDER BY id",
                &[&self.last_conflict],
            )
            .unwrap();
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                let key: String = r.get(2);
                let key = match serde_json::from_str::<serde_json::Value>(&key) {
                    Ok(serde_json::Value::String(s)) => s,
                    _ => key,
                };
                (
                    r.get::<_, i64>(0),
                    r.get::<_, String>(1),
                    key,
                    r.get::<_, String>(3),
                    serde_json::from_str(&r.get::<_, String>(4)).unwrap(),
                )
            })
            .collect();
        if let Some(last) = out.last() {
            self.last_conflict = last.0;
        }
        out
    }

    /// `device send` or `device sync` of device `d`, and the checks.
    fn send(&mut self, d: usize, how: &str) {
        let before = self.snapshot();
        let out = self.devs[d].dir.run(&[how], "");
        let name = self.devs[d].name.clone();
        self.log(format!(
            "dev {name}: {how} of {} write(s): exit {} {}",
            self.devs[d].pending.len(),
            out.code,
            out.stdout.trim().replace('\n', " / ")
        ));
        assert_eq!(out.code, 0, "dev {name}: {how} failed: {out:?}");
        let after = self.snapshot();
        if how == "sync" {
            self.stats.syncs += 1;
        } else {
            self.stats.sends += 1;
        }

        // The upload as compaction makes it: per cell, the value first seen and the last.
        let mut nets: BTreeMap<(String, usize), (Option<Value>, Value)> = BTreeMap::new();
        for w in std::mem::take(&mut self.devs[d].pending) {
            nets.entry((w.key.clone(), w.col))
                .and_modify(|n| n.1 = w.new.clone())
                .or_insert((w.old.clone(), w.new.clone()));
        }
        let keys: HashSet<String> = nets.keys().map(|(k, _)| k.clone()).collect();

        // The conflicts this send logged: only for rows somebody else wrote.
        let conflicts = self.new_conflicts();
        for (id, device, key, kind, values) in &conflicts {
            assert_eq!(device, &name, "conflict {id} of the device that sent");
            assert!(
                self.devs[d].others_wrote.contains(key),
                "dev {name}: {how} logged conflict {id} ({kind}) for row {key:?}, which nobody else wrote since the device's base; device values {values}; the row before {:?}, after {:?}",
                before.get(key),
                after.get(key)
            );
            for (col, v) in values.as_object().unwrap() {
                let c = COLS
                    .iter()
                    .position(|x| x == col)
                    .unwrap_or_else(|| panic!("conflict {id}: column {col}"));
                let v = self.canon(c, &json_text(v));
                self.logged
                    .entry((name.clone(), key.clone(), c))
                    .or_default()
                    .insert(v);
            }
        }
        self.stats.conflicts += conflicts.len();

        // No value lost on the office's side: a cell the send changed is one the upload
        // wrote, to its value, over the value the device saw.
        let all: HashSet<&String> = before.keys().chain(after.keys()).collect();
        for key in all {
            for col in 0..COLS.len() {
                let p = before.get(key).map(|r| r[col].clone());
                let q = after.get(key).map(|r| r[col].clone());
                if p == q {
                    continue;
                }
                let Some((old, new)) = nets.get(&(key.clone(), col)) else {
                    panic!(
                        "dev {name}: {how} changed {key}.{} from {p:?} to {q:?}, which the device did not write",
                        COLS[col]
                    );
                };
                assert_eq!(
                    q.as_ref(),
                    Some(new),
                    "dev {name}: {how} set {key}.{} to {q:?}, not the upload's {new:?}",
                    COLS[col]
                );
                assert_eq!(
                    &p, old,
                    "dev {name}: {how} overwrote {key}.{} = {p:?} with {new:?}, though the device saw {old:?}",
                    COLS[col]
                );
            }
        }

        // No value lost on the device's side: in the main database or in the log.
        for ((key, col), (old, new)) in &nets {
            if old.as_ref() == Some(new) {
                continue;
            }
            self.stats.values_sent += 1;
            let applied = after.get(key).is_some_and(|r| &r[*col] == new);
            let logged = self
                .logged
                .get(&(name.clone(), key.clone(), *col))
                .is_some_and(|s| s.contains(new));
            self.stats.values_applied += usize::from(applied);
            self.stats.values_logged += usize::from(logged && !applied);
            assert!(
                applied || logged,
                "lost device value: dev {name} sent {key}.{} = {new:?} (it saw {old:?}); the main database holds {:?} and the conflict log has no such value",
                COLS[*col],
                after.get(key).map(|r| r[*col].clone())
            );
        }

        for (e, dev) in self.devs.iter_mut().enumerate() {
            if e != d {
                dev.others_wrote.extend(keys.iter().cloned());
            }
        }
        if how == "sync" {
            self.devs[d].others_wrote.clear();
            self.check_replica(d);
        }
        assert_eq!(self.journal_len(d), 0, "dev {name}: journal empty");
    }

    fn check_replica(&self, d: usize) {
        let slice = pg_rows(&mut self.office.pg(), &canonical_select(SLICE_FILTER));
        let replica = rows(
            &self.devs[d].dir.replica(),
            &format!("SELECT id, {} FROM {TABLE} ORDER BY id", COLS.join(", ")),
        );
        assert_eq!(
            replica, slice,
            "dev {}: the replica equals the slice in canonical forms (seed {})",
            self.devs[d].name, self.seed
        );
    }
}
