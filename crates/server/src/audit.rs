//! The audit log (`fieldsync admin audit`): every change an administrator makes with
//! `fieldsync admin`, and every authentication the server refuses, in the main
//! database (`Audits`). Only the newest [`keep`] entries stay: a crowd of failed
//! attempts cannot fill the disk, it can only push older entries out (the request
//! log, `fieldsync::audit` lines, keeps its own copy).
//!
//! A refusal is handed to the [`Writer`] by the request log's middleware from a
//! [`Note`] the refusing code puts on its error (`ApiError::audited`), with the
//! client's address (the TCP peer, never a header). The writer is one thread of its
//! own with a bounded queue: the answer never waits for the write, so refusals a
//! device must not be able to tell apart (an unknown device, a bad secret, a revoked
//! device's id with a bad secret), which differ only in the note's detail, take the
//! same time, and a flood of refusals holds one database connection, not one per
//! request. What does not fit in the queue is counted and recorded as `audit.dropped`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use fieldsync_store::{NewAudit, Result, Store};

/// How many entries the audit log keeps: `FIELDSYNC_AUDIT_KEEP` (at least 1), else
/// 100 000.
pub fn keep() -> i64 {
    static KEEP: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        std::env::var("FIELDSYNC_AUDIT_KEEP")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(100_000)
    });
    *KEEP
}

/// Longest actor, subject or detail recorded, in characters: what a request names
/// (a user name in a login body, a device id in a header) is the requester's to make
/// as long as the body allows.
const FIELD_MAX_CHARS: usize = 200;

/// `text` as recorded: at most [`FIELD_MAX_CHARS`], control characters (a forged line
/// in `admin audit`'s table) replaced by `?`.
fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(FIELD_MAX_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > FIELD_MAX_CHARS {
        out.push('…');
    }
    out
}

/// The OS user running a command: `$USER`, else `unknown`.
pub fn os_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Records a change an administrator made (`kind` `admin.…`), by the OS user.
pub fn admin(store: &dyn Store, kind: &str, subject: &str, detail: &str) -> Result<()> {
    admin_by(store, &os_user(), kind, subject, detail)
}

/// Records a change an administrator made, by `actor` (the console's signed-in user).
pub fn admin_by(
    store: &dyn Store,
    actor: &str,
    kind: &str,
    subject: &str,
    detail: &str,
) -> Result<()> {
    store.audit_record(
        &NewAudit {
            kind,
            actor: &clean(actor),
            subject: &clean(subject),
            address: None,
            detail: &clean(detail),
        },
        keep(),
    )
}

/// What kind of authentication was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A login's user name or password was wrong (the password is never recorded).
    LoginFailed,
    /// A login refused unchecked: too many failures (`throttle.rs`).
    LoginThrottled,
    /// The user is disabled: at a login, a request of their session, a ticket.
    UserDisabled,
    /// No, unknown or bad device credentials (alike on the wire).
    DeviceRefused,
    /// A revoked device's right credentials.
    DeviceRevoked,
    /// No, unknown or expired session token, or another device's.
    SessionRefused,
    /// A wrong or used enrollment code.
    PairRefused,
    /// An unknown, used or expired auto-sync ticket.
    TicketRefused,
    /// Not a refusal: refusals that came faster than the writer wrote, counted.
    Dropped,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::LoginFailed => "auth.login-failed",
            Refusal::LoginThrottled => "auth.login-throttled",
            Refusal::UserDisabled => "auth.user-disabled",
            Refusal::DeviceRefused => "auth.device-refused",
            Refusal::DeviceRevoked => "auth.device-revoked",
            Refusal::SessionRefused => "auth.session-refused",
            Refusal::PairRefused => "auth.pair-refused",
            Refusal::TicketRefused => "auth.ticket-refused",
            Refusal::Dropped => "audit.dropped",
        }
    }
}

/// A refusal to record, carried on its response to the request log's middleware
/// (which knows the client's address).
#[derive(Debug, Clone)]
pub struct Note {
    kind: Refusal,
    actor: String,
    subject: String,
    detail: String,
}

impl Note {
    /// `actor`: the device (and user) as far as checked, `-` when nothing was;
    /// `subject`: what the request named (a user, a device).
    pub fn new(kind: Refusal, actor: &str, subject: &str, detail: impl Into<String>) -> Note {
        Note {
            kind,
            actor: clean(actor),
            subject: clean(subject),
            detail: clean(&detail.into()),
        }
    }
}

/// Refusals waiting for the writer; beyond it they are counted, not queued.
const QUEUE: usize = 1024;

/// The audit writer of one server: its thread writes the refusals queued, in order.
pub struct Writer {
    queue: SyncSender<(Note, Option<String>)>,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer's thread; it ends once the writer is dropped and its queue
    /// is written.
    pub fn start(store: Arc<dyn Store>) -> Writer {
        let (queue, rx) = std::sync::mpsc::sync_channel::<(Note, Option<String>)>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let missed = dropped.clone();
        std::thread::Builder::new()
            .name("fieldsync-audit".into())
            .spawn(move || {
                for (note, address) in rx {
                    write(&*store, &note, address.as_deref());
                    let n = missed.swap(0, Ordering::Relaxed);
                    if n > 0 {
                        let detail = format!(
                            "{n} refusals not recorded: they came faster than the audit \
                             log is written (the server's log has them)"
                        );
                        let lost = Note::new(Refusal::Dropped, "-", "-", detail);
                        write(&*store, &lost, None);
                    }
                }
            })
            .expect("the audit thread starts");
        Writer { queue, dropped }
    }

    /// Logs a refusal from `address` and queues it for the audit log, without waiting.
    pub fn refused(&self, note: Note, address: Option<String>) {
        tracing::info!(
            target: "fieldsync::audit",
            kind = note.kind.as_str(),
            actor = %note.actor,
            subject = %note.subject,
            address = address.as_deref().unwrap_or("-"),
            detail = %note.detail,
        );
        match self.queue.try_send((note, address)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("the audit thread has stopped: a refusal was not recorded");
            }
        }
    }
}

/// Writes one entry; a failure is logged, never the request's.
fn write(store: &dyn Store, note: &Note, address: Option<&str>) {
    let entry = NewAudit {
        kind: note.kind.as_str(),
        actor: &note.actor,
        subject: &note.subject,
        address,
        detail: &note.detail,
    };
    if let Err(e) = store.audit_record(&entry, keep()) {
        tracing::warn!(error = %e, kind = entry.kind, "recording a refusal in the audit log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_text_is_bounded_and_on_one_line() {
        assert_eq!(clean("ana"), "ana");
        assert_eq!(clean("a\nb\tc"), "a?b?c");
        let long = clean(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), FIELD_MAX_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
