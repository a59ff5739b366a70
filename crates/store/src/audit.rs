//! The audit log: administrators' changes and refused authentications, in the main
//! database beside what they concern (`server/audit.rs` decides what is recorded).

use fieldsync_proto::time::Timestamp;

use crate::Result;

/// An entry to record; its time is the database's clock at the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit<'a> {
    /// What happened: `admin.…` for an administrator's change, `auth.…` for a refusal.
    pub kind: &'a str,
    /// Who: the administrator's OS user, or the device (and user) a request came from
    /// as far as it was checked (`-` when nothing was).
    pub actor: &'a str,
    /// What it concerned: a user, a device, a task, a file…
    pub subject: &'a str,
    /// The client's IP address for a request; `None` for the administration.
    pub address: Option<&'a str>,
    /// More about it (never a password or secret).
    pub detail: &'a str,
}

/// A recorded entry (`admin audit`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    #[serde(skip)]
    pub id: i64,
    /// The database's clock when it was recorded.
    pub at: Timestamp,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub address: Option<String>,
    pub detail: String,
}

pub trait Audits {
    /// Records `entry` and, in the same transaction, forgets all but the newest `keep`
    /// entries (an attacker's failed attempts cannot fill the disk; one index range).
    fn audit_record(&self, entry: &NewAudit<'_>, keep: i64) -> Result<()>;
    /// The newest `limit` entries, newest first.
    fn audit_list(&self, limit: i64) -> Result<Vec<AuditRecord>>;
}
