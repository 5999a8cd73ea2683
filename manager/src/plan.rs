//! Slot plans: turns a GPU inventory and a slot spec (flags or TOML) into a validated list of
//! worker slots — whole GPUs, MPS percentage slots with optional memory limits, MIG instances and
//! CPU-only slots. Every error says what to change.

use std::collections::{BTreeMap, HashSet};

use htex_protocol::{SlotDescriptor, SlotKind};
use serde::Deserialize;

use crate::inventory::{GpuInfo, Inventory};

/// Most MPS clients (CUDA contexts) one GPU serves on Volta and later.
pub const MAX_MPS_CLIENTS: usize = 48;

/// The operator's request, as written in `--gpus`, `--mps`, ... or the `[slots]` TOML table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlotSpec {
    /// Whole GPUs: `all`, NVML indices or UUIDs (`0,1`, `GPU-…`); a GPU listed twice gets two
    /// time-shared workers.
    pub gpus: Option<String>,
    /// MPS slots per GPU: `0:50,25,25` is three workers on GPU 0 with 50, 25 and 25 %.
    pub mps: Vec<String>,
    /// Pinned device-memory limits of those slots: `0:20G,10G,10G`.
    pub mps_mem: Vec<String>,
    /// N equal MPS slots on every GPU not otherwise used.
    pub mps_split: Option<u32>,
    /// MIG instances: `auto` (every instance) or `MIG-…` UUIDs.
    pub mig: Option<String>,
    /// CPU-only slots.
    pub cpu: usize,
    /// Parsl's form: one worker per entry (a GPU index or UUID, or a MIG UUID).
    pub available_accelerators: Vec<String>,
    /// Parsl's form, with `available_accelerators`: the MPS percentage of each entry.
    pub gpu_percentage: Vec<u8>,
    /// Allow MPS percentages (and memory limits) on a GPU to sum past 100 % (its memory).
    pub oversubscribe: bool,
}

/// One slot of the plan: what the interchange sees, and the limit the worker's env carries.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSlot {
    pub descriptor: SlotDescriptor,
    /// `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` for an MPS slot, in bytes.
    pub pinned_memory_limit: Option<u64>,
}

/// Why a slot spec cannot be planned on this node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SlotPlanError {
    #[error("no slots: give --workers N for CPU slots, or --gpus, --mps, --mps-split or --mig")]
    Empty,
    #[error("unknown GPU `{given}`; this node has: {available}")]
    UnknownGpu { given: String, available: String },
    #[error("unknown MIG instance `{given}`; this node has: {available}")]
    UnknownMig { given: String, available: String },
    #[error("cannot read `{given}` for {flag}: {reason}")]
    Syntax {
        flag: &'static str,
        given: String,
        reason: String,
    },
    #[error("MPS percentages for GPU {gpu} sum to {sum}; the sum must be at most 100, or pass --oversubscribe")]
    PercentageSum { gpu: u32, sum: u32 },
    #[error("MPS percentage {value} for GPU {gpu} is out of range; use 1 to 100")]
    PercentageRange { gpu: u32, value: u32 },
    #[error(
        "GPU {gpu} has {count} MPS slots; one GPU serves at most {MAX_MPS_CLIENTS} MPS clients"
    )]
    TooManyClients { gpu: u32, count: usize },
    #[error("GPU {gpu} is asked for both as a whole GPU and for MPS slots; a GPU is either whole or shared by MPS")]
    WholeAndMps { gpu: u32 },
    #[error(
        "GPU {gpu} is given MPS slots twice ({first} and {second}); give each GPU one --mps entry"
    )]
    MpsTwice {
        gpu: u32,
        first: String,
        second: String,
    },
    #[error("GPU {gpu} has {limits} memory limit(s) in --mps-mem but {slots} MPS slot(s); give one limit per slot")]
    MemCount {
        gpu: u32,
        limits: usize,
        slots: usize,
    },
    #[error("MPS memory limits for GPU {gpu} sum to {sum_gib:.1} GiB, over its {have_gib:.1} GiB; lower them or pass --oversubscribe")]
    MemSum {
        gpu: u32,
        sum_gib: f64,
        have_gib: f64,
    },
    #[error("GPU {gpu} is in MIG mode; use its MIG instances (--mig auto) instead of the whole GPU or MPS")]
    MigGpu { gpu: u32 },
    #[error("{0}")]
    Conflict(String),
}

