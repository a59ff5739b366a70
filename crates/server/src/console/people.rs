//! Users and devices: add a user, disable or enable one, enroll a device (its code
//! shown once), revoke one; through the functions `fieldsync admin` calls, with the
//! same unsent-changes guard for disabling.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};

use super::html::{self, esc, seg, when};
use super::{Admin, Failure, Page, blocking, field, html_response};
use crate::api::AppState;

/// `GET /admin/people`.
pub async fn page(State(st): State<AppState>, admin: Admin) -> Page {
    let store = st.store.clone();
    let (users, devices) = blocking(move || Ok((store.user_list()?, store.device_list()?))).await?;
    let csrf = html::csrf_field(&admin.csrf);
    let mut body = String::from(
        r#"<h2>Users</h2><div class="scroll"><table><thead><tr><th scope="col">User</th><th scope="col">Role</th><th scope="col">State</th><th scope="col">Added</th><th scope="col">Action</th></tr></thead><tbody>"#,
    );
    for u in &users {
        let (label, to) = if u.disabled {
            ("Enable", "enabled")
        } else {
            ("Disable", "disabled")
        };
        let action = if u.name == admin.user {
            r#"<span class="muted">you</span>"#.to_string()
        } else {
            html::button_form(
                &format!("/admin/users/{}/state", seg(&u.name)),
                &admin.csrf,
                &format!("{label} {}", u.name),
                &format!(r#"<input type="hidden" name="state" value="{to}">"#),
            )
        };
        let _ = write!(
            body,
            r#"<tr><th scope="row">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>"#,
            esc(&u.name),
            if u.admin { "administrator" } else { "user" },
            if u.disabled {
                r#"<span class="bad">disabled</span>"#
            } else {
                "enabled"
            },
            when(u.created_at),
        );
    }
    let _ = write!(
        body,
        r#"</tbody></table></div>
<h3>Add a user</h3><form method="post" action="/admin/users" class="stack">{csrf}
<div><label for="new-user">User name</label><input type="text" id="new-user" name="name" required></div>
<div><label for="new-password">Password</label><input type="password" id="new-password" name="password" autocomplete="new-password" required></div>
<div><label><input type="checkbox" name="admin" value="1"> administrator (may use this console)</label></div>
<div><button type="submit">Add user</button></div></form>
<h2>Devices</h2><div class="scroll"><table><thead><tr><th scope="col">Device</th><th scope="col">Label</th><th scope="col">State</th><th scope="col">Registered</th><th scope="col">Action</th></tr></thead><tbody>"#
    );
    for d in &devices {
        let state = match (d.revoked, d.secret_hash.is_some()) {
            (true, _) => r#"<span class="bad">revoked</span>"#,
            (false, true) => "paired",
            (false, false) => "waiting to pair",
        };
        let action = if d.revoked {
            String::new()
        } else {
            html::button_form(
                &format!("/admin/devices/{}/revoke", seg(&d.id)),
                &admin.csrf,
                &format!("Revoke {}", d.id),
                "",
            )
        };
        let _ = write!(
            body,
            r#"<tr><th scope="row"><a href="/admin/devices/{}">{}</a></th><td>{}</td><td>{state}</td><td>{}</td><td>{action}</td></tr>"#,
            seg(&d.id),
            esc(&d.id),
            d.label.as_deref().map_or("".into(), esc),
            when(d.created_at),
        );
    }
    let _ = write!(
        body,
        r#"</tbody></table></div>
<h3>Enroll a device</h3><form method="post" action="/admin/devices" class="stack">{csrf}
<div><label for="new-device">Device id</label><input type="text" id="new-device" name="id" required></div>
<div><label for="new-label">Label <span class="muted">(optional, e.g. "tablet of crew 3")</span></label><input type="text" id="new-label" name="label"></div>
<div><button type="submit">Enroll device</button></div></form>"#
    );
    Ok(html_response(
        StatusCode::OK,
        html::page(Some(&admin.chrome("people")), "Users and devices", &body),
    ))
}

/// `POST /admin/users`: name, password, admin.
pub async fn user_add(
    State(st): State<AppState>,
    admin: Admin,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    admin.form(&form)?;
    let name = field(&form, "name").to_string();
    let password = form.get("password").cloned().unwrap_or_default();
    let is_admin = field(&form, "admin") == "1";
    let store = st.store.clone();
    blocking(move || {
        crate::admin::user_add(&*store, &name, is_admin, &password)?;
        admin.audit(
            &*store,
            "admin.user.add",
            &name,
            if is_admin { "--admin" } else { "" },
        );
        Ok(())
    })
    .await?;
    Ok(Redirect::to("/admin/people").into_response())
}

/// `POST /admin/users/{name}/state`: `state` = `disabled` (refused while devices last
/// seen with the user reported unsent changes) or `enabled`.
pub async fn user_state(
    State(st): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    admin.form(&form)?;
    let disable = match field(&form, "state") {
        "disabled" => true,
        "enabled" => false,
        other => {
            return Err(Failure::Refused(
                StatusCode::BAD_REQUEST,
                format!("state `{other}`: disabled or enabled"),
            ));
        }
    };
    if disable && name == admin.user {
        return Err(Failure::Refused(
            StatusCode::BAD_REQUEST,
            "you cannot disable yourself here".into(),
        ));
    }
    let store = st.store.clone();
    blocking(move || {
        if disable {
            let users = [name.clone()];
            let s = crate::admin::Stranding {
                task: None,
                users: &users,
                devices: &[],
                change: format!("disabling user `{name}`"),
            };
            crate::admin::guard_unsent(&*store, &s, false)?;
        }
        store.user_set_disabled(&name, disable)?;
        let kind = if disable {
            "admin.user.disable"
        } else {
            "admin.user.enable"
        };
        admin.audit(&*store, kind, &name, "");
        Ok(())
    })
    .await?;
    Ok(Redirect::to("/admin/people").into_response())
}

/// `POST /admin/devices`: id, label. The answer shows the enrollment code, once.
pub async fn device_add(
    State(st): State<AppState>,
    admin: Admin,
    headers: axum::http::HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    // The address the browser reached this server at, for the pairing command shown.
    let server = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or("URL".to_string(), |host| {
            let scheme = if st.console.secure { "https" } else { "http" };
            format!("{scheme}://{host}")
        });
    admin.form(&form)?;
    let id = field(&form, "id").to_string();
    let label = Some(field(&form, "label").to_string()).filter(|l| !l.is_empty());
    let store = st.store.clone();
    let (key, user) = (id.clone(), admin.user.clone());
    let code = blocking(move || {
        let code = crate::admin::device_add(&*store, &key, label.as_deref())?;
        let detail = label.map(|l| format!("label `{l}`")).unwrap_or_default();
        if let Err(e) = crate::audit::admin_by(&*store, &user, "admin.device.add", &key, &detail) {
            tracing::warn!(error = %e, "console change not recorded in the audit log");
        }
        Ok(code)
    })
    .await?;
    let body = format!(
        r#"{}<p>Enrollment code of device <strong>{}</strong> (shown only now; it pairs once):</p>
<p class="code" id="enrollment-code">{}</p>
<p>On the device: <code>fieldsync device pair --server {} --device-id {} --code {}</code></p>
<p><a href="/admin/people">Back to users and devices</a></p>"#,
        html::notice("ok", &format!("Device {id} enrolled.")),
        esc(&id),
        esc(&code),
        esc(&server),
        esc(&id),
        esc(&code),
    );
    Ok(html_response(
        StatusCode::OK,
        html::page(Some(&admin.chrome("people")), "Device enrolled", &body),
    ))
}

/// `POST /admin/devices/{id}/revoke` [keep_changes=1].
pub async fn device_revoke(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    admin.form(&form)?;
    let keep = field(&form, "keep_changes") == "1";
    let store = st.store.clone();
    let key = id.clone();
    blocking(move || {
        store.device_revoke(&key, keep)?;
        admin.audit(
            &*store,
            "admin.device.revoke",
            &key,
            if keep { "--keep-changes" } else { "" },
        );
        Ok(())
    })
    .await?;
    Ok(Redirect::to(&format!("/admin/devices/{}", seg(&id))).into_response())
}
