//! The core acceptance run: one interchange, 2 managers × 4 worker processes, 20,000 mixed tasks
//! submitted concurrently by 2 clients; every task gets exactly one result, with the right
//! content, at the client that submitted it.

use std::time::Instant;

use futures::future::join_all;
use htex_client::{Client, Task, TaskOutput};
use htex_tests::{test_worker, TestCluster};

const TASKS_PER_CLIENT: usize = 10_000;

/// What a task is and what its result must be.
enum Expect {
    Nil,
    Bytes(Vec<u8>),
    Stdout(String),
}

/// Task `i` of client `c`: mostly noops, echoes of 0 B to 1 MiB, and some commands.
fn task(c: usize, i: usize) -> (Task, Expect) {
    match i % 20 {
        0 => {
            let line = format!("client {c} task {i}");
            (
                Task::command(["echo", line.as_str()]),
                Expect::Stdout(format!("{line}\n")),
            )
        }
        1..=7 => {
            let size = match i % 1000 {
                1 => 1 << 20,
                2..=20 => 100 << 10,
                21..=200 => 10 << 10,
                _ => i % 300,
            };
            let payload: Vec<u8> = (0..size).map(|k| (k * 31 + i + c) as u8).collect();
            (
                Task::function("echo", payload.clone()),
                Expect::Bytes(payload),
            )
        }
        _ => (Task::function("noop", Vec::new()), Expect::Nil),
    }
}

async fn run_client(client: Client, c: usize) -> usize {
    let (tasks, expected): (Vec<_>, Vec<_>) = (0..TASKS_PER_CLIENT).map(|i| task(c, i)).unzip();
    let handles = client.submit_batch(tasks);
    let ids: Vec<_> = handles.iter().map(|h| h.id()).collect();
    let results = join_all(handles).await;
    for ((id, result), expect) in ids.iter().zip(results).zip(expected) {
        let result = result.unwrap_or_else(|e| panic!("client {c} task {id}: {e}"));
        assert_eq!(result.id, *id, "result routed to the wrong handle");
        let output = result
            .outcome
            .unwrap_or_else(|e| panic!("client {c} task {id}: {e}"));
        match (expect, output) {
            (Expect::Nil, TaskOutput::Value(v)) => assert_eq!(v, [0xc0]),
            (Expect::Bytes(want), TaskOutput::Value(v)) => {
                assert!(v == want, "task {id}: wrong echo")
            }
            (Expect::Stdout(want), TaskOutput::Command(out)) => {
                assert_eq!(String::from_utf8_lossy(&out.stdout), want)
            }
            (_, other) => panic!("task {id}: unexpected output {other:?}"),
        }
    }
    assert_eq!(client.outstanding(), 0);
    assert_eq!(client.stray_results(), 0, "a task got a second result");
    TASKS_PER_CLIENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_mixed_tasks_from_two_clients() {
    let cluster = TestCluster::start(test_worker!(), 2, 4).await;
    let a = cluster.client().await;
    let b = cluster.client().await;
    let started = Instant::now();
    let (done_a, done_b) = tokio::join!(run_client(a.clone(), 0), run_client(b.clone(), 1));
    let elapsed = started.elapsed();
    let total = done_a + done_b;
    println!(
        "{total} mixed tasks in {:.2} s: {:.0} tasks/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    // Nothing is left anywhere.
    let status = a.status().await.unwrap();
    assert_eq!((status.outstanding, status.queued), (0, 0));
    assert_eq!(status.managers.len(), 2);
    assert!(status
        .managers
        .iter()
        .all(|m| m.tasks == 0 && m.slots.len() == 4));
    a.close().await;
    b.close().await;
    cluster.stop().await;
}
