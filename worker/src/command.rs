//! Runs a `Command` task: one process, its output captured up to a bound.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;

use htex_protocol::{CommandOutput, CommandSpec, TaskError, TaskOutput};

/// Bytes of stdout and of stderr kept per command unless the manager sets `HTEX_OUTPUT_LIMIT`.
pub const DEFAULT_OUTPUT_LIMIT: usize = 1 << 20;

/// Runs the command to completion. Exit status 0 is success; anything else is `Failed` with the
/// output attached; a program that cannot be started is `Failed` with the OS error.
pub fn run_command(spec: &CommandSpec, output_limit: usize) -> Result<TaskOutput, TaskError> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| TaskError::BadRequest {
            message: "command has an empty argv".to_string(),
        })?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|e| TaskError::Failed {
        message: format!("cannot start `{program}`: {e}"),
        output: None,
    })?;

    let stdin_writer = child
        .stdin
        .take()
        .zip(spec.stdin.clone())
        .map(|(mut pipe, data)| {
            // A command that does not read its stdin closes the pipe; that is not an error.
            thread::spawn(move || {
                let _ = pipe.write_all(&data);
            })
        });
    let stdout = child
        .stdout
        .take()
        .map(|s| thread::spawn(move || read_bounded(s, output_limit)));
    let stderr = child
        .stderr
        .take()
        .map(|s| thread::spawn(move || read_bounded(s, output_limit)));
    let status = child.wait().map_err(|e| TaskError::Failed {
        message: format!("cannot wait for `{program}`: {e}"),
        output: None,
    })?;
    let join = |h: Option<thread::JoinHandle<(Vec<u8>, bool)>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, stdout_truncated) = join(stdout);
    let (stderr, stderr_truncated) = join(stderr);
    if let Some(writer) = stdin_writer {
        let _ = writer.join();
    }
    let output = CommandOutput {
        exit_code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
    };
    if status.success() {
        return Ok(TaskOutput::Command(output));
    }
    let message = match (status.code(), status.signal()) {
        (Some(code), _) => format!("`{program}` exited with status {code}"),
        (None, Some(signal)) => format!("`{program}` was killed by signal {signal}"),
        (None, None) => format!("`{program}` ended with {status}"),
    };
    Err(TaskError::Failed {
        message,
        output: Some(output),
    })
}

/// Reads a stream to its end, keeping the first `limit` bytes; says whether anything was cut.
fn read_bounded(mut stream: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn captures_output_and_exit_status() {
        let out = run_command(&cmd(&["sh", "-c", "echo out; echo err >&2"]), 1024).unwrap();
        let TaskOutput::Command(out) = out else {
            panic!("not a command output")
        };
        assert_eq!(
            (out.stdout.as_slice(), out.stderr.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert_eq!(out.exit_code, Some(0));
    }

    #[test]
    fn nonzero_exit_is_failed_with_output() {
        let err = run_command(&cmd(&["sh", "-c", "echo x; exit 3"]), 1024).unwrap_err();
        let TaskError::Failed {
            output: Some(out), ..
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!((out.exit_code, out.stdout), (Some(3), b"x\n".to_vec()));
    }

    #[test]
    fn missing_program_reports_the_os_error() {
        let err = run_command(&cmd(&["/no/such/program"]), 1024).unwrap_err();
        assert!(
            err.to_string().contains("No such file or directory"),
            "{err}"
        );
    }

    #[test]
    fn output_is_bounded_and_stdin_is_fed() {
        let mut spec = cmd(&["cat"]);
        spec.stdin = Some(vec![b'a'; 10_000]);
        let TaskOutput::Command(out) = run_command(&spec, 100).unwrap() else {
            panic!()
        };
        assert_eq!(out.stdout.len(), 100);
        assert!(out.stdout_truncated && !out.stderr_truncated);
    }
}
