//! The `htex` binary as users run it: `htex run` on the shipped example (also on blocks of a
//! local provider) and on bad task files, and a hand-started interchange and manager driven by `htex submit` and `htex status`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HTEX: &str = env!("CARGO_BIN_EXE_htex");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("htex-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn result_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn run_executes_the_shipped_example() {
    let dir = scratch("example");
    let results = dir.join("results.jsonl");
    let out = Command::new(HTEX)
        .args(["run", "--quiet", "--results"])
        .arg(&results)
        .arg(repo_file("examples/tasks.jsonl"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let example = std::fs::read_to_string(repo_file("examples/tasks.jsonl")).unwrap();
    let tasks = example
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    let lines = result_lines(&results);
    assert_eq!(lines.len(), tasks);
    assert!(lines.iter().all(|l| l["outcome"] == "success"), "{lines:?}");
    let hello = lines.iter().find(|l| l["id"] == "hello").unwrap();
    assert_eq!(hello["stdout"], "hello from htex\n");
    let echo = lines.iter().find(|l| l["id"] == "echo").unwrap();
    assert_eq!(echo["value"]["numbers"], serde_json::json!([1, 2, 3]));
    assert!(
        stdout.contains(&format!("{tasks} succeeded, 0 failed")),
        "{stdout}"
    );
}

/// The processes whose command line holds every one of `words`.
fn processes_with(words: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if words.iter().all(|w| argv.iter().any(|a| a == w)) {
            found.push(argv.join(" "));
        }
    }
    found
}

/// `htex run --quiet --config CONFIG --results RESULTS examples/tasks.jsonl`.
fn run_example_with_config(config: &Path, results: &Path) -> std::process::Output {
    Command::new(HTEX)
        .args(["run", "--quiet", "--config"])
        .arg(config)
        .arg("--results")
        .arg(results)
        .arg(repo_file("examples/tasks.jsonl"))
        .output()
        .unwrap()
}

#[test]
fn run_with_a_local_provider_config_runs_every_task_on_blocks_and_stops_them() {
    let dir = scratch("local-provider");
    let config = dir.join("local.toml");
    std::fs::write(
        &config,
        format!(
            "heartbeat_period = 0.5\n[provider]\nkind = \"local\"\nnodes_per_block = 2\n\
             run_dir = \"{}\"\nmanager_args = [\"--workers\", \"2\"]\n\
             [scaling]\nmax_blocks = 1\npoll_interval_s = 1\n",
            dir.join("blocks").display()
        ),
    )
    .unwrap();
    let results = dir.join("results.jsonl");
    let out = run_example_with_config(&config, &results);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = result_lines(&results);
    assert_eq!(lines.len(), 13, "{lines:?}");
    assert!(lines.iter().all(|l| l["outcome"] == "success"), "{lines:?}");
    // Both managers of the one block served: slots are named MANAGER/SLOT.
    let managers: std::collections::HashSet<String> = lines
        .iter()
        .map(|l| {
            l["slot"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        managers.iter().all(|m| m.starts_with("local-b1-")),
        "{managers:?}"
    );
    for i in 0..2 {
        assert!(dir.join(format!("blocks/b1/manager-{i}.stderr")).exists());
    }
    // The block's managers are gone once `htex run` returns.
    let port = stderr
        .split("managers tcp://")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace()).next())
        .and_then(|endpoint| endpoint.rsplit(':').next())
        .unwrap_or_else(|| panic!("no manager endpoint in: {stderr}"))
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_with(&["manager", "--port", &port]).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        processes_with(&["manager", "--port", &port]),
        Vec::<String>::new()
    );
}

#[test]
fn run_with_a_config_without_a_provider_is_refused_before_anything_runs() {
    let dir = scratch("no-provider");
    let config = dir.join("plain.toml");
    std::fs::write(&config, "heartbeat_period = 1\n").unwrap();
    let results = dir.join("results.jsonl");
    let out = run_example_with_config(&config, &results);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has no [provider] table"), "{stderr}");
    assert!(!results.exists());
}

