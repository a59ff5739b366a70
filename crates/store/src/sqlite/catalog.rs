//! fieldsync's own records on SQLite: users, devices, tasks and their assignments,
//! sessions.

use fieldsync_proto::task::TaskDef;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, opt_time_at, table_info, time_at};
use crate::plan;
use crate::{
    AssignedTask, Catalog, DeviceRecord, Result, SessionRecord, SessionScope, StoreError,
    TaskRecord, UserRecord,
};
use fieldsync_proto::time::Timestamp;

fn task_record(
    conn: &Connection,
    name: &str,
    definition: &str,
    hash: String,
    updated_at: Timestamp,
) -> Result<TaskRecord> {
    let def: TaskDef = serde_json::from_str(definition)
        .map_err(|e| StoreError::Db(format!("stored task `{name}` is unreadable: {e}")))?;
    let list = |sql: &str| -> Result<Vec<String>> {
        let mut stmt = conn.prepare(sql)?;
        let v = stmt
            .query_map([name], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(v)
    };
    Ok(TaskRecord {
        users: list("SELECT user FROM fieldsync_task_users WHERE task = ?1 ORDER BY user")?,
        devices: list("SELECT device FROM fieldsync_task_devices WHERE task = ?1 ORDER BY device")?,
        def,
        hash,
        updated_at,
    })
}

/// The tasks assigned to both `user` and `device` (only `name`, when given), with
/// their users and devices, in one query: the user's assignments by index
/// (`fieldsync_task_users_by_user`), each checked against the device's by primary key.
fn assigned_tasks(
    conn: &Connection,
    name: Option<&str>,
    user: &str,
    device: &str,
) -> Result<Vec<AssignedTask>> {
    // One task by its key, or all of the user's: each its own plan.
    let which = if name.is_some() {
        "u.task = ?3"
    } else {
        "?3 IS NULL"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT t.name, t.definition, t.hash, t.updated_at,
                (SELECT json_group_array(x.user ORDER BY x.user) FROM fieldsync_task_users x WHERE x.task = t.name)
         FROM fieldsync_task_users u
         JOIN fieldsync_task_devices d ON d.task = u.task AND d.device = ?2
         JOIN fieldsync_tasks t ON t.name = u.task
         WHERE u.user = ?1 AND {which}
         ORDER BY t.name"
    ))?;
    let rows = stmt
        .query_map(params![user, device, name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                time_at(r, 3, "updated_at")?,
                r.get::<_, String>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(name, definition, hash, updated_at, users)| {
            Ok(AssignedTask {
                def: serde_json::from_str(&definition).map_err(|e| {
                    StoreError::Db(format!("stored task `{name}` is unreadable: {e}"))
                })?,
                users: serde_json::from_str(&users).map_err(|e| {
                    StoreError::Db(format!("assignments of task `{name}` unreadable: {e}"))
                })?,
                hash,
                updated_at,
            })
        })
        .collect()
}

impl Catalog for SqliteStore {
    fn user_add(&self, user: &UserRecord) -> Result<()> {
        let conn = self.conn()?;
        let n = conn.execute(
            "INSERT OR IGNORE INTO fieldsync_users (name, password_hash, admin, disabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![user.name, user.password_hash, user.admin, user.disabled, user.created_at.to_string()],
        )?;
        crate::catalog::added(n != 0, "user", &user.name)
    }

    fn user_get(&self, name: &str) -> Result<Option<UserRecord>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM fieldsync_users WHERE name = ?1"),
                [name],
                user_row,
            )
            .optional()?)
    }

    fn device_add(&self, d: &DeviceRecord) -> Result<()> {
        let conn = self.conn()?;
        let n = conn.execute(
            "INSERT OR IGNORE INTO fieldsync_devices (id, label, code_hash, secret_hash, revoked, created_at, paired_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                d.id,
                d.label,
                d.code_hash,
                d.secret_hash,
                d.revoked,
                d.created_at.to_string(),
                d.paired_at.map(|t| t.to_string())
            ],
        )?;
        crate::catalog::added(n != 0, "device", &d.id)
    }

    fn device_get(&self, id: &str) -> Result<Option<DeviceRecord>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM fieldsync_devices WHERE id = ?1"),
                [id],
                device_row,
            )
            .optional()?)
    }

    fn device_pair(
        &self,
        id: &str,
        code_hash: &str,
        secret_hash: &str,
        at: Timestamp,
    ) -> Result<bool> {
        let conn = self.conn()?;
        // One statement: the code is consumed exactly once even if two devices race.
        let n = conn.execute(
            "UPDATE fieldsync_devices SET code_hash = NULL, secret_hash = ?3, paired_at = ?4
             WHERE id = ?1 AND code_hash = ?2 AND revoked = 0",
            params![id, code_hash, secret_hash, at.to_string()],
        )?;
        Ok(n == 1)
    }

    fn task_put(&self, def: &TaskDef, hash: &str, at: Timestamp) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        plan::check_task(def, &|t| table_info(&tx, t))?;
        let json = serde_json::to_string(def).expect("task serializes");
        tx.execute(
            "INSERT INTO fieldsync_tasks (name, definition, hash, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, hash = excluded.hash, updated_at = excluded.updated_at",
            params![def.name, json, hash, at.to_string()],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO fieldsync_task_versions (hash, name, definition, at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, def.name, json, at.to_string()],
        )?;
        super::tracking::rewatch(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn task_version(&self, hash: &str) -> Result<Option<TaskDef>> {
        let def: Option<String> = self
            .conn()?
            .query_row(
                "SELECT definition FROM fieldsync_task_versions WHERE hash = ?1",
                [hash],
                |r| r.get(0),
            )
            .optional()?;
        def.map(|d| {
            serde_json::from_str(&d)
                .map_err(|e| StoreError::Db(format!("stored task version unreadable: {e}")))
        })
        .transpose()
    }

    fn task_get(&self, name: &str) -> Result<Option<TaskRecord>> {
        let conn = self.conn()?;
        let row: Option<(String, String, Timestamp)> = conn
            .query_row(
                "SELECT definition, hash, updated_at FROM fieldsync_tasks WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, time_at(r, 2, "updated_at")?)),
            )
            .optional()?;
        row.map(|(d, h, u)| task_record(&conn, name, &d, h, u))
            .transpose()
    }

    fn task_list(&self) -> Result<Vec<TaskRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT name, definition, hash, updated_at FROM fieldsync_tasks ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    time_at(r, 3, "updated_at")?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<(String, String, String, Timestamp)>>>()?;
        rows.into_iter()
            .map(|(n, d, h, u)| task_record(&conn, &n, &d, h, u))
            .collect()
    }

    fn tasks_assigned(&self, user: &str, device: &str) -> Result<Vec<AssignedTask>> {
        assigned_tasks(&*self.conn()?, None, user, device)
    }

    fn task_assigned(&self, name: &str, user: &str, device: &str) -> Result<Option<AssignedTask>> {
        Ok(assigned_tasks(&*self.conn()?, Some(name), user, device)?
            .into_iter()
            .next())
    }

    fn task_assign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists =
            |sql: &str, v: &str| -> Result<bool> { Ok(tx.query_row(sql, [v], |r| r.get(0))?) };
        crate::catalog::found(
            exists("SELECT count(*) FROM fieldsync_tasks WHERE name = ?1", name)?,
            "task",
            name,
        )?;
        for u in users {
            crate::catalog::found(
                exists("SELECT count(*) FROM fieldsync_users WHERE name = ?1", u)?,
                "user",
                u,
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO fieldsync_task_users (task, user) VALUES (?1, ?2)",
                [name, u],
            )?;
        }
        for d in devices {
            crate::catalog::found(
                exists("SELECT count(*) FROM fieldsync_devices WHERE id = ?1", d)?,
                "device",
                d,
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO fieldsync_task_devices (task, device) VALUES (?1, ?2)",
                [name, d],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn session_put(&self, s: &SessionRecord) -> Result<()> {
        let conn = self.conn()?;
        let (created_at, expires_at) = (s.created_at.to_string(), s.expires_at.to_string());
        let (scope, scope_task) = crate::catalog::scope_columns(&s.scope);
        conn.execute(
            "INSERT INTO fieldsync_sessions (token_hash, device, user, created_at, expires_at, scope, scope_task)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![s.token_hash, s.device, s.user, created_at, expires_at, scope, scope_task],
        )?;
        conn.execute(
            "INSERT OR IGNORE INTO fieldsync_device_users (device, user, first_at) VALUES (?1, ?2, ?3)",
            params![s.device, s.user, created_at],
        )?;
        // Expired sessions are of no use to anyone; drop them while we are here.
        conn.execute(
            "DELETE FROM fieldsync_sessions WHERE expires_at < ?1",
            [&created_at],
        )?;
        Ok(())
    }

    /// SQLite's clock is the clock of the process running the query: with a SQLite
    /// main database, every server runs on the one machine that holds the file.
    fn clock_ms(&self) -> Result<i64> {
        Ok(self.conn()?.query_row(
            "SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)",
            [],
            |r| r.get(0),
        )?)
    }

    fn session_get(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let conn = self.conn()?;
        let found = conn
            .query_row(
                "SELECT token_hash, device, user, created_at, expires_at, scope, scope_task
                 FROM fieldsync_sessions
                 WHERE token_hash = ?1 AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                [token_hash],
                |r| {
                    let scope: String = r.get(5)?;
                    Ok((
                        SessionRecord {
                            token_hash: r.get(0)?,
                            device: r.get(1)?,
                            user: r.get(2)?,
                            created_at: time_at(r, 3, "created_at")?,
                            expires_at: time_at(r, 4, "expires_at")?,
                            scope: SessionScope::User,
                        },
                        scope,
                        r.get::<_, Option<String>>(6)?,
                    ))
                },
            )
            .optional()?;
        found
            .map(|(mut s, scope, task)| {
                s.scope = crate::catalog::scope_of(&scope, task)?;
                Ok(s)
            })
            .transpose()
    }

    fn session_delete(&self, token_hash: &str) -> Result<()> {
        self.conn()?.execute(
            "DELETE FROM fieldsync_sessions WHERE token_hash = ?1",
            [token_hash],
        )?;
        Ok(())
    }

    fn user_list(&self) -> Result<Vec<UserRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {USER_COLUMNS} FROM fieldsync_users ORDER BY name"
        ))?;
        let rows = stmt
            .query_map([], user_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// A new password ends the user's sessions, as disabling does: whoever knew the
    /// old one is logged out everywhere.
    fn user_set_password(&self, name: &str, password_hash: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE fieldsync_users SET password_hash = ?2 WHERE name = ?1",
            [name, password_hash],
        )?;
        crate::catalog::found(n != 0, "user", name)?;
        tx.execute("DELETE FROM fieldsync_sessions WHERE user = ?1", [name])?;
        tx.execute("DELETE FROM fieldsync_tickets WHERE user = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    fn user_set_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE fieldsync_users SET disabled = ?2 WHERE name = ?1",
            params![name, disabled],
        )?;
        crate::catalog::found(n != 0, "user", name)?;
        // Disabled, the user's sessions stay, refused by the user's state (so the
        // device hears "disabled", not "expired"); enabled again, they are gone: the
        // user logs in afresh. Tickets go at once.
        tx.execute("DELETE FROM fieldsync_tickets WHERE user = ?1", [name])?;
        if !disabled {
            tx.execute("DELETE FROM fieldsync_sessions WHERE user = ?1", [name])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn device_revoke(&self, id: &str, keep_changes: bool) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE fieldsync_devices SET revoked = 1, keep_changes = ?2 WHERE id = ?1",
            params![id, keep_changes],
        )?;
        crate::catalog::found(n != 0, "device", id)?;
        tx.execute("DELETE FROM fieldsync_sessions WHERE device = ?1", [id])?;
        tx.execute("DELETE FROM fieldsync_tickets WHERE device = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    fn device_list(&self) -> Result<Vec<DeviceRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEVICE_COLUMNS} FROM fieldsync_devices ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([], device_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn task_delete(&self, name: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute("DELETE FROM fieldsync_tasks WHERE name = ?1", [name])?;
        crate::catalog::found(n != 0, "task", name)?;
        super::tracking::rewatch(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn task_unassign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT count(*) FROM fieldsync_tasks WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        crate::catalog::found(exists, "task", name)?;
        for u in users {
            tx.execute(
                "DELETE FROM fieldsync_task_users WHERE task = ?1 AND user = ?2",
                [name, u],
            )?;
        }
        for d in devices {
            tx.execute(
                "DELETE FROM fieldsync_task_devices WHERE task = ?1 AND device = ?2",
                [name, d],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

const USER_COLUMNS: &str = "name, password_hash, admin, disabled, created_at";
const DEVICE_COLUMNS: &str =
    "id, label, code_hash, secret_hash, revoked, created_at, paired_at, keep_changes";

/// A `fieldsync_users` row selected as [`USER_COLUMNS`].
fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        name: r.get(0)?,
        password_hash: r.get(1)?,
        admin: r.get(2)?,
        disabled: r.get(3)?,
        created_at: time_at(r, 4, "created_at")?,
    })
}

/// A `fieldsync_devices` row selected as [`DEVICE_COLUMNS`].
fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: r.get(0)?,
        label: r.get(1)?,
        code_hash: r.get(2)?,
        secret_hash: r.get(3)?,
        revoked: r.get(4)?,
        created_at: time_at(r, 5, "created_at")?,
        paired_at: opt_time_at(r, 6, "paired_at")?,
        keep_changes: r.get(7)?,
    })
}

/// Whether a user exists and is not disabled.
pub(crate) fn user_enabled(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT disabled FROM fieldsync_users WHERE name = ?1",
            [name],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .is_some_and(|disabled| !disabled))
}
