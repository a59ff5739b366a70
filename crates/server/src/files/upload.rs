//! A device's upload of one file's content (a photo made in the field), before the
//! attachment is recorded: resumable (the server keeps what arrived in a spool file
//! per device and content, and says where it stands), streamed to disk as it arrives,
//! and stored only once the whole content matches its SHA-256 (create-only, so a
//! repeated upload changes nothing). The server never says whether it already holds
//! the content: a device learns nothing about what others uploaded.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use fieldsync_proto::task::WriteOp;
use fieldsync_proto::wire::{ErrorCode, FileUploadState, HEADER_FILE_OFFSET, HEADER_FILE_SIZE};
use fieldsync_store::{Store, is_sha256, sha256_hex};
use http_body::Body as _;

use super::FileStoreError;
use crate::api::{AppState, blocking};
use crate::error::ApiError;
use crate::{auth, tickets};

/// The spool file of `device`'s upload of `sha256`.
fn spool_file(st: &AppState, device: &str, sha256: &str) -> Result<PathBuf, ApiError> {
    let files = st.files.as_ref().ok_or_else(no_store)?;
    let dir = files.spool();
    fs::create_dir_all(&dir).map_err(ApiError::internal)?;
    Ok(dir.join(format!("{}-{sha256}.part", &sha256_hex(device)[..16])))
}

fn no_store() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "this server keeps no files (start it with `server run --files`)",
    )
}

/// Checks the request's session and that its user and device may add files: a task
/// assigned to both has a `[files]` table it may write. Returns the device's id.
fn uploader(st: &AppState, headers: &HeaderMap, sha256: &str) -> Result<String, ApiError> {
    let (device, _, user) = tickets::upload_session(st, headers)?;
    admitted(st, &user.name, &device.id, sha256)
}

/// Whether the signed-in `user` on `device` may add the content `sha256` (see
/// [`uploader`]); the device's id.
fn admitted(st: &AppState, user: &str, device: &str, sha256: &str) -> Result<String, ApiError> {
    if !is_sha256(sha256) {
        return Err(ApiError::bad_request(format!(
            "`{sha256}` is not a SHA-256"
        )));
    }
    if !may_add_files(&*st.store, user, device)? {
        return Err(ApiError::forbidden(format!(
            "no task assigned to user `{user}` and device `{device}` lets it add files"
        )));
    }
    Ok(device.to_string())
}

fn may_add_files(store: &dyn Store, user: &str, device: &str) -> Result<bool, ApiError> {
    Ok(store.tasks_assigned(user, device)?.iter().any(|t| {
        t.def.files.as_ref().is_some_and(|f| {
            t.def.tables.iter().any(|table| {
                f.tables.contains(&table.name)
                    && (table.write.contains(&WriteOp::Insert)
                        || table.write.contains(&WriteOp::Update))
            })
        })
    }))
}

fn received(path: &PathBuf) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// `GET /api/v1/files/{sha256}/upload`: how much of the content arrived from this device.
pub(crate) async fn status(
    State(st): State<AppState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Json<FileUploadState>, ApiError> {
    auth::check_protocol(&headers)?;
    blocking(move || {
        let device = uploader(&st, &headers, &sha256)?;
        let path = spool_file(&st, &device, &sha256)?;
        Ok(Json(FileUploadState {
            received: received(&path),
            stored: false,
        }))
    })
    .await
}

fn number(headers: &HeaderMap, name: &str) -> Result<u64, ApiError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("header {name}: a number of bytes")))
}

/// `PUT /api/v1/files/{sha256}/upload`: the content from byte `x-fieldsync-file-offset`
/// (where the server stands) of `x-fieldsync-file-size` bytes in all.
pub(crate) async fn put(
    State(st): State<AppState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
    mut body: Body,
) -> Result<Json<FileUploadState>, ApiError> {
    auth::check_protocol(&headers)?;
    let offset = number(&headers, HEADER_FILE_OFFSET)?;
    let size = number(&headers, HEADER_FILE_SIZE)?;
    let state = st.clone();
    // The outer error refuses a sender whose session does not check (nothing of its
    // body is read); the inner ones a signed-in device: not allowed to add this
    // content, or at another offset.
    let placed = blocking(move || {
        let (device, _, user) = tickets::upload_session(&state, &headers)?;
        let device = match admitted(&state, &user.name, &device.id, &sha256) {
            Ok(device) => device,
            Err(refused) => return Ok(Err(refused)),
        };
        let path = spool_file(&state, &device, &sha256)?;
        let mut have = received(&path);
        if have > size {
            // Another size than before: the earlier bytes mean nothing.
            fs::remove_file(&path).map_err(ApiError::internal)?;
            have = 0;
        }
        if offset != have {
            return Ok(Err(ApiError::bad_request(format!(
                "the upload of {sha256} stands at byte {have}, not {offset}; send from there"
            ))));
        }
        Ok(Ok((path, have)))
    })
    .await?;
    let (path, have) = match placed {
        Ok(placed) => placed,
        Err(refused) => {
            // What it still sends is read and dropped, so that it reads the refusal
            // (or where the upload stands) rather than a reset connection.
            crate::upload_body::drain(body).await;
            return Err(refused);
        }
    };
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(ApiError::internal)?;
    let mut n_bytes = have;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // What arrived stays: the device resumes from there.
                let _ = out.flush();
                return Err(ApiError::bad_request(format!(
                    "unreadable request body: {e}"
                )));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        n_bytes += data.len() as u64;
        if n_bytes > size {
            drop(out);
            let _ = fs::remove_file(&path);
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("more than the {size} bytes announced"),
            ));
        }
        tokio::task::block_in_place(|| out.write_all(&data)).map_err(ApiError::internal)?;
    }
    drop(out);
    let sha = st_sha(&path);
    if n_bytes < size {
        return Ok(Json(FileUploadState {
            received: n_bytes,
            stored: false,
        }));
    }
    let files = st.files.clone().ok_or_else(no_store)?;
    blocking(move || {
        let stored = fs::File::open(&path)
            .map_err(FileStoreError::from)
            .and_then(|mut f| files.put(&sha, &mut f));
        let _ = fs::remove_file(&path);
        match stored {
            Ok(_) => Ok(Json(FileUploadState {
                received: size,
                stored: true,
            })),
            Err(FileStoreError::HashMismatch { .. }) => Err(ApiError::new(
                ErrorCode::Damaged,
                format!("the content sent does not match {sha}; send it again from byte 0"),
            )),
            Err(e) => Err(ApiError::internal(e)),
        }
    })
    .await
}

/// The content's SHA-256, from its spool file's name.
fn st_sha(path: &std::path::Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name = name.strip_suffix(".part").unwrap_or(name);
    name.rsplit('-').next().unwrap_or("").to_string()
}
