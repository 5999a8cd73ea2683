//! The worker's loop over its stdin/stdout pipes.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::fd::FromRawFd;

use htex_protocol::stdio::{read_frame, write_frame};
use htex_protocol::{
    decode, encode, max_item_bytes, now_us, CodecError, TaskError, TaskKind, TaskResult, TaskSpec,
    Timings, WorkerReply, WorkerRequest, DEFAULT_MAX_FRAME_BYTES,
};

use crate::command::{run_command, DEFAULT_OUTPUT_LIMIT};
use crate::registry::Registry;
use crate::runners::RunnerPool;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker pipe to the manager failed: {0}")]
    Pipe(#[from] std::io::Error),
    #[error("bad message from the manager: {0}")]
    Codec(#[from] CodecError),
}

/// Serves tasks from the manager until stdin closes or a `Shutdown` arrives.
///
/// The protocol owns the original stdout; fd 1 is pointed at stderr so that anything a function
/// prints cannot corrupt the frames. The manager's limits come from the environment
/// (`HTEX_MAX_FRAME_BYTES`, `HTEX_MAX_RESULT_BYTES`, `HTEX_OUTPUT_LIMIT`).
pub fn serve(registry: &Registry) -> Result<(), WorkerError> {
    let limits = Limits::from_env();
    let input = BufReader::new(std::io::stdin().lock());
    let output = BufWriter::new(take_stdout()?);
    match serve_on(registry, input, output, &limits) {
        // The manager went away: nobody is left to answer, which is a normal end.
        Err(WorkerError::Pipe(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// How large what a worker reads and writes may be, as its manager set it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Limits {
    /// The largest frame read from the manager.
    pub frame: usize,
    /// The largest answer (an encoded `Done`) sent back: a larger result is replaced by
    /// `ResultTooLarge`, so the manager can always pass it on.
    pub result: usize,
    /// Bytes of stdout and of stderr a command keeps (no more than lets its result fit).
    pub output: usize,
}

/// Room an answer keeps beside a command's stdout and stderr: its status, and a message that
/// names the program.
const ANSWER_OVERHEAD: usize = 16 << 10;

impl Limits {
    fn from_env() -> Limits {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
        };
        let frame = read("HTEX_MAX_FRAME_BYTES").unwrap_or(DEFAULT_MAX_FRAME_BYTES);
        let result = read("HTEX_MAX_RESULT_BYTES").unwrap_or_else(|| max_item_bytes(frame));
        let output = read("HTEX_OUTPUT_LIMIT").unwrap_or(DEFAULT_OUTPUT_LIMIT);
        Limits::new(frame, result, output)
    }

    pub fn new(frame: usize, result: usize, output: usize) -> Limits {
        let result = result.min(frame);
        Limits {
            frame,
            result,
            output: output.min(result.saturating_sub(ANSWER_OVERHEAD) / 2),
        }
    }
}

/// The serve loop over any pair of pipes.
pub(crate) fn serve_on(
    registry: &Registry,
    mut input: impl BufRead,
    mut output: impl Write,
    limits: &Limits,
) -> Result<(), WorkerError> {
    // Eager runners are ready before the slot says it is: tasks never wait on a cold model.
    let mut runners = RunnerPool::from_env();
    runners.start_eager();
    let ready = WorkerReply::Ready {
        pid: std::process::id(),
        functions: registry.names(),
    };
    write_frame(&mut output, &encode(&ready)?)?;
    while let Some(frame) = read_frame(&mut input, limits.frame)? {
        match decode::<WorkerRequest>(&frame, limits.frame)? {
            WorkerRequest::Run(spec) => {
                let result = run_task(registry, &mut runners, spec, limits.output);
                // Each answer goes out before the next task starts, even when the manager
                // queued more behind this one: a result held back in this buffer would be lost
                // with the worker if the next task overran its timeout, and would wait as long
                // as it runs. (Holding answers back until no task is waiting was measured
                // about 10 % faster on noop tasks; not worth either.)
                write_frame(&mut output, &answer(result, limits.result)?)?;
                // A runner that died during the call comes back before the next task.
                runners.start_eager();
            }
            WorkerRequest::Shutdown => break,
        }
    }
    output.flush()?;
    Ok(())
}

/// The `Done` frame for a result; one over `limit` bytes is replaced by `ResultTooLarge`, which
/// ends this task only.
fn answer(result: TaskResult, limit: usize) -> Result<Vec<u8>, WorkerError> {
    let reply = WorkerReply::Done(result);
    let frame = encode(&reply)?;
    if frame.len() <= limit {
        return Ok(frame);
    }
    let WorkerReply::Done(mut result) = reply else {
        unreachable!("built above")
    };
    result.outcome = Err(TaskError::ResultTooLarge {
        size: frame.len() as u64,
        limit: limit as u64,
    });
    Ok(encode(&WorkerReply::Done(result))?)
}

/// Runs one task and times it; the manager fills in the slot.
pub(crate) fn run_task(
    registry: &Registry,
    runners: &mut RunnerPool,
    spec: TaskSpec,
    output_limit: usize,
) -> TaskResult {
    let started_us = now_us();
    let outcome = match &spec.kind {
        TaskKind::Command(command) => run_command(command, output_limit),
        TaskKind::Function { name, args } => registry
            .call(name, args)
            .map(htex_protocol::TaskOutput::Value),
        TaskKind::Call { runner, args } => runners
            .call(runner, args)
            .map(htex_protocol::TaskOutput::Value),
    };
    TaskResult {
        id: spec.id,
        outcome,
        timings: Timings {
            started_us,
            finished_us: now_us(),
            ..Timings::default()
        },
        slot: None,
        attempts: 1,
    }
}

/// Moves the original stdout to a new descriptor for the protocol and points fd 1 at stderr.
/// The new descriptor is close-on-exec: the commands and runners a task starts never hold the
/// manager's pipe (one that did would keep it open after the worker died).
fn take_stdout() -> std::io::Result<File> {
    // SAFETY: fcntl/dup2 on the process's own standard descriptors; the new descriptor is owned
    // by the returned File and nothing else.
    unsafe {
        let protocol_fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if protocol_fd < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(File::from_raw_fd(protocol_fd))
    }
}

#[cfg(test)]
mod tests {
    use htex_protocol::{CommandSpec, TaskOutput};

    use super::*;

    fn frames(requests: &[WorkerRequest]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for request in requests {
            write_frame(&mut bytes, &encode(request).unwrap()).unwrap();
        }
        bytes
    }

    fn spec(id: u64, kind: TaskKind) -> TaskSpec {
        TaskSpec {
            id,
            kind,
            resources: Default::default(),
            priority: 0,
            timeout_ms: None,
            max_retries: 0,
            submitted_us: 0,
        }
    }

    /// Serves `requests` and returns the results it answered, in order.
    fn serve_requests(
        registry: &Registry,
        requests: &[WorkerRequest],
        limits: &Limits,
    ) -> Vec<TaskResult> {
        let input = frames(requests);
        let mut output = Vec::new();
        serve_on(registry, &input[..], &mut output, limits).unwrap();
        let mut replies = &output[..];
        let mut results = Vec::new();
        while let Some(frame) = read_frame(&mut replies, limits.frame).unwrap() {
            if let WorkerReply::Done(result) = decode(&frame, limits.frame).unwrap() {
                results.push(result);
            }
        }
        results
    }

    #[test]
    fn a_result_over_the_limit_ends_its_task_only() {
        let mut registry = Registry::with_builtins();
        registry.register("bytes", |n: usize| Ok::<_, String>(vec![1u8; n]));
        let limits = Limits::new(1 << 20, 100_000, DEFAULT_OUTPUT_LIMIT);
        let call = |id, n: usize| {
            let args = rmp_serde::to_vec(&n).unwrap();
            WorkerRequest::Run(spec(
                id,
                TaskKind::Function {
                    name: "bytes".into(),
                    args,
                },
            ))
        };
        let results = serve_requests(
            &registry,
            &[call(1, 10), call(2, 200_000), call(3, 10)],
            &limits,
        );
        assert_eq!(
            results.len(),
            3,
            "the worker went on after the large result"
        );
        assert!(results[0].outcome.is_ok() && results[2].outcome.is_ok());
        match &results[1].outcome {
            Err(TaskError::ResultTooLarge { size, limit }) => {
                assert!(*size > 200_000 && *limit == 100_000, "{size} {limit}")
            }
            other => panic!("expected ResultTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn command_output_is_bounded_to_fit_the_result_limit() {
        let limits = Limits::new(1 << 20, 200_000, DEFAULT_OUTPUT_LIMIT);
        assert!(limits.output < 100_000);
        let command = CommandSpec {
            argv: vec!["sh".into(), "-c".into(), "head -c 1000000 /dev/zero".into()],
            ..Default::default()
        };
        let results = serve_requests(
            &Registry::with_builtins(),
            &[WorkerRequest::Run(spec(1, TaskKind::Command(command)))],
            &limits,
        );
        let Ok(TaskOutput::Command(out)) = &results[0].outcome else {
            panic!("{:?}", results[0].outcome)
        };
        assert!(out.stdout_truncated && out.stdout.len() == limits.output);
    }

    #[test]
    fn limits_come_from_the_manager() {
        let limits = Limits::new(1 << 20, max_item_bytes(1 << 20), 1 << 20);
        assert_eq!(limits.result, (1 << 20) - (64 << 10));
        assert!(limits.output <= limits.result / 2);
        assert_eq!(Limits::new(1 << 30, 1 << 30, 1000).output, 1000);
    }
}
