//! The command channel: status, hold/release and drain of a manager.

use std::time::Duration;

use htex_client::{Command, ManagerStatus, Task};
use htex_protocol::ManagerState;
use htex_tests::{test_worker, TestCluster};

fn by_id<'a>(managers: &'a [ManagerStatus], id: &str) -> &'a ManagerStatus {
    managers
        .iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("no manager {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_hold_and_drain() {
    let cluster = TestCluster::start(test_worker!(), 2, 2).await;
    let client = cluster.client().await;

    let status = client.status().await.unwrap();
    assert_eq!(status.managers.len(), 2);
    let m0 = by_id(&status.managers, "test-0");
    assert_eq!(
        (m0.slots.len(), m0.capacity, m0.state),
        (2, 4, ManagerState::Active)
    );

    // Held: test-0 gets nothing new; every task runs on test-1.
    client
        .command(Command::Hold {
            manager: "test-0".into(),
        })
        .await
        .unwrap();
    let results =
        futures::future::join_all((0..40).map(|_| client.submit(Task::function("noop", vec![]))))
            .await;
    for r in results {
        assert_eq!(r.unwrap().slot.unwrap().manager, "test-1");
    }
    client
        .command(Command::Release {
            manager: "test-0".into(),
        })
        .await
        .unwrap();
    let unknown = client
        .command(Command::Drain {
            manager: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("test-0"), "{unknown}");

    // Queue sleeps on both, then drain test-0: what it holds still finishes, then it leaves.
    let sleeps: Vec<_> = (0..8)
        .map(|_| client.call::<_, ()>("sleep", &200u64).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = client.status().await.unwrap();
    assert!(status.outstanding > 0);
    client
        .command(Command::Drain {
            manager: "test-0".into(),
        })
        .await
        .unwrap();
    for handle in sleeps {
        handle.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let managers = loop {
        let managers = client.status().await.unwrap().managers;
        if managers.len() == 1 || tokio::time::Instant::now() > deadline {
            break managers;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        managers.len(),
        1,
        "drained manager still listed: {managers:?}"
    );
    assert_eq!(managers[0].id, "test-1");
    cluster.stop().await;
}
