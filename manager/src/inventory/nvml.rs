//! Real NVML behind [`NvmlSource`]: loads `libnvidia-ml.so` through `nvml-wrapper` and answers
//! inventory discovery's questions about this node's GPUs and MIG devices.

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::DeviceAttributes;
use nvml_wrapper::{Device, Nvml};

use super::{
    cores_per_sm, discover, GpuInfo, Inventory, InventoryError, MigInstance, MigLookup, MigMode,
    NvmlSource,
};

/// `NVML_DEVICE_MIG_ENABLE`: the value `nvmlDeviceGetMigMode` reports for an enabled mode.
const NVML_DEVICE_MIG_ENABLE: u32 = 1;

const MIB: u64 = 1024 * 1024;

/// The NVML library, initialised once and shut down on drop. Device handles borrow it, so they
/// are fetched per call rather than stored.
pub struct NvmlLibrary {
    nvml: Nvml,
}

impl NvmlLibrary {
    /// Loads and initialises NVML; fails with [`InventoryError::NvmlUnavailable`] on a node
    /// without the NVIDIA driver.
    pub fn open() -> Result<NvmlLibrary, InventoryError> {
        let nvml = Nvml::init().map_err(|error| {
            InventoryError::NvmlUnavailable(format!(
                "{error}; is the NVIDIA driver installed and libnvidia-ml.so on the library path?"
            ))
        })?;
        Ok(NvmlLibrary { nvml })
    }

    fn gpu(&self, index: u32) -> Result<Device<'_>, InventoryError> {
        self.nvml
            .device_by_index(index)
            .map_err(failed("nvmlDeviceGetHandleByIndex_v2"))
    }
}

/// Discovers this node's GPUs through the real NVML.
pub fn open_inventory() -> Result<Inventory, InventoryError> {
    discover(&NvmlLibrary::open()?)
}

impl NvmlSource for NvmlLibrary {
    fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }

    fn device_count(&self) -> Result<u32, InventoryError> {
        self.nvml
            .device_count()
            .map_err(failed("nvmlDeviceGetCount_v2"))
    }

    fn device(&self, index: u32) -> Result<GpuInfo, InventoryError> {
        let device = self.gpu(index)?;
        Ok(GpuInfo {
            index,
            uuid: device.uuid().map_err(failed("nvmlDeviceGetUUID"))?,
            name: device.name().map_err(failed("nvmlDeviceGetName"))?,
            memory_bytes: device
                .memory_info()
                .map_err(failed("nvmlDeviceGetMemoryInfo_v2"))?
                .total,
            sm_count: sm_count(&device)?,
            mig_mode: mig_mode(&device)?,
            mig_instances: Vec::new(),
        })
    }

    fn max_mig_device_count(&self, index: u32) -> Result<u32, InventoryError> {
        let device = self.gpu(index)?;
        if !mig_mode(&device)?.is_some_and(|mode| mode.current) {
            return Ok(0);
        }
        device
            .mig_device_count()
            .map_err(failed("nvmlDeviceGetMaxMigDeviceCount"))
    }

    fn mig_device(&self, index: u32, mig_index: u32) -> Result<MigLookup, InventoryError> {
        let mig = match self.gpu(index)?.mig_device_by_index(mig_index) {
            Ok(mig) => mig,
            Err(NvmlError::NotFound) => return Ok(MigLookup::NotFound),
            Err(error) => return Err(failed("nvmlDeviceGetMigDeviceHandleByIndex")(error)),
        };
        let attributes = mig
            .attributes()
            .map_err(failed("nvmlDeviceGetAttributes_v2"))?;
        let name = mig.name().map_err(failed("nvmlDeviceGetName"))?;
        Ok(MigLookup::Found(MigInstance {
            index: mig_index,
            uuid: mig.uuid().map_err(failed("nvmlDeviceGetUUID"))?,
            profile: profile_name(&name, &attributes),
            sm_count: attributes.multiprocessor_count,
            memory_bytes: attributes.memory_size_mb * MIB,
        }))
    }
}

/// SMs of a whole GPU: `nvmlDeviceGetAttributes_v2` where the driver answers it for full GPUs,
/// else CUDA cores divided by cores per SM for the compute capability.
fn sm_count(device: &Device<'_>) -> Result<u32, InventoryError> {
    if let Ok(attributes) = device.attributes() {
        if attributes.multiprocessor_count > 0 {
            return Ok(attributes.multiprocessor_count);
        }
    }
    let cores = device
        .num_cores()
        .map_err(failed("nvmlDeviceGetNumGpuCores"))?;
    let capability = device
        .cuda_compute_capability()
        .map_err(failed("nvmlDeviceGetCudaComputeCapability"))?;
    Ok(cores / cores_per_sm(capability.major, capability.minor))
}

