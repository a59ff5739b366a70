//! Recording the files a device attached to rows (an upload's `attachments`), after
//! its entries and in the same transaction, so a photo of a row the same upload
//! inserted is recorded with it. Each is checked as a write of the device's would be:
//! the table in the task's `[files]` and writable, the row in the slice of the user.

use fieldsync_proto::wire::UploadAttachment;

use super::*;
use crate::files::{NewFile, check_new};

/// Names an attachment in refusals.
fn label(i: usize, a: &UploadAttachment) -> String {
    format!(
        "attachment {} (file `{}` of `{}` key {}, {})",
        i + 1,
        a.name,
        a.table,
        a.key,
        a.sha256
    )
}

/// Records `upload`'s attachments (the server checked their content is in its file
/// store); refuses the upload when one is not the device's to attach. An attachment
/// already recorded (same table, key and name) is left as it is.
pub(crate) fn record_attachments(
    tx: &mut dyn UploadTx,
    ctx: &IntegrateContext<'_>,
    tables: &HashMap<&str, TableCtx<'_>>,
    upload: &Upload,
) -> Result<(), IntegrateError> {
    let def = ctx.today.map_or(ctx.task, |t| &t.def);
    for (i, a) in upload.attachments.iter().enumerate() {
        let refuse = |why: String| IntegrateError::Forbidden(format!("{}: {why}", label(i, a)));
        let in_files = |d: &TaskDef| {
            d.files
                .as_ref()
                .is_some_and(|f| f.tables.contains(&a.table))
        };
        if !in_files(ctx.task) || !in_files(def) {
            return Err(refuse(format!(
                "table `{}` is not in the `[files]` of task `{}`",
                a.table, def.name
            )));
        }
        let t = tables
            .get(a.table.as_str())
            .ok_or_else(|| refuse(format!("table `{}` is not in task `{}`", a.table, def.name)))?;
        let writable = |d: &TaskDef| {
            d.table(&a.table).is_some_and(|t| {
                t.write.contains(&WriteOp::Insert) || t.write.contains(&WriteOp::Update)
            })
        };
        if !writable(ctx.task) || !writable(def) {
            return Err(refuse(format!(
                "task `{}` does not allow writes on table `{}`",
                def.name, a.table
            )));
        }
        if !tx.user_enabled(&a.user)? || !tx.user_logged_in(ctx.device, &a.user)? {
            return Err(refuse(format!(
                "user `{}` is not a user of this device",
                a.user
            )));
        }
        let file = NewFile {
            table: a.table.clone(),
            key: a.key.clone(),
            name: a.name.clone(),
            size: a.size,
            sha256: a.sha256.clone(),
            content_type: a.content_type.clone(),
            added_by: a.user.clone(),
            added_at: a.added_at,
        };
        let (info, key) =
            check_new(&file, Some(t.info.clone())).map_err(|e| refuse(e.to_string()))?;
        let params = Params {
            user: a.user.clone(),
            device: ctx.device.to_string(),
        };
        if !tx.stored_in_slice(def, t, &params, &key)? {
            return Err(refuse("the row is not in the task's slice".into()));
        }
        tx.attach_file(&info, &file)?;
    }
    Ok(())
}
