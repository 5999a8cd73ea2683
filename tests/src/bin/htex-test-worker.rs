//! A worker built the way users build theirs: the stock built-ins plus functions of its own.

use std::path::Path;
use std::time::{Duration, Instant};

use htex_worker::Registry;

/// Writes `text` to `path` all at once (a temporary file renamed over it), so a test that reads
/// the file never sees it half written.
fn write_atomically(path: &str, text: &str) -> Result<(), String> {
    let temporary = format!("{path}.tmp-{}", std::process::id());
    std::fs::write(&temporary, text).map_err(|e| e.to_string())?;
    std::fs::rename(&temporary, Path::new(path)).map_err(|e| e.to_string())
}

/// Bytes waiting in this worker's stdin pipe, which the manager writes tasks into
/// (`FIONREAD`): more than 0 while the task that asks runs means tasks were queued behind it.
/// Frames the worker's own read buffer took in already do not count.
fn bytes_waiting_in_stdin() -> Result<i32, String> {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into the pointer it is given.
    let rc = unsafe { libc::ioctl(0, libc::FIONREAD, &mut waiting) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(waiting)
}

fn main() {
    let mut registry = Registry::with_builtins();
    // Writes the worker's pid to a file, then sleeps: lets a test find and kill a busy worker.
    registry.register("pid_then_sleep", |(path, ms): (String, u64)| {
        write_atomically(&path, &std::process::id().to_string())?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(())
    });
    // For `ms`, every 20 ms: writes `PID WAITING MOST` to the file, the bytes waiting in the
    // worker's stdin now and the most seen; returns the most.
    registry.register("pipe_probe", |(path, ms): (String, u64)| {
        let end = Instant::now() + Duration::from_millis(ms);
        let mut most = 0;
        loop {
            let waiting = bytes_waiting_in_stdin()?;
            most = most.max(waiting);
            write_atomically(&path, &format!("{} {waiting} {most}", std::process::id()))?;
            if Instant::now() >= end {
                return Ok::<_, String>(most);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    registry.register("pid", |()| Ok::<_, String>(std::process::id()));
    // Holds its slot for `ms`, then names its worker: concurrent calls find every worker.
    registry.register("sleep_then_pid", |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(std::process::id())
    });
    // `n` bytes of value: for results larger than a frame may carry.
    registry.register("bytes", |n: usize| {
        Ok::<_, String>(serde_bytes::ByteBuf::from(vec![7u8; n]))
    });
    registry.register("add", |(a, b): (i64, i64)| Ok::<_, String>(a + b));
    // Appends `tag` to DIR/PID.runs, one line per run: a test counts how often each task ran,
    // across workers and restarts of everything else.
    registry.register("record", |(dir, tag): (String, u64)| {
        use std::io::Write;
        let path = Path::new(&dir).join(format!("{}.runs", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        file.write_all(format!("{tag}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    });
    if let Err(e) = htex_worker::serve(&registry) {
        eprintln!("htex-test-worker: {e}");
        std::process::exit(1);
    }
}