#[test]
fn run_with_a_failing_task_exits_non_zero_and_reports_it() {
    let dir = scratch("failing");
    let tasks = dir.join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"id\": \"ok\", \"command\": [\"true\"]}\n{\"id\": \"bad\", \"command\": [\"false\"]}\n\
         {\"id\": \"nofn\", \"function\": \"nope\"}\n",
    )
    .unwrap();
    let results = dir.join("results.jsonl");
    let out = Command::new(HTEX)
        .args(["run", "--quiet", "--workers", "2", "--results"])
        .arg(&results)
        .arg(&tasks)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines = result_lines(&results);
    let by_id = |id: &str| lines.iter().find(|l| l["id"] == id).unwrap().clone();
    assert_eq!(by_id("ok")["outcome"], "success");
    assert_eq!(
        (
            by_id("bad")["error"].clone(),
            by_id("bad")["exit_code"].clone()
        ),
        ("Failed".into(), 1.into())
    );
    assert_eq!(by_id("nofn")["error"], "UnknownFunction");
}

#[test]
fn a_malformed_line_is_reported_by_number_and_nothing_runs() {
    let dir = scratch("malformed");
    let marker = dir.join("ran");
    let tasks = dir.join("tasks.jsonl");
    let touch = format!(
        "{{\"id\": \"touch\", \"command\": [\"touch\", \"{}\"]}}",
        marker.display()
    );
    std::fs::write(
        &tasks,
        format!("{touch}\n{{\"id\": \"x\", \"command\": \"not a list\"}}\n"),
    )
    .unwrap();
    let results = dir.join("results.jsonl");
    let out = Command::new(HTEX)
        .args(["run", "--results"])
        .arg(&results)
        .arg(&tasks)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2:"), "{stderr}");
    assert!(stderr.contains("nothing was run"), "{stderr}");
    assert!(!marker.exists() && !results.exists());
}

/// Kills the process when dropped, so a failing test leaves nothing behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} never appeared", path.display());
}

/// Reads a manager's stderr (piped) until it logs that it registered; returns the reader, which
/// the caller keeps so the manager's later log lines still have somewhere to go.
fn wait_until_registered(manager: &mut Running) -> BufReader<std::process::ChildStderr> {
    let mut log = BufReader::new(manager.0.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("manager registered") {
        line.clear();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "manager exited before registering"
        );
    }
    log
}

