//! The htex manager: one per node. It connects to the interchange, registers its slots, starts
//! one worker process per slot, hands tasks to idle workers, and returns results in batches. A
//! worker's death is noticed at once (its stdout closes): its task ends with `WorkerLost` and the
//! worker is restarted.

mod actor;
pub mod affinity;
pub mod inventory;
mod link;
pub mod mps;
pub mod slot_env;
pub mod slots;
mod workers;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use affinity::CpuAffinity;
pub use slot_env::MemLimitKey;
pub use slots::{cpu_slots, plan, PlannedSlot, SlotPlanError, SlotSpec};

/// Default of [`ManagerConfig::pipeline_depth`].
pub const DEFAULT_PIPELINE_DEPTH: usize = 16;

/// How a manager connects and what it runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The interchange's manager endpoint, e.g. `tcp://10.0.0.1:54000`.
    pub interchange: String,
    /// This manager's name in the manager table; unique per interchange.
    pub manager_id: String,
    /// The batch job (block) this manager belongs to, if any.
    pub block_id: Option<String>,
    /// Worker slots (see [`slots::plan`]); one worker process each.
    pub slots: Vec<PlannedSlot>,
    /// The MPS control program, for GPUs with MPS slots.
    pub mps_control: PathBuf,
    /// How MPS memory limits name the device.
    pub mps_mem_key: MemLimitKey,
    /// Tasks accepted beyond one per slot, so workers never wait for the network.
    pub prefetch: usize,
    /// Tasks a worker may have waiting in its pipe behind the one it runs, while its slot's
    /// tasks run under a millisecond on average (0: one task at a time).
    pub pipeline_depth: usize,
    /// Program and arguments that start a worker (`htex worker`, or a custom worker binary).
    pub worker_command: Vec<String>,
    /// Bytes of stdout and of stderr a command task keeps.
    pub output_limit: usize,
    /// How long to wait for the interchange to answer the registration.
    pub connect_timeout: Duration,
    /// After losing the interchange, keep running tasks and try to register again for this long
    /// before exiting (zero: exit at once).
    pub reconnect_timeout: Duration,
    pub max_frame_bytes: usize,
    /// How long a drain waits for running tasks before the manager stops anyway.
    pub drain_timeout: Duration,
    /// Warm runners every slot hosts, by name.
    pub runners: std::collections::BTreeMap<String, htex_protocol::RunnerSpec>,
    /// Answer every task at once without running it (no workers are started), to measure the
    /// dispatch core alone, as HyperQueue's zero-worker mode does.
    pub zero_worker: bool,
    /// How slots are pinned to this node's CPUs (see [`affinity`]).
    pub cpu_affinity: CpuAffinity,
    /// CPUs per slot for `block`, `block-reverse` and `alternating` (default: as many as divide
    /// evenly).
    pub cores_per_slot: Option<usize>,
}

impl ManagerConfig {
    /// Works out each slot's CPUs from `cpu_affinity` and this process's affinity mask (again
    /// on every call; [`Manager::start`] calls it).
    pub fn assign_cpus(&mut self) -> Result<(), affinity::AffinityError> {
        let cpus = match self.cpu_affinity {
            CpuAffinity::None => vec![Vec::new(); self.slots.len()],
            _ => affinity::assign(
                &self.cpu_affinity,
                &affinity::available_cpus()?,
                self.slots.len(),
                self.cores_per_slot,
            )?,
        };
        for (slot, cpus) in self.slots.iter_mut().zip(cpus) {
            slot.descriptor.cpus = cpus;
        }
        Ok(())
    }

    /// A config with `workers` CPU slots, the stock worker of this executable, and defaults for
    /// everything else.
    pub fn new(interchange: impl Into<String>, workers: usize) -> Self {
        let exe = std::env::current_exe()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "htex".into());
        ManagerConfig {
            interchange: interchange.into(),
            manager_id: format!("{}-{}", hostname(), std::process::id()),
            block_id: None,
            slots: cpu_slots(workers),
            mps_control: PathBuf::from("nvidia-cuda-mps-control"),
            mps_mem_key: MemLimitKey::default(),
            prefetch: workers,
            pipeline_depth: DEFAULT_PIPELINE_DEPTH,
            worker_command: vec![exe, "worker".into()],
            output_limit: 1 << 20,
            connect_timeout: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(60),
            max_frame_bytes: htex_protocol::DEFAULT_MAX_FRAME_BYTES,
            zero_worker: false,
            drain_timeout: Duration::from_secs(20),
            runners: Default::default(),
            cpu_affinity: CpuAffinity::None,
            cores_per_slot: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("cannot connect to the interchange at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("the interchange refused this manager: {0}")]
    Refused(String),
    #[error("the interchange at {0} went silent")]
    InterchangeLost(String),
    #[error("the manager has no slots; give it at least one worker")]
    NoSlots,
    #[error("worker command is empty")]
    NoWorkerCommand,
    #[error(transparent)]
    Mps(#[from] mps::MpsError),
    #[error(transparent)]
    Affinity(#[from] affinity::AffinityError),
}

/// What a manager owns on its node besides worker processes: MPS daemons and each slot's env.
pub(crate) struct NodeResources {
    pub mps_daemons: Vec<mps::MpsDaemon>,
    pub empty_pipe: Option<mps::EmptyPipeDir>,
    pub slot_envs: Vec<Vec<(String, String)>>,
}

impl NodeResources {
    /// Starts one MPS daemon per GPU with MPS slots and works out every slot's environment.
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
        if !mps_gpus.is_empty() {
            mps::clean_stale(&config.mps_control);
        }
        let mut mps_daemons = Vec::new();
        for uuid in &mps_gpus {
            mps_daemons.push(mps::MpsDaemon::start(
                &config.mps_control,
                uuid,
                mps::private_dir(),
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
    /// Connects, registers and starts the workers. Returns once the interchange accepted it.
    pub async fn start(mut config: ManagerConfig) -> Result<Manager, ManagerError> {
        if config.slots.is_empty() {
            return Err(ManagerError::NoSlots);
        }
        if config.worker_command.is_empty() {
            return Err(ManagerError::NoWorkerCommand);
        }
        config.assign_cpus()?;
        let resources = NodeResources::prepare(&config)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (link, heartbeat) = link::connect(&config, events_tx.clone(), 0).await?;
        tracing::info!(manager = %config.manager_id, slots = config.slots.len(), "manager registered");
        let id = config.manager_id.clone();
        let task = tokio::spawn(actor::run(
            config,
            resources,
            link,
            heartbeat,
            events_tx.clone(),
            events_rx,
        ));
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

    /// Waits until the manager exits (drained, shut down by the interchange, or lost it).
    pub async fn wait(self) -> Result<(), ManagerError> {
        self.task.await.unwrap_or(Ok(()))
    }
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
