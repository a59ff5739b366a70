//! End-to-end tests: the real `fieldsync` binary, real SQLite files, a real server on
//! loopback. One test binary for the crate (modules below).

mod admin;
mod autosync;
mod conflicts;
mod convergence;
mod crash;
mod delta;
mod delta_property;
mod demo;
mod docking;
mod download;
mod examples;
mod faults;
mod files;
mod folder;
mod guards;
mod harness;
mod int_keys;
mod limits;
mod limits_store;
mod limits_upload;
mod office;
mod office_pg;
mod oracles;
mod pg_values;
mod postgres;
mod progress;
mod promises;
mod proxy;
mod refusals;
mod revoke;
mod send;
mod sizes;
mod tickets;
mod ui;
mod users;
