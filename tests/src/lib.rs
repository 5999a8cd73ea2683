//! Helpers for htex's end-to-end tests: a `TestCluster` of a real interchange on an ephemeral
//! loopback port and managers with real worker processes, torn down on drop.

use std::time::Duration;

use htex::LocalCluster;
use htex_client::{Client, ClientConfig};
use htex_interchange::InterchangeConfig;
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
            let mut config = ManagerConfig::new(endpoint, workers);
            config.manager_id = format!("test-{i}");
            config.worker_command = vec![worker.clone()];
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
            cluster.stop().await;
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
