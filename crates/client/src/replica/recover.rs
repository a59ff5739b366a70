//! Bringing the folder back to one current replica after a crash or a copy, and
//! showing the logged-in user their own replica (setting another user's aside).

use super::*;

/// Brings the device folder back to one current replica, whatever a crash or a copy
/// left: finishes or undoes an install a crash interrupted (its commit point is the
/// retirement of the old replica: before it the old replica stays, after it the new
/// one, complete by then, takes its place); links a generation again when the link is
/// gone or dangling; a plain `replica.sqlite` stays the current replica. Other
/// generation files are removed when their journal is empty (an unfinished build has
/// none) and otherwise kept as `kept-…`: no file holding journal entries is deleted.
/// Then shows the logged-in user their own replica ([`settle_user`]).
pub fn recover(dir: &DeviceDir) -> Result<()> {
    if !dir.root.exists() {
        return Ok(());
    }
    let _ = fs::remove_file(dir.root.join(LINK_TMP));
    let current = match shape(dir) {
        Shape::Link(path) => Some(path),
        Shape::Plain => Some(dir.replica_path()),
        gone => {
            let found = adoptable(dir)?;
            match &found {
                Some(file) => adopt(dir, file)?,
                None if gone == Shape::Dangling => {
                    fs::remove_file(dir.replica_path())?;
                    sync_dir(&dir.root)?;
                }
                None => {}
            }
            installed_file(dir)
        }
    };
    let current = match current {
        Some(plain) if plain == dir.replica_path() => Some(prefer_ahead(dir, plain)?),
        other => other,
    };
    // The current replica's record, read once: settling the user reads it again only
    // if the current replica changed meanwhile.
    let current_info = current.as_ref().and_then(|c| read_info(c).ok().flatten());
    let current_retired = current_info.as_ref().is_some_and(|i| i.retired);
    let mut roll_forward = None;
    for file in generation_files(dir)? {
        if Some(&file) == current.as_ref() {
            continue;
        }
        let Some(info) = read_info(&file).ok().flatten().filter(|i| i.complete) else {
            // An unfinished build: nothing was journaled in it.
            remove_generation(&file);
            continue;
        };
        let empty = journal_len(&file).ok() == Some(0);
        if current_retired && empty && !info.retired && roll_forward.is_none() {
            roll_forward = Some(file);
        } else {
            let live = current.as_deref().filter(|_| !current_retired);
            settle_copy(dir, &file, live)?;
        }
    }
    for file in files_named(dir, UNSENT_PREFIX)? {
        if journal_len(&file).ok() == Some(0) {
            remove_generation(&file);
        }
    }
    let unchanged = roll_forward.is_none() && !current_retired;
    let known = match (&current, current_info) {
        (Some(path), Some(info)) if unchanged => Some((path.clone(), info)),
        _ => None,
    };
    match (roll_forward, current) {
        (Some(next), Some(old)) => {
            let plain = old == dir.replica_path();
            if plain && journal_len(&old).ok() != Some(0) {
                move_replica(dir, &old, &free_name(dir, KEPT_PREFIX, "replica"))?;
            }
            swap_link(dir, &next)?;
            if plain {
                remove_side_files(&old);
            } else {
                retire_file(dir, &old)?;
            }
        }
        (None, Some(old)) if current_retired => set_retired(&old, false, 0)?,
        _ => {}
    }
    if let Some(user) = session_user(dir) {
        settle_user_knowing(dir, &user, known)?;
    }
    Ok(())
}

