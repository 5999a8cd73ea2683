//! The GPU sampler: a thread that reads NVML every `gpu_sample_period` for each GPU (or MIG
//! instance) the slots use: utilization, memory, GPM SM activity where the GPU has GPM, and the
//! GPU memory of every compute process (MPS clients included), which the manager maps to slots
//! by their workers' process trees. Per-client SM use is not readable under MPS (NVML gives it
//! to the MPS server), so a slot's compute is what its tasks' run times say, not a sample.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use htex_protocol::GpuSample;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::{Device, Nvml};

/// A GPU process's memory, as one sample saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessMemory {
    pub pid: u32,
    pub bytes: u64,
}

/// One round of samples.
#[derive(Debug, Clone, Default)]
pub(crate) struct GpuRound {
    pub gpus: Vec<GpuSample>,
    /// Compute processes on the sampled GPUs.
    pub processes: Vec<ProcessMemory>,
}

/// The sampling thread; it stops when dropped.
pub(crate) struct GpuSampler {
    stop: Arc<AtomicBool>,
}

impl Drop for GpuSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl GpuSampler {
    /// Samples `uuids` every `period`, handing each round to `deliver` (which returns false
    /// once nobody listens). `None` when NVML cannot be opened (no driver, a simulated
    /// inventory): nothing is sampled, and the reason is logged once.
    pub fn start(
        uuids: BTreeSet<String>,
        period: Duration,
        deliver: impl Fn(GpuRound) -> bool + Send + 'static,
    ) -> Option<GpuSampler> {
        if uuids.is_empty() || period.is_zero() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("htex-gpu-sampler".into())
            .spawn(move || {
                let nvml = match Nvml::init() {
                    Ok(nvml) => nvml,
                    Err(e) => {
                        tracing::info!("no GPU samples: NVML cannot be opened ({e})");
                        return;
                    }
                };
                let mut sampler = Sampler::new(&nvml, uuids);
                while !stopped.load(Ordering::Relaxed) {
                    if !deliver(sampler.round()) {
                        return;
                    }
                    sleep_unless(&stopped, period);
                }
            });
        match spawned {
            Ok(_) => Some(GpuSampler { stop }),
            Err(e) => {
                tracing::warn!("no GPU samples: cannot start the sampling thread ({e})");
                None
            }
        }
    }
}

fn sleep_unless(stop: &AtomicBool, period: Duration) {
    let step = Duration::from_millis(100);
    let mut slept = Duration::ZERO;
    while slept < period && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step.min(period - slept));
        slept += step;
    }
}

/// The devices and the last GPM sample of each, for SM activity over the period.
struct Sampler<'n> {
    nvml: &'n Nvml,
    devices: Vec<(String, Option<Device<'n>>)>,
    gpm: Vec<Option<nvml_wrapper::gpm::GpmSample<'n>>>,
    warned: BTreeSet<String>,
}

impl<'n> Sampler<'n> {
    fn new(nvml: &'n Nvml, uuids: BTreeSet<String>) -> Sampler<'n> {
        let mut warned = BTreeSet::new();
        let devices: Vec<_> = uuids
            .into_iter()
            .map(|uuid| {
                let device = nvml.device_by_uuid(uuid.as_str());
                if let Err(e) = &device {
                    tracing::info!(gpu = %uuid, "no samples of this GPU: NVML does not find it ({e})");
                    warned.insert(uuid.clone());
                }
                (uuid, device.ok())
            })
            .collect();
        let gpm = devices.iter().map(|_| None).collect();
        Sampler {
            nvml,
            devices,
            gpm,
            warned,
        }
    }

    fn round(&mut self) -> GpuRound {
        let mut round = GpuRound::default();
        for i in 0..self.devices.len() {
            let Some(device) = &self.devices[i].1 else {
                continue;
            };
            let uuid = self.devices[i].0.clone();
            let memory = device.memory_info().ok();
            let sm_activity = self.sm_activity(i);
            let device = self.devices[i].1.as_ref().expect("checked above");
            let sample = GpuSample {
                gpu_uuid: uuid.clone(),
                at_us: htex_protocol::now_us(),
                utilization_ratio: device
                    .utilization_rates()
                    .ok()
                    .map(|u| u.gpu as f32 / 100.0),
                sm_activity_ratio: sm_activity,
                memory_used_bytes: memory.as_ref().map(|m| m.used),
                memory_total_bytes: memory.as_ref().map(|m| m.total),
            };
            // MPS clients are listed by both calls on some drivers: keep each pid once.
            let mut seen = BTreeSet::new();
            let lists = [
                device.running_compute_processes(),
                device.mps_running_compute_processes(),
            ];
            for list in lists.into_iter().flatten() {
                for p in list {
                    if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                        if seen.insert(p.pid) {
                            round.processes.push(ProcessMemory { pid: p.pid, bytes });
                        }
                    }
                }
            }
            if sample.utilization_ratio.is_none() && self.warned.insert(uuid.clone()) {
                // MIG instances have no utilization counter; GPM covers them where it exists.
                tracing::debug!(gpu = %uuid, "NVML gives no utilization for this GPU");
            }
            round.gpus.push(sample);
        }
        round
    }

    /// GPM SM utilization between the last sample and this one (Hopper and later).
    fn sm_activity(&mut self, i: usize) -> Option<f32> {
        let device = self.devices[i].1.as_ref()?;
        let sample = device.gpm_sample().ok()?;
        let previous = self.gpm[i].replace(sample)?;
        let current = self.gpm[i].as_ref()?;
        let results = nvml_wrapper::gpm::gpm_metrics_get(
            self.nvml,
            &previous,
            current,
            &[GpmMetricId::SmUtil],
        )
        .ok()?;
        let value = results.into_iter().next()?.ok()?.value;
        Some((value / 100.0).clamp(0.0, 1.0) as f32)
    }
}

/// The slot whose worker (`workers[slot]`, a pid) is `pid` or one of its ancestors, reading
/// parents from /proc (a few levels: runners and commands are the worker's children).
pub(crate) fn slot_of(pid: u32, workers: &[Option<u32>]) -> Option<usize> {
    let mut current = pid;
    for _ in 0..16 {
        if let Some(slot) = workers.iter().position(|w| *w == Some(current)) {
            return Some(slot);
        }
        current = parent_of(current)?;
        if current <= 1 {
            return None;
        }
    }
    None
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_maps_to_the_slot_of_its_ancestor_worker() {
        let me = std::process::id();
        let parent = parent_of(me).expect("this test has a parent");
        assert_eq!(slot_of(me, &[None, Some(me)]), Some(1));
        assert_eq!(slot_of(me, &[Some(parent), None]), Some(0));
        assert_eq!(slot_of(me, &[Some(u32::MAX - 7)]), None);
    }
}
