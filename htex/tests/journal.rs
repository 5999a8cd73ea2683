//! `htex interchange --journal` with real processes: `kill -9` of the interchange three times
//! during a 100,000-task `htex submit` run, each time started again on the journal (every task
//! ends exactly once at the client, and the workers' own record shows none ran twice); a torn
//! last write recovered and a damaged journal refused; a full disk (a small tmpfs) refusing
//! tasks with an error and acknowledging nothing it could not write.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, htex, Running, HTEX};

/// The test worker (`tests/src/bin/htex-test-worker.rs`), which `cargo test --workspace` builds
/// beside `htex`; its `record` function notes every run of a task in a file of its own.
fn test_worker() -> PathBuf {
    let worker = Path::new(HTEX).with_file_name("htex-test-worker");
    assert!(
        worker.exists(),
        "{} is missing: build it with `cargo build -p htex-tests` (the workspace's tests do)",
        worker.display()
    );
    worker
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("htex-journal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An interchange on fixed ports with a journal, started again the same way after a kill.
struct Durable {
    journal: PathBuf,
    client_port: String,
    manager_port: String,
    log: PathBuf,
    starts: usize,
}

impl Durable {
    fn new(dir: &Path, journal: PathBuf) -> Durable {
        Durable {
            journal,
            client_port: free_port().to_string(),
            manager_port: free_port().to_string(),
            log: dir.to_path_buf(),
            starts: 0,
        }
    }

    /// `htex interchange` on the ports and the journal, heartbeats every 0.5 s.
    fn command(&self) -> Command {
        let mut command = Command::new(HTEX);
        command
            .args([
                "interchange",
                "--client-port",
                &self.client_port,
                "--manager-port",
                &self.manager_port,
                "--heartbeat-period",
                "0.5",
                "--heartbeat-threshold",
                "2",
                "--journal",
            ])
            .arg(&self.journal);
        command
    }

    /// The interchange (its stderr in `interchange-N.log`), once it listens.
    fn start(&mut self) -> Running {
        self.starts += 1;
        let log = self.log.join(format!("interchange-{}.log", self.starts));
        let child = self
            .command()
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let running = Running(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("interchange listening")
        {
            assert!(
                Instant::now() < deadline,
                "the interchange did not listen: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        running
    }

    /// The same command, expected to fail: its exit status and what it printed.
    fn start_failing(&self) -> (Option<i32>, String) {
        let out = self.command().output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn manager(&self, worker: &Path) -> Running {
        htex(&[
            "manager",
            "--port",
            &self.manager_port,
            "--workers",
            "2",
            "--manager-id",
            "m",
            "--reconnect-timeout",
            "120",
            "--worker-command",
            worker.to_str().unwrap(),
        ])
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// How many times each tag was recorded by the workers.
fn runs(dir: &Path) -> HashMap<u64, u32> {
    let mut runs = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "runs") {
            for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
                *runs.entry(line.parse::<u64>().unwrap()).or_insert(0) += 1;
            }
        }
    }
    runs
}

#[test]
fn three_kills_during_a_100k_task_submit_lose_nothing_and_run_nothing_twice() {
    const TASKS: u64 = 100_000;
    let dir = scratch("kills");
    let ran = dir.join("ran");
    std::fs::create_dir_all(&ran).unwrap();
    let tasks = dir.join("tasks.jsonl");
    let mut text = String::new();
    for i in 1..=TASKS {
        text.push_str(&format!(
            "{{\"id\": {i}, \"function\": \"record\", \"args\": [\"{}\", {i}]}}\n",
            ran.display()
        ));
    }
    std::fs::write(&tasks, text).unwrap();
    let mut ic = Durable::new(&dir, dir.join("journal"));
    let mut interchange = ic.start();
    let _manager = ic.manager(&test_worker());
    let results = dir.join("results.jsonl");
    let mut submit = Running(
        Command::new(HTEX)
            .args(["submit", "--port", &ic.client_port, "--quiet", "--results"])
            .arg(&results)
            .arg(&tasks)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("submit.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    // Kill at three points of the run, each a little after a share of the results came back
    // (the offsets vary with the run: the points fall wherever the interchange is then).
    let seed = std::process::id() as u64;
    for (k, share) in [0.15, 0.45, 0.75].into_iter().enumerate() {
        let due = (TASKS as f64 * share) as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        while lines(&results) < due {
            assert!(
                Instant::now() < deadline,
                "stuck at {} results before kill {}",
                lines(&results),
                k + 1
            );
            assert!(submit.0.try_wait().unwrap().is_none(), "submit ended early");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis((seed >> k) % 50));
        interchange.signal(libc::SIGKILL);
        let _ = interchange.0.wait();
        std::thread::sleep(Duration::from_millis((seed >> (k + 3)) % 300));
        interchange = ic.start();
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = submit.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "submit did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.join("submit.log")).unwrap();
    assert!(status.success(), "submit failed: {log}");
    assert_eq!(
        log.matches("connecting again").count(),
        3,
        "the client reconnected after each kill: {log}"
    );

    // Every task ended exactly once at the client, successfully.
    let text = std::fs::read_to_string(&results).unwrap();
    let mut seen = HashMap::new();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["outcome"], "success", "{line}");
        *seen
            .entry(value["id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len() as u64, TASKS, "a task ended without a result");
    assert!(seen.values().all(|&n| n == 1), "a task ended twice");
    // And ran exactly once, by the workers' own count.
    let runs = runs(&ran);
    let twice: Vec<_> = runs.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    assert_eq!(runs.len() as u64, TASKS, "tasks never run");
    // The journal is back to (almost) nothing once every result was confirmed.
    interchange.signal(libc::SIGTERM);
    let _ = interchange.0.wait();
}

/// Starts an interchange on `journal`, has a client submit `n` tasks that sleep long, waits
/// until they are accepted, and kills the interchange (no manager: they stay queued).
fn journal_with_queued_tasks(ic: &mut Durable, n: usize) {
    let interchange = ic.start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let endpoint = format!("tcp://127.0.0.1:{}", ic.client_port);
        let client = htex_client::Client::connect(&endpoint).await.unwrap();
        let handles: Vec<_> = (0..n)
            .map(|_| client.submit(htex_client::Task::call("sleep", &60_000u64).unwrap()))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.status().await.unwrap().queued < n as u64 {
            assert!(Instant::now() < deadline, "the tasks were not queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(handles);
        interchange.signal(libc::SIGKILL);
    });
    drop(interchange);
}

/// What a restarted interchange says it restored, from its log.
fn restored(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .find(|l| l.contains("restored from the journal"))
        .unwrap_or_else(|| panic!("no restore in: {text}"))
        .to_string()
}

#[test]
fn a_torn_last_write_is_recovered_and_a_damaged_journal_is_refused_with_its_offset() {
    let dir = scratch("torn");
    let journal = dir.join("journal");
    let mut ic = Durable::new(&dir, journal.clone());
    journal_with_queued_tasks(&mut ic, 20);
    let whole = std::fs::read(&journal).unwrap();

    // A write cut short: half a record's header after the last whole record.
    let mut torn = whole.clone();
    torn.extend_from_slice(&[0x30, 0, 0]);
    std::fs::write(&journal, &torn).unwrap();
    let interchange = ic.start();
    let log = dir.join(format!("interchange-{}.log", ic.starts));
    assert!(restored(&log).contains("tasks=20"), "{}", restored(&log));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("cut short"), "{text}");
    interchange.signal(libc::SIGKILL);
    drop(interchange);
    assert!(
        std::fs::read(&journal).unwrap().starts_with(&whole),
        "the whole records were kept"
    );

    // A flipped byte inside the first record (records follow it): refused, naming the offset
    // of that record, the file left as it is.
    let mut damaged = std::fs::read(&journal).unwrap();
    let at = 16 + 8 + 2;
    damaged[at] ^= 0x55;
    std::fs::write(&journal, &damaged).unwrap();
    let (code, stderr) = ic.start_failing();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is damaged at byte 16"), "{stderr}");
    assert!(stderr.contains("nothing was discarded"), "{stderr}");
    assert_eq!(std::fs::read(&journal).unwrap(), damaged);

    // Not a journal at all: refused, not overwritten.
    std::fs::write(&journal, b"some notes, not a journal\n").unwrap();
    let (code, stderr) = ic.start_failing();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not an htex journal"), "{stderr}");
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        b"some notes, not a journal\n"
    );
}

#[test]
fn a_full_disk_refuses_tasks_with_an_error_and_acknowledges_nothing_it_could_not_write() {
    if unsafe { libc::geteuid() } != 0 {
        htex_tests::skip_unless_required("root", "mounting a small tmpfs needs root");
        return;
    }
    let dir = scratch("full");
    let disk = dir.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs failed");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let mut ic = Durable::new(&dir, disk.join("journal"));
    let interchange = ic.start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let endpoint = format!("tcp://127.0.0.1:{}", ic.client_port);
        let client = htex_client::Client::connect(&endpoint).await.unwrap();
        // No manager: every accepted task stays in the journal. 64 KiB each: the 1 MiB disk
        // holds about 15.
        // One frame (and one journal write) each, a few milliseconds apart.
        let big = vec![7u8; 64 << 10];
        let mut handles = Vec::new();
        for _ in 0..40 {
            handles.push(client.submit(htex_client::Task::call("echo", &big).unwrap()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut refused = Vec::new();
        let mut waiting = Vec::new();
        for handle in handles {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.max(Duration::from_millis(100)), handle).await {
                Ok(Ok(result)) => refused.push(result),
                Ok(Err(e)) => panic!("the handle failed: {e}"),
                Err(_) => waiting.push(()),
            }
        }
        assert!(!refused.is_empty(), "nothing was refused on a full disk");
        for result in &refused {
            let Err(htex_client::TaskError::NotAccepted { reason }) = &result.outcome else {
                panic!("{result:?}");
            };
            assert!(reason.contains("No space left on device"), "{reason}");
        }
        let status = client.status().await.unwrap();
        assert_eq!(
            status.outstanding as usize,
            waiting.len(),
            "every task is either refused or held, acknowledged and journaled"
        );
        assert!(
            !waiting.is_empty(),
            "the tasks that fit were accepted and wait for a manager"
        );
        // The journal holds exactly the accepted ones: a restart on it restores them all.
        interchange.signal(libc::SIGKILL);
        let accepted = waiting.len();
        drop(interchange);
        // Started again on the same full disk, it restores every task it acknowledged.
        let interchange = ic.start();
        let log = dir.join(format!("interchange-{}.log", ic.starts));
        assert!(
            restored(&log).contains(&format!("tasks={accepted}")),
            "{}",
            restored(&log)
        );
        drop(interchange);
    });
}
