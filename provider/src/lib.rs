//! Where managers come from. A **block** is one request for managers: a Slurm job of
//! `nodes_per_block` nodes running one manager per node, or a few local manager processes. A
//! [`Provider`] submits blocks, reports their states in one batch, and cancels them; it knows
//! nothing of tasks. The interchange's scaling loop decides when to call it, on a thread of its
//! own (every call may run a command that takes seconds).
//!
//! - [`slurm::SlurmProvider`]: `sbatch` of a generated job script, `squeue` in batches, `scancel`;
//! - [`local::LocalProvider`]: managers as child processes of the interchange.

mod command;
pub mod config;
pub mod local;
pub mod slurm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub use config::{Launcher, ProviderConfig, ProviderKind};

/// A batch system's id for a block (a Slurm job id).
pub type JobId = String;

/// What a block needs to start its managers.
#[derive(Debug, Clone)]
pub struct BlockRequest {
    /// The block's number, unique in this interchange's run.
    pub block: u64,
    /// The block's own directory: its job script, stdout and stderr go here.
    pub dir: PathBuf,
    /// The manager command line, without `--manager-id` and `--block-id` (the provider adds
    /// ids that stay unique per node, even when nodes share a hostname).
    pub manager: Vec<String>,
}

/// Where a block is, as the batch system says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for resources; `reason` is the scheduler's (`Resources`, `PartitionDown`...).
    Pending,
    Running,
    /// Ended; the scheduler's word for how (`COMPLETED`, `CANCELLED`, `TIMEOUT`, `NODE_FAIL`...).
    Ended(JobEnd),
}

/// How a block ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Completed,
    Cancelled,
    /// Its walltime ran out.
    Timeout,
    Failed,
    NodeFail,
    OutOfMemory,
    Preempted,
    /// Gone from the batch system's view without a word (Slurm forgets finished jobs after
    /// `MinJobAge`): ended, how unknown.
    Vanished,
    Other(String),
}

impl std::fmt::Display for JobEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobEnd::Completed => "completed",
            JobEnd::Cancelled => "cancelled",
            JobEnd::Timeout => "walltime ran out",
            JobEnd::Failed => "failed",
            JobEnd::NodeFail => "node failed",
            JobEnd::OutOfMemory => "out of memory",
            JobEnd::Preempted => "preempted",
            JobEnd::Vanished => "ended (no longer known to the scheduler)",
            JobEnd::Other(word) => word,
        })
    }
}

/// One block's state, with the scheduler's reason for it when it gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub state: JobState,
    pub reason: Option<String>,
}

/// A provider's call failed. Every variant reads as a sentence with the command's own words.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("could not run `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}: {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {:.0} s (is the scheduler's controller up?)", timeout.as_secs_f64())]
    TimedOut { command: String, timeout: Duration },
    #[error("`{command}` printed what htex cannot read: {output}")]
    Unreadable { command: String, output: String },
    #[error("cannot write the block's files in {path}: {source}")]
    Files {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the provider configuration is invalid: {0}")]
    Config(String),
}

/// Submits, watches and cancels blocks. Calls block (they run commands); the interchange makes
/// them on a thread of its own, one at a time.
pub trait Provider: Send {
    /// `slurm` or `local`.
    fn kind(&self) -> &'static str;

    /// Managers each block starts.
    fn managers_per_block(&self) -> u32;

    /// How long a block may run, when the batch system ends it.
    fn walltime(&self) -> Option<Duration>;

    /// Submits one block.
    fn submit(&mut self, request: &BlockRequest) -> Result<JobId, ProviderError>;

    /// The states of these jobs, in as few calls as the batch system allows. A job missing from
    /// the answer is not known to the provider any more: it ended.
    fn status(&mut self, jobs: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError>;

    /// Cancels these jobs (their processes are signalled: drain them first).
    fn cancel(&mut self, jobs: &[JobId]) -> Result<(), ProviderError>;
}

/// Makes the provider a config names.
pub fn build(config: &ProviderConfig) -> Result<Box<dyn Provider>, ProviderError> {
    config.validate()?;
    Ok(match config.kind {
        ProviderKind::Local => Box::new(local::LocalProvider::new(config.clone())),
        ProviderKind::Slurm => Box::new(slurm::SlurmProvider::new(config.clone())),
    })
}

/// `word` quoted for a POSIX shell (unchanged when it needs no quotes).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("tcp://127.0.0.1:5"), "tcp://127.0.0.1:5");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's $HOME"), r"'it'\''s $HOME'");
    }
}
