//! The two payload reproductions, as a new user runs them: `htex run` with a task of 70 MiB of
//! arguments, and with two tasks of 40 MiB (each under the 64 MiB frame limit, over it together)
//! beside a small one. Both end within seconds, with one result line per task.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const HTEX: &str = env!("CARGO_BIN_EXE_htex");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("htex-payloads-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A task line whose `args` is a string of `mib` MiB.
fn big_line(id: &str, mib: usize) -> String {
    format!(
        "{{\"id\": \"{id}\", \"function\": \"echo\", \"args\": \"{}\"}}\n",
        "x".repeat(mib << 20)
    )
}

/// Runs `htex run` on `tasks`; returns each result line as (id, outcome, error kind, message).
fn run(dir: &Path, tasks: &str) -> Vec<(String, String, String, String)> {
    let file = dir.join("tasks.jsonl");
    std::fs::write(&file, tasks).unwrap();
    let results = dir.join("results.jsonl");
    let started = Instant::now();
    let mut child = Command::new(HTEX)
        .args(["run", "--quiet", "--workers", "2", "--results"])
        .arg(&results)
        .arg(&file)
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("htex run did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.code().is_some(), "htex run was killed: {status}");
    let text = std::fs::read_to_string(&results).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (
                field("id"),
                field("outcome"),
                field("error"),
                field("message"),
            )
        })
        .collect()
}

#[test]
fn a_task_over_the_frame_limit_ends_bad_request_and_htex_run_ends() {
    let dir = scratch("70m");
    let lines = run(&dir, &big_line("big", 70));
    let [(id, outcome, error, message)] = &lines[..] else {
        panic!("{} result lines", lines.len())
    };
    assert_eq!(
        (id.as_str(), outcome.as_str(), error.as_str()),
        ("big", "error", "BadRequest")
    );
    assert!(
        message.contains("bytes encoded, over the limit of"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn two_tasks_too_big_to_share_a_frame_and_a_small_one_all_run() {
    let dir = scratch("2x40m");
    let tasks =
        big_line("a", 40) + &big_line("b", 40) + "{\"id\": \"small\", \"function\": \"noop\"}\n";
    let mut lines = run(&dir, &tasks);
    lines.sort();
    let got: Vec<(&str, &str)> = lines.iter().map(|l| (l.0.as_str(), l.1.as_str())).collect();
    assert_eq!(
        got,
        [("a", "success"), ("b", "success"), ("small", "success")],
        "{lines:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
