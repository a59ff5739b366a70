//! Store conformance: every check is written once against the `Store` trait and runs
//! on each engine (SQLite on a temp file, PostgreSQL in a fresh database per test).
//!
//! PostgreSQL comes from `fieldsync_testkit::pg` (`FIELDSYNC_TEST_PG`, the local server
//! or a private cluster); the tests fail, never skip, when it
//! cannot be reached. Office writes (the "desktop" side) go through rusqlite and the
//! postgres crate directly, as other programs would.

use fieldsync_proto::Row;
use std::path::PathBuf;

use fieldsync_proto::filter::Params;
use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::task::{TaskDef, WriteOp};
use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{Cursor, FullReason, Upload, UploadEntry, UploadOutcome};
use fieldsync_proto::{ColumnType, Value};
use fieldsync_store::{
    AssignedTask, DeviceRecord, IntegrateContext, IntegrateError, SessionRecord, SlicePlan,
    SliceSink, Store, StoreError, UserRecord, random_hex, sample, sha256_hex,
};

/// Assets of the sample database: small, so the suite stays fast.
const N_ASSETS: i64 = 40;

// ---------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

/// One main database of one engine, with its store; removed when dropped.
struct Fixture {
    engine: Engine,
    store: Option<Box<dyn Store>>,
    /// SQLite: the temp folder and the database file.
    dir: Option<TempDir>,
    path: Option<PathBuf>,
    /// PostgreSQL: the base URL (to drop the database) and this test's database.
    base_url: String,
    db_name: String,
    url: String,
}

use fieldsync_testkit::TempDir;
use fieldsync_testkit::pg::{base_url as pg_base_url, connect as pg_connect, with_db};

impl Fixture {
    fn sqlite() -> Fixture {
        let dir = TempDir::new("conf");
        let path = dir.path().join("main.sqlite");
        let url = format!("sqlite:{}", path.display());
        let store = fieldsync_store::open(&url).expect("opening the SQLite store");
        Fixture {
            engine: Engine::Sqlite,
            store: Some(store),
            dir: Some(dir),
            path: Some(path),
            base_url: String::new(),
            db_name: String::new(),
            url,
        }
    }

    fn postgres() -> Fixture {
        let base_url = pg_base_url();
        let db_name = format!("fs_conf_{}", fieldsync_store::random_hex(8));
        let mut admin = pg_connect(&base_url);
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .unwrap_or_else(|e| {
                panic!("FIELDSYNC_TEST_PG `{base_url}`: CREATE DATABASE {db_name} failed: {e}")
            });
        let url = with_db(&base_url, &db_name);
        let store = fieldsync_store::open(&url).expect("opening the PostgreSQL store");
        Fixture {
            engine: Engine::Postgres,
            store: Some(store),
            dir: None,
            path: None,
            base_url,
            db_name,
            url,
        }
    }

    fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("present until dropped")
    }

    /// A new connection of the office (another program on the main database).
    fn office(&self) -> Office {
        match self.engine {
            Engine::Sqlite => {
                let c = rusqlite::Connection::open(self.path.as_ref().expect("sqlite path"))
                    .expect("office opens the SQLite file");
                c.busy_timeout(std::time::Duration::from_secs(10))
                    .expect("busy timeout");
                Office::Sqlite(c)
            }
            Engine::Postgres => Office::Pg(pg_connect(&self.url)),
        }
    }

    /// The organisation's sample tables, as the desktop application made them.
    fn sample(&self, n_assets: i64) {
        match self.office() {
            Office::Sqlite(mut c) => sample::create(&mut c, n_assets).expect("sample data"),
            Office::Pg(mut c) => sample::create_pg(&mut c, n_assets).expect("sample data"),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The store's pooled connections go first.
        drop(self.store.take());
        drop(self.dir.take());
        if self.engine == Engine::Postgres {
            let mut admin = pg_connect(&self.base_url);
            if let Err(e) = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            )) {
                eprintln!("dropping test database {}: {e}", self.db_name);
            }
        }
    }
}

/// A connection of the office: plain SQL, values read as they travel.
enum Office {
    Sqlite(rusqlite::Connection),
    Pg(::postgres::Client),
}

