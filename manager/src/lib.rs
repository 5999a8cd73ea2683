//! The htex manager: one per node. It connects to the interchange, registers its slots, starts
//! one worker process per slot, hands tasks to idle workers, and returns results in batches. A
//! worker's death is noticed at once (from the process's own exit): its task ends with
//! `WorkerLost` and the worker is restarted.

mod actor;
pub mod affinity;
pub mod config;
mod gpu_sampler;
pub mod inventory;
mod link;
pub mod mps;
pub mod plan;
pub mod slot_env;
mod workers;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use affinity::CpuAffinity;
pub use config::{
    read_inventory, ConfigError, ManagerConfig, ManagerFile, ManagerOverrides, RunnerStart,
    SourceError, DEFAULT_PIPELINE_DEPTH,
};
pub use plan::{cpu_slots, plan, PlannedSlot, SlotPlanError, SlotSpec};
pub use slot_env::MemLimitKey;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Connect(#[from] htex_transport::TransportError),
    #[error("cannot register with the interchange at {endpoint}: {reason}")]
    Register { endpoint: String, reason: String },
    #[error("the interchange refused this manager: {0}")]
    Refused(String),
    #[error("the interchange at {0} went silent")]
    InterchangeLost(String),
    #[error(transparent)]
    Mps(#[from] mps::MpsError),
    #[error(transparent)]
    Affinity(#[from] affinity::AffinityError),
    /// The manager's event loop panicked (a bug): its workers are gone, and so are its tasks.
    #[error("the manager crashed: {0}")]
    Crashed(String),
    #[error("the manager's keys: {0}")]
    Keys(#[from] htex_transport::KeyError),
}

/// What a manager owns on its node besides worker processes: MPS daemons and each slot's env.
pub(crate) struct NodeResources {
    pub mps_daemons: Vec<mps::MpsDaemon>,
    pub empty_pipe: Option<mps::EmptyPipeDir>,
    pub slot_envs: Vec<Vec<(String, String)>>,
}

impl NodeResources {
    /// Starts one MPS daemon per GPU with MPS slots and works out every slot's environment.
    /// Blocks (the MPS control program runs): call it off the event loop.
    fn prepare(config: &ManagerConfig) -> Result<NodeResources, ManagerError> {
        use htex_protocol::SlotKind;
        let kinds = || config.slots.iter().map(|s| s.descriptor.kind);
        let mut mps_gpus: Vec<String> = Vec::new();
        for slot in config
            .slots
            .iter()
            .filter(|s| s.descriptor.kind == SlotKind::Mps)
        {
            let uuid = slot.descriptor.gpu_uuid.clone().unwrap_or_default();
            if !mps_gpus.contains(&uuid) {
                mps_gpus.push(uuid);
            }
        }
        let timeout = config.mps_control_timeout;
        if !mps_gpus.is_empty() {
            mps::ensure_root(&mps::mps_root())?;
            mps::clean_stale(&config.mps_control, timeout);
        }
        let mut mps_daemons = Vec::new();
        for uuid in &mps_gpus {
            let dir = mps::private_dir()?;
            mps_daemons.push(mps::MpsDaemon::start(
                &config.mps_control,
                uuid,
                dir,
                timeout,
            )?);
        }
        let empty_pipe = if kinds().any(|k| matches!(k, SlotKind::Gpu | SlotKind::Mig)) {
            Some(mps::EmptyPipeDir::create()?)
        } else {
            None
        };
        let slot_envs = config
            .slots
            .iter()
            .map(|slot| {
                let daemon = mps_daemons.iter().find(|d: &&mps::MpsDaemon| {
                    Some(d.gpu_uuid()) == slot.descriptor.gpu_uuid.as_deref()
                });
                let pipe = daemon.map(|d| d.pipe_dir());
                let empty = empty_pipe.as_ref().map(|d| d.path());
                slot_env::slot_env(slot, pipe.as_deref(), empty, config.mps_mem_key)
            })
            .collect();
        Ok(NodeResources {
            mps_daemons,
            empty_pipe,
            slot_envs,
        })
    }
}

/// A running manager.
pub struct Manager {
    id: String,
    stop: mpsc::UnboundedSender<actor::Event>,
    task: JoinHandle<Result<(), ManagerError>>,
}

impl Manager {
    /// Checks the config, starts the node's MPS daemons (off the event loop), connects,
    /// registers and starts the workers. Returns once the interchange accepted it.
    pub async fn start(mut config: ManagerConfig) -> Result<Manager, ManagerError> {
        config.validate()?;
        config.assign_cpus()?;
        let prepared = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || NodeResources::prepare(&config))
        };
        let resources = prepared.await.map_err(crashed)??;
        let instance = new_instance();
        let registered = match link::connect(&config, instance, Vec::new()).await {
            Ok(registered) => registered,
            Err(error) => {
                // Its MPS daemons quit (bounded calls, but not on the event loop).
                let _ = tokio::task::spawn_blocking(move || drop(resources)).await;
                return Err(error);
            }
        };
        tracing::info!(manager = %config.manager_id, slots = config.slots.len(), "manager registered");
        let id = config.manager_id.clone();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let start = actor::Start {
            config,
            instance,
            resources,
            registered,
            events_tx: events_tx.clone(),
        };
        let task = tokio::spawn(actor::run(start, events_rx));
        Ok(Manager {
            id,
            stop: events_tx,
            task,
        })
    }

    /// A handle that stops this manager from elsewhere (a signal handler, say).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops at once: workers are killed, and the interchange is told this manager is gone.
    pub async fn stop(self) -> Result<(), ManagerError> {
        let _ = self.stop.send(actor::Event::Stop);
        self.wait().await
    }

    /// Waits until the manager exits (drained, shut down by the interchange, or lost it);
    /// `Crashed` if its event loop panicked.
    pub async fn wait(self) -> Result<(), ManagerError> {
        self.task.await.map_err(crashed)?
    }
}

/// A panicked (or aborted) task as a `Crashed` error, with the panic's message.
fn crashed(error: tokio::task::JoinError) -> ManagerError {
    if !error.is_panic() {
        return ManagerError::Crashed(error.to_string());
    }
    let payload = error.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".into());
    ManagerError::Crashed(message)
}

/// A random id for this start of a manager: the clock's nanoseconds and the pid, mixed
/// (splitmix64), and a counter for managers started in one process.
fn new_instance() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ STARTS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Stops a running [`Manager`]; see [`Manager::stopper`].
#[derive(Clone)]
pub struct Stopper(mpsc::UnboundedSender<actor::Event>);

impl Stopper {
    /// Stops at once: workers are killed; the interchange retries their tasks elsewhere.
    pub fn stop(&self) {
        let _ = self.0.send(actor::Event::Stop);
    }

    /// Takes no more tasks, gives back those not started, finishes the running ones (up to
    /// `drain_timeout`), then exits.
    pub fn drain(&self) {
        let _ = self.0.send(actor::Event::Drain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_event_loop_is_a_crash_not_a_clean_exit() {
        async fn broken_loop() -> Result<(), ManagerError> {
            panic!("the actor's invariant broke")
        }
        let (stop, _events) = mpsc::unbounded_channel();
        let manager = Manager {
            id: "m".into(),
            stop,
            task: tokio::spawn(broken_loop()),
        };
        match manager.wait().await {
            Err(ManagerError::Crashed(message)) => {
                assert_eq!(message, "the actor's invariant broke")
            }
            other => panic!("expected Crashed, got {other:?}"),
        }
    }

    #[test]
    fn instances_differ_between_starts() {
        let a = new_instance();
        let b = new_instance();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn an_unsound_config_is_refused_before_anything_starts() {
        let config = ManagerConfig::new("tcp://127.0.0.1:1", 1);
        let err = Manager::start(config)
            .await
            .err()
            .expect("no worker command");
        assert!(
            matches!(err, ManagerError::Config(ConfigError::NoWorkerCommand)),
            "{err}"
        );
    }
}
