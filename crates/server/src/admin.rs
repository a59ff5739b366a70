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
