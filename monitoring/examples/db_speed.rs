//! How fast the monitoring database takes task events: `cargo run --release -p htex-monitoring
//! --example db_speed [TASKS]` writes TASKS submitted + ended events and prints µs per task.

use std::sync::Arc;
use std::time::Instant;

use htex_monitoring::event::{Attempt, AttemptOutcome, Ended, Event, Submitted, TaskKindName};
use htex_monitoring::{Database, RunInfo};

fn main() {
    let tasks: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("htex-db-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("speed.db");
    let run = RunInfo {
        started_us: 1,
        interchange: "tcp://127.0.0.1:1".into(),
        host: "h".into(),
        pid: 1,
        htex_version: "x".into(),
    };
    let mut db = Database::open(&path, &run).unwrap();
    let label: Arc<str> = "noop".into();
    let now = htex_protocol::now_us();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(8192);
    for task in 1..=tasks {
        batch.push(Event::Submitted(Submitted {
            task,
            client: 1,
            client_task: task,
            kind: TaskKindName::Function,
            label: label.clone(),
            priority: 0,
            submitted_us: now,
            queued_us: now,
            held: false,
            restored: false,
        }));
        batch.push(Event::Ended(Ended {
            task,
            ended_us: now + 50,
            error: None,
            attempts: 1,
            last: Some(Attempt {
                attempt: 1,
                manager: 1,
                slot: Some((task % 2) as u32),
                dispatched_us: now + 10,
                started_us: now + 20,
                finished_us: now + 30,
                ended_us: now + 50,
                outcome: AttemptOutcome::Completed,
                error_kind: None,
            }),
            queue_us: 10,
        }));
        if batch.len() >= 8192 {
            db.apply(&batch).unwrap();
            batch.clear();
        }
    }
    db.apply(&batch).unwrap();
    db.finish(now, 0).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).unwrap().len();
    println!(
        "{tasks} tasks in {seconds:.2} s: {:.2} µs per task, {:.0} tasks/s, {:.0} bytes per task",
        seconds * 1e6 / tasks as f64,
        tasks as f64 / seconds,
        bytes as f64 / tasks as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
