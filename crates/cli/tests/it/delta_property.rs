//! Deltas under random writes (DESIGN.md "Full or delta", promise 5): random office
//! inserts, updates, deletes, moves into and out of the slice (region, retirement,
//! inspector), parent moves, key reuse (a deleted key inserted again), new and deleted
//! assets, and random device edits, in steps each ended by a `device sync`; after every
//! sync the sync must have been a delta and the replica must equal the slice as the
//! main database has it, row for row and value for value (what a fresh full download
//! holds: the same queries `faults.rs` and `crash.rs` check full downloads with).
//!
//! Odd seeds have the server read each delta from the changed keys, even seeds from the
//! slice (`FIELDSYNC_DELTA_DRIVE`): the two ways must agree with the slice alike.
//!
//! The randomness is a seeded xorshift generator (`fieldsync_store::sample::Gen`).
//! `FIELDSYNC_DELTA_CASES` (default 2) cases of `FIELDSYNC_DELTA_STEPS` (default 12)
//! steps run with seeds 1, 2, ...; `FIELDSYNC_DELTA_SEED=N` starts at seed N. A failing
//! case prints its seed and the statements it ran.

use fieldsync_store::sample::Gen;

use crate::harness::*;

const TASK: &str = "north-inspections";
const NORTH_ASSETS: &str = "SELECT id, name, category, status, region, x, y FROM assets WHERE region = 'north' AND status <> 'retired' ORDER BY id";
const ANA_INSPECTIONS: &str = "SELECT * FROM inspections WHERE inspector = 'ana' AND asset_id IN
     (SELECT id FROM assets WHERE region = 'north' AND status <> 'retired') ORDER BY id";

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: a number, not {v}"))
    })
}

/// One case's state: the office, the device and what the office deleted (for key reuse).
struct Case {
    office: Office,
    dev: DeviceDir,
    g: Gen,
    deleted: Vec<String>,
    next: u64,
    trace: Vec<String>,
}

impl Case {
    /// The id of a random row of `sql`'s result (one column), if any.
    fn any(&mut self, sql: &str) -> Option<String> {
        let rows = self.office.rows(sql);
        if rows.is_empty() {
            return None;
        }
        let i = self.g.below(rows.len() as u64) as usize;
        Some(rows[i][0][1..].to_string())
    }

    fn run(&mut self, sql: String) {
        self.trace.push(sql.clone());
        self.office.execute_batch(&sql);
    }

    /// One random office write.
    fn office_write(&mut self) {
        self.next += 1;
        let n = self.next;
        let who = if self.g.below(3) == 0 { "ben" } else { "ana" };
        let region = if self.g.below(3) == 0 {
            "south"
        } else {
            "north"
        };
        let asset = self.any("SELECT id FROM assets").unwrap();
        let inspection = self.any("SELECT id FROM inspections");
        let sql = match (self.g.below(12), inspection) {
            (0, _) => format!(
                "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
                 VALUES ('office-{n}', {asset}, '{who}', '2026-12-01T08:00:00.000Z', 'ok', 'office {n}')"
            ),
            (1, Some(i)) => format!("UPDATE inspections SET result = 'r{n}', notes = NULL WHERE id = '{i}'"),
            (2, Some(i)) => {
                self.deleted.push(i.clone());
                format!("DELETE FROM inspections WHERE id = '{i}'")
            }
            (3, _) if !self.deleted.is_empty() => {
                // Key reuse: a deleted inspection's key comes back, other values.
                let k = self.g.below(self.deleted.len() as u64) as usize;
                let id = self.deleted.swap_remove(k);
                format!(
                    "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
                     VALUES ('{id}', {asset}, '{who}', '2026-12-02T09:00:00.000Z', 'again', 'reused {n}')"
                )
            }
            (4, _) => format!("UPDATE assets SET region = '{region}' WHERE id = {asset}"),
            (5, _) => {
                let status = self.g.pick(&["retired", "active", "planned"]);
                format!("UPDATE assets SET status = '{status}' WHERE id = {asset}")
            }
            (6, Some(i)) => format!("UPDATE inspections SET asset_id = {asset} WHERE id = '{i}'"),
            (7, Some(i)) => format!("UPDATE inspections SET inspector = '{who}' WHERE id = '{i}'"),
            (8, _) => format!("UPDATE assets SET name = 'office {n}', x = {n}.5 WHERE id = {asset}"),
            (9, _) => {
                let id = 100_000 + n;
                format!(
                    "INSERT INTO assets (id, name, category, status, region, x, y)
                     VALUES ({id}, 'new {n}', 'pump', 'active', '{region}', 1.25, NULL);
                     INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
                     VALUES ('under-{n}', {id}, 'ana', '2026-12-01T10:00:00.000Z', NULL, 'with its asset')"
                )
            }
            (10, _) => {
                let under = self
                    .office
                    .rows(&format!("SELECT id FROM inspections WHERE asset_id = {asset}"));
                self.deleted
                    .extend(under.into_iter().map(|r| r[0][1..].to_string()));
                format!(
                    "DELETE FROM inspections WHERE asset_id = {asset};
                     DELETE FROM work_orders WHERE asset_id = {asset};
                     DELETE FROM assets WHERE id = {asset}"
                )
            }
            _ => format!("UPDATE assets SET category = 'valve' WHERE id = {asset}"),
        };
        self.run(sql);
    }

