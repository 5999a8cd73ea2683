//! Worker processes: spawning one for a slot, feeding it frames, and noticing its exit.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use htex_protocol::{decode, encode, WorkerReply, WorkerRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

use crate::actor::{Event, WorkerEvent};
use crate::ManagerConfig;

/// A live worker process. Dropping it closes the worker's stdin, which makes it exit.
pub(crate) struct WorkerProcess {
    pub pid: u32,
    input: mpsc::UnboundedSender<Vec<u8>>,
}

impl WorkerProcess {
    /// Starts the worker for `slot`; its events arrive tagged with `generation`.
    pub fn spawn(
        config: &ManagerConfig,
        slot_index: usize,
        slot_env: &[(String, String)],
        generation: u64,
        events: mpsc::UnboundedSender<Event>,
    ) -> std::io::Result<WorkerProcess> {
        let (program, args) = config
            .worker_command
            .split_first()
            .expect("checked at start");
        let mut command = Command::new(program);
        command
            .args(args)
            .env("HTEX_MANAGER_ID", &config.manager_id)
            .envs(slot_env.iter().map(|(k, v)| (k, v)))
            .env("HTEX_RUNNERS", runners_env(config))
            .env("HTEX_OUTPUT_LIMIT", config.output_limit.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, so a kill reaches the commands it started too.
            .process_group(0)
            .kill_on_drop(true);
        let cpus = config
            .slots
            .get(slot_index)
            .map(|s| s.descriptor.cpus.clone())
            .unwrap_or_default();
        if !cpus.is_empty() {
            // SAFETY: pin_current_process makes one system call on stack data (async-signal-safe).
            unsafe {
                command.pre_exec(move || crate::affinity::pin_current_process(&cpus));
            }
        }
        let mut child = command.spawn()?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (input, input_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(stdin, input_rx));
        let limit = config.max_frame_bytes;
        tokio::spawn(async move {
            let why = read_frames(stdout, limit, |reply| {
                let event = Event::Worker {
                    slot: slot_index,
                    generation,
                    event: WorkerEvent::Reply(reply),
                };
                events.send(event).is_ok()
            })
            .await;
            if !why.starts_with("its stdout closed") {
                let _ = child.start_kill();
            }
            let status = match child.wait().await {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exit status {code}"),
                    (None, Some(signal)) => format!("signal {signal}"),
                    _ => status.to_string(),
                },
                Err(e) => format!("unknown status ({e})"),
            };
            // Commands the worker started may outlive it; they share its process group.
            kill_group(pid);
            let detail = format!("worker pid {pid} ended ({status}; {why})");
            let _ = events.send(Event::Worker {
                slot: slot_index,
                generation,
                event: WorkerEvent::Exited(detail),
            });
        });
        Ok(WorkerProcess { pid, input })
    }

    /// Queues a request on the worker's stdin.
    pub fn send(&self, request: &WorkerRequest) {
        match encode(request) {
            Ok(frame) => {
                let _ = self.input.send(frame);
            }
            Err(e) => tracing::error!("cannot encode a worker request: {e}"),
        }
    }

    /// Kills the worker and everything it started.
    pub fn kill(&self) {
        kill_group(self.pid);
    }
}

/// The runners, as JSON for `HTEX_RUNNERS`.
fn runners_env(config: &ManagerConfig) -> String {
    serde_json::to_string(&config.runners).unwrap_or_else(|_| "{}".into())
}

/// SIGKILL to the process group a worker leads.
fn kill_group(pid: u32) {
    if pid > 0 {
        // SAFETY: signalling a process group this manager created; a stale group is harmless.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

async fn write_frames(stdin: ChildStdin, mut frames: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut out = BufWriter::new(stdin);
    while let Some(frame) = frames.recv().await {
        let ok = out
            .write_all(&(frame.len() as u32).to_le_bytes())
            .await
            .is_ok()
            && out.write_all(&frame).await.is_ok();
        // Write out everything queued before flushing, so bursts share a syscall.
        if !ok || (frames.is_empty() && out.flush().await.is_err()) {
            break;
        }
    }
}

/// Reads replies until the pipe closes; returns why it stopped.
async fn read_frames(
    stdout: ChildStdout,
    limit: usize,
    mut deliver: impl FnMut(WorkerReply) -> bool,
) -> String {
    let mut input = BufReader::new(stdout);
    loop {
        let len = match input.read_u32_le().await {
            Ok(len) => len as usize,
            Err(_) => return "its stdout closed".into(),
        };
        if len > limit {
            return format!("it sent a frame of {len} bytes, over the limit of {limit}");
        }
        let mut frame = vec![0u8; len];
        if let Err(e) = input.read_exact(&mut frame).await {
            return format!("its stdout closed mid-frame: {e}");
        }
        match decode::<WorkerReply>(&frame, limit) {
            Ok(reply) => {
                if !deliver(reply) {
                    return "the manager stopped".into();
                }
            }
            Err(e) => return format!("it sent a bad frame: {e}"),
        }
    }
}
