//! Administration on the main database directly, as the desktop application does:
//! users, devices, tracked tables, tasks and their assignment.

use fieldsync_proto::task::{TaskDef, check_name};
use fieldsync_proto::time::Timestamp;
use fieldsync_store::{
    DeviceRecord, Result, Store, StoreError, TableInfo, UserRecord, random_hex, sha256_hex,
};

use crate::auth;

pub fn user_add(store: &dyn Store, name: &str, admin: bool, password: &str) -> Result<()> {
    check_name("user", name).map_err(StoreError::Invalid)?;
    if password.is_empty() {
        return Err(StoreError::Invalid("the password is empty".into()));
    }
    store.user_add(&UserRecord {
        name: name.to_string(),
        password_hash: auth::hash_password(password),
        admin,
        disabled: false,
        created_at: Timestamp::now(),
    })
}

/// Registers a device and returns its single-use enrollment code (only its hash is kept).
pub fn device_add(store: &dyn Store, id: &str, label: Option<&str>) -> Result<String> {
    check_name("device", id).map_err(StoreError::Invalid)?;
    let code = random_hex(10);
    store.device_add(&DeviceRecord {
        id: id.to_string(),
        label: label.map(str::to_string),
        code_hash: Some(sha256_hex(&code)),
        secret_hash: None,
        revoked: false,
        keep_changes: false,
        created_at: Timestamp::now(),
        paired_at: None,
    })?;
    Ok(code)
}

pub fn table_track(store: &dyn Store, table: &str) -> Result<TableInfo> {
    store.track_table(table)
}

/// Parses, checks against the schema and stores a task file. Nothing is stored when
/// any check fails.
pub fn task_apply(store: &dyn Store, toml_text: &str) -> Result<TaskDef> {
    let def = TaskDef::from_toml(toml_text).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let canonical = serde_json::to_string(&def).expect("task serializes");
    store.task_put(&def, &sha256_hex(&canonical)[..16], Timestamp::now())?;
    Ok(def)
}

pub fn task_assign(
    store: &dyn Store,
    task: &str,
    users: &[String],
    devices: &[String],
) -> Result<()> {
    store.task_assign(task, users, devices)
}

pub fn user_passwd(store: &dyn Store, name: &str, password: &str) -> Result<()> {
    if password.is_empty() {
        return Err(StoreError::Invalid("the password is empty".into()));
    }
    store.user_set_password(name, &auth::hash_password(password))
}

/// Resolves a logged conflict by applying the device's or the server's logged values.
pub fn conflict_resolve(
    store: &dyn Store,
    id: i64,
    take_device: bool,
) -> Result<fieldsync_store::ConflictRecord> {
    store.conflict_resolve(id, take_device, Timestamp::now())
}

/// What an administrator's change would do to devices' unsent changes.
pub struct Stranding<'a> {
    /// The task whose holders count (`None`: any task).
    pub task: Option<&'a str>,
    /// Only devices last seen with one of these users (empty: any user).
    pub users: &'a [String],
    /// Only these devices (empty: any device).
    pub devices: &'a [String],
    /// What the change is, for the message ("deleting task `t`").
    pub change: String,
}

/// Refuses a change (deleting or unassigning a task, disabling a user, dropping a
/// table or column from a task) while devices it concerns last reported unsent
/// changes: those would come back as `not-applied` conflicts. `force` makes it go
/// ahead anyway. What devices reported is as of their last request.
pub fn guard_unsent(store: &dyn Store, s: &Stranding<'_>, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let holders: Vec<String> = store
        .devices_seen()?
        .into_iter()
        .filter(|d| d.pending.is_some_and(|n| n > 0))
        .filter(|d| s.task.is_none_or(|t| d.task.as_deref() == Some(t)))
        .filter(|d| s.users.is_empty() || s.users.contains(&d.user))
        .filter(|d| s.devices.is_empty() || s.devices.contains(&d.device))
        .map(|d| {
            format!(
                "device `{}` ({} unsent change(s) of user `{}`'s session, reported {})",
                d.device,
                d.pending.unwrap_or_default(),
                d.user,
                d.at
            )
        })
        .collect();
    if holders.is_empty() {
        return Ok(());
    }
    Err(StoreError::Invalid(format!(
        "{} would leave unsent changes behind: {}; they would be logged as not applied. \
         Let the devices send first (`admin device list` shows what they hold), or add --force",
        s.change,
        holders.join(", ")
    )))
}

/// What a new version of a task drops of the stored one: tables, and columns of
/// tables that stay (a table that had every column and now lists some drops the rest).
pub fn task_drops(store: &dyn Store, toml_text: &str) -> Result<Vec<String>> {
    let new = TaskDef::from_toml(toml_text).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let Some(old) = store.task_get(&new.name)? else {
        return Ok(vec![]);
    };
    let mut dropped = vec![];
    for t in &old.def.tables {
        let Some(n) = new.tables.iter().find(|x| x.name == t.name) else {
            dropped.push(format!("table `{}`", t.name));
            continue;
        };
        match (&t.columns, &n.columns) {
            (_, None) => {}
            (None, Some(_)) => {
                dropped.push(format!("columns of table `{}` beyond those listed", t.name))
            }
            (Some(before), Some(after)) => {
                for c in before.iter().filter(|c| !after.contains(c)) {
                    dropped.push(format!("column `{}.{c}`", t.name));
                }
            }
        }
    }
    Ok(dropped)
}
