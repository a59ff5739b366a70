//! The test harness: a main database in a temporary folder, the real `fieldsync`
//! binary, a real server on a loopback port, device folders.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rusqlite::Connection;

pub const BIN: &str = env!("CARGO_BIN_EXE_fieldsync");

pub use fieldsync_testkit::TempDir;

/// What a finished command printed, and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }
}

/// Runs `fieldsync ARGS` with `stdin` fed in.
pub fn fieldsync(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the fieldsync binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap().into()
}

/// A running `fieldsync server run`, killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

/// A server's `host:port`: its URL without the scheme, for raw sockets and proxies.
pub fn addr_of(url: &str) -> &str {
    url.strip_prefix("http://")
        .unwrap_or_else(|| panic!("not a plain HTTP URL: {url}"))
}

impl Server {
    /// Its `host:port`, for raw sockets and proxies.
    pub fn addr(&self) -> std::net::SocketAddr {
        addr_of(&self.url).parse().unwrap()
    }

    pub fn start(db_url: &str) -> Server {
        Server::start_by(Command::new(BIN), db_url)
    }

    /// `fieldsync server run` started by `program` (the binary itself, or a wrapper
    /// such as `faketime` whose arguments it already has).
    pub fn start_by(program: Command, db_url: &str) -> Server {
        Server::launch(program, db_url, &[], true)
    }

    /// `fieldsync server run` with more flags (limits, timeouts).
    pub fn start_with(db_url: &str, flags: &[&str]) -> Server {
        Server::launch(Command::new(BIN), db_url, flags, true)
    }

    /// `fieldsync server run` with `flags`, its stderr (the request log) into `log`.
    pub fn start_logged(db_url: &str, flags: &[&str], log: &Path) -> Server {
        let file = std::fs::File::create(log).unwrap();
        let mut program = Command::new(BIN);
        program.stderr(file);
        Server::launch(program, db_url, flags, false)
    }

    /// Starts the server; with `quiet`, its stderr is passed on without the request
    /// log's and the audit log's lines (one per request: they would bury a failing test's message).
    fn launch(mut program: Command, db_url: &str, flags: &[&str], quiet: bool) -> Server {
        if program.get_program() != BIN {
            program.arg(BIN);
        }
        program
            .args(["server", "run", "--listen", "127.0.0.1:0", "--db", db_url])
            .args(flags)
            .stdout(Stdio::piped());
        if quiet {
            program.stderr(Stdio::piped());
        }
        let mut child = program.spawn().unwrap();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if !line.contains(" fieldsync::request: ")
                        && !line.contains(" fieldsync::sync: ")
                        && !line.contains(" fieldsync::audit: ")
                    {
                        eprintln!("{line}");
                    }
                }
            });
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("server said {line:?}"))
            .to_string();
        Server { child, url }
    }

    /// Peak resident memory of the server so far, in kB (from /proc).
    pub fn peak_rss_kb(&self) -> u64 {
        peak_rss_kb(self.child.id()).expect("server is running")
    }

    /// Sets the server's peak RSS back to its RSS now (`/proc/PID/clear_refs`), so
    /// that the next peak is of what follows.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
    }

    /// Resident memory of the server now, in kB (from /proc).
    pub fn rss_kb(&self) -> u64 {
        proc_status_kb(self.child.id(), "VmRSS:").expect("server is running")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmHWM:")
}

/// A kB figure of /proc/PID/status, by its field name (with the colon).
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub use fieldsync_testkit::PgDb;

/// The main database's engine in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

thread_local! {
    /// The engine `Office::new` uses on this test's thread.
    static ENGINE: std::cell::Cell<Engine> = const { std::cell::Cell::new(Engine::Sqlite) };
}

/// Runs a test with `Office::new` on `engine`: one test body, both engines.
pub fn on_engine(engine: Engine, test: fn()) {
    ENGINE.with(|e| e.set(engine));
    test();
}

