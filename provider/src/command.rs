//! Runs a batch system's command with a deadline, capturing what it prints.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ProviderError;

/// What a command printed, once it exited.
pub(crate) struct Output {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// The command line as a user would type it, for errors.
pub(crate) fn display(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(args.iter().map(|a| crate::shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args` with no stdin; kills it (and its process group) past `timeout`.
pub(crate) fn run(
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Result<Output, ProviderError> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ProviderError::Spawn {
            program: program.to_string(),
            source,
        })?;
    // Readers on threads of their own, so a chatty command never blocks on a full pipe.
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                // SAFETY: kill(2) on the child's own process group; no memory is touched.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(ProviderError::TimedOut {
                    command: display(program, args),
                    timeout,
                });
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

/// Runs the command and insists that it succeeds.
pub(crate) fn run_ok(
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Result<Output, ProviderError> {
    let output = run(program, args, timeout)?;
    if output.success {
        Ok(output)
    } else {
        Err(ProviderError::Failed {
            command: display(program, args),
            status: output.status,
            stderr: last_lines(&output.stderr, 5),
        })
    }
}

/// The last `n` non-empty lines of `text`, joined with ` | `.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(n);
    let tail = lines[from..].join(" | ");
    if tail.is_empty() {
        "(nothing on stderr)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_deadline_is_killed_and_says_so() {
        let started = Instant::now();
        let err = run("sleep", &["30".into()], Duration::from_millis(200))
            .err()
            .expect("timed out");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn a_failing_command_reports_its_stderr() {
        let args = vec![
            "-c".into(),
            "echo first >&2; echo bad partition >&2; exit 3".into(),
        ];
        let err = run_ok("sh", &args, Duration::from_secs(5))
            .err()
            .expect("fails");
        let text = err.to_string();
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("first | bad partition"), "{text}");
        let missing = run("/nonexistent/sbatch", &[], Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(missing.to_string().contains("could not run"), "{missing}");
    }
}
