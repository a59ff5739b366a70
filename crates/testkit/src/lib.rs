//! What fieldsync's tests and its benchmark share, so no test suite writes its own:
//! temporary folders ([`TempDir`]), a fresh PostgreSQL database per test ([`PgDb`],
//! on the server [`pg::base_url`] names — a private throwaway cluster when none is
//! named and none is reachable) and the sample data ([`sample`], the generator the
//! demo also uses, re-exported from the store).
//!
//! Not published; only tests and the benchmark depend on it.

pub mod pg;

use std::path::{Path, PathBuf};

pub use fieldsync_store::sample;
pub use pg::PgDb;

/// A fresh folder under the system's temp folder, removed on drop. The path is public
/// so a test may hand a folder it made itself over to be removed with the test.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty folder whose name starts with `fieldsync-<tag>-`.
    pub fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("fieldsync-{tag}-"))
            .tempdir()
            .expect("creating a temporary folder");
        TempDir(dir.keep())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
