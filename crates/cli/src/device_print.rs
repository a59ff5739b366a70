//! What `fieldsync device` prints of an operation's report, of a value not kept and of
//! the options, for a person.

use fieldsync_client::{Options, Report, SyncOp};

use crate::output::print_json;

/// One value not kept, as a person reads it: where, whose, theirs against the kept one.
pub fn not_kept_line(n: &fieldsync_proto::wire::NotKept) -> String {
    let show = |v: &Option<fieldsync_proto::Value>| match v {
        Some(v) => serde_json::to_string(v).unwrap_or_default(),
        None => "(no row)".into(),
    };
    let key = serde_json::to_string(&n.key).unwrap_or_default();
    let what = match &n.column {
        Some(col) => format!("{col}: yours {}, kept {}", show(&n.device), show(&n.kept)),
        None => "the change to the row was not applied".into(),
    };
    let policy = if n.policy.is_empty() {
        String::new()
    } else {
        format!(", {}", n.policy)
    };
    format!(
        "{} {key} by {}\t{what}\t({} {}{policy})",
        n.table, n.user, n.kind, n.resolution
    )
}

pub fn print_report(r: &Report) {
    let files = format!(
        "files: {} fetched, {} byte(s); {} in the slice",
        r.files.fetched, r.files.bytes, r.files.in_slice
    );
    if r.op == SyncOp::Files {
        println!("{files}");
        return;
    }
    if r.files.in_slice > 0 || r.files.fetched > 0 {
        println!("{files}");
    }
    if let Some(b) = &r.backup {
        println!("local changes backed up to {}", b.display());
    }
    if r.op != SyncOp::Download {
        println!(
            "sent {} change(s), {} byte(s); {} conflict(s) logged by the server",
            r.rows_up, r.bytes_up, r.conflicts
        );
        for n in &r.not_kept {
            println!("not kept: {}", not_kept_line(n));
        }
    }
    if let Some(d) = &r.delta {
        println!(
            "task {}: only the changes since the last download: {} row(s) changed, {} entered, {} left; {} bytes in {} ms",
            r.task.as_deref().unwrap_or("-"),
            d.changed,
            d.entered,
            d.left,
            r.bytes_down,
            r.duration_ms
        );
    } else if r.op != SyncOp::Send {
        if let Some(why) = &r.full_reason {
            println!("the whole slice ({why})");
        }
        println!(
            "downloaded task {}: {} rows ({}), {} bytes in {} ms",
            r.task.as_deref().unwrap_or("-"),
            r.rows_down,
            r.tables
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.bytes_down,
            r.duration_ms
        );
    }
}

/// The options as `device options` prints them: one `name: on|off` line each, or JSON.
pub fn print_options(o: &Options, json: bool) {
    if json {
        print_json(o);
        return;
    }
    let on = |b: bool| if b { "on" } else { "off" };
    println!("auto-sync: {}", on(o.auto_sync));
    println!("download-data: {}", on(o.download_data));
    let inactive = if o.download_files && !o.download_data {
        " (acts only with download-data on)"
    } else {
        ""
    };
    println!("download-files: {}{inactive}", on(o.download_files));
}
