//! Administration: tracking tables, task files; bad input changes nothing.

use crate::harness::*;

fn task_list(office: &Office) -> String {
    office.admin(&["task", "list", "--json"], "").ok().stdout
}

#[test]
fn malformed_task_files_are_refused_naming_the_problem() {
    let office = Office::new(20);
    let before = task_list(&office);
    let cases: &[(&str, &str)] = &[
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets\"\ncolumns = [\"id\", \"colour\"]\n",
            "no column `colour`",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets\"\nfilter = \"regoin = 'north'\"\n",
            "regoin",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = 5\"\n",
            "type",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = 'north'; DROP TABLE assets\"\n",
            "filter",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = 'x' -- comment\"\n",
            "filter",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets\"\nfilter = \"lower(region) = 'x'\"\n",
            "filter",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets\"\nwrite = [\"upsert\"]\n",
            "line 4",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets\"\nfliter = \"region = 'north'\"\n",
            "fliter",
        ),
        ("name = \"t1\"\n[[tables]\nname = \"assets\"\n", "line 2"),
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets; DROP TABLE inspections\"\n",
            "no such table",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"assets\"\nwrite = [\"insert\"]\n",
            "needs a source of keys",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"inspections\"\ncolumns = [\"id\", \"asset_id\"]\nwrite = [\"insert\"]\n",
            "NOT NULL column `inspector`",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"inspections\"\nparent = { table = \"assets\", key = \"asset_id\" }\n",
            "parent table `assets` is not in the task",
        ),
        (
            "name = \"bad name\"\n[[tables]]\nname = \"assets\"\n",
            "bad task name",
        ),
        (
            "name = \"t1\"\n[[tables]]\nname = \"fieldsync_users\"\n",
            // fieldsync's own table on SQLite; on PostgreSQL they are in their own
            // schema, out of the organisation's sight.
            match office.engine() {
                Engine::Sqlite => "not tracked",
                Engine::Postgres => "no such table",
            },
        ),
    ];
    for (i, (text, fragment)) in cases.iter().enumerate() {
        let path = office.dir.0.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let run = office.admin(&["task", "apply", path.to_str().unwrap()], "");
        assert_eq!(run.code, 1, "case {i}: {run:?}");
        assert!(run.stderr.starts_with("error: "), "case {i}: {run:?}");
        assert!(
            run.stderr.contains(fragment),
            "case {i}: expected {fragment:?} in {}",
            run.stderr
        );
    }
    assert_eq!(task_list(&office), before, "nothing changed");
    assert_eq!(office.value("SELECT count(*) FROM assets"), "20");
}

#[test]
fn table_track_checks_the_name_and_the_key() {
    let office = Office::new(5);
    office.execute_batch("CREATE TABLE notes (a TEXT, b TEXT); CREATE TABLE pairs (a INTEGER, b INTEGER, PRIMARY KEY (a, b));");
    let run = office.admin(&["table", "track", "notes"], "");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("single-column primary key"), "{run:?}");
    let run = office.admin(&["table", "track", "pairs"], "");
    assert!(run.stderr.contains("single-column primary key"), "{run:?}");
    let run = office.admin(&["table", "track", "assets; DROP TABLE inspections"], "");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no table"), "{run:?}");
    // fieldsync's own tables are not the organisation's: internal on SQLite, in
    // another schema (not found) on PostgreSQL.
    for own in ["fieldsync_users", "fieldsync.users"] {
        let run = office.admin(&["table", "track", own], "");
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr.contains("internal table") || run.stderr.contains("no table"),
            "{run:?}"
        );
    }
    assert_eq!(office.value("SELECT count(*) FROM inspections"), "10");
    // Idempotent.
    office.admin(&["table", "track", "assets"], "").ok();
    office.admin(&["table", "track", "assets"], "").ok();
    fieldsync(&["server", "init", "--db", &office.db_url], "").ok();
}

