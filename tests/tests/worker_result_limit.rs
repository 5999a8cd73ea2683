//! Results bounded in bytes: a task whose result is too large for a frame ends with
//! `ResultTooLarge`, alone; the worker that ran it serves on. Command output is cut to fit
//! instead, and says so.

use htex_client::{Task, TaskError, TaskOutput};
use htex_protocol::max_item_bytes;
use htex_tests::{test_worker, TestCluster};

const FRAME_LIMIT: usize = 256 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_ends_its_task_only_and_the_worker_serves_on() {
    let cluster = TestCluster::start_with(test_worker!(), Default::default(), 1, 1, |c| {
        c.max_frame_bytes = FRAME_LIMIT;
    })
    .await;
    let client = cluster.client().await;
    let before: u32 = client.call("pid", &()).unwrap().await.unwrap();

    let big = client
        .submit(Task::call("bytes", &300_000usize).unwrap())
        .await
        .unwrap();
    match big.outcome {
        Err(TaskError::ResultTooLarge { size, limit }) => {
            assert!(size > 300_000, "{size}");
            assert_eq!(limit, max_item_bytes(FRAME_LIMIT) as u64);
        }
        other => panic!("expected ResultTooLarge, got {other:?}"),
    }
    let fits = client
        .submit(Task::call("bytes", &100_000usize).unwrap())
        .await
        .unwrap();
    assert!(fits.outcome.is_ok(), "{fits:?}");
    let after: u32 = client.call("pid", &()).unwrap().await.unwrap();
    assert_eq!(after, before, "the worker was replaced");

    // A command printing more than fits is cut to the bound and flagged, not refused.
    let loud = client
        .submit(Task::command(["head", "-c", "2000000", "/dev/zero"]))
        .await
        .unwrap();
    let Ok(TaskOutput::Command(out)) = loud.outcome else {
        panic!("{loud:?}")
    };
    assert!(out.stdout_truncated, "not flagged as cut");
    assert!(
        !out.stdout.is_empty() && out.stdout.len() < max_item_bytes(FRAME_LIMIT) / 2,
        "{} bytes kept",
        out.stdout.len()
    );
    let last: u32 = client.call("pid", &()).unwrap().await.unwrap();
    assert_eq!(last, before);
    cluster.stop().await;
}
