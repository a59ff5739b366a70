//! The file store: the content of files attached to rows, named by SHA-256, behind
//! [`FileStore`] (blocking; handlers call it from blocking threads). `folder.rs` is
//! the local folder, `s3.rs` S3-compatible object storage; the routes that serve a
//! slice's files are in `routes.rs`.

mod folder;
pub(crate) mod routes;
mod s3;
pub(crate) mod upload;

use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use folder::FolderStore;
pub use s3::{S3Config, S3Store};

use crate::api::AppState;

impl AppState {
    /// The state with a file store, whose files the file routes serve.
    pub fn with_files(mut self, files: Option<std::sync::Arc<dyn FileStore>>) -> AppState {
        self.files = files;
        self
    }
}

/// The file routes (`routes.rs`, `upload.rs`), merged into the API's router.
pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/api/v1/tasks/{name}/files", get(routes::list))
        .route("/api/v1/files/{sha256}", get(routes::fetch))
        .route(
            "/api/v1/files/{sha256}/upload",
            get(upload::status).put(upload::put),
        )
}

#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    /// The content read does not hash to the name it was stored under: nothing kept.
    #[error("content does not match its SHA-256 (expected {expected}, got {actual})")]
    HashMismatch { expected: String, actual: String },
    #[error("`{0}` is not a SHA-256")]
    BadName(String),
    #[error("file store: {0}")]
    Io(#[from] io::Error),
}

/// Where file content lives. Objects are immutable and named by the SHA-256 of
/// their content: written create-only (to a temporary name, verified, then renamed),
/// so a second write of the same content changes nothing.
pub trait FileStore: Send + Sync {
    /// The object's size, `None` when the store has no such object.
    fn size(&self, sha256: &str) -> Result<Option<u64>, FileStoreError>;
    /// The object's bytes from `offset` on, streamed (never whole in memory).
    fn open(&self, sha256: &str, offset: u64) -> Result<Box<dyn Read + Send>, FileStoreError>;
    /// Stores what `content` yields as object `sha256`, verifying the hash before the
    /// object appears; returns its size. An object already there is kept as it is
    /// (`content` is then not read).
    fn put(&self, sha256: &str, content: &mut dyn Read) -> Result<u64, FileStoreError>;
    /// Where the store is, for messages.
    fn describe(&self) -> String;
    /// A local folder for devices' uploads under way (`upload.rs`), kept until the
    /// whole content arrived and is stored.
    fn spool(&self) -> PathBuf;
}

/// Opens the store `spec` names: `s3://BUCKET/PREFIX` (configured from the
/// environment, `s3.rs`) or a folder path (created when missing).
pub fn open(spec: &str) -> Result<Box<dyn FileStore>, FileStoreError> {
    if spec.starts_with("s3://") {
        return Ok(Box::new(S3Store::from_env(spec)?));
    }
    if spec.contains("://") {
        return Err(FileStoreError::Io(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("`{spec}`: a folder or s3://BUCKET/PREFIX"),
        )));
    }
    Ok(Box::new(FolderStore::new(PathBuf::from(spec))?))
}

/// The default file store of a main database: beside a SQLite database file, the
/// folder `PATH.files`; a PostgreSQL database has none (`--files` names it).
pub fn default_spec(db_url: &str) -> Option<String> {
    let path = db_url.strip_prefix("sqlite:")?;
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty()).then(|| format!("{}.files", Path::new(path).display()))
}

/// Copies what `content` yields into a new file at `path`, hashing it on the way;
/// its size, or [`FileStoreError::HashMismatch`] when it is not `sha256`'s content
/// (the file is then the caller's to delete).
pub(crate) fn spool_verified(
    content: &mut dyn Read,
    path: &Path,
    sha256: &str,
) -> Result<(std::fs::File, u64), FileStoreError> {
    use sha2::Digest;
    use std::io::Write;
    let mut out = std::fs::File::create_new(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n_bytes = 0u64;
    loop {
        let n = match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        n_bytes += n as u64;
    }
    let actual = fieldsync_store::hex(&hasher.finalize());
    if actual != sha256 {
        return Err(FileStoreError::HashMismatch {
            expected: sha256.to_string(),
            actual,
        });
    }
    Ok((out, n_bytes))
}

/// The SHA-256 (hex) and size of what `r` yields, read in blocks.
pub fn hash_reader(r: &mut dyn Read) -> io::Result<(String, u64)> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n_bytes = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        n_bytes += n as u64;
    }
    Ok((fieldsync_store::hex(&hasher.finalize()), n_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_proto::wire::content_type_of;

    #[test]
    fn a_sqlite_database_keeps_its_files_beside_it() {
        assert_eq!(
            default_spec("sqlite:/srv/main.sqlite").as_deref(),
            Some("/srv/main.sqlite.files")
        );
        assert_eq!(default_spec("postgres://u@h/db"), None);
        assert_eq!(content_type_of("Photo.JPG"), "image/jpeg");
        assert_eq!(content_type_of("noext"), "application/octet-stream");
    }
}
