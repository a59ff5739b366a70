//! Applying an upload's entries in the engine's transaction: each entry judged
//! against the row as it is, written, logged as a conflict or refused.

use super::*;

pub(crate) fn integrate(
    tx: &mut dyn UploadTx,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    let outcome = entries(tx, ctx, upload);
    // A write the engine let wait, refused when it was written: named as its entry.
    if let Err(IntegrateError::Store(_)) = &outcome
        && let Some((i, why)) = tx.refused_write()
        && let Some(e) = upload.entries.get(i)
    {
        return Err(forbidden(
            &Label(i, e),
            format!("the main database refused it: {why}"),
        ));
    }
    outcome
}

fn entries(
    tx: &mut dyn UploadTx,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<UploadOutcome, IntegrateError> {
    if let Some((device, outcome)) = tx.recorded(&upload.upload_id)? {
        return repeated(ctx, &device, &outcome);
    }

    // Slices are judged by the task as it is today; what the device could write, by
    // the version it worked under.
    let device_def = ctx.task;
    let def = ctx.today.map_or(device_def, |t| &t.def);
    let task_changed = ctx.today.is_none_or(|t| t.def != *device_def);
    let tables = today_tables(tx, ctx)?;
    tx.read_ahead(&upload.entries);
    let mut users = UserChecks::default();
    let mut params_of: HashMap<&str, Params> = HashMap::default();
    let mut base_kinds: HashMap<i64, Option<BaseKind>> = HashMap::default();
    // Read only for an entry that needs it (off the path of ordinary uploads).
    let mut pruned_through: Option<Option<i64>> = None;
    // Rows an earlier entry of this upload wrote (true) or left alone with a conflict
    // (false): a later entry of the same row (an insert and the update that moved it
    // out of the slice, a delete and the insert that re-created its key) is judged
    // against what that entry did, not as somebody else's change.
    let mut done: HashMap<(&str, String), Done> = HashMap::default();
    let parent_tables: std::collections::HashSet<&str> = def
        .tables
        .iter()
        .filter_map(|t| t.parent.as_ref().map(|p| p.table.as_str()))
        .collect();
    let mut outcome = UploadOutcome {
        upload_id: upload.upload_id.clone(),
        applied: 0,
        conflicts: 0,
        versions: Vec::with_capacity(upload.entries.len()),
        repeated: false,
        not_kept: Vec::new(),
    };
    for (i, e) in upload.entries.iter().enumerate() {
        let label = Label(i, e);
        let Some(t) = judge_static(tx, ctx, &tables, &mut users, i, e)? else {
            not_applied(tx, ctx, e, &mut outcome, "task-changed")?;
            continue;
        };
        let pk = &t.info.primary_key;
        // A base is a version the server handed to this device, never a number the
        // device made up: a made-up one could make an office change look seen.
        let base_kind = match e.base_version {
            None => None,
            Some(b) => {
                let kind = match base_kinds.get(&b) {
                    Some(k) => *k,
                    None => {
                        let k = if ctx.restored {
                            Some(BaseKind::Unknown)
                        } else {
                            tx.base_kind(ctx.device, b)?
                        };
                        base_kinds.insert(b, k);
                        k
                    }
                };
                Some(kind.ok_or_else(|| {
                    forbidden(
                        &label,
                        "its base version was never handed to this device by the server",
                    )
                })?)
            }
        };
        let params = params_of.entry(e.user.as_str()).or_insert_with(|| Params {
            user: e.user.clone(),
            device: ctx.device.to_string(),
        });
        let row_id = (
            e.table.as_str(),
            serde_json::to_string(&e.key).expect("serializes"),
        );
        let earlier = done.get(&row_id).copied();
        let mut current = tx.current(def, t, params, i, &e.key, e.base_version)?;
        if current.is_none()
            && e.op != WriteOp::Insert
            && let Some(base) = e.base_version
            && match pruned_through {
                Some(p) => p,
                None => *pruned_through.insert(tx.pruned_through()?),
            }
            .is_some_and(|p| base < p)
        {
            // A row the device had, unknown now: deleted by the office after the base,
            // its tombstone pruned (retention). Judged as the deletion it was.
            current = Some(Current {
                version: 0,
                deleted: true,
                in_slice: false,
                changed: true,
                left: false,
                values: Default::default(),
            });
        }
        if let Some(c) = current.as_mut() {
            if earlier == Some(Done::Written) {
                // This upload wrote the row itself: not somebody else's change.
                c.changed = false;
                c.left = false;
            } else if base_kind == Some(BaseKind::Unknown) {
                // Compared by value. Only a restore excuses a row outside the slice:
                // otherwise nothing shows it ever was the device's.
                if !ctx.restored && !c.in_slice && !c.deleted {
                    return Err(forbidden(&label, conflict::NOT_IN_SLICE));
                }
                c.changed = true;
                c.left = ctx.restored;
            } else if base_kind == Some(BaseKind::Upload)
                && !c.in_slice
                && !c.changed
                && !task_changed
                && tx.wrote(e.base_version.unwrap_or_default(), c.version)?
            {
                // Written by the device's own send (the row's version is that send's),
                // unchanged since, and outside the slice now: that send moved it out.
                // A row merely older than the send's version was never written by it:
                // taking it for one would let a forger reach any row of that age.
                // Under a task changed since the device's version, the change may have
                // taken it out instead: judged below as `task-changed`, not applied.
                c.left = true;
            }
        }
        if earlier == Some(Done::Written) && current.as_ref().is_some_and(|c| c.deleted) {
            // Deleted by this upload a moment ago: the key is free for its insert.
            current = None;
        }
        // Values compare as they travel: the device's own, in the canonical form.
        let canonical_entry;
        let e = if current
            .as_ref()
            .is_some_and(|c| c.changed || e.op == WriteOp::Insert)
        {
            let mut c = e.clone();
            tx.canonical(&t.info, &mut c.old)?;
            tx.canonical(&t.info, &mut c.new)?;
            canonical_entry = c;
            &canonical_entry
        } else {
            e
        };
        let filtered = match (&t.filter, e.op) {
            (Some(f), WriteOp::Insert) => {
                let mut probe: conflict::Row = f
                    .columns()
                    .into_iter()
                    .filter_map(|c| e.new.get(&c).map(|v| (c, v.clone())))
                    .collect();
                tx.canonical(&t.info, &mut probe)?;
                probe
            }
            _ => Default::default(),
        };
        let insert_in_slice = e.op == WriteOp::Insert
            && t.filter.as_ref().is_none_or(|f| {
                f.matches_typed(
                    &|c| filtered.get(c).cloned().unwrap_or(Value::Null),
                    &|c| {
                        t.info
                            .column(c)
                            .is_some_and(|c| c.column_type == ColumnType::Decimal)
                    },
                    params,
                )
            });
        // The device's own check judged the new row by the values it wrote (a time
        // with an offset, as text); the server by the values as the main database
        // takes them. Where they disagree, the device's check was a courtesy that
        // erred: the row is logged, not applied, and the rest of the upload goes on.
        let device_saw_inside = e.op == WriteOp::Insert
            && !insert_in_slice
            && t.filter.as_ref().is_some_and(|f| {
                f.matches(&|c| e.new.get(c).cloned().unwrap_or(Value::Null), params)
            });
        let decision = if earlier == Some(Done::Skipped) {
            // The entry this one builds on was not applied: neither is this one.
            Decision::Skip(Some(not_applied_note("left-slice", e, current.as_ref())))
        } else {
            conflict::decide(
                e,
                current.as_ref(),
                insert_in_slice,
                t.task_table.conflict,
                pk,
            )
        };
        let (write, note) = match decision {
            Decision::Forbidden(_) if device_saw_inside => {
                not_applied(tx, ctx, e, &mut outcome, "outside-slice")?;
                continue;
            }
            // Outside today's slice, under a task changed since the device's version
            // (a narrowed filter): the version allowed it, so a conflict.
            Decision::Forbidden(_) if task_changed => {
                not_applied(tx, ctx, e, &mut outcome, "task-changed")?;
                continue;
            }
            Decision::Forbidden(why) => return Err(forbidden(&label, why)),
            Decision::Apply(w, n) => (Some(w), n),
            Decision::Skip(n) => (None, n),
        };
        // The task is judged on what the write really does: an insert onto a key the
        // slice already holds would be an update. Where the task allows no update,
        // it is logged, not applied (the device's own edits were allowed).
        let (write, note) = match (&write, e.op) {
            (Some(Write::Update(_)), WriteOp::Insert)
                if !t.task_table.write.contains(&WriteOp::Update) =>
            {
                let lost = not_applied_note("insert-exists", e, current.as_ref());
                (None, Some(lost))
            }
            _ => (write, note),
        };
        // The row's own filter was checked in `decide`; its parent chain is the
        // database's to judge, before the row is written.
        let (write, note) = match (&write, &t.task_table.parent) {
            (Some(Write::Insert(row)), Some(p)) => {
                let parent_key = row.get(&p.key).unwrap_or(&Value::Null);
                let (inside, left) =
                    tx.parent(def, &p.table, params, parent_key, e.base_version)?;
                if inside {
                    (write, note)
                } else if e.base_version.is_some()
                    && (left || (ctx.restored && base_kind == Some(BaseKind::Unknown)))
                {
                    // The office moved the parent out of the slice after the device
                    // saw it: the new row is logged, not applied.
                    let lost = ConflictNote {
                        kind: "left-slice",
                        resolution: "not-applied",
                        device: e.new.clone(),
                        server: Default::default(),
                    };
                    (None, Some(lost))
                } else if task_changed {
                    not_applied(tx, ctx, e, &mut outcome, "task-changed")?;
                    continue;
                } else {
                    return Err(forbidden(
                        &label,
                        format!("the parent `{}` row is not in the task's slice", p.table),
                    ));
                }
            }
            _ => (write, note),
        };
        // A new row's integer key comes from this device's blocks: any other could be
        // one the office's sequence hands out later (`crate::keys`).
        if let Some(Write::Insert(_)) = &write
            && earlier != Some(Done::Written)
            && t.info
                .column(pk)
                .is_some_and(|c| c.column_type == ColumnType::Integer)
        {
            let claimed = match &e.key {
                Value::Integer(k) => tx.claim_key(ctx.device, &t.info.name, *k)?,
                _ => false,
            };
            if !claimed {
                return Err(forbidden(
                    &label,
                    "its integer key is not one the server reserved for this device",
                ));
            }
        }
        let mut version = None;
        let mut row_after = None;
        if let Some(w) = &write {
            tx.apply(i, &t.info, &e.key, w).map_err(|err| match err {
                ApplyError::Refused(why) => {
                    forbidden(&label, format!("the main database refused it: {why}"))
                }
                ApplyError::Store(s) => IntegrateError::Store(s),
            })?;
            // Slice membership of a new row is judged on the row as the main database
            // stores it: a value its column converts (text `"1"` into an integer
            // column) must not pass the filter as one thing and be stored as another.
            if let Write::Insert(row) = w
                && needs_stored_check(t, row)
                && !tx.stored_in_slice(def, t, params, &e.key)?
            {
                return Err(forbidden(
                    &label,
                    "the inserted row is outside the task's slice as the main database stores it",
                ));
            }
            outcome.applied += 1;
            if parent_tables.contains(e.table.as_str()) {
                tx.forget_parents();
            }
            if !matches!(w, Write::Delete) {
                version = Some(tx.new_version(ctx.device)?);
                // The device holds its own values; where the main database's row is
                // not exactly those (a conflict, or office changes merged), it gets
                // the row as written, so the version is a true base for it.
                let clean = note.is_none() && current.as_ref().is_none_or(|c| !c.changed);
                if !clean {
                    let mut after = current
                        .as_ref()
                        .map(|c| c.values.clone())
                        .unwrap_or_default();
                    if let Write::Update(cols) | Write::Insert(cols) = w {
                        after.extend(cols.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                    row_after = Some(after);
                }
            }
        }
        done.insert(
            row_id,
            if write.is_some() {
                Done::Written
            } else if note.is_some() && current.is_none() {
                Done::Skipped
            } else {
                Done::Judged
            },
        );
        if let Some(n) = &note {
            let policy = serde_json::to_value(t.task_table.conflict).expect("serializes");
            let policy = policy.as_str().unwrap_or_default();
            tx.log_conflict(&ConflictLog {
                ctx,
                entry: e,
                policy,
                note: n,
                server_version: current.as_ref().map(|c| c.version),
            })?;
            outcome.conflicts += 1;
            // The row as the main database holds it now, for the crew's list of
            // values not kept; never a row outside the slice (another task's values).
            let after = match &write {
                Some(Write::Delete) => None,
                Some(_) => row_after.as_ref(),
                None => current
                    .as_ref()
                    .filter(|c| !c.deleted && c.in_slice)
                    .map(|c| &c.values),
            };
            let policy = if n.resolution == "not-applied" {
                ""
            } else {
                policy
            };
            outcome.not_kept.extend(n.not_kept(e, policy, after));
        }
        outcome.versions.push(NewVersion {
            table: e.table.clone(),
            key: e.key.clone(),
            version,
            row: row_after,
        });
    }
    tx.settle_versions(&mut outcome.versions)?;
    super::attach::record_attachments(tx, ctx, &tables, upload)?;
    let recorded = serde_json::to_string(&outcome).expect("serializes");
    tx.record(ctx, &upload.upload_id, &recorded)?;
    Ok(outcome)
}

/// The note of an entry not applied: the device's values against the row as it is.
fn not_applied_note(
    kind: &'static str,
    e: &UploadEntry,
    current: Option<&Current>,
) -> ConflictNote {
    ConflictNote {
        kind,
        resolution: "not-applied",
        device: e.new.clone(),
        server: current.map(|c| c.values.clone()).unwrap_or_default(),
    }
}

/// Logs an entry the device had every reason to make and the server does not apply
/// (`task-changed`: its task version allowed it, today's does not; `outside-slice`:
/// the device judged the new row inside the slice by the values it wrote, the server
/// by the values as the main database takes them), and applies nothing of it.
fn not_applied(
    tx: &mut dyn UploadTx,
    ctx: &IntegrateContext<'_>,
    e: &UploadEntry,
    outcome: &mut UploadOutcome,
    kind: &'static str,
) -> Result<(), IntegrateError> {
    let device = if e.op == WriteOp::Delete {
        e.old.clone()
    } else {
        e.new.clone()
    };
    let note = ConflictNote {
        kind,
        resolution: "not-applied",
        device,
        server: Default::default(),
    };
    tx.log_conflict(&ConflictLog {
        ctx,
        entry: e,
        policy: "",
        note: &note,
        server_version: None,
    })?;
    outcome.conflicts += 1;
    outcome.not_kept.push(fieldsync_proto::wire::NotKept {
        table: e.table.clone(),
        key: e.key.clone(),
        user: e.user.clone(),
        column: None,
        device: None,
        kept: None,
        policy: String::new(),
        kind: kind.to_string(),
        resolution: note.resolution.to_string(),
    });
    outcome.versions.push(NewVersion {
        table: e.table.clone(),
        key: e.key.clone(),
        version: None,
        row: None,
    });
    Ok(())
}

/// What an earlier entry of the same upload did to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Written,
    /// Logged, not applied, and the row does not exist: later entries cannot apply.
    Skipped,
    /// Judged and left as it was (nothing to build on).
    Judged,
}

/// Whether an inserted row's slice membership must be read back from the database:
/// a filter or parent column whose value is not of the column's own kind may be
/// converted on the way in (the Rust judgment saw the value before conversion).
fn needs_stored_check(t: &TableCtx<'_>, row: &fieldsync_proto::conflict::Row) -> bool {
    let mut cols: Vec<String> = t.filter.as_ref().map(|f| f.columns()).unwrap_or_default();
    if let Some(p) = &t.task_table.parent {
        cols.push(p.key.clone());
    }
    cols.iter().any(|c| {
        let v = row.get(c).unwrap_or(&Value::Null);
        let Some(info) = t.info.column(c) else {
            return true;
        };
        !matches!(
            (v, info.column_type, plain_text(&info.declared_type)),
            (Value::Null, ..)
                | (Value::Integer(_), ColumnType::Integer, _)
                | (Value::Real(_), ColumnType::Real, _)
                | (Value::Text(_), ColumnType::Text, true)
                | (Value::Blob(_), ColumnType::Blob, _)
        )
    })
}

/// A declared type whose values are stored as the text given (no parsing on the way).
fn plain_text(declared: &str) -> bool {
    let d = declared.to_ascii_lowercase();
    d.contains("char") || d.contains("text") || d.contains("clob")
}
