//! A manager's configuration from its two sources: the TOML file ([`ManagerFile`]) and the
//! command line ([`ManagerOverrides`], which wins), with the slot plan made from this node's GPU
//! inventory (NVML, or a simulated inventory file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use htex_protocol::RunnerSpec;
use serde::Deserialize;

use super::ManagerConfig;
use crate::affinity::AffinityError;
use crate::inventory::{nvml, simulated, Inventory, InventoryError};
use crate::plan::{plan, SlotPlanError, SlotSpec};
use crate::slot_env::MemLimitKey;

/// When warm runners start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerStart {
    /// With their slot: the slot takes tasks once its runners are ready.
    #[default]
    Eager,
    /// On their first call.
    Lazy,
}

impl std::str::FromStr for RunnerStart {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "eager" => Ok(RunnerStart::Eager),
            "lazy" => Ok(RunnerStart::Lazy),
            other => Err(format!(
                "`{other}` is not a runner start; use eager or lazy"
            )),
        }
    }
}

/// The TOML form of a manager's options (`htex manager --config FILE`); slot options go in a
/// `[slots]` table. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerFile {
    pub interchange: Option<String>,
    pub port: Option<u16>,
    pub workers: Option<usize>,
    pub prefetch: Option<usize>,
    pub pipeline_depth: Option<usize>,
    pub manager_id: Option<String>,
    pub block_id: Option<String>,
    pub worker_command: Option<Vec<String>>,
    pub inventory: Option<PathBuf>,
    pub mps_control: Option<PathBuf>,
    pub mps_mem_key: Option<MemLimitKey>,
    pub runner_start: Option<RunnerStart>,
    pub reconnect_timeout: Option<f64>,
    pub drain_timeout: Option<f64>,
    pub gpu_sample_period: Option<f64>,
    pub cpu_affinity: Option<String>,
    pub cores_per_slot: Option<usize>,
    /// Offer CPU slots when GPU slots are asked for and NVML is not available.
    pub allow_cpu_fallback: Option<bool>,
    /// CURVE: the interchange's public key file, and this manager's own secret key file.
    pub server_key: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Runner name → command line.
    #[serde(default)]
    pub runners: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub slots: SlotSpec,
}

