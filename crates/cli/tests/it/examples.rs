//! The task files in `examples/` (documented in docs/tasks.md): each applies to the
//! example schema, downloads the slice it promises, and takes the writes it allows.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::harness::*;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A main database made from `examples/schema.sql`, set up as docs/tasks.md says.
struct ExampleOffice {
    _dir: TempDir,
    db_path: PathBuf,
    db_url: String,
    server: Server,
}

impl ExampleOffice {
    fn new() -> ExampleOffice {
        let dir = TempDir::new("examples");
        let db_path = dir.0.join("main.sqlite");
        let schema = std::fs::read_to_string(examples().join("schema.sql")).unwrap();
        Connection::open(&db_path)
            .unwrap()
            .execute_batch(&schema)
            .unwrap();
        let db_url = format!("sqlite:{}", db_path.display());
        let admin = |args: &[&str], stdin: &str| {
            let mut full = vec!["admin"];
            full.extend_from_slice(args);
            full.extend_from_slice(&["--db", &db_url]);
            fieldsync(&full, stdin).ok()
        };
        fieldsync(&["server", "init", "--db", &db_url], "").ok();
        for t in ["categories", "assets", "inspections", "work_orders"] {
            admin(&["table", "track", t], "");
        }
        for user in ["ana", "ben"] {
            admin(
                &["user", "add", user, "--password-stdin"],
                &format!("{user}-pw\n"),
            );
        }
        let mut applied = vec![];
        for entry in std::fs::read_dir(examples()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let out = admin(&["task", "apply", path.to_str().unwrap()], "");
                applied.push(out.stdout);
            }
        }
        assert_eq!(applied.len(), 3, "every example applies: {applied:?}");
        for task in ["north-inspections", "my-work-orders", "categories"] {
            admin(
                &["task", "assign", task, "--user", "ana", "--user", "ben"],
                "",
            );
        }
        let server = Server::start(&db_url);
        ExampleOffice {
            _dir: dir,
            db_path,
            db_url,
            server,
        }
    }

    fn device(&self, id: &str) -> DeviceDir {
        let admin = |args: &[&str]| {
            let mut full = vec!["admin"];
            full.extend_from_slice(args);
            full.extend_from_slice(&["--db", &self.db_url]);
            fieldsync(&full, "").ok()
        };
        let code = admin(&["device", "add", id]).stdout.trim().to_string();
        for task in ["north-inspections", "my-work-orders", "categories"] {
            admin(&["task", "assign", task, "--device", id]);
        }
        let dev = DeviceDir {
            dir: TempDir::new(id),
        };
        let server = &self.server.url;
        dev.run(
            &[
                "pair",
                "--server",
                server,
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

    fn main_value(&self, sql: &str) -> String {
        Connection::open(&self.db_path)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }
}

/// The keys of `table` in the replica, in order.
fn keys(dev: &DeviceDir, table: &str) -> Vec<String> {
    dev.replica()
        .prepare(&format!(
            "SELECT CAST({} AS TEXT) FROM {table} ORDER BY 1",
            key_of(table)
        ))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn key_of(table: &str) -> &'static str {
    if table == "categories" { "code" } else { "id" }
}

fn columns(dev: &DeviceDir, table: &str) -> Vec<String> {
    dev.replica()
        .prepare(&format!(
            "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
        ))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn the_example_tasks_apply_download_their_slices_and_take_their_writes() {
    let office = ExampleOffice::new();
    let dev = office.device("tab1");
    dev.login("ana").ok();

    // A region's assets in service and ana's inspections of them.
    dev.run(&["download", "north-inspections"], "").ok();
    assert_eq!(keys(&dev, "assets"), ["1", "2", "4"]);
    assert_eq!(
        keys(&dev, "inspections"),
        ["i-1"],
        "own, of assets in the slice"
    );
    assert!(!columns(&dev, "assets").contains(&"purchase_price".to_string()));
    dev.replica()
        .execute(
            "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result) \
             VALUES ('i-new', 4, 'ana', '2026-12-03T09:00:00.000Z', 'ok')",
            [],
        )
        .unwrap();
    let refused = dev
        .replica()
        .execute("DELETE FROM inspections WHERE id = 'i-1'", [])
        .unwrap_err();
    assert!(refused.to_string().contains("fieldsync:"), "{refused}");
    dev.run(&["send"], "").ok();
    assert_eq!(
        office.main_value("SELECT result FROM inspections WHERE id = 'i-new'"),
        "ok"
    );

    // ana's open work orders; the report goes back to the office.
    dev.run(&["download", "my-work-orders"], "").ok();
    assert_eq!(keys(&dev, "work_orders"), ["w-1", "w-2"]);
    assert_eq!(keys(&dev, "assets"), ["1", "2", "4", "5", "6"]);
    dev.replica()
        .execute(
            "UPDATE work_orders SET status = 'done', report = 'seal replaced' WHERE id = 'w-1'",
            [],
        )
        .unwrap();
    dev.run(&["sync"], "").ok();
    assert_eq!(
        office.main_value("SELECT status || ' ' || report FROM work_orders WHERE id = 'w-1'"),
        "done seal replaced"
    );
    assert_eq!(
        keys(&dev, "work_orders"),
        ["w-2"],
        "a done order leaves the slice"
    );

    // The reference table: every row, read-only.
    dev.run(&["download", "categories"], "").ok();
    assert_eq!(keys(&dev, "categories"), ["hydrant", "pump", "valve"]);
    assert!(
        dev.replica()
            .execute("UPDATE categories SET label = 'x'", [])
            .is_err()
    );

    // Another crew member's slice of the same task.
    dev.run(&["logout"], "").ok();
    dev.login("ben").ok();
    dev.run(&["download", "my-work-orders"], "").ok();
    assert_eq!(keys(&dev, "work_orders"), ["w-4"]);
}

/// `admin task show` reads as a person needs it: every table's rule in words, columns,
/// writes, policy, and who has the task.
#[test]
fn task_show_describes_each_table_for_a_person() {
    let office = ExampleOffice::new();
    let show = |task: &str| {
        fieldsync(&["admin", "task", "show", task, "--db", &office.db_url], "")
            .ok()
            .stdout
    };
    let north = show("north-inspections");
    let expected = "  table assets
    rows:     where region = 'north' AND status <> 'retired'
    columns:  id, name, category, status, region, x, y
    writes:   update
    conflict: field-merge
  table inspections
    rows:     those whose assets row (asset_id = its key) is in the slice, and where inspector = $user
    columns:  all
    writes:   insert, update
    conflict: field-merge
  users:    ana, ben
  devices:  none
";
    assert!(
        north.starts_with("task north-inspections (version "),
        "{north}"
    );
    assert!(north.ends_with(expected), "{north}");
    let categories = show("categories");
    assert!(
        categories.contains(
            "    rows:     all\n    columns:  all\n    writes:   none (read-only)\n  users:"
        ),
        "{categories}"
    );
    assert!(show("my-work-orders").contains("    conflict: server-wins\n"));
}
