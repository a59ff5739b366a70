//! The fleet page (every device, stuck ones first) and one device's page with its
//! sync history: what `admin device list` and `admin history` show.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use fieldsync_proto::time::Timestamp;
use fieldsync_store::{DeviceRecord, DeviceSeen, HistoryRecord};

use super::html::{self, bytes, esc, seg, when};
use super::{Admin, Failure, Page, blocking, html_response};
use crate::api::AppState;

/// Errors in a row after which a device is stuck, whatever its last success.
pub const ERRORS_IN_A_ROW: u32 = 3;

/// What the history says of one device.
#[derive(Default)]
struct Summary<'h> {
    last: Option<&'h HistoryRecord>,
    last_ok: Option<Timestamp>,
    /// Syncs ended in error since the last one that did not.
    errors_in_row: u32,
}

/// Each device's summary, from the history (oldest first) in one pass.
fn summaries(history: &[HistoryRecord]) -> HashMap<&str, Summary<'_>> {
    let mut map: HashMap<&str, Summary<'_>> = HashMap::new();
    for h in history {
        let s = map.entry(h.device.as_str()).or_default();
        s.last = Some(h);
        match h.result.as_str() {
            "ok" => {
                s.last_ok = Some(h.started_at);
                s.errors_in_row = 0;
            }
            "error" => s.errors_in_row += 1,
            _ => {}
        }
    }
    map
}

/// Why a device is stuck, if it is: `ERRORS_IN_A_ROW` failures in a row, or no
/// successful sync within `stuck_after_ms` of now (counted from its pairing when it
/// never synced). A device not paired, or revoked, is not stuck: it is not expected
/// to sync.
fn stuck(
    d: &DeviceRecord,
    s: Option<&Summary<'_>>,
    now: Timestamp,
    after_ms: i64,
) -> Option<String> {
    if d.revoked {
        return None;
    }
    let paired_at = d.paired_at?;
    if let Some(s) = s
        && s.errors_in_row >= ERRORS_IN_A_ROW
    {
        return Some(format!("{} failed syncs in a row", s.errors_in_row));
    }
    let since = s.and_then(|s| s.last_ok);
    if now.unix_ms() - since.unwrap_or(paired_at).unix_ms() > after_ms {
        return Some(match since {
            Some(t) => format!("no successful sync since {t}"),
            None => format!("no successful sync since pairing ({paired_at})"),
        });
    }
    None
}

fn state_of(d: &DeviceRecord) -> &'static str {
    match (d.revoked, d.secret_hash.is_some()) {
        (true, _) => "revoked",
        (false, true) => "paired",
        (false, false) => "not paired",
    }
}

