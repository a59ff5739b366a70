//! The device's files (`files/` in the device folder): content by SHA-256 in
//! `files/objects/`, transfers in progress in `files/partial/` (never shown as a
//! file), and the view an app reads, `files/by-row/TABLE/KEY/NAME` (hard links to the
//! objects, copies where links fail). The server's file routes are called from here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use fieldsync_proto::wire::FileEntry;

use crate::error::{ClientError, Result};
use crate::http::{Api, Credentials, encode_path_segment};
use crate::transport::Response;

/// The device folder's `files/`.
pub(crate) struct FilesDir {
    pub root: PathBuf,
}

impl FilesDir {
    pub fn new(device_root: &Path) -> Result<FilesDir> {
        let root = device_root.join("files");
        for sub in ["objects", "partial", "by-row"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(FilesDir { root })
    }

    pub fn object(&self, sha256: &str) -> PathBuf {
        self.root.join("objects").join(sha256)
    }

    pub fn partial(&self, sha256: &str) -> PathBuf {
        self.root.join("partial").join(format!("{sha256}.part"))
    }

    /// Where an app finds a file: `by-row/TABLE/KEY/NAME`, each part made safe.
    pub fn by_row(&self, f: &FileEntry) -> PathBuf {
        self.root
            .join("by-row")
            .join(path_part(&f.table))
            .join(path_part(&f.key))
            .join(path_part(&f.name))
    }

    /// Makes the folder hold exactly `list`: objects and partial transfers of other
    /// content removed (rows that left the slice), the by-row view made to match.
    /// Objects must already be present for the entries listed.
    pub fn settle(&self, list: &[FileEntry]) -> Result<()> {
        let wanted: BTreeSet<&str> = list.iter().map(|f| f.sha256.as_str()).collect();
        let view: BTreeMap<PathBuf, &FileEntry> =
            list.iter().map(|f| (self.by_row(f), f)).collect();
        // The view first: nothing in it points to an object about to go.
        remove_unwanted(&self.root.join("by-row"), 3, &|p| view.contains_key(p))?;
        for (path, f) in &view {
            let object = self.object(&f.sha256);
            let same = match (fs::metadata(path), fs::metadata(&object)) {
                (Ok(a), Ok(b)) => same_file(&a, &b),
                _ => false,
            };
            if same {
                continue;
            }
            fs::create_dir_all(path.parent().expect("by-row paths have folders"))?;
            let _ = fs::remove_file(path);
            if fs::hard_link(&object, path).is_err() {
                // A file system without hard links: a copy, written aside first.
                let tmp = path.with_extension("fieldsync-copy");
                fs::copy(&object, &tmp)?;
                fs::rename(&tmp, path)?;
            }
        }
        for dir in ["objects", "partial"] {
            for e in fs::read_dir(self.root.join(dir))? {
                let e = e?;
                let name = e.file_name();
                let name = name.to_string_lossy();
                let sha = name.strip_suffix(".part").unwrap_or(&name);
                if !wanted.contains(sha) {
                    fs::remove_file(e.path())?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino()) || a.len() == b.len() && a.len() == 0
}

#[cfg(not(unix))]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.len() == b.len()
}

/// Removes what under `dir` (`depth` levels of folders, then files) `keep` does not
/// keep, and the folders left empty.
fn remove_unwanted(dir: &Path, depth: usize, keep: &dyn Fn(&Path) -> bool) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let path = e?.path();
        let is_dir = fs::symlink_metadata(&path)?.is_dir();
        if depth > 1 && is_dir {
            remove_unwanted(&path, depth - 1, keep)?;
            if fs::read_dir(&path)?.next().is_none() {
                fs::remove_dir(&path)?;
            }
        } else if is_dir {
            fs::remove_dir_all(&path)?;
        } else if !keep(&path) {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A table, key or file name as one path component: bytes other than letters,
/// digits, `-`, `_` and `.` as `%XX`, and a leading dot too (no `..`, no hidden file).
pub(crate) fn path_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, b) in text.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() { "%".into() } else { out }
}

impl Api {
    /// The files of `task`'s slice.
    pub(crate) fn files(&self, creds: &Credentials<'_>, task: &str) -> Result<Vec<FileEntry>> {
        let path = format!("/api/v1/tasks/{}/files", encode_path_segment(task));
        let resp = self.call("GET", &path, Some(creds), Vec::new(), None)?;
        self.json(resp)
    }

    /// A file's content from `offset` (a range request when past 0); the answer says
    /// whether the server honoured the range (206) or sends it whole (200). `trigger`
    /// goes to the server's sync history.
    pub(crate) fn file_fetch(
        &self,
        creds: &Credentials<'_>,
        sha256: &str,
        offset: u64,
        trigger: crate::Trigger,
    ) -> Result<Response> {
        let mut headers = vec![(
            fieldsync_proto::wire::HEADER_KIND,
            trigger.as_str().to_string(),
        )];
        if offset > 0 {
            headers.push(("range", format!("bytes={offset}-")));
        }
        let path = format!("/api/v1/files/{sha256}");
        self.call("GET", &path, Some(creds), headers, None)
    }
}

/// SHA-256 (hex) of a file's content, read in blocks.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::from(e)),
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::path_part;

    #[test]
    fn names_become_one_safe_path_component() {
        assert_eq!(path_part("photo 1.jpg"), "photo%201.jpg");
        assert_eq!(path_part("../x"), "%2E.%2Fx");
        assert_eq!(path_part(".hidden"), "%2Ehidden");
        assert_eq!(path_part("42"), "42");
        assert_eq!(path_part(""), "%");
    }
}
