//! Payloads of any size: a task too large for a frame ends `BadRequest` at once, at the client,
//! naming its size and the limit; everything else runs, whatever it was batched with; and past
//! the interchange's cap of held task bytes, submissions wait (`Busy`) and then run, none lost.
//! Frames are kept small (1 MiB) so that "too large" is cheap.

use std::time::Duration;

use futures::future::join_all;
use htex_client::{Client, Command, Task, TaskError, TaskOutput};
use htex_interchange::InterchangeConfig;
use htex_protocol::max_item_bytes;
use htex_tests::{test_worker, TestCluster};
use proptest::prelude::*;

const LIMIT: usize = 1 << 20;

fn small_frames() -> InterchangeConfig {
    InterchangeConfig {
        max_frame_bytes: LIMIT,
        max_queued_bytes: 256 * LIMIT,
        manager_window_bytes: 4 * LIMIT,
        max_peer_backlog_bytes: 4 * LIMIT,
        ..InterchangeConfig::default()
    }
}

async fn cluster(config: InterchangeConfig, prefetch: usize) -> TestCluster {
    TestCluster::start_with(test_worker!(), config, 1, 2, |m| {
        m.max_frame_bytes = LIMIT;
        m.prefetch = prefetch;
    })
    .await
}

fn payload(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|k| (k * 7 + seed) as u8).collect()
}

/// Runs echo tasks of these sizes, all submitted at once, and checks each one's single result:
/// its bytes back, or `BadRequest` naming its size and the limit for one that cannot fit a frame.
async fn run_sizes(client: &Client, sizes: &[usize]) {
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| payload(s, i))
        .collect();
    let handles: Vec<_> = payloads
        .iter()
        .map(|p| client.submit(Task::function("echo", p.clone())))
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(60), join_all(handles))
        .await
        .expect("every task ends within 60 s");
    let limit = max_item_bytes(LIMIT);
    for ((result, sent), size) in results.into_iter().zip(payloads).zip(sizes) {
        let result = result.expect("a result, not a client error");
        match result.outcome {
            Ok(TaskOutput::Value(back)) => {
                assert!(*size < limit, "a task of {size} bytes ran");
                assert!(back == sent, "a {size}-byte echo came back different");
            }
            Err(TaskError::BadRequest { message }) => {
                assert!(
                    *size > limit - 1024,
                    "a {size}-byte task was refused: {message}"
                );
                assert!(
                    message.contains("bytes encoded") && message.contains(&limit.to_string()),
                    "{message}"
                );
            }
            other => panic!("a {size}-byte task: {other:?}"),
        }
    }
    assert_eq!(client.outstanding(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_the_limit_is_a_bad_request_and_the_rest_of_its_batch_runs() {
    let cluster = cluster(small_frames(), 2).await;
    let client = cluster.client().await;
    // One over the limit; two of 40 % each (under it alone, over it together) and a small one,
    // submitted together so that they would share a frame.
    let started = std::time::Instant::now();
    run_sizes(&client, &[LIMIT + 10, LIMIT * 2 / 5, LIMIT * 2 / 5, 10]).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    client.close().await;
    cluster.stop().await;
}

/// Sizes from nothing to past the limit, mixed with small ones, away from the few hundred bytes
/// at the limit where the envelope decides.
fn size() -> impl Strategy<Value = usize> {
    let limit = max_item_bytes(LIMIT);
    prop_oneof![
        4 => 0..256usize,
        2 => 256..limit - 1024,
        1 => limit + 1024..LIMIT + LIMIT / 4,
    ]
}

#[test]
fn every_task_of_random_sizes_gets_exactly_one_result() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(cluster(small_frames(), 8));
    let client = rt.block_on(cluster.client());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(size(), 1..40), |sizes| {
            rt.block_on(run_sizes(&client, &sizes));
            Ok(())
        })
        .unwrap();
    assert_eq!(client.stray_results(), 0, "a task got two results");
    rt.block_on(client.close());
    rt.block_on(cluster.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_byte_cap_submissions_wait_and_then_all_run() {
    let config = InterchangeConfig {
        max_queued_bytes: 2 * LIMIT,
        ..small_frames()
    };
    let cluster = cluster(config, 2).await;
    let client = cluster.client().await;
    let manager = "test-0".to_string();
    let hold = client.command(Command::Hold {
        manager: manager.clone(),
    });
    hold.await.expect("held");
    // 24 tasks of 30 % of a frame: 7.2 frames' worth against a cap of 2.
    let sizes = vec![LIMIT * 3 / 10; 24];
    let run = {
        let client = client.clone();
        tokio::spawn(async move { run_sizes(&client, &sizes).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = client.status().await.unwrap();
    assert!(
        status.task_bytes as usize <= 2 * LIMIT + LIMIT,
        "the interchange holds {} bytes of tasks, over its cap and a frame",
        status.task_bytes
    );
    assert!(
        status.outstanding < 24,
        "all 24 were accepted while the cap was reached"
    );
    client
        .command(Command::Release { manager })
        .await
        .expect("released");
    run.await.unwrap();
    client.close().await;
    cluster.stop().await;
}
