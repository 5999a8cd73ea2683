//! htex monitoring: the typed events the interchange emits (`event`), and their consumers, run
//! by the monitor thread (`monitor`): the SQLite monitoring database (`db`, schema in
//! `schema.sql`) and the Prometheus metrics (`metrics`, served by `http`); and the HTML report
//! drawn from a database (`report`).

pub mod db;
pub mod event;
mod http;
pub mod metrics;
pub mod monitor;
pub mod report;

pub use db::{Database, DbError, RunInfo, SCHEMA_VERSION};
pub use event::Event;
pub use monitor::{Monitor, MonitorConfig, MonitorError};
