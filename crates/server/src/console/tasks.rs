//! Tasks: each task's definition, its assignments (assign and unassign through the
//! store's calls that `admin task assign|unassign` make, with the same unsent-changes
//! guard), and a preview of its slice for a chosen user and device.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use fieldsync_proto::filter::Params;
use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::task::{TaskDef, WriteOp};
use fieldsync_store::{SliceSink, Store, TaskRecord};

use super::html::{self, bytes, esc, seg};
use super::{Admin, Failure, Page, blocking, field, html_response};
use crate::api::AppState;

/// Sample rows shown per table in a preview.
const SAMPLE_ROWS: usize = 5;

/// `GET /admin/tasks`.
pub async fn list(State(st): State<AppState>, admin: Admin) -> Page {
    let store = st.store.clone();
    let tasks = blocking(move || Ok(store.task_list()?)).await?;
    let mut body = String::from(
        r#"<div class="scroll"><table><thead><tr><th scope="col">Task</th><th scope="col">Description</th><th scope="col">Tables</th><th scope="col">Users</th><th scope="col">Devices</th><th scope="col">Applied</th></tr></thead><tbody>"#,
    );
    for t in &tasks {
        let _ = write!(
            body,
            r#"<tr><th scope="row"><a href="/admin/tasks/{}">{}</a></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            seg(&t.def.name),
            esc(&t.def.name),
            t.def.description.as_deref().map_or("".into(), esc),
            esc(&names(t.def.tables.iter().map(|x| x.name.as_str()))),
            esc(&names(t.users.iter().map(String::as_str))),
            esc(&names(t.devices.iter().map(String::as_str))),
            t.updated_at
        );
    }
    body.push_str(r#"</tbody></table></div><p class="muted">Tasks are written as files and applied with <code>fieldsync admin task apply FILE</code>.</p>"#);
    Ok(html_response(
        StatusCode::OK,
        html::page(Some(&admin.chrome("tasks")), "Tasks", &body),
    ))
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn definition(def: &TaskDef) -> String {
    let mut out = String::from(
        r#"<div class="scroll"><table><thead><tr><th scope="col">Table</th><th scope="col">Rows</th><th scope="col">Columns</th><th scope="col">Writes</th><th scope="col">Conflict policy</th></tr></thead><tbody>"#,
    );
    for t in &def.tables {
        let mut rows = vec![];
        if let Some(p) = &t.parent {
            rows.push(format!(
                "those whose {} row ({} = its key) is in the slice",
                p.table, p.key
            ));
        }
        if let Some(f) = &t.filter {
            rows.push(format!("where {f}"));
        }
        let writes: Vec<&str> = t
            .write
            .iter()
            .map(|w| match w {
                WriteOp::Insert => "insert",
                WriteOp::Update => "update",
                WriteOp::Delete => "delete",
            })
            .collect();
        let policy = serde_json::to_value(t.conflict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            out,
            r#"<tr><th scope="row">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&t.name),
            esc(&if rows.is_empty() {
                "all".into()
            } else {
                rows.join(", and ")
            }),
            esc(&t.columns.as_ref().map_or("all".into(), |c| c.join(", "))),
            if writes.is_empty() {
                "none (read-only)".into()
            } else {
                writes.join(", ")
            },
            if writes.is_empty() {
                "-".into()
            } else {
                esc(&policy)
            },
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

fn options(items: &[String], chosen: &str) -> String {
    let mut out = String::new();
    for i in items {
        let _ = write!(
            out,
            r#"<option value="{0}"{1}>{0}</option>"#,
            esc(i),
            if i == chosen { " selected" } else { "" }
        );
    }
    out
}

/// `GET /admin/tasks/{name}[?user=U&device=D]`: the task, and a preview when asked.
pub async fn show(
    State(st): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let store = st.store.clone();
    let (user, device) = (
        field(&q, "user").to_string(),
        field(&q, "device").to_string(),
    );
    let (key, pu, pd) = (name.clone(), user.clone(), device.clone());
    let (task, users, devices, preview) = blocking(move || {
        let task = store.task_get(&key)?;
        let users: Vec<String> = store.user_list()?.into_iter().map(|u| u.name).collect();
        let devices: Vec<String> = store.device_list()?.into_iter().map(|d| d.id).collect();
        let preview = match (&task, pu.is_empty() || pd.is_empty()) {
            (Some(t), false) => Some(preview(&*store, &t.def, &pu, &pd)),
            _ => None,
        };
        Ok((task, users, devices, preview))
    })
    .await?;
    let t: TaskRecord =
        task.ok_or_else(|| Failure::Refused(StatusCode::NOT_FOUND, format!("no task `{name}`")))?;
    let path = format!("/admin/tasks/{}", seg(&t.def.name));
    let mut body = format!(
        r#"<p>{} <span class="muted">(version {}, applied {})</span></p><h2>Definition</h2>{}"#,
        t.def.description.as_deref().map_or("".into(), esc),
        esc(&t.hash),
        t.updated_at,
        definition(&t.def),
    );
    body.push_str("<h2>Assignments</h2><p class=\"muted\">A device syncs a task when both its user and the device itself are assigned.</p><div class=\"side\">");
    for (kind, title, list) in [
        ("user", "Users", &t.users),
        ("device", "Devices", &t.devices),
    ] {
        let _ = write!(body, r#"<div><h3>{title}</h3><ul>"#);
        for who in list.iter() {
            let _ = write!(
                body,
                r#"<li>{} {}</li>"#,
                esc(who),
                html::button_form(
                    &format!("{path}/unassign"),
                    &admin.csrf,
                    &format!("Unassign {who}"),
                    &format!(
                        r#"<input type="hidden" name="{kind}" value="{}">"#,
                        esc(who)
                    ),
                )
            );
        }
        if list.is_empty() {
            body.push_str("<li class=\"muted\">none</li>");
        }
        body.push_str("</ul></div>");
    }
    body.push_str("</div>");
    let _ = write!(
        body,
        r#"<form method="post" action="{path}/assign" class="row">{}<div><label for="assign-user">User</label><select id="assign-user" name="user"><option value="">—</option>{}</select></div><div><label for="assign-device">Device</label><select id="assign-device" name="device"><option value="">—</option>{}</select></div><button type="submit">Assign</button></form>"#,
        html::csrf_field(&admin.csrf),
        options(&users, ""),
        options(&devices, ""),
    );
    let _ = write!(
        body,
        r#"<h2>Preview</h2><form method="get" action="{path}" class="row"><div><label for="preview-user">As user</label><select id="preview-user" name="user" required>{}</select></div><div><label for="preview-device">On device</label><select id="preview-device" name="device" required>{}</select></div><button type="submit" class="secondary">Preview the slice</button></form>"#,
        options(&users, &user),
        options(&devices, &device),
    );
    match preview {
        None => {}
        Some(Err(e)) => body.push_str(&html::notice("error", &e)),
        Some(Ok(p)) => body.push_str(&p),
    }
    Ok(html_response(
        StatusCode::OK,
        html::page(
            Some(&admin.chrome("tasks")),
            &format!("Task {}", t.def.name),
            &body,
        ),
    ))
}

/// Counts rows and bytes and keeps the first rows of each table.
struct Counting {
    counts: Vec<u64>,
    bytes: Vec<u64>,
    samples: Vec<Vec<Vec<String>>>,
}

impl SliceSink for Counting {
    fn begin(
        &mut self,
        _cursor: fieldsync_proto::wire::Cursor,
        rows_per_table: &[u64],
        _refused: Option<fieldsync_proto::wire::FullReason>,
    ) -> fieldsync_store::Result<()> {
        let n = rows_per_table.len();
        self.counts = rows_per_table.to_vec();
        self.bytes = vec![0; n];
        self.samples = vec![vec![]; n];
        Ok(())
    }

    fn row(
        &mut self,
        t: usize,
        values: &mut dyn Iterator<Item = ValueRef<'_>>,
    ) -> fieldsync_store::Result<()> {
        let keep = self.samples.get(t).is_some_and(|s| s.len() < SAMPLE_ROWS);
        let mut row = vec![];
        for v in values {
            let (size, text) = match v {
                ValueRef::Null => (1, "NULL".to_string()),
                ValueRef::Integer(i) => (8, i.to_string()),
                ValueRef::Real(r) => (8, r.to_string()),
                ValueRef::Text(s) => (s.len() as u64, s.to_string()),
                ValueRef::Blob(b) => (b.len() as u64, format!("({} bytes)", b.len())),
            };
            if let Some(b) = self.bytes.get_mut(t) {
                *b += size;
            }
            if keep {
                row.push(text);
            }
        }
        if keep && let Some(s) = self.samples.get_mut(t) {
            s.push(row);
        }
        Ok(())
    }
}

/// The slice `user` on `device` would download now: rows per table, the first rows,
/// and the values' size before compression. Read as a download reads it (one
/// snapshot), whether or not the task is assigned to them (the page says which).
fn preview(store: &dyn Store, def: &TaskDef, user: &str, device: &str) -> Result<String, String> {
    let params = Params {
        user: user.to_string(),
        device: device.to_string(),
    };
    let plan = fieldsync_store::plan_slice(store, def, &params).map_err(|e| e.to_string())?;
    let mut sink = Counting {
        counts: vec![],
        bytes: vec![],
        samples: vec![],
    };
    store
        .stream_slice(&plan, &mut sink)
        .map_err(|e| e.to_string())?;
    let assigned = store
        .task_assigned(&def.name, user, device)
        .map_err(|e| e.to_string())?
        .is_some();
    let total: u64 = sink.bytes.iter().sum();
    let mut out = format!(
        r#"<div class="card" id="preview"><p>For user <strong>{}</strong> on device <strong>{}</strong>: {} rows, about {} of values before compression. {}</p>"#,
        esc(user),
        esc(device),
        sink.counts.iter().sum::<u64>(),
        bytes(total),
        if assigned {
            r#"<span class="good">Assigned to both: this is what they download.</span>"#
        } else {
            r#"<span class="warn">Not assigned to both: they would be refused this task.</span>"#
        }
    );
    out.push_str(r#"<table><thead><tr><th scope="col">Table</th><th scope="col">Rows</th><th scope="col">Estimated bytes</th></tr></thead><tbody>"#);
    for (i, tp) in plan.tables.iter().enumerate() {
        let _ = write!(
            out,
            r#"<tr><th scope="row">{}</th><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(&tp.schema.name),
            sink.counts.get(i).copied().unwrap_or(0),
            bytes(sink.bytes.get(i).copied().unwrap_or(0))
        );
    }
    out.push_str("</tbody></table>");
    for (i, tp) in plan.tables.iter().enumerate() {
        let _ = write!(
            out,
            r#"<h3>{} <span class="muted">(first rows)</span></h3><div class="scroll"><table><thead><tr>"#,
            esc(&tp.schema.name)
        );
        for c in &tp.schema.columns {
            let _ = write!(out, r#"<th scope="col">{}</th>"#, esc(&c.name));
        }
        out.push_str("</tr></thead><tbody>");
        for row in sink.samples.get(i).map_or(&[][..], |s| &s[..]) {
            out.push_str("<tr>");
            for v in row {
                let v: String = v.chars().take(80).collect();
                let _ = write!(out, "<td>{}</td>", esc(&v));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</div>");
    Ok(out)
}

/// The user and device a posted assignment form names (at least one).
fn whom(form: &HashMap<String, String>) -> Result<(Vec<String>, Vec<String>), Failure> {
    let one = |k: &str| -> Vec<String> {
        Some(field(form, k))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .into_iter()
            .collect()
    };
    let (users, devices) = (one("user"), one("device"));
    if users.is_empty() && devices.is_empty() {
        return Err(Failure::Refused(
            StatusCode::BAD_REQUEST,
            "choose a user or a device".into(),
        ));
    }
    Ok((users, devices))
}

/// `POST /admin/tasks/{name}/assign`.
pub async fn assign(
    State(st): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    admin.form(&form)?;
    let (users, devices) = whom(&form)?;
    let store = st.store.clone();
    let task = name.clone();
    blocking(move || {
        crate::admin::task_assign(&*store, &task, &users, &devices)?;
        let detail = format!("users: {}; devices: {}", users.join(","), devices.join(","));
        admin.audit(&*store, "admin.task.assign", &task, &detail);
        Ok(())
    })
    .await?;
    Ok(Redirect::to(&format!("/admin/tasks/{}", seg(&name))).into_response())
}

/// `POST /admin/tasks/{name}/unassign`: refused while devices concerned reported
/// unsent changes, as `admin task unassign` without `--force`.
pub async fn unassign(
    State(st): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    admin.form(&form)?;
    let (users, devices) = whom(&form)?;
    let store = st.store.clone();
    let task = name.clone();
    blocking(move || {
        let s = crate::admin::Stranding {
            task: Some(&task),
            users: &users,
            devices: &devices,
            change: format!("unassigning task `{task}`"),
        };
        crate::admin::guard_unsent(&*store, &s, false)?;
        store.task_unassign(&task, &users, &devices)?;
        let detail = format!("users: {}; devices: {}", users.join(","), devices.join(","));
        admin.audit(&*store, "admin.task.unassign", &task, &detail);
        Ok(())
    })
    .await?;
    Ok(Redirect::to(&format!("/admin/tasks/{}", seg(&name))).into_response())
}
