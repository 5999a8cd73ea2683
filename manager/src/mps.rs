//! MPS control daemons owned by the manager: one per GPU with MPS slots, each with private, short
//! pipe and log directories under this user's own root (`/tmp/htex-mps-<uid>`, mode 0700) and
//! `CUDA_VISIBLE_DEVICES` set to its GPU's UUID. Quit on drop, so every way out of the manager
//! (shutdown, SIGTERM/SIGINT, an error) stops them; directories a killed manager left behind are
//! cleaned (and their daemons quit) at the next start. Every call of the control program has a
//! deadline, past which it is killed; all of this blocks, so the manager runs it off its event
//! loop.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::seconds_text;

/// Where this user's private MPS directories live: short, because the pipe path must fit a UNIX
/// socket name, and per user, since another user's manager must not reach this one's daemons.
pub fn mps_root() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/htex-mps-{uid}"))
}

#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    #[error("`{program}` was not found; MPS slots need the NVIDIA driver's nvidia-cuda-mps-control on PATH (or pass --mps-control PATH)")]
    ControlMissing { program: String },
    #[error("cannot create MPS directory {}: {source}", path.display())]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the MPS directory root {} {reason}; remove it (or have its owner remove it) and start again", path.display())]
    UnsafeRoot { path: PathBuf, reason: String },
    #[error("the MPS control daemon for {gpu} did not start: {reason}")]
    Start { gpu: String, reason: String },
    #[error("the MPS control daemon for {gpu} is not healthy: {reason}")]
    Unhealthy { gpu: String, reason: String },
}

/// A running MPS control daemon for one GPU.
#[derive(Debug)]
pub struct MpsDaemon {
    gpu_uuid: String,
    control: PathBuf,
    dir: PathBuf,
    /// Longest one call of the control program may take.
    timeout: Duration,
    running: bool,
}

/// A fatal GPU error the MPS server reported: every client on the GPU is affected.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuFault {
    pub gpu_uuid: String,
    /// The server's log line.
    pub line: String,
}

/// A daemon's `server.log`, read from where the last look stopped.
#[derive(Debug)]
pub struct FaultLog {
    gpu_uuid: String,
    path: PathBuf,
    offset: u64,
}

