//! What every engine's catalog answers alike: an insert that added nothing (the
//! record exists), a change or check that found no record.

use crate::{Result, StoreError};

/// `added`: the insert of `what` `name` added its row; otherwise it exists.
pub(crate) fn added(added: bool, what: &str, name: &str) -> Result<()> {
    if added {
        Ok(())
    } else {
        Err(StoreError::AlreadyExists(format!("{what} `{name}` exists")))
    }
}

/// `found`: the change or check found `what` `name`; otherwise there is none.
pub(crate) fn found(found: bool, what: &str, name: &str) -> Result<()> {
    if found {
        Ok(())
    } else {
        Err(StoreError::NotFound(format!("no {what} `{name}`")))
    }
}

/// A session's scope as its two columns store it: `scope` and `scope_task`.
pub(crate) fn scope_columns(scope: &crate::SessionScope) -> (&'static str, Option<&str>) {
    match scope {
        crate::SessionScope::User => ("user", None),
        crate::SessionScope::Auto { task } => ("auto", task.as_deref()),
    }
}

/// The scope its two stored columns name.
pub(crate) fn scope_of(scope: &str, task: Option<String>) -> Result<crate::SessionScope> {
    match scope {
        "user" => Ok(crate::SessionScope::User),
        "auto" => Ok(crate::SessionScope::Auto { task }),
        other => Err(StoreError::Db(format!("unknown session scope `{other}`"))),
    }
}