/// Starts `htex interchange` writing its addresses into `dir`; returns it and its ports
/// (client, manager).
fn start_interchange(dir: &Path) -> (Running, String, String) {
    let addresses = dir.join("addresses.json");
    let interchange = Running(
        Command::new(HTEX)
            .args(["interchange", "--addresses-file"])
            .arg(&addresses)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoints: serde_json::Value = serde_json::from_str(&wait_for_file(&addresses)).unwrap();
    let port = |key: &str| {
        endpoints[key]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    };
    (interchange, port("client"), port("manager"))
}

#[test]
fn hand_started_interchange_and_manager_serve_submit_and_status() {
    let dir = scratch("by-hand");
    let (interchange, client_port, manager_port) = start_interchange(&dir);
    let mut manager = Running(
        Command::new(HTEX)
            .args([
                "manager",
                "--port",
                &manager_port,
                "--workers",
                "2",
                "--manager-id",
                "by-hand",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _log = wait_until_registered(&mut manager);

    let status = Command::new(HTEX)
        .args(["status", "--json", "--port", &client_port])
        .output()
        .unwrap();
    assert!(status.status.success());
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["managers"][0]["id"], "by-hand");
    assert_eq!(report["managers"][0]["slots"].as_array().unwrap().len(), 2);

    let tasks = dir.join("tasks.jsonl");
    let lines: String = (0..50)
        .map(|i| format!("{{\"id\": \"{i}\", \"function\": \"echo\", \"args\": {i}}}\n"))
        .collect();
    std::fs::write(&tasks, lines).unwrap();
    let results = dir.join("results.jsonl");
    let submit = Command::new(HTEX)
        .args(["submit", "--quiet", "--port", &client_port, "--results"])
        .arg(&results)
        .arg(&tasks)
        .output()
        .unwrap();
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    let lines = result_lines(&results);
    assert_eq!(lines.len(), 50);
    assert!(lines
        .iter()
        .all(|l| l["value"].as_u64().map(|v| v.to_string()).as_deref() == l["id"].as_str()));

    let shutdown = Command::new(HTEX)
        .args(["shutdown", "--port", &client_port])
        .output()
        .unwrap();
    assert!(shutdown.status.success());
    let mut interchange = interchange;
    let deadline = Instant::now() + Duration::from_secs(10);
    while interchange.0.try_wait().unwrap().is_none() || manager.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "interchange or manager did not exit after shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `htex manager --mps` on a machine without a GPU: the simulated inventory, the stand-in
/// `nvidia-cuda-mps-control` found on PATH, a stale directory of a dead manager cleaned, and the
/// daemon quit when the manager gets SIGTERM.
#[test]
fn mps_manager_cleans_stale_daemons_and_quits_its_own_on_sigterm() {
    let dir = scratch("mps-manager");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(
        repo_file("tests/fixtures/nvidia-cuda-mps-control"),
        bin.join("nvidia-cuda-mps-control"),
    )
    .unwrap();
    let log = bin.join("mps-calls.log");
    // A directory left by a manager that died: the pid of a child already reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let root = htex_manager::mps::mps_root();
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let stale_dir = root.join(format!("{dead_pid}-0"));
    let stale = stale_dir.join("p");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("control"), "").unwrap();

    let (_interchange, client_port, manager_port) = start_interchange(&dir);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut manager = Running(
        Command::new(HTEX)
            .args([
                "manager",
                "--port",
                &manager_port,
                "--mps",
                "0:60,40",
                "--mps-mem",
                "0:10G,5G",
            ])
            .arg("--inventory")
            .arg(repo_file("manager/fixtures/inventory/h100.json"))
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _log = wait_until_registered(&mut manager);
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains(&format!("quit pipe={}", stale.display())),
        "stale daemon not quit: {calls}"
    );
    assert!(!stale.exists(), "stale directory not removed");
    assert_eq!(calls.matches("start ").count(), 1, "{calls}");

    let status = Command::new(HTEX)
        .args(["status", "--port", &client_port])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("mps") && status.contains("60%") && status.contains("10.0 GiB"),
        "{status}"
    );

    // SAFETY: signalling the manager process this test started.
    unsafe { libc::kill(manager.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while manager.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "manager ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("quit "),
        "daemon not quit: {calls}"
    );
}

/// Review #8: GPU flags on a node without NVML (this machine has no libnvidia-ml, and no
/// `--inventory` is given) used to fall back to CPU slots with one warning; now the manager
/// refuses to start, naming NVML's error, unless CPU slots are asked for instead.
#[test]
fn gpu_flags_without_nvml_are_an_error_unless_cpu_fallback_is_allowed() {
    if Path::new("/dev/nvidiactl").exists() {
        eprintln!("this node has an NVIDIA driver; the fallback is checked where it has none");
        return;
    }
    let started = Instant::now();
    let out = Command::new(HTEX)
        .args(["manager", "--port", "1", "--mps", "0:50,50"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--mps 0:50,50") && stderr.contains("NVML"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-cpu-fallback"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // With the fallback it plans CPU slots and goes on to connect (port 1: nothing listens).
    let mut fallback = Running(
        Command::new(HTEX)
            .args([
                "manager",
                "--port",
                "1",
                "--mps",
                "0:50,50",
                "--workers",
                "1",
            ])
            .args(["--allow-cpu-fallback", "--reconnect-timeout", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut log = BufReader::new(fallback.0.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("slot 0 cpu") {
        assert!(Instant::now() < deadline, "no CPU slot planned: {seen}");
        let mut line = String::new();
        if log.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen += &line;
    }
    assert!(seen.contains("slot 0 cpu"), "{seen}");
}