/// Generates a `postgres` module re-running the named tests of the enclosing module
/// with a PostgreSQL main database.
#[macro_export]
macro_rules! also_on_postgres {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[test]
                fn $test() {
                    $crate::harness::on_engine($crate::harness::Engine::Postgres, super::$test);
                }
            )*
        }
    };
}

/// A main database with the sample tables, tracked, two users and tasks; a server.
pub struct Office {
    pub dir: TempDir,
    pub db_path: PathBuf,
    pub db_url: String,
    pub server: Server,
    /// The PostgreSQL database, when the engine is PostgreSQL (declared after the
    /// server so the server stops first).
    pub pg: Option<PgDb>,
}

pub const NORTH: &str = fieldsync_store::sample::TASK_NORTH;
pub const SOUTH: &str = fieldsync_store::sample::TASK_SOUTH;

impl Office {
    /// Sample data with `n_assets` assets; users ana, ben; tasks north-inspections
    /// (ana) and south-work-orders (ben), assigned to devices as the test says.
    /// On the test's engine (SQLite unless run through [`on_engine`]).
    pub fn new(n_assets: i64) -> Office {
        Office::on(ENGINE.with(|e| e.get()), n_assets)
    }

    /// The same office on a fresh PostgreSQL database.
    pub fn new_pg(n_assets: i64) -> Office {
        Office::on(Engine::Postgres, n_assets)
    }

    pub fn on(engine: Engine, n_assets: i64) -> Office {
        let dir = TempDir::new("office");
        let db_path = dir.0.join("main.sqlite");
        let (db_url, pg) = match engine {
            Engine::Sqlite => {
                let mut conn = Connection::open(&db_path).unwrap();
                fieldsync_store::sample::create(&mut conn, n_assets).unwrap();
                (format!("sqlite:{}", db_path.display()), None)
            }
            Engine::Postgres => {
                let db = PgDb::new();
                fieldsync_store::sample::create_pg(&mut db.client(), n_assets).unwrap();
                (db.url.clone(), Some(db))
            }
        };
        let office_dir = dir.0.clone();
        let admin = |args: &[&str], stdin: &str| {
            let mut full = vec!["admin"];
            full.extend_from_slice(args);
            full.extend_from_slice(&["--db", &db_url]);
            fieldsync(&full, stdin).ok()
        };
        fieldsync(&["server", "init", "--db", &db_url], "").ok();
        for t in ["assets", "inspections", "work_orders"] {
            admin(&["table", "track", t], "");
        }
        admin(&["user", "add", "ana", "--password-stdin"], "ana-pw\n");
        admin(&["user", "add", "ben", "--password-stdin"], "ben-pw\n");
        for (name, text) in [("north.toml", NORTH), ("south.toml", SOUTH)] {
            let path = office_dir.join(name);
            std::fs::write(&path, text).unwrap();
            admin(&["task", "apply", path.to_str().unwrap()], "");
        }
        admin(
            &["task", "assign", "north-inspections", "--user", "ana"],
            "",
        );
        admin(
            &["task", "assign", "south-work-orders", "--user", "ben"],
            "",
        );
        let server = Server::start(&db_url);
        Office {
            dir,
            db_path,
            db_url,
            server,
            pg,
        }
    }

    pub fn engine(&self) -> Engine {
        if self.pg.is_some() {
            Engine::Postgres
        } else {
            Engine::Sqlite
        }
    }

    /// Runs SQL statements on the main database, as another program of the office.
    pub fn execute_batch(&self, sql: &str) {
        match &self.pg {
            Some(db) => db.client().batch_execute(sql).unwrap(),
            None => self.sql().execute_batch(sql).unwrap(),
        }
    }

