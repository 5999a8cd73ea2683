//! `htex manager`: flags and the optional TOML file become a `ManagerConfig`, with the slot plan
//! made from the node's GPU inventory (NVML, or a simulated inventory file).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use htex_manager::inventory::{nvml, simulated, Inventory};
use htex_manager::{plan, Manager, ManagerConfig, MemLimitKey, SlotSpec};
use serde::Deserialize;

use crate::cli::{default_workers, shutdown_signal};

#[derive(Args, Debug, Default)]
pub struct ManagerArgs {
    /// TOML file with any of these options (flags win); slot options go in a `[slots]` table.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Interchange host.
    #[arg(long)]
    interchange: Option<String>,
    /// Interchange manager port.
    #[arg(long)]
    port: Option<u16>,
    /// CPU-only worker slots (default: one per core when no GPU slot is asked for, else 0).
    #[arg(long)]
    workers: Option<usize>,
    /// Whole GPUs: `all`, NVML indices or UUIDs (`0,1`); a GPU listed twice gets two time-shared workers.
    #[arg(long)]
    gpus: Option<String>,
    /// MPS slots on a GPU: `0:50,25,25` = three workers with 50, 25 and 25 % (repeat per GPU).
    #[arg(long)]
    mps: Vec<String>,
    /// Pinned memory limits of a GPU's MPS slots: `0:20G,10G,10G` (repeat per GPU).
    #[arg(long)]
    mps_mem: Vec<String>,
    /// N equal MPS slots on every GPU not otherwise used.
    #[arg(long)]
    mps_split: Option<u32>,
    /// MIG instances: `auto` or MIG UUIDs.
    #[arg(long)]
    mig: Option<String>,
    /// Parsl's form: one worker per entry, e.g. `0,0,1` (use with --gpu-percentage for MPS).
    #[arg(long, value_delimiter = ',')]
    available_accelerators: Vec<String>,
    /// Parsl's form: MPS percentage per --available-accelerators entry, e.g. `50,50,100`.
    #[arg(long, value_delimiter = ',')]
    gpu_percentage: Vec<u8>,
    /// Allow MPS percentages or memory limits on a GPU to sum past the whole.
    #[arg(long)]
    oversubscribe: bool,
    /// Read the GPU inventory from this JSON file instead of NVML (machines without GPUs).
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// The MPS control program.
    #[arg(long)]
    mps_control: Option<PathBuf>,
    /// How MPS memory limits name the device: `ordinal` or `uuid`.
    #[arg(long)]
    mps_mem_key: Option<MemLimitKey>,
    /// Tasks held beyond one per worker (default: one per worker).
    #[arg(long)]
    prefetch: Option<usize>,
    /// Tasks a worker may have queued in its pipe behind the one it runs, while its slot's tasks
    /// run under a millisecond on average (default 16; 0: one task at a time).
    #[arg(long)]
    pipeline_depth: Option<usize>,
    /// Name in the manager table (default: HOST-PID).
    #[arg(long)]
    manager_id: Option<String>,
    /// Batch job this manager belongs to.
    #[arg(long)]
    block_id: Option<String>,
    /// Program that serves as worker, with its arguments (default: `htex worker`).
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    worker_command: Option<Vec<String>>,
    /// A warm runner every slot hosts: `NAME=COMMAND`, e.g.
    /// `llama='python3 -m htex_runner mymodule'` (repeatable; tasks call `NAME:FUNCTION`).
    #[arg(long)]
    runner: Vec<String>,
    /// Start runners with their slot (`eager`: the slot takes tasks once they are ready) or on
    /// first call (`lazy`).
    #[arg(long)]
    runner_start: Option<RunnerStart>,
    /// Seconds a drain (first SIGTERM/SIGINT) waits for running tasks before stopping (default 20).
    #[arg(long)]
    drain_timeout: Option<f64>,
    /// Seconds to keep running tasks and trying to register again after losing the interchange
    /// (0: exit at once; default 60).
    #[arg(long)]
    reconnect_timeout: Option<f64>,
    /// Pin each slot's worker to CPUs: `none`, `block`, `block-reverse`, `alternating`, or
    /// `list:0,1:2-3` (one entry per slot), as Parsl's `cpu_affinity`.
    #[arg(long)]
    cpu_affinity: Option<String>,
    /// CPUs per slot for block, block-reverse and alternating (default: all CPUs split evenly).
    #[arg(long)]
    cores_per_slot: Option<usize>,
    /// Answer tasks without running them (benchmarks the dispatch core; no workers start).
    #[arg(long)]
    zero_worker: bool,
}

