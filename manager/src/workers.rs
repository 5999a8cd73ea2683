//! Worker processes: spawning one for a slot, feeding it frames, and noticing its exit (from
//! the process itself, not from its stdout closing).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use htex_protocol::{decode, encode, max_item_bytes, WorkerReply, WorkerRequest};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter, Interest};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

use crate::actor::{Event, WorkerEvent};
use crate::ManagerConfig;

/// A live worker process. Dropping it closes the worker's stdin, which makes it exit.
pub(crate) struct WorkerProcess {
    pub pid: u32,
    input: mpsc::UnboundedSender<Vec<u8>>,
}

/// How long a worker that exited gets for the frames it wrote before: they are in the pipe
/// already, unless a process it started holds the pipe open (then they are dropped).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

impl WorkerProcess {
    /// Starts the worker for `slot`; its events arrive tagged with `generation`. Its results
    /// must fit frames of `frame_limit` bytes (it is told so in its environment).
    pub fn spawn(
        config: &ManagerConfig,
        slot_index: usize,
        slot_env: &[(String, String)],
        generation: u64,
        frame_limit: usize,
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
            .env("HTEX_MAX_FRAME_BYTES", frame_limit.to_string())
            .env(
                "HTEX_MAX_RESULT_BYTES",
                max_item_bytes(frame_limit).to_string(),
            )
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
        let exit = exit_watch(pid);
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (input, input_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(stdin, input_rx));
        let limit = config.max_frame_bytes;
        tokio::spawn(async move {
            let reader = read_frames(stdout, limit, |reply| {
                let event = Event::Worker {
                    slot: slot_index,
                    generation,
                    event: WorkerEvent::Reply(reply),
                };
                events.send(event).is_ok()
            });
            let (detail, by_signal) = supervise(child, pid, exit, reader).await;
            let _ = events.send(Event::Worker {
                slot: slot_index,
                generation,
                event: WorkerEvent::Exited { detail, by_signal },
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

/// A descriptor that becomes readable when the process exits, before anyone reaps it
/// (`pidfd_open`, Linux 5.3); `None` where the kernel has none.
fn exit_watch(pid: u32) -> Option<AsyncFd<OwnedFd>> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: a descriptor just opened, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an OwnedFd stays open, and the same descriptor, until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
}

/// Which came first: the worker's stdout ended (why), or the worker exited (reaped already,
/// where the kernel has no pidfd).
enum First {
    Reader(String),
    Exited,
    Reaped(std::io::Result<std::process::ExitStatus>),
}

/// Reads the worker's frames until it exits, kills what is left of its process group, reaps it,
/// and says how it ended. The exit is its own, not the end of its stdout: a process it started
/// may hold that open long after.
async fn supervise(
    mut child: Child,
    pid: u32,
    exit: Option<AsyncFd<OwnedFd>>,
    reader: impl std::future::Future<Output = String>,
) -> (String, bool) {
    tokio::pin!(reader);
    let first = match &exit {
        Some(exit) => tokio::select! {
            why = &mut reader => First::Reader(why),
            _ = exit.readable() => First::Exited,
        },
        None => tokio::select! {
            why = &mut reader => First::Reader(why),
            status = child.wait() => First::Reaped(status),
        },
    };
    let drain = |reader| async move {
        tokio::time::timeout(DRAIN_AFTER_EXIT, reader)
            .await
            .unwrap_or_else(|_| "it exited; a process it started still holds its stdout".into())
    };
    let (why, reaped) = match first {
        First::Reader(why) => {
            if why != STDOUT_CLOSED {
                // A bad frame, or the manager stopped: the worker is alive.
                kill_group(pid);
            }
            match &exit {
                Some(exit) => {
                    let _ = exit.readable().await;
                    (why, None)
                }
                None => (why, Some(child.wait().await)),
            }
        }
        First::Exited => (drain(&mut reader).await, None),
        First::Reaped(status) => (drain(&mut reader).await, Some(status)),
    };
    // Commands the worker started may outlive it; they share its process group, whose id stays
    // the worker's until it is reaped (a pidfd lets it wait for that).
    kill_group(pid);
    let status = match reaped {
        Some(status) => status,
        None => child.wait().await,
    };
    let by_signal = status.as_ref().is_ok_and(|s| s.signal().is_some());
    let status = match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => status.to_string(),
        },
        Err(e) => format!("unknown status ({e})"),
    };
    (
        format!("worker pid {pid} ended ({status}; {why})"),
        by_signal,
    )
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

const STDOUT_CLOSED: &str = "its stdout closed";

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
            Err(_) => return STDOUT_CLOSED.into(),
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