impl ManagerFile {
    /// Reads and parses a manager's TOML file.
    pub fn load(path: &Path) -> Result<ManagerFile, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|e| SourceError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        ManagerFile::parse(&text).map_err(|reason| SourceError::Parse {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses the TOML text of a manager's file; the error says which key is wrong.
    pub fn parse(text: &str) -> Result<ManagerFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// What the command line gives; each option that is set wins over the file. `htex manager`'s
/// flags convert into this, and so can any other front end.
#[derive(Debug, Default, Clone)]
pub struct ManagerOverrides {
    pub interchange: Option<String>,
    pub port: Option<u16>,
    pub workers: Option<usize>,
    pub gpus: Option<String>,
    pub mps: Vec<String>,
    pub mps_mem: Vec<String>,
    pub mps_split: Option<u32>,
    pub mig: Option<String>,
    pub available_accelerators: Vec<String>,
    pub gpu_percentage: Vec<u8>,
    pub oversubscribe: bool,
    pub inventory: Option<PathBuf>,
    pub allow_cpu_fallback: bool,
    pub mps_control: Option<PathBuf>,
    pub mps_mem_key: Option<MemLimitKey>,
    pub prefetch: Option<usize>,
    pub pipeline_depth: Option<usize>,
    pub manager_id: Option<String>,
    pub block_id: Option<String>,
    pub worker_command: Option<Vec<String>>,
    /// `NAME=COMMAND` entries, each a runner every slot hosts.
    pub runners: Vec<String>,
    pub runner_start: Option<RunnerStart>,
    /// Seconds.
    pub drain_timeout: Option<f64>,
    /// Seconds.
    pub gpu_sample_period: Option<f64>,
    /// Seconds.
    pub reconnect_timeout: Option<f64>,
    pub cpu_affinity: Option<String>,
    pub cores_per_slot: Option<usize>,
    pub zero_worker: bool,
    pub server_key: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Why a manager's file and flags do not make a config.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the manager config {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} is not a valid manager config: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("give the interchange's manager port with --port (or `port` in the config file)")]
    NoPort,
    #[error("--{flag} {value}: give seconds, 0 or more")]
    Seconds { flag: &'static str, value: f64 },
    #[error("GPU slots were asked for ({flags}), but this node has no GPU inventory: {reason}; pass --inventory FILE for a simulated one, or --allow-cpu-fallback to offer CPU slots instead")]
    NoGpuInventory { flags: String, reason: String },
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Plan(#[from] SlotPlanError),
    #[error(transparent)]
    Affinity(#[from] AffinityError),
    #[error("--runner `{entry}`: expected NAME=COMMAND")]
    Runner { entry: String },
    #[error("runner `{name}` has an empty command")]
    EmptyRunner { name: String },
}

/// The inventory: the simulated file when given, else NVML. Without NVML, or with NVML and no
/// GPU, the error says why; inventory warnings are logged.
pub fn read_inventory(path: Option<&Path>) -> Result<Inventory, InventoryError> {
    let inventory = match path {
        Some(path) => simulated::load_inventory(path)?,
        None => {
            let inventory = nvml::open_inventory()?;
            if inventory.gpus.is_empty() {
                return Err(InventoryError::NoGpu);
            }
            inventory
        }
    };
    for warning in &inventory.warnings {
        tracing::warn!("{warning}");
    }
    Ok(inventory)
}

/// One worker per CPU this process may run on.
fn default_cpu_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A list flag given on the command line replaces the file's list.
fn flag_or_file<T: Clone>(flag: &[T], file: Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        file
    } else {
        flag.to_vec()
    }
}

fn seconds(flag: &'static str, value: f64) -> Result<Duration, SourceError> {
    Duration::try_from_secs_f64(value).map_err(|_| SourceError::Seconds { flag, value })
}

impl ManagerOverrides {
    /// The slot part of the flags, laid over the file's `[slots]`.
    fn slot_spec(&self, file: SlotSpec) -> SlotSpec {
        SlotSpec {
            gpus: self.gpus.clone().or(file.gpus),
            mps: flag_or_file(&self.mps, file.mps),
            mps_mem: flag_or_file(&self.mps_mem, file.mps_mem),
            mps_split: self.mps_split.or(file.mps_split),
            mig: self.mig.clone().or(file.mig),
            cpu: file.cpu,
            available_accelerators: flag_or_file(
                &self.available_accelerators,
                file.available_accelerators,
            ),
            gpu_percentage: flag_or_file(&self.gpu_percentage, file.gpu_percentage),
            oversubscribe: self.oversubscribe || file.oversubscribe,
        }
    }
}

/// The GPU options a spec asks for, as flags, e.g. `--mps 0:50,50`; empty for none.
fn gpu_flags(spec: &SlotSpec) -> String {
    let mut flags = Vec::new();
    if let Some(gpus) = &spec.gpus {
        flags.push(format!("--gpus {gpus}"));
    }
    flags.extend(spec.mps.iter().map(|m| format!("--mps {m}")));
    if let Some(n) = spec.mps_split {
        flags.push(format!("--mps-split {n}"));
    }
    if let Some(mig) = &spec.mig {
        flags.push(format!("--mig {mig}"));
    }
    if !spec.available_accelerators.is_empty() {
        flags.push(format!(
            "--available-accelerators {}",
            spec.available_accelerators.join(",")
        ));
    }
    flags.join(" ")
}

/// The slots the spec asks for on this node. Explicit GPU slots with no inventory are an error
/// unless `allow_cpu_fallback`, which offers CPU slots instead.
fn plan_slots(
    mut spec: SlotSpec,
    workers: Option<usize>,
    inventory_path: Option<&Path>,
    allow_cpu_fallback: bool,
) -> Result<Vec<crate::PlannedSlot>, SourceError> {
    let flags = gpu_flags(&spec);
    let cpu_only = |workers: Option<usize>| SlotSpec {
        cpu: workers.unwrap_or_else(default_cpu_workers),
        ..SlotSpec::default()
    };
    if flags.is_empty() {
        if let Some(path) = inventory_path {
            // Read for its warnings and errors, though no slot uses a GPU.
            read_inventory(Some(path))?;
        }
        return Ok(plan(&cpu_only(workers), &Inventory::default())?);
    }
    match read_inventory(inventory_path) {
        Ok(inventory) => {
            spec.cpu = workers.unwrap_or(0);
            Ok(plan(&spec, &inventory)?)
        }
        Err(error) if inventory_path.is_some() => Err(error.into()),
        Err(error) if allow_cpu_fallback => {
            tracing::warn!(
                "no GPU inventory ({error}); offering CPU slots only, as --allow-cpu-fallback asks"
            );
            Ok(plan(&cpu_only(workers), &Inventory::default())?)
        }
        Err(error) => Err(SourceError::NoGpuInventory {
            flags,
            reason: error.to_string(),
        }),
    }
}

/// Warm runners from the file and `NAME=COMMAND` flags (a flag replaces the file's runner of
/// that name).
fn runners(
    mut file: BTreeMap<String, Vec<String>>,
    flags: &[String],
    start: RunnerStart,
) -> Result<BTreeMap<String, RunnerSpec>, SourceError> {
    for entry in flags {
        let (name, command) = entry
            .split_once('=')
            .filter(|(n, c)| !n.trim().is_empty() && !c.trim().is_empty())
            .ok_or_else(|| SourceError::Runner {
                entry: entry.clone(),
            })?;
        file.insert(
            name.trim().to_string(),
            command.split_whitespace().map(str::to_string).collect(),
        );
    }
    if let Some((name, _)) = file.iter().find(|(_, command)| command.is_empty()) {
        return Err(SourceError::EmptyRunner { name: name.clone() });
    }
    let eager = start == RunnerStart::Eager;
    Ok(file
        .into_iter()
        .map(|(name, command)| (name, RunnerSpec { command, eager }))
        .collect())
}

impl ManagerConfig {
    /// The config a file and command-line overrides describe, with its slots planned on this
    /// node and their CPUs assigned. `default_worker` starts workers unless either source names
    /// a worker command (`htex manager` passes its own `htex worker`).
    pub fn from_sources(
        file: ManagerFile,
        overrides: &ManagerOverrides,
        default_worker: Vec<String>,
    ) -> Result<ManagerConfig, SourceError> {
        let o = overrides;
        let host = o
            .interchange
            .clone()
            .or(file.interchange)
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = o.port.or(file.port).ok_or(SourceError::NoPort)?;
        let slots = plan_slots(
            o.slot_spec(file.slots),
            o.workers.or(file.workers),
            o.inventory.as_deref().or(file.inventory.as_deref()),
            o.allow_cpu_fallback || file.allow_cpu_fallback.unwrap_or(false),
        )?;
        let mut config = ManagerConfig::new(format!("tcp://{host}:{port}"), 0);
        config.prefetch = o.prefetch.or(file.prefetch).unwrap_or(slots.len());
        if let Some(depth) = o.pipeline_depth.or(file.pipeline_depth) {
            config.pipeline_depth = depth;
        }
        config.slots = slots;
        config.block_id = o.block_id.clone().or(file.block_id);
        config.zero_worker = o.zero_worker;
        if let Some(id) = o.manager_id.clone().or(file.manager_id) {
            config.manager_id = id;
        }
        config.worker_command = o
            .worker_command
            .clone()
            .or(file.worker_command)
            .unwrap_or(default_worker);
        if let Some(control) = o.mps_control.clone().or(file.mps_control) {
            config.mps_control = control;
        }
        if let Some(key) = o.mps_mem_key.or(file.mps_mem_key) {
            config.mps_mem_key = key;
        }
        if let Some(value) = o.reconnect_timeout.or(file.reconnect_timeout) {
            config.reconnect_timeout = seconds("reconnect-timeout", value)?;
        }
        if let Some(value) = o.drain_timeout.or(file.drain_timeout) {
            config.drain_timeout = seconds("drain-timeout", value)?;
        }
        if let Some(value) = o.gpu_sample_period.or(file.gpu_sample_period) {
            config.gpu_sample_period = seconds("gpu-sample-period", value)?;
        }
        if let Some(affinity) = o.cpu_affinity.clone().or(file.cpu_affinity) {
            config.cpu_affinity = affinity.parse()?;
        }
        config.cores_per_slot = o.cores_per_slot.or(file.cores_per_slot);
        config.server_key = o.server_key.clone().or(file.server_key);
        config.key = o.key.clone().or(file.key);
        config.assign_cpus()?;
        let start = o.runner_start.or(file.runner_start).unwrap_or_default();
        config.runners = runners(file.runners, &o.runners, start)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/inventory")
            .join(name)
    }

    fn worker() -> Vec<String> {
        vec!["htex".into(), "worker".into()]
    }

    #[test]
    fn the_file_plans_slots_and_flags_override_it() {
        let toml = format!(
            "interchange = \"10.0.0.1\"\nport = 54000\nworkers = 1\ninventory = \"{}\"\nmps_mem_key = \"uuid\"\n\
             [slots]\nmps = [\"0:50,25,25\"]\nmps_mem = [\"0:20G,10G,10G\"]\n",
            fixture("h100.json").display()
        );
        let file = || ManagerFile::parse(&toml).unwrap();
        let config =
            ManagerConfig::from_sources(file(), &ManagerOverrides::default(), worker()).unwrap();
        assert_eq!(config.interchange, "tcp://10.0.0.1:54000");
        let kinds: Vec<_> = config
            .slots
            .iter()
            .map(|s| s.descriptor.kind.as_str())
            .collect();
        assert_eq!(kinds, ["mps", "mps", "mps", "cpu"]);
        assert_eq!(config.slots[0].pinned_memory_limit, Some(20 << 30));
        assert_eq!(config.mps_mem_key, MemLimitKey::Uuid);
        assert_eq!(config.worker_command, worker());

        let overrides = ManagerOverrides {
            mps_split: Some(2),
            mps: vec!["0:70,30".into()],
            port: Some(1),
            ..ManagerOverrides::default()
        };
        let err = ManagerConfig::from_sources(file(), &overrides, worker())
            .unwrap_err()
            .to_string();
        // The file's mps_mem (3 limits) no longer matches the flag's 2 slots.
        assert!(
            err.contains("3 memory limit(s)") && err.contains("2 MPS slot(s)"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let err = ManagerFile::parse("prot = 1\n").unwrap_err();
        assert!(err.contains("unknown field `prot`"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = ManagerFile::parse(
            "port = 1\nworkers = 3\nworker_command = [\"file-worker\"]\ndrain_timeout = 5\n\
             [runners]\nmodel = [\"python3\", \"-m\", \"m\"]\n",
        )
        .unwrap();
        let overrides = ManagerOverrides {
            port: Some(2),
            workers: Some(2),
            worker_command: Some(vec!["flag-worker".into()]),
            runners: vec!["model=python3 -m other".into()],
            runner_start: Some(RunnerStart::Lazy),
            ..ManagerOverrides::default()
        };
        let config = ManagerConfig::from_sources(file, &overrides, worker()).unwrap();
        assert_eq!(config.interchange, "tcp://127.0.0.1:2");
        assert_eq!(config.slots.len(), 2);
        assert_eq!(config.worker_command, ["flag-worker"]);
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        let model = &config.runners["model"];
        assert_eq!(
            (model.command.join(" "), model.eager),
            ("python3 -m other".into(), false)
        );
    }

    #[test]
    fn bad_values_are_named() {
        let no_port = ManagerConfig::from_sources(
            ManagerFile::default(),
            &ManagerOverrides::default(),
            worker(),
        );
        assert!(matches!(no_port, Err(SourceError::NoPort)));
        let overrides = ManagerOverrides {
            port: Some(1),
            drain_timeout: Some(1e30),
            ..ManagerOverrides::default()
        };
        let err = ManagerConfig::from_sources(ManagerFile::default(), &overrides, worker())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--drain-timeout"), "{err}");
        let overrides = ManagerOverrides {
            port: Some(1),
            runners: vec!["=x".into()],
            ..ManagerOverrides::default()
        };
        let err = ManagerConfig::from_sources(ManagerFile::default(), &overrides, worker())
            .unwrap_err()
            .to_string();
        assert!(err.contains("NAME=COMMAND"), "{err}");
    }

    /// GPU flags with no inventory (this test runs where NVML is not installed, or finds no
    /// GPU) are an error naming why, unless CPU slots are explicitly allowed instead.
    #[test]
    fn gpu_flags_without_an_inventory_are_refused_unless_cpu_fallback_is_allowed() {
        if read_inventory(None).is_ok() {
            eprintln!("NVML finds GPUs here; the fallback is checked where it does not");
            return;
        }
        let mut overrides = ManagerOverrides {
            port: Some(1),
            mps: vec!["0:50,50".into()],
            ..ManagerOverrides::default()
        };
        let err =
            ManagerConfig::from_sources(ManagerFile::default(), &overrides, worker()).unwrap_err();
        let SourceError::NoGpuInventory { flags, reason } = &err else {
            panic!("expected NoGpuInventory, got {err}");
        };
        assert_eq!(flags, "--mps 0:50,50");
        assert!(reason.contains("NVML"), "{reason}");
        assert!(err.to_string().contains("--allow-cpu-fallback"), "{err}");

        overrides.allow_cpu_fallback = true;
        overrides.workers = Some(2);
        let config =
            ManagerConfig::from_sources(ManagerFile::default(), &overrides, worker()).unwrap();
        assert_eq!(config.slots.len(), 2);
        assert!(config
            .slots
            .iter()
            .all(|s| s.descriptor.kind == htex_protocol::SlotKind::Cpu));
    }
}
