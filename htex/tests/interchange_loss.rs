//! `kill -9` of the interchange: clients' outstanding handles fail with `InterchangeLost` within
//! their heartbeat threshold (never hang), managers keep running and register again with an
//! interchange restarted on the same ports, and work goes on.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, htex, manager, wait_for_managers};
use htex_client::{Client, ClientConfig, ClientError, Task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_interchange_fails_handles_and_managers_come_back_to_its_successor() {
    let (client_port, manager_port) = (free_port().to_string(), free_port().to_string());
    let args = [
        "interchange",
        "--client-port",
        &client_port,
        "--manager-port",
        &manager_port,
    ];
    let ic = htex(&args);
    let endpoint = format!("tcp://127.0.0.1:{client_port}");
    let _a = manager(&[], "127.0.0.1", &manager_port, "a");
    let threshold = Duration::from_secs(3);
    let config = ClientConfig {
        heartbeat_threshold: threshold,
        ..ClientConfig::default()
    };
    let mut client = None;
    for _ in 0..100 {
        match Client::connect_with(&endpoint, config.clone()).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let client = client.expect("the interchange answers");
    wait_for_managers(&client, &["a"], Duration::from_secs(10)).await;

    let handles: Vec<_> = (0..10)
        .map(|_| client.submit(Task::command(["sleep", "30"])))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ic = ic;
    ic.0.kill().unwrap();
    let killed = Instant::now();
    for handle in handles {
        match tokio::time::timeout(Duration::from_secs(15), handle)
            .await
            .expect("no handle hangs")
        {
            Err(ClientError::InterchangeLost { .. }) => {}
            other => panic!("expected InterchangeLost, got {other:?}"),
        }
    }
    let failed_after = killed.elapsed();
    println!(
        "outstanding handles failed {failed_after:?} after the kill (threshold {threshold:?})"
    );
    assert!(
        failed_after < threshold + Duration::from_secs(2),
        "{failed_after:?}"
    );
    // Later submissions on the dead connection fail at once too.
    assert!(matches!(
        client.submit(Task::command(["true"])).await,
        Err(ClientError::InterchangeLost { .. })
    ));

    // A new interchange on the same ports: the manager registers with it and serves.
    let _successor = htex(&args);
    let mut fresh = None;
    for _ in 0..100 {
        if let Ok(c) = Client::connect(&endpoint).await {
            fresh = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = fresh.expect("the successor answers");
    let back = wait_for_managers(&fresh, &["a"], Duration::from_secs(30)).await;
    println!("the manager registered with the new interchange after {back:?}");
    // Its slots are free at once: the tasks of the dead interchange were stopped, not left to run.
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        fresh.submit(Task::command(["echo", "again"])),
    )
    .await
    .expect("a free slot")
    .unwrap();
    assert!(result.outcome.is_ok(), "{:?}", result.outcome);
}
