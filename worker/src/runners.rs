//! Warm runners: long-lived processes a worker hosts for `Call` tasks (a Python module with a
//! model loaded once, say). Each speaks length-prefixed MessagePack frames on its stdin/stdout
//! (`python/README.md` is the protocol's reference), inherits the slot's environment, and is
//! restarted when it dies.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use htex_protocol::stdio::{read_frame, write_frame};
use htex_protocol::{now_us, RunnerSpec, TaskError, DEFAULT_MAX_FRAME_BYTES};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct Request<'a> {
    function: &'a str,
    #[serde(with = "serde_bytes")]
    args: &'a [u8],
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Reply {
    #[serde(with = "serde_bytes")]
    ok: Option<Vec<u8>>,
    error: Option<Raised>,
    ready: Option<Ready>,
    setup_error: Option<Raised>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raised {
    #[serde(rename = "type")]
    kind: String,
    message: String,
    traceback: String,
    available: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Ready {
    pid: u32,
    setup_s: f64,
}

struct RunnerProcess {
    child: Child,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
}

/// The runners of one slot, started and restarted as needed.
#[derive(Default)]
pub struct RunnerPool {
    specs: BTreeMap<String, RunnerSpec>,
    live: BTreeMap<String, RunnerProcess>,
}

impl RunnerPool {
    /// Reads `HTEX_RUNNERS`; a malformed value is reported and leaves the slot without runners.
    pub fn from_env() -> RunnerPool {
        let specs = match std::env::var("HTEX_RUNNERS") {
            Ok(json) => serde_json::from_str(&json).unwrap_or_else(|e| {
                eprintln!("htex worker: ignoring malformed HTEX_RUNNERS ({e}): {json}");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        RunnerPool {
            specs,
            live: BTreeMap::new(),
        }
    }

    /// Starts every eager runner that is not running; failures are logged, and the next call
    /// tries again.
    pub fn start_eager(&mut self) {
        let eager: Vec<String> = self
            .specs
            .iter()
            .filter(|(n, s)| s.eager && !self.live.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in eager {
            if let Err(e) = self.ensure_started(&name) {
                eprintln!("htex worker: runner `{name}` did not start: {e}");
            }
        }
    }

    /// Runs `target` (`NAME:FUNCTION`) with MessagePack `args`; returns the MessagePack value.
    pub fn call(&mut self, target: &str, args: &[u8]) -> Result<Vec<u8>, TaskError> {
        let Some((name, function)) = target
            .split_once(':')
            .filter(|(n, f)| !n.is_empty() && !f.is_empty())
        else {
            return Err(TaskError::BadRequest {
                message: format!(
                    "call a runner as NAME:FUNCTION (e.g. llama:generate), not `{target}`"
                ),
            });
        };
        self.ensure_started(name)?;
        let runner = self.live.get_mut(name).expect("started above");
        let request = rmp_serde::to_vec_named(&Request { function, args }).map_err(|e| {
            TaskError::BadRequest {
                message: e.to_string(),
            }
        })?;
        let answer = write_frame(&mut runner.input, &request)
            .and_then(|()| read_frame(&mut runner.output, DEFAULT_MAX_FRAME_BYTES));
        let frame = match answer {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return Err(self.lost(name, "during the call")),
        };
        match rmp_serde::from_slice::<Reply>(&frame) {
            Ok(Reply {
                ok: Some(value), ..
            }) => Ok(value),
            Ok(Reply {
                error: Some(raised),
                ..
            }) if raised.kind == "UnknownFunction" => Err(TaskError::UnknownFunction {
                name: target.to_string(),
                available: raised.available,
            }),
            Ok(Reply {
                error: Some(raised),
                ..
            }) => Err(exception(raised, "")),
            Ok(_) => Err(TaskError::BadRequest {
                message: format!(
                    "runner `{name}` answered `{function}` with neither a value nor an error"
                ),
            }),
            Err(e) => Err(self.lost(name, &format!("after sending a bad frame ({e})"))),
        }
    }

    fn ensure_started(&mut self, name: &str) -> Result<(), TaskError> {
        if self.live.contains_key(name) {
            return Ok(());
        }
        let spec = self.specs.get(name).ok_or_else(|| TaskError::BadRequest {
            message: if self.specs.is_empty() {
                "this slot hosts no runners; start the manager with --runner NAME=COMMAND".into()
            } else {
                format!(
                    "no runner `{name}` on this slot; it has: {}",
                    self.names().join(", ")
                )
            },
        })?;
        let (program, argv) = spec
            .command
            .split_first()
            .ok_or_else(|| TaskError::BadRequest {
                message: format!("runner `{name}` has an empty command"),
            })?;
        let mut child = Command::new(program)
            .args(argv)
            .env("HTEX_RUNNER_SPAWNED_US", now_us().to_string())
            .env("HTEX_RUNNER_NAME", name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| TaskError::Failed {
                message: format!("cannot start runner `{name}` ({program}): {e}"),
                output: None,
            })?;
        let mut runner = RunnerProcess {
            input: BufWriter::new(child.stdin.take().expect("piped")),
            output: BufReader::new(child.stdout.take().expect("piped")),
            child,
        };
        let first = read_frame(&mut runner.output, DEFAULT_MAX_FRAME_BYTES);
        match first
            .ok()
            .flatten()
            .map(|f| rmp_serde::from_slice::<Reply>(&f))
        {
            Some(Ok(Reply {
                ready: Some(ready), ..
            })) => {
                eprintln!(
                    "htex worker: runner `{name}` (pid {}) ready after {:.2} s of setup",
                    ready.pid, ready.setup_s
                );
                self.live.insert(name.to_string(), runner);
                Ok(())
            }
            Some(Ok(Reply {
                setup_error: Some(raised),
                ..
            })) => {
                let _ = runner.child.wait();
                Err(exception(
                    raised,
                    &format!("setup of runner `{name}` failed: "),
                ))
            }
            _ => {
                let status = describe(runner.child.wait());
                Err(TaskError::WorkerLost {
                    detail: format!("runner `{name}` ended before it was ready ({status})"),
                })
            }
        }
    }

    /// A runner that stopped answering: reaped, forgotten (restarted later), reported as lost.
    fn lost(&mut self, name: &str, when: &str) -> TaskError {
        let mut runner = self.live.remove(name).expect("a live runner");
        let _ = runner.child.kill();
        let status = describe(runner.child.wait());
        TaskError::WorkerLost {
            detail: format!(
                "runner `{name}` (pid {}) died {when} ({status})",
                runner.child.id()
            ),
        }
    }

    fn names(&self) -> Vec<String> {
        self.specs.keys().cloned().collect()
    }
}

fn exception(raised: Raised, prefix: &str) -> TaskError {
    TaskError::Exception {
        exception: raised.kind,
        message: format!("{prefix}{}", raised.message),
        traceback: raised.traceback,
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => s.to_string(),
        },
        Err(e) => format!("unknown status: {e}"),
    }
}
