//! Cancellation of queued and running tasks, and the blocking client facade.

use std::time::{Duration, Instant};

use htex_client::{Task, TaskError, TaskOutput};
use htex_tests::{test_worker, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_running_tasks_can_be_cancelled() {
    let cluster =
        TestCluster::start_with(test_worker!(), Default::default(), 1, 1, |c| c.prefetch = 0).await;
    let client = cluster.client().await;
    // One slot, no prefetch: the first sleep runs, the second waits in the interchange's queue.
    let running = client.submit(Task::command(["sleep", "30"]));
    let queued = client.submit(Task::command(["sleep", "30"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    client.cancel(queued.id());
    client.cancel(running.id());
    for handle in [queued, running] {
        match handle.await.unwrap().outcome {
            Err(TaskError::Cancelled { reason }) => assert!(reason.contains("client"), "{reason}"),
            other => panic!("expected Cancelled, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancel waited for the sleep"
    );
    // The slot's worker was replaced and serves the next task.
    let next = client
        .submit(Task::command(["echo", "after"]))
        .await
        .unwrap();
    assert!(
        matches!(next.outcome, Ok(TaskOutput::Command(_))),
        "{next:?}"
    );
    // Cancelling a task that already finished changes nothing.
    client.cancel(next.id);
    assert_eq!(client.status().await.unwrap().outstanding, 0);
    cluster.stop().await;
}

#[test]
fn blocking_client_submits_and_waits() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = runtime.block_on(TestCluster::start(test_worker!(), 1, 2));
    let endpoint = cluster.client_endpoint().to_string();
    let sum = std::thread::spawn(move || {
        let client = htex_client::blocking::Client::connect(&endpoint).unwrap();
        let handles = client.submit_batch((0..10).map(|i| Task::call("add", &(i, 100)).unwrap()));
        let values: Vec<i64> = handles
            .into_iter()
            .map(|h| htex_client::decode_value(&h.wait().unwrap()).unwrap())
            .collect();
        let typed: i64 = client.call("add", &(20, 22)).unwrap();
        assert_eq!(typed, 42);
        assert_eq!(client.status().unwrap().managers.len(), 1);
        client.close();
        values.iter().sum::<i64>()
    })
    .join()
    .unwrap();
    assert_eq!(sum, (0..10).map(|i| i + 100).sum::<i64>());
    runtime.block_on(cluster.stop());
}
