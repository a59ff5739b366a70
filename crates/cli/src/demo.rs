//! `fieldsync demo`: the whole path on the embedded default, in a temporary folder:
//! a sample main database, a server on a free port, a paired device, a login and a
//! download, then an office edit that the next download brings. Each step prints the
//! command a person would type for it (`$ fieldsync …`, `$ sqlite3 …`), and the folder
//! stays, so every command can be run again by hand afterwards.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use fieldsync_client::{Cancel, Device, DownloadOptions};
use fieldsync_server::admin;
use fieldsync_store::{Store, sample};

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the demo's files (default: a new temporary folder)
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Number of assets in the sample database
    #[arg(long, default_value_t = 2000)]
    assets: i64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let root = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("fieldsync-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let db_path = root.join("main.sqlite");
    anyhow::ensure!(
        !db_path.exists(),
        "{} exists already; pass an empty --dir",
        db_path.display()
    );
    let db_url = format!("sqlite:{}", db_path.display());
    let device_dir = root.join("tablet-1");
    println!("demo folder: {}", root.display());
    println!("   the commands below use:");
    show(&format!("export FIELDSYNC_DB={}", shell_word(&db_url)));
    show(&format!(
        "export FIELDSYNC_DEVICE_DIR={}",
        shell_word(&device_dir.display().to_string())
    ));

    // The office: a main database as the desktop application left it.
    let mut conn = rusqlite::Connection::open(&db_path)?;
    sample::create(&mut conn, args.assets)?;
    let store: Arc<dyn Store> = Arc::from(fieldsync_store::open(&db_url)?);
    store.init()?;
    show("fieldsync server init");
    for t in ["assets", "inspections", "work_orders"] {
        admin::table_track(&*store, t)?;
        show(&format!("fieldsync admin table track {t}"));
    }
    let count = |sql: &str| -> anyhow::Result<i64> { Ok(conn.query_row(sql, [], |r| r.get(0))?) };
    println!(
        "1. main database: {} assets, {} inspections, {} work orders (sample, two regions)",
        count("SELECT count(*) FROM assets")?,
        count("SELECT count(*) FROM inspections")?,
        count("SELECT count(*) FROM work_orders")?
    );
    admin::user_add(&*store, "ana", false, "ana-secret")?;
    show("echo ana-secret | fieldsync admin user add ana --password-stdin");
    let code = admin::device_add(&*store, "tablet-1", Some("north crew tablet"))?;
    show("fieldsync admin device add tablet-1 --label 'north crew tablet'");
    for task in [sample::TASK_NORTH, sample::TASK_SOUTH] {
        let def = admin::task_apply(&*store, task)?;
        // The task file on disk, so the command shown can be run again.
        let file = root.join(format!("{}.toml", def.name));
        std::fs::write(&file, task.trim_start())?;
        show(&format!(
            "fieldsync admin task apply {}",
            shell_word(&file.display().to_string())
        ));
        admin::task_assign(&*store, &def.name, &["ana".into()], &["tablet-1".into()])?;
        show(&format!(
            "fieldsync admin task assign {} --user ana --device tablet-1",
            def.name
        ));
    }
    println!(
        "2. tasks north-inspections and south-work-orders assigned to user ana and device tablet-1"
    );

    // The server, on a free port.
    let runtime = tokio::runtime::Runtime::new()?;
    let (listener, addr) = runtime.block_on(fieldsync_server::bind("127.0.0.1:0"))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(fieldsync_server::serve(
        listener,
        store.clone(),
        fieldsync_server::Limits::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let url = format!("http://{addr}");
    println!("3. server listening on {url}");
    show(&format!("fieldsync server run --listen {addr}"));

    // The crew's tablet.
    let device = Device::open(&device_dir, crate::device_cmd::client_config());
    device.pair(&url, "tablet-1", &code)?;
    device.login("ana", "ana-secret")?;
    let tasks = device.tasks()?;
    show(&format!(
        "fieldsync device pair --server {url} --device-id tablet-1 --code {code}"
    ));
    show("echo ana-secret | fieldsync device login ana --password-stdin");
    show("fieldsync device tasks");
    println!(
        "4. tablet-1 paired; ana logged in; tasks offered: {}",
        tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let report = device.download(
        "north-inspections",
        &DownloadOptions::default(),
        &mut |_| {},
        &Cancel::default(),
    )?;
    show("fieldsync device download north-inspections");
    let replica_path = device
        .status()?
        .replica
        .context("no replica after download")?;
    let replica = rusqlite::Connection::open(&replica_path)?;
    let rcount =
        |sql: &str| -> anyhow::Result<i64> { Ok(replica.query_row(sql, [], |r| r.get(0))?) };
    println!(
        "5. downloaded north-inspections: {} rows ({}), {} bytes, {} ms",
        report.rows_down,
        report
            .tables
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", "),
        report.bytes_down,
        report.duration_ms
    );
    println!(
        "   replica {}: {} north assets, none of the south ({}), only ana's inspections ({} of others)",
        replica_path,
        rcount("SELECT count(*) FROM assets WHERE region = 'north'")?,
        rcount("SELECT count(*) FROM assets WHERE region <> 'north'")?,
        rcount("SELECT count(*) FROM inspections WHERE inspector <> 'ana'")?
    );
    drop(replica);

    // The office edits a row with plain SQL; the next download brings it.
    let asset_id: i64 = conn.query_row(
        "SELECT id FROM assets WHERE region = 'north' AND status <> 'retired' ORDER BY id LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    conn.execute(
        "UPDATE assets SET name = 'pump renamed by the office' WHERE id = ?1",
        [asset_id],
    )?;
    println!("6. the office renamed asset {asset_id} with plain SQL");
    show(&format!(
        "sqlite3 {} \"UPDATE assets SET name = 'pump renamed by the office' WHERE id = {asset_id}\"",
        shell_word(&db_path.display().to_string())
    ));
    show("fieldsync device download north-inspections");
    device.download(
        "north-inspections",
        &DownloadOptions::default(),
        &mut |_| {},
        &Cancel::default(),
    )?;
    let replica = rusqlite::Connection::open(&replica_path)?;
    let name: String =
        replica.query_row("SELECT name FROM assets WHERE id = ?1", [asset_id], |r| {
            r.get(0)
        })?;
    let check: String = replica.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    println!(
        "7. downloaded again: asset {asset_id} is now named {name:?} on the tablet; integrity_check: {check}"
    );
    anyhow::ensure!(
        name == "pump renamed by the office",
        "the office edit did not arrive"
    );

    drop(replica);

    // The crew works offline-style on the replica with plain SQL; triggers journal it.
    let no_progress = &mut |_: &fieldsync_client::Progress| {};
    let app = rusqlite::Connection::open(&replica_path)?;
    app.execute(
        "UPDATE assets SET status = CASE status WHEN 'maintenance' THEN 'active' ELSE 'maintenance' END WHERE id = ?1",
        [asset_id],
    )?;
    let new_status: String =
        app.query_row("SELECT status FROM assets WHERE id = ?1", [asset_id], |r| {
            r.get(0)
        })?;
    app.execute(
        "INSERT INTO inspections (asset_id, inspector, inspected_at, result, notes)
         VALUES (?1, 'ana', '2026-11-26T08:30:00.000Z', 'worn', 'seal leaking')",
        [asset_id],
    )?;
    let pending = device.status()?.pending;
    println!(
        "8. on the tablet: asset {asset_id} set to {new_status}, one new inspection; {pending} changes in the journal"
    );
    show(&format!(
        "sqlite3 {} \"UPDATE assets SET status = '{new_status}' WHERE id = {asset_id}\"",
        shell_word(&replica_path)
    ));
    show("fieldsync device journal");
    let sent = device.send(no_progress, &Cancel::default())?;
    let status: String =
        conn.query_row("SELECT status FROM assets WHERE id = ?1", [asset_id], |r| {
            r.get(0)
        })?;
    println!(
        "9. sent {} changes; the main database now says asset {asset_id} is {status:?}",
        sent.rows_up
    );
    show("fieldsync device send");

    // Both sides edit the same inspection: the office its result, the tablet its result
    // and notes. field-merge keeps the office's result (logging the tablet's) and
    // takes the tablet's notes.
    let insp: String = app.query_row(
        "SELECT id FROM inspections WHERE asset_id = ?1 ORDER BY inspected_at DESC LIMIT 1",
        [asset_id],
        |r| r.get(0),
    )?;
    conn.execute(
        "UPDATE inspections SET result = 'failed' WHERE id = ?1",
        [&insp],
    )?;
    app.execute(
        "UPDATE inspections SET result = 'ok', notes = 'seal replaced' WHERE id = ?1",
        [&insp],
    )?;
    drop(app);
    println!("10. the office set inspection {insp} to failed; the tablet set it to ok with a note");
    let synced = device.sync(&DownloadOptions::default(), no_progress, &Cancel::default())?;
    let replica = rusqlite::Connection::open(&replica_path)?;
    let (result, notes): (String, String) = replica.query_row(
        "SELECT result, notes FROM inspections WHERE id = ?1",
        [&insp],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    println!(
        "11. synchronized: sent {}, {} conflict; the tablet now shows result {result:?} (the office's) and notes {notes:?} (its own)",
        synced.rows_up, synced.conflicts
    );
    show("fieldsync device sync");
    show("fieldsync admin conflicts list");
    for c in store.conflicts_list()? {
        println!(
            "    conflict log #{}: {} {} on {} key {}: kept server {}, logged device {} (user {}, device {})",
            c.id,
            c.kind,
            c.resolution,
            c.table,
            serde_json::to_string(&c.key)?,
            serde_json::to_string(&c.server_values)?,
            serde_json::to_string(&c.device_values)?,
            c.user,
            c.device
        );
    }
    anyhow::ensure!(
        result == "failed" && notes == "seal replaced",
        "the field-merge did not come out as expected"
    );

    let _ = stop_tx.send(());
    runtime.block_on(server)??;
    println!(
        "demo finished: the tablet holds exactly its slice; office and tablet edits met, and the conflict is logged"
    );
    println!(
        "the folder stays for a look (the server has stopped; `fieldsync server run` starts one again, \
         then `device sync` etc. work as shown): {}",
        root.display()
    );
    Ok(())
}

/// A command a person would type for the step just done.
fn show(command: &str) {
    println!("   $ {command}");
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-:=@+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