/// A plain `replica.sqlite` copied without its generation's `-wal` (`cp -rL` while an
/// app held the replica open) lacks what the `-wal` held; the generation copied beside
/// it with its `-wal` has it. When a generation of the same download holds every
/// journal entry of the plain file and more, it becomes the current replica: the plain
/// file is retired (an app's writes on it fail loudly) and kept as `kept-…`.
pub(super) fn prefer_ahead(dir: &DeviceDir, plain: PathBuf) -> Result<PathBuf> {
    let Some(file) = ahead_of_plain(dir, &plain)? else {
        return Ok(plain);
    };
    let conn = Connection::open_with_flags(&plain, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(RETIRE_BUSY_TIMEOUT)?;
    conn.execute(
        "INSERT INTO fieldsync_replica (key, value) VALUES ('retired', '1')
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [],
    )?;
    drop(conn);
    move_replica(dir, &plain, &free_name(dir, KEPT_PREFIX, "replica"))?;
    swap_link(dir, &file)?;
    Ok(file)
}

/// The generation of the same download whose journal holds the plain file's entries
/// and more (see [`prefer_ahead`]); reads only.
pub(super) fn ahead_of_plain(dir: &DeviceDir, plain: &Path) -> Result<Option<PathBuf>> {
    let gens = generation_files(dir)?;
    if gens.is_empty() {
        return Ok(None);
    }
    let Some(info) = read_info(plain)? else {
        return Ok(None);
    };
    let mine = journal_ids(Some(plain))?;
    for file in gens {
        let Some(other) = read_info(&file).ok().flatten() else {
            continue;
        };
        if !other.complete
            || other.retired
            || (other.task.as_str(), other.cursor, other.epoch.as_str())
                != (info.task.as_str(), info.cursor, info.epoch.as_str())
        {
            continue;
        }
        let Ok(theirs) = open_read_only(&file).and_then(|c| journal::read_all(&c)) else {
            continue;
        };
        let theirs: std::collections::HashSet<String> = theirs.iter().map(entry_id).collect();
        if theirs.len() > mine.len() && mine.iter().all(|e| theirs.contains(e)) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// Shows `user` their own replica. The current replica is set aside when its slice
/// depends on its user and that user is another (its rows are no longer reachable
/// through `replica.sqlite`, its journal stays and is sent with every send); with no
/// current replica, the user's own set-aside replica, if any, becomes current.
pub fn settle_user(dir: &DeviceDir, user: &str) -> Result<()> {
    settle_user_knowing(dir, user, None)
}

/// [`settle_user`], given the record of replica file `known.0` when the caller has
/// just read it.
pub(super) fn settle_user_knowing(
    dir: &DeviceDir,
    user: &str,
    known: Option<(PathBuf, ReplicaInfo)>,
) -> Result<()> {
    if let Some(current) = installed_file(dir) {
        let info = match known {
            Some((path, info)) if path == current => Some(info),
            _ => read_info(&current)?,
        };
        let Some(info) = info.filter(|i| i.complete) else {
            return Ok(());
        };
        if !info.per_user || info.user == user {
            return Ok(());
        }
        set_aside(dir, &current, &info.user)?;
    }
    let mut own: Option<(std::time::SystemTime, PathBuf)> = None;
    for file in files_named(dir, USER_PREFIX)? {
        let Some(info) = read_info(&file).ok().flatten() else {
            continue;
        };
        if info.user != user || !info.complete || info.retired {
            continue;
        }
        let mtime = fs::metadata(&file)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if own.as_ref().is_none_or(|(t, _)| mtime > *t) {
            own = Some((mtime, file));
        }
    }
    if let Some((_, file)) = own {
        adopt(dir, &file)?;
        if let Some(current) = installed_file(dir) {
            write_login(&current, Some(user))?;
        }
    }
    Ok(())
}

/// Sets a replica aside for its user: writes are refused in it from now on (no one is
/// logged in there), its `-wal` is folded in, and it leaves `replica.sqlite`.
pub(super) fn set_aside(dir: &DeviceDir, current: &Path, owner: &str) -> Result<()> {
    write_login(current, None)?;
    let named = current != dir.replica_path()
        && current
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(USER_PREFIX));
    if !named {
        move_replica(dir, current, &free_name(dir, USER_PREFIX, owner))?;
    }
    if matches!(shape(dir), Shape::Link(_) | Shape::Dangling) {
        fs::remove_file(dir.replica_path())?;
        sync_dir(&dir.root)?;
    }
    Ok(())
}

pub(super) fn write_login(path: &Path, user: Option<&str>) -> Result<()> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(RETIRE_BUSY_TIMEOUT)?;
    super::record_login(&conn, user)
}
