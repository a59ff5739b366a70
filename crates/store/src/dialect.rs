//! The seam between the engine-neutral SQL (`plan.rs`, `resolve.rs`) and an engine's
//! own: what the filter language compiles to, how a column is read and compared, how
//! a written value is bound, how a read row is held. Each engine module provides one
//! [`SqlDialect`]; a third engine adds its own beside them, nothing here matches on
//! engines.

use fieldsync_proto::filter::Dialect;

/// An engine's SQL, as the engine-neutral code needs it.
pub trait SqlDialect: Send + Sync {
    /// The dialect the filter language compiles to for this engine.
    fn filter_dialect(&self) -> Dialect;
    /// How a column is read for the slice: its canonical form (`column` is already
    /// quoted, `declared` its declared type). As stored unless the engine says.
    fn read_expr(&self, column: &str, _declared: &str) -> String {
        column.to_string()
    }
    /// Whether the filter language compares columns through [`Self::filter_expr`],
    /// which needs each column's declared type (looked up in the schema).
    fn typed_filters(&self) -> bool {
        false
    }
    /// How the filter language sees a column: numbers as numbers, the rest as the
    /// text the device gets. As stored unless the engine says.
    fn filter_expr(&self, column: &str, _declared: &str) -> String {
        column.to_string()
    }
    /// The placeholder of the `n`-th bound value (from 1), written to or compared
    /// with a column of type `declared`.
    fn param(&self, n: usize, declared: &str) -> String;
    /// What ends a `SELECT` of one row so that the row is held until the transaction
    /// ends (empty where the transaction already holds the whole database).
    fn lock_row(&self) -> &'static str;
}