/// When runners start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RunnerStart {
    #[default]
    Eager,
    Lazy,
}

/// The TOML form of the same options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagerFile {
    interchange: Option<String>,
    port: Option<u16>,
    workers: Option<usize>,
    prefetch: Option<usize>,
    pipeline_depth: Option<usize>,
    manager_id: Option<String>,
    block_id: Option<String>,
    worker_command: Option<Vec<String>>,
    inventory: Option<PathBuf>,
    mps_control: Option<PathBuf>,
    mps_mem_key: Option<MemLimitKey>,
    runner_start: Option<RunnerStart>,
    reconnect_timeout: Option<f64>,
    drain_timeout: Option<f64>,
    cpu_affinity: Option<String>,
    cores_per_slot: Option<usize>,
    /// Runner name → command line.
    #[serde(default)]
    runners: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    slots: SlotSpec,
}

impl ManagerArgs {
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

/// A list flag given on the command line replaces the file's list.
fn flag_or_file<T: Clone>(flag: &[T], file: Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        file
    } else {
        flag.to_vec()
    }
}

/// Seconds from a flag, as a duration; `flag` names it in the error.
pub(crate) fn seconds(flag: &str, value: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{flag} {value}: give seconds, 0 or more"))
}

fn wants_gpus(spec: &SlotSpec) -> bool {
    spec.gpus.is_some()
        || !spec.mps.is_empty()
        || spec.mps_split.is_some()
        || spec.mig.is_some()
        || !spec.available_accelerators.is_empty()
}

/// The inventory: the simulated file when given, else NVML; `None` (said in one line) without
/// NVML or GPUs.
fn read_inventory(path: Option<&PathBuf>) -> anyhow::Result<Option<Inventory>> {
    let inventory = match path {
        Some(path) => simulated::load_inventory(path)?,
        None => match nvml::open_inventory() {
            Ok(inventory) if !inventory.gpus.is_empty() => inventory,
            Ok(_) => {
                tracing::warn!("NVML reports no GPU on this node; offering CPU slots only");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!("no GPU inventory ({e}); offering CPU slots only");
                return Ok(None);
            }
        },
    };
    for warning in &inventory.warnings {
        tracing::warn!("{warning}");
    }
    Ok(Some(inventory))
}

