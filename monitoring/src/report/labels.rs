//! What the report calls managers and slots: "manager_id / slot N (mps 25 %)", and the longer
//! descriptions their tooltips give.

use std::collections::HashMap;

use super::query::{ManagerRow, RunData, SlotRow};
use super::time::format_duration;

/// The run's managers and slots, found by key.
pub(super) struct Names<'a> {
    managers: HashMap<i64, &'a ManagerRow>,
    slots: HashMap<(i64, i64), &'a SlotRow>,
}

impl<'a> Names<'a> {
    pub fn new(data: &'a RunData) -> Names<'a> {
        Names {
            managers: data.managers.iter().map(|m| (m.key, m)).collect(),
            slots: data
                .slots
                .iter()
                .map(|s| ((s.manager_key, s.slot), s))
                .collect(),
        }
    }

    pub fn manager(&self, key: i64) -> Option<&'a ManagerRow> {
        self.managers.get(&key).copied()
    }

    /// The manager's id, or its key when the database has no row for it.
    pub fn manager_id(&self, key: i64) -> String {
        self.manager(key)
            .map_or_else(|| format!("manager #{key}"), |m| m.manager_id.clone())
    }

    /// "m1 / slot 3 (mps 25 %)", or "m1 / (no slot)" for attempts lost before reaching one.
    pub fn slot_label(&self, key: i64, slot: Option<i64>) -> String {
        let manager = self.manager_id(key);
        match (slot, slot.and_then(|n| self.slots.get(&(key, n)))) {
            (None, _) => format!("{manager} / (no slot)"),
            (Some(n), None) => format!("{manager} / slot {n}"),
            (Some(n), Some(s)) => format!("{manager} / slot {n} ({})", slot_kind(s)),
        }
    }

    /// The slot's manager and host, and everything its manager planned for it.
    pub fn slot_detail(&self, key: i64, slot: Option<i64>) -> String {
        let mut detail = self.slot_label(key, slot);
        if let Some(m) = self.manager(key) {
            detail += &format!("\nmanager {} on {}", m.manager_id, m.hostname);
        }
        let Some(s) = slot.and_then(|n| self.slots.get(&(key, n))) else {
            return detail;
        };
        if let Some(index) = s.gpu_index {
            detail += &format!("\nGPU {index}");
        }
        if let Some(uuid) = &s.gpu_uuid {
            detail += &format!(" {uuid}");
        }
        if let Some(bytes) = s.memory_bytes {
            detail += &format!("\nmemory {:.1} GiB", bytes as f64 / GIB);
        }
        if let Some(cpus) = &s.cpus {
            detail += &format!("\nCPUs {cpus}");
        }
        detail
    }
}

pub(super) const GIB: f64 = (1u64 << 30) as f64;

/// "mps 25 %", "mig 3g.40gb", "gpu", "cpu".
fn slot_kind(s: &SlotRow) -> String {
    match (s.kind.as_str(), s.mps_percentage, &s.mig_profile) {
        ("mps", Some(p), _) => format!("mps {p} %"),
        ("mig", _, Some(profile)) => format!("mig {profile}"),
        _ => s.kind.clone(),
    }
}

/// "manager m1 lost at 12.5 s (3.20 min after it registered): heartbeat missed".
pub(super) fn manager_end(data: &RunData, m: &ManagerRow, ended_us: i64) -> String {
    let how = if m.state == "lost" { "lost" } else { "left" };
    let lifetime = format_duration((ended_us - m.registered_us) as f64);
    let reason = m.reason.as_deref().unwrap_or("no reason recorded");
    format!(
        "manager {} {how} at {:.2} s ({lifetime} after it registered): {reason}",
        m.manager_id,
        data.seconds(ended_us)
    )
}