    /// One random device edit, through the replica as an app writes it.
    fn device_write(&mut self) {
        let replica = self.dev.replica();
        let pick = |sql: &str, g: &mut Gen| -> Option<String> {
            let all = rows(&replica, sql);
            (!all.is_empty()).then(|| all[g.below(all.len() as u64) as usize][0][1..].to_string())
        };
        let n = self.next;
        let sql = match self.g.below(3) {
            0 => pick("SELECT id FROM assets", &mut self.g)
                .map(|a| format!("UPDATE assets SET status = 'checked-{n}' WHERE id = {a}")),
            1 => pick("SELECT id FROM inspections", &mut self.g)
                .map(|i| format!("UPDATE inspections SET notes = 'device {n}' WHERE id = '{i}'")),
            _ => pick("SELECT id FROM assets", &mut self.g).map(|a| {
                format!(
                    "INSERT INTO inspections (asset_id, inspector, inspected_at, result)
                     VALUES ({a}, 'ana', '2026-12-03T07:00:00.000Z', 'device {n}')"
                )
            }),
        };
        if let Some(sql) = sql {
            self.trace.push(format!("device: {sql}"));
            replica.execute_batch(&sql).unwrap();
        }
    }

    /// The slice as the main database has it, and as the replica has it.
    fn compare(&self) -> Result<(), String> {
        let mut want = self.office.rows(NORTH_ASSETS);
        want.extend(self.office.rows(ANA_INSPECTIONS));
        let replica = self.dev.replica();
        let mut got = rows(&replica, "SELECT * FROM assets ORDER BY id");
        got.extend(rows(&replica, "SELECT * FROM inspections ORDER BY id"));
        if got == want {
            return Ok(());
        }
        let only_got: Vec<_> = got.iter().filter(|r| !want.contains(r)).collect();
        let only_want: Vec<_> = want.iter().filter(|r| !got.contains(r)).collect();
        Err(format!(
            "the replica differs from the slice: only on the device {only_got:?}; only in the main database {only_want:?}"
        ))
    }
}

/// One case; the server reads each table's delta the way `drive` says
/// (`FIELDSYNC_DELTA_DRIVE`).
fn one_case(
    engine: Engine,
    seed: u64,
    steps: u64,
    drive: &str,
) -> Result<(), (String, Vec<String>)> {
    let mut office = Office::on(engine, 30);
    let mut program = std::process::Command::new(BIN);
    program.env("FIELDSYNC_DELTA_DRIVE", drive);
    office.server = Server::start_by(program, &office.db_url);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    let mut case = Case {
        office,
        dev,
        g: Gen::new(seed),
        deleted: Vec::new(),
        next: 0,
        trace: Vec::new(),
    };
    for step in 0..steps {
        for _ in 0..1 + case.g.below(4) {
            case.office_write();
        }
        if case.g.below(3) == 0 {
            case.device_write();
        }
        let run = case.dev.run(&["sync"], "");
        let fail =
            |what: String, case: &Case| Err((format!("step {step}: {what}"), case.trace.clone()));
        if run.code != 0 {
            return fail(format!("sync failed: {run:?}"), &case);
        }
        let last = &case.dev.status()["last_sync"];
        if last["full"] != false {
            return fail(format!("not a delta: {last}"), &case);
        }
        if let Err(e) = case.compare() {
            return fail(e, &case);
        }
    }
    Ok(())
}

fn property(engine: Engine) {
    let cases = env_u64("FIELDSYNC_DELTA_CASES").unwrap_or(2);
    let steps = env_u64("FIELDSYNC_DELTA_STEPS").unwrap_or(12);
    let first = env_u64("FIELDSYNC_DELTA_SEED").unwrap_or(1);
    let started = std::time::Instant::now();
    for seed in first..first + cases {
        // Both ways of reading a delta, whatever each would choose at this size:
        // from the changed keys on odd seeds, from the slice on even ones.
        let drive = if seed % 2 == 1 { "changes" } else { "slice" };
        if let Err((why, trace)) = one_case(engine, seed, steps, drive) {
            panic!(
                "delta case with seed {seed} ({engine:?}, from the {drive}) failed: {why}\nstatements:\n{}",
                trace.join("\n")
            );
        }
    }
    eprintln!(
        "{cases} delta case(s) of {steps} steps on {engine:?} passed in {:?}",
        started.elapsed()
    );
}

#[test]
fn after_every_delta_sync_the_replica_equals_the_slice() {
    property(Engine::Sqlite);
}

#[test]
fn after_every_delta_sync_the_replica_equals_the_slice_on_postgres() {
    property(Engine::Postgres);
}
