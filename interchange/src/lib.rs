//! The htex interchange: binds a client port and a manager port, queues tasks by priority, keeps
//! the manager table, dispatches tasks in batches to managers with free capacity, and routes each
//! result back to the client that submitted its task.
//!
//! ```no_run
//! # async fn example() -> Result<(), htex_interchange::InterchangeError> {
//! use htex_interchange::{Interchange, InterchangeConfig};
//!
//! let interchange = Interchange::start(InterchangeConfig::default()).await?;
//! println!("clients: {}, managers: {}", interchange.client_endpoint(), interchange.manager_endpoint());
//! interchange.wait().await;
//! # Ok(())
//! # }
//! ```

mod actor;
mod queue;
mod records;
mod sockets;
mod task_table;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How an interchange listens and when it declares peers lost.
#[derive(Debug, Clone)]
pub struct InterchangeConfig {
    /// ZeroMQ endpoint for clients; port 0 picks a free port.
    pub client_bind: String,
    /// ZeroMQ endpoint for managers; port 0 picks a free port.
    pub manager_bind: String,
    /// How often the interchange sends heartbeats, and managers are told to.
    pub heartbeat_period: Duration,
    /// A manager silent for this long is lost.
    pub heartbeat_threshold: Duration,
    /// How long a task no connected manager can run waits for one before it is `Unsatisfiable`.
    pub unsatisfiable_grace: Duration,
    /// Frames larger than this are refused.
    pub max_frame_bytes: usize,
    /// Write the bound endpoints to this file (JSON) once listening.
    pub addresses_file: Option<PathBuf>,
}

impl Default for InterchangeConfig {
    fn default() -> Self {
        InterchangeConfig {
            client_bind: "tcp://127.0.0.1:0".into(),
            manager_bind: "tcp://127.0.0.1:0".into(),
            heartbeat_period: Duration::from_secs(2),
            heartbeat_threshold: Duration::from_secs(6),
            unsatisfiable_grace: Duration::from_secs(10),
            max_frame_bytes: htex_protocol::DEFAULT_MAX_FRAME_BYTES,
            addresses_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InterchangeError {
    #[error("cannot bind {what} endpoint {endpoint}: {source}")]
    Bind {
        what: &'static str,
        endpoint: String,
        source: zeromq::ZmqError,
    },
    #[error("cannot write the addresses file {path}: {source}")]
    AddressesFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running interchange.
pub struct Interchange {
    client_endpoint: String,
    manager_endpoint: String,
    stop: mpsc::UnboundedSender<actor::Event>,
    task: JoinHandle<()>,
}

impl Interchange {
    /// Binds both ports and starts serving.
    pub async fn start(config: InterchangeConfig) -> Result<Interchange, InterchangeError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        // Messages from the network go through a short bounded queue: when the actor falls
        // behind, the sockets stop reading and TCP pushes back on the senders, instead of
        // decoded batches piling up in memory.
        let (net_tx, net_rx) = mpsc::channel(actor::INCOMING_QUEUE);
        let clients = sockets::bind("client", &config.client_bind, net_tx.clone(), &config).await?;
        let managers = sockets::bind("manager", &config.manager_bind, net_tx, &config).await?;
        let client_endpoint = clients.endpoint.clone();
        let manager_endpoint = managers.endpoint.clone();
        if let Some(path) = &config.addresses_file {
            let json = format!(
                "{{\"client\": \"{client_endpoint}\", \"manager\": \"{manager_endpoint}\"}}\n"
            );
            std::fs::write(path, json).map_err(|source| InterchangeError::AddressesFile {
                path: path.clone(),
                source,
            })?;
        }
        tracing::info!(%client_endpoint, %manager_endpoint, "interchange listening");
        let task = tokio::spawn(actor::run(config, clients, managers, net_rx, events_rx));
        Ok(Interchange {
            client_endpoint,
            manager_endpoint,
            stop: events_tx,
            task,
        })
    }

    /// A handle that shuts this interchange down from elsewhere (a signal handler, say).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// The endpoint clients connect to, e.g. `tcp://127.0.0.1:54321`.
    pub fn client_endpoint(&self) -> &str {
        &self.client_endpoint
    }

    /// The endpoint managers connect to.
    pub fn manager_endpoint(&self) -> &str {
        &self.manager_endpoint
    }

    /// Shuts down as the `Shutdown` command does: managers are told to stop and every outstanding
    /// task ends with `Cancelled`.
    pub async fn shutdown(self) {
        let _ = self.stop.send(actor::Event::Stop);
        let _ = self.task.await;
    }

    /// Waits until the interchange stops (after a `Shutdown` command).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Shuts a running [`Interchange`] down; see [`Interchange::stopper`].
#[derive(Clone)]
pub struct Stopper(mpsc::UnboundedSender<actor::Event>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(actor::Event::Stop);
    }
}
