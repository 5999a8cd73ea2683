//! Blocks of managers as real Slurm jobs (scripts/slurm/up.sh: 3 virtual nodes of 2 CPUs on
//! this host): scale out under a backlog and back in after idle with drain, a block cancelled
//! with `scancel`, walltime expiry mid-task, `sbatch` failing, a two-node block through `srun`,
//! the controller stopped for 20 s, and the shipped examples/slurm.toml under `htex run`. Each test runs `htex interchange --config` as users do;
//! the tests take turns (the nodes are shared). Without Slurm they skip, and fail instead when
//! HTEX_REQUIRE names `slurm` (CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, HTEX};
use htex_client::{Client, Task, TaskError};
use htex_protocol::{BlockReport, ScalingReport};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn slurm_is_up() -> bool {
    let ok = Command::new("sinfo")
        .args(["-h", "-p", "debug"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        htex_tests::skip_unless_required(
            "slurm",
            "no Slurm answers `sinfo` here (start one with scripts/slurm/up.sh)",
        );
    }
    ok
}

struct SlurmInterchange {
    _process: Running,
    client: Client,
    port: String,
    dir: PathBuf,
}

impl SlurmInterchange {
    /// `htex interchange --config` with `provider` and `scaling` lines added to a base config:
    /// heartbeats every 0.5 s, blocks polled every second.
    async fn start(name: &str, provider: &str, scaling: &str, path: Option<&Path>) -> Self {
        let dir = std::env::temp_dir().join(format!("htex-slurm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("interchange.toml");
        std::fs::write(
            &config,
            format!(
                "heartbeat_period = 0.5\nheartbeat_threshold = 3\n\n[provider]\nkind = \"slurm\"\n\
                 label = \"{name}\"\nrun_dir = \"{}\"\nhtex = \"{HTEX}\"\n\
                 manager_args = [\"--workers\", \"2\", \"--reconnect-timeout\", \"5\"]\n{provider}\n\n\
                 [scaling]\npoll_interval_s = 1\n{scaling}\n",
                dir.join("blocks").display()
            ),
        )
        .unwrap();
        let addresses = dir.join("addresses.json");
        let log = std::fs::File::create(dir.join("interchange.log")).unwrap();
        let mut command = Command::new(HTEX);
        command
            .args(["interchange", "--config"])
            .arg(&config)
            .arg("--addresses-file")
            .arg(&addresses)
            .current_dir(&dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(bin) = path {
            let old = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{old}", bin.display()));
        }
        let process = Running(command.spawn().unwrap());
        let endpoints = common::read_endpoints(&addresses, &log_of(&dir)).await;
        let endpoint = endpoints["client"].as_str().unwrap().to_string();
        let port = endpoint.rsplit(':').next().unwrap().to_string();
        let client = Client::connect(&endpoint).await.unwrap();
        SlurmInterchange {
            _process: process,
            client,
            port,
            dir,
        }
    }

    async fn scaling(&self) -> ScalingReport {
        *self
            .client
            .status()
            .await
            .unwrap()
            .scaling
            .expect("a provider")
    }

    /// Polls `htex blocks` until `check` holds, or panics with the table after `timeout`.
    async fn until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&ScalingReport) -> bool,
    ) -> ScalingReport {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.scaling().await;
            if check(&report) {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; blocks: {report:#?}\n{}",
                log_of(&self.dir)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn shutdown(self) {
        let _ = self.client.command(htex_protocol::Command::Shutdown).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn log_of(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("interchange.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "interchange log (last lines):\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

fn live(report: &ScalingReport) -> Vec<&BlockReport> {
    report
        .blocks
        .iter()
        .filter(|b| b.state != "ended")
        .collect()
}

fn squeue_state(job: &str) -> String {
    let out = Command::new("squeue")
        .args(["-h", "-t", "all", "-j", job, "-o", "%T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh `dir` with an `sbatch` (in `dir/bin`) that counts its calls into `dir/calls` and
/// runs the real one.
fn counting_sbatch(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v sbatch"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let script = format!(
        "#!/bin/sh\necho call >> {}\nexec {} \"$@\"\n",
        dir.join("calls").display(),
        real.trim()
    );
    let shim = bin.join("sbatch");
    std::fs::write(&shim, script).unwrap();
    Command::new("chmod").arg("+x").arg(&shim).status().unwrap();
    bin
}

fn calls(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// Starts slurmctld again, keeping its state (also when the test fails midway).
struct ControllerBack(bool);

impl ControllerBack {
    fn restart(mut self) {
        self.0 = true;
        let up = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm/up.sh"))
            .env("SLURM_UP_CLEAN", "0")
            .env("SLURM_UP_NO_INSTALL", "1")
            .output()
            .unwrap();
        assert!(
            up.status.success(),
            "{}",
            String::from_utf8_lossy(&up.stderr)
        );
    }
}

impl Drop for ControllerBack {
    fn drop(&mut self) {
        if !self.0 {
            let _ =
                Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm/up.sh"))
                    .env("SLURM_UP_CLEAN", "0")
                    .env("SLURM_UP_NO_INSTALL", "1")
                    .status();
        }
    }
}

fn sleep_task(seconds: f64) -> Task {
    Task::command(["sleep".to_string(), seconds.to_string()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_scales_out_to_max_blocks_and_idle_blocks_drain_back_to_min() {
    let _turn = TURN.lock().await;
    if !slurm_is_up() {
        return;
    }
    let calls_dir = std::env::temp_dir().join(format!("htex-slurm-calls-{}", std::process::id()));
    let bin = counting_sbatch(&calls_dir);
    let ic = SlurmInterchange::start(
        "scale",
        "partition = \"debug\"\ncores_per_node = 2",
        "min_blocks = 0\nmax_blocks = 3\nmax_pending = 1\nidle_timeout_s = 3\ndrain_timeout_s = 30",
        Some(&bin),
    )
    .await;
    let started = Instant::now();
    let handles = ic.client.submit_batch((0..30).map(|_| sleep_task(1.0)));
    let first = ic
        .until("a block running", Duration::from_secs(60), |r| {
            r.blocks.iter().any(|b| b.managers > 0)
        })
        .await;
    let to_first_block = started.elapsed();
    assert!(live(&first).len() <= 3);
    let mut most_live = 0;
    let mut most_pending = 0;
    let mut done = 0;
    let mut waiting = handles.into_iter();
    let mut attempts = Vec::new();
    loop {
        let report = ic.scaling().await;
        most_live = most_live.max(live(&report).len());
        most_pending = most_pending.max(
            report
                .blocks
                .iter()
                .filter(|b| b.state == "pending" || b.state == "submitting")
                .count(),
        );
        let Some(handle) = waiting.next() else { break };
        let result = tokio::time::timeout(Duration::from_secs(120), handle)
            .await
            .expect("a result within 2 minutes")
            .unwrap();
        assert!(result.outcome.is_ok(), "{result:?}");
        attempts.push(result.attempts);
        done += 1;
    }
    assert_eq!(done, 30);
    assert!(
        attempts.iter().all(|&a| a == 1),
        "no task retried: {attempts:?}"
    );
    assert_eq!(most_live, 3, "scaled out to max_blocks");
    assert!(
        most_pending <= 1,
        "max_pending 1: {most_pending} pending at once"
    );
    assert_eq!(calls(&calls_dir), 3, "one sbatch per block, none twice");
    let idle_since = Instant::now();
    let report = ic
        .until("every block released", Duration::from_secs(60), |r| {
            live(r).is_empty() && r.blocks.iter().all(|b| b.state == "ended")
        })
        .await;
    let idle_to_gone = idle_since.elapsed();
    for block in &report.blocks {
        assert!(
            block
                .reason
                .as_deref()
                .unwrap_or("")
                .starts_with("released (completed)"),
            "drained, not cancelled: {block:?}"
        );
        let job = block.job_id.as_deref().unwrap();
        assert_eq!(squeue_state(job), "COMPLETED", "job {job}");
    }
    println!(
        "backlog to the first block's manager: {:.1} s; idle to every block gone: {:.1} s \
         (idle_timeout 3 s, poll 1 s)",
        to_first_block.as_secs_f64(),
        idle_to_gone.as_secs_f64()
    );
    ic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_cancelled_with_scancel_has_its_tasks_retried_on_another() {
    let _turn = TURN.lock().await;
    if !slurm_is_up() {
        return;
    }
    let ic = SlurmInterchange::start(
        "scancel",
        "partition = \"debug\"\ncores_per_node = 2",
        "min_blocks = 1\nmax_blocks = 2\nidle_timeout_s = 60",
        None,
    )
    .await;
    let report = ic
        .until("the first block running", Duration::from_secs(60), |r| {
            r.blocks.iter().any(|b| b.managers > 0)
        })
        .await;
    let job = report.blocks[0].job_id.clone().unwrap();
    let handles = ic
        .client
        .submit_batch((0..2).map(|_| sleep_task(6.0).max_retries(1)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = Command::new("scancel").arg(&job).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    for handle in handles {
        let result = tokio::time::timeout(Duration::from_secs(90), handle)
            .await
            .expect("a result")
            .unwrap();
        assert!(result.outcome.is_ok(), "{result:?}");
        assert_eq!(
            result.attempts, 2,
            "ran again after its block was cancelled"
        );
    }
    let report = ic.scaling().await;
    let first = report
        .blocks
        .iter()
        .find(|b| b.job_id.as_deref() == Some(job.as_str()))
        .unwrap();
    assert_eq!(first.state, "ended");
    assert!(
        first
            .reason
            .as_deref()
            .unwrap()
            .contains("cancelled outside htex"),
        "{first:?}"
    );
    ic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_whose_walltime_ends_mid_task_ends_the_task_with_a_clear_error() {
    let _turn = TURN.lock().await;
    if !slurm_is_up() {
        return;
    }
    // One minute is Slurm's smallest limit (enforced 65-85 s in); no drain margin, so the task
    // is running when the walltime ends.
    let ic = SlurmInterchange::start(
        "walltime",
        "partition = \"debug\"\ncores_per_node = 2\nwalltime = \"1\"",
        "min_blocks = 0\nmax_blocks = 1\ndrain_margin_s = 0\nidle_timeout_s = 300",
        None,
    )
    .await;
    let handle = ic.client.submit(sleep_task(300.0));
    let result = tokio::time::timeout(Duration::from_secs(150), handle)
        .await
        .expect("the task ends when its block's walltime does")
        .unwrap();
    assert!(
        matches!(result.outcome, Err(TaskError::ManagerLost { .. })),
        "{result:?}"
    );
    let report = ic
        .until(
            "the block ended by its walltime",
            Duration::from_secs(30),
            |r| r.blocks.iter().any(|b| b.state == "ended"),
        )
        .await;
    let reason = report.blocks[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("walltime"), "{report:?}");
    ic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sbatch_backs_off_and_pauses_with_its_error_and_loses_no_task() {
    let _turn = TURN.lock().await;
    if !slurm_is_up() {
        return;
    }
    let calls_dir =
        std::env::temp_dir().join(format!("htex-slurm-fail-calls-{}", std::process::id()));
    let bin = counting_sbatch(&calls_dir);
    // Partition `inactive` makes sbatch exit 1.
    let ic = SlurmInterchange::start(
        "badpartition",
        "partition = \"inactive\"",
        "max_blocks = 2\nsubmit_backoff_s = [0, 2]\nmax_failures = 3",
        Some(&bin),
    )
    .await;
    let handle = ic.client.submit(sleep_task(0.1));
    let report = ic
        .until("scaling paused", Duration::from_secs(30), |r| {
            r.paused.is_some()
        })
        .await;
    assert_eq!(report.failures, 3);
    let error = report.last_error.unwrap();
    assert!(error.contains("sbatch"), "{error}");
    assert!(
        error.to_lowercase().contains("partition"),
        "sbatch's own words: {error}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(calls(&calls_dir), 3, "no submit storm while paused");
    let blocks = Command::new(HTEX)
        .args(["blocks", "--port", &ic.port])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&blocks.stdout);
    assert!(
        text.contains("PAUSED") && text.contains("htex blocks --resume"),
        "{text}"
    );
    // The task waits, and is answered once: cancelled at shutdown.
    assert_eq!(ic.client.status().await.unwrap().outstanding, 1);
    let resumed = Command::new(HTEX)
        .args(["blocks", "--resume", "--port", &ic.port])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{resumed:?}");
    ic.until("tried again after --resume", Duration::from_secs(10), |r| {
        r.failures >= 1 && calls(&calls_dir) >= 4
    })
    .await;
    let client = Client::connect(&format!("tcp://127.0.0.1:{}", ic.port))
        .await
        .unwrap();
    client
        .command(htex_protocol::Command::Shutdown)
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(result.outcome, Err(TaskError::Cancelled { .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_node_block_starts_a_manager_per_node_through_srun() {
    let _turn = TURN.lock().await;
    if !slurm_is_up() {
        return;
    }
    let ic = SlurmInterchange::start(
        "srun",
        "partition = \"debug\"\nnodes_per_block = 2\ncores_per_node = 2",
        "min_blocks = 1\nmax_blocks = 1",
        None,
    )
    .await;
    let report = ic
        .until("two managers in the block", Duration::from_secs(60), |r| {
            r.blocks.first().is_some_and(|b| b.managers == 2)
        })
        .await;
    let job = report.blocks[0].job_id.clone().unwrap();
    let status = ic.client.status().await.unwrap();
    let mut ids: Vec<String> = status.managers.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec![format!("{job}.0"), format!("{job}.1")]);
    assert_eq!(
        status.managers[0].hostname, status.managers[1].hostname,
        "the virtual nodes share a hostname: the ids must not be hostnames"
    );
    // Four 2 s tasks on 2 x 2 slots: about 2 s, not 4, so both managers ran them.
    let started = Instant::now();
    let handles = ic.client.submit_batch((0..4).map(|_| sleep_task(2.0)));
    for handle in handles {
        let result = handle.await.unwrap();
        assert!(result.outcome.is_ok(), "{result:?}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(3800),
        "{:?}",
        started.elapsed()
    );
    ic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_blip_loses_no_block_and_submits_none_extra() {
    let _turn = TURN.lock().await;
    if !slurm_is_up() {
        return;
    }
    let calls_dir =
        std::env::temp_dir().join(format!("htex-slurm-blip-calls-{}", std::process::id()));
    let bin = counting_sbatch(&calls_dir);
    let ic = SlurmInterchange::start(
        "blip",
        "partition = \"debug\"\ncores_per_node = 2",
        "min_blocks = 1\nmax_blocks = 2\nidle_timeout_s = 300",
        Some(&bin),
    )
    .await;
    ic.until("the block running", Duration::from_secs(60), |r| {
        r.blocks.first().is_some_and(|b| b.managers == 1)
    })
    .await;
    let pid = std::fs::read_to_string("/run/htex-slurm/slurmctld.pid")
        .expect("slurmctld started by scripts/slurm/up.sh");
    let pid: i32 = pid.trim().parse().unwrap();
    let controller = ControllerBack(false);
    // SAFETY: signals the test Slurm's controller.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let down = Instant::now();
    ic.until("squeue failing seen", Duration::from_secs(15), |r| {
        r.decision.contains("cannot be read") || r.decision.contains("has not answered")
    })
    .await;
    // A backlog arrives while the controller is down: nothing is submitted for it, and the
    // running block is not declared lost.
    let handles = ic.client.submit_batch((0..8).map(|_| sleep_task(1.0)));
    while down.elapsed() < Duration::from_secs(20) {
        let report = ic.scaling().await;
        assert!(
            report.blocks.iter().all(|b| b.state != "ended"),
            "no block declared lost: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        calls(&calls_dir),
        1,
        "no submission while the state was unknown"
    );
    controller.restart();
    for handle in handles {
        let result = tokio::time::timeout(Duration::from_secs(120), handle)
            .await
            .expect("a result")
            .unwrap();
        assert!(result.outcome.is_ok(), "{result:?}");
        assert_eq!(result.attempts, 1);
    }
    let report = ic.scaling().await;
    assert!(
        report.blocks[0].state == "running" || report.blocks[0].state == "draining",
        "{report:?}"
    );
    ic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_slurm_example_runs_the_example_tasks_with_one_command() {
    let _turn = TURN.lock().await;
    if !slurm_is_up() {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("htex-slurm-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // As the README says: from any directory, `htex run TASKS --config examples/slurm.toml`.
    let started = Instant::now();
    let out = tokio::process::Command::new(HTEX)
        .current_dir(&dir)
        .args(["run", "--quiet", "--results", "results.jsonl", "--config"])
        .arg(repo.join("examples/slurm.toml"))
        .arg(repo.join("examples/tasks.jsonl"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("htex run ends within 120 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let results = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 13, "{results}");
    assert!(lines.iter().all(|l| l["outcome"] == "success"), "{results}");
    assert!(dir.join("htex-blocks/b1/submit.sh").exists());
    println!("the example ran in {:?}", started.elapsed());
    // Its blocks end with it: none left pending or running.
    let deadline = Instant::now() + Duration::from_secs(30);
    let live = || {
        let out = Command::new("squeue")
            .args(["-h", "-t", "PENDING,RUNNING,COMPLETING", "-o", "%j"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|name| name.starts_with("htex-example-"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    while !live().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(live(), Vec::<String>::new());
}
