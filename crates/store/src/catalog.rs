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
