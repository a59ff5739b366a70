//! What the admin commands print about devices and tasks for a person or a script:
//! the device list with when each device was last seen, what it said it holds and how
//! its last sync went, and a task with the devices that hold it.

use anyhow::Context;
use fieldsync_proto::time::Timestamp;
use fieldsync_store::{DeviceSeen, HistoryRecord, Store};
use serde::Serialize;

use crate::output::{print_json, print_list};

#[derive(Serialize)]
struct DeviceView<'a> {
    id: &'a str,
    label: Option<&'a str>,
    paired: bool,
    paired_at: Option<Timestamp>,
    revoked: bool,
    created_at: Timestamp,
    /// The device's last request whose sender was checked, and its user then.
    last_seen: Option<Timestamp>,
    user: Option<&'a str>,
    /// What it reported holding then: its replica's task and unsent entries.
    task: Option<&'a str>,
    pending: Option<u64>,
    last_sync: Option<LastSyncView<'a>>,
}

#[derive(Serialize)]
struct LastSyncView<'a> {
    op: &'a str,
    result: &'a str,
    at: Timestamp,
    message: &'a str,
}

/// `admin device list`: a header line and one line per device, or JSON.
pub fn device_list(store: &dyn Store, json: bool) -> anyhow::Result<()> {
    let devices = store.device_list()?;
    let seen = store.devices_seen()?;
    let history = store.history()?;
    let views: Vec<DeviceView<'_>> = devices
        .iter()
        .map(|d| {
            let s = seen.iter().find(|s| s.device == d.id);
            let last: Option<&HistoryRecord> = history.iter().rev().find(|h| h.device == d.id);
            DeviceView {
                id: &d.id,
                label: d.label.as_deref(),
                paired: d.secret_hash.is_some(),
                paired_at: d.paired_at,
                revoked: d.revoked,
                created_at: d.created_at,
                last_seen: s.map(|s| s.at),
                user: s.map(|s| s.user.as_str()),
                task: s.and_then(|s| s.task.as_deref()),
                pending: s.and_then(|s| s.pending),
                last_sync: last.map(|h| LastSyncView {
                    op: h.op.as_str(),
                    result: &h.result,
                    at: h.started_at,
                    message: &h.message,
                }),
            }
        })
        .collect();
    if !json {
        println!("DEVICE\tLABEL\tSTATE\tLAST SEEN\tUSER\tTASK\tPENDING\tLAST SYNC");
    }
    print_list(&views, json, |d| {
        let state = match (d.revoked, d.paired) {
            (true, _) => "revoked",
            (false, true) => "paired",
            (false, false) => "not paired",
        };
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "{}\t{}\t{state}\t{}\t{}\t{}\t{}\t{}",
            d.id,
            d.label.unwrap_or("-"),
            or_dash(d.last_seen.map(|t| t.to_string())),
            d.user.unwrap_or("-"),
            d.task.unwrap_or("-"),
            or_dash(d.pending.map(|n| n.to_string())),
            or_dash(
                d.last_sync
                    .as_ref()
                    .map(|l| format!("{} {} at {}", l.op, l.result, l.at))
            ),
        )
    });
    Ok(())
}

/// The devices that last reported holding task `name`.
fn holders(store: &dyn Store, name: &str) -> anyhow::Result<Vec<DeviceSeen>> {
    Ok(store
        .devices_seen()
        .context("reading when devices were seen")?
        .into_iter()
        .filter(|s| s.task.as_deref() == Some(name))
        .collect())
}

fn holder_text(h: &DeviceSeen) -> String {
    let pending = match h.pending {
        Some(n) => format!("{n} unsent change(s)"),
        None => "unsent changes unknown".into(),
    };
    format!(
        "{} ({}, last seen {} with user {})",
        h.device, pending, h.at, h.user
    )
}

#[derive(Serialize)]
struct HolderView<'a> {
    device: &'a str,
    user: &'a str,
    last_seen: Timestamp,
    pending: Option<u64>,
}

/// `admin task show`: the task for a person, or JSON with the devices holding it.
pub fn task_show(
    store: &dyn Store,
    t: &fieldsync_store::TaskRecord,
    json: bool,
) -> anyhow::Result<()> {
    let holding = holders(store, &t.def.name)?;
    if json {
        let mut v = serde_json::to_value(task_view(t)).expect("serializes");
        v["holding"] = serde_json::to_value(
            holding
                .iter()
                .map(|h| HolderView {
                    device: &h.device,
                    user: &h.user,
                    last_seen: h.at,
                    pending: h.pending,
                })
                .collect::<Vec<_>>(),
        )
        .expect("serializes");
        print_json(&v);
    } else {
        print!("{}", describe_task(t, &holding));
    }
    Ok(())
}

#[derive(Serialize)]
pub struct TaskView<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub hash: &'a str,
    pub updated_at: Timestamp,
    pub users: &'a [String],
    pub devices: &'a [String],
    pub definition: &'a fieldsync_proto::task::TaskDef,
}

pub fn task_view(t: &fieldsync_store::TaskRecord) -> TaskView<'_> {
    TaskView {
        name: &t.def.name,
        description: t.def.description.as_deref(),
        hash: &t.hash,
        updated_at: t.updated_at,
        users: &t.users,
        devices: &t.devices,
        definition: &t.def,
    }
}

/// A task as `admin task show` prints it for a person: each table's rows (filter and
/// parent rule in words), columns, writes and conflict policy, then who has it.
fn describe_task(t: &fieldsync_store::TaskRecord, holding: &[DeviceSeen]) -> String {
    use fieldsync_proto::task::WriteOp;
    use std::fmt::Write;
    let list = |items: &[String], none: &str| {
        if items.is_empty() {
            none.to_string()
        } else {
            items.join(", ")
        }
    };
    let mut out = format!(
        "task {} (version {}, applied {})\n",
        t.def.name, t.hash, t.updated_at
    );
    if let Some(d) = &t.def.description {
        let _ = writeln!(out, "  {d}");
    }
    for table in &t.def.tables {
        let mut rows = vec![];
        if let Some(p) = &table.parent {
            rows.push(format!(
                "those whose {} row ({} = its key) is in the slice",
                p.table, p.key
            ));
        }
        if let Some(f) = &table.filter {
            rows.push(format!("where {f}"));
        }
        let rows = if rows.is_empty() {
            "all".to_string()
        } else {
            rows.join(", and ")
        };
        let columns = table
            .columns
            .as_ref()
            .map_or("all".to_string(), |c| c.join(", "));
        let writes: Vec<String> = table
            .write
            .iter()
            .map(|w| {
                match w {
                    WriteOp::Insert => "insert",
                    WriteOp::Update => "update",
                    WriteOp::Delete => "delete",
                }
                .to_string()
            })
            .collect();
        let policy = serde_json::to_value(table.conflict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(out, "  table {}", table.name);
        let _ = writeln!(out, "    rows:     {rows}");
        let _ = writeln!(out, "    columns:  {columns}");
        let _ = writeln!(out, "    writes:   {}", list(&writes, "none (read-only)"));
        if !writes.is_empty() {
            let _ = writeln!(out, "    conflict: {policy}");
        }
    }
    if let Some(files) = &t.def.files {
        let _ = writeln!(out, "  files of: {}", list(&files.tables, "no table"));
    }
    let _ = writeln!(out, "  users:    {}", list(&t.users, "none"));
    let _ = writeln!(out, "  devices:  {}", list(&t.devices, "none"));
    for h in holding {
        let _ = writeln!(out, "  held by:  {}", holder_text(h));
    }
    out
}
