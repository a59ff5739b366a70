//! What an upload's entries are judged by before any lock: the task's tables today,
//! and each entry's table, operation, columns, user and key shape.

use super::*;

/// The task's tables as they are today (none when the task is gone), each with its
/// columns and filter; a table gone, untracked or without a task column is an error.
pub(super) fn today_tables<'a, L: Lookups + ?Sized>(
    l: &mut L,
    ctx: &IntegrateContext<'a>,
) -> Result<HashMap<&'a str, TableCtx<'a>>, IntegrateError> {
    let def = ctx.today.map_or(ctx.task, |t| &t.def);
    let mut tables = HashMap::default();
    for t in ctx
        .today
        .map(|t| t.def.tables.as_slice())
        .unwrap_or_default()
    {
        let info = l
            .table_info(&t.name)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", t.name)))?;
        if !info.tracked {
            return Err(plan::untracked(&t.name).into());
        }
        let columns = plan::slice_columns(t, &info);
        if let Some(gone) = columns.iter().find(|c| info.column(c).is_none()) {
            return Err(StoreError::Invalid(format!(
                "column `{gone}` no longer exists in table `{}` of the main database (the office \
                 changed its schema); ask the office to update task `{}`",
                t.name, def.name
            ))
            .into());
        }
        let filter = t
            .filter
            .as_deref()
            .map(filter::parse)
            .transpose()
            .map_err(|e| StoreError::Db(e.to_string()))?;
        tables.insert(
            t.name.as_str(),
            TableCtx {
                task_table: t,
                info,
                columns,
                filter,
            },
        );
    }
    Ok(tables)
}

/// Entry users judged so far in an upload: allowed, or why not.
pub(super) type UserChecks = HashMap<String, Result<(), String>>;

/// The checks of one entry that depend on nothing the upload's transaction locks
/// (the task versions, the schema, the entry's users): a refusal, `None` when the
/// entry is a `task-changed` conflict (logged, not applied), else today's table.
pub(super) fn judge_static<'t, 'a, L: Lookups + ?Sized>(
    l: &mut L,
    ctx: &IntegrateContext<'a>,
    tables: &'t HashMap<&'a str, TableCtx<'a>>,
    users: &mut UserChecks,
    i: usize,
    e: &UploadEntry,
) -> Result<Option<&'t TableCtx<'a>>, IntegrateError> {
    let label = Label(i, e);
    let device_def = ctx.task;
    // What the device's own task version never allowed refuses the upload.
    let device_table = device_def.table(&e.table).ok_or_else(|| {
        forbidden(
            &label,
            format!("table `{}` is not in task `{}`", e.table, device_def.name),
        )
    })?;
    if !device_table.write.contains(&e.op) {
        return Err(forbidden(
            &label,
            format!(
                "task `{}` does not allow {} on table `{}`",
                device_def.name,
                op_name(e.op),
                e.table
            ),
        ));
    }
    let user_check = match users.get(e.user.as_str()) {
        Some(ok) => ok.clone(),
        None => {
            let ok = if !l.user_enabled(&e.user)? {
                Err(format!("user `{}` is disabled", e.user))
            } else if !l.user_logged_in(ctx.device, &e.user)? {
                Err(format!(
                    "user `{}` never logged in on device `{}`",
                    e.user, ctx.device
                ))
            } else {
                Ok(())
            };
            users.insert(e.user.clone(), ok.clone());
            ok
        }
    };
    user_check.map_err(|why| forbidden(&label, why))?;
    let today = tables.get(e.table.as_str());
    let written = || e.new.keys().chain(e.old.keys());
    if let Some(cols) = &device_table.columns {
        let key = today.map(|t| &t.info.primary_key);
        let parent_key = device_table.parent.as_ref().map(|p| &p.key);
        if let Some(col) =
            written().find(|c| !cols.contains(c) && Some(*c) != key && Some(*c) != parent_key)
        {
            return Err(forbidden(
                &label,
                format!("column `{col}` is not in the task"),
            ));
        }
    }
    let def = ctx.today.map_or(device_def, |t| &t.def);
    // A column the office dropped is its schema change, not the device's fault.
    if let Some(t) = today
        && let Some(col) = written().find(|c| t.info.column(c).is_none())
    {
        return Err(IntegrateError::Store(StoreError::Invalid(format!(
            "{}: column `{col}` no longer exists in table `{}` of the main database \
             (the office changed its schema); ask the office to update task `{}`",
            entry_label(i, e),
            e.table,
            def.name
        ))));
    }
    // What that version allowed and today's task does not (a table, column or
    // permission removed, the user unassigned, the task unassigned, deleted or
    // renamed) is a conflict: logged, not applied; the rest of the upload goes on.
    let allowed_today = |t: &&TableCtx<'_>| {
        ctx.today.is_some_and(|x| x.users.contains(&e.user))
            && t.task_table.write.contains(&e.op)
            && written().all(|c| t.columns.contains(c))
    };
    let Some(t) = today.filter(allowed_today) else {
        return Ok(None);
    };
    let pk = &t.info.primary_key;
    if e.op == WriteOp::Update && e.new.contains_key(pk) {
        return Err(forbidden(&label, "primary-key values cannot be updated"));
    }
    if e.op == WriteOp::Insert && !e.new.get(pk).is_some_and(|k| k.same(&e.key)) {
        return Err(forbidden(&label, "an insert must carry its key"));
    }
    Ok(Some(t))
}

/// The checks of every entry that need no lock (see [`judge_static`]), over the whole
/// upload before the engine takes any: a forbidden entry, even the last of a million,
/// is refused without ever holding a write lock or a row lock. `Some`: the upload id
/// was recorded meanwhile (its outcome is the answer). The upload's transaction
/// checks again what it reads (a user disabled in between is still refused).
pub(crate) fn precheck(
    l: &mut dyn Lookups,
    ctx: &IntegrateContext<'_>,
    upload: &Upload,
) -> Result<Option<UploadOutcome>, IntegrateError> {
    let checked = today_tables(l, ctx).and_then(|tables| {
        let mut users = UserChecks::default();
        for (i, e) in upload.entries.iter().enumerate() {
            judge_static(l, ctx, &tables, &mut users, i, e)?;
        }
        Ok(())
    });
    match checked {
        Ok(()) => Ok(None),
        // A known upload is answered with its outcome, whatever changed since.
        Err(refusal) => match l.recorded_now(&upload.upload_id)? {
            Some((device, outcome)) => repeated(ctx, &device, &outcome).map(Some),
            None => Err(refusal),
        },
    }
}
