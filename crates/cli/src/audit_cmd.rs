//! `fieldsync admin audit`, and the entry every changing `fieldsync admin` command
//! records there (`fieldsync_server::audit`).

use fieldsync_store::Store;

use crate::output::print_list;

/// Records a change the administrator just made, by the OS user running the command.
/// The change is made: a failure to record it is a warning, not the command's error.
pub fn record(store: &dyn Store, kind: &str, subject: &str, detail: &[&str]) {
    let detail: Vec<&str> = detail.iter().copied().filter(|d| !d.is_empty()).collect();
    if let Err(e) = fieldsync_server::audit::admin(store, kind, subject, &detail.join(", ")) {
        eprintln!(
            "warning: `{kind}` of `{subject}` was made but not recorded in the audit log: {e}"
        );
    }
}

/// `--force` as the detail notes it, when given.
pub fn forced(force: bool) -> &'static str {
    if force { "--force" } else { "" }
}

/// The newest `limit` entries, newest first: a table with a header line, or a JSON array.
pub fn list(store: &dyn Store, limit: u32, json: bool) -> anyhow::Result<()> {
    let entries = store.audit_list(i64::from(limit))?;
    if !json {
        println!("AT\tKIND\tACTOR\tSUBJECT\tADDRESS\tDETAIL");
    }
    print_list(&entries, json, |e| {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            e.at,
            e.kind,
            e.actor,
            e.subject,
            e.address.as_deref().unwrap_or("-"),
            if e.detail.is_empty() { "-" } else { &e.detail }
        )
    });
    Ok(())
}
