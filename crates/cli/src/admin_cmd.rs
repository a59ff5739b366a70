//! `fieldsync admin …`: administration directly on the main database.

use std::io::BufRead;

use anyhow::Context;
use clap::{Args, Subcommand};
use fieldsync_proto::time::Timestamp;
use fieldsync_server::admin;
use serde::Serialize;

use crate::audit_cmd as audit;
use crate::output::print_list;
use crate::server_cmd::open_db;

#[derive(Args)]
pub struct AdminArgs {
    /// Main database: sqlite:PATH or postgres://USER@HOST:PORT/DB
    #[arg(long, env = "FIELDSYNC_DB", global = true)]
    db: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Users who log in on devices
    #[command(subcommand)]
    User(UserCommand),
    /// Devices and their enrollment
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Change tracking of the organisation's tables
    #[command(subcommand)]
    Table(TableCommand),
    /// The main database's history id
    #[command(subcommand)]
    Epoch(EpochCommand),
    /// Mobile tasks: slices of the main database
    #[command(subcommand)]
    Task(TaskCommand),
    /// The conflict log
    #[command(subcommand)]
    Conflicts(ConflictsCommand),
    /// Files attached to rows
    #[command(subcommand)]
    File(crate::file_cmd::FileCommand),
    /// Sync history: every download, send and sync the server served
    #[command(visible_alias = "sessions")]
    History {
        #[command(flatten)]
        filter: HistoryFilter,
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// The audit log, newest first: administrators' changes and refused authentications
    Audit {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
        /// Show at most the newest N entries
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
}

/// Which entries of the sync history to show (all given conditions hold).
#[derive(Args)]
struct HistoryFilter {
    /// Only this device's
    #[arg(long)]
    device: Option<String>,
    /// Only this user's
    #[arg(long)]
    user: Option<String>,
    /// Only this task's
    #[arg(long)]
    task: Option<String>,
    /// Only those that ended so: ok, error or cancelled
    #[arg(long)]
    result: Option<String>,
    /// Only those started at or after this UTC time (e.g. 2026-12-01T00:00:00Z)
    #[arg(long, value_name = "TIME")]
    since: Option<fieldsync_proto::time::Timestamp>,
    /// Only the last N of those
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

impl HistoryFilter {
    fn keeps(&self, r: &fieldsync_store::HistoryRecord) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.device, &r.device)
            && is(&self.user, &r.user)
            && is(&self.task, r.task.as_deref().unwrap_or(""))
            && is(&self.result, &r.result)
            && self.since.is_none_or(|t| r.started_at >= t)
    }

    /// The kept entries, oldest first, at most the last `limit`.
    fn apply(
        &self,
        all: Vec<fieldsync_store::HistoryRecord>,
    ) -> Vec<fieldsync_store::HistoryRecord> {
        let mut kept: Vec<_> = all.into_iter().filter(|r| self.keeps(r)).collect();
        if let Some(n) = self.limit {
            kept.drain(..kept.len().saturating_sub(n));
        }
        kept
    }
}

#[derive(Subcommand)]
enum ConflictsCommand {
    /// List logged conflicts
    List {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Apply the logged device or server values of a conflict
    Resolve {
        /// The conflict's id (`admin conflicts list`)
        id: i64,
        /// Whose values to apply
        #[arg(long, value_enum)]
        take: Take,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Take {
    Device,
    Server,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from the first line of stdin
    Add {
        /// The user's login name
        name: String,
        /// May use administrator-only server functions
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of stdin (required: never an argument)
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Set a user's password, read from the first line of stdin (their sessions end)
    Passwd {
        /// The user's login name
        name: String,
        /// Read the password from the first line of stdin (required: never an argument)
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Refuse the user from now on (their sessions end at once)
    Disable {
        /// The user's login name
        name: String,
        /// Even while devices last seen with this user reported unsent changes
        #[arg(long)]
        force: bool,
    },
    /// Let a disabled user log in again
    Enable {
        /// The user's login name
        name: String,
    },
    /// List users
    List {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register a device; prints its single-use enrollment code alone on stdout
    Add {
        /// The device's id, as the device will give it at pairing
        id: String,
        /// A name people recognise it by ("tablet of crew 3")
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a device for good: refused from then on, it wipes its data at its next contact
    Revoke {
        /// The device's id
        id: String,
        /// The device backs up its unsent changes to a file before it wipes
        #[arg(long)]
        keep_changes: bool,
    },
    /// List devices and whether they are paired
    List {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TableCommand {
    /// Start change tracking on an existing table (needs a single-column primary key)
    Track {
        /// The table's name in the main database
        table: String,
    },
}

#[derive(Subcommand)]
enum EpochCommand {
    /// After restoring the main database from a backup: devices' pending changes are
    /// then compared by value, and their next download is full
    Reset,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Create or replace a task from a TOML file
    Apply {
        /// The task file (TOML; see docs/tasks.md)
        file: std::path::PathBuf,
        /// Even when the new version drops a table or column while devices holding
        /// the task reported unsent changes
        #[arg(long)]
        force: bool,
    },
    /// List tasks
    List {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Show one task
    Show {
        /// The task's name
        name: String,
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Assign a task to users and devices
    Assign(Assignment),
    /// Withdraw a task from users and devices (refused at once)
    Unassign {
        #[command(flatten)]
        assignment: Assignment,
        /// Even while devices concerned reported unsent changes for the task
        #[arg(long)]
        force: bool,
    },
    /// Delete a task
    Delete {
        /// The task's name
        name: String,
        /// Even while devices reported unsent changes for the task
        #[arg(long)]
        force: bool,
    },
}

/// A task and the users and devices `task assign` or `task unassign` names.
#[derive(Args)]
struct Assignment {
    /// The task's name
    name: String,
    /// A user (repeat for more)
    #[arg(long = "user")]
    users: Vec<String>,
    /// A device (repeat for more)
    #[arg(long = "device")]
    devices: Vec<String>,
}

impl Assignment {
    fn checked(self) -> anyhow::Result<Assignment> {
        anyhow::ensure!(
            !self.users.is_empty() || !self.devices.is_empty(),
            "name at least one --user or --device"
        );
        Ok(self)
    }
}

/// The users and devices of an assignment, as the audit log notes them.
fn assignment_detail(users: &[String], devices: &[String]) -> String {
    format!("users: {}; devices: {}", users.join(","), devices.join(","))
}

#[derive(Serialize)]
struct UserView<'a> {
    name: &'a str,
    admin: bool,
    disabled: bool,
    created_at: Timestamp,
}

/// The first line of stdin, without its line ending.
pub fn read_password_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!pw.is_empty(), "no password on stdin");
    Ok(pw)
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let store = open_db(args.db.as_deref())?;
    let store = &*store;
    match args.command {
        AdminCommand::File(command) => crate::file_cmd::run(store, args.db.as_deref(), command)?,
        AdminCommand::User(UserCommand::Add {
            name,
            admin: is_admin,
            password_stdin: _,
        }) => {
            let pw = read_password_stdin()?;
            admin::user_add(store, &name, is_admin, &pw)?;
            let role = if is_admin { "--admin" } else { "" };
            audit::record(store, "admin.user.add", &name, &[role]);
            eprintln!("user {name} added");
        }
        AdminCommand::User(UserCommand::Passwd {
            name,
            password_stdin: _,
        }) => {
            let pw = read_password_stdin()?;
            admin::user_passwd(store, &name, &pw)?;
            audit::record(store, "admin.user.passwd", &name, &[]);
            println!("password of {name} changed");
        }
        AdminCommand::User(UserCommand::Disable { name, force }) => {
            let users = [name.clone()];
            let s = admin::Stranding {
                task: None,
                users: &users,
                devices: &[],
                change: format!("disabling user `{name}`"),
            };
            admin::guard_unsent(store, &s, force)?;
            store.user_set_disabled(&name, true)?;
            audit::record(store, "admin.user.disable", &name, &[audit::forced(force)]);
            println!("user {name} disabled");
        }
        AdminCommand::User(UserCommand::Enable { name }) => {
            store.user_set_disabled(&name, false)?;
            audit::record(store, "admin.user.enable", &name, &[]);
            println!("user {name} enabled");
        }
        AdminCommand::User(UserCommand::List { json }) => {
            let users = store.user_list()?;
            let views: Vec<UserView<'_>> = users
                .iter()
                .map(|u| UserView {
                    name: &u.name,
                    admin: u.admin,
                    disabled: u.disabled,
                    created_at: u.created_at,
                })
                .collect();
            if !json {
                println!("USER\tROLE\tSTATE");
            }
            print_list(&views, json, |u| {
                format!(
                    "{}\t{}\t{}",
                    u.name,
                    if u.admin { "admin" } else { "user" },
                    if u.disabled { "disabled" } else { "enabled" }
                )
            });
        }
        AdminCommand::Device(DeviceCommand::List { json }) => {
            crate::admin_view::device_list(store, json)?;
        }
        AdminCommand::Task(TaskCommand::Unassign { assignment, force }) => {
            let Assignment {
                name,
                users,
                devices,
            } = assignment.checked()?;
            let s = admin::Stranding {
                task: Some(&name),
                users: &users,
                devices: &devices,
                change: format!("unassigning task `{name}`"),
            };
            admin::guard_unsent(store, &s, force)?;
            store.task_unassign(&name, &users, &devices)?;
            let whom = assignment_detail(&users, &devices);
            audit::record(
                store,
                "admin.task.unassign",
                &name,
                &[&whom, audit::forced(force)],
            );
            println!("task {name} unassigned");
        }
        AdminCommand::Task(TaskCommand::Delete { name, force }) => {
            let s = admin::Stranding {
                task: Some(&name),
                users: &[],
                devices: &[],
                change: format!("deleting task `{name}`"),
            };
            admin::guard_unsent(store, &s, force)?;
            store.task_delete(&name)?;
            audit::record(store, "admin.task.delete", &name, &[audit::forced(force)]);
            println!("task {name} deleted");
        }
        AdminCommand::Conflicts(ConflictsCommand::List { json }) => {
            print_list(&store.conflicts_list()?, json, |c| {
                format!(
                    "{}\t{}\t{}\t{} {}\t{}\t{} ({})\t{}",
                    c.id,
                    c.at,
                    c.task,
                    c.table,
                    serde_json::to_string(&c.key).unwrap_or_default(),
                    c.user,
                    c.kind,
                    c.resolution,
                    c.resolved_take
                        .as_deref()
                        .map_or("open".to_string(), |t| format!("resolved: {t}"))
                )
            });
        }
        AdminCommand::Conflicts(ConflictsCommand::Resolve { id, take }) => {
            let c = admin::conflict_resolve(store, id, matches!(take, Take::Device))?;
            let took = format!(
                "took the {} values",
                c.resolved_take.as_deref().unwrap_or("?")
            );
            audit::record(
                store,
                "admin.conflict.resolve",
                &format!("conflict {id}"),
                &[&took],
            );
            println!(
                "conflict {} resolved: took the {} values",
                c.id,
                c.resolved_take.unwrap_or_default()
            );
        }
        AdminCommand::Audit { json, limit } => audit::list(store, limit, json)?,
        AdminCommand::History { filter, json } => {
            print_list(&filter.apply(store.history()?), json, |s| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\trows {}/{}\tbytes {}/{}\tconflicts {}\t{} ms",
                    s.started_at,
                    s.device,
                    s.user,
                    s.task.as_deref().unwrap_or("-"),
                    s.op,
                    s.trigger,
                    s.result,
                    s.rows_down,
                    s.rows_up,
                    s.bytes_down,
                    s.bytes_up,
                    s.conflicts,
                    s.duration_ms
                )
            });
        }
        AdminCommand::Device(DeviceCommand::Revoke { id, keep_changes }) => {
            store.device_revoke(&id, keep_changes)?;
            let keep = if keep_changes { "--keep-changes" } else { "" };
            audit::record(store, "admin.device.revoke", &id, &[keep]);
            let keep = if keep_changes {
                ", keeping its unsent changes in a backup file"
            } else {
                ""
            };
            println!("revoked {id}: at its next contact it wipes its data{keep}");
        }
        AdminCommand::Device(DeviceCommand::Add { id, label }) => {
            let code = admin::device_add(store, &id, label.as_deref())?;
            let label = label.map(|l| format!("label `{l}`")).unwrap_or_default();
            audit::record(store, "admin.device.add", &id, &[&label]);
            println!("{code}");
        }
        AdminCommand::Epoch(EpochCommand::Reset) => {
            let epoch = store.epoch_reset()?;
            audit::record(
                store,
                "admin.epoch.reset",
                "epoch",
                &[&format!("new epoch {epoch}")],
            );
            println!("epoch reset: {epoch}");
        }
        AdminCommand::Table(TableCommand::Track { table }) => {
            let info = admin::table_track(store, &table)?;
            audit::record(store, "admin.table.track", &table, &[]);
            println!(
                "tracking {} (primary key {}, key: {})",
                info.name,
                info.primary_key,
                info.key_kind()
            );
        }
        AdminCommand::Task(TaskCommand::Apply { file, force }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading task file {}", file.display()))?;
            let drops =
                admin::task_drops(store, &text).with_context(|| format!("{}", file.display()))?;
            if !drops.is_empty() {
                let def = fieldsync_proto::task::TaskDef::from_toml(&text)?;
                let s = admin::Stranding {
                    task: Some(&def.name),
                    users: &[],
                    devices: &[],
                    change: format!("dropping {} from task `{}`", drops.join(", "), def.name),
                };
                admin::guard_unsent(store, &s, force)?;
            }
            let def =
                admin::task_apply(store, &text).with_context(|| format!("{}", file.display()))?;
            let what = format!("{} tables from {}", def.tables.len(), file.display());
            audit::record(
                store,
                "admin.task.apply",
                &def.name,
                &[&what, audit::forced(force)],
            );
            println!("task {} applied ({} tables)", def.name, def.tables.len());
        }
        AdminCommand::Task(TaskCommand::List { json }) => {
            let tasks = store.task_list()?;
            let views: Vec<crate::admin_view::TaskView<'_>> =
                tasks.iter().map(crate::admin_view::task_view).collect();
            print_list(&views, json, |t| {
                format!(
                    "{}\t{}\tusers: {}\tdevices: {}",
                    t.name,
                    t.description.unwrap_or(""),
                    t.users.join(","),
                    t.devices.join(",")
                )
            });
        }
        AdminCommand::Task(TaskCommand::Show { name, json }) => {
            let t = store
                .task_get(&name)?
                .with_context(|| format!("no task `{name}`"))?;
            crate::admin_view::task_show(store, &t, json)?;
        }
        AdminCommand::Task(TaskCommand::Assign(a)) => {
            let Assignment {
                name,
                users,
                devices,
            } = a.checked()?;
            admin::task_assign(store, &name, &users, &devices)?;
            let whom = assignment_detail(&users, &devices);
            audit::record(store, "admin.task.assign", &name, &[&whom]);
            println!("task {name} assigned");
        }
    }
    Ok(())
}
