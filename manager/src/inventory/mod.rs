//! GPU inventory: which GPUs and MIG instances this node has. One enumeration routine,
//! [`discover`], runs over any [`NvmlSource`]: real NVML ([`nvml::NvmlLibrary`]) or a simulated
//! inventory read from JSON ([`simulated::SimulatedNvml`]) that answers as NVML does, gaps
//! between MIG device indices included.

pub mod nvml;
pub mod simulated;

use serde::{Deserialize, Serialize};

/// MIG mode as NVML reports it: the mode in force and the one pending until the next GPU reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigMode {
    pub current: bool,
    pub pending: bool,
}

/// One MIG device (a GPU instance with its compute instance) as a worker can use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigInstance {
    /// Index for `nvmlDeviceGetMigDeviceHandleByIndex` (indices may have gaps).
    pub index: u32,
    /// `MIG-…` UUID, what `CUDA_VISIBLE_DEVICES` takes.
    pub uuid: String,
    /// Profile name such as `3g.40gb`.
    pub profile: String,
    pub sm_count: u32,
    pub memory_bytes: u64,
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index (PCI order; not necessarily CUDA's order: workers get UUIDs, never indices).
    pub index: u32,
    /// `GPU-…` UUID.
    pub uuid: String,
    pub name: String,
    pub memory_bytes: u64,
    pub sm_count: u32,
    /// `None` when the GPU does not support MIG.
    pub mig_mode: Option<MigMode>,
    /// MIG devices present now (empty unless MIG is currently enabled).
    pub mig_instances: Vec<MigInstance>,
}

impl GpuInfo {
    pub fn mig_enabled(&self) -> bool {
        self.mig_mode.is_some_and(|m| m.current)
    }
}

/// What a node has, and what a manager should tell its operator about it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub gpus: Vec<GpuInfo>,
    /// The driver version, when known.
    pub driver: Option<String>,
    /// Things worth a warning line (pending MIG mode changes, MIG GPUs without instances, ...).
    pub warnings: Vec<String>,
}

impl Inventory {
    /// A GPU by NVML index or UUID.
    pub fn gpu(&self, key: &str) -> Option<&GpuInfo> {
        self.gpus
            .iter()
            .find(|g| g.uuid == key || g.index.to_string() == key)
    }
}

/// Why an inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("NVML is not available ({0})")]
    NvmlUnavailable(String),
    #[error("NVML call {call} failed: {reason}")]
    Nvml { call: &'static str, reason: String },
    #[error("cannot read the simulated inventory {path}: {reason}")]
    Simulated { path: String, reason: String },
    #[error("NVML reports no GPU on this node")]
    NoGpu,
}

/// A MIG device slot as NVML answers `nvmlDeviceGetMigDeviceHandleByIndex`.
#[derive(Debug, Clone, PartialEq)]
pub enum MigLookup {
    Found(MigInstance),
    /// `NVML_ERROR_NOT_FOUND`: no device at this index; later indices may still hold one.
    NotFound,
}

/// The NVML calls inventory discovery needs. Indices are NVML's.
pub trait NvmlSource {
    fn driver_version(&self) -> Option<String>;
    fn device_count(&self) -> Result<u32, InventoryError>;
    /// The GPU's own facts; `mig_instances` is left empty (filled by [`discover`]).
    fn device(&self, index: u32) -> Result<GpuInfo, InventoryError>;
    /// `nvmlDeviceGetMaxMigDeviceCount`: how many MIG devices there could be (0 when MIG is off).
    fn max_mig_device_count(&self, index: u32) -> Result<u32, InventoryError>;
    fn mig_device(&self, index: u32, mig_index: u32) -> Result<MigLookup, InventoryError>;
}

/// Enumerates every GPU and every MIG device, skipping empty MIG indices rather than stopping at
/// the first gap (Slurm's mistake), and notes what an operator should know.
pub fn discover(source: &dyn NvmlSource) -> Result<Inventory, InventoryError> {
    let mut inventory = Inventory {
        driver: source.driver_version(),
        ..Inventory::default()
    };
    for index in 0..source.device_count()? {
        let mut gpu = source.device(index)?;
        if let Some(mode) = gpu.mig_mode {
            if mode.pending != mode.current {
                inventory.warnings.push(format!(
                    "GPU {index} ({}): MIG mode is {} but {} is pending until the GPU is reset; using the current mode",
                    gpu.uuid,
                    on_off(mode.current),
                    on_off(mode.pending)
                ));
            }
        }
        if gpu.mig_enabled() {
            for mig_index in 0..source.max_mig_device_count(index)? {
                if let MigLookup::Found(instance) = source.mig_device(index, mig_index)? {
                    gpu.mig_instances.push(instance);
                }
            }
            if gpu.mig_instances.is_empty() {
                inventory.warnings.push(format!(
                    "GPU {index} ({}): MIG is enabled but no MIG instance exists; CUDA cannot use this GPU, so it is not offered",
                    gpu.uuid
                ));
            }
        }
        inventory.gpus.push(gpu);
    }
    Ok(inventory)
}

fn on_off(enabled: bool) -> &'static str {
    if enabled {
        "enabled"
    } else {
        "disabled"
    }
}

/// CUDA cores per streaming multiprocessor for a compute capability, to turn NVML's core count into an
/// SM count on GPUs where NVML gives no SM count directly.
pub fn cores_per_sm(major: i32, minor: i32) -> u32 {
    match (major, minor) {
        (7, _) => 64,
        (8, 0) => 64,
        (6, 0) => 64,
        _ => 128,
    }
}
