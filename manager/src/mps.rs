//! MPS control daemons owned by the manager: one per GPU with MPS slots, each with private, short
//! pipe and log directories and `CUDA_VISIBLE_DEVICES` set to its GPU's UUID. Quit on drop, so
//! every way out of the manager (shutdown, SIGTERM/SIGINT, an error) stops them; directories a
//! killed manager left behind are cleaned (and their daemons quit) at the next start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where private MPS directories live: short, because the pipe path must fit a UNIX socket name.
pub const MPS_ROOT: &str = "/tmp/htex-mps";

#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    #[error("`{program}` was not found; MPS slots need the NVIDIA driver's nvidia-cuda-mps-control on PATH (or pass --mps-control PATH)")]
    ControlMissing { program: String },
    #[error("cannot create MPS directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
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
    running: bool,
    /// How much of the server log has been read for fault lines.
    log_offset: u64,
}

/// A fatal GPU error the MPS server reported: every client on the GPU is affected.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuFault {
    pub gpu_uuid: String,
    /// The client process the log names; not necessarily the one that caused the fault.
    pub pid: Option<u32>,
    /// The server's log line.
    pub line: String,
}

impl MpsDaemon {
    /// Starts `control -d` for the GPU in a fresh private directory and checks it answers.
    pub fn start(control: &Path, gpu_uuid: &str, dir: PathBuf) -> Result<MpsDaemon, MpsError> {
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["p", "l"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|source| MpsError::Directory { path, source })?;
        }
        let mut daemon = MpsDaemon {
            gpu_uuid: gpu_uuid.to_string(),
            control: control.into(),
            dir,
            running: false,
            log_offset: 0,
        };
        let output = daemon
            .command()
            .arg("-d")
            .env("CUDA_VISIBLE_DEVICES", gpu_uuid)
            .env("CUDA_MPS_LOG_DIRECTORY", daemon.log_dir())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| daemon.spawn_error(e))?;
        if !output.status.success() {
            let reason = format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return Err(MpsError::Start {
                gpu: gpu_uuid.into(),
                reason,
            });
        }
        daemon.running = true;
        // The daemon forks; give it a moment to open its pipes before the first query.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match daemon.check_health() {
                Ok(()) => break,
                Err(_) if Instant::now() < deadline => {
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

    /// Asks the daemon a harmless question, as NVIDIA's device plugin does for its health probe.
    pub fn check_health(&self) -> Result<(), MpsError> {
        let answer = control_query(
            &self.control,
            &self.pipe_dir(),
            "get_default_active_thread_percentage",
        )
        .map_err(|e| self.spawn_error(e))?;
        answer.map(|_| ()).map_err(|reason| MpsError::Unhealthy {
            gpu: self.gpu_uuid.clone(),
            reason,
        })
    }

    /// Fatal GPU errors the server logged since the last look. The server writes
    /// `Client {PID: N, Context: C} encountered a fatal GPU error.` to `server.log` in the log
    /// directory this manager gave it (seen on an H100, docs/results/mps-fault.md).
    pub fn take_faults(&mut self) -> Vec<GpuFault> {
        let path = self.log_dir().join("server.log");
        let Ok(mut file) = std::fs::File::open(&path) else {
            return Vec::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len <= self.log_offset {
            self.log_offset = self.log_offset.min(len);
            return Vec::new();
        }
        use std::io::{Read, Seek, SeekFrom};
        let mut fresh = String::new();
        if file.seek(SeekFrom::Start(self.log_offset)).is_err()
            || file.read_to_string(&mut fresh).is_err()
        {
            return Vec::new();
        }
        // Only whole lines; a partial last line is read again next time.
        let complete = fresh.rfind('\n').map_or(0, |i| i + 1);
        self.log_offset += complete as u64;
        fresh[..complete]
            .lines()
            .filter(|line| line.contains("encountered a fatal GPU error"))
            .map(|line| GpuFault {
                gpu_uuid: self.gpu_uuid.clone(),
                pid: fault_pid(line),
                line: line.trim().to_string(),
            })
            .collect()
    }

    /// Quits the daemon (and its server) and removes its directories.
    pub fn quit(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        match control_query(&self.control, &self.pipe_dir(), "quit") {
            Ok(Ok(_)) => tracing::info!(gpu = %self.gpu_uuid, "MPS control daemon quit"),
            Ok(Err(reason)) => tracing::warn!(gpu = %self.gpu_uuid, "MPS quit failed: {reason}"),
            Err(e) => tracing::warn!(gpu = %self.gpu_uuid, "MPS quit failed: {e}"),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.control);
        command.env("CUDA_MPS_PIPE_DIRECTORY", self.pipe_dir());
        command
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

/// The `N` of `{PID: N, ...}` in a server log line.
fn fault_pid(line: &str) -> Option<u32> {
    let rest = &line[line.find("PID: ")? + 5..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()
}

/// Sends one command to the daemon of `pipe_dir`: `Ok(Ok(stdout))` when it answered,
/// `Ok(Err(why))` when it refused or is absent, `Err` when the control program cannot run.
fn control_query(
    control: &Path,
    pipe_dir: &Path,
    query: &str,
) -> std::io::Result<Result<String, String>> {
    let mut child = Command::new(control)
        .env("CUDA_MPS_PIPE_DIRECTORY", pipe_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{query}");
    }
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() {
        Ok(Ok(stdout))
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Ok(Err(format!(
            "{} ({})",
            output.status,
            if stderr.is_empty() { stdout } else { stderr }
        )))
    }
}

/// A fresh private directory `/tmp/htex-mps/<pid>-<n>`: unique within this process too, since
/// tests and `htex run` start several managers in one process.
pub fn private_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Path::new(MPS_ROOT).join(format!("{}-{n}", std::process::id()))
}

/// An empty pipe directory for whole-GPU and MIG slots, so their CUDA never joins a site MPS
/// daemon at the default `/tmp/nvidia-mps`; removed on drop.
#[derive(Debug)]
pub struct EmptyPipeDir(PathBuf);

impl EmptyPipeDir {
    pub fn create() -> Result<EmptyPipeDir, MpsError> {
        let path = private_dir();
        std::fs::create_dir_all(&path).map_err(|source| MpsError::Directory {
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

/// Removes directories of managers that are gone, quitting any daemon still listening there.
pub fn clean_stale(control: &Path) {
    let Ok(entries) = std::fs::read_dir(MPS_ROOT) else {
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
            if let Ok(Ok(_)) = control_query(control, &pipe, "quit") {
                tracing::warn!(dir = %entry.path().display(), "quit an MPS daemon left by a dead manager");
            }
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lines_name_their_client() {
        let line = "[2026-11-25 13:12:21.953 Server   482] Client {PID: 420, Context: 1} encountered a fatal GPU error.";
        assert_eq!(fault_pid(line), Some(420));
        assert_eq!(fault_pid("Server is handling a fatal GPU error."), None);
    }
}
