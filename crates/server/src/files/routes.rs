//! The routes of files: a task's file list for a device, and one file's content by
//! SHA-256 with HTTP range requests. A file is served only when it is attached to a
//! row in a slice assigned to the asking user and device; any other is answered
//! exactly as an unknown one, so the answer tells nothing about what exists.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fieldsync_proto::filter::Params;
use fieldsync_proto::task::check_name;
use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{ErrorCode, FileEntry, SyncOp};
use fieldsync_store::{AssignedTask, FileRecord, HistoryRecord, SessionScope, Store, is_sha256};
use tokio::sync::mpsc;

use super::FileStore;
use crate::api::{AppState, blocking, op_and_trigger, with_who};
use crate::download::ChannelBody;
use crate::error::ApiError;
use crate::request_log::Who;
use crate::{auth, tickets};

/// Bytes read from the store at a time, and how many blocks may wait to be sent.
const BLOCK_BYTES: usize = 64 * 1024;
const CHANNEL_BLOCKS: usize = 4;

/// The files of `task`'s slice for `user` and `device` (none without a `[files]` rule).
pub(crate) fn slice_files(
    store: &dyn Store,
    task: &AssignedTask,
    user: &str,
    device: &str,
    sha256: Option<&str>,
) -> Result<Vec<FileRecord>, ApiError> {
    let Some(rule) = &task.def.files else {
        return Ok(Vec::new());
    };
    let params = Params {
        user: user.to_string(),
        device: device.to_string(),
    };
    let plan = fieldsync_store::plan_slice(store, &task.def, &params)?;
    Ok(store.slice_files(&plan, &rule.tables, sha256)?)
}

fn file_store(st: &AppState) -> Result<Arc<dyn FileStore>, ApiError> {
    st.files.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "this server keeps no files (start it with `server run --files`)",
        )
    })
}

/// `GET /api/v1/tasks/{name}/files`: the files of the task's slice.
pub(crate) async fn list(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth::check_protocol(&headers)?;
    check_name("task", &name).map_err(ApiError::bad_request)?;
    blocking(move || {
        // The asker first: whether this server keeps files is nobody else's business.
        let (device, _, user) = tickets::download_session(&st, &headers, &name)?;
        let task = st
            .store
            .task_assigned(&name, &user.name, &device.id)?
            .ok_or_else(|| {
                ApiError::forbidden(fieldsync_proto::wire::not_assigned(
                    &name, &user.name, &device.id,
                ))
            })?;
        file_store(&st)?;
        let files = slice_files(&*st.store, &task, &user.name, &device.id, None)?;
        let entries: Vec<FileEntry> = files
            .into_iter()
            .map(|f| FileEntry {
                table: f.table,
                key: f.key,
                name: f.name,
                size: f.size,
                sha256: f.sha256,
                content_type: f.content_type,
            })
            .collect();
        let who = Who {
            device: device.id,
            user: user.name,
        };
        Ok(with_who(Json(entries).into_response(), who))
    })
    .await
}

/// The answer to a file that is not the asker's to read, or does not exist.
fn unknown() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such file")
}

/// `GET /api/v1/files/{sha256}`: one file's content, or from the `Range` asked.
pub(crate) async fn fetch(
    State(st): State<AppState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth::check_protocol(&headers)?;
    let range = headers
        .get(header::RANGE)
        .map(|v| parse_range(v.to_str().unwrap_or("")))
        .transpose()?;
    let (_, trigger) = op_and_trigger(&headers, SyncOp::Files)?;
    let started = (Timestamp::now(), Instant::now());
    let (store, metrics) = (st.store.clone(), st.metrics.clone());
    let (size, who) = blocking(move || {
        let (device, session, user) = auth::session(&*st.store, &headers)?;
        let files = file_store(&st)?;
        if !is_sha256(&sha256) {
            return Err(unknown());
        }
        let tasks = match &session.scope {
            SessionScope::User => st.store.tasks_assigned(&user.name, &device.id)?,
            SessionScope::Auto { task: Some(t) } => st
                .store
                .task_assigned(t, &user.name, &device.id)?
                .into_iter()
                .collect(),
            SessionScope::Auto { task: None } => Vec::new(),
        };
        let mut allowed = None;
        for task in tasks {
            if !slice_files(&*st.store, &task, &user.name, &device.id, Some(&sha256))?.is_empty() {
                allowed = Some(task.def.name);
                break;
            }
        }
        let Some(task) = allowed else {
            return Err(unknown());
        };
        let size = files
            .size(&sha256)
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "file {sha256} is attached but not in the file store"
                ))
            })?;
        let who = Who {
            device: device.id,
            user: user.name,
        };
        Ok(((size, files, sha256, task), who))
    })
    .await?;
    let (size, files, sha256, task) = size;
    let (start, end) = match range {
        None => (0, size),
        Some((start, _)) if start >= size && !(start == 0 && size == 0) => {
            let response = (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response();
            return Ok(with_who(response, who));
        }
        Some((start, last)) => (start, last.map_or(size, |l| (l + 1).min(size))),
    };
    let record = HistoryRecord {
        device: who.device.clone(),
        user: who.user.clone(),
        task: Some(task),
        op: SyncOp::Files,
        trigger,
        result: String::new(),
        message: format!("file {sha256} from byte {start}"),
        rows_down: 0,
        rows_up: 0,
        bytes_down: 0,
        bytes_up: 0,
        conflicts: 0,
        started_at: started.0,
        duration_ms: 0,
        full: false,
        full_reason: None,
    };
    let fetch = Fetch {
        store,
        metrics,
        record,
        started: started.1,
    };
    let body = stream(files, sha256, start, end - start, fetch)?;
    let mut response = Response::new(Body::new(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().expect("valid"),
    );
    h.insert(header::ACCEPT_RANGES, "bytes".parse().expect("valid"));
    h.insert(header::CONTENT_LENGTH, (end - start).into());
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {start}-{}/{size}", end.saturating_sub(1));
        response
            .headers_mut()
            .insert(header::CONTENT_RANGE, value.parse().expect("valid"));
    }
    Ok(with_who(response, who))
}

