//! The PostgreSQL server of the tests, and a fresh database per test.
//!
//! Which server: `FIELDSYNC_TEST_PG` when set (`private` asks for the private cluster) (a test fails, never skips, when it
//! cannot be reached); else the local one at 127.0.0.1:5432 when it answers; else a
//! private throwaway cluster, started once for the whole run from the machine's
//! PostgreSQL programs (`initdb`, `pg_ctl`: Debian's `postgresql` package) in a
//! temporary folder on a free port. Every test process of the run finds it through
//! a file beside it (under a file lock, so only one starts it), and it stops by itself
//! and removes its folder once no test has asked for it for five minutes.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable naming the tests' PostgreSQL server.
pub const URL_VAR: &str = "FIELDSYNC_TEST_PG";
/// The machine's own server, used when it answers and nothing else is named.
pub const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long the private cluster outlives the last test that asked for it.
const PRIVATE_IDLE_SECS: u64 = 300;

/// The URL of the server the tests use (see the module's documentation): a role that
/// may create databases, connected to an existing database.
pub fn base_url() -> String {
    static URL: OnceLock<(String, bool)> = OnceLock::new();
    let (url, private) = URL.get_or_init(|| {
        match std::env::var(URL_VAR) {
            Ok(url) if url == "private" => return (private_cluster(), true),
            Ok(url) => return (url, false),
            Err(_) => {}
        }
        let local: SocketAddr = "127.0.0.1:5432".parse().expect("an address");
        if TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
            return (LOCAL_URL.to_string(), false);
        }
        (private_cluster(), true)
    });
    if *private {
        touch_heartbeat();
    }
    url.clone()
}

/// Connects to `url`, or fails naming the server and how to point the tests elsewhere.
pub fn connect(url: &str) -> postgres::Client {
    let mut config: postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("{URL_VAR}: `{url}` is not a PostgreSQL URL: {e}"));
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.connect(postgres::NoTls).unwrap_or_else(|e| {
        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(" ({c})"));
        panic!(
            "cannot reach PostgreSQL at `{url}`: {e}{cause}; start it, or set {URL_VAR} to a \
             reachable server (postgres://USER@HOST:PORT/DB, a role that may CREATE DATABASE)"
        )
    })
}