fn result_cell(result: &str) -> String {
    let class = match result {
        "ok" => "good",
        "error" => "bad",
        _ => "warn",
    };
    format!(r#"<span class="{class}">{}</span>"#, esc(result))
}

fn sync_cells(h: Option<&HistoryRecord>) -> String {
    let Some(h) = h else {
        return r#"<td colspan="6" class="muted">never synced</td>"#.to_string();
    };
    format!(
        r#"<td>{} <span class="muted">{}</span></td><td>{}</td><td class="msg">{}{}</td><td class="num">{} ↓ / {} ↑</td><td class="num">{} ↓ / {} ↑</td><td class="num">{} ms</td>"#,
        esc(h.op.as_str()),
        when(h.started_at),
        esc(h.trigger.as_str()),
        result_cell(&h.result),
        if h.message.is_empty() {
            String::new()
        } else {
            format!(r#"<br><span class="muted">{}</span>"#, esc(&h.message))
        },
        h.rows_down,
        h.rows_up,
        bytes(h.bytes_down),
        bytes(h.bytes_up),
        h.duration_ms
    )
}

/// `GET /admin`: every device, stuck ones first.
pub async fn fleet(State(st): State<AppState>, admin: Admin) -> Page {
    let store = st.store.clone();
    let after_ms = i64::try_from(st.console.stuck_after.as_millis()).unwrap_or(i64::MAX);
    let (devices, seen, history) = blocking(move || {
        Ok((
            store.device_list()?,
            store.devices_seen()?,
            store.history()?,
        ))
    })
    .await?;
    let now = Timestamp::now();
    let sums = summaries(&history);
    let seen: HashMap<&str, &DeviceSeen> = seen.iter().map(|s| (s.device.as_str(), s)).collect();
    let mut rows: Vec<(Option<String>, &DeviceRecord)> = devices
        .iter()
        .map(|d| (stuck(d, sums.get(d.id.as_str()), now, after_ms), d))
        .collect();
    rows.sort_by(|a, b| b.0.is_some().cmp(&a.0.is_some()).then(a.1.id.cmp(&b.1.id)));
    let n_stuck = rows.iter().filter(|r| r.0.is_some()).count();
    let mut body = format!(
        r#"<p>{} devices; <strong class="{}">{n_stuck} stuck</strong> (no successful sync within {}, or {ERRORS_IN_A_ROW} failures in a row), listed first.</p>
<div class="scroll wide"><table><caption class="muted">Devices</caption><thead><tr><th scope="col">Device</th><th scope="col">State</th><th scope="col">User</th><th scope="col">Task</th><th scope="col">Last contact</th><th scope="col">Pending</th><th scope="col">Last sync</th><th scope="col">Kind</th><th scope="col">Result</th><th scope="col">Rows</th><th scope="col">Bytes</th><th scope="col">Duration</th></tr></thead><tbody>"#,
        rows.len(),
        if n_stuck > 0 { "bad" } else { "good" },
        human_duration(st.console.stuck_after),
    );
    for (why, d) in &rows {
        let s = seen.get(d.id.as_str());
        let label = d
            .label
            .as_deref()
            .map(|l| format!(r#"<br><span class="muted">{}</span>"#, esc(l)))
            .unwrap_or_default();
        let state = match why {
            Some(w) => format!(
                r#"{}<br><span class="bad">stuck: {}</span>"#,
                state_of(d),
                esc(w)
            ),
            None => state_of(d).to_string(),
        };
        let _ = write!(
            body,
            r#"<tr{}><th scope="row"><a href="/admin/devices/{}">{}</a>{label}</th><td>{state}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td>{}</tr>"#,
            if why.is_some() {
                r#" class="stuck""#
            } else {
                ""
            },
            seg(&d.id),
            esc(&d.id),
            s.map_or("-".into(), |s| esc(&s.user)),
            s.and_then(|s| s.task.as_deref()).map_or("-".into(), esc),
            s.map_or("-".into(), |s| when(s.at)),
            s.and_then(|s| s.pending)
                .map_or("-".into(), |n| n.to_string()),
            sync_cells(sums.get(d.id.as_str()).and_then(|x| x.last)),
        );
    }
    body.push_str("</tbody></table></div>");
    Ok(html_response(
        StatusCode::OK,
        html::page(Some(&admin.chrome("fleet")), "Fleet", &body),
    ))
}

/// `30d`, `6h`, `15m`: a duration as `--stuck-after` takes it.
pub fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// The newest history entries shown on a device's page.
const DEVICE_HISTORY: usize = 500;

/// `GET /admin/devices/{id}`: the device and its sync history, newest first.
pub async fn device(State(st): State<AppState>, admin: Admin, Path(id): Path<String>) -> Page {
    let store = st.store.clone();
    let key = id.clone();
    let (device, seen, history) = blocking(move || {
        let d = store.device_get(&key)?;
        let seen = store.devices_seen()?.into_iter().find(|s| s.device == key);
        let mut h = store.history()?;
        h.retain(|r| r.device == key);
        Ok((d, seen, h))
    })
    .await?;
    let d = device
        .ok_or_else(|| Failure::Refused(StatusCode::NOT_FOUND, format!("no device `{id}`")))?;
    let mut body = format!(
        r#"<dl class="card"><dt>Label</dt><dd>{}</dd><dt>State</dt><dd>{}</dd><dt>Registered</dt><dd>{}</dd><dt>Paired</dt><dd>{}</dd><dt>Last contact</dt><dd>{}</dd></dl>"#,
        d.label.as_deref().map_or("-".into(), esc),
        state_of(&d),
        d.created_at,
        d.paired_at.map_or("-".into(), |t| t.to_string()),
        seen.as_ref().map_or("never".into(), |s| format!(
            "{} as user {}, holding task {} with {} unsent change(s)",
            s.at,
            esc(&s.user),
            s.task.as_deref().map_or("-".into(), esc),
            s.pending.map_or("?".into(), |n| n.to_string())
        )),
    );
    if !d.revoked {
        let _ = write!(
            body,
            r#"<form method="post" action="/admin/devices/{}/revoke" class="row">{}<label><input type="checkbox" name="keep_changes" value="1"> keep its unsent changes in a backup file</label><button type="submit">Revoke this device</button></form>"#,
            seg(&d.id),
            html::csrf_field(&admin.csrf)
        );
    }
    let _ = write!(
        body,
        r#"<h2>Sync history</h2><p class="muted">{} entries{}, newest first.</p><div class="scroll wide"><table><thead><tr><th scope="col">Started</th><th scope="col">User</th><th scope="col">Task</th><th scope="col">Op</th><th scope="col">Kind</th><th scope="col">Result</th><th scope="col">Rows</th><th scope="col">Bytes</th><th scope="col">Conflicts</th><th scope="col">Duration</th></tr></thead><tbody>"#,
        history.len(),
        if history.len() > DEVICE_HISTORY {
            format!(" (the newest {DEVICE_HISTORY} shown)")
        } else {
            String::new()
        }
    );
    for h in history.iter().rev().take(DEVICE_HISTORY) {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td class="msg">{}{}</td><td class="num">{} ↓ / {} ↑</td><td class="num">{} ↓ / {} ↑</td><td class="num">{}</td><td class="num">{} ms</td></tr>"#,
            when(h.started_at),
            esc(&h.user),
            h.task.as_deref().map_or("-".into(), esc),
            esc(h.op.as_str()),
            if h.full { " (full)" } else { "" },
            esc(h.trigger.as_str()),
            result_cell(&h.result),
            if h.message.is_empty() {
                String::new()
            } else {
                format!(r#"<br><span class="muted">{}</span>"#, esc(&h.message))
            },
            h.rows_down,
            h.rows_up,
            bytes(h.bytes_down),
            bytes(h.bytes_up),
            h.conflicts,
            h.duration_ms
        );
    }
    body.push_str("</tbody></table></div>");
    Ok(html_response(
        StatusCode::OK,
        html::page(
            Some(&admin.chrome("fleet")),
            &format!("Device {}", d.id),
            &body,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_proto::wire::{SyncOp, Trigger};

    fn sync(device: &str, result: &str, at_ms: i64) -> HistoryRecord {
        HistoryRecord {
            device: device.into(),
            user: "ana".into(),
            task: None,
            op: SyncOp::Sync,
            trigger: Trigger::Manual,
            result: result.into(),
            message: String::new(),
            rows_down: 0,
            rows_up: 0,
            bytes_down: 0,
            bytes_up: 0,
            conflicts: 0,
            started_at: Timestamp::from_unix_ms(at_ms),
            duration_ms: 1,
            full: false,
            full_reason: None,
        }
    }

    fn paired(id: &str, at_ms: i64) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            label: None,
            code_hash: None,
            secret_hash: Some("x".into()),
            revoked: false,
            keep_changes: false,
            created_at: Timestamp::from_unix_ms(at_ms),
            paired_at: Some(Timestamp::from_unix_ms(at_ms)),
        }
    }

    #[test]
    fn stuck_is_errors_in_a_row_or_no_success_within_the_time() {
        let h = vec![
            sync("a", "ok", 900),
            sync("b", "ok", 100),
            sync("c", "ok", 950),
            sync("c", "error", 960),
            sync("c", "error", 970),
            sync("c", "error", 980),
            sync("e", "error", 990),
            sync("e", "ok", 995),
        ];
        let s = summaries(&h);
        let now = Timestamp::from_unix_ms(1000);
        let is = |id: &str, paired_at: i64| stuck(&paired(id, paired_at), s.get(id), now, 500);
        assert_eq!(is("a", 0), None);
        assert!(is("b", 0).unwrap().contains("no successful sync since"));
        assert_eq!(is("c", 0).as_deref(), Some("3 failed syncs in a row"));
        assert!(is("d", 0).unwrap().contains("since pairing"));
        assert_eq!(is("d", 800), None);
        assert_eq!(is("e", 0), None);
        let mut revoked = paired("b", 0);
        revoked.revoked = true;
        assert_eq!(stuck(&revoked, s.get("b"), now, 500), None);
    }
}
