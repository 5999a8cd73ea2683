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

impl SlotKind {
    /// The kind's name as `HTEX_SLOT_KIND` and `htex status` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotKind::Cpu => "cpu",
            SlotKind::Gpu => "gpu",
            SlotKind::Mps => "mps",
            SlotKind::Mig => "mig",
        }
    }
}

impl std::fmt::Display for SlotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

    /// Orders slots from least to most capable: CPU, MIG, MPS, whole GPU, then by SMs. The
    /// interchange reserves, and a manager assigns, the least capable slot that fits a task, so
    /// bigger slots stay free for tasks that need them.
    pub fn capability(&self) -> (u8, u32) {
        let rank = match self.kind {
            SlotKind::Cpu => 0,
            SlotKind::Mig => 1,
            SlotKind::Mps => 2,
            SlotKind::Gpu => 3,
        };
        (rank, self.sm_count.unwrap_or(0))
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

/// One line per slot, as `htex status` prints it: `2 mps GPU-… (GPU 0) 25% 32 SMs 10.0 GiB`.
impl std::fmt::Display for SlotDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.index, self.kind)?;
        if let Some(uuid) = &self.gpu_uuid {
            write!(f, " {uuid}")?;
        }
        if let Some(index) = self.gpu_index {
            write!(f, " (GPU {index})")?;
        }
        if let Some(profile) = &self.mig_profile {
            write!(f, " {profile}")?;
        }
        if let Some(p) = self.mps_percentage {
            write!(f, " {p}%")?;
        }
        if let Some(sms) = self.sm_count {
            write!(f, " {sms} SMs")?;
        }
        if let Some(bytes) = self.memory_bytes {
            write!(f, " {:.1} GiB", bytes as f64 / (1u64 << 30) as f64)?;
        }
        if !self.cpus.is_empty() {
            write!(f, " cpus {}", format_cpu_list(&self.cpus))?;
        }
        Ok(())
    }
}

/// A CPU set as Linux lists it: `0-3,8,10-11`.
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
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

    /// Why no slot of any manager could ever satisfy the request, if none could: checked when
    /// a task is submitted, so an impossible request is `BadRequest` at once.
    pub fn impossible(&self) -> Option<String> {
        let gpu = self.gpu
            || self.whole_gpu
            || self.min_mps_percentage.is_some()
            || self.min_sm_count.is_some()
            || self.min_gpu_memory_bytes.is_some()
            || self.mig_profile.is_some();
        if let Some(p) = self.min_mps_percentage.filter(|&p| p > 100) {
            return Some(format!(
                "min_mps_percentage is {p}; a slot has at most 100 % of a GPU"
            ));
        }
        if self.cpu_only && gpu {
            return Some(format!("`{self}` asks for a CPU-only slot and for a GPU"));
        }
        if self.whole_gpu && self.mig_profile.is_some() {
            return Some(format!(
                "`{self}` asks for a whole GPU and for a MIG instance"
            ));
        }
        None
    }
}

/// The fields a request sets, as `gpu, min_mps_percentage=50`; `any slot` for none.
impl std::fmt::Display for ResourceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let mut flag = |set: bool, name: &str| {
            if set {
                parts.push(name.to_string());
            }
        };
        flag(self.gpu, "gpu");
        flag(self.whole_gpu, "whole_gpu");
        flag(self.cpu_only, "cpu_only");
        if let Some(p) = self.min_mps_percentage {
            parts.push(format!("min_mps_percentage={p}"));
        }
        if let Some(n) = self.min_sm_count {
            parts.push(format!("min_sm_count={n}"));
        }
        if let Some(b) = self.min_gpu_memory_bytes {
            parts.push(format!("min_gpu_memory_bytes={b}"));
        }
        if let Some(p) = &self.mig_profile {
            parts.push(format!("mig_profile={p}"));
        }
        if parts.is_empty() {
            f.write_str("any slot")
        } else {
            f.write_str(&parts.join(", "))
        }
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
    fn requests_read_as_their_set_fields() {
        let request = ResourceRequest {
            gpu: true,
            mig_profile: Some("1g.10gb".into()),
            ..Default::default()
        };
        assert_eq!(request.to_string(), "gpu, mig_profile=1g.10gb");
        assert_eq!(ResourceRequest::default().to_string(), "any slot");
    }

    #[test]
    fn impossible_requests_are_named() {
        let over = ResourceRequest {
            min_mps_percentage: Some(101),
            ..Default::default()
        };
        assert!(over.impossible().unwrap().contains("101"));
        let both = ResourceRequest {
            cpu_only: true,
            whole_gpu: true,
            ..Default::default()
        };
        assert!(both.impossible().is_some());
        let fine = ResourceRequest {
            min_mps_percentage: Some(100),
            ..Default::default()
        };
        assert_eq!(fine.impossible(), None);
    }

    #[test]
    fn slots_and_cpu_lists_print_for_people() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        let slot = SlotDescriptor {
            kind: SlotKind::Mps,
            gpu_uuid: Some("GPU-1".into()),
            gpu_index: Some(0),
            mps_percentage: Some(25),
            sm_count: Some(32),
            cpus: vec![4, 5],
            ..SlotDescriptor::cpu(2)
        };
        assert_eq!(slot.to_string(), "2 mps GPU-1 (GPU 0) 25% 32 SMs cpus 4-5");
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