#[test]
fn every_write_by_any_program_gets_a_new_row_version() {
    let office = Office::new(5);
    // On PostgreSQL the version is the writing transaction's id: one statement after
    // another, each in its own transaction, gets a higher one.
    let sql = match office.engine() {
        Engine::Sqlite => {
            "SELECT version, deleted FROM fieldsync_rows WHERE tbl = 'assets' AND pk = "
        }
        Engine::Postgres => {
            "SELECT xid::text::int8, deleted::int::int8 FROM fieldsync.rows WHERE tbl = 'assets' AND pk = "
        }
    };
    let version = |id: i64| -> (i64, i64) {
        let quoted = match office.engine() {
            Engine::Sqlite => id.to_string(),
            Engine::Postgres => format!("'{id}'"),
        };
        let row = &office.rows(&format!("{sql}{quoted}"))[0];
        let int = |c: &String| c[1..].parse::<i64>().unwrap();
        (int(&row[0]), int(&row[1]))
    };
    let (v1, d1) = version(1);
    assert_eq!(d1, 0);
    office.execute_batch("UPDATE assets SET name = 'x' WHERE id = 1");
    let (v2, _) = version(1);
    assert!(v2 > v1);
    office.execute_batch("INSERT INTO assets (id, name, category, status, region) VALUES (77, 'n', 'pump', 'active', 'north')");
    let (v3, _) = version(77);
    assert!(v3 > v2);
    office.execute_batch("DELETE FROM assets WHERE id = 77");
    let (v4, d4) = version(77);
    assert!(v4 > v3);
    assert_eq!(d4, 1, "a delete leaves a tombstone");
    office.execute_batch("INSERT INTO assets (id, name, category, status, region) VALUES (80, 'n', 'pump', 'active', 'north')");
    office.execute_batch("UPDATE assets SET id = 81 WHERE id = 80");
    assert_eq!(version(80).1, 1, "a key change retires the old key");
    assert_eq!(version(81).1, 0);
}

#[test]
fn admin_commands_without_a_database_or_init_fail_clearly() {
    let dir = TempDir::new("noinit");
    let path = dir.0.join("empty.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    let url = format!("sqlite:{}", path.display());
    let run = fieldsync(&["admin", "table", "track", "t", "--db", &url], "");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("server init"), "{run:?}");
    let run = fieldsync(&["admin", "task", "list"], "");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--db"), "{run:?}");
    let run = fieldsync(&["admin", "task", "list", "--db", "mysql://x"], "");
    assert!(run.stderr.contains("unsupported database URL"), "{run:?}");
}

crate::also_on_postgres!(
    malformed_task_files_are_refused_naming_the_problem,
    table_track_checks_the_name_and_the_key,
    every_write_by_any_program_gets_a_new_row_version,
    the_device_list_shows_last_seen_holding_and_last_sync,
);

