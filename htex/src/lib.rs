//! The `htex` command-line crate: subcommands and the task file format of `htex run`. The
//! processes' logic lives in the role crates (`htex-interchange`, `htex-manager`, ...); the
//! embedded cluster `htex run` uses is `htex-local`.

pub mod bench;
pub mod cli;
pub mod common;
pub mod interchange_cmd;
pub mod live;
pub mod manager_cmd;
pub mod run;
pub mod taskfile;
