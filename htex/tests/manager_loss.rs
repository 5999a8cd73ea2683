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

/// A manager whose stderr is a pipe nobody reads any more (its log collector died) still
/// drains and exits on SIGTERM, with its tasks done: a log line it cannot write is dropped.
/// (Each one used to panic the task that logged it, the signal handler's among them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_whose_stderr_reader_went_away_still_drains_on_sigterm() {
    use std::process::{Command, Stdio};
    let ic = interchange("stderr-gone", "127.0.0.1").await;
    let mut child = Command::new(common::HTEX)
        .args([
            "manager",
            "--port",
            &ic.manager_port,
            "--workers",
            "2",
            "--manager-id",
            "p",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = Client::connect(&ic.client_endpoint).await.unwrap();
    wait_for_managers(&client, &["p"], Duration::from_secs(10)).await;
    // The reader goes away: every write to the manager's stderr now fails (EPIPE).
    drop(child.stderr.take());
    let handles: Vec<_> = (0..20)
        .map(|_| client.submit(Task::call("sleep", &100u64).unwrap()))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let manager = Running(child);
    manager.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let mut manager = manager;
    let status = loop {
        if let Some(status) = manager.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "the manager did not exit within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    println!("exited {:?} after SIGTERM", signalled.elapsed());
    // The tasks it ran finished; what it had not started went back to the interchange (no
    // other manager: they wait there). Nothing was lost.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut done = 0;
    for handle in handles {
        if let Some(result) = futures::FutureExt::now_or_never(handle) {
            assert!(result.unwrap().outcome.is_ok());
            done += 1;
        }
    }
    let queued = client.status().await.unwrap().queued as usize;
    assert!(
        done >= 2,
        "the tasks running at the signal finished: {done}"
    );
    assert_eq!(done + queued, 20, "{done} done, {queued} queued again");
}
