//! A simulated NVML read from JSON, for tests and for nodes without GPUs. The file models what
//! NVML answers (MIG index gaps, a zero maximum MIG device count while MIG is off), not the
//! finished inventory, so [`discover`] runs the same code over it as over real NVML.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use super::{
    discover, GpuInfo, Inventory, InventoryError, MigInstance, MigLookup, MigMode, NvmlSource,
};

/// What the JSON names "inline" input when it did not come from a file.
const INLINE: &str = "<inline JSON>";

/// NVML's answers for one node, as loaded from a JSON file such as
/// `manager/fixtures/inventory/h100-mig.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedNvml {
    driver_version: Option<String>,
    devices: Vec<SimulatedGpu>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulatedGpu {
    index: u32,
    uuid: String,
    name: String,
    memory_bytes: u64,
    sm_count: u32,
    /// `null` models `NVML_ERROR_NOT_SUPPORTED` (a GPU without MIG).
    mig_mode: Option<SimulatedMigMode>,
    /// The GPU's MIG capacity (7 on H100). NVML reports it only while MIG is on, and 0 otherwise.
    #[serde(default)]
    max_mig_device_count: u32,
    #[serde(default)]
    mig_devices: Vec<SimulatedMigDevice>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulatedMigMode {
    current: bool,
    pending: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulatedMigDevice {
    index: u32,
    uuid: String,
    profile: String,
    sm_count: u32,
    memory_bytes: u64,
}

impl SimulatedNvml {
    /// Reads and validates a simulated NVML file.
    pub fn load(path: &Path) -> Result<SimulatedNvml, InventoryError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| InventoryError::Simulated {
            path: origin.clone(),
            reason: error.to_string(),
        })?;
        Self::parse(&text, &origin)
    }

    /// Parses and validates a simulated NVML from JSON text.
    pub fn from_json(text: &str) -> Result<SimulatedNvml, InventoryError> {
        Self::parse(text, INLINE)
    }

    fn parse(text: &str, origin: &str) -> Result<SimulatedNvml, InventoryError> {
        let invalid = |reason: String| InventoryError::Simulated {
            path: origin.to_string(),
            reason,
        };
        let mut nvml: SimulatedNvml =
            serde_json::from_str(text).map_err(|error| invalid(error.to_string()))?;
        nvml.validate().map_err(invalid)?;
        nvml.devices.sort_by_key(|gpu| gpu.index);
        Ok(nvml)
    }

    /// Checks what real NVML guarantees, naming the offending field.
    fn validate(&self) -> Result<(), String> {
        let count = self.devices.len();
        let mut indices = HashSet::new();
        let mut uuids = HashSet::new();
        for (position, gpu) in self.devices.iter().enumerate() {
            let field = format!("devices[{position}]");
            if gpu.index as usize >= count || !indices.insert(gpu.index) {
                return Err(format!(
                    "{field}.index: {} is out of range or repeated; NVML numbers {count} GPUs 0 to {}",
                    gpu.index,
                    count.saturating_sub(1)
                ));
            }
            check_uuid(&format!("{field}.uuid"), &gpu.uuid, "GPU-", &mut uuids)?;
            gpu.validate_mig(&field, &mut uuids)?;
        }
        Ok(())
    }

    fn gpu(&self, index: u32) -> Result<&SimulatedGpu, InventoryError> {
        self.devices
            .get(index as usize)
            .ok_or_else(|| InventoryError::Nvml {
                call: "nvmlDeviceGetHandleByIndex_v2",
                reason: format!("NVML_ERROR_INVALID_ARGUMENT: no GPU at index {index}"),
            })
    }
}

impl SimulatedGpu {
    fn mig_enabled(&self) -> bool {
        self.mig_mode.is_some_and(|mode| mode.current)
    }