/// `admin history` filters: by device, user, task, result, start time, and the last N.
#[test]
fn admin_history_filters_by_device_user_task_result_time_and_count() {
    let office = Office::new(40);
    let north = office.device("tab1", &["north-inspections"]);
    north.login("ana").ok();
    north.run(&["download", "north-inspections"], "").ok();
    let south = office.device("tab2", &["south-work-orders"]);
    south.login("ben").ok();
    south.run(&["download", "south-work-orders"], "").ok();
    // Refused before any download starts (not assigned): not in the history.
    let refused = south.run(&["download", "north-inspections"], "");
    assert_ne!(refused.code, 0);

    let history = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut full = vec!["history", "--json"];
        full.extend_from_slice(args);
        serde_json::from_str(&office.admin(&full, "").ok().stdout).unwrap()
    };
    let all = history(&[]);
    assert!(all.len() >= 2, "{all:?}");
    let field = |rows: &[serde_json::Value], key: &str| -> Vec<String> {
        rows.iter()
            .map(|r| r[key].as_str().unwrap_or("-").to_string())
            .collect()
    };
    let tab2 = history(&["--device", "tab2"]);
    assert!(!tab2.is_empty());
    assert!(
        field(&tab2, "device").iter().all(|d| d == "tab2"),
        "{tab2:?}"
    );
    assert_eq!(field(&history(&["--user", "ana"]), "user"), ["ana"]);
    assert_eq!(
        field(&history(&["--task", "south-work-orders"]), "task"),
        ["south-work-orders"]
    );
    let ok = history(&["--result", "ok"]);
    assert!(field(&ok, "result").iter().all(|r| r == "ok"));
    assert_eq!(
        history(&["--result", "ok"]).len() + history(&["--result", "error"]).len(),
        all.len()
    );
    assert_eq!(history(&["--limit", "1"]), all[all.len() - 1..]);
    assert!(history(&["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert_eq!(history(&["--since", "2000-01-01T00:00:00Z"]), all);

    let bad = office.admin(&["history", "--since", "yesterday"], "");
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("not a UTC time"), "{bad:?}");
}

/// `admin device list` says when each device was last seen, with which user, what it
/// reported holding (task, unsent changes) and how its last sync went; `admin task
/// show` names the devices holding the task. On both engines.
#[test]
fn the_device_list_shows_last_seen_holding_and_last_sync() {
    let office = Office::new(40);
    let tab1 = office.device("tab1", &["north-inspections"]);
    office.device("tab2", &["north-inspections"]);
    let devices = || -> Vec<serde_json::Value> {
        let out = office.admin(&["device", "list", "--json"], "").ok().stdout;
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let never = devices();
    assert_eq!(never.len(), 2);
    assert!(
        never
            .iter()
            .all(|d| d["last_seen"].is_null() && d["last_sync"].is_null())
    );
    tab1.login("ana").ok();
    tab1.run(&["download", "north-inspections"], "").ok();
    tab1.replica()
        .execute_batch(
            "UPDATE assets SET name = 'one' WHERE id = (SELECT min(id) FROM assets);
             UPDATE assets SET name = 'two' WHERE id = (SELECT max(id) FROM assets);",
        )
        .unwrap();
    // A request after the edits reports them: the task list.
    tab1.run(&["tasks"], "").ok();
    let listed = devices();
    let d = listed.iter().find(|d| d["id"] == "tab1").unwrap();
    assert_eq!(d["user"], "ana", "{d:#}");
    assert_eq!(d["task"], "north-inspections", "{d:#}");
    assert_eq!(d["pending"], 2, "{d:#}");
    assert!(
        d["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{d:#}"
    );
    assert_eq!(d["last_sync"]["op"], "download", "{d:#}");
    assert_eq!(d["last_sync"]["result"], "ok", "{d:#}");
    let other = listed.iter().find(|d| d["id"] == "tab2").unwrap();
    assert!(other["last_seen"].is_null(), "{other:#}");
    // The send reports them before it sends; the next request reports none left.
    tab1.run(&["send"], "").ok();
    tab1.run(&["tasks"], "").ok();
    let d = devices().into_iter().find(|d| d["id"] == "tab1").unwrap();
    assert_eq!(d["pending"], 0, "{d:#}");
    assert_eq!(d["last_sync"]["op"], "send", "{d:#}");
    let text = office.admin(&["device", "list"], "").ok().stdout;
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.starts_with("DEVICE\tLABEL\tSTATE\tLAST SEEN")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("tab1\t")
                && l.contains("\tana\tnorth-inspections\t0\tsend ok at ")),
        "{text}"
    );
    let show = office
        .admin(&["task", "show", "north-inspections"], "")
        .ok()
        .stdout;
    assert!(
        show.contains("held by:  tab1 (0 unsent change(s), last seen "),
        "{show}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &office
            .admin(&["task", "show", "north-inspections", "--json"], "")
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["holding"][0]["device"], "tab1", "{json:#}");
    assert_eq!(json["holding"][0]["pending"], 0, "{json:#}");
}
