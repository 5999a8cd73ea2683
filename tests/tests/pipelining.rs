//! Tasks queued in a worker's pipe behind the one it runs (the manager does so while a slot's
//! tasks run short): a worker that dies gives them back to run elsewhere, a timeout counts from
//! a task's start, not from when it was queued, and a queued task can be cancelled at once.
//! Each test checks that its tasks really waited in the pipe (`pipe_probe` reads the bytes
//! waiting in its worker's stdin), and a control with pipelining off shows that none do then.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use htex_client::{Client, Task, TaskError, TaskHandle, TaskOutput};
use htex_tests::{eventually, test_worker, TestCluster};

/// One worker with room for 16 prefetched tasks, warmed with short tasks so that the manager
/// queues the next ones in its pipe.
async fn one_short_worker() -> (TestCluster, Client) {
    one_short_worker_with_depth(8).await
}

async fn one_short_worker_with_depth(depth: usize) -> (TestCluster, Client) {
    let cluster = TestCluster::start_with(test_worker!(), Default::default(), 1, 1, |c| {
        c.prefetch = 16;
        c.pipeline_depth = depth;
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

/// A scratch file for one test's probe.
fn probe_file(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("htex-pipeline-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("probe")
}

/// What a `pipe_probe` task last wrote: its worker's pid and the most bytes it saw waiting in
/// its worker's stdin pipe. (The worker writes the file whole, by renaming.)
fn read_probe(path: &Path) -> Option<(i32, i64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let fields: Vec<i64> = text
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    match fields[..] {
        [pid, _now, most] => Some((pid as i32, most)),
        _ => None,
    }
}

/// Submits a `pipe_probe` of `ms` and waits until it runs, so that whatever is submitted next
/// reaches its worker's pipe only after the worker took the probe out of it.
async fn start_probe(client: &Client, path: &Path, ms: u64) -> (TaskHandle, i32) {
    let args = (path.to_string_lossy().into_owned(), ms);
    let handle = client.submit(Task::call("pipe_probe", &args).unwrap());
    assert!(
        eventually(Duration::from_secs(10), || read_probe(path).is_some()).await,
        "the probe never started"
    );
    let (pid, _) = read_probe(path).unwrap();
    (handle, pid)
}

/// Waits until the probe saw tasks waiting in its worker's pipe.
async fn assert_tasks_waited_in_the_pipe(path: &Path) {
    let waited = || read_probe(path).is_some_and(|(_, most)| most > 0);
    assert!(
        eventually(Duration::from_secs(10), waited).await,
        "no task ever waited in the busy worker's pipe: {:?}",
        read_probe(path)
    );
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
    let probe = probe_file("dies");
    let (victim, pid) = start_probe(&client, &probe, 60_000).await;
    let behind = adds(&client, 12);
    assert_tasks_waited_in_the_pipe(&probe).await;
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
    std::fs::remove_dir_all(probe.parent().unwrap()).ok();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_times_out_from_its_start_and_takes_no_other_task_with_it() {
    let (cluster, client) = one_short_worker().await;
    let probe = probe_file("timeout");
    // 1 s ahead of a 150 ms task with a 300 ms timeout: it must succeed.
    let (ahead, _) = start_probe(&client, &probe, 1_000).await;
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
    assert_tasks_waited_in_the_pipe(&probe).await;

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
    std::fs::remove_dir_all(probe.parent().unwrap()).ok();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_is_cancelled_at_once_and_answered_once() {
    let (cluster, client) = one_short_worker().await;
    let probe = probe_file("cancel-queued");
    let (ahead, _) = start_probe(&client, &probe, 1_000).await;
    let doomed = client.submit(Task::call("add", &(1i64, 2i64)).unwrap());
    let behind = adds(&client, 4);
    // The doomed task and those behind it (5, with room for 8) wait in the pipe.
    assert_tasks_waited_in_the_pipe(&probe).await;
    let asked = Instant::now();
    client.cancel(doomed.id());
    match doomed.await.unwrap().outcome {
        Err(TaskError::Cancelled { .. }) => {}
        other => panic!("expected Cancelled, got {other:?}"),
    }
    // The task ahead runs for a second; a 2 s bound leaves room for a loaded machine.
    assert!(
        asked.elapsed() < Duration::from_secs(2),
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
    std::fs::remove_dir_all(probe.parent().unwrap()).ok();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_running_task_sends_the_tasks_behind_it_to_the_next_worker() {
    let (cluster, client) = one_short_worker().await;
    let probe = probe_file("cancel-running");
    let (running, _) = start_probe(&client, &probe, 30_000).await;
    let behind = adds(&client, 8);
    assert_tasks_waited_in_the_pipe(&probe).await;
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
    std::fs::remove_dir_all(probe.parent().unwrap()).ok();
    cluster.stop().await;
}

/// The control: with pipelining off, the same tasks wait in the manager, never in the pipe of
/// the busy worker (so the checks above can tell the two apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pipelining_off_no_task_waits_in_a_busy_workers_pipe() {
    let (cluster, client) = one_short_worker_with_depth(0).await;
    let probe = probe_file("off");
    let (ahead, _) = start_probe(&client, &probe, 1_000).await;
    let behind = adds(&client, 8);
    let most = ahead.await.unwrap();
    let most: i64 = htex_client::decode_value(&most).unwrap();
    assert_eq!(most, 0, "a task waited in the pipe with pipelining off");
    assert_eq!(read_probe(&probe).map(|(_, most)| most), Some(0));
    expect_sums(behind).await;
    std::fs::remove_dir_all(probe.parent().unwrap()).ok();
    cluster.stop().await;
}
