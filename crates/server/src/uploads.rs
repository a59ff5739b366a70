//! The upload route: protocol, device credentials, a known upload id's recorded
//! outcome, the session; only then the body, streamed and bounded, then the task
//! checks and the integration.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{HEADER_UPLOAD_ID, SyncOp, UploadOutcome};
use fieldsync_store::{
    DeviceRecord, HistoryRecord, IntegrateContext, IntegrateError, Store, UserRecord,
};

use crate::api::{AppState, assigned_one, blocking, op_and_trigger, with_who};
use crate::auth;
use crate::error::ApiError;
use crate::request_log::{self, Who};
use crate::{integrators, tickets, upload_body};

/// The recorded outcome (and sending user) of an upload id this device sent before;
/// an id of another device is refused.
fn repeated_upload(
    store: &dyn Store,
    device: &str,
    upload_id: &str,
) -> Result<Option<(UploadOutcome, String)>, ApiError> {
    let Some((owner, user, outcome)) = store.upload_recorded(upload_id)? else {
        return Ok(None);
    };
    if owner != device {
        return Err(ApiError::forbidden(
            "the upload id belongs to another device",
        ));
    }
    let mut outcome: UploadOutcome = serde_json::from_str(&outcome)
        .map_err(|e| ApiError::internal(format!("recorded outcome unreadable: {e}")))?;
    outcome.repeated = true;
    Ok(Some((outcome, user)))
}

/// What an upload's checks before its body decide.
enum Before {
    /// The upload id's recorded outcome, and the user who sent it.
    Answered(UploadOutcome, String),
    /// Device and session are good: read the body.
    Read(DeviceRecord, UserRecord),
}