/// `bytes=START-` or `bytes=START-LAST` (one range; suffix ranges are not asked by
/// devices and are refused).
fn parse_range(text: &str) -> Result<(u64, Option<u64>), ApiError> {
    let bad = || ApiError::bad_request(format!("Range `{text}`: bytes=START- or bytes=START-LAST"));
    let spec = text.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (start, last) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let last = match last.trim() {
        "" => None,
        l => Some(l.parse::<u64>().map_err(|_| bad())?),
    };
    if last.is_some_and(|l| l < start) {
        return Err(bad());
    }
    Ok((start, last))
}

/// One content fetch, recorded in the sync history (op `files`) when its stream ends.
struct Fetch {
    store: Arc<dyn Store>,
    metrics: Arc<crate::metrics::Metrics>,
    record: HistoryRecord,
    started: Instant,
}

impl Fetch {
    fn ended(mut self, result: &str, bytes: u64, why: Option<String>) {
        let r = &mut self.record;
        r.result = result.to_string();
        r.bytes_down = bytes;
        r.duration_ms = self.started.elapsed().as_millis() as u64;
        if let Some(why) = why {
            r.message = format!("{}: {why}", r.message);
        }
        crate::request_log::record_sync(&*self.store, &self.metrics, r);
    }
}

/// `n_bytes` of object `sha256` from `start`, read by a blocking thread into a
/// bounded channel: memory stays a few blocks whatever the file's size, and a client
/// that goes away stops the read. The history counts the bytes handed to the
/// connection; a device that went away is a cancelled fetch.
fn stream(
    files: Arc<dyn FileStore>,
    sha256: String,
    start: u64,
    n_bytes: u64,
    fetch: Fetch,
) -> Result<ChannelBody, ApiError> {
    let (tx, rx) = mpsc::channel(CHANNEL_BLOCKS);
    tokio::task::spawn_blocking(move || {
        let send = |chunk: Result<Bytes, io::Error>| tx.blocking_send(chunk).is_ok();
        let mut reader = match files.open(&sha256, start) {
            Ok(r) => r.take(n_bytes),
            Err(e) => {
                send(Err(io::Error::other(e.to_string())));
                return fetch.ended("error", 0, Some(e.to_string()));
            }
        };
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; BLOCK_BYTES];
            match reader.read(&mut buf) {
                Ok(0) if sent < n_bytes => {
                    let why = format!("the store ended after {sent} of {n_bytes} bytes");
                    send(Err(io::Error::other(why.clone())));
                    return fetch.ended("error", sent, Some(why));
                }
                Ok(0) => return fetch.ended("ok", sent, None),
                Ok(n) => {
                    buf.truncate(n);
                    if !send(Ok(Bytes::from(buf))) {
                        let why = "the device closed the transfer".to_string();
                        return fetch.ended("cancelled", sent, Some(why));
                    }
                    sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = e.to_string();
                    send(Err(e));
                    return fetch.ended("error", sent, Some(why));
                }
            }
        }
    });
    Ok(ChannelBody::new(rx))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_are_a_start_and_maybe_a_last_byte() {
        assert_eq!(parse_range("bytes=10-").unwrap(), (10, None));
        assert_eq!(parse_range("bytes=0-99").unwrap(), (0, Some(99)));
        for bad in ["bytes=-5", "bytes=5-1", "items=0-", "bytes=x-"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }
}
