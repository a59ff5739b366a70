//! The file store in a local folder: `objects/<first two hex digits>/<sha256>`, new
//! content written under `tmp/` and linked into place only once its hash is right.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::{FileStore, FileStoreError};

pub struct FolderStore {
    root: PathBuf,
}

impl FolderStore {
    /// The store in folder `root`, created when missing.
    pub fn new(root: PathBuf) -> Result<FolderStore, FileStoreError> {
        fs::create_dir_all(root.join("objects"))?;
        fs::create_dir_all(root.join("tmp"))?;
        Ok(FolderStore { root })
    }

    fn path(&self, sha256: &str) -> Result<PathBuf, FileStoreError> {
        if !fieldsync_store::is_sha256(sha256) {
            return Err(FileStoreError::BadName(sha256.to_string()));
        }
        Ok(self.root.join("objects").join(&sha256[..2]).join(sha256))
    }
}

impl FileStore for FolderStore {
    fn size(&self, sha256: &str) -> Result<Option<u64>, FileStoreError> {
        match fs::metadata(self.path(sha256)?) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn open(&self, sha256: &str, offset: u64) -> Result<Box<dyn Read + Send>, FileStoreError> {
        let mut f = File::open(self.path(sha256)?)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(f))
    }

    fn put(&self, sha256: &str, content: &mut dyn Read) -> Result<u64, FileStoreError> {
        let path = self.path(sha256)?;
        if let Some(n) = self.size(sha256)? {
            return Ok(n);
        }
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{sha256}.{}", fieldsync_store::random_hex(8)));
        let written = (|| -> Result<u64, FileStoreError> {
            let (out, n_bytes) = super::spool_verified(content, &tmp, sha256)?;
            out.sync_all()?;
            fs::create_dir_all(path.parent().expect("objects have a folder"))?;
            // Create-only: a link fails where the object already is (another writer
            // of the same content got there first), which is as good.
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(n_bytes)
        })();
        let _ = fs::remove_file(&tmp);
        written
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn spool(&self) -> PathBuf {
        self.root.join("uploads")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_kept_only_under_its_own_hash_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path().join("files")).unwrap();
        let (sha, n) = super::super::hash_reader(&mut &b"hello"[..]).unwrap();
        assert_eq!(n, 5);
        let wrong = "0".repeat(64);
        assert!(matches!(
            store.put(&wrong, &mut &b"hello"[..]),
            Err(FileStoreError::HashMismatch { .. })
        ));
        assert_eq!(store.size(&wrong).unwrap(), None);
        assert_eq!(store.put(&sha, &mut &b"hello"[..]).unwrap(), 5);
        // Present: the content is not read again.
        assert_eq!(store.put(&sha, &mut &b"other"[..]).unwrap(), 5);
        let mut rest = String::new();
        store
            .open(&sha, 2)
            .unwrap()
            .read_to_string(&mut rest)
            .unwrap();
        assert_eq!(rest, "llo");
        assert!(matches!(
            store.size("../x"),
            Err(FileStoreError::BadName(_))
        ));
        assert_eq!(
            fs::read_dir(dir.path().join("files/tmp")).unwrap().count(),
            0
        );
    }
}
