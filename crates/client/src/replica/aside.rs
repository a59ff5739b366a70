//! Replicas beside the current one: those set aside for their users, the unsent
//! remainders and kept copies of a copied folder, and the generation to adopt when the
//! link is gone.

use super::*;

/// Prefix of a replica set aside for its user (`user-NAME.sqlite`): another user
/// logged in and the slice depends on the user. Sent with every send, counted as
/// pending, never deleted by fieldsync, shown again when its user logs in.
pub(super) const USER_PREFIX: &str = "user-";
/// Prefix of a copy kept because it holds journal entries (`kept-…`): found beside the
/// current replica after the folder was copied (the journal is the current replica's
/// too), so never sent, and never deleted by fieldsync.
pub(super) const KEPT_PREFIX: &str = "kept-";
/// Prefix of a copy's journal entries the current replica lacks (`unsent-…`): a folder
/// copied while the replica's `-wal` held edits, an app that renamed an older copy
/// into place. Sent with every send, counted as pending, removed once empty.
pub(super) const UNSENT_PREFIX: &str = "unsent-";

/// Replicas beside the current one whose journals are the device's to send: those set
/// aside for their users and the unsent remainders of copies.
pub fn set_aside_files(dir: &DeviceDir) -> Result<Vec<PathBuf>> {
    let current = current_file(dir);
    let mut out = files_named(dir, USER_PREFIX)?;
    out.extend(files_named(dir, UNSENT_PREFIX)?);
    out.retain(|f| Some(f) != current.as_ref());
    Ok(out)
}

/// An entry's identity: a copy of a journal holds equal entries (same number, time,
/// row and values); an entry made after the copy differs at least in its time.
pub(super) fn entry_id(e: &journal::JournalEntry) -> String {
    format!(
        "{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{}",
        e.seq, e.at, e.table, e.key, e.op, e.old, e.new, e.user
    )
}

pub(super) fn journal_ids(path: Option<&Path>) -> Result<std::collections::HashSet<String>> {
    let Some(path) = path else {
        return Ok(Default::default());
    };
    Ok(journal::read_all(&open_read_only(path)?)?
        .iter()
        .map(entry_id)
        .collect())
}

/// The journal entries of generation files beside the current replica that it lacks
/// (a copied folder, until the next locked command moves them to `unsent-…`); reads
/// only.
pub fn stray_entries(dir: &DeviceDir) -> Result<Vec<journal::JournalEntry>> {
    let Some(current) = current_file(dir) else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    let mut mine = None;
    for file in generation_files(dir)? {
        if file == current || !read_info(&file).ok().flatten().is_some_and(|i| i.complete) {
            continue;
        }
        let Ok(theirs) = open_read_only(&file).and_then(|c| journal::read_all(&c)) else {
            continue;
        };
        if theirs.is_empty() {
            continue;
        }
        if mine.is_none() {
            mine = Some(journal_ids(Some(&current))?);
        }
        let mine = mine.as_ref().expect("just read");
        out.extend(theirs.into_iter().filter(|e| !mine.contains(&entry_id(e))));
    }
    Ok(out)
}

/// A generation file beside the current replica that no install needs: a copy. Its
/// entries the current replica holds too leave it (they are sent from there, once),
/// and so does an upload the current replica stores too; what remains is kept as
/// `unsent-…` and sent from there. With nothing left, it is removed. A journal that
/// cannot be read is kept as `kept-…`.
pub(super) fn settle_copy(dir: &DeviceDir, file: &Path, current: Option<&Path>) -> Result<()> {
    let theirs = match open_read_only(file).and_then(|c| journal::read_all(&c)) {
        Ok(entries) => entries,
        Err(_) => return retire_file(dir, file),
    };
    let mine = journal_ids(current)?;
    let (dup, unique): (Vec<_>, Vec<_>) = theirs.iter().partition(|e| mine.contains(&entry_id(e)));
    if unique.is_empty() {
        remove_generation(file);
        return Ok(());
    }
    let current_uploads: Vec<String> = match current {
        Some(c) => open_read_only(c)?
            .prepare("SELECT upload_id FROM fieldsync_upload")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?,
        None => vec![],
    };
    {
        let mut conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(RETIRE_BUSY_TIMEOUT)?;
        let tx = conn.transaction()?;
        for e in dup {
            tx.execute("DELETE FROM fieldsync_journal WHERE seq = ?1", [e.seq])?;
        }
        for id in &current_uploads {
            tx.execute("DELETE FROM fieldsync_upload WHERE upload_id = ?1", [id])?;
        }
        // Nobody edits it any more: writes on a connection still open fail loudly.
        tx.execute(
            "INSERT INTO fieldsync_replica (key, value) VALUES ('login', NULL)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [],
        )?;
        tx.commit()?;
    }
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    move_replica(dir, file, &free_name(dir, UNSENT_PREFIX, &stem))
}

/// Every replica whose journal is the device's to send: the current one first, then
/// those set aside for other users.
pub fn all_replicas(dir: &DeviceDir) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = current_file(dir).into_iter().collect();
    out.extend(set_aside_files(dir)?);
    Ok(out)
}

pub(super) fn files_named(dir: &DeviceDir, prefix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.root.exists() {
        return Ok(out);
    }
    for entry in fs::read_dir(&dir.root)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(".sqlite") {
            out.push(dir.root.join(name.as_ref()));
        }
    }
    out.sort();
    Ok(out)
}

pub(super) fn generation_files(dir: &DeviceDir) -> Result<Vec<PathBuf>> {
    files_named(dir, "replica-")
}

/// The user logged in on the device, from its state file.
pub(super) fn session_user(dir: &DeviceDir) -> Option<String> {
    dir.load().ok()?.session.map(|s| s.user)
}

/// With the link gone or dangling: the complete, not retired generation to take as
/// the current replica (one holding journal entries first, then the newest), never
/// another user's replica whose slice depends on its user.
pub(super) fn adoptable(dir: &DeviceDir) -> Result<Option<PathBuf>> {
    let user = session_user(dir);
    let mut best: Option<((bool, std::time::SystemTime), PathBuf)> = None;
    for file in generation_files(dir)? {
        let Some(info) = read_info(&file).ok().flatten() else {
            continue;
        };
        if !info.complete
            || info.retired
            || (info.per_user && user.as_deref().is_some_and(|u| u != info.user))
        {
            continue;
        }
        let rank = (
            journal_len(&file).unwrap_or(1) > 0,
            fs::metadata(&file)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH),
        );
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, file));
        }
    }
    Ok(best.map(|(_, f)| f))
}