/// Builds the manager's config from flags and file, planning its slots.
pub fn manager_config(args: &ManagerArgs) -> anyhow::Result<ManagerConfig> {
    let file: ManagerFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{} is not a valid manager config", path.display()))?
        }
        None => ManagerFile::default(),
    };
    let host = args
        .interchange
        .clone()
        .or(file.interchange)
        .unwrap_or_else(|| "127.0.0.1".into());
    let Some(port) = args.port.or(file.port) else {
        bail!("give the interchange's manager port with --port (or `port` in the config file)");
    };
    let mut spec = args.slot_spec(file.slots);
    let workers = args.workers.or(file.workers);
    let inventory_path = args.inventory.clone().or(file.inventory);
    let inventory = if wants_gpus(&spec) || inventory_path.is_some() {
        read_inventory(inventory_path.as_ref())?
    } else {
        None
    };
    let slots = match inventory {
        Some(inventory) if wants_gpus(&spec) => {
            spec.cpu = workers.unwrap_or(0);
            plan(&spec, &inventory)?
        }
        _ => {
            spec = SlotSpec {
                cpu: workers.unwrap_or_else(default_workers),
                ..SlotSpec::default()
            };
            plan(&spec, &Inventory::default())?
        }
    };
    let mut config = ManagerConfig::new(format!("tcp://{host}:{port}"), 0);
    config.prefetch = args.prefetch.or(file.prefetch).unwrap_or(slots.len());
    if let Some(depth) = args.pipeline_depth.or(file.pipeline_depth) {
        config.pipeline_depth = depth;
    }
    config.slots = slots;
    config.block_id = args.block_id.clone().or(file.block_id);
    config.zero_worker = args.zero_worker;
    if let Some(id) = args.manager_id.clone().or(file.manager_id) {
        config.manager_id = id;
    }
    if let Some(command) = args.worker_command.clone().or(file.worker_command) {
        config.worker_command = command;
    }
    if let Some(control) = args.mps_control.clone().or(file.mps_control) {
        config.mps_control = control;
    }
    if let Some(key) = args.mps_mem_key.or(file.mps_mem_key) {
        config.mps_mem_key = key;
    }
    if let Some(value) = args.reconnect_timeout.or(file.reconnect_timeout) {
        config.reconnect_timeout = seconds("reconnect-timeout", value)?;
    }
    if let Some(value) = args.drain_timeout.or(file.drain_timeout) {
        config.drain_timeout = seconds("drain-timeout", value)?;
    }
    if let Some(affinity) = args.cpu_affinity.clone().or(file.cpu_affinity) {
        config.cpu_affinity = affinity.parse()?;
    }
    config.cores_per_slot = args.cores_per_slot.or(file.cores_per_slot);
    config.assign_cpus()?;
    let eager = args.runner_start.or(file.runner_start).unwrap_or_default() == RunnerStart::Eager;
    let mut runners = file.runners;
    for entry in &args.runner {
        let (name, command) = entry
            .split_once('=')
            .filter(|(n, c)| !n.trim().is_empty() && !c.trim().is_empty())
            .with_context(|| format!("--runner `{entry}`: expected NAME=COMMAND"))?;
        runners.insert(
            name.trim().to_string(),
            command.split_whitespace().map(str::to_string).collect(),
        );
    }
    if let Some((name, _)) = runners.iter().find(|(_, command)| command.is_empty()) {
        bail!("runner `{name}` has an empty command");
    }
    config.runners = runners
        .into_iter()
        .map(|(name, command)| (name, htex_protocol::RunnerSpec { command, eager }))
        .collect();
    Ok(config)
}

pub async fn manager(args: ManagerArgs) -> anyhow::Result<ExitCode> {
    let config = manager_config(&args)?;
    for slot in &config.slots {
        tracing::info!("slot {}", crate::cli::describe_slot(&slot.descriptor));
    }
    let manager = Manager::start(config).await?;
    // The first SIGTERM/SIGINT drains (running tasks finish, the rest go back to the
    // interchange); a second one stops at once.
    let stopper = manager.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("draining; signal again to stop at once");
        stopper.drain();
        shutdown_signal().await;
        stopper.stop();
    });
    let id = manager.id().to_string();
    manager
        .wait()
        .await
        .with_context(|| format!("manager {id}"))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../manager/fixtures/inventory")
            .join(name)
    }

    #[test]
    fn toml_file_plans_slots_and_flags_override_it() {
        let dir = std::env::temp_dir().join(format!("htex-manager-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("manager.toml");
        let toml = format!(
            "interchange = \"10.0.0.1\"\nport = 54000\nworkers = 1\ninventory = \"{}\"\nmps_mem_key = \"uuid\"\n\
             [slots]\nmps = [\"0:50,25,25\"]\nmps_mem = [\"0:20G,10G,10G\"]\n",
            fixture("h100.json").display()
        );
        std::fs::write(&file, toml).unwrap();
        let args = ManagerArgs {
            config: Some(file.clone()),
            ..ManagerArgs::default()
        };
        let config = manager_config(&args).unwrap();
        assert_eq!(config.interchange, "tcp://10.0.0.1:54000");
        let kinds: Vec<_> = config
            .slots
            .iter()
            .map(|s| format!("{:?}", s.descriptor.kind))
            .collect();
        assert_eq!(kinds, ["Mps", "Mps", "Mps", "Cpu"]);
        assert_eq!(config.slots[0].pinned_memory_limit, Some(20 << 30));
        assert_eq!(config.mps_mem_key, MemLimitKey::Uuid);

        let args = ManagerArgs {
            config: Some(file),
            mps_split: Some(2),
            mps: vec!["0:70,30".into()],
            port: Some(1),
            ..ManagerArgs::default()
        };
        let err = manager_config(&args).unwrap_err().to_string();
        // The file's --mps-mem (3 limits) no longer matches the flag's 2 slots.
        assert!(
            err.contains("3 memory limit(s)") && err.contains("2 MPS slot(s)"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let err = toml::from_str::<ManagerFile>("prot = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `prot`"), "{err}");
    }
}
