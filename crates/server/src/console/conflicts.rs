//! The conflict inbox: open conflicts by task and table, the crew's and the office's
//! values side by side with what the policy chose; Resolve through the same function
//! as `admin conflicts resolve`; resolved ones with who and when.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use fieldsync_store::ConflictRecord;

use super::html::{self, esc};
use super::{Admin, Failure, Page, blocking, field, html_response};
use crate::api::AppState;

/// Resolved conflicts shown, newest first.
const RESOLVED_SHOWN: usize = 200;
/// Audit entries searched for who resolved each.
const AUDIT_SEARCHED: i64 = 20_000;

fn value_text(v: Option<&fieldsync_proto::Value>) -> String {
    match v {
        None => r#"<span class="muted">—</span>"#.into(),
        Some(v) => esc(&serde_json::to_string(v).unwrap_or_default()),
    }
}

fn side_by_side(c: &ConflictRecord) -> String {
    let columns: BTreeSet<&String> = c
        .device_values
        .keys()
        .chain(c.server_values.keys())
        .collect();
    let mut t = String::from(
        r#"<table><thead><tr><th scope="col">Column</th><th scope="col">Crew (device)</th><th scope="col">Office (server)</th></tr></thead><tbody>"#,
    );
    for col in columns {
        let (d, s) = (c.device_values.get(col), c.server_values.get(col));
        let differs = d != s;
        let _ = write!(
            t,
            r#"<tr><th scope="row">{}{}</th><td>{}</td><td>{}</td></tr>"#,
            esc(col),
            if differs {
                r#" <span class="warn">(differs)</span>"#
            } else {
                ""
            },
            value_text(d),
            value_text(s)
        );
    }
    t.push_str("</tbody></table>");
    t
}

/// `GET /admin/conflicts`.
pub async fn inbox(State(st): State<AppState>, admin: Admin) -> Page {
    let store = st.store.clone();
    let (all, audit) =
        blocking(move || Ok((store.conflicts_list()?, store.audit_list(AUDIT_SEARCHED)?))).await?;
    // Who resolved each, from the audit log (newest entry per conflict).
    let mut who: HashMap<String, String> = HashMap::new();
    for e in audit.iter().filter(|e| e.kind == "admin.conflict.resolve") {
        who.entry(e.subject.clone())
            .or_insert_with(|| e.actor.clone());
    }
    let (open, resolved): (Vec<&ConflictRecord>, Vec<&ConflictRecord>) =
        all.iter().partition(|c| c.resolved_take.is_none());
    let mut groups: BTreeMap<(&str, &str), Vec<&ConflictRecord>> = BTreeMap::new();
    for c in &open {
        groups.entry((&c.task, &c.table)).or_default().push(c);
    }
    let mut body = format!("<p>{} open, {} resolved.</p>", open.len(), resolved.len());
    for ((task, table), list) in &groups {
        let _ = write!(
            body,
            r#"<h2>Task {} · table {} <span class="muted">({} open)</span></h2>"#,
            esc(task),
            esc(table),
            list.len()
        );
        for c in list {
            let resolve = |take: &str, label: &str| {
                html::button_form(
                    &format!("/admin/conflicts/{}/resolve", c.id),
                    &admin.csrf,
                    label,
                    &format!(r#"<input type="hidden" name="take" value="{take}">"#),
                )
            };
            let _ = write!(
                body,
                r#"<section class="card" aria-labelledby="c{id}"><h3 id="c{id}">Conflict {id}: row {} <span class="muted">({} {}, {})</span></h3>
<p>{} by {} on device <a href="/admin/devices/{}">{}</a>. Policy <strong>{}</strong> chose: <strong>{}</strong>.</p>{}<p>{} {}</p></section>"#,
                esc(&serde_json::to_string(&c.key).unwrap_or_default()),
                esc(&c.op),
                esc(&c.kind),
                c.at,
                esc(&c.op),
                esc(&c.user),
                html::seg(&c.device),
                esc(&c.device),
                esc(&c.policy),
                esc(&c.resolution),
                side_by_side(c),
                resolve("device", "Take the crew's values"),
                resolve("server", "Take the office's values"),
                id = c.id,
            );
        }
    }
    if open.is_empty() {
        body.push_str(&html::notice("ok", "No open conflict."));
    }
    let mut resolved = resolved;
    resolved.sort_by_key(|c| std::cmp::Reverse(c.resolved_at));
    let _ = write!(
        body,
        r#"<h2>Resolved</h2><div class="scroll"><table><thead><tr><th scope="col">Conflict</th><th scope="col">Task</th><th scope="col">Table</th><th scope="col">Row</th><th scope="col">Took</th><th scope="col">By</th><th scope="col">When</th></tr></thead><tbody>"#
    );
    for c in resolved.iter().take(RESOLVED_SHOWN) {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.id,
            esc(&c.task),
            esc(&c.table),
            esc(&serde_json::to_string(&c.key).unwrap_or_default()),
            match c.resolved_take.as_deref() {
                Some("device") => "the crew's values",
                Some("server") => "the office's values",
                _ => "?",
            },
            who.get(&format!("conflict {}", c.id))
                .map_or("unknown".into(), |w| esc(w)),
            c.resolved_at.map_or("-".into(), |t| t.to_string())
        );
    }
    body.push_str("</tbody></table></div>");
    Ok(html_response(
        StatusCode::OK,
        html::page(Some(&admin.chrome("conflicts")), "Conflicts", &body),
    ))
}

/// `POST /admin/conflicts/{id}/resolve` with `take` = `device` or `server`.
pub async fn resolve(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    admin.form(&form)?;
    let take_device = match field(&form, "take") {
        "device" => true,
        "server" => false,
        other => {
            return Err(Failure::Refused(
                StatusCode::BAD_REQUEST,
                format!("take `{other}`: device or server"),
            ));
        }
    };
    let store = st.store.clone();
    blocking(move || {
        let c = crate::admin::conflict_resolve(&*store, id, take_device)?;
        let took = format!(
            "took the {} values",
            c.resolved_take.as_deref().unwrap_or("?")
        );
        admin.audit(
            &*store,
            "admin.conflict.resolve",
            &format!("conflict {id}"),
            &took,
        );
        Ok(())
    })
    .await?;
    Ok(Redirect::to("/admin/conflicts").into_response())
}
