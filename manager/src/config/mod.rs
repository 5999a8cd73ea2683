//! `ManagerConfig`: what a manager connects to and runs, with its defaults in one place and
//! `validate`, which `Manager::start` calls; `sources` builds one from a TOML file and flags.

mod sources;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use htex_protocol::{RunnerSpec, MIN_MAX_FRAME_BYTES};

use crate::affinity::{self, CpuAffinity};
use crate::plan::{cpu_slots, PlannedSlot};
use crate::slot_env::MemLimitKey;

pub use sources::{read_inventory, ManagerFile, ManagerOverrides, RunnerStart, SourceError};

/// Default of [`ManagerConfig::pipeline_depth`].
pub const DEFAULT_PIPELINE_DEPTH: usize = 16;
/// Most tasks [`ManagerConfig::pipeline_depth`] lets wait in one worker's pipe.
pub const MAX_PIPELINE_DEPTH: usize = 1024;
/// Most tasks [`ManagerConfig::prefetch`] holds beyond one per slot.
pub const MAX_PREFETCH: usize = 1 << 24;

/// How a manager connects and what it runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The interchange's manager endpoint, e.g. `tcp://10.0.0.1:54000`.
    pub interchange: String,
    /// This manager's name in the manager table; unique per interchange.
    pub manager_id: String,
    /// The batch job (block) this manager belongs to, if any.
    pub block_id: Option<String>,
    /// Worker slots (see [`crate::plan::plan`]); one worker process each.
    pub slots: Vec<PlannedSlot>,
    /// The MPS control program, for GPUs with MPS slots.
    pub mps_control: PathBuf,
    /// How long one call of the MPS control program may take before it is killed.
    pub mps_control_timeout: Duration,
    /// How MPS memory limits name the device.
    pub mps_mem_key: MemLimitKey,
    /// Tasks accepted beyond one per slot, so workers never wait for the network.
    pub prefetch: usize,
    /// Tasks a worker may have waiting in its pipe behind the one it runs, while its slot's
    /// tasks run under a millisecond on average (0: one task at a time).
    pub pipeline_depth: usize,
    /// Program and arguments that start a worker: `htex manager` runs `htex worker`, tests
    /// their own worker binary. Empty until the caller sets it.
    pub worker_command: Vec<String>,
    /// Bytes of stdout and of stderr a command task keeps.
    pub output_limit: usize,
    /// How long to wait for the interchange to answer the registration.
    pub connect_timeout: Duration,
    /// After losing the interchange, keep running tasks and try to register again for this long
    /// before exiting (zero: exit at once).
    pub reconnect_timeout: Duration,
    /// The largest frame this manager sends or accepts; results travel in batches under it, and
    /// its workers cap each result to fit (`ResultTooLarge`).
    pub max_frame_bytes: usize,
    /// How long a drain waits for running tasks before the manager stops anyway.
    pub drain_timeout: Duration,
    /// How often the slots' GPUs are sampled (NVML) for the interchange's reports (zero:
    /// never).
    pub gpu_sample_period: Duration,
    /// Warm runners every slot hosts, by name.
    pub runners: BTreeMap<String, RunnerSpec>,
    /// Answer every task at once without running it (no workers are started), to measure the
    /// dispatch core alone, as HyperQueue's zero-worker mode does.
    pub zero_worker: bool,
    /// How slots are pinned to this node's CPUs (see [`affinity`]).
    pub cpu_affinity: CpuAffinity,
    /// CPUs per slot for `block`, `block-reverse` and `alternating` (default: as many as divide
    /// evenly).
    pub cores_per_slot: Option<usize>,
    /// CURVE: the interchange's public key file (`server.key`; never its secret); with
    /// [`Self::key`].
    pub server_key: Option<PathBuf>,
    /// CURVE: this manager's own `.key_secret` file (its public key must be in the
    /// interchange's `managers/` allow-list).
    pub key: Option<PathBuf>,
}

