//! fieldsync's protocol: wire types, stream frames, error codes, task files and the
//! filter language. Pure data and logic; this crate does no IO.

pub mod conflict;
pub mod filter;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod password;
pub mod row;
pub mod stream;
pub mod task;
pub mod time;
pub mod upload_body;
pub mod value;
pub mod wire;

pub use row::Row;
pub use value::{ColumnType, Value};