impl Office {
    fn exec(&mut self, sql: &str) {
        match self {
            Office::Sqlite(c) => c
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("office SQL `{sql}`: {e}")),
            Office::Pg(c) => c
                .batch_execute(sql)
                .unwrap_or_else(|e| panic!("office SQL `{sql}`: {e}")),
        }
    }

    fn rows(&mut self, sql: &str) -> Vec<Vec<Value>> {
        match self {
            Office::Sqlite(c) => {
                let mut stmt = c
                    .prepare(sql)
                    .unwrap_or_else(|e| panic!("office SQL `{sql}`: {e}"));
                let width = stmt.column_count();
                stmt.query_map([], |r| {
                    (0..width)
                        .map(|i| {
                            use rusqlite::types::ValueRef as R;
                            Ok(match r.get_ref(i)? {
                                R::Null => Value::Null,
                                R::Integer(v) => Value::Integer(v),
                                R::Real(v) => Value::Real(v),
                                R::Text(t) => Value::Text(String::from_utf8_lossy(t).into()),
                                R::Blob(b) => Value::Blob(b.to_vec()),
                            })
                        })
                        .collect()
                })
                .and_then(|rows| rows.collect())
                .unwrap_or_else(|e| panic!("office SQL `{sql}`: {e}"))
            }
            Office::Pg(c) => {
                use ::postgres::types::Type;
                let rows = c
                    .query(sql, &[])
                    .unwrap_or_else(|e| panic!("office SQL `{sql}`: {e}"));
                rows.iter()
                    .map(|r| {
                        r.columns()
                            .iter()
                            .enumerate()
                            .map(|(i, col)| {
                                let t = col.type_();
                                let v = if *t == Type::INT8 {
                                    r.get::<_, Option<i64>>(i).map(Value::Integer)
                                } else if *t == Type::INT4 {
                                    r.get::<_, Option<i32>>(i).map(|v| Value::Integer(v.into()))
                                } else if *t == Type::INT2 {
                                    r.get::<_, Option<i16>>(i).map(|v| Value::Integer(v.into()))
                                } else if *t == Type::BOOL {
                                    r.get::<_, Option<bool>>(i)
                                        .map(|v| Value::Integer(v.into()))
                                } else if *t == Type::FLOAT8 {
                                    r.get::<_, Option<f64>>(i).map(Value::Real)
                                } else if *t == Type::FLOAT4 {
                                    r.get::<_, Option<f32>>(i).map(|v| Value::Real(v.into()))
                                } else if *t == Type::BYTEA {
                                    r.get::<_, Option<Vec<u8>>>(i).map(Value::Blob)
                                } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME]
                                    .contains(t)
                                {
                                    r.get::<_, Option<String>>(i).map(Value::Text)
                                } else {
                                    panic!("office SQL `{sql}`: column {i} of type {t}: cast it")
                                };
                                v.unwrap_or(Value::Null)
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    fn value(&mut self, sql: &str) -> Value {
        let rows = self.rows(sql);
        assert_eq!(rows.len(), 1, "office SQL `{sql}`: one row expected");
        rows[0][0].clone()
    }

    fn text(&mut self, sql: &str) -> String {
        match self.value(sql) {
            Value::Text(t) => t,
            other => panic!("office SQL `{sql}`: text expected, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// Helpers: the trait called the way the product calls it
// ---------------------------------------------------------------------------------

fn now() -> Timestamp {
    Timestamp::now()
}

/// As `fieldsync admin task apply` does it (server/src/admin.rs `task_apply`).
fn task_apply(store: &dyn Store, toml_text: &str) -> Result<TaskDef, StoreError> {
    let def = TaskDef::from_toml(toml_text).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let canonical = serde_json::to_string(&def).expect("task serializes");
    store.task_put(&def, &sha256_hex(&canonical)[..16], now())?;
    Ok(def)
}

fn user(name: &str) -> UserRecord {
    UserRecord {
        name: name.to_string(),
        password_hash: format!("hash-of-{name}"),
        admin: false,
        disabled: false,
        created_at: now(),
    }
}

fn device(id: &str, code: &str) -> DeviceRecord {
    DeviceRecord {
        id: id.to_string(),
        label: Some(format!("{id} label")),
        code_hash: Some(sha256_hex(code)),
        secret_hash: None,
        revoked: false,
        keep_changes: false,
        created_at: now(),
        paired_at: None,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Sample data, fieldsync's objects, the three tables tracked, users ana and ben,
/// device dev1, the demo's two tasks; north assigned to ana, ben and dev1.
fn setup(fx: &Fixture) {
    fx.sample(N_ASSETS);
    let s = fx.store();
    s.init().expect("init");
    for t in ["assets", "inspections", "work_orders"] {
        s.track_table(t).expect("track");
    }
    s.user_add(&user("ana")).expect("user ana");
    s.user_add(&user("ben")).expect("user ben");
    s.device_add(&device("dev1", "code-1"))
        .expect("device dev1");
    task_apply(s, sample::TASK_NORTH).expect("north task");
    task_apply(s, sample::TASK_SOUTH).expect("south task");
    s.task_assign(
        "north-inspections",
        &strings(&["ana", "ben"]),
        &strings(&["dev1"]),
    )
    .expect("assign north");
}

/// A sink that keeps everything the store streams.
#[derive(Default)]
struct Collect {
    cursor: Option<i64>,
    counts: Vec<u64>,
    /// Rows per lane (a delta's left keys after the tables).
    rows: Vec<Vec<Vec<Value>>>,
    refused_delta: Option<FullReason>,
}

impl SliceSink for Collect {
    fn begin(
        &mut self,
        cursor: Cursor,
        rows_per_table: &[u64],
        refused_delta: Option<FullReason>,
    ) -> fieldsync_store::Result<()> {
        assert!(self.cursor.is_none(), "begin() called twice");
        // The tests know the engine: they read its own position.
        self.cursor = Some(cursor.raw());
        self.counts = rows_per_table.to_vec();
        self.rows = vec![Vec::new(); rows_per_table.len()];
        self.refused_delta = refused_delta;
        Ok(())
    }

    fn row(
        &mut self,
        table_idx: usize,
        values: &mut dyn Iterator<Item = ValueRef<'_>>,
    ) -> fieldsync_store::Result<()> {
        assert!(self.cursor.is_some(), "row() before begin()");
        if self.rows.len() <= table_idx {
            self.rows.resize(table_idx + 1, Vec::new());
        }
        self.rows[table_idx].push(values.map(ValueRef::to_owned).collect());
        Ok(())
    }
}

struct Download {
    plan: SlicePlan,
    cursor: i64,
    /// Per table of the plan: rows sorted by primary key.
    rows: Vec<Vec<Vec<Value>>>,
}

impl Download {
    fn table(&self, name: &str) -> usize {
        self.plan
            .tables
            .iter()
            .position(|t| t.schema.name == name)
            .unwrap_or_else(|| panic!("table {name} not in the plan"))
    }

    fn columns(&self, table: &str) -> Vec<String> {
        self.plan.tables[self.table(table)]
            .schema
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// The value of `column` of the row keyed `key` (`None`: no such row).
    fn cell(&self, table: &str, key: &Value, column: &str) -> Option<Value> {
        let t = self.table(table);
        let col = self
            .columns(table)
            .iter()
            .position(|c| c == column)
            .unwrap_or_else(|| panic!("column {column} not in the slice of {table}"));
        self.rows[t]
            .iter()
            .find(|r| r[0].same(key))
            .map(|r| r[col].clone())
    }
}

fn sort_by_key(rows: &mut [Vec<Value>]) {
    rows.sort_by(|a, b| a[0].sql_cmp(&b[0]).expect("keys are not NULL"));
}

/// Plans and streams a task's slice for a user on a device, as `server/src/api.rs`
/// and `download.rs` do, and checks the counts the sink was told.
fn download(fx: &Fixture, task: &str, user: &str, device: &str) -> Download {
    download_from(fx.store(), task, user, device)
}

/// The slice of stored task `task` for `user` on `device`.
fn plan_of(s: &dyn Store, task: &str, user: &str, device: &str) -> SlicePlan {
    let record = s.task_get(task).expect("task_get").expect("task exists");
    let params = Params {
        user: user.to_string(),
        device: device.to_string(),
    };
    fieldsync_store::plan_slice(s, &record.def, &params).expect("plan_slice")
}

fn download_from(s: &dyn Store, task: &str, user: &str, device: &str) -> Download {
    let plan = plan_of(s, task, user, device);
    let mut sink = Collect::default();
    let sent = s.stream_slice(&plan, &mut sink).expect("stream_slice");
    let cursor = sink.cursor.expect("begin() was called");
    let streamed: Vec<u64> = sink.rows.iter().map(|r| r.len() as u64).collect();
    assert_eq!(
        sink.counts, streamed,
        "begin()'s counts equal the rows streamed"
    );
    assert_eq!(
        sent, streamed,
        "stream_slice's result equals the rows streamed"
    );
    assert_eq!(sink.rows.len(), plan.tables.len());
    for (t, rows) in plan.tables.iter().zip(&sink.rows) {
        for r in rows {
            assert_eq!(
                r.len(),
                t.schema.columns.len(),
                "row width of {}",
                t.schema.name
            );
        }
    }
    let mut rows = sink.rows;
    for r in &mut rows {
        sort_by_key(r);
    }
    Download { plan, cursor, rows }
}

/// Ana's update of one column of one row, based on `base` (`upload` numbers it).
fn update_entry(
    table: &str,
    key: Value,
    base: i64,
    column: &str,
    old: Value,
    new: Value,
) -> UploadEntry {
    UploadEntry {
        seq_first: 0,
        seq_last: 0,
        table: table.to_string(),
        key,
        op: WriteOp::Update,
        base_version: Some(base),
        user: "ana".to_string(),
        old: Row::from([(column.to_string(), old)]),
        new: Row::from([(column.to_string(), new)]),
    }
}

/// Sends an upload as `server/src/api.rs` does.
fn send(
    fx: &Fixture,
    task: &str,
    device: &str,
    sender: &str,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    send_to(fx.store(), task, device, sender, upload)
}

fn send_to(
    store: &dyn Store,
    task: &str,
    device: &str,
    sender: &str,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    let today = AssignedTask::from(
        store
            .task_get(task)
            .expect("task_get")
            .expect("task exists"),
    );
    let at = now();
    // The entries' users logged in on the device, as they must have.
    let mut users: Vec<&str> = upload.entries.iter().map(|e| e.user.as_str()).collect();
    users.push(sender);
    users.dedup();
    for user in users {
        store
            .session_put(&SessionRecord {
                token_hash: sha256_hex(&format!("{device}-{user}-{}", random_hex(8))),
                device: device.into(),
                user: user.into(),
                created_at: at,
                expires_at: "2999-01-01T00:00:00.000Z".parse().expect("time"),
                scope: Default::default(),
            })
            .expect("session_put");
    }
    let ctx = IntegrateContext {
        device,
        sender,
        task: &today.def,
        today: Some(&today),
        at,
        restored: false,
    };
    store.integrate(&ctx, upload)
}

/// An upload of `entries`, numbered as journal entries 1, 2, …
fn upload(id: &str, task: &str, mut entries: Vec<UploadEntry>) -> Upload {
    for (i, e) in entries.iter_mut().enumerate() {
        e.seq_first = i as i64 + 1;
        e.seq_last = i as i64 + 1;
    }
    Upload {
        upload_id: id.to_string(),
        task: task.to_string(),
        epoch: None,
        task_hash: None,
        cursor: None,
        entries,
        attachments: Vec::new(),
    }
}

fn asset_name(fx: &Fixture, id: i64) -> String {
    fx.office()
        .text(&format!("SELECT name FROM assets WHERE id = {id}"))
}

/// The north assets of the slice (not retired), by id.
fn north_ids(fx: &Fixture) -> Vec<i64> {
    fx.office()
        .rows("SELECT id FROM assets WHERE region = 'north' AND status <> 'retired' ORDER BY id")
        .into_iter()
        .map(|r| match r[0] {
            Value::Integer(i) => i,
            ref v => panic!("asset id {v:?}"),
        })
        .collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// A task on assets only, with one conflict policy (check 6 and 7).
fn assets_task(name: &str, policy: &str) -> String {
    format!(
        r#"
name = "{name}"
[[tables]]
name = "assets"
filter = "region = 'north'"
columns = ["id", "name", "status", "region"]
write = ["update"]
conflict = "{policy}"
"#
    )
}

fn put_assets_task(fx: &Fixture, name: &str, policy: &str) {
    task_apply(fx.store(), &assets_task(name, policy)).expect("task apply");
    fx.store()
        .task_assign(name, &strings(&["ana"]), &strings(&["dev1"]))
        .expect("task assign");
}

// ---------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------

/// Check 1: `init` is idempotent; before it, calls say NotInitialized; the epoch is stable.
fn init_idempotent_and_required(fx: &Fixture) {
    // The organisation's database exists (its tables), fieldsync's objects do not.
    fx.sample(4);
    let s = fx.store();
    let not_init = |what: &str, r: Result<(), StoreError>| match r {
        Err(StoreError::NotInitialized) => {}
        other => panic!("{what} before init: NotInitialized expected, got {other:?}"),
    };
    not_init("epoch", s.epoch().map(drop));
    not_init("table_info", s.table_info("assets").map(drop));
    not_init("track_table", s.track_table("assets").map(drop));
    not_init("user_add", s.user_add(&user("ana")));
    not_init("user_get", s.user_get("ana").map(drop));
    not_init("user_list", s.user_list().map(drop));
    not_init("device_list", s.device_list().map(drop));
    not_init("task_list", s.task_list().map(drop));
    not_init("session_get", s.session_get("x").map(drop));
    not_init("conflicts_list", s.conflicts_list().map(drop));
    not_init("history", s.history().map(drop));

    s.init().expect("first init");
    let epoch = s.epoch().expect("epoch");
    assert!(!epoch.is_empty(), "epoch is not empty");
    assert_eq!(
        s.epoch().expect("epoch"),
        epoch,
        "epoch stable across calls"
    );
    s.user_add(&user("ana")).expect("user_add after init");
    s.track_table("assets").expect("track");

    s.init().expect("second init is fine");
    assert_eq!(
        s.epoch().expect("epoch"),
        epoch,
        "a second init keeps the epoch"
    );
    assert!(
        s.user_get("ana").expect("user_get").is_some(),
        "a second init keeps users"
    );
    assert!(
        s.table_info("assets")
            .expect("table_info")
            .expect("assets")
            .tracked,
        "a second init keeps tracking"
    );
    // A fresh store on the same database agrees.
    let again = fieldsync_store::open(&fx.url).expect("reopen");
    assert_eq!(again.epoch().expect("epoch"), epoch, "epoch of a new store");
    // A reset (after a restore) gives another, kept from then on.
    let reset = again.epoch_reset().expect("epoch_reset");
    assert_ne!(reset, epoch, "a reset gives a new epoch");
    assert_eq!(s.epoch().expect("epoch"), reset, "the reset epoch is kept");
}

/// Authorization: the tasks assigned to both a user and a device, each as `task_get`
/// has it, by name; nothing for a task assigned to only one of them. The indexes
/// it is answered by are made by `init`, also again on a database set up before them.
fn tasks_assigned_to_user_and_device(fx: &Fixture) {
    setup(fx);
    let s = fx.store();
    s.device_add(&device("dev2", "code-2"))
        .expect("device dev2");
    s.user_add(&user("cleo")).expect("user cleo");
    // north: ana, ben on dev1 (setup); south: ben on dev2.
    s.task_assign("south-work-orders", &strings(&["ben"]), &strings(&["dev2"]))
        .expect("assign south");
    // Tasks of others: they change nothing of the answers below.
    for i in 0..200 {
        let name = format!("other-{i:03}");
        task_apply(s, &assets_task(&name, "server-wins")).expect("task apply");
        s.task_assign(&name, &strings(&["cleo", "ben"]), &strings(&["dev2"]))
            .expect("assign other");
    }
    let names = |u: &str, d: &str| -> Vec<String> {
        s.tasks_assigned(u, d)
            .expect("tasks_assigned")
            .into_iter()
            .map(|t| t.def.name)
            .collect()
    };
    let check = |label: &str| {
        assert_eq!(names("ana", "dev1"), ["north-inspections"], "{label}");
        assert_eq!(names("ben", "dev1"), ["north-inspections"], "{label}");
        assert_eq!(names("ben", "dev2").len(), 201, "{label}");
        assert_eq!(names("ben", "dev2")[200], "south-work-orders", "{label}");
        assert!(
            names("ana", "dev2").is_empty(),
            "{label}: user not assigned"
        );
        assert!(
            names("cleo", "dev1").is_empty(),
            "{label}: device not assigned"
        );
        assert!(names("nobody", "nodev").is_empty(), "{label}");
        let north = AssignedTask::from(s.task_get("north-inspections").unwrap().unwrap());
        assert_eq!(north.users, strings(&["ana", "ben"]));
        assert_eq!(
            s.tasks_assigned("ana", "dev1").unwrap(),
            vec![north.clone()],
            "{label}: the record as task_get has it"
        );
        let one = |t: &str, u: &str, d: &str| s.task_assigned(t, u, d).expect("task_assigned");
        assert_eq!(
            one("north-inspections", "ana", "dev1"),
            Some(north),
            "{label}"
        );
        assert_eq!(
            one("south-work-orders", "ben", "dev2"),
            s.task_get("south-work-orders")
                .unwrap()
                .map(AssignedTask::from),
            "{label}"
        );
        assert_eq!(one("north-inspections", "ana", "dev2"), None, "{label}");
        assert_eq!(one("south-work-orders", "ben", "dev1"), None, "{label}");
        assert_eq!(one("south-work-orders", "ana", "dev2"), None, "{label}");
        assert_eq!(one("south-work-orders", "ana", "dev1"), None, "{label}");
        assert_eq!(one("no-such-task", "ana", "dev1"), None, "{label}");
    };
    check("indexed");

    // A database set up before the indexes: answers alike, and `init` adds them.
    let (count_sql, drop_sql) = match fx.engine {
        Engine::Sqlite => (
            "SELECT count(*) FROM sqlite_schema WHERE type = 'index'
               AND name IN ('fieldsync_task_users_by_user', 'fieldsync_task_devices_by_device')",
            "DROP INDEX fieldsync_task_users_by_user; DROP INDEX fieldsync_task_devices_by_device;",
        ),
        Engine::Postgres => (
            "SELECT count(*)::int8 FROM pg_indexes WHERE schemaname = 'fieldsync'
               AND indexname IN ('task_users_by_user', 'task_devices_by_device')",
            "DROP INDEX fieldsync.task_users_by_user; DROP INDEX fieldsync.task_devices_by_device;",
        ),
    };
    let mut office = fx.office();
    assert_eq!(office.value(count_sql), Value::Integer(2), "init made both");
    office.exec(drop_sql);
    assert_eq!(office.value(count_sql), Value::Integer(0));
    check("without the indexes");
    s.init().expect("init again");
    assert_eq!(
        office.value(count_sql),
        Value::Integer(2),
        "init made them again"
    );
    check("indexed again");

    // Assigning, unassigning, deleting.
    s.task_assign("south-work-orders", &[], &strings(&["dev1"]))
        .expect("assign");
    assert_eq!(
        names("ben", "dev1"),
        ["north-inspections", "south-work-orders"]
    );
    s.task_unassign("north-inspections", &strings(&["ben"]), &[])
        .expect("unassign");
    assert_eq!(names("ben", "dev1"), ["south-work-orders"]);
    assert_eq!(
        s.task_assigned("north-inspections", "ben", "dev1").unwrap(),
        None
    );
    s.task_delete("south-work-orders").expect("delete");
    assert!(names("ben", "dev1").is_empty());
    assert_eq!(names("ana", "dev1"), ["north-inspections"]);
}

/// Integrates an upload as `send` does, without recording logins first (a write): for
/// uploads sent while the office holds a lock.
fn integrate_as(fx: &Fixture, task: &str, up: &Upload) -> Result<UploadOutcome, IntegrateError> {
    let today = AssignedTask::from(fx.store().task_get(task).unwrap().unwrap());
    let at = now();
    let ctx = IntegrateContext {
        device: "dev1",
        sender: "ana",
        task: &today.def,
        today: Some(&today),
        at,
        restored: false,
    };
    fx.store().integrate(&ctx, up)
}

/// A device's insert into inspections under the first north asset.
fn inspection_insert(id: &str, asset: i64, inspected_at: Value) -> UploadEntry {
    UploadEntry {
        seq_first: 0,
        seq_last: 0,
        table: "inspections".to_string(),
        key: text(id),
        op: WriteOp::Insert,
        base_version: None,
        user: "ana".to_string(),
        old: Row::new(),
        new: Row::from([
            ("id".to_string(), text(id)),
            ("asset_id".to_string(), Value::Integer(asset)),
            ("inspector".to_string(), text("ana")),
            ("inspected_at".to_string(), inspected_at),
            ("result".to_string(), text("ok")),
            ("notes".to_string(), text("run")),
        ]),
    }
}

/// Inserts may be written many rows per statement (SQLite writes runs of them): each
/// entry still gets its own true version, a later entry of the upload reading a row
/// inserted earlier sees it, and a refused insert in the middle of a run is named as
/// its own entry, with nothing of the upload applied.
fn inserts_in_runs_keep_versions_reads_and_refusals(fx: &Fixture) {
    setup(fx);
    let asset = north_ids(fx)[0];
    let d = download(fx, "north-inspections", "ana", "dev1");
    let at = || text("2026-11-26T09:00:00.000Z");
    let mut entries: Vec<UploadEntry> = (0..150)
        .map(|i| inspection_insert(&format!("run-{i:03}"), asset, at()))
        .collect();
    // A row inserted 10 entries earlier, updated by the same upload (on the
    // download's base: the insert is this upload's own write, not a change since).
    entries.push(update_entry(
        "inspections",
        text("run-140"),
        d.cursor,
        "notes",
        text("run"),
        text("updated in the same upload"),
    ));
    entries.push(inspection_insert("run-150", asset, at()));
    let up = upload("runs-1", "north-inspections", entries);
    let out = send(fx, "north-inspections", "dev1", "ana", &up).expect("integrate");
    assert_eq!((out.applied, out.conflicts), (152, 0), "{out:?}");
    assert_eq!(out.versions.len(), 152);
    assert!(
        out.versions
            .iter()
            .all(|v| v.version.is_some_and(|v| v > 0)),
        "every write has its version: {:?}",
        out.versions.iter().map(|v| v.version).collect::<Vec<_>>()
    );
    let mut office = fx.office();
    assert_eq!(
        office.text("SELECT notes FROM inspections WHERE id = 'run-140'"),
        "updated in the same upload"
    );
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'run-%'"),
        Value::Integer(151)
    );
    if fx.engine == Engine::Sqlite {
        // Each version is the row's own as the main database stamped it: a base.
        for (e, v) in up.entries.iter().zip(&out.versions) {
            if e.op != WriteOp::Insert || e.key == text("run-140") {
                continue;
            }
            let Value::Text(k) = &e.key else {
                unreachable!()
            };
            assert_eq!(
                office.value(&format!(
                    "SELECT version FROM fieldsync_rows WHERE tbl = 'inspections' AND pk = '{k}'"
                )),
                Value::Integer(v.version.unwrap()),
                "{k}"
            );
        }
    }

    // Entry 101 of 150 inserts breaks a constraint: named, nothing applied.
    let entries: Vec<UploadEntry> = (0..150)
        .map(|i| {
            let when = if i == 100 { Value::Null } else { at() };
            inspection_insert(&format!("bad-{i:03}"), asset, when)
        })
        .collect();
    let up = upload("runs-2", "north-inspections", entries);
    match send(fx, "north-inspections", "dev1", "ana", &up) {
        Err(IntegrateError::Forbidden(why)) => assert!(
            why.contains("entry 101 (insert of `inspections` key \"bad-100\"")
                && why.contains("refused"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'bad-%'"),
        Value::Integer(0)
    );
}

/// An office connection holding a lock (`sql`, in a transaction it keeps open) on a
/// thread of its own until `release` is sent (or 20 s pass), then committing.
fn office_holding(
    fx: &Fixture,
    sql: String,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let mut office = fx.office();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        office.exec(&sql);
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(std::time::Duration::from_secs(20));
        office.exec("COMMIT");
    });
    locked_rx.recv().expect("the office took its lock");
    (release_tx, holder)
}

/// Uploads of updates of every north asset's name, based on `d`'s cursor.
fn renames(fx: &Fixture, d: &Download, ids: &[i64], to: &str) -> Vec<UploadEntry> {
    ids.iter()
        .map(|id| {
            update_entry(
                "assets",
                Value::Integer(*id),
                d.cursor,
                "name",
                text(&asset_name(fx, *id)),
                text(to),
            )
        })
        .collect()
}

/// A forbidden upload is refused by the checks that need no lock, before the engine
/// takes any: while an office transaction holds SQLite's write lock (PostgreSQL: the
/// rows the upload writes), the refusal comes at once, not after waiting for the lock
/// (SQLite's busy timeout is 10 s; on PostgreSQL it waited as long as the office).
fn forbidden_upload_refused_before_any_lock(fx: &Fixture) {
    setup(fx);
    put_assets_task(fx, "lock-check", "server-wins");
    let ids = north_ids(fx);
    let d = download(fx, "lock-check", "ana", "dev1");
    // Ana's login on dev1 is recorded (a write) before the office locks.
    send(
        fx,
        "lock-check",
        "dev1",
        "ana",
        &upload("up-warm", "lock-check", vec![]),
    )
    .expect("an empty upload");
    let mut entries = renames(fx, &d, &ids, "device");
    let mut last = entries[0].clone();
    last.op = WriteOp::Delete;
    last.new.clear();
    entries.push(last);
    let up = upload("up-forbidden-locked", "lock-check", entries);
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let lock = match fx.engine {
        Engine::Sqlite => format!(
            "BEGIN IMMEDIATE; UPDATE assets SET name = 'office' WHERE id = {}",
            ids[0]
        ),
        Engine::Postgres => format!(
            "BEGIN; SELECT * FROM assets WHERE id IN ({}) FOR UPDATE",
            list.join(", ")
        ),
    };
    let (release, holder) = office_holding(fx, lock);
    let started = std::time::Instant::now();
    let result = integrate_as(fx, "lock-check", &up);
    let took = started.elapsed();
    release.send(()).unwrap();
    holder.join().unwrap();
    match result {
        Err(IntegrateError::Forbidden(m)) => assert!(
            m.contains(&format!("entry {} (delete of `assets`", ids.len() + 1))
                && m.contains("does not allow delete"),
            "{m}"
        ),
        other => panic!("a refusal expected, got {other:?}"),
    }
    assert!(
        took < std::time::Duration::from_secs(3),
        "the refusal waited {took:?} for the office's lock"
    );
    for id in &ids[1..] {
        assert_ne!(asset_name(fx, *id), "device", "nothing of it applied");
    }
}

/// PostgreSQL: an upload waiting on a row an office transaction holds gives up after
/// the lock timeout (5 s by default) with the retryable `StoreError::Locked`, "row
/// locked in the office, retry", holding nothing afterwards (no transaction of the
/// store stays open); once the office commits, the same upload applies.
fn upload_gives_up_on_a_row_the_office_holds(fx: &Fixture) {
    setup(fx);
    put_assets_task(fx, "lock-check", "server-wins");
    let ids = north_ids(fx);
    let d = download(fx, "lock-check", "ana", "dev1");
    send(
        fx,
        "lock-check",
        "dev1",
        "ana",
        &upload("up-warm", "lock-check", vec![]),
    )
    .expect("an empty upload");
    let up = upload(
        "up-waits",
        "lock-check",
        renames(fx, &d, &ids[..2], "device"),
    );
    let (release, holder) = office_holding(
        fx,
        format!(
            "BEGIN; SELECT * FROM assets WHERE id = {} FOR UPDATE",
            ids[1]
        ),
    );
    let started = std::time::Instant::now();
    let result = integrate_as(fx, "lock-check", &up);
    let took = started.elapsed();
    let Office::Pg(mut monitor) = fx.office() else {
        panic!("a PostgreSQL fixture")
    };
    let open: i64 = monitor
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND state LIKE 'idle in transaction%'",
            &[],
        )
        .unwrap()
        .get(0);
    release.send(()).unwrap();
    holder.join().unwrap();
    match &result {
        Err(IntegrateError::Store(e @ StoreError::Locked)) => assert!(
            e.to_string().contains("row locked in the office, retry"),
            "{e}"
        ),
        other => panic!("StoreError::Locked expected, got {other:?}"),
    }
    assert!(
        took >= std::time::Duration::from_secs(4) && took < std::time::Duration::from_secs(15),
        "gave up after {took:?}"
    );
    assert_eq!(open, 1, "only the office's transaction is open");
    assert_ne!(asset_name(fx, ids[0]), "device", "nothing applied");
    let out = integrate_as(fx, "lock-check", &up).expect("applies once the office commits");
    assert_eq!((out.applied, out.conflicts), (2, 0));
    assert_eq!(asset_name(fx, ids[1]), "device");
}

/// Check 2: table_info, track_table, refusals of tables fieldsync cannot track.
fn table_info_and_tracking(fx: &Fixture) {
    fx.sample(6);
    let s = fx.store();
    s.init().expect("init");
    let mut office = fx.office();
    office.exec(
        "CREATE TABLE pairs (a INTEGER NOT NULL, b INTEGER NOT NULL, note TEXT, PRIMARY KEY (a, b));
         CREATE TABLE nopk (a INTEGER, b TEXT);",
    );

    assert!(s.table_info("no_such_table").expect("table_info").is_none());
    match s.track_table("no_such_table") {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("tracking a missing table: NotFound expected, got {other:?}"),
    }

    let info = s.table_info("assets").expect("table_info").expect("assets");
    assert_eq!(info.name, "assets");
    assert_eq!(info.primary_key, "id");
    assert!(!info.tracked, "not tracked before track_table");
    let names: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "name",
            "category",
            "status",
            "region",
            "x",
            "y",
            "installed",
            "notes"
        ]
    );
    use fieldsync_proto::ColumnType as T;
    let types: Vec<T> = info.columns.iter().map(|c| c.column_type).collect();
    assert_eq!(
        types,
        [
            T::Integer,
            T::Text,
            T::Text,
            T::Text,
            T::Text,
            T::Real,
            T::Real,
            T::Text,
            T::Text
        ]
    );
    let col = |n: &str| info.column(n).expect("column").clone();
    assert!(col("name").not_null && !col("name").has_default);
    assert!(!col("notes").not_null);
    let wo = s
        .table_info("work_orders")
        .expect("table_info")
        .expect("wo");
    assert_eq!(wo.primary_key, "id");
    let prio = wo.column("priority").expect("priority");
    assert!(
        prio.not_null && prio.has_default,
        "priority NOT NULL DEFAULT 3"
    );
    assert_eq!(prio.column_type, T::Integer);

    let tracked = s.track_table("assets").expect("track");
    assert!(tracked.tracked);
    assert_eq!(tracked.columns, info.columns);
    assert_eq!(tracked.primary_key, "id");
    let again = s.track_table("assets").expect("tracking twice is fine");
    assert_eq!(again, tracked, "track_table is idempotent");
    assert!(s.table_info("assets").expect("ti").expect("assets").tracked);
    assert!(
        !s.table_info("inspections")
            .expect("ti")
            .expect("insp")
            .tracked,
        "tracking one table tracks only it"
    );

    // Existing rows are versioned by tracking; writes after it restamp them.
    let v1 = s
        .row_version("assets", &Value::Integer(1))
        .expect("row_version")
        .expect("existing row has a version after tracking");
    assert!(!v1.1, "not deleted");
    office.exec("UPDATE assets SET name = 'renamed' WHERE id = 1");
    let v2 = s
        .row_version("assets", &Value::Integer(1))
        .expect("row_version")
        .expect("version");
    assert_ne!(v2.0, v1.0, "an office update changes the row version");
    office.exec(
        "INSERT INTO assets (id, name, category, status, region) VALUES (1000, 'n', 'pump', 'active', 'north')",
    );
    assert!(
        matches!(
            s.row_version("assets", &Value::Integer(1000)),
            Ok(Some((_, false)))
        ),
        "an office insert is versioned (once, although tracked twice)"
    );
    office.exec("DELETE FROM assets WHERE id = 1000");
    assert!(
        matches!(
            s.row_version("assets", &Value::Integer(1000)),
            Ok(Some((_, true)))
        ),
        "an office delete leaves a tombstone"
    );
    assert!(
        s.row_version("assets", &Value::Integer(999_999))
            .expect("row_version")
            .is_none()
    );

    for table in ["pairs", "nopk"] {
        let ti = s.table_info(table).expect("ti").expect("table");
        assert_eq!(ti.primary_key, "", "{table}: no single-column primary key");
        match s.track_table(table) {
            Err(StoreError::Invalid(m)) => assert!(
                m.contains("single-column primary key"),
                "{table}: message says why: {m}"
            ),
            other => panic!("tracking {table}: Invalid expected, got {other:?}"),
        }
        assert!(
            !s.table_info(table).expect("ti").expect("t").tracked,
            "{table} stays untracked"
        );
    }
    // The refused table still takes office writes (no triggers were left behind).
    office.exec("INSERT INTO pairs (a, b) VALUES (1, 2); INSERT INTO nopk (a) VALUES (1)");
}

/// Check 2 (PostgreSQL only). Columns of a type fieldsync does not carry are refused at
/// track, naming the column; the table stays untracked and writable.
fn unsupported_types_refused(fx: &Fixture) {
    let s = fx.store();
    s.init().expect("init");
    let mut office = fx.office();
    office.exec(
        "CREATE TABLE t_interval (id bigint PRIMARY KEY, label text, span interval);
         CREATE TABLE t_point (id bigint PRIMARY KEY, spot point);
         CREATE TABLE t_array (id text PRIMARY KEY, tags int[]);
         CREATE TABLE t_fine (id uuid PRIMARY KEY, amount numeric(10,2), at timestamptz,
                              flag boolean, doc jsonb, raw bytea, code varchar(8), d date);",
    );
    for (table, column) in [
        ("t_interval", "span"),
        ("t_point", "spot"),
        ("t_array", "tags"),
    ] {
        match s.track_table(table) {
            Err(StoreError::Invalid(m)) => assert!(
                m.contains(&format!("`{column}`")),
                "{table}: the message names column `{column}`: {m}"
            ),
            other => panic!("tracking {table}: Invalid expected, got {other:?}"),
        }
        assert!(
            !s.table_info(table).expect("ti").expect("t").tracked,
            "{table} stays untracked"
        );
        office.exec(&format!("DELETE FROM {table}"));
    }
    let fine = s
        .track_table("t_fine")
        .expect("supported types are tracked");
    assert!(fine.tracked);
    assert_eq!(fine.primary_key, "id");
    office.exec(
        "INSERT INTO t_fine (id, amount, flag) VALUES ('6f1c2a9e-4a55-4f0e-9a0b-0c8e5b0f6a11', 12.50, true)",
    );
    assert!(
        s.row_version("t_fine", &text("6f1c2a9e-4a55-4f0e-9a0b-0c8e5b0f6a11"))
            .expect("row_version")
            .is_some(),
        "a uuid-keyed row is versioned under its text form"
    );
}

/// PostgreSQL types travel in one form whatever the database's session defaults: times
/// as fixed-width UTC text, numerics as their exact text in a decimal column, and a
/// filter on them selects by instant and by number.
fn times_and_numerics_travel_canonically(fx: &Fixture) {
    setup(fx);
    let mut office = fx.office();
    office.exec(
        "DO $$ BEGIN
             EXECUTE format('ALTER DATABASE %I SET TimeZone = %L', current_database(), 'Asia/Kathmandu');
             EXECUTE format('ALTER DATABASE %I SET DateStyle = %L', current_database(), 'SQL, DMY');
         END $$;
         CREATE TABLE readings (id text PRIMARY KEY, at timestamptz, d date, t time, tz timetz,
                                amount numeric(40,10));
         INSERT INTO readings VALUES
             ('r1', '2026-11-26 00:10:00+00', '2026-11-26', '08:30', '08:30+05:45',
              123456789012345678901234567890.1234567890),
             ('r2', '2026-11-25 23:50:00+00', '2026-11-25', '23:59:59.999999', '00:00+00', 7),
             ('r3', '2026-11-27 12:00:00.123456+00', '2026-11-27', '00:00', NULL, 4.9999999999);",
    );
    let s = fx.store();
    s.track_table("readings").expect("track");
    task_apply(
        s,
        "name = \"readings\"\n[[tables]]\nname = \"readings\"\nfilter = \"at >= '2026-11-26' AND amount >= 5\"\n",
    )
    .expect("task");
    s.task_assign("readings", &strings(&["ana"]), &strings(&["dev1"]))
        .expect("assign");
    let d = download(fx, "readings", "ana", "dev1");
    let types: Vec<ColumnType> = d.plan.tables[0]
        .schema
        .columns
        .iter()
        .map(|c| c.column_type)
        .collect();
    use ColumnType::{Decimal, Text};
    assert_eq!(types, [Text, Text, Text, Text, Text, Decimal]);
    assert_eq!(
        d.rows[0],
        vec![vec![
            text("r1"),
            text("2026-11-26T00:10:00.000000Z"),
            text("2026-11-26"),
            text("08:30:00.000000"),
            text("02:45:00.000000Z"),
            text("123456789012345678901234567890.1234567890"),
        ]],
        "r2 is before the day in UTC, r3's amount is below 5"
    );
}

/// Check 3: Users, devices, tasks, sessions.
fn users_devices_tasks_sessions(fx: &Fixture) {
    fx.sample(6);
    let s = fx.store();
    s.init().expect("init");

    // Users.
    let ana = user("ana");
    s.user_add(&ana).expect("user_add");
    s.user_add(&UserRecord {
        admin: true,
        ..user("Zed")
    })
    .expect("user_add");
    s.user_add(&user("ben")).expect("user_add");
    assert_eq!(s.user_get("ana").expect("user_get"), Some(ana.clone()));
    assert_eq!(s.user_get("nobody").expect("user_get"), None);
    assert!(
        matches!(s.user_add(&user("ana")), Err(StoreError::AlreadyExists(_))),
        "duplicate user"
    );
    assert_eq!(
        s.user_get("ana")
            .expect("user_get")
            .expect("ana")
            .password_hash,
        ana.password_hash,
        "a duplicate add changes nothing"
    );
    let names: Vec<String> = s
        .user_list()
        .expect("user_list")
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["Zed", "ana", "ben"], "users by name, byte order");
    assert!(s.user_get("Zed").expect("get").expect("Zed").admin);
    s.user_set_password("ana", "new-hash").expect("passwd");
    assert_eq!(
        s.user_get("ana").expect("get").expect("ana").password_hash,
        "new-hash"
    );
    assert!(matches!(
        s.user_set_password("nobody", "h"),
        Err(StoreError::NotFound(_))
    ));

    // Devices and pairing.
    let d1 = device("dev1", "code-1");
    s.device_add(&d1).expect("device_add");
    s.device_add(&device("dev0", "code-0")).expect("device_add");
    assert_eq!(s.device_get("dev1").expect("device_get"), Some(d1.clone()));
    assert_eq!(s.device_get("nope").expect("device_get"), None);
    assert!(
        matches!(
            s.device_add(&device("dev1", "other")),
            Err(StoreError::AlreadyExists(_))
        ),
        "duplicate device"
    );
    let ids: Vec<String> = s
        .device_list()
        .expect("device_list")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["dev0", "dev1"]);
    let at = now();
    assert!(
        !s.device_pair("dev1", &sha256_hex("wrong"), &sha256_hex("secret"), at)
            .expect("pair"),
        "a wrong code does not pair"
    );
    assert!(
        s.device_get("dev1")
            .expect("get")
            .expect("d")
            .secret_hash
            .is_none(),
        "nothing stored on a wrong code"
    );
    assert!(
        s.device_pair("dev1", &sha256_hex("code-1"), &sha256_hex("secret"), at)
            .expect("pair"),
        "the right code pairs"
    );
    let paired = s.device_get("dev1").expect("get").expect("dev1");
    assert_eq!(paired.code_hash, None, "the code is consumed");
    assert_eq!(paired.secret_hash, Some(sha256_hex("secret")));
    assert_eq!(paired.paired_at, Some(at));
    assert!(
        !s.device_pair("dev1", &sha256_hex("code-1"), &sha256_hex("secret2"), at)
            .expect("pair"),
        "the code pairs only once"
    );
    assert_eq!(
        s.device_get("dev1").expect("get").expect("d").secret_hash,
        Some(sha256_hex("secret")),
        "a second pairing does not replace the secret"
    );
    s.device_add(&DeviceRecord {
        revoked: true,
        ..device("dev-revoked", "code-r")
    })
    .expect("device_add");
    assert!(
        !s.device_pair("dev-revoked", &sha256_hex("code-r"), &sha256_hex("s"), at)
            .expect("pair"),
        "a revoked device does not pair"
    );
    s.device_add(&device("dev-later-revoked", "code-l"))
        .expect("device_add");
    s.device_revoke("dev-later-revoked", true).expect("revoke");
    let d = s.device_get("dev-later-revoked").expect("get").expect("d");
    assert!(d.revoked && d.keep_changes, "revoked, keeping its changes");
    assert!(
        matches!(
            s.device_revoke("no-such-device", false),
            Err(StoreError::NotFound(_))
        ),
        "an unknown device is not found"
    );

    // Tasks: refused while a table is untracked; nothing stored then.
    s.track_table("assets").expect("track");
    match task_apply(s, sample::TASK_NORTH) {
        Err(StoreError::Invalid(m)) => {
            assert!(
                m.contains("inspections"),
                "the message names the table: {m}"
            )
        }
        other => panic!("task naming an untracked table: Invalid expected, got {other:?}"),
    }
    assert!(s.task_get("north-inspections").expect("task_get").is_none());
    assert!(s.task_list().expect("task_list").is_empty());
    s.track_table("inspections").expect("track");
    s.track_table("work_orders").expect("track");
    let north = task_apply(s, sample::TASK_NORTH).expect("north");
    task_apply(s, sample::TASK_SOUTH).expect("south");
    let rec = s
        .task_get("north-inspections")
        .expect("get")
        .expect("north");
    assert_eq!(rec.def, north, "the stored definition is the applied one");
    assert_eq!(rec.hash.len(), 16);
    assert!(rec.users.is_empty() && rec.devices.is_empty());
    let names: Vec<String> = s
        .task_list()
        .expect("list")
        .into_iter()
        .map(|t| t.def.name)
        .collect();
    assert_eq!(names, ["north-inspections", "south-work-orders"]);
    // A task on a missing column is refused and leaves the stored one alone.
    let bad = sample::TASK_NORTH.replace("\"x\", \"y\"", "\"x\", \"nope\"");
    assert!(matches!(task_apply(s, &bad), Err(StoreError::Invalid(_))));
    assert_eq!(
        s.task_get("north-inspections")
            .expect("get")
            .expect("t")
            .def,
        north
    );

    // Assignment: all or nothing.
    match s.task_assign(
        "north-inspections",
        &strings(&["ana", "ghost"]),
        &strings(&["dev1"]),
    ) {
        Err(StoreError::NotFound(m)) => assert!(m.contains("ghost"), "names the user: {m}"),
        other => panic!("assigning an unknown user: NotFound expected, got {other:?}"),
    }
    let rec = s.task_get("north-inspections").expect("get").expect("t");
    assert!(
        rec.users.is_empty() && rec.devices.is_empty(),
        "a refused assignment assigns nothing: {rec:?}"
    );
    assert!(matches!(
        s.task_assign("north-inspections", &[], &strings(&["ghost-device"])),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.task_assign("no-task", &strings(&["ana"]), &[]),
        Err(StoreError::NotFound(_))
    ));
    s.task_assign(
        "north-inspections",
        &strings(&["ben", "ana"]),
        &strings(&["dev1", "dev0"]),
    )
    .expect("assign");
    s.task_assign("north-inspections", &strings(&["ana"]), &[])
        .expect("assigning twice is fine");
    let rec = s.task_get("north-inspections").expect("get").expect("t");
    assert_eq!(rec.users, ["ana", "ben"]);
    assert_eq!(rec.devices, ["dev0", "dev1"]);
    s.task_unassign("north-inspections", &strings(&["ben"]), &strings(&["dev0"]))
        .expect("unassign");
    let rec = s.task_get("north-inspections").expect("get").expect("t");
    assert_eq!(rec.users, ["ana"]);
    assert_eq!(rec.devices, ["dev1"]);
    assert!(matches!(
        s.task_unassign("no-task", &strings(&["ana"]), &[]),
        Err(StoreError::NotFound(_))
    ));

    // Sessions; disabling a user ends them.
    let session = |token: &str, user: &str, expires: &str| SessionRecord {
        token_hash: sha256_hex(token),
        device: "dev1".into(),
        user: user.into(),
        created_at: now(),
        expires_at: expires.parse().expect("time"),
        scope: Default::default(),
    };
    let far = "2999-01-01T00:00:00.000Z";
    let s1 = session("t1", "ana", far);
    s.session_put(&s1).expect("session_put");
    s.session_put(&session("t2", "ana", far)).expect("put");
    s.session_put(&session("t3", "ben", far)).expect("put");
    assert_eq!(
        s.session_get(&sha256_hex("t1")).expect("get"),
        Some(s1.clone())
    );
    s.session_delete(&sha256_hex("t2")).expect("delete");
    assert_eq!(s.session_get(&sha256_hex("t2")).expect("get"), None);
    s.user_set_disabled("ana", true).expect("disable");
    assert!(s.user_get("ana").expect("get").expect("ana").disabled);
    // Disabled, a session stays for the server to refuse by the user's state (the
    // device hears "disabled"); enabled again, the user's sessions are gone.
    assert!(
        s.session_get(&sha256_hex("t1")).expect("get").is_some(),
        "kept while disabled, refused by the server's user check"
    );
    s.user_set_disabled("ana", false).expect("enable");
    assert!(!s.user_get("ana").expect("get").expect("ana").disabled);
    assert_eq!(
        s.session_get(&sha256_hex("t1")).expect("get"),
        None,
        "enabling ends the sessions from before: the user logs in afresh"
    );
    assert!(
        s.session_get(&sha256_hex("t3")).expect("get").is_some(),
        "other users' sessions stay"
    );
    assert!(matches!(
        s.user_set_disabled("nobody", true),
        Err(StoreError::NotFound(_))
    ));

    // Deleting a task deletes its assignments: a new task of that name starts empty.
    s.task_delete("north-inspections").expect("task_delete");
    assert!(s.task_get("north-inspections").expect("get").is_none());
    assert!(matches!(
        s.task_delete("north-inspections"),
        Err(StoreError::NotFound(_))
    ));
    task_apply(s, sample::TASK_NORTH).expect("re-apply");
    let rec = s.task_get("north-inspections").expect("get").expect("t");
    assert!(
        rec.users.is_empty() && rec.devices.is_empty(),
        "a deleted task's assignments do not come back: {rec:?}"
    );
}

/// Check 4: The streamed slice is exactly what plain SQL selects, value for value.
fn stream_slice_matches_sql(fx: &Fixture) {
    setup(fx);
    let mut office = fx.office();
    let d = download(fx, "north-inspections", "ana", "dev1");
    assert_eq!(d.plan.tables.len(), 2);
    assert_eq!(
        d.columns("assets"),
        ["id", "name", "category", "status", "region", "x", "y"]
    );
    assert_eq!(
        d.columns("inspections"),
        [
            "id",
            "asset_id",
            "inspector",
            "inspected_at",
            "result",
            "notes"
        ]
    );
    let slice = "region = 'north' AND status <> 'retired'";
    let mut assets = office.rows(&format!(
        "SELECT id, name, category, status, region, x, y FROM assets WHERE {slice}"
    ));
    let mut inspections = office.rows(&format!(
        "SELECT id, asset_id, inspector, inspected_at, result, notes FROM inspections
         WHERE inspector = 'ana' AND asset_id IN (SELECT id FROM assets WHERE {slice})"
    ));
    sort_by_key(&mut assets);
    sort_by_key(&mut inspections);
    // The slice is a real selection: rows are in it, rows are left out.
    let all_north = office.value("SELECT count(*) FROM assets WHERE region = 'north'");
    assert!(
        !assets.is_empty() && Value::Integer(assets.len() as i64) != all_north,
        "the sample has north assets in and out of the slice"
    );
    let all_insp = office.value(&format!(
        "SELECT count(*) FROM inspections WHERE asset_id IN (SELECT id FROM assets WHERE {slice})"
    ));
    assert!(
        !inspections.is_empty() && Value::Integer(inspections.len() as i64) != all_insp,
        "the sample has inspections of ana and of others"
    );
    assert_eq!(
        d.rows[d.table("assets")],
        assets,
        "assets of the slice, values as they travel"
    );
    assert_eq!(
        d.rows[d.table("inspections")],
        inspections,
        "inspections of the slice, values as they travel"
    );
    assert!(
        inspections.iter().any(|r| r[5].is_null()),
        "NULLs travel as NULL"
    );

    // $user is bound per download: ben gets his own inspections, never ana's.
    let b = download(fx, "north-inspections", "ben", "dev1");
    assert_eq!(b.rows[b.table("assets")], assets, "same assets for ben");
    let mut ben = office.rows(&format!(
        "SELECT id, asset_id, inspector, inspected_at, result, notes FROM inspections
         WHERE inspector = 'ben' AND asset_id IN (SELECT id FROM assets WHERE {slice})"
    ));
    sort_by_key(&mut ben);
    assert_eq!(b.rows[b.table("inspections")], ben);

    // The south task's work orders: the IN filter and the parent chain.
    let sd = download(fx, "south-work-orders", "ana", "dev1");
    let mut wo = office.rows(
        "SELECT id, asset_id, title, priority, status, due FROM work_orders
         WHERE status IN ('open', 'in-progress') AND asset_id IN (SELECT id FROM assets WHERE region = 'south')",
    );
    sort_by_key(&mut wo);
    assert!(!wo.is_empty());
    assert_eq!(sd.rows[sd.table("work_orders")], wo);

    // An office change shows in the next download, and the cursor moves on.
    let id = north_ids(fx)[0];
    office.exec(&format!(
        "UPDATE assets SET name = 'changed by office' WHERE id = {id}"
    ));
    let d2 = download(fx, "north-inspections", "ana", "dev1");
    assert_eq!(
        d2.cell("assets", &Value::Integer(id), "name"),
        Some(text("changed by office"))
    );
    assert_ne!(
        d2.cursor, d.cursor,
        "a write since the last download moves the cursor"
    );

    // A plan that brings its rows' estimate is not counted: `begin` gets the
    // estimate, and the rows are the slice's all the same.
    let mut plan = plan_of(fx.store(), "north-inspections", "ana", "dev1");
    plan.rows_estimate = Some(vec![7, 3]);
    let mut sink = Collect::default();
    let sent = fx.store().stream_slice(&plan, &mut sink).unwrap();
    assert_eq!(sink.counts, [7, 3], "the estimate, not a count");
    assert_eq!(sent, [assets.len() as u64, inspections.len() as u64]);
    assert_eq!(
        sink.rows.iter().map(Vec::len).collect::<Vec<_>>(),
        [assets.len(), inspections.len()]
    );
    // One for another number of tables is not the plan's: counted.
    plan.rows_estimate = Some(vec![7]);
    let mut sink = Collect::default();
    fx.store().stream_slice(&plan, &mut sink).unwrap();
    assert_eq!(sink.counts, [assets.len() as u64, inspections.len() as u64]);
}

/// Check 5: integrate: applied once, repeats apply nothing, a forbidden entry refuses all.
fn integrate_applies_once_and_refuses_whole(fx: &Fixture) {
    setup(fx);
    let ids = north_ids(fx);
    let (a, b) = (ids[0], ids[1]);
    let d = download(fx, "north-inspections", "ana", "dev1");
    let old_a = asset_name(fx, a);
    let old_b = asset_name(fx, b);
    assert_eq!(
        d.cell("assets", &Value::Integer(a), "name"),
        Some(text(&old_a))
    );

    let up = upload(
        "up-1",
        "north-inspections",
        vec![update_entry(
            "assets",
            Value::Integer(a),
            d.cursor,
            "name",
            text(&old_a),
            text("renamed on device"),
        )],
    );
    let out = send(fx, "north-inspections", "dev1", "ana", &up).expect("integrate");
    assert!(!out.repeated);
    assert_eq!((out.applied, out.conflicts), (1, 0));
    assert_eq!(out.versions.len(), 1);
    assert!(
        out.versions[0].version.is_some(),
        "a clean write gets a new base"
    );
    assert_eq!(asset_name(fx, a), "renamed on device");
    assert!(fx.store().conflicts_list().expect("conflicts").is_empty());

    // The same upload again: the recorded outcome, nothing applied.
    fx.office().exec(&format!(
        "UPDATE assets SET name = 'office after' WHERE id = {a}"
    ));
    let again = send(fx, "north-inspections", "dev1", "ana", &up).expect("repeat");
    assert!(again.repeated, "a repeat says so");
    assert_eq!(
        (again.applied, again.conflicts, &again.versions),
        (out.applied, out.conflicts, &out.versions),
        "a repeat returns the recorded outcome"
    );
    assert_eq!(
        asset_name(fx, a),
        "office after",
        "a repeated upload applies nothing"
    );
    assert!(fx.store().conflicts_list().expect("conflicts").is_empty());
    // The same id from another device is not its outcome to learn.
    assert!(
        matches!(
            send(fx, "north-inspections", "dev2", "ana", &up),
            Err(IntegrateError::Forbidden(_))
        ),
        "an upload id of another device"
    );

    // The new version is the device's base: its next edit is no conflict with itself.
    let d_b = download(fx, "north-inspections", "ana", "dev1");
    let first = upload(
        "up-2",
        "north-inspections",
        vec![update_entry(
            "assets",
            Value::Integer(b),
            d_b.cursor,
            "name",
            text(&old_b),
            text("b1"),
        )],
    );
    let o = send(fx, "north-inspections", "dev1", "ana", &first).expect("integrate");
    let base = o.versions[0].version.expect("clean");
    let second = upload(
        "up-3",
        "north-inspections",
        vec![update_entry(
            "assets",
            Value::Integer(b),
            base,
            "name",
            text("b1"),
            text("b2"),
        )],
    );
    let o = send(fx, "north-inspections", "dev1", "ana", &second).expect("integrate");
    assert_eq!(
        (o.applied, o.conflicts),
        (1, 0),
        "an edit based on the acknowledged version is not a conflict"
    );
    assert_eq!(asset_name(fx, b), "b2");

    // An entry on a table outside the task refuses the whole upload.
    let before_b = asset_name(fx, b);
    let wo_key = fx
        .office()
        .text("SELECT min(id) FROM work_orders WHERE asset_id IN (SELECT id FROM assets WHERE region = 'north')");
    let wo_title = fx.office().text(&format!(
        "SELECT title FROM work_orders WHERE id = '{wo_key}'"
    ));
    let d3 = download(fx, "north-inspections", "ana", "dev1");
    let bad = upload(
        "up-bad",
        "north-inspections",
        vec![
            update_entry(
                "assets",
                Value::Integer(b),
                d3.cursor,
                "name",
                text(&before_b),
                text("must not be applied"),
            ),
            update_entry(
                "work_orders",
                text(&wo_key),
                d3.cursor,
                "title",
                text(&wo_title),
                text("sneaked"),
            ),
        ],
    );
    match send(fx, "north-inspections", "dev1", "ana", &bad) {
        Err(IntegrateError::Forbidden(m)) => assert!(
            m.contains("entry 2") && m.contains("work_orders"),
            "the refusal names the entry: {m}"
        ),
        other => panic!("entry outside the task: Forbidden expected, got {other:?}"),
    }
    assert_eq!(asset_name(fx, b), before_b, "nothing of a refused upload");
    assert_eq!(
        fx.office().text(&format!(
            "SELECT title FROM work_orders WHERE id = '{wo_key}'"
        )),
        wo_title
    );
    assert!(fx.store().conflicts_list().expect("conflicts").is_empty());
    // The refused id was not recorded: sent again without the bad entry, it applies.
    let fixed = upload("up-bad", "north-inspections", vec![bad.entries[0].clone()]);
    let o = send(fx, "north-inspections", "dev1", "ana", &fixed).expect("integrate");
    assert!(!o.repeated, "a refused upload's id is not recorded");
    assert_eq!(o.applied, 1);
    assert_eq!(asset_name(fx, b), "must not be applied");

    // A write the task does not allow, and a user not assigned, refuse too.
    let d4 = download(fx, "north-inspections", "ana", "dev1");
    let mut delete = update_entry(
        "assets",
        Value::Integer(a),
        d4.cursor,
        "name",
        text("x"),
        text("y"),
    );
    delete.op = WriteOp::Delete;
    delete.new.clear();
    assert!(matches!(
        send(
            fx,
            "north-inspections",
            "dev1",
            "ana",
            &upload("up-del", "north-inspections", vec![delete])
        ),
        Err(IntegrateError::Forbidden(_))
    ));
    let mut stranger = update_entry(
        "assets",
        Value::Integer(a),
        d4.cursor,
        "name",
        text("office after"),
        text("chloe's"),
    );
    stranger.user = "chloe".into();
    assert!(matches!(
        send(
            fx,
            "north-inspections",
            "dev1",
            "ana",
            &upload("up-chloe", "north-inspections", vec![stranger])
        ),
        Err(IntegrateError::Forbidden(_))
    ));
    assert_eq!(asset_name(fx, a), "office after");
}

/// Check 6a: An office change committed after the download is a conflict for the device's
/// change based on that download (sequential: runs on every engine).
fn office_change_after_download_conflicts(fx: &Fixture) {
    setup(fx);
    put_assets_task(fx, "order-check", "server-wins");
    let ids = north_ids(fx);
    let (a, b) = (ids[0], ids[1]);
    let (old_a, old_b) = (asset_name(fx, a), asset_name(fx, b));
    let d = download(fx, "order-check", "ana", "dev1");
    fx.office()
        .exec(&format!("UPDATE assets SET name = 'office' WHERE id = {a}"));
    let up = upload(
        "up-seq",
        "order-check",
        vec![
            update_entry(
                "assets",
                Value::Integer(a),
                d.cursor,
                "name",
                text(&old_a),
                text("device"),
            ),
            update_entry(
                "assets",
                Value::Integer(b),
                d.cursor,
                "name",
                text(&old_b),
                text("device b"),
            ),
        ],
    );
    let out = send(fx, "order-check", "dev1", "ana", &up).expect("integrate");
    assert_eq!(
        (out.applied, out.conflicts),
        (1, 1),
        "row a conflicts (office changed it), row b applies"
    );
    assert_eq!(
        out.versions[0].version, None,
        "a conflicting row keeps its base"
    );
    assert!(out.versions[1].version.is_some());
    assert_eq!(
        asset_name(fx, a),
        "office",
        "server-wins keeps the office value"
    );
    assert_eq!(asset_name(fx, b), "device b");
    let conflicts = fx.store().conflicts_list().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let c = &conflicts[0];
    assert_eq!(c.table, "assets");
    assert!(c.key.same(&Value::Integer(a)));
    assert_eq!(
        (c.op.as_str(), c.kind.as_str(), c.policy.as_str()),
        ("update", "update-update", "server-wins")
    );
    assert_eq!(
        (c.device.as_str(), c.user.as_str(), c.task.as_str()),
        ("dev1", "ana", "order-check")
    );
    assert_eq!(c.device_values.get("name"), Some(&text("device")));
    assert_eq!(c.server_values.get("name"), Some(&text("office")));
    assert_eq!(c.base_version, Some(d.cursor));
    assert_eq!(c.resolved_at, None);
}

/// Check 6: Commit order (DESIGN.md invariant 5): an office transaction that wrote a row
/// before the download's snapshot and committed after it is "after" the cursor.
fn commit_order_open_transaction(fx: &Fixture) {
    setup(fx);
    put_assets_task(fx, "order-check", "server-wins");
    let a = north_ids(fx)[0];
    let old_a = asset_name(fx, a);

    let mut t = fx.office();
    t.exec(&format!(
        "BEGIN; UPDATE assets SET name = 'office in T' WHERE id = {a}"
    ));
    // The download runs while T is open (SQLite: WAL readers do not wait for writers).
    let d = download(fx, "order-check", "ana", "dev1");
    assert_eq!(
        d.cell("assets", &Value::Integer(a), "name"),
        Some(text(&old_a)),
        "an uncommitted change is not in the slice"
    );
    t.exec("COMMIT");
    drop(t);

    let up = upload(
        "up-order",
        "order-check",
        vec![update_entry(
            "assets",
            Value::Integer(a),
            d.cursor,
            "name",
            text(&old_a),
            text("device"),
        )],
    );
    let out = send(fx, "order-check", "dev1", "ana", &up).expect("integrate");
    assert_eq!(
        (out.applied, out.conflicts),
        (0, 1),
        "T committed after the device's snapshot: a conflict, not an overwrite"
    );
    assert_eq!(asset_name(fx, a), "office in T", "the office value stays");
    let conflicts = fx.store().conflicts_list().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "the conflict is logged: {conflicts:?}");
    assert_eq!(
        conflicts[0].device_values.get("name"),
        Some(&text("device"))
    );
    assert_eq!(
        conflicts[0].server_values.get("name"),
        Some(&text("office in T"))
    );

    let next = download(fx, "order-check", "ana", "dev1");
    assert_eq!(
        next.cell("assets", &Value::Integer(a), "name"),
        Some(text("office in T")),
        "the next download has T's change"
    );
}

/// Check 6 (PostgreSQL only: SQLite cannot have two writers at once). Transaction ids are
/// not commit-ordered: T1 writes row A first, T2 writes row B later and commits, the
/// download runs, then T1 commits. The cursor must not claim T1's change.
fn commit_order_interleaved_writers(fx: &Fixture) {
    setup(fx);
    put_assets_task(fx, "order-check", "server-wins");
    let ids = north_ids(fx);
    let (a, b) = (ids[0], ids[1]);
    let old_a = asset_name(fx, a);

    let mut t1 = fx.office();
    let mut t2 = fx.office();
    t1.exec(&format!(
        "BEGIN; UPDATE assets SET name = 'T1' WHERE id = {a}"
    ));
    t2.exec(&format!(
        "BEGIN; UPDATE assets SET name = 'T2' WHERE id = {b}; COMMIT"
    ));
    let d = download(fx, "order-check", "ana", "dev1");
    assert_eq!(
        d.cell("assets", &Value::Integer(b), "name"),
        Some(text("T2"))
    );
    assert_eq!(
        d.cell("assets", &Value::Integer(a), "name"),
        Some(text(&old_a))
    );
    t1.exec("COMMIT");

    let up = upload(
        "up-interleaved",
        "order-check",
        vec![
            update_entry(
                "assets",
                Value::Integer(a),
                d.cursor,
                "name",
                text(&old_a),
                text("device a"),
            ),
            update_entry(
                "assets",
                Value::Integer(b),
                d.cursor,
                "name",
                text("T2"),
                text("device b"),
            ),
        ],
    );
    let out = send(fx, "order-check", "dev1", "ana", &up).expect("integrate");
    assert_eq!(
        (out.applied, out.conflicts),
        (1, 1),
        "row a (T1, committed after the snapshot) conflicts; row b (T2, seen) applies"
    );
    assert_eq!(asset_name(fx, a), "T1");
    assert_eq!(asset_name(fx, b), "device b");
    let next = download(fx, "order-check", "ana", "dev1");
    assert_eq!(
        next.cell("assets", &Value::Integer(a), "name"),
        Some(text("T1"))
    );
}

/// Check 7: conflict_resolve applies the logged device or server values.
fn conflict_resolve_takes_logged_values(fx: &Fixture) {
    setup(fx);
    put_assets_task(fx, "sw", "server-wins");
    put_assets_task(fx, "dw", "device-wins");
    let ids = north_ids(fx);
    let (a, b) = (ids[0], ids[1]);
    let (old_a, old_b) = (asset_name(fx, a), asset_name(fx, b));

    // Server wins: the office value stays; take device applies the device's.
    let d = download(fx, "sw", "ana", "dev1");
    fx.office().exec(&format!(
        "UPDATE assets SET name = 'office a' WHERE id = {a}"
    ));
    let out = send(
        fx,
        "sw",
        "dev1",
        "ana",
        &upload(
            "up-sw",
            "sw",
            vec![update_entry(
                "assets",
                Value::Integer(a),
                d.cursor,
                "name",
                text(&old_a),
                text("device a"),
            )],
        ),
    )
    .expect("integrate");
    assert_eq!(out.conflicts, 1);
    assert_eq!(asset_name(fx, a), "office a");

    // Device wins: the device value is applied; take server restores the office's.
    let d = download(fx, "dw", "ana", "dev1");
    fx.office().exec(&format!(
        "UPDATE assets SET name = 'office b' WHERE id = {b}"
    ));
    let out = send(
        fx,
        "dw",
        "dev1",
        "ana",
        &upload(
            "up-dw",
            "dw",
            vec![update_entry(
                "assets",
                Value::Integer(b),
                d.cursor,
                "name",
                text(&old_b),
                text("device b"),
            )],
        ),
    )
    .expect("integrate");
    assert_eq!((out.applied, out.conflicts), (1, 1));
    assert_eq!(asset_name(fx, b), "device b");

    let conflicts = fx.store().conflicts_list().expect("conflicts");
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    let (ca, cb) = (&conflicts[0], &conflicts[1]);
    assert!(ca.key.same(&Value::Integer(a)) && cb.key.same(&Value::Integer(b)));
    assert_eq!(
        (cb.policy.as_str(), cb.resolution.as_str()),
        ("device-wins", "device-applied")
    );
    assert_eq!(cb.server_values.get("name"), Some(&text("office b")));

    let version_a = fx
        .store()
        .row_version("assets", &Value::Integer(a))
        .expect("row_version");
    let at = now();
    let r = fx
        .store()
        .conflict_resolve(ca.id, true, at)
        .expect("take device");
    assert_eq!(r.resolved_take.as_deref(), Some("device"));
    assert_eq!(r.resolved_at, Some(at));
    assert_eq!(
        asset_name(fx, a),
        "device a",
        "take device applies its values"
    );
    assert_ne!(
        fx.store()
            .row_version("assets", &Value::Integer(a))
            .expect("row_version"),
        version_a,
        "a resolution is a tracked write (devices get it)"
    );
    let next = download(fx, "sw", "ana", "dev1");
    assert_eq!(
        next.cell("assets", &Value::Integer(a), "name"),
        Some(text("device a"))
    );

    fx.store()
        .conflict_resolve(cb.id, false, now())
        .expect("take server");
    assert_eq!(
        asset_name(fx, b),
        "office b",
        "take server applies its values"
    );

    let listed = fx.store().conflicts_list().expect("conflicts");
    assert_eq!(listed[0].resolved_take.as_deref(), Some("device"));
    assert_eq!(listed[1].resolved_take.as_deref(), Some("server"));
    assert!(listed.iter().all(|c| c.resolved_at.is_some()));
    assert!(
        matches!(
            fx.store().conflict_resolve(ca.id, false, now()),
            Err(StoreError::Invalid(_))
        ),
        "a conflict is resolved once"
    );
    assert_eq!(
        asset_name(fx, a),
        "device a",
        "a refused resolution changes nothing"
    );
    assert!(matches!(
        fx.store().conflict_resolve(9_999, true, now()),
        Err(StoreError::NotFound(_))
    ));
}

/// A sink that holds its stream's transaction (and connection) open a while.
struct Slow(Collect);

impl SliceSink for Slow {
    fn begin(
        &mut self,
        cursor: Cursor,
        rows_per_table: &[u64],
        refused_delta: Option<FullReason>,
    ) -> fieldsync_store::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(600));
        self.0.begin(cursor, rows_per_table, refused_delta)
    }

    fn row(
        &mut self,
        table_idx: usize,
        values: &mut dyn Iterator<Item = ValueRef<'_>>,
    ) -> fieldsync_store::Result<()> {
        self.0.row(table_idx, values)
    }
}

/// PostgreSQL: one store opens at most 32 connections; requests beyond wait for one
/// and then succeed (40 slow downloads at once: two waves).
fn connections_are_bounded(fx: &Fixture) {
    setup(fx);
    let s = fx.store();
    let plan = plan_of(s, "north-inspections", "ana", "dev1");
    let Office::Pg(mut monitor) = fx.office() else {
        panic!("a PostgreSQL fixture")
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = std::time::Instant::now();
    let mut most = 0i64;
    std::thread::scope(|scope| {
        let streams: Vec<_> = (0..40)
            .map(|_| {
                let plan = &plan;
                scope.spawn(move || s.stream_slice(plan, &mut Slow(Collect::default())))
            })
            .collect();
        let watcher = scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let n: i64 = monitor
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                           AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                most = most.max(n);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        for st in streams {
            let counts = st
                .join()
                .unwrap()
                .expect("every download gets a connection in time");
            assert!(counts.iter().sum::<u64>() > 0);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        watcher.join().unwrap();
    });
    assert!(most <= 32, "the store held {most} connections at once");
    assert!(
        most >= 16,
        "the downloads ran side by side ({most} connections)"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1200),
        "40 downloads of 600 ms on 32 connections take two waves: {:?}",
        started.elapsed()
    );
}

/// An upload finds the rows it locks, reads and writes by their keys. With
/// PostgreSQL's default costs, a batch of 500 updates (or 1,000 keys to lock) in a
/// table of some tens of thousands of rows was planned as a read of the whole table,
/// once per batch. Seen in the tables' own counters: while 1,500 updates are
/// integrated, the table's sequential scans do not move and its tracking rows are
/// read a few times each, not all of them once per window.
fn uploads_find_rows_by_key_not_by_scanning(fx: &Fixture) {
    fx.sample(20_000);
    // Stores of the test's own: their connections close, and so report their
    // statistics at once, when dropped (an idle backend may hold them for 10 s).
    let own = fieldsync_store::open(&fx.url).expect("a store");
    own.init().expect("init");
    own.track_table("assets").expect("track");
    own.user_add(&user("ana")).expect("user ana");
    own.device_add(&device("dev1", "code-1")).expect("device");
    task_apply(&*own, &assets_task("by-key", "server-wins")).expect("task");
    own.task_assign("by-key", &strings(&["ana"]), &strings(&["dev1"]))
        .expect("assign");
    let d = download_from(&*own, "by-key", "ana", "dev1");
    drop(own);
    let entries: Vec<UploadEntry> = fx
        .office()
        .rows("SELECT id, name FROM assets WHERE region = 'north' ORDER BY id LIMIT 1500")
        .into_iter()
        .map(|r| {
            update_entry(
                "assets",
                r[0].clone(),
                d.cursor,
                "name",
                r[1].clone(),
                text("by key"),
            )
        })
        .collect();
    assert_eq!(entries.len(), 1500, "the sample has enough north assets");
    let Office::Pg(mut office) = fx.office() else {
        panic!("a PostgreSQL fixture")
    };
    // The counters of `assets` (sequential scans, rows updated) and the tracking
    // rows read through an index.
    let mut counters = || -> (i64, i64, i64) {
        let r = office
            .query_one(
                "SELECT a.seq_scan, a.n_tup_upd, t.idx_tup_fetch
                 FROM pg_stat_user_tables a, pg_stat_user_tables t
                 WHERE a.relid = 'assets'::regclass AND t.relid = 'fieldsync.rows'::regclass",
                &[],
            )
            .expect("pg_stat_user_tables");
        (r.get(0), r.get(1), r.get(2))
    };
    let mut before = counters();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = counters();
        if now == before {
            break;
        }
        before = now;
    }
    let own = fieldsync_store::open(&fx.url).expect("a store");
    let up = upload("up-by-key", "by-key", entries);
    let out = send_to(&*own, "by-key", "dev1", "ana", &up).expect("integrate");
    drop(own);
    assert_eq!(out.applied, 1500);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let after = loop {
        let now = counters();
        if now.1 >= before.1 + 1500 || std::time::Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        after.1 >= before.1 + 1500,
        "the upload's updates reached the statistics: {before:?} then {after:?}"
    );
    assert_eq!(
        after.0, before.0,
        "sequential scans of `assets` during the upload (before, after: seq_scan, n_tup_upd, idx_tup_fetch)"
    );
    // Each entry's tracking row is read a few times (locked, read ahead, written by
    // the trigger), not all 20,000 of the table per window.
    assert!(
        after.2 - before.2 < 10 * 1500,
        "tracking rows read by the upload: {}",
        after.2 - before.2
    );
}

/// PostgreSQL tracking is judged by the triggers on the table itself: disabled,
/// replaced or renamed away, the table is untracked until `track_table` repairs it.
fn tracking_judged_by_the_table_triggers(fx: &Fixture) {
    setup(fx);
    let s = fx.store();
    let tracked = |t: &str| s.table_info(t).unwrap().expect("table").tracked;
    assert!(tracked("assets"));
    let mut office = fx.office();
    office.exec("ALTER TABLE assets DISABLE TRIGGER fieldsync_upd");
    assert!(!tracked("assets"), "a disabled trigger");
    assert!(s.track_table("assets").unwrap().tracked);
    assert!(tracked("assets"));
    office.exec("DROP TRIGGER fieldsync_truncate ON assets");
    assert!(!tracked("assets"), "a missing trigger");
    s.track_table("assets").unwrap();
    assert!(tracked("assets"));
    office.exec("ALTER TABLE work_orders RENAME TO jobs");
    assert!(!tracked("jobs"), "triggers recording under the old name");
    assert!(s.track_table("jobs").unwrap().tracked);
    assert!(tracked("jobs"));
    assert!(tracked("assets") && tracked("inspections"));
}

// ---------------------------------------------------------------------------------
// One #[test] per check and engine
// ---------------------------------------------------------------------------------

/// Times are TEXT columns holding `Timestamp`'s text: one written by hand (or by
/// another program) that is not a time fails the read with a database error naming
/// the column, never a panic; a well-formed one reads back as written.
fn malformed_stored_time_is_an_error(fx: &Fixture) {
    setup(fx);
    let (users, devices) = match fx.engine {
        Engine::Sqlite => ("fieldsync_users", "fieldsync_devices"),
        Engine::Postgres => ("fieldsync.users", "fieldsync.devices"),
    };
    let s = fx.store();
    let ana = s.user_get("ana").expect("user_get").expect("ana");
    assert_eq!(
        ana.created_at.to_string().parse::<Timestamp>(),
        Ok(ana.created_at)
    );
    let mut office = fx.office();
    office.exec(&format!(
        "UPDATE {users} SET created_at = 'yesterday' WHERE name = 'ana'"
    ));
    office.exec(&format!(
        "UPDATE {devices} SET paired_at = '2026-13-01T00:00:00Z' WHERE id = 'dev1'"
    ));
    let named = |what: &str, r: Result<(), StoreError>, column: &str| match r {
        Err(StoreError::Db(m)) => assert!(m.contains(&format!("`{column}`")), "{what}: {m}"),
        other => panic!("{what}: a database error naming `{column}` expected, got {other:?}"),
    };
    named("user_get", s.user_get("ana").map(drop), "created_at");
    named("user_list", s.user_list().map(drop), "created_at");
    named("device_get", s.device_get("dev1").map(drop), "paired_at");
    named("device_list", s.device_list().map(drop), "paired_at");
    assert!(s.user_get("ben").expect("ben reads").is_some());
}

/// Auto-sync tickets: `tickets::tickets_issue_renew_redeem`.
#[path = "conformance/tickets.rs"]
mod tickets;
use tickets::tickets_issue_renew_redeem;

/// Integer key blocks: `keys::key_blocks_reserved_topped_up_and_void_when_revoked`.
#[path = "conformance/keys.rs"]
mod keys;
use keys::key_blocks_reserved_topped_up_and_void_when_revoked;
/// Files attached to rows: `files::files_attach_list_detach_and_slice`.
#[path = "conformance/files.rs"]
mod files;
use files::files_attach_list_detach_and_slice;
/// The audit log: `audit::audit_newest_first_and_bounded`.
#[path = "conformance/audit.rs"]
mod audit;
use audit::audit_newest_first_and_bounded;

/// A slice filtered by `column = value` is read through an index on the column, as
/// the operations guides tell administrators to make it (SQLite: on the column;
/// PostgreSQL: on the column `COLLATE "C"`, the collation filters compare text in):
/// a crew's region of a big table is a search, not a scan. PostgreSQL's planner is
/// told not to scan (its tables here are small), so an index it cannot use shows.
fn equality_filters_use_an_index(fx: &Fixture) {
    setup(fx);
    put_assets_task(fx, "by-region", "server-wins");
    let s = fx.store();
    let plan = plan_of(s, "by-region", "ana", "dev1");
    let assets = &plan.tables[0];
    let texts: Vec<String> = assets
        .binds
        .iter()
        .map(|v| match v {
            Value::Text(t) => t.clone(),
            other => panic!("a text bind, not {other:?}"),
        })
        .collect();
    let explain = format!("EXPLAIN QUERY PLAN {}", assets.select_sql);
    let steps: Vec<String> = match fx.office() {
        Office::Sqlite(c) => {
            c.execute_batch("CREATE INDEX assets_by_region ON assets (region)")
                .unwrap();
            let mut stmt = c.prepare(&explain).unwrap();
            stmt.query_map(rusqlite::params_from_iter(texts.iter()), |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        }
        Office::Pg(mut c) => {
            c.batch_execute(
                "CREATE INDEX assets_by_region ON assets (region COLLATE \"C\");
                 ANALYZE assets; SET enable_seqscan = off;",
            )
            .unwrap();
            let refs: Vec<&(dyn ::postgres::types::ToSql + Sync)> =
                texts.iter().map(|t| t as _).collect();
            let explain = explain.replacen("EXPLAIN QUERY PLAN", "EXPLAIN", 1);
            c.query(&explain, &refs)
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        }
    };
    assert!(
        steps.iter().any(|s| s.contains("assets_by_region")),
        "{}: {steps:?}",
        assets.select_sql
    );
}

macro_rules! conformance {
    (both: [$($check:ident),* $(,)?], postgres_only: [$($pg:ident),* $(,)?] $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $check() {
                    super::$check(&super::Fixture::sqlite());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $check() {
                    super::$check(&super::Fixture::postgres());
                }
            )*
            $(
                #[test]
                fn $pg() {
                    super::$pg(&super::Fixture::postgres());
                }
            )*
        }
    };
}

conformance! {
    both: [
        equality_filters_use_an_index,
        init_idempotent_and_required,
        table_info_and_tracking,
        users_devices_tasks_sessions,
        tasks_assigned_to_user_and_device,
        forbidden_upload_refused_before_any_lock,
        stream_slice_matches_sql,
        integrate_applies_once_and_refuses_whole,
        office_change_after_download_conflicts,
        commit_order_open_transaction,
        conflict_resolve_takes_logged_values,
        malformed_stored_time_is_an_error,
        tickets_issue_renew_redeem,
        key_blocks_reserved_topped_up_and_void_when_revoked,
        files_attach_list_detach_and_slice,
        audit_newest_first_and_bounded,
        inserts_in_runs_keep_versions_reads_and_refusals,
    ],
    postgres_only: [
        upload_gives_up_on_a_row_the_office_holds,
        unsupported_types_refused,
        commit_order_interleaved_writers,
        connections_are_bounded,
        times_and_numerics_travel_canonically,
        tracking_judged_by_the_table_triggers,
        uploads_find_rows_by_key_not_by_scanning,
    ],
}

#[test]
fn test_database_url_keeps_the_rest_of_the_base() {
    assert_eq!(
        with_db("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_db("postgres://u:p@h:1/test?sslmode=disable", "x"),
        "postgres://u:p@h:1/x?sslmode=disable"
    );
    assert_eq!(with_db("postgresql://h", "x"), "postgresql://h/x");
}
