//! Slot plans: what worker slots a manager offers.

use htex_protocol::SlotDescriptor;

/// `n` CPU-only slots, numbered from 0.
pub fn cpu_slots(n: usize) -> Vec<SlotDescriptor> {
    (0..n as u32).map(SlotDescriptor::cpu).collect()
}
