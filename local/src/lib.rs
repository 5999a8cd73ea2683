//! An embedded cluster: an interchange on loopback and managers in this process, each with real
//! worker processes. `htex run` uses it, and so do the end-to-end tests.

use htex_interchange::{Interchange, InterchangeConfig, InterchangeError};
use htex_manager::{Manager, ManagerConfig, ManagerError};

/// What can stop a local cluster from starting.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error(transparent)]
    Interchange(#[from] InterchangeError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

/// `htex worker` of this executable.
fn this_executable_worker() -> Vec<String> {
    let exe = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "htex".into());
    vec![exe, "worker".into()]
}

/// An interchange and its managers, all in this process.
pub struct LocalCluster {
    interchange: Interchange,
    managers: Vec<Manager>,
}

impl LocalCluster {
    /// `managers` managers with `workers` CPU slots each; `worker_command` starts a worker (the
    /// default runs this executable's `htex worker`, as `htex run` needs).
    pub async fn start(
        managers: usize,
        workers: usize,
        worker_command: Option<Vec<String>>,
    ) -> Result<LocalCluster, LocalClusterError> {
        Self::start_monitored(managers, workers, worker_command, Default::default()).await
    }

    /// `start`, with the interchange's event stream recorded (`htex run --monitoring`).
    pub async fn start_monitored(
        managers: usize,
        workers: usize,
        worker_command: Option<Vec<String>>,
        monitoring: htex_monitoring::MonitorConfig,
    ) -> Result<LocalCluster, LocalClusterError> {
        let interchange = InterchangeConfig {
            monitoring,
            ..InterchangeConfig::default()
        };
        Self::start_with(interchange, managers, |i, endpoint| {
            let command = worker_command
                .clone()
                .unwrap_or_else(this_executable_worker);
            let mut config = ManagerConfig::with_worker(endpoint, workers, command);
            config.manager_id = format!("local-{i}");
            config
        })
        .await
    }

    /// Full control: the interchange's config, and a function that makes manager `i`'s config
    /// from the interchange's manager endpoint.
    pub async fn start_with(
        interchange: InterchangeConfig,
        managers: usize,
        manager_config: impl Fn(usize, &str) -> ManagerConfig,
    ) -> Result<LocalCluster, LocalClusterError> {
        let interchange = Interchange::start(interchange).await?;
        let mut started = Vec::with_capacity(managers);
        for i in 0..managers {
            let config = manager_config(i, interchange.manager_endpoint());
            started.push(Manager::start(config).await?);
        }
        Ok(LocalCluster {
            interchange,
            managers: started,
        })
    }

    /// Where clients connect.
    pub fn client_endpoint(&self) -> &str {
        self.interchange.client_endpoint()
    }

    /// The interchange (its metrics address, say).
    pub fn interchange(&self) -> &Interchange {
        &self.interchange
    }

    /// Where more managers connect.
    pub fn manager_endpoint(&self) -> &str {
        self.interchange.manager_endpoint()
    }

    /// Stops the managers (killing their workers), then the interchange; an error if the
    /// interchange had crashed.
    pub async fn stop(self) -> Result<(), LocalClusterError> {
        for manager in self.managers {
            if let Err(e) = manager.stop().await {
                tracing::debug!("manager ended with: {e}");
            }
        }
        self.interchange.shutdown().await?;
        Ok(())
    }
}