/// Plans the slots; indices follow the order whole GPUs, MPS, MIG, CPU.
pub fn plan(spec: &SlotSpec, inventory: &Inventory) -> Result<Vec<PlannedSlot>, SlotPlanError> {
    let mut slots = Vec::new();
    if !spec.available_accelerators.is_empty() || !spec.gpu_percentage.is_empty() {
        if spec.gpus.is_some()
            || !spec.mps.is_empty()
            || !spec.mps_mem.is_empty()
            || spec.mps_split.is_some()
            || spec.mig.is_some()
        {
            return Err(SlotPlanError::Conflict(
                "use either available_accelerators/gpu_percentage (Parsl's form) or --gpus/--mps/--mps-mem/--mps-split/--mig, not both".into(),
            ));
        }
        plan_parsl_form(spec, inventory, &mut slots)?;
    } else {
        let whole = resolve_whole(spec, inventory)?;
        let mps = resolve_mps(spec, inventory, &whole)?;
        for gpu in &whole {
            slots.push(gpu_slot(gpu));
        }
        for (gpu, shares) in &mps {
            for &(percentage, limit) in shares {
                slots.push(mps_slot(gpu, percentage, limit));
            }
        }
        for (gpu, instance) in resolve_mig(spec, inventory)? {
            slots.push(mig_slot(gpu, instance));
        }
    }
    for _ in 0..spec.cpu {
        slots.push(PlannedSlot {
            descriptor: SlotDescriptor::cpu(0),
            pinned_memory_limit: None,
        });
    }
    if slots.is_empty() {
        return Err(SlotPlanError::Empty);
    }
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.descriptor.index = i as u32;
    }
    Ok(slots)
}

/// `n` CPU-only slots, numbered from 0.
pub fn cpu_slots(n: usize) -> Vec<PlannedSlot> {
    (0..n as u32)
        .map(|i| PlannedSlot {
            descriptor: SlotDescriptor::cpu(i),
            pinned_memory_limit: None,
        })
        .collect()
}

/// The SMs an MPS client gets at `percentage`, as measured on an H100 (132 SMs) for every
/// percentage from 1 to 100 (docs/results/gpu-slots.md): the share rounded down to whole TPCs of
/// 2 SMs, but never fewer than 8 SMs.
pub fn mps_sm_count(total: u32, percentage: u8) -> u32 {
    let sms = total * u32::from(percentage) / 100;
    (sms / 2 * 2).max(MIN_MPS_SMS).min(total)
}

/// The fewest SMs an MPS client was given (at 1 % to 7 % on an H100).
pub const MIN_MPS_SMS: u32 = 8;

fn gpu_slot(gpu: &GpuInfo) -> PlannedSlot {
    PlannedSlot {
        descriptor: SlotDescriptor {
            kind: SlotKind::Gpu,
            gpu_uuid: Some(gpu.uuid.clone()),
            gpu_index: Some(gpu.index),
            memory_bytes: Some(gpu.memory_bytes),
            sm_count: Some(gpu.sm_count),
            ..SlotDescriptor::cpu(0)
        },
        pinned_memory_limit: None,
    }
}

fn mps_slot(gpu: &GpuInfo, percentage: u8, limit: Option<u64>) -> PlannedSlot {
    PlannedSlot {
        descriptor: SlotDescriptor {
            kind: SlotKind::Mps,
            gpu_uuid: Some(gpu.uuid.clone()),
            gpu_index: Some(gpu.index),
            mps_percentage: Some(percentage),
            memory_bytes: Some(limit.unwrap_or(gpu.memory_bytes)),
            sm_count: Some(mps_sm_count(gpu.sm_count, percentage)),
            ..SlotDescriptor::cpu(0)
        },
        pinned_memory_limit: limit,
    }
}

