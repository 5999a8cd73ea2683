//! The environment a slot's worker starts with: its GPU confinement (set before the process
//! starts, as CUDA reads it once) and `HTEX_SLOT_*` variables telling tasks what they got.

use std::path::Path;

use htex_protocol::SlotKind;
use serde::Deserialize;

use crate::plan::PlannedSlot;

/// How `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` names the device: by UUID or by ordinal `0` (the only
/// device an MPS client of a per-GPU daemon sees). See docs/results/gpu-slots.md for which one the
/// driver honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemLimitKey {
    Uuid,
    #[default]
    Ordinal,
}

impl std::str::FromStr for MemLimitKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uuid" => Ok(MemLimitKey::Uuid),
            "ordinal" => Ok(MemLimitKey::Ordinal),
            other => Err(format!(
                "`{other}` is not a memory-limit key; use uuid or ordinal"
            )),
        }
    }
}

/// Variables for one slot. `mps_pipe` is its GPU's daemon (MPS slots); `empty_pipe` is the empty
/// private directory that keeps whole-GPU and MIG slots away from any site MPS daemon.
pub fn slot_env(
    slot: &PlannedSlot,
    mps_pipe: Option<&Path>,
    empty_pipe: Option<&Path>,
    key: MemLimitKey,
) -> Vec<(String, String)> {
    let d = &slot.descriptor;
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| env.push((k.to_string(), v));
    match d.kind {
        // A CPU slot sees no GPU at all.
        SlotKind::Cpu => set("CUDA_VISIBLE_DEVICES", String::new()),
        SlotKind::Gpu | SlotKind::Mig | SlotKind::Mps => {
            set(
                "CUDA_VISIBLE_DEVICES",
                d.gpu_uuid.clone().unwrap_or_default(),
            );
        }
    }
    match d.kind {
        SlotKind::Mps => {
            if let Some(pipe) = mps_pipe {
                set("CUDA_MPS_PIPE_DIRECTORY", pipe.display().to_string());
            }
            if let Some(p) = d.mps_percentage {
                set("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", p.to_string());
            }
            if let Some(limit) = slot.pinned_memory_limit {
                let device = match key {
                    MemLimitKey::Uuid => d.gpu_uuid.clone().unwrap_or_default(),
                    MemLimitKey::Ordinal => "0".into(),
                };
                set(
                    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
                    format!("{device}={}M", limit >> 20),
                );
            }
        }
        SlotKind::Gpu | SlotKind::Mig => {
            if let Some(pipe) = empty_pipe {
                set("CUDA_MPS_PIPE_DIRECTORY", pipe.display().to_string());
            }
        }
        SlotKind::Cpu => {}
    }
    set("HTEX_SLOT_INDEX", d.index.to_string());
    set("HTEX_SLOT_KIND", d.kind.as_str().to_string());
    let optional = [
        ("HTEX_SLOT_GPU_UUID", d.gpu_uuid.clone()),
        ("HTEX_SLOT_GPU_INDEX", d.gpu_index.map(|v| v.to_string())),
        (
            "HTEX_SLOT_MPS_PERCENTAGE",
            d.mps_percentage.map(|v| v.to_string()),
        ),
        (
            "HTEX_SLOT_MEMORY_BYTES",
            d.memory_bytes.map(|v| v.to_string()),
        ),
        ("HTEX_SLOT_MIG_PROFILE", d.mig_profile.clone()),
        ("HTEX_SLOT_SM_COUNT", d.sm_count.map(|v| v.to_string())),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            set(k, v);
        }
    }
    if !d.cpus.is_empty() {
        // As Parsl does for pinned workers: OpenMP-style pools size themselves to the slot.
        set("HTEX_SLOT_CPUS", crate::affinity::format_cpu_list(&d.cpus));
        set("OMP_NUM_THREADS", d.cpus.len().to_string());
    }
    env
}
