//! Tasks queued in a worker's pipe behind the one it runs (the manager does so while a slot's
//! tasks run short): a worker that dies gives them back to run elsewhere, a timeout counts from
//! a task's start, not from when it was queued, and a queued task can be cancelled at once.

use std::time::{Duration, Instant};

use htex_client::{Client, Task, TaskError, TaskOutput};
use htex_tests::{eventually, test_worker, TestCluster};

/// One worker with room for 16 prefetched tasks, warmed with short tasks so that the manager
/// queues the next ones in its pipe.
async fn one_short_worker() -> (TestCluster, Client) {
    let cluster = TestCluster::start_with(test_worker!(), Default::default(), 1, 1, |c| {
        c.prefetch = 16;
        c.pipeline_depth = 8;
    })
    .await;
    let client = cluster.client().await;
    let warm: Vec<_> = (0..30)
        .map(|i| client.call::<_, i64>("add", &(i, 1)).unwrap())
        .collect();
    for (i, handle) in warm.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i as i64 + 1);
    }
    (cluster, client)
}

fn adds(client: &Client, n: i64) -> Vec<htex_client::TypedHandle<i64>> {
    (0..n)
        .map(|i| client.call::<_, i64>("add", &(i, 100)).unwrap())
        .collect()
}

async fn expect_sums(handles: Vec<htex_client::TypedHandle<i64>>) {
    for (i, handle) in handles.into_iter().enumerate() {
        let value = tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("every queued task ends")
            .expect("and succeeds");
        assert_eq!(value, i as i64 + 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_queued_behind_a_task_whose_worker_dies_run_on_its_successor() {
    let (cluster, client) = one_short_worker().await;
    let dir = std::env::temp_dir().join(format!("htex-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let args = (pid_file.to_string_lossy().into_owned(), 60_000u64);
    let victim = client.submit(Task::call("pid_then_sleep", &args).unwrap());
    let behind = adds(&client, 12);
    assert!(
        eventually(Duration::from_secs(10), || pid_file.exists()).await,
        "the long task never started"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: the pid is the test cluster's worker process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    match victim.await.unwrap().outcome {
        Err(TaskError::WorkerLost { detail }) => assert!(detail.contains(&pid.to_string())),
        other => panic!("expected WorkerLost, got {other:?}"),
    }
    // The tasks behind it never started: they run, once each, on the restarted worker.
    expect_sums(behind).await;
    assert_eq!(client.status().await.unwrap().outstanding, 0);
    assert_eq!(client.stray_results(), 0, "a task was answered twice");
    std::fs::remove_dir_all(&dir).ok();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_times_out_from_its_start_and_takes_no_other_task_with_it() {
    let (cluster, client) = one_short_worker().await;
    // 400 ms ahead of a 150 ms task with a 300 ms timeout: it must succeed.
    let ahead = client.submit(Task::call("sleep", &400u64).unwrap());
    let patient = client.submit(
        Task::call("sleep", &150u64)
            .unwrap()
            .timeout(Duration::from_millis(300)),
    );
    // Then one that overruns its own timeout, with tasks queued behind it.
    let overrun = client.submit(
        Task::call("sleep", &5_000u64)
            .unwrap()
            .timeout(Duration::from_millis(200)),
    );
    let behind = adds(&client, 6);

    assert!(ahead.await.unwrap().outcome.is_ok());
    let patient = patient.await.unwrap();
    assert!(
        matches!(patient.outcome, Ok(TaskOutput::Value(_))),
        "a timeout counted from the queueing: {patient:?}"
    );
    let started = Instant::now();
    match overrun.await.unwrap().outcome {
        Err(TaskError::Timeout { after_ms }) => assert_eq!(after_ms, 200),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    expect_sums(behind).await;
    assert_eq!(client.status().await.unwrap().outstanding, 0);
    assert_eq!(client.stray_results(), 0);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_is_cancelled_at_once_and_answered_once() {
    let (cluster, client) = one_short_worker().await;
    let ahead = client.submit(Task::call("sleep", &1_000u64).unwrap());
    let doomed = client.submit(Task::call("add", &(1i64, 2i64)).unwrap());
    let behind = adds(&client, 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    client.cancel(doomed.id());
    match doomed.await.unwrap().outcome {
        Err(TaskError::Cancelled { .. }) => {}
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(
        asked.elapsed() < Duration::from_millis(600),
        "the cancel waited for the task ahead"
    );
    assert!(ahead.await.unwrap().outcome.is_ok());
    expect_sums(behind).await;
    assert_eq!(client.status().await.unwrap().outstanding, 0);
    assert_eq!(
        client.stray_results(),
        0,
        "the cancelled task was answered twice"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_running_task_sends_the_tasks_behind_it_to_the_next_worker() {
    let (cluster, client) = one_short_worker().await;
    let running = client.submit(Task::call("sleep", &30_000u64).unwrap());
    let behind = adds(&client, 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.cancel(running.id());
    match tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the cancel kills the worker at once")
        .unwrap()
        .outcome
    {
        Err(TaskError::Cancelled { .. }) => {}
        other => panic!("expected Cancelled, got {other:?}"),
    }
    expect_sums(behind).await;
    assert_eq!(client.status().await.unwrap().outstanding, 0);
    assert_eq!(client.stray_results(), 0);
    cluster.stop().await;
}