fn mig_slot(gpu: &GpuInfo, instance: &crate::inventory::MigInstance) -> PlannedSlot {
    PlannedSlot {
        descriptor: SlotDescriptor {
            kind: SlotKind::Mig,
            gpu_uuid: Some(instance.uuid.clone()),
            gpu_index: Some(gpu.index),
            memory_bytes: Some(instance.memory_bytes),
            mig_profile: Some(instance.profile.clone()),
            sm_count: Some(instance.sm_count),
            ..SlotDescriptor::cpu(0)
        },
        pinned_memory_limit: None,
    }
}

/// A GPU by NVML index or UUID, refusing MIG-mode GPUs for whole/MPS use.
fn find_gpu<'a>(inventory: &'a Inventory, key: &str) -> Result<&'a GpuInfo, SlotPlanError> {
    let gpu = inventory
        .gpu(key.trim())
        .ok_or_else(|| SlotPlanError::UnknownGpu {
            given: key.trim().to_string(),
            available: describe_gpus(inventory),
        })?;
    if gpu.mig_enabled() {
        return Err(SlotPlanError::MigGpu { gpu: gpu.index });
    }
    Ok(gpu)
}

fn describe_gpus(inventory: &Inventory) -> String {
    if inventory.gpus.is_empty() {
        return "no GPUs".into();
    }
    let gpus: Vec<_> = inventory
        .gpus
        .iter()
        .map(|g| format!("{} ({}, {})", g.index, g.uuid, g.name))
        .collect();
    gpus.join(", ")
}

fn resolve_whole<'a>(
    spec: &SlotSpec,
    inventory: &'a Inventory,
) -> Result<Vec<&'a GpuInfo>, SlotPlanError> {
    match spec.gpus.as_deref().map(str::trim) {
        None => Ok(Vec::new()),
        // `all` leaves out GPUs in MIG mode and those given MPS slots by --mps.
        Some("all") => {
            let mut named = HashSet::new();
            for entry in &spec.mps {
                named.insert(find_gpu(inventory, split_entry("--mps", entry)?.0)?.index);
            }
            Ok(inventory
                .gpus
                .iter()
                .filter(|g| !g.mig_enabled() && !named.contains(&g.index))
                .collect())
        }
        Some(list) => list
            .split(',')
            .map(|key| find_gpu(inventory, key))
            .collect(),
    }
}

/// One GPU's MPS slots: (percentage, memory limit) each.
type Shares = Vec<(u8, Option<u64>)>;

/// MPS slots per GPU, in NVML order.
type MpsPlan<'a> = BTreeMap<u32, (&'a GpuInfo, Shares)>;

