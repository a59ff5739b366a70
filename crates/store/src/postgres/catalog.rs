//! fieldsync's own records on PostgreSQL: users, devices, tasks and their
//! assignments, sessions.

use fieldsync_proto::task::TaskDef;
use postgres::Client;

use super::{PgStore, in_tx, opt_time_at, table_info, time_at};
use crate::plan;
use crate::{
    AssignedTask, Catalog, DeviceRecord, Result, SessionRecord, StoreError, TaskRecord, UserRecord,
};
use fieldsync_proto::time::Timestamp;

fn task_record(
    c: &mut impl postgres::GenericClient,
    name: &str,
    definition: &str,
    hash: String,
    updated_at: Timestamp,
) -> Result<TaskRecord> {
    let def: TaskDef = serde_json::from_str(definition)
        .map_err(|e| StoreError::Db(format!("stored task `{name}` is unreadable: {e}")))?;
    let mut list = |sql: &str| -> Result<Vec<String>> {
        Ok(c.query(sql, &[&name])?.iter().map(|r| r.get(0)).collect())
    };
    Ok(TaskRecord {
        users: list(
            "SELECT user_name FROM fieldsync.task_users WHERE task = $1 ORDER BY user_name COLLATE \"C\"",
        )?,
        devices: list(
            "SELECT device FROM fieldsync.task_devices WHERE task = $1 ORDER BY device COLLATE \"C\"",
        )?,
        def,
        hash,
        updated_at,
    })
}

/// The tasks assigned to both `user` and `device` (only `name`, when given), with
/// their users and devices, in one query: the user's assignments by index
/// (`task_users_by_user`), each checked against the device's by primary key.
fn assigned_tasks(
    c: &mut Client,
    name: Option<&str>,
    user: &str,
    device: &str,
) -> Result<Vec<AssignedTask>> {
    // One task by its key, or all of the user's: each its own plan.
    let which = if name.is_some() {
        "u.task = $3"
    } else {
        "$3::text IS NULL"
    };
    let rows = c.query(
        &format!(
            "SELECT t.name, t.definition, t.hash, t.updated_at,
                    array(SELECT x.user_name FROM fieldsync.task_users x WHERE x.task = t.name
                          ORDER BY x.user_name COLLATE \"C\")
             FROM fieldsync.task_users u
             JOIN fieldsync.task_devices d ON d.task = u.task AND d.device = $2
             JOIN fieldsync.tasks t ON t.name = u.task
             WHERE u.user_name = $1 AND {which}
             ORDER BY t.name COLLATE \"C\""
        ),
        &[&user, &device, &name],
    )?;
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            let definition: String = r.get(1);
            Ok(AssignedTask {
                def: serde_json::from_str(&definition).map_err(|e| {
                    StoreError::Db(format!("stored task `{name}` is unreadable: {e}"))
                })?,
                hash: r.get(2),
                updated_at: time_at(r, 3, "updated_at")?,
                users: r.get(4),
            })
        })
        .collect()
}

impl Catalog for PgStore {
    fn user_add(&self, u: &UserRecord) -> Result<()> {
        let n = self.conn()?.execute(
            "INSERT INTO fieldsync.users (name, password_hash, admin, disabled, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
            &[
                &u.name,
                &u.password_hash,
                &u.admin,
                &u.disabled,
                &u.created_at.to_string(),
            ],
        )?;
        crate::catalog::added(n != 0, "user", &u.name)
    }