/// Uploads: protocol, device credentials, a known upload id's recorded outcome (before
/// the session: a device whose acknowledgement was lost learns the fate of its upload
/// even after its session expired), the session; only then the body, streamed and
/// bounded (`upload_body`), then the task checks and the integration.
pub(crate) async fn upload(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    auth::check_protocol(&headers)?;
    let (op, trigger) = op_and_trigger(&headers, SyncOp::Send)?;
    let started = std::time::Instant::now();
    let started_at = Timestamp::now();
    let claimed_id = headers
        .get(HEADER_UPLOAD_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Nothing of the body is read for a sender without device credentials: its
    // connection closes with the answer.
    let device = {
        let (st, headers) = (st.clone(), headers.clone());
        blocking(move || auth::device(&*st.store, &headers)).await?
    };
    let device_id = device.id.clone();
    let before = {
        let (st, headers, claimed_id) = (st.clone(), headers.clone(), claimed_id.clone());
        blocking(move || {
            // A known upload id is answered with its recorded outcome before any other
            // check: a device whose acknowledgement was lost learns the fate of its
            // upload even if its session expired or its task was unassigned since.
            if let Some(id) = &claimed_id
                && let Some(o) = repeated_upload(&*st.store, &device.id, id)?
            {
                let record = HistoryRecord {
                    device: device.id.clone(),
                    user: o.1.clone(),
                    task: None,
                    op,
                    trigger,
                    result: "ok".into(),
                    message: format!("repeated upload {id}: recorded outcome returned"),
                    rows_down: 0,
                    rows_up: 0,
                    bytes_down: 0,
                    bytes_up: upload_body::declared_length(&headers).unwrap_or(0),
                    conflicts: o.0.conflicts,
                    started_at,
                    duration_ms: started.elapsed().as_millis() as u64,
                    full: false,
                    full_reason: None,
                };
                request_log::record_sync(&*st.store, &st.metrics, &record);
                return Ok(Before::Answered(o.0, o.1));
            }
            let (device, _, user) = tickets::upload_session(&st, &headers)?;
            Ok(Before::Read(device, user))
        })
        .await
    };
    let (device, user) = match before {
        Ok(Before::Read(device, user)) => (device, user),
        // The device is known: what it still sends is read and dropped, so that it
        // reads this answer rather than a reset connection.
        Ok(Before::Answered(outcome, user)) => {
            upload_body::drain(body).await;
            let who = Who {
                device: device_id,
                user,
            };
            return Ok(with_who(Json(outcome).into_response(), who));
        }
        Err(e) => {
            upload_body::drain(body).await;
            return Err(e);
        }
    };
    // From here on the request log names the sender, whatever the answer.
    let who = Who {
        device: device.id.clone(),
        user: user.name.clone(),
    };
    let body = match upload_body::read(&headers, body).await {
        Ok(body) => body,
        Err(e) => return Ok(with_who(e.into_response(), who)),
    };
    let bytes_up = body.len() as u64;
    let one_writer = st.store.one_writer();
    let answer = integrators::run(one_writer, &device_id, body.len(), move || {
        let upload = upload_body::parse(&headers, &body)?;
        drop(body);
        if claimed_id
            .as_ref()
            .is_some_and(|id| *id != upload.upload_id)
        {
            return Err(ApiError::bad_request(format!(
                "header {HEADER_UPLOAD_ID} differs from the body's upload id"
            )));
        }
        let today = assigned_one(&*st.store, &upload.task, &user.name, &device.id)?;
        // The version of the task the device worked under: today's, or an earlier one
        // the server handed out (its edits are then judged against both).
        let version = match (&upload.task_hash, &today) {
            (Some(h), Some(t)) if *h == t.hash => None,
            (Some(h), _) => st.store.task_version(h)?.filter(|d| d.name == upload.task),
            (None, _) => None,
        };
        let worked_under = match (&version, &today) {
            (Some(d), _) => d,
            (None, Some(t)) => &t.def,
            (None, None) => {
                return Err(ApiError::forbidden(fieldsync_proto::wire::not_assigned(
                    &upload.task,
                    &user.name,
                    &device.id,
                )));
            }
        };
        // An upload from a replica of another history (the main database was restored
        // since its download) is judged by value: its bases are not this database's.
        // So is one whose replica's cursor this database never handed to the device
        // (restored without `admin epoch reset`: the cursor is ahead of its history).
        let restored = match &upload.epoch {
            Some(e) => *e != st.store.epoch()?,
            None => false,
        } || match upload.cursor {
            Some(c) => !st.store.cursor_known(&device.id, c)?,
            None => false,
        };
        let ctx = IntegrateContext {
            restored,
            device: &device.id,
            sender: &user.name,
            task: worked_under,
            today: today.as_ref(),
            at: started_at,
        };
        let result = match attachments_stored(&st, &upload) {
            Ok(()) => st.store.integrate(&ctx, &upload),
            Err(m) => Err(IntegrateError::Forbidden(m)),
        };
        let (word, message, conflicts) = match &result {
            Ok(o) if o.repeated => (
                "ok",
                format!("repeated upload {}: recorded outcome returned", o.upload_id),
                o.conflicts,
            ),
            Ok(o) => ("ok", format!("{} entries applied", o.applied), o.conflicts),
            Err(e) => ("error", e.to_string(), 0),
        };
        let record = HistoryRecord {
            device: device.id.clone(),
            user: user.name.clone(),
            task: Some(upload.task.clone()),
            op,
            trigger,
            result: word.to_string(),
            message,
            rows_down: 0,
            rows_up: upload.entries.len() as u64,
            bytes_down: 0,
            bytes_up,
            conflicts,
            started_at,
            duration_ms: started.elapsed().as_millis() as u64,
            full: false,
            full_reason: None,
        };
        request_log::record_sync(&*st.store, &st.metrics, &record);
        match result {
            Ok(o) => Ok(Json(o)),
            Err(IntegrateError::Forbidden(m)) => Err(ApiError::forbidden(m)),
            Err(IntegrateError::Store(e)) => Err(e.into()),
        }
    })
    .await;
    Ok(with_who(answer.into_response(), who))
}

/// Refuses an upload whose attachments' content is not whole in the file store (the
/// device uploads it first, `PUT /api/v1/files/{sha256}/upload`), or differs in size
/// from what the attachment says. A repeated upload id is answered before this.
fn attachments_stored(st: &AppState, upload: &fieldsync_proto::wire::Upload) -> Result<(), String> {
    if upload.attachments.is_empty() || repeated_id(st, upload) {
        return Ok(());
    }
    let Some(files) = &st.files else {
        return Err("this server has no file store: attachments cannot be recorded".into());
    };
    for (i, a) in upload.attachments.iter().enumerate() {
        let name = || {
            format!(
                "attachment {} (file `{}` of `{}` key {})",
                i + 1,
                a.name,
                a.table,
                a.key
            )
        };
        if !fieldsync_store::is_sha256(&a.sha256) {
            return Err(format!("{}: `{}` is not a SHA-256", name(), a.sha256));
        }
        match files.size(&a.sha256) {
            Ok(Some(n)) if n == a.size => {}
            Ok(Some(n)) => {
                return Err(format!(
                    "{}: its content is {n} bytes in the file store, not {}",
                    name(),
                    a.size
                ));
            }
            Ok(None) => {
                return Err(format!(
                    "{}: its content {} is not in the file store (upload it first)",
                    name(),
                    a.sha256
                ));
            }
            Err(e) => return Err(format!("{}: the file store: {e}", name())),
        }
    }
    Ok(())
}

/// Whether the upload id was recorded already (its outcome is answered as it stands).
fn repeated_id(st: &AppState, upload: &fieldsync_proto::wire::Upload) -> bool {
    st.store
        .upload_recorded(&upload.upload_id)
        .ok()
        .flatten()
        .is_some()
}