fn resolve_mps<'a>(
    spec: &SlotSpec,
    inventory: &'a Inventory,
    whole: &[&GpuInfo],
) -> Result<Vec<(&'a GpuInfo, Shares)>, SlotPlanError> {
    let whole: HashSet<u32> = whole.iter().map(|g| g.index).collect();
    let mut plan: MpsPlan = BTreeMap::new();
    let mut written: BTreeMap<u32, String> = BTreeMap::new();
    for entry in &spec.mps {
        let (key, values) = split_entry("--mps", entry)?;
        let gpu = find_gpu(inventory, key)?;
        if let Some(first) = written.insert(gpu.index, entry.clone()) {
            return Err(SlotPlanError::MpsTwice {
                gpu: gpu.index,
                first,
                second: entry.clone(),
            });
        }
        let shares = values
            .split(',')
            .map(|v| parse_percentage(gpu.index, v, entry))
            .collect::<Result<Vec<_>, _>>()?;
        plan.insert(
            gpu.index,
            (gpu, shares.into_iter().map(|p| (p, None)).collect()),
        );
    }
    if let Some(n) = spec.mps_split {
        if n == 0 {
            return Err(syntax(
                "--mps-split",
                &n.to_string(),
                "give at least 1 slot per GPU",
            ));
        }
        let share = (100 / n).max(1) as u8;
        for gpu in inventory
            .gpus
            .iter()
            .filter(|g| !g.mig_enabled() && !whole.contains(&g.index))
        {
            if plan.contains_key(&gpu.index) {
                continue;
            }
            // Refuse before allocating: `n` may be anything a TOML file holds.
            if n as usize > MAX_MPS_CLIENTS {
                return Err(SlotPlanError::TooManyClients {
                    gpu: gpu.index,
                    count: n as usize,
                });
            }
            plan.insert(gpu.index, (gpu, vec![(share, None); n as usize]));
        }
    }
    for entry in &spec.mps_mem {
        let (key, values) = split_entry("--mps-mem", entry)?;
        let gpu = find_gpu(inventory, key)?;
        let Some((_, shares)) = plan.get_mut(&gpu.index) else {
            return Err(SlotPlanError::Conflict(format!(
                "--mps-mem gives limits for GPU {} but it has no MPS slots; add --mps {}:…",
                gpu.index, gpu.index
            )));
        };
        let limits = values
            .split(',')
            .map(|v| parse_size("--mps-mem", v))
            .collect::<Result<Vec<_>, _>>()?;
        if limits.len() != shares.len() {
            return Err(SlotPlanError::MemCount {
                gpu: gpu.index,
                limits: limits.len(),
                slots: shares.len(),
            });
        }
        for (share, limit) in shares.iter_mut().zip(limits) {
            share.1 = Some(limit);
        }
    }
    for (index, (gpu, shares)) in &plan {
        if whole.contains(index) {
            return Err(SlotPlanError::WholeAndMps { gpu: *index });
        }
        validate_mps(gpu, shares, spec.oversubscribe)?;
    }
    Ok(plan.into_values().collect())
}

fn validate_mps(
    gpu: &GpuInfo,
    shares: &[(u8, Option<u64>)],
    oversubscribe: bool,
) -> Result<(), SlotPlanError> {
    if shares.len() > MAX_MPS_CLIENTS {
        return Err(SlotPlanError::TooManyClients {
            gpu: gpu.index,
            count: shares.len(),
        });
    }
    let sum: u32 = shares.iter().map(|s| u32::from(s.0)).sum();
    if sum > 100 && !oversubscribe {
        return Err(SlotPlanError::PercentageSum {
            gpu: gpu.index,
            sum,
        });
    }
    let memory = shares
        .iter()
        .filter_map(|s| s.1)
        .fold(0u64, u64::saturating_add);
    if memory > gpu.memory_bytes && !oversubscribe {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(SlotPlanError::MemSum {
            gpu: gpu.index,
            sum_gib: gib(memory),
            have_gib: gib(gpu.memory_bytes),
        });
    }
    Ok(())
}

fn resolve_mig<'a>(
    spec: &SlotSpec,
    inventory: &'a Inventory,
) -> Result<Vec<(&'a GpuInfo, &'a crate::inventory::MigInstance)>, SlotPlanError> {
    let all = inventory
        .gpus
        .iter()
        .flat_map(|g| g.mig_instances.iter().map(move |m| (g, m)));
    match spec.mig.as_deref().map(str::trim) {
        None => Ok(Vec::new()),
        Some("auto") => Ok(all.collect()),
        Some(list) => list
            .split(',')
            .map(|uuid| find_mig(inventory, uuid.trim()))
            .collect(),
    }
}

fn find_mig<'a>(
    inventory: &'a Inventory,
    uuid: &str,
) -> Result<(&'a GpuInfo, &'a crate::inventory::MigInstance), SlotPlanError> {
    let mut all = inventory
        .gpus
        .iter()
        .flat_map(|g| g.mig_instances.iter().map(move |m| (g, m)));
    all.find(|(_, m)| m.uuid == uuid).ok_or_else(|| {
        let known: Vec<_> = inventory
            .gpus
            .iter()
            .flat_map(|g| {
                g.mig_instances
                    .iter()
                    .map(|m| format!("{} ({})", m.uuid, m.profile))
            })
            .collect();
        SlotPlanError::UnknownMig {
            given: uuid.to_string(),
            available: if known.is_empty() {
                "no MIG instances".into()
            } else {
                known.join(", ")
            },
        }
    })
}