    fn user_get(&self, name: &str) -> Result<Option<UserRecord>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM fieldsync.users WHERE name = $1"),
                &[&name],
            )?
            .map(|r| user_row(&r))
            .transpose()
    }

    fn device_add(&self, d: &DeviceRecord) -> Result<()> {
        let n = self.conn()?.execute(
            "INSERT INTO fieldsync.devices (id, label, code_hash, secret_hash, revoked, created_at, paired_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            &[
                &d.id,
                &d.label,
                &d.code_hash,
                &d.secret_hash,
                &d.revoked,
                &d.created_at.to_string(),
                &d.paired_at.map(|t| t.to_string()),
            ],
        )?;
        crate::catalog::added(n != 0, "device", &d.id)
    }

    fn device_get(&self, id: &str) -> Result<Option<DeviceRecord>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM fieldsync.devices WHERE id = $1"),
                &[&id],
            )?
            .map(|r| device_row(&r))
            .transpose()
    }

    fn device_pair(
        &self,
        id: &str,
        code_hash: &str,
        secret_hash: &str,
        at: Timestamp,
    ) -> Result<bool> {
        // One statement: the code is consumed exactly once even if two devices race.
        let n = self.conn()?.execute(
            "UPDATE fieldsync.devices SET code_hash = NULL, secret_hash = $3, paired_at = $4
             WHERE id = $1 AND code_hash = $2 AND NOT revoked",
            &[&id, &code_hash, &secret_hash, &at.to_string()],
        )?;
        Ok(n == 1)
    }

    fn task_put(&self, def: &TaskDef, hash: &str, at: Timestamp) -> Result<()> {
        let at = at.to_string();
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let mut infos = std::collections::HashMap::new();
            for t in &def.tables {
                infos.insert(t.name.clone(), table_info(tx, &t.name)?);
                if let Some(p) = &t.parent {
                    infos.insert(p.table.clone(), table_info(tx, &p.table)?);
                }
            }
            plan::check_task(def, &|t| Ok(infos.get(t).cloned().flatten()))?;
            let json = serde_json::to_string(def).expect("task serializes");
            tx.execute(
                "INSERT INTO fieldsync.tasks (name, definition, hash, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, hash = excluded.hash,
                     updated_at = excluded.updated_at",
                &[&def.name, &json, &hash, &at],
            )?;
            tx.execute(
                "INSERT INTO fieldsync.task_versions (hash, name, definition, at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&hash, &def.name, &json, &at],
            )?;
            super::tracking::rewatch(tx)
        })
    }

    fn task_version(&self, hash: &str) -> Result<Option<TaskDef>> {
        self.conn()?
            .query_opt(
                "SELECT definition FROM fieldsync.task_versions WHERE hash = $1",
                &[&hash],
            )?
            .map(|r| {
                serde_json::from_str(&r.get::<_, String>(0))
                    .map_err(|e| StoreError::Db(format!("stored task version unreadable: {e}")))
            })
            .transpose()
    }

    fn task_get(&self, name: &str) -> Result<Option<TaskRecord>> {
        let mut c = self.conn()?;
        let row = c.query_opt(
            "SELECT definition, hash, updated_at FROM fieldsync.tasks WHERE name = $1",
            &[&name],
        )?;
        row.map(|r| {
            task_record(
                &mut *c,
                name,
                r.get(0),
                r.get(1),
                time_at(&r, 2, "updated_at")?,
            )
        })
        .transpose()
    }

    fn task_list(&self) -> Result<Vec<TaskRecord>> {
        let mut c = self.conn()?;
        let rows = c.query(
            "SELECT name, definition, hash, updated_at FROM fieldsync.tasks ORDER BY name COLLATE \"C\"",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                task_record(
                    &mut *c,
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    time_at(r, 3, "updated_at")?,
                )
            })
            .collect()
    }

    fn tasks_assigned(&self, user: &str, device: &str) -> Result<Vec<AssignedTask>> {
        assigned_tasks(&mut *self.conn()?, None, user, device)
    }

    fn task_assigned(&self, name: &str, user: &str, device: &str) -> Result<Option<AssignedTask>> {
        Ok(
            assigned_tasks(&mut *self.conn()?, Some(name), user, device)?
                .into_iter()
                .next(),
        )
    }

    fn task_assign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let mut exists =
                |sql: &str, v: &str| -> Result<bool> { Ok(tx.query_opt(sql, &[&v])?.is_some()) };
            crate::catalog::found(
                exists("SELECT 1 FROM fieldsync.tasks WHERE name = $1", name)?,
                "task",
                name,
            )?;
            for u in users {
                crate::catalog::found(
                    exists("SELECT 1 FROM fieldsync.users WHERE name = $1", u)?,
                    "user",
                    u,
                )?;
            }
            for d in devices {
                crate::catalog::found(
                    exists("SELECT 1 FROM fieldsync.devices WHERE id = $1", d)?,
                    "device",
                    d,
                )?;
            }
            for u in users {
                tx.execute(
                    "INSERT INTO fieldsync.task_users (task, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, u],
                )?;
            }
            for d in devices {
                tx.execute(
                    "INSERT INTO fieldsync.task_devices (task, device) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, d],
                )?;
            }
            Ok(())
        })
    }

    fn session_put(&self, s: &SessionRecord) -> Result<()> {
        let (created_at, expires_at) = (s.created_at.to_string(), s.expires_at.to_string());
        let mut c = self.conn()?;
        let (scope, scope_task) = crate::catalog::scope_columns(&s.scope);
        c.execute(
            "INSERT INTO fieldsync.sessions (token_hash, device, user_name, created_at, expires_at, scope, scope_task)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&s.token_hash, &s.device, &s.user, &created_at, &expires_at, &scope, &scope_task],
        )?;
        c.execute(
            "INSERT INTO fieldsync.device_users (device, user_name, first_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&s.device, &s.user, &created_at],
        )?;
        // Expired sessions are of no use to anyone; drop them while we are here.
        c.execute(
            "DELETE FROM fieldsync.sessions WHERE expires_at < $1",
            &[&created_at],
        )?;
        Ok(())
    }

    fn clock_ms(&self) -> Result<i64> {
        Ok(self
            .conn()?
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8",
                &[],
            )?
            .get(0))
    }

    fn session_get(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        self
            .conn()?
            .query_opt(
                "SELECT token_hash, device, user_name, created_at, expires_at, scope, scope_task
                 FROM fieldsync.sessions
                 WHERE token_hash = $1
                   AND expires_at > to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                &[&token_hash],
            )?
            .map(|r| -> Result<SessionRecord> {
                Ok(SessionRecord {
                    token_hash: r.get(0),
                    device: r.get(1),
                    user: r.get(2),
                    created_at: time_at(&r, 3, "created_at")?,
                    expires_at: time_at(&r, 4, "expires_at")?,
                    scope: crate::catalog::scope_of(r.get(5), r.get(6))?,
                })
            })
            .transpose()
    }

    fn session_delete(&self, token_hash: &str) -> Result<()> {
        self.conn()?.execute(
            "DELETE FROM fieldsync.sessions WHERE token_hash = $1",
            &[&token_hash],
        )?;
        Ok(())
    }

    fn user_list(&self) -> Result<Vec<UserRecord>> {
        self.conn()?
            .query(
                &format!("SELECT {USER_COLUMNS} FROM fieldsync.users ORDER BY name COLLATE \"C\""),
                &[],
            )?
            .iter()
            .map(user_row)
            .collect::<Result<_>>()
    }

    /// A new password ends the user's sessions, as disabling does.
    fn user_set_password(&self, name: &str, password_hash: &str) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let n = tx.execute(
                "UPDATE fieldsync.users SET password_hash = $2 WHERE name = $1",
                &[&name, &password_hash],
            )?;
            crate::catalog::found(n != 0, "user", name)?;
            tx.execute(
                "DELETE FROM fieldsync.sessions WHERE user_name = $1",
                &[&name],
            )?;
            tx.execute(
                "DELETE FROM fieldsync.tickets WHERE user_name = $1",
                &[&name],
            )?;
            Ok(())
        })
    }

    fn user_set_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let n = tx.execute(
                "UPDATE fieldsync.users SET disabled = $2 WHERE name = $1",
                &[&name, &disabled],
            )?;
            crate::catalog::found(n != 0, "user", name)?;
            // Disabled, the user's sessions stay, refused by the user's state (so the
            // device hears "disabled", not "expired"); enabled again, they are gone:
            // the user logs in afresh. Tickets go at once.
            tx.execute(
                "DELETE FROM fieldsync.tickets WHERE user_name = $1",
                &[&name],
            )?;
            if !disabled {
                tx.execute(
                    "DELETE FROM fieldsync.sessions WHERE user_name = $1",
                    &[&name],
                )?;
            }
            Ok(())
        })
    }

    fn device_revoke(&self, id: &str, keep_changes: bool) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let n = tx.execute(
                "UPDATE fieldsync.devices SET revoked = true, keep_changes = $2 WHERE id = $1",
                &[&id, &keep_changes],
            )?;
            crate::catalog::found(n != 0, "device", id)?;
            tx.execute("DELETE FROM fieldsync.sessions WHERE device = $1", &[&id])?;
            tx.execute("DELETE FROM fieldsync.tickets WHERE device = $1", &[&id])?;
            Ok(())
        })
    }

    fn device_list(&self) -> Result<Vec<DeviceRecord>> {
        self.conn()?
            .query(
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM fieldsync.devices ORDER BY id COLLATE \"C\""
                ),
                &[],
            )?
            .iter()
            .map(device_row)
            .collect::<Result<_>>()
    }

    fn task_delete(&self, name: &str) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let n = tx.execute("DELETE FROM fieldsync.tasks WHERE name = $1", &[&name])?;
            crate::catalog::found(n != 0, "task", name)?;
            super::tracking::rewatch(tx)
        })
    }

    fn task_unassign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            if tx
                .query_opt("SELECT 1 FROM fieldsync.tasks WHERE name = $1", &[&name])?
                .is_none()
            {
                return Err(StoreError::NotFound(format!("no task `{name}`")));
            }
            for u in users {
                tx.execute(
                    "DELETE FROM fieldsync.task_users WHERE task = $1 AND user_name = $2",
                    &[&name, u],
                )?;
            }
            for d in devices {
                tx.execute(
                    "DELETE FROM fieldsync.task_devices WHERE task = $1 AND device = $2",
                    &[&name, d],
                )?;
            }
            Ok(())
        })
    }
}

const USER_COLUMNS: &str = "name, password_hash, admin, disabled, created_at";
const DEVICE_COLUMNS: &str =
    "id, label, code_hash, secret_hash, revoked, created_at, paired_at, keep_changes";

fn user_row(r: &postgres::Row) -> Result<UserRecord> {
    Ok(UserRecord {
        name: r.get(0),
        password_hash: r.get(1),
        admin: r.get(2),
        disabled: r.get(3),
        created_at: time_at(r, 4, "created_at")?,
    })
}

fn device_row(r: &postgres::Row) -> Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: r.get(0),
        label: r.get(1),
        code_hash: r.get(2),
        secret_hash: r.get(3),
        revoked: r.get(4),
        created_at: time_at(r, 5, "created_at")?,
        paired_at: opt_time_at(r, 6, "paired_at")?,
        keep_changes: r.get(7),
    })
}