    /// Rows of a query on the main database in [`rows`]'s form, whatever the engine.
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        match &self.pg {
            Some(db) => pg_rows(&mut db.client(), sql),
            None => rows(&self.sql(), sql),
        }
    }

    /// The first column of the first row of a query on the main database, as text.
    pub fn value(&self, sql: &str) -> String {
        let rows = self.rows(sql);
        let cell = rows
            .first()
            .and_then(|r| r.first())
            .unwrap_or_else(|| panic!("no row from {sql}"));
        cell.get(1..).unwrap_or_default().to_string()
    }

    /// The uploads the main database recorded (each integrated upload once, with its
    /// outcome).
    pub fn uploads_recorded(&self) -> u64 {
        self.value(&format!(
            "SELECT count(*) FROM {}",
            self.own_table("uploads")
        ))
        .parse()
        .unwrap()
    }

    /// fieldsync's own table `name` (`fieldsync_NAME` on SQLite, `fieldsync.NAME` on
    /// PostgreSQL).
    pub fn own_table(&self, name: &str) -> String {
        match self.engine() {
            Engine::Sqlite => format!("fieldsync_{name}"),
            Engine::Postgres => format!("fieldsync.{name}"),
        }
    }

    /// A plain PostgreSQL connection to the main database (PostgreSQL offices only).
    pub fn pg(&self) -> postgres::Client {
        self.pg.as_ref().expect("a PostgreSQL office").client()
    }

    /// Applies task file `toml` (saved as `file` in the office's folder) as the
    /// administrator does, and assigns task `task` to `user`.
    pub fn apply_task(&self, file: &str, toml: &str, task: &str, user: &str) {
        let path = self.dir.0.join(file);
        std::fs::write(&path, toml).unwrap();
        self.admin(&["task", "apply", path.to_str().unwrap()], "")
            .ok();
        self.admin(&["task", "assign", task, "--user", user], "")
            .ok();
    }

    pub fn admin(&self, args: &[&str], stdin: &str) -> Run {
        let mut full = vec!["admin"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--db", &self.db_url]);
        fieldsync(&full, stdin)
    }

    /// A plain SQL connection, as another program of the office would have.
    pub fn sql(&self) -> Connection {
        let c = Connection::open(&self.db_path).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c
    }

    /// Registers a device, assigns it to `tasks` and pairs a new device folder.
    pub fn device(&self, id: &str, tasks: &[&str]) -> DeviceDir {
        let code = self
            .admin(&["device", "add", id], "")
            .ok()
            .stdout
            .trim()
            .to_string();
        for t in tasks {
            self.admin(&["task", "assign", t, "--device", id], "").ok();
        }
        let dir = TempDir::new(id);
        let dev = DeviceDir { dir };
        dev.run(
            &[
                "pair",
                "--server",
                &self.server.url,
                "--device-id",
                id,
                "--code",
                &code,
            ],
            "",
        )
        .ok();
        dev
    }
}

pub struct DeviceDir {
    pub dir: TempDir,
}

impl DeviceDir {
    pub fn path(&self) -> &Path {
        &self.dir.0
    }

    pub fn run(&self, args: &[&str], stdin: &str) -> Run {
        let mut full = vec!["device"];
        full.extend_from_slice(args);
        let dir = self.dir.0.to_str().unwrap().to_string();
        full.extend_from_slice(&["--dir", &dir]);
        fieldsync(&full, stdin)
    }

    /// Adds `device ARGS --dir FOLDER`, the environment `env` and no input to `cmd`
    /// (`fieldsync`, or a program that runs it).
    fn device_command<'c>(
        &self,
        cmd: &'c mut Command,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> &'c mut Command {
        cmd.arg("device")
            .args(args)
            .arg("--dir")
            .arg(self.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
    }

    /// Runs `fieldsync device ARGS` with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.device_command(&mut Command::new(BIN), args, env)
            .output()
            .unwrap()
            .into()
    }

