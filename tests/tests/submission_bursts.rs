//! Submissions that trickle in while the interchange's `Accepted` replies flow back: every task
//! is sent, however its arrival interleaves with those replies on the client's send queue (a
//! task packed just before a reply was once left unsent until the next task came).

use std::time::Duration;

use futures::future::join_all;
use htex_client::Task;
use htex_tests::{test_worker, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_of_many_small_bursts_is_sent_and_answered() {
    let cluster = TestCluster::start(test_worker!(), 1, 2).await;
    let client = cluster.client().await;
    for round in 0..400 {
        let handles: Vec<_> = (0..1 + round % 3)
            .map(|_| client.submit(Task::function("noop", vec![])))
            .collect();
        // Each burst must be answered on its own: nothing behind it would push it out.
        let answered = tokio::time::timeout(Duration::from_secs(5), join_all(handles)).await;
        let results = answered.unwrap_or_else(|_| panic!("burst {round} was never answered"));
        assert!(results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.outcome.is_ok())));
    }
    client.close().await;
    cluster.stop().await;
}