/// `url` with another database name (the path after the authority), its query kept.
pub fn with_db(url: &str, db: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let base = match without_query[scheme_end..].find('/') {
        Some(i) => &without_query[..scheme_end + i],
        None => without_query,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A fresh PostgreSQL database for one test, dropped (connections and all) on drop.
pub struct PgDb {
    pub url: String,
    pub name: String,
}

impl PgDb {
    /// A new empty database named `fs_<tag>_<pid>_<n>_<random>`.
    pub fn new_tagged(tag: &str) -> PgDb {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = base_url();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!(
            "fs_{tag}_{}_{n}_{}",
            std::process::id(),
            fieldsync_store::random_hex(3)
        );
        connect(&base)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("`{base}`: CREATE DATABASE {name} failed: {e}"));
        PgDb {
            url: with_db(&base, &name),
            name,
        }
    }

    pub fn new() -> PgDb {
        PgDb::new_tagged("it")
    }

    /// A plain connection, as another program of the office would have.
    pub fn client(&self) -> postgres::Client {
        connect(&self.url)
    }
}

impl Default for PgDb {
    fn default() -> PgDb {
        PgDb::new()
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let base = base_url();
        if let Ok(mut admin) = postgres::Client::connect(&base, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The private cluster

/// The private cluster's folder: one per OS user, so parallel test processes share it.
fn private_root() -> PathBuf {
    let uid = fs::metadata("/proc/self").map_or(0, |m| m.uid());
    std::env::temp_dir().join(format!("fieldsync-test-pg-{uid}"))
}

fn touch_heartbeat() {
    let _ = File::create(private_root().join("heartbeat"));
}

/// Starts the private cluster unless a live one is already there; returns its URL.
fn private_cluster() -> String {
    let root = private_root();
    fs::create_dir_all(&root).expect("creating the private PostgreSQL folder");
    let lock = File::create(root.join("lock")).expect("creating the private cluster's lock");
    lock.lock().expect("locking the private cluster's folder");
    touch_heartbeat();
    if let Ok(url) = fs::read_to_string(root.join("url")) {
        let url = url.trim().to_string();
        if postgres::Client::connect(&url, postgres::NoTls).is_ok() {
            return url;
        }
    }
    let bin = postgres_bindir().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server is named ({URL_VAR}) or answers at 127.0.0.1:5432, and no \
             PostgreSQL server programs (initdb, pg_ctl) are installed to start a private one: \
             install Debian's `postgresql` package, start a server, or set {URL_VAR}"
        )
    });
    let data = root.join("data");
    let _ = fs::remove_dir_all(&data);
    let _ = fs::remove_file(root.join("url"));
    // PostgreSQL refuses to run as root: then its own OS user runs it.
    let run_as = if fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        let (uid, gid) = os_user("postgres").unwrap_or_else(|| {
            panic!("running as root, and no `postgres` OS user exists to run a private cluster")
        });
        std::os::unix::fs::chown(&root, Some(uid), Some(gid))
            .expect("handing the private folder to the postgres user");
        Some("postgres")
    } else {
        None
    };
    run(
        run_as,
        &bin.join("initdb"),
        &[
            "-D",
            path(&data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port();
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
        path(&root)
    );
    run(
        run_as,
        &bin.join("pg_ctl"),
        &[
            "-D",
            path(&data),
            "-l",
            path(&root.join("log")),
            "-w",
            "-t",
            "60",
            "-o",
            &options,
            "start",
        ],
    );
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    connect(&admin_url)
        .batch_execute("CREATE DATABASE test")
        .expect("creating the private cluster's test database");
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    fs::write(root.join("url"), &url).expect("recording the private cluster's URL");
    spawn_reaper(run_as, &bin, &root, &data);
    url
}

/// Stops the cluster and removes its folder once the heartbeat is older than
/// `PRIVATE_IDLE_SECS`: a detached shell, so no test process waits for it.
fn spawn_reaper(run_as: Option<&str>, bin: &Path, root: &Path, data: &Path) {
    let stop = match run_as {
        Some(user) => format!(
            "runuser -u {user} -- {} -D {} -m fast stop",
            path(&bin.join("pg_ctl")),
            path(data)
        ),
        None => format!(
            "{} -D {} -m fast stop",
            path(&bin.join("pg_ctl")),
            path(data)
        ),
    };
    let script = format!(
        "hb={root}/heartbeat; \
         while [ -e \"$hb\" ] && [ $(( $(date +%s) - $(stat -c %Y \"$hb\") )) -lt {PRIVATE_IDLE_SECS} ]; \
         do sleep 10; done; {stop} >/dev/null 2>&1; rm -rf {root}",
        root = path(root),
    );
    // `setsid -f` forks the shell into a session of its own and returns at once.
    Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("starting the private cluster's reaper");
}

fn run(run_as: Option<&str>, program: &Path, args: &[&str]) {
    let mut command = match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    };
    let out = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where `initdb` and `pg_ctl` are: on the PATH, or Debian's newest
/// `/usr/lib/postgresql/<version>/bin`.
fn postgres_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The uid and gid of an OS user, from /etc/passwd.
fn os_user(name: &str) -> Option<(u32, u32)> {
    fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name) && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::with_db;

    /// Starts (or finds) the private cluster of this run, whatever else answers.
    #[test]
    fn a_private_cluster_starts_and_serves_a_new_database() {
        let url = super::private_cluster();
        assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
        assert!(!url.contains(":5432/"), "a port of its own: {url}");
        let mut c = super::connect(&url);
        let name = format!("fs_kit_{}", fieldsync_store::random_hex(4));
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let mut db = super::connect(&with_db(&url, &name));
        let one: i32 = db.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
        drop(db);
        c.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .unwrap();
        // The second asks find the first's cluster.
        assert_eq!(super::private_cluster(), url);
    }

    #[test]
    fn with_db_keeps_the_rest_of_the_url() {
        assert_eq!(
            with_db("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_db("postgres://u:p@h:1/test?sslmode=disable", "y"),
            "postgres://u:p@h:1/y?sslmode=disable"
        );
    }
}
