//! Helpers for htex's end-to-end tests: a `TestCluster` of a real interchange on an ephemeral
//! loopback port and managers with real worker processes, torn down on drop.

use std::time::Duration;

use htex_client::{Client, ClientConfig};
use htex_interchange::InterchangeConfig;
use htex_local::LocalCluster;
use htex_manager::ManagerConfig;

/// The test worker binary (`src/bin/htex-test-worker.rs`). Only usable from this package's
/// integration tests, where Cargo sets the variable.
#[macro_export]
macro_rules! test_worker {
    () => {
        env!("CARGO_BIN_EXE_htex-test-worker")
    };
}

/// An interchange and `managers` × `workers` worker processes on loopback.
pub struct TestCluster {
    cluster: Option<LocalCluster>,
}

impl TestCluster {
    pub async fn start(worker: &str, managers: usize, workers: usize) -> TestCluster {
        TestCluster::start_with(
            worker,
            InterchangeConfig::default(),
            managers,
            workers,
            |_| {},
        )
        .await
    }

    /// Like `start`, with the interchange's config and a hook to adjust each manager's.
    pub async fn start_with(
        worker: &str,
        interchange: InterchangeConfig,
        managers: usize,
        workers: usize,
        adjust: impl Fn(&mut ManagerConfig),
    ) -> TestCluster {
        init_logging();
        let worker = worker.to_string();
        let cluster = LocalCluster::start_with(interchange, managers, |i, endpoint| {
            let mut config = ManagerConfig::with_worker(endpoint, workers, [worker.clone()]);
            config.manager_id = format!("test-{i}");
            adjust(&mut config);
            config
        })
        .await
        .expect("the test cluster starts");
        TestCluster {
            cluster: Some(cluster),
        }
    }

    pub fn client_endpoint(&self) -> &str {
        self.cluster().client_endpoint()
    }

    pub fn manager_endpoint(&self) -> &str {
        self.cluster().manager_endpoint()
    }

    pub async fn client(&self) -> Client {
        let config = ClientConfig {
            name: "test".into(),
            ..ClientConfig::default()
        };
        Client::connect_with(self.client_endpoint(), config)
            .await
            .expect("the client connects")
    }

    pub async fn stop(mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.stop().await.expect("the interchange did not crash");
        }
    }

    fn cluster(&self) -> &LocalCluster {
        self.cluster.as_ref().expect("running")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Worker processes die with their manager's pipes; the runtime ends the tasks.
        if self.cluster.is_some() {
            tracing::debug!("test cluster dropped without stop()");
        }
    }
}

/// A test that cannot run here says why and passes, unless `HTEX_REQUIRE` (a comma-separated
/// list, e.g. `python,netns,cpus2`, as CI sets it) names what it needs: then it fails, so a
/// machine that lost a capability cannot turn a test green by skipping it.
pub fn skip_unless_required(requirement: &str, why: &str) {
    let required = std::env::var("HTEX_REQUIRE").unwrap_or_default();
    if required.split(',').any(|r| r.trim() == requirement) {
        panic!("HTEX_REQUIRE names `{requirement}`, but this test cannot run: {why}");
    }
    println!("skipped (set HTEX_REQUIRE={requirement} to make this a failure): {why}");
}

/// Waits until `check` passes or `timeout` elapses; returns whether it passed.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// The pids of the `slots` workers serving now: as many calls of the test worker's
/// `sleep_then_pid`, each holding a slot for a moment, run at once, one per worker.
pub async fn worker_pids(client: &Client, slots: usize) -> std::collections::HashSet<u32> {
    let calls = (0..slots).map(|_| {
        client
            .call::<_, u32>("sleep_then_pid", &300u64)
            .expect("a u64 encodes")
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|pid| pid.expect("the pid call succeeds"))
        .collect()
}

/// Logs of the code under test, at `RUST_LOG` (default `warn`), through the test harness.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
