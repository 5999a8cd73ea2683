//! The htex worker: a process a manager spawns per slot. It reads tasks from stdin, runs one at a
//! time, and writes each result to stdout (both framed by [`htex_protocol::stdio`]).
//!
//! Build your own worker with your own functions:
//!
//! ```no_run
//! use htex_worker::Registry;
//!
//! let mut registry = Registry::with_builtins();
//! registry.register("add", |(a, b): (i64, i64)| Ok::<_, String>(a + b));
//! htex_worker::serve(&registry).expect("worker failed");
//! ```
//! and start managers with `--worker-command /path/to/your-worker`.

mod command;
mod registry;
mod runners;
mod serve;

pub use command::{run_command, DEFAULT_OUTPUT_LIMIT};
pub use registry::{FunctionError, Registry};
pub use serve::{serve, WorkerError};