/// Why a [`ManagerConfig`] cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("the manager has no slots; give it at least one worker (--workers N) or GPU slots (--gpus, --mps, --mig)")]
    NoSlots,
    #[error("no worker command: set `worker_command` (`htex manager` runs `htex worker`; --worker-command PROGRAM runs your own)")]
    NoWorkerCommand,
    #[error("max_frame_bytes {given} is outside the range this manager supports; give {min} to {max} bytes")]
    FrameLimit {
        given: usize,
        min: usize,
        max: usize,
    },
    #[error("{name} of {seconds} s is too long to count a deadline from; give a shorter one")]
    Duration { name: &'static str, seconds: String },
    #[error("{name} must be more than 0 s")]
    ZeroDuration { name: &'static str },
    #[error("pipeline depth {depth} is too deep; at most {MAX_PIPELINE_DEPTH} tasks may wait in a worker's pipe (0 turns pipelining off)")]
    PipelineDepth { depth: usize },
    #[error("prefetch {prefetch} is too large; a manager holds at most {MAX_PREFETCH} tasks beyond one per slot")]
    Prefetch { prefetch: usize },
}

impl ManagerConfig {
    /// A config with `workers` CPU slots and defaults for everything else. Set
    /// [`Self::worker_command`] before starting it, or use [`Self::with_worker`].
    pub fn new(interchange: impl Into<String>, workers: usize) -> Self {
        ManagerConfig {
            interchange: interchange.into(),
            manager_id: format!("{}-{}", crate::hostname(), std::process::id()),
            block_id: None,
            slots: cpu_slots(workers),
            mps_control: PathBuf::from("nvidia-cuda-mps-control"),
            mps_control_timeout: Duration::from_secs(10),
            mps_mem_key: MemLimitKey::default(),
            prefetch: workers,
            pipeline_depth: DEFAULT_PIPELINE_DEPTH,
            worker_command: Vec::new(),
            output_limit: 1 << 20,
            connect_timeout: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(60),
            max_frame_bytes: htex_protocol::DEFAULT_MAX_FRAME_BYTES,
            zero_worker: false,
            drain_timeout: Duration::from_secs(20),
            gpu_sample_period: Duration::from_secs(5),
            runners: BTreeMap::new(),
            cpu_affinity: CpuAffinity::None,
            cores_per_slot: None,
            server_key: None,
            key: None,
        }
    }

    /// [`Self::new`] with the program (and arguments) that starts a worker.
    ///
    /// ```
    /// let config = htex_manager::ManagerConfig::with_worker("tcp://127.0.0.1:54000", 2, ["my-worker"]);
    /// assert_eq!(config.worker_command, ["my-worker"]);
    /// assert!(config.validate().is_ok());
    /// ```
    pub fn with_worker<S: Into<String>>(
        interchange: impl Into<String>,
        workers: usize,
        worker_command: impl IntoIterator<Item = S>,
    ) -> Self {
        let mut config = ManagerConfig::new(interchange, workers);
        config.worker_command = worker_command.into_iter().map(Into::into).collect();
        config
    }

    /// Refuses a config the manager cannot run, with a sentence saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.slots.is_empty() {
            return Err(ConfigError::NoSlots);
        }
        if self.worker_command.is_empty() && !self.zero_worker {
            return Err(ConfigError::NoWorkerCommand);
        }
        // Worker frames carry a 32-bit length.
        let max = u32::MAX as usize;
        if !(MIN_MAX_FRAME_BYTES..=max).contains(&self.max_frame_bytes) {
            return Err(ConfigError::FrameLimit {
                given: self.max_frame_bytes,
                min: MIN_MAX_FRAME_BYTES,
                max,
            });
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration {
                name: "connect_timeout",
            });
        }
        if self.mps_control_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration {
                name: "mps_control_timeout",
            });
        }
        let durations = [
            ("connect_timeout", self.connect_timeout),
            ("reconnect_timeout", self.reconnect_timeout),
            ("drain_timeout", self.drain_timeout),
            ("gpu_sample_period", self.gpu_sample_period),
            ("mps_control_timeout", self.mps_control_timeout),
        ];
        for (name, duration) in durations {
            if deadline_after(duration).is_none() {
                return Err(ConfigError::Duration {
                    name,
                    seconds: seconds_text(duration),
                });
            }
        }
        if self.pipeline_depth > MAX_PIPELINE_DEPTH {
            return Err(ConfigError::PipelineDepth {
                depth: self.pipeline_depth,
            });
        }
        if self.prefetch > MAX_PREFETCH {
            return Err(ConfigError::Prefetch {
                prefetch: self.prefetch,
            });
        }
        Ok(())
    }

    /// Works out each slot's CPUs from `cpu_affinity` and this process's affinity mask (again
    /// on every call; `Manager::start` calls it).
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
}

/// `now + duration`, or `None` past what the clock can count (a deadline that never comes).
pub(crate) fn deadline_after(duration: Duration) -> Option<Instant> {
    Instant::now().checked_add(duration)
}

/// A duration as people read it: `2.5 s`.
pub(crate) fn seconds_text(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs >= 1e6 {
        format!("{secs:e}")
    } else {
        format!("{secs:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ManagerConfig {
        ManagerConfig::with_worker("tcp://127.0.0.1:1", 2, ["worker"])
    }

    #[test]
    fn a_sound_config_passes() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn each_unsound_setting_is_refused_with_what_to_change() {
        type Spoil = fn(&mut ManagerConfig);
        let cases: Vec<(Spoil, &str)> = vec![
            (|c| c.slots.clear(), "--workers N"),
            (|c| c.worker_command.clear(), "--worker-command"),
            (|c| c.max_frame_bytes = 1000, "give 131072 to"),
            (|c| c.max_frame_bytes = usize::MAX, "give 131072 to"),
            (|c| c.connect_timeout = Duration::ZERO, "more than 0 s"),
            (
                |c| c.drain_timeout = Duration::from_secs(u64::MAX),
                "drain_timeout of",
            ),
            (
                |c| c.reconnect_timeout = Duration::MAX,
                "reconnect_timeout of",
            ),
            (|c| c.pipeline_depth = 5000, "at most 1024"),
            (|c| c.prefetch = usize::MAX, "beyond one per slot"),
        ];
        for (spoil, expected) in cases {
            let mut config = config();
            spoil(&mut config);
            let error = config.validate().expect_err(expected).to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("Duration {"), "Debug text: {error}");
        }
    }

    #[test]
    fn a_zero_worker_manager_needs_no_worker_command() {
        let mut config = ManagerConfig::new("tcp://127.0.0.1:1", 1);
        config.zero_worker = true;
        assert_eq!(config.validate(), Ok(()));
    }
}
