//! Worker slots as managers advertise them, and the resources a task asks of a slot.

use serde::{Deserialize, Serialize};

/// What confines a slot's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SlotKind {
    /// No accelerator.
    Cpu,
    /// A whole GPU.
    Gpu,
    /// A CUDA MPS client with an active-thread percentage of one GPU.
    Mps,
    /// A MIG instance.
    Mig,
}

/// One worker slot of a manager: the unit a task runs in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotDescriptor {
    /// The slot's index within its manager.
    pub index: u32,
    pub kind: SlotKind,
    /// UUID of the GPU (or MIG instance) the worker sees, as given to `CUDA_VISIBLE_DEVICES`.
    pub gpu_uuid: Option<String>,
    /// NVML index of the physical GPU, for display only (workers get UUIDs).
    pub gpu_index: Option<u32>,
    /// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` for MPS slots.
    pub mps_percentage: Option<u8>,
    /// GPU memory the slot may use, in bytes (the device's memory, the MIG instance's, or the MPS
    /// pinned limit).
    pub memory_bytes: Option<u64>,
    /// MIG profile name, e.g. `3g.40gb`.
    pub mig_profile: Option<String>,
    /// Streaming multiprocessors the slot can use.
    pub sm_count: Option<u32>,
    /// CPUs the slot's worker is confined to (empty: not pinned).
    #[serde(default)]
    pub cpus: Vec<u32>,
}

impl SlotDescriptor {
    /// A CPU-only slot.
    pub fn cpu(index: u32) -> Self {
        SlotDescriptor {
            index,
            kind: SlotKind::Cpu,
            gpu_uuid: None,
            gpu_index: None,
            mps_percentage: None,
            memory_bytes: None,
            mig_profile: None,
            sm_count: None,
            cpus: Vec::new(),
        }
    }

    /// Whether a task with these resource needs may run in this slot.
    pub fn satisfies(&self, request: &ResourceRequest) -> bool {
        let is_gpu = self.kind != SlotKind::Cpu;
        if request.cpu_only && is_gpu {
            return false;
        }
        if (request.gpu || request.whole_gpu) && !is_gpu {
            return false;
        }
        if request.whole_gpu && self.kind != SlotKind::Gpu {
            return false;
        }
        let at_least = |have: Option<u64>, want: Option<u64>| match want {
            None => true,
            Some(w) => have.is_some_and(|h| h >= w),
        };
        let percentage = match self.kind {
            SlotKind::Gpu => Some(100),
            _ => self.mps_percentage.map(u64::from),
        };
        at_least(percentage, request.min_mps_percentage.map(u64::from))
            && at_least(
                self.sm_count.map(u64::from),
                request.min_sm_count.map(u64::from),
            )
            && at_least(self.memory_bytes, request.min_gpu_memory_bytes)
            && match &request.mig_profile {
                None => true,
                Some(p) => self.kind == SlotKind::Mig && self.mig_profile.as_deref() == Some(p),
            }
    }
}

/// What a task needs of a slot. The default asks for nothing and runs anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ResourceRequest {
    /// Any GPU slot (whole, MPS or MIG).
    #[serde(default)]
    pub gpu: bool,
    /// A whole GPU.
    #[serde(default)]
    pub whole_gpu: bool,
    #[serde(default)]
    pub min_mps_percentage: Option<u8>,
    #[serde(default)]
    pub min_sm_count: Option<u32>,
    #[serde(default)]
    pub min_gpu_memory_bytes: Option<u64>,
    #[serde(default)]
    pub mig_profile: Option<String>,
    /// A slot without any accelerator.
    #[serde(default)]
    pub cpu_only: bool,
}

impl ResourceRequest {
    /// True when the request asks for nothing, so any slot will do.
    pub fn is_any(&self) -> bool {
        *self == ResourceRequest::default()
    }
}

/// Where a task ran: a manager and one of its slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRef {
    pub manager: String,
    pub slot: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_slot_takes_plain_tasks_and_refuses_gpu_requests() {
        let slot = SlotDescriptor::cpu(0);
        assert!(slot.satisfies(&ResourceRequest::default()));
        assert!(slot.satisfies(&ResourceRequest {
            cpu_only: true,
            ..Default::default()
        }));
        assert!(!slot.satisfies(&ResourceRequest {
            gpu: true,
            ..Default::default()
        }));
    }

    #[test]
    fn mps_slot_matches_percentage_and_memory() {
        let slot = SlotDescriptor {
            kind: SlotKind::Mps,
            mps_percentage: Some(25),
            memory_bytes: Some(10 << 30),
            sm_count: Some(32),
            ..SlotDescriptor::cpu(1)
        };
        let want = |p: u8| ResourceRequest {
            min_mps_percentage: Some(p),
            ..Default::default()
        };
        assert!(slot.satisfies(&want(25)));
        assert!(!slot.satisfies(&want(26)));
        assert!(!slot.satisfies(&ResourceRequest {
            whole_gpu: true,
            ..Default::default()
        }));
        assert!(!slot.satisfies(&ResourceRequest {
            min_gpu_memory_bytes: Some(11 << 30),
            ..Default::default()
        }));
    }
}

/// How a slot starts one warm runner. Managers pass their runners to workers in the
/// `HTEX_RUNNERS` environment variable, as JSON mapping each name to its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerSpec {
    pub command: Vec<String>,
    /// Start with the worker (the slot takes tasks once the runner is ready) or on first call.
    #[serde(default)]
    pub eager: bool,
}