/// `None` for GPUs without MIG (`NVML_ERROR_NOT_SUPPORTED`).
fn mig_mode(device: &Device<'_>) -> Result<Option<MigMode>, InventoryError> {
    match device.mig_mode() {
        Ok(mode) => Ok(Some(MigMode {
            current: mode.current == NVML_DEVICE_MIG_ENABLE,
            pending: mode.pending == NVML_DEVICE_MIG_ENABLE,
        })),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(error) => Err(failed("nvmlDeviceGetMigMode")(error)),
    }
}

/// The profile of a MIG device: the token after `MIG ` in its name (`NVIDIA H100 80GB HBM3 MIG
/// 3g.40gb` → `3g.40gb`), else built from its attributes as Slurm does: `[<ci>c.]<gi>g.<GiB>gb`.
fn profile_name(name: &str, attributes: &DeviceAttributes) -> String {
    let from_name = name
        .split_once("MIG ")
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if let Some(profile) = from_name {
        return profile.to_string();
    }
    let gi = attributes.gpu_instance_slice_count;
    let ci = attributes.compute_instance_slice_count;
    let gib = attributes.memory_size_mb.div_ceil(1024);
    if ci > 0 && ci < gi {
        format!("{ci}c.{gi}g.{gib}gb")
    } else {
        format!("{gi}g.{gib}gb")
    }
}

/// Turns an NVML error into an [`InventoryError`] naming the call that failed.
fn failed(call: &'static str) -> impl Fn(NvmlError) -> InventoryError {
    move |error| InventoryError::Nvml {
        call,
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(gi: u32, ci: u32, memory_size_mb: u64) -> DeviceAttributes {
        DeviceAttributes {
            multiprocessor_count: 60,
            shared_copy_engine_count: 3,
            shared_decoder_count: 3,
            shared_encoder_count: 0,
            shared_jpeg_count: 3,
            shared_ofa_count: 0,
            gpu_instance_slice_count: gi,
            compute_instance_slice_count: ci,
            memory_size_mb,
        }
    }

    #[test]
    fn profile_comes_from_the_mig_device_name() {
        let attrs = attributes(3, 3, 40448);
        assert_eq!(
            profile_name("NVIDIA H100 80GB HBM3 MIG 3g.40gb", &attrs),
            "3g.40gb"
        );
        assert_eq!(
            profile_name("NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb", &attrs),
            "1c.3g.40gb"
        );
    }

    #[test]
    fn profile_falls_back_to_attributes() {
        assert_eq!(
            profile_name("NVIDIA H100 80GB HBM3", &attributes(3, 3, 40448)),
            "3g.40gb"
        );
        assert_eq!(profile_name("", &attributes(2, 2, 20096)), "2g.20gb");
        assert_eq!(profile_name("", &attributes(1, 1, 9984)), "1g.10gb");
        assert_eq!(profile_name("", &attributes(3, 1, 40448)), "1c.3g.40gb");
    }

    #[test]
    fn open_fails_cleanly_without_a_driver() {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            eprintln!(
                "skipped: /dev/nvidiactl exists, so this node may have a working NVIDIA driver"
            );
            return;
        }
        match NvmlLibrary::open() {
            Err(InventoryError::NvmlUnavailable(reason)) => assert!(!reason.is_empty()),
            Err(other) => panic!("expected NvmlUnavailable, got {other}"),
            Ok(_) => panic!("NVML opened although /dev/nvidiactl does not exist"),
        }
    }

    #[test]
    fn discovers_the_real_gpus_where_there_are_some() {
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            eprintln!("skipped: no /dev/nvidiactl, so no NVIDIA GPU to enumerate");
            return;
        }
        let inventory = open_inventory().expect("NVML enumeration on a GPU node");
        eprintln!("{inventory:#?}");
        for gpu in &inventory.gpus {
            assert!(gpu.uuid.starts_with("GPU-") && gpu.sm_count > 0 && gpu.memory_bytes > 0);
            for mig in &gpu.mig_instances {
                assert!(mig.uuid.starts_with("MIG-") && mig.sm_count > 0, "{mig:?}");
            }
        }
    }
}