impl MpsDaemon {
    /// Starts `control -d` for the GPU in a fresh private directory and checks it answers, each
    /// step within `timeout`.
    pub fn start(
        control: &Path,
        gpu_uuid: &str,
        dir: PathBuf,
        timeout: Duration,
    ) -> Result<MpsDaemon, MpsError> {
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["p", "l"] {
            let path = dir.join(sub);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|source| MpsError::Directory { path, source })?;
        }
        let mut daemon = MpsDaemon {
            gpu_uuid: gpu_uuid.to_string(),
            control: control.into(),
            dir,
            timeout,
            running: false,
        };
        let mut command = Command::new(&daemon.control);
        command
            .arg("-d")
            .env("CUDA_MPS_PIPE_DIRECTORY", daemon.pipe_dir())
            .env("CUDA_VISIBLE_DEVICES", gpu_uuid)
            .env("CUDA_MPS_LOG_DIRECTORY", daemon.log_dir());
        let answer = run_bounded(&mut command, None, timeout).map_err(|e| daemon.spawn_error(e))?;
        let fail = |reason: String| MpsError::Start {
            gpu: gpu_uuid.into(),
            reason,
        };
        match answer {
            Bounded::TimedOut => {
                return Err(fail(format!(
                    "`{} -d` did not finish within {} s and was killed",
                    daemon.control.display(),
                    seconds_text(timeout)
                )))
            }
            Bounded::Exited { ok: false, text } => return Err(fail(text)),
            Bounded::Exited { ok: true, .. } => {}
        }
        daemon.running = true;
        // The daemon forks; give it a moment to open its pipes before the first query.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match daemon.check_health() {
                Ok(()) => break,
                Err(_) if deadline.is_none_or(|d| Instant::now() < d) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(gpu = gpu_uuid, dir = %daemon.dir.display(), "MPS control daemon started");
        Ok(daemon)
    }

    /// `CUDA_MPS_PIPE_DIRECTORY` for this daemon's clients.
    pub fn pipe_dir(&self) -> PathBuf {
        self.dir.join("p")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("l")
    }

    pub fn gpu_uuid(&self) -> &str {
        &self.gpu_uuid
    }

    /// The server log this daemon's server writes faults to, read from its start.
    pub fn fault_log(&self) -> FaultLog {
        FaultLog {
            gpu_uuid: self.gpu_uuid.clone(),
            path: self.log_dir().join("server.log"),
            offset: 0,
        }
    }

    /// Asks the daemon a harmless question, as NVIDIA's device plugin does for its health probe.
    pub fn check_health(&self) -> Result<(), MpsError> {
        let answer = control_query(
            &self.control,
            &self.pipe_dir(),
            "get_default_active_thread_percentage",
            self.timeout,
        )
        .map_err(|e| self.spawn_error(e))?;
        answer.map(|_| ()).map_err(|reason| MpsError::Unhealthy {
            gpu: self.gpu_uuid.clone(),
            reason,
        })
    }

    /// Quits the daemon (and its server) and removes its directories; a control program that
    /// does not answer within the timeout is killed.
    pub fn quit(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        match control_query(&self.control, &self.pipe_dir(), "quit", self.timeout) {
            Ok(Ok(_)) => tracing::info!(gpu = %self.gpu_uuid, "MPS control daemon quit"),
            Ok(Err(reason)) => tracing::warn!(gpu = %self.gpu_uuid, "MPS quit failed: {reason}"),
            Err(e) => tracing::warn!(gpu = %self.gpu_uuid, "MPS quit failed: {e}"),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn spawn_error(&self, e: std::io::Error) -> MpsError {
        if e.kind() == std::io::ErrorKind::NotFound {
            MpsError::ControlMissing {
                program: self.control.display().to_string(),
            }
        } else {
            MpsError::Start {
                gpu: self.gpu_uuid.clone(),
                reason: e.to_string(),
            }
        }
    }
}

impl Drop for MpsDaemon {
    fn drop(&mut self) {
        self.quit();
    }
}

impl FaultLog {
    /// Fatal GPU errors the server logged since the last look. The server writes
    /// `Client {PID: N, Context: C} encountered a fatal GPU error.` to `server.log` in the log
    /// directory this manager gave it (seen on an H100, docs/results/mps-fault.md).
    pub fn take_faults(&mut self) -> Vec<GpuFault> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len <= self.offset {
            self.offset = self.offset.min(len);
            return Vec::new();
        }
        use std::io::{Seek, SeekFrom};
        let mut fresh = String::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.read_to_string(&mut fresh).is_err()
        {
            return Vec::new();
        }
        // Only whole lines; a partial last line is read again next time.
        let complete = fresh.rfind('\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        fresh[..complete]
            .lines()
            .filter(|line| line.contains("encountered a fatal GPU error"))
            .map(|line| GpuFault {
                gpu_uuid: self.gpu_uuid.clone(),
                line: line.trim().to_string(),
            })
            .collect()
    }
}

/// How a call of the control program ended.
enum Bounded {
    /// It exited; `text` is its stdout, or on failure its status and what it said.
    Exited { ok: bool, text: String },
    /// It ran past the deadline and was killed, with its process group.
    TimedOut,
}

/// Runs `command` (in its own process group) with `input` on its stdin, for at most `timeout`.
fn run_bounded(
    command: &mut Command,
    input: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Bounded> {
    let deadline = Instant::now().checked_add(timeout);
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        // One short line fits the pipe's buffer: this never blocks.
        let _ = writeln!(stdin, "{input}");
    }
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // SAFETY: signalling the process group this call created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Ok(Bounded::TimedOut);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    // A daemon it left running may hold the pipes open: read what came until the deadline.
    let left = deadline.map_or(Duration::from_secs(1), |d| {
        d.saturating_duration_since(Instant::now())
    });
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        let bytes = rx.recv_timeout(left).unwrap_or_default();
        String::from_utf8_lossy(&bytes).trim().to_string()
    };
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    if status.success() {
        return Ok(Bounded::Exited {
            ok: true,
            text: stdout,
        });
    }
    let said = if stderr.is_empty() { stdout } else { stderr };
    Ok(Bounded::Exited {
        ok: false,
        text: format!("{status} ({said})"),
    })
}

/// A thread that reads `pipe` to its end and hands the bytes over.
fn read_in_background(
    pipe: Option<impl Read + Send + 'static>,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

/// Sends one command to the daemon of `pipe_dir`: `Ok(Ok(stdout))` when it answered,
/// `Ok(Err(why))` when it refused, is absent or did not answer within `timeout`, `Err` when the
/// control program cannot run.
fn control_query(
    control: &Path,
    pipe_dir: &Path,
    query: &str,
    timeout: Duration,
) -> std::io::Result<Result<String, String>> {
    let mut command = Command::new(control);
    command.env("CUDA_MPS_PIPE_DIRECTORY", pipe_dir);
    Ok(match run_bounded(&mut command, Some(query), timeout)? {
        Bounded::Exited { ok: true, text } => Ok(text),
        Bounded::Exited { ok: false, text } => Err(text),
        Bounded::TimedOut => Err(format!(
            "`{query}` got no answer within {} s; the control program was killed",
            seconds_text(timeout)
        )),
    })
}

/// Creates this user's MPS root (mode 0700) or checks the one there: a root owned by another
/// user, or open to group or others, is refused.
pub fn ensure_root(root: &Path) -> Result<(), MpsError> {
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(MpsError::Directory {
                path: root.to_path_buf(),
                source,
            })
        }
    }
    let refuse = |reason: String| MpsError::UnsafeRoot {
        path: root.to_path_buf(),
        reason,
    };
    let meta = std::fs::symlink_metadata(root).map_err(|source| MpsError::Directory {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        return Err(refuse(format!(
            "belongs to uid {}, not to this user (uid {uid})",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "has mode {mode:03o}: group or others may use it, and so reach this user's MPS daemons"
        )));
    }
    Ok(())
}