    fn validate_mig(&self, field: &str, uuids: &mut HashSet<String>) -> Result<(), String> {
        if self.mig_mode.is_none() && self.max_mig_device_count > 0 {
            return Err(format!(
                "{field}.max_mig_device_count: {} on a GPU without MIG (mig_mode is null); use 0",
                self.max_mig_device_count
            ));
        }
        if !self.mig_enabled() && !self.mig_devices.is_empty() {
            return Err(format!(
                "{field}.mig_devices: {} listed but MIG is not currently enabled (mig_mode.current); NVML has none then",
                self.mig_devices.len()
            ));
        }
        let mut indices = HashSet::new();
        for (position, mig) in self.mig_devices.iter().enumerate() {
            let mig_field = format!("{field}.mig_devices[{position}]");
            if mig.index >= self.max_mig_device_count || !indices.insert(mig.index) {
                return Err(format!(
                    "{mig_field}.index: {} is repeated or not below {field}.max_mig_device_count ({})",
                    mig.index, self.max_mig_device_count
                ));
            }
            check_uuid(&format!("{mig_field}.uuid"), &mig.uuid, "MIG-", uuids)?;
        }
        Ok(())
    }
}

fn check_uuid(
    field: &str,
    uuid: &str,
    prefix: &str,
    seen: &mut HashSet<String>,
) -> Result<(), String> {
    if !uuid.starts_with(prefix) || uuid.len() == prefix.len() {
        return Err(format!("{field}: `{uuid}` is not a UUID of the form {prefix}xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"));
    }
    if !seen.insert(uuid.to_string()) {
        return Err(format!(
            "{field}: `{uuid}` appears more than once; UUIDs are unique"
        ));
    }
    Ok(())
}

/// Loads a simulated NVML file and discovers the inventory it describes.
pub fn load_inventory(path: &Path) -> Result<Inventory, InventoryError> {
    discover(&SimulatedNvml::load(path)?)
}

impl NvmlSource for SimulatedNvml {
    fn driver_version(&self) -> Option<String> {
        self.driver_version.clone()
    }

    fn device_count(&self) -> Result<u32, InventoryError> {
        Ok(self.devices.len() as u32)
    }

    fn device(&self, index: u32) -> Result<GpuInfo, InventoryError> {
        let gpu = self.gpu(index)?;
        Ok(GpuInfo {
            index: gpu.index,
            uuid: gpu.uuid.clone(),
            name: gpu.name.clone(),
            memory_bytes: gpu.memory_bytes,
            sm_count: gpu.sm_count,
            mig_mode: gpu.mig_mode.map(|mode| MigMode {
                current: mode.current,
                pending: mode.pending,
            }),
            mig_instances: Vec::new(),
        })
    }

    fn max_mig_device_count(&self, index: u32) -> Result<u32, InventoryError> {
        let gpu = self.gpu(index)?;
        Ok(if gpu.mig_enabled() {
            gpu.max_mig_device_count
        } else {
            0
        })
    }

