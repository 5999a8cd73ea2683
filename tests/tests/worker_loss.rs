//! `kill -9` of a worker process mid-task: that task ends with `WorkerLost`, the worker is
//! restarted, and later tasks run.

use std::collections::HashSet;
use std::time::Duration;

use htex_client::{Task, TaskError};
use htex_tests::{eventually, test_worker, worker_pids, TestCluster};

/// The pid a `pid_then_sleep` task wrote (whole: the worker renames it into place).
fn read_pid(pid_file: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Waits for a `pid_then_sleep` task to write its worker's pid, then `kill -9`s that worker.
async fn kill_worker_once_started(pid_file: &std::path::Path) -> i32 {
    assert!(
        eventually(Duration::from_secs(10), || read_pid(pid_file).is_some()).await,
        "the long task never started"
    );
    let pid = read_pid(pid_file).unwrap();
    // SAFETY: the pid belongs to a worker process this test's manager started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_loses_its_task_and_is_restarted() {
    let cluster = TestCluster::start(test_worker!(), 1, 2).await;
    let client = cluster.client().await;
    let before = worker_pids(&client, 2).await;
    assert_eq!(before.len(), 2, "two workers serve: {before:?}");
    let dir = std::env::temp_dir().join(format!("htex-worker-loss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let pid_path = pid_file.to_string_lossy().into_owned();

    // Fill both slots with a noop stream and one long task that names its worker.
    let victim = client.submit(Task::call("pid_then_sleep", &(pid_path, 60_000u64)).unwrap());
    let pid = kill_worker_once_started(&pid_file).await;

    let result = tokio::time::timeout(Duration::from_secs(5), victim)
        .await
        .expect("WorkerLost arrives at once, not after a heartbeat")
        .unwrap();
    match result.outcome {
        Err(TaskError::WorkerLost { detail }) => {
            assert!(
                detail.contains(&pid.to_string()) && detail.contains("signal 9"),
                "{detail}"
            )
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }

    // Later tasks run, and both slots serve again: the survivor and a new process.
    assert!(before.contains(&(pid as u32)));
    let survivor = *before.iter().find(|&&p| p != pid as u32).unwrap();
    let mut after = HashSet::new();
    for _ in 0..20 {
        after = worker_pids(&client, 2).await;
        if after.len() == 2 {
            break;
        }
    }
    assert_eq!(after.len(), 2, "both slots serve again: {after:?}");
    assert!(!after.contains(&(pid as u32)), "the killed worker answered");
    assert!(
        after.contains(&survivor),
        "the other worker was restarted too: {after:?}"
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.outstanding, 0);
    std::fs::remove_dir_all(&dir).ok();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeatedly_killed_workers_lose_only_their_own_tasks() {
    let cluster = TestCluster::start(test_worker!(), 1, 2).await;
    let client = cluster.client().await;
    for round in 0..3 {
        let dir = std::env::temp_dir().join(format!("htex-kill-{}-{round}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        let args = (pid_file.to_string_lossy().into_owned(), 60_000u64);
        let victim = client.submit(Task::call("pid_then_sleep", &args).unwrap());
        let bystanders: Vec<_> = (0..50)
            .map(|i| client.call::<_, i64>("add", &(i, 1)).unwrap())
            .collect();
        kill_worker_once_started(&pid_file).await;
        let lost = victim.await.unwrap();
        assert!(
            matches!(lost.outcome, Err(TaskError::WorkerLost { .. })),
            "{lost:?}"
        );
        for (i, handle) in bystanders.into_iter().enumerate() {
            assert_eq!(handle.await.unwrap(), i as i64 + 1);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
    cluster.stop().await;
}