    /// Runs `fieldsync device ARGS` with extra environment variables, measuring its
    /// peak resident memory in kB (the kernel's maximum RSS of the waited-for child,
    /// through Python's `resource`).
    pub fn run_measured(&self, args: &[&str], env: &[(&str, &str)]) -> (Run, u64) {
        let rss_file = self.path().join("maxrss.txt");
        let mut python = Command::new("python3");
        python
            .arg("-c")
            .arg(
                "import resource, subprocess, sys\n\
                 rc = subprocess.call(sys.argv[2:])\n\
                 open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n\
                 sys.exit(rc)",
            )
            .arg(&rss_file)
            .arg(BIN);
        let out = self
            .device_command(&mut python, args, env)
            .output()
            .unwrap();
        let kb = std::fs::read_to_string(&rss_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (out.into(), kb)
    }

    pub fn login(&self, user: &str) -> Run {
        self.run(
            &["login", user, "--password-stdin"],
            &format!("{user}-pw\n"),
        )
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.run(&["status", "--json"], "").ok().stdout).unwrap()
    }

    /// Points the paired device at another server address (a restarted server, a
    /// proxy, a second server behind a load balancer): `server` in its state file.
    pub fn use_server(&self, url: &str) {
        let path = self.dir.0.join("state.json");
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state["server"] = url.into();
        std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    }

    pub fn replica_path(&self) -> PathBuf {
        self.dir.0.join("replica.sqlite")
    }

    pub fn replica(&self) -> Connection {
        Connection::open(self.replica_path()).unwrap()
    }
}

/// Every row of `table` (all columns, ordered by the first), as text, for comparisons.
/// Rows of a PostgreSQL query in the form [`rows`] gives SQLite's.
pub fn pg_rows(c: &mut postgres::Client, sql: &str) -> Vec<Vec<String>> {
    use postgres::types::Type;
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    let ty = r.columns()[i].type_().clone();
                    let cell = match ty {
                        Type::INT8 => r.get::<_, Option<i64>>(i).map(|v| format!("i{v}")),
                        Type::INT4 => r.get::<_, Option<i32>>(i).map(|v| format!("i{v}")),
                        Type::INT2 => r.get::<_, Option<i16>>(i).map(|v| format!("i{v}")),
                        Type::FLOAT8 => r.get::<_, Option<f64>>(i).map(|v| format!("r{v:?}")),
                        Type::BYTEA => r.get::<_, Option<Vec<u8>>>(i).map(|v| format!("b{v:?}")),
                        _ => r.get::<_, Option<String>>(i).map(|v| format!("t{v}")),
                    };
                    cell.unwrap_or_else(|| "NULL".to_string())
                })
                .collect()
        })
        .collect()
}

pub fn rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let width = stmt.column_count();
    stmt.query_map([], |r| {
        (0..width)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                    rusqlite::types::ValueRef::Integer(v) => format!("i{v}"),
                    rusqlite::types::ValueRef::Real(v) => format!("r{v:?}"),
                    rusqlite::types::ValueRef::Text(t) => {
                        format!("t{}", String::from_utf8_lossy(t))
                    }
                    rusqlite::types::ValueRef::Blob(b) => format!("b{b:?}"),
                })
            })
            .collect()
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// The whole content of a replica's data tables (fingerprint for "unchanged").
pub fn replica_content(dev: &DeviceDir) -> Vec<Vec<String>> {
    if !dev.replica_path().exists() {
        return vec![];
    }
    let c = dev.replica();
    let mut all = rows(&c, "SELECT * FROM assets ORDER BY id");
    for t in ["inspections", "work_orders"] {
        let exists: bool = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
                [t],
                |r| r.get(0),
            )
            .unwrap();
        if exists {
            all.extend(rows(&c, &format!("SELECT * FROM {t} ORDER BY id")));
        }
    }
    all
}

pub fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// The main database's conflict log (`admin conflicts list --json`).
pub fn conflicts(office: &Office) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(
        &office
            .admin(&["conflicts", "list", "--json"], "")
            .ok()
            .stdout,
    )
    .unwrap()
    .as_array()
    .unwrap()
    .clone()
}
