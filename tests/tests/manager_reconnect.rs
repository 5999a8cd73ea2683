//! A manager whose link to the interchange is cut and comes back, through a TCP proxy the test
//! controls: the interchange and the manager live on, and neither restarts. The manager keeps
//! running what it holds, registers again as the same instance naming it, and its results,
//! finished during the outage or after, count (each task ran once). A backlog the interchange
//! sends right behind `Registered` is kept (review #4 and #11).

use std::sync::Arc;
use std::time::Duration;

use htex_client::{Client, ClientConfig, Task};
use htex_interchange::{Interchange, InterchangeConfig};
use htex_manager::{Manager, ManagerConfig};
use htex_tests::test_worker;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards TCP connections to `target` while up; cutting it drops every connection, and new
/// ones are closed at once until it is restored.
struct Proxy {
    endpoint: String,
    up: Arc<watch::Sender<bool>>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let target = target.trim_start_matches("tcp://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
        let up = Arc::new(watch::channel(true).0);
        let watching = up.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*watching.borrow() {
                    continue;
                }
                let mut cut = watching.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut in_read, &mut out_write) => {}
                        _ = tokio::io::copy(&mut out_read, &mut in_write) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { endpoint, up }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// An interchange with quick heartbeats, a manager of two slots that reaches it through a
/// proxy, and a client connected directly.
async fn cluster() -> (Interchange, Proxy, Manager, Client) {
    htex_tests::init_logging();
    let interchange = Interchange::start(InterchangeConfig {
        heartbeat_period: Duration::from_millis(200),
        heartbeat_threshold: Duration::from_millis(1000),
        ..InterchangeConfig::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(interchange.manager_endpoint()).await;
    let mut config = ManagerConfig::with_worker(&proxy.endpoint, 2, [test_worker!()]);
    config.manager_id = "behind-a-proxy".into();
    config.prefetch = 64;
    config.reconnect_timeout = Duration::from_secs(30);
    config.connect_timeout = Duration::from_secs(5);
    let manager = Manager::start(config).await.unwrap();
    let client = Client::connect_with(
        interchange.client_endpoint(),
        ClientConfig {
            name: "reconnect-test".into(),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    (interchange, proxy, manager, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_held_through_a_cut_link_runs_once_and_its_results_count() {
    let (interchange, proxy, manager, client) = cluster().await;
    // Two run past the cut, two wait behind them; all end during the outage. A loss of the
    // manager may be counted meanwhile: one retry lets the interchange keep them for it.
    let handles: Vec<_> = [1500u64, 1500, 300, 300]
        .into_iter()
        .map(|ms| client.submit(Task::call("sleep", &ms).unwrap().max_retries(1)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.restore();
    for handle in handles {
        let result = tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("every held task ends")
            .unwrap();
        assert!(result.outcome.is_ok(), "{result:?}");
        assert_eq!(
            result.attempts, 1,
            "run again instead of counted: {result:?}"
        );
    }
    assert_eq!(client.stray_results(), 0);
    let status = client.status().await.unwrap();
    assert_eq!(status.outstanding, 0);
    assert_eq!(status.managers.len(), 1, "{:?}", status.managers);
    client.close().await;
    manager.stop().await.unwrap();
    interchange.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_queued_while_the_link_is_down_all_runs_after_it() {
    let (interchange, proxy, manager, client) = cluster().await;
    let warm = client.call::<_, i64>("add", &(1i64, 1i64)).unwrap();
    assert_eq!(warm.await.unwrap(), 2);
    proxy.cut();
    // Past the interchange's heartbeat threshold: it no longer sends anything to the manager.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // About 1,000 tasks queue at the interchange; once the manager is back they go to it in
    // batches, the first right behind `Registered`.
    let handles: Vec<_> = (0..1000i64)
        .map(|i| client.call::<_, i64>("add", &(i, 1)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    for (i, handle) in handles.into_iter().enumerate() {
        let Ok(value) = tokio::time::timeout(Duration::from_secs(30), handle).await else {
            let status = client.status().await;
            panic!("task {i} of the backlog never ended; the interchange says {status:?}");
        };
        assert_eq!(value.unwrap(), i as i64 + 1);
    }
    assert_eq!(client.stray_results(), 0);
    assert_eq!(client.status().await.unwrap().outstanding, 0);
    client.close().await;
    manager.stop().await.unwrap();
    interchange.shutdown().await.unwrap();
}