    fn mig_device(&self, index: u32, mig_index: u32) -> Result<MigLookup, InventoryError> {
        let max = self.max_mig_device_count(index)?;
        if mig_index >= max {
            return Err(InventoryError::Nvml {
                call: "nvmlDeviceGetMigDeviceHandleByIndex",
                reason: format!(
                    "NVML_ERROR_INVALID_ARGUMENT: MIG index {mig_index} of GPU {index} is not below its maximum MIG device count {max}"
                ),
            });
        }
        let found = self
            .gpu(index)?
            .mig_devices
            .iter()
            .find(|mig| mig.index == mig_index);
        Ok(match found {
            Some(mig) => MigLookup::Found(MigInstance {
                index: mig.index,
                uuid: mig.uuid.clone(),
                profile: mig.profile.clone(),
                sm_count: mig.sm_count,
                memory_bytes: mig.memory_bytes,
            }),
            None => MigLookup::NotFound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/inventory")
            .join(name)
    }

    fn inventory(name: &str) -> Inventory {
        load_inventory(&fixture(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    #[test]
    fn mig_gaps_are_skipped_not_a_stop() {
        let inventory = inventory("h100-mig.json");
        assert_eq!(inventory.driver.as_deref(), Some("550.90.07"));
        assert!(inventory.warnings.is_empty(), "{:?}", inventory.warnings);
        let migs = &inventory.gpus[0].mig_instances;
        let found: Vec<_> = migs.iter().map(|m| (m.index, m.profile.as_str())).collect();
        let expected = [
            (0, "3g.40gb"),
            (1, "2g.20gb"),
            (3, "1g.10gb"),
            (4, "1g.10gb"),
        ];
        assert_eq!(found, expected);
        assert_eq!(migs[0].sm_count, 60);
        let disabled = inventory.gpu("1").unwrap();
        assert!(disabled
            .mig_mode
            .is_some_and(|mode| !mode.current && !mode.pending));
        assert!(disabled.mig_instances.is_empty());
    }

    #[test]
    fn answers_as_nvml_does() {
        let nvml = SimulatedNvml::load(&fixture("h100-mig.json")).unwrap();
        assert_eq!(nvml.max_mig_device_count(0).unwrap(), 7);
        assert_eq!(
            nvml.max_mig_device_count(1).unwrap(),
            0,
            "NVML reports 0 with MIG off"
        );
        assert_eq!(nvml.mig_device(0, 2).unwrap(), MigLookup::NotFound);
        assert_eq!(nvml.mig_device(0, 6).unwrap(), MigLookup::NotFound);
        let beyond = nvml.mig_device(0, 7).unwrap_err().to_string();
        assert!(beyond.contains("INVALID_ARGUMENT"), "{beyond}");
        assert!(nvml.mig_device(1, 0).is_err());
        assert!(nvml.device(2).is_err());
    }

    #[test]
    fn mig_without_instances_and_pending_mode_are_warned_about() {
        let empty = inventory("mig-no-instances.json");
        assert!(empty.gpus[0].mig_enabled() && empty.gpus[0].mig_instances.is_empty());
        assert_eq!(empty.warnings.len(), 1);
        assert!(
            empty.warnings[0].contains("no MIG instance"),
            "{}",
            empty.warnings[0]
        );
        let pending = inventory("mig-pending.json");
        assert!(!pending.gpus[0].mig_enabled());
        assert_eq!(pending.warnings.len(), 1);
        assert!(
            pending.warnings[0].contains("pending"),
            "{}",
            pending.warnings[0]
        );
    }

    #[test]
    fn whole_gpu_fixtures_load() {
        let single = inventory("h100.json");
        let gpu = &single.gpus[0];
        assert_eq!(
            (single.gpus.len(), gpu.sm_count, gpu.memory_bytes),
            (1, 132, 85_520_809_984)
        );
        let two = inventory("two-gpus.json");
        assert_eq!(two.gpus.len(), 2);
        assert_ne!(two.gpus[0].uuid, two.gpus[1].uuid);
        assert!(single.warnings.is_empty() && two.warnings.is_empty());
    }

    /// One GPU with `fields` added.
    fn one_gpu(fields: &str) -> String {
        let gpu =
            r#""index": 0, "uuid": "GPU-1", "name": "H100", "memory_bytes": 1, "sm_count": 132"#;
        format!(r#"{{"devices": [{{{gpu}, {fields}}}]}}"#)
    }

    #[test]
    fn malformed_files_name_the_field() {
        let mig = r#""max_mig_device_count": 7, "mig_devices": [{"index": 7, "uuid": "MIG-1", "profile": "1g.10gb", "sm_count": 16, "memory_bytes": 1}]"#;
        let on = format!(r#""mig_mode": {{"current": true, "pending": true}}, {mig}"#);
        let cases = [
            (
                one_gpu(r#""mig_mode": null, "colour": 1"#),
                "unknown field `colour`",
            ),
            (
                r#"{"devices": [{"index": 0}]}"#.to_string(),
                "missing field `uuid`",
            ),
            (
                one_gpu(r#""mig_mode": null"#).replace("GPU-1", "gpu-1"),
                "devices[0].uuid",
            ),
            (
                one_gpu(r#""mig_mode": null"#).replace(r#""index": 0"#, r#""index": 1"#),
                "devices[0].index",
            ),
            (one_gpu(&on), "devices[0].mig_devices[0].index"),
            (
                one_gpu(&on.replace("true", "false")),
                "devices[0].mig_devices:",
            ),
        ];
        for (json, expected) in &cases {
            let error = SimulatedNvml::from_json(json)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected) && error.contains(INLINE),
                "{error} lacks {expected}"
            );
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let error = load_inventory(&fixture("no-such-file.json"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no-such-file.json"), "{error}");
    }
}