/// A fresh private directory `<root>/<pid>-<n>` under this user's checked root: unique within
/// this process too, since tests and `htex run` start several managers in one process.
pub fn private_dir() -> Result<PathBuf, MpsError> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let root = mps_root();
    ensure_root(&root)?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(root.join(format!("{}-{n}", std::process::id())))
}

/// An empty pipe directory for whole-GPU and MIG slots, so their CUDA never joins a site MPS
/// daemon at the default `/tmp/nvidia-mps`; removed on drop.
#[derive(Debug)]
pub struct EmptyPipeDir(PathBuf);

impl EmptyPipeDir {
    pub fn create() -> Result<EmptyPipeDir, MpsError> {
        let path = private_dir()?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| MpsError::Directory {
                path: path.clone(),
                source,
            })?;
        Ok(EmptyPipeDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for EmptyPipeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes directories of managers that are gone, quitting any daemon still listening there
/// (each call within `timeout`).
pub fn clean_stale(control: &Path, timeout: Duration) {
    let Ok(entries) = std::fs::read_dir(mps_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if alive {
            continue;
        }
        let pipe = entry.path().join("p");
        if pipe.exists() {
            if let Ok(Ok(_)) = control_query(control, &pipe, "quit", timeout) {
                tracing::warn!(dir = %entry.path().display(), "quit an MPS daemon left by a dead manager");
            }
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stand-in control program, in a scratch directory of its own, run in `mode`
    /// (`HTEX_FAKE_MPS`) through a wrapper, so no test changes this process's environment.
    fn fake_control(name: &str, mode: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("htex-mps-unit-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("nvidia-cuda-mps-control");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nvidia-cuda-mps-control"),
            &fake,
        )
        .unwrap();
        let wrapper = dir.join("control");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nHTEX_FAKE_MPS={mode} exec '{}' \"$@\"\n",
                fake.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        (wrapper, dir)
    }

    const SHORT: Duration = Duration::from_millis(700);

    #[test]
    fn a_hanging_control_program_fails_the_start_within_the_timeout() {
        let (control, dir) = fake_control("hang", "hang");
        let started = Instant::now();
        let err = MpsDaemon::start(&control, "GPU-x", dir.join("d"), SHORT).unwrap_err();
        assert!(started.elapsed() < SHORT * 3, "{:?}", started.elapsed());
        let message = err.to_string();
        assert!(message.contains("did not finish within 0.7 s"), "{message}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_failed_start_is_reported_with_what_the_program_said() {
        let (control, dir) = fake_control("fail", "fail-start");
        let err = MpsDaemon::start(&control, "GPU-x", dir.join("d"), SHORT).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, MpsError::Start { .. }) && message.contains("exit status: 1"),
            "{message}"
        );
        assert!(message.contains("cannot start"), "{message}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_quit_that_is_ignored_ends_within_the_timeout() {
        let (control, dir) = fake_control("quit", "ignore-quit");
        let daemon = MpsDaemon::start(&control, "GPU-x", dir.join("d"), SHORT).unwrap();
        let started = Instant::now();
        drop(daemon);
        assert!(started.elapsed() < SHORT * 3, "{:?}", started.elapsed());
        assert!(!dir.join("d").exists(), "its directory is removed anyway");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_root_is_private_to_this_user() {
        let root = std::env::temp_dir().join(format!("htex-mps-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        ensure_root(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure_root(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = ensure_root(&root).unwrap_err().to_string();
        assert!(
            err.contains("mode 755") && err.contains("remove it"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).ok();
        std::fs::write(&root, "").unwrap();
        let err = ensure_root(&root).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        std::fs::remove_file(&root).ok();
        assert!(mps_root().to_string_lossy().starts_with("/tmp/htex-mps-"));
    }

    #[test]
    fn fault_lines_are_read_once_and_whole() {
        let dir = std::env::temp_dir().join(format!("htex-mps-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.log");
        let mut log = FaultLog {
            gpu_uuid: "GPU-x".into(),
            path: path.clone(),
            offset: 0,
        };
        assert!(log.take_faults().is_empty());
        let line = "[2026-11-25 13:12:21.953 Server   482] Client {PID: 420, Context: 1} encountered a fatal GPU error.";
        std::fs::write(
            &path,
            format!("{line}\nServer is handling a fatal GPU error.\npartial"),
        )
        .unwrap();
        let faults = log.take_faults();
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].line, line);
        assert!(log.take_faults().is_empty(), "read once");
        std::fs::remove_dir_all(&dir).ok();
    }
}
