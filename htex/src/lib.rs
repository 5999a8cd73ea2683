//! The `htex` command-line crate: subcommands, the task file format of `htex run`, and the
//! embedded local cluster it runs on.

pub mod bench;
pub mod cli;
pub mod local;
pub mod manager_cmd;
pub mod run;
pub mod taskfile;

pub use local::LocalCluster;
