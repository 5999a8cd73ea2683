//! `htex manager`: its flags (clap) become `ManagerOverrides`; the manager crate lays them over
//! the optional TOML file and plans the slots (`ManagerConfig::from_sources`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use htex_manager::{
    Manager, ManagerConfig, ManagerFile, ManagerOverrides, MemLimitKey, RunnerStart,
};

use crate::common::shutdown_signal;

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
    /// Offer CPU slots when GPU slots are asked for but NVML is not available (otherwise that
    /// is an error).
    #[arg(long)]
    allow_cpu_fallback: bool,
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
    #[arg(long, value_name = "eager|lazy")]
    runner_start: Option<RunnerStart>,
    /// Seconds a drain (first SIGTERM/SIGINT) waits for running tasks before stopping (default 20).
    #[arg(long)]
    drain_timeout: Option<f64>,
    /// Seconds between NVML samples of the slots' GPUs, reported to an interchange that
    /// records events (default 5; 0: none).
    #[arg(long)]
    gpu_sample_period: Option<f64>,
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
    /// CURVE: the interchange's public key (`server.key`), with --key.
    #[arg(long, value_name = "FILE")]
    server_key: Option<PathBuf>,
    /// CURVE: this manager's own secret key file (`NAME.key_secret`, mode 0600); its public key
    /// must be in the interchange's `managers/` directory.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

impl ManagerArgs {
    /// The flags as overrides of the file's options.
    fn overrides(&self) -> ManagerOverrides {
        ManagerOverrides {
            interchange: self.interchange.clone(),
            port: self.port,
            workers: self.workers,
            gpus: self.gpus.clone(),
            mps: self.mps.clone(),
            mps_mem: self.mps_mem.clone(),
            mps_split: self.mps_split,
            mig: self.mig.clone(),
            available_accelerators: self.available_accelerators.clone(),
            gpu_percentage: self.gpu_percentage.clone(),
            oversubscribe: self.oversubscribe,
            inventory: self.inventory.clone(),
            allow_cpu_fallback: self.allow_cpu_fallback,
            mps_control: self.mps_control.clone(),
            mps_mem_key: self.mps_mem_key,
            prefetch: self.prefetch,
            pipeline_depth: self.pipeline_depth,
            manager_id: self.manager_id.clone(),
            block_id: self.block_id.clone(),
            worker_command: self.worker_command.clone(),
            runners: self.runner.clone(),
            runner_start: self.runner_start,
            drain_timeout: self.drain_timeout,
            gpu_sample_period: self.gpu_sample_period,
            reconnect_timeout: self.reconnect_timeout,
            cpu_affinity: self.cpu_affinity.clone(),
            cores_per_slot: self.cores_per_slot,
            zero_worker: self.zero_worker,
            server_key: self.server_key.clone(),
            key: self.key.clone(),
        }
    }
}

/// `htex worker` of this very executable.
fn this_worker() -> Vec<String> {
    let exe = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "htex".into());
    vec![exe, "worker".into()]
}

/// Builds the manager's config from flags and file, planning its slots.
pub fn manager_config(args: &ManagerArgs) -> anyhow::Result<ManagerConfig> {
    let file = match &args.config {
        Some(path) => ManagerFile::load(path)?,
        None => ManagerFile::default(),
    };
    Ok(ManagerConfig::from_sources(
        file,
        &args.overrides(),
        this_worker(),
    )?)
}

pub async fn manager(args: ManagerArgs) -> anyhow::Result<ExitCode> {
    let config = manager_config(&args)?;
    for slot in &config.slots {
        tracing::info!("slot {}", slot.descriptor);
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
