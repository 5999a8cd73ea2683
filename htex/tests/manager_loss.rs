//! `kill -9` of a manager process during a 10,000-task run: its tasks are retried on the other
//! manager (or end with `ManagerLost` when out of retries), and every task ends exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{all_succeeded, interchange, manager, wait_for_managers, Running};
use htex_client::{Client, Task, TaskError};

/// An interchange with a 2 s heartbeat threshold and two managers of 2 workers each.
async fn cluster(name: &str) -> (Running, Running, Running, Client) {
    let ic = interchange(name, "127.0.0.1").await;
    let a = manager(&[], "127.0.0.1", &ic.manager_port, "a");
    let b = manager(&[], "127.0.0.1", &ic.manager_port, "b");
    let client = Client::connect(&ic.client_endpoint).await.unwrap();
    wait_for_managers(&client, &["a", "b"], Duration::from_secs(10)).await;
    (ic.process, a, b, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_manager_tasks_are_retried_elsewhere_and_end_once() {
    let (_interchange, mut a, _b, client) = cluster("kill-manager").await;
    // 1 ms sleeps keep both managers busy for a few seconds.
    let handles: Vec<_> = (0..10_000)
        .map(|_| client.submit(Task::call("sleep", &1u64).unwrap().max_retries(1)))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.0.kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    let retried: Vec<_> = all_succeeded(handles)
        .await
        .into_iter()
        .filter(|r| r.attempts > 1)
        .collect();
    assert!(
        retried
            .iter()
            .all(|r| r.slot.as_ref().unwrap().manager == "b"),
        "a retry ran on the dead manager"
    );
    let retried = retried.len();
    assert!(retried > 0, "no task was held by the killed manager");
    println!(
        "{retried} task(s) retried after the kill; all ended {:?} after it",
        killed_at.elapsed()
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.outstanding, 0);
    assert_eq!(client.stray_results(), 0, "a task got a second result");
    assert_eq!(
        status
            .managers
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_a_lost_manager_gives_manager_lost() {
    let (_interchange, mut a, _b, client) = cluster("lost-no-retry").await;
    let handles: Vec<_> = (0..2_000)
        .map(|_| client.submit(Task::call("sleep", &2u64).unwrap()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.0.kill().unwrap();
    let killed_at = Instant::now();
    let mut lost = 0;
    for handle in handles {
        let result = handle.await.unwrap();
        match result.outcome {
            Ok(_) => {}
            Err(TaskError::ManagerLost { manager }) => {
                assert_eq!(manager, "a");
                lost += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    let detected = killed_at.elapsed();
    assert!(lost > 0, "the killed manager held no task");
    assert!(
        detected < Duration::from_secs(10),
        "loss took {detected:?} to surface"
    );
    println!("{lost} task(s) ended ManagerLost; detection and the rest took {detected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_manager_without_losing_or_rerunning_a_task() {
    let (_interchange, mut a, _b, client) = cluster("sigterm-drain").await;
    // No retries allowed: a drained manager must not lose anything.
    let handles: Vec<_> = (0..200)
        .map(|_| client.submit(Task::call("sleep", &50u64).unwrap()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let mut on_a = 0;
    for handle in handles {
        let result = handle.await.unwrap();
        assert!(result.outcome.is_ok(), "{:?}", result.outcome);
        assert_eq!(result.attempts, 1, "a task ran twice");
        on_a += usize::from(result.slot.unwrap().manager == "a");
    }
    assert!(on_a > 0, "manager a ran nothing before the signal");
    let status = a.0.wait().unwrap();
    println!(
        "manager drained and exited ({status}) {:?} after SIGTERM; it ran {on_a} task(s)",
        signalled.elapsed()
    );
    assert!(status.success(), "{status}");
    wait_for_managers(&client, &["b"], Duration::from_secs(5)).await;
    assert_eq!(client.stray_results(), 0);
}