/// Parsl's `available_accelerators` (+ `gpu_percentage`): one worker per entry.
fn plan_parsl_form(
    spec: &SlotSpec,
    inventory: &Inventory,
    slots: &mut Vec<PlannedSlot>,
) -> Result<(), SlotPlanError> {
    let accelerators = &spec.available_accelerators;
    let percentages = &spec.gpu_percentage;
    if !percentages.is_empty() && percentages.len() != accelerators.len() {
        return Err(SlotPlanError::Conflict(format!(
            "gpu_percentage has {} entries but available_accelerators has {}; give one percentage per accelerator",
            percentages.len(),
            accelerators.len()
        )));
    }
    let mut mps: MpsPlan = BTreeMap::new();
    let mut whole = HashSet::new();
    for (i, entry) in accelerators.iter().enumerate() {
        if entry.trim().starts_with("MIG-") {
            let (gpu, instance) = find_mig(inventory, entry.trim())?;
            slots.push(mig_slot(gpu, instance));
            continue;
        }
        let gpu = find_gpu(inventory, entry)?;
        match percentages.get(i) {
            Some(&p) => {
                let p = parse_percentage(gpu.index, &p.to_string(), entry)?;
                mps.entry(gpu.index)
                    .or_insert_with(|| (gpu, Vec::new()))
                    .1
                    .push((p, None));
            }
            None => {
                whole.insert(gpu.index);
                slots.push(gpu_slot(gpu));
            }
        }
    }
    for (index, (gpu, shares)) in &mps {
        if whole.contains(index) {
            return Err(SlotPlanError::WholeAndMps { gpu: *index });
        }
        validate_mps(gpu, shares, spec.oversubscribe)?;
        slots.extend(shares.iter().map(|&(p, l)| mps_slot(gpu, p, l)));
    }
    Ok(())
}

fn split_entry<'s>(
    flag: &'static str,
    entry: &'s str,
) -> Result<(&'s str, &'s str), SlotPlanError> {
    entry
        .split_once(':')
        .filter(|(gpu, values)| !gpu.trim().is_empty() && !values.trim().is_empty())
        .ok_or_else(|| syntax(flag, entry, "expected GPU:VALUE,VALUE,… such as 0:50,25,25"))
}

fn parse_percentage(gpu: u32, value: &str, entry: &str) -> Result<u8, SlotPlanError> {
    let value: u32 = value.trim().trim_end_matches('%').parse().map_err(|_| {
        syntax(
            "--mps",
            entry,
            "percentages are whole numbers from 1 to 100",
        )
    })?;
    if !(1..=100).contains(&value) {
        return Err(SlotPlanError::PercentageRange { gpu, value });
    }
    Ok(value as u8)
}

/// `20G`, `512M`, `1024K` or plain bytes; binary units.
pub fn parse_size(flag: &'static str, value: &str) -> Result<u64, SlotPlanError> {
    let v = value.trim();
    let (digits, shift) = match v.char_indices().last() {
        Some((i, 'G' | 'g')) => (&v[..i], 30),
        Some((i, 'M' | 'm')) => (&v[..i], 20),
        Some((i, 'K' | 'k')) => (&v[..i], 10),
        _ => (v, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| syntax(flag, value, "sizes look like 20G, 512M or 1024K"))?;
    if n == 0 {
        return Err(syntax(flag, value, "a memory limit must be above zero"));
    }
    n.checked_mul(1 << shift)
        .ok_or_else(|| syntax(flag, value, "too large; sizes must fit in 64 bits of bytes"))
}

fn syntax(flag: &'static str, given: &str, reason: &str) -> SlotPlanError {
    SlotPlanError::Syntax {
        flag,
        given: given.to_string(),
        reason: reason.to_string(),
    }
}
