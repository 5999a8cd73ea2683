//! The worker's loop over its stdin/stdout pipes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::FromRawFd;

use htex_protocol::stdio::{read_frame, write_frame};
use htex_protocol::{
    decode, encode, now_us, CodecError, TaskKind, TaskResult, TaskSpec, Timings, WorkerReply,
    WorkerRequest, DEFAULT_MAX_FRAME_BYTES,
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
/// prints cannot corrupt the frames.
pub fn serve(registry: &Registry) -> Result<(), WorkerError> {
    match serve_pipes(registry) {
        // The manager went away: nobody is left to answer, which is a normal end.
        Err(WorkerError::Pipe(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn serve_pipes(registry: &Registry) -> Result<(), WorkerError> {
    let output_limit = std::env::var("HTEX_OUTPUT_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_OUTPUT_LIMIT);
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut output = BufWriter::new(take_stdout()?);
    // Eager runners are ready before the slot says it is: tasks never wait on a cold model.
    let mut runners = RunnerPool::from_env();
    runners.start_eager();
    let ready = WorkerReply::Ready {
        pid: std::process::id(),
        functions: registry.names(),
    };
    write_frame(&mut output, &encode(&ready)?)?;
    while let Some(frame) = read_frame(&mut input, DEFAULT_MAX_FRAME_BYTES)? {
        match decode::<WorkerRequest>(&frame, DEFAULT_MAX_FRAME_BYTES)? {
            WorkerRequest::Run(spec) => {
                let result = run_task(registry, &mut runners, spec, output_limit);
                // Each answer goes out before the next task starts, even when the manager
                // queued more behind this one: a result held back in this buffer would be lost
                // with the worker if the next task overran its timeout, and would wait as long
                // as it runs. (Holding answers back until no task is waiting was measured
                // about 10 % faster on noop tasks; not worth either.)
                write_frame(&mut output, &encode(&WorkerReply::Done(result))?)?;
                // A runner that died during the call comes back before the next task.
                runners.start_eager();
            }
            WorkerRequest::Shutdown => break,
        }
    }
    output.flush()?;
    Ok(())
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
fn take_stdout() -> std::io::Result<File> {
    // SAFETY: dup/dup2 on the process's own standard descriptors; the new descriptor is owned by
    // the returned File and nothing else.
    unsafe {
        let protocol_fd = libc::dup(1);
        if protocol_fd < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(File::from_raw_fd(protocol_fd))
    }
}
