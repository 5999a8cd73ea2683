//! `Task`: a builder for what a client submits.

use std::time::Duration;

use htex_protocol::{CommandSpec, ResourceRequest, TaskKind, TaskSpec};
use serde::Serialize;

use crate::ClientError;

/// A task before submission; the client numbers it when submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    kind: TaskKind,
    resources: ResourceRequest,
    priority: i32,
    timeout: Option<Duration>,
    max_retries: u32,
}

impl Task {
    fn of(kind: TaskKind) -> Self {
        Task {
            kind,
            resources: ResourceRequest::default(),
            priority: 0,
            timeout: None,
            max_retries: 0,
        }
    }

    /// A command line, run as its own process.
    pub fn command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv = argv.into_iter().map(Into::into).collect();
        Task::of(TaskKind::Command(CommandSpec {
            argv,
            ..CommandSpec::default()
        }))
    }

    /// A registered function with raw MessagePack arguments.
    pub fn function(name: impl Into<String>, args: Vec<u8>) -> Self {
        Task::of(TaskKind::Function {
            name: name.into(),
            args,
        })
    }

    /// A registered function with typed arguments.
    pub fn call<A: Serialize + ?Sized>(
        name: impl Into<String>,
        args: &A,
    ) -> Result<Self, ClientError> {
        let args = rmp_serde::to_vec(args).map_err(|e| ClientError::Encode(e.to_string()))?;
        Ok(Task::function(name, args))
    }

    /// A call to a warm runner, `NAME:FUNCTION`, with raw MessagePack arguments.
    pub fn runner_call(runner: impl Into<String>, args: Vec<u8>) -> Self {
        Task::of(TaskKind::Call {
            runner: runner.into(),
            args,
        })
    }

    /// A call to `function` of the slot's warm runner `runner`, with typed arguments: a tuple or
    /// list becomes positional arguments, a map keyword arguments (for Python runners).
    pub fn call_runner<A: Serialize + ?Sized>(
        runner: &str,
        function: &str,
        args: &A,
    ) -> Result<Self, ClientError> {
        let args = rmp_serde::to_vec(args).map_err(|e| ClientError::Encode(e.to_string()))?;
        Ok(Task::runner_call(format!("{runner}:{function}"), args))
    }

    /// Higher runs first (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Ends the task with `Timeout` when it runs longer than this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many lost managers the task survives by being run again.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// What the task needs of its slot.
    pub fn resources(mut self, resources: ResourceRequest) -> Self {
        self.resources = resources;
        self
    }

    /// Adds an environment variable (commands only).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let TaskKind::Command(c) = &mut self.kind {
            c.env.push((key.into(), value.into()));
        }
        self
    }

    /// Sets the working directory (commands only).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        if let TaskKind::Command(c) = &mut self.kind {
            c.cwd = Some(dir.into());
        }
        self
    }

    /// Feeds bytes to the command's stdin (commands only).
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        if let TaskKind::Command(c) = &mut self.kind {
            c.stdin = Some(data.into());
        }
        self
    }

    pub(crate) fn into_spec(self, id: u64, submitted_us: u64) -> TaskSpec {
        TaskSpec {
            id,
            kind: self.kind,
            resources: self.resources,
            priority: self.priority,
            timeout_ms: self.timeout.map(|t| t.as_millis() as u64),
            max_retries: self.max_retries,
            submitted_us,
        }
    }
}
