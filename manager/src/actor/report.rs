//! What the manager tells an interchange that records events (`Registered.wants_reports`): a
//! `Report` in place of each heartbeat, with every slot's state, what happened to slot workers
//! since the last report (started, died, GPU fault) and the GPU samples taken meanwhile.

use std::time::Instant;

use htex_protocol::{
    GpuSample, ManagerMessage, ManagerReport, SlotEvent, SlotEventKind, SlotGpuMemory,
};

use std::collections::BTreeSet;

use super::slot::SlotState;
use super::{Event, State};
use crate::gpu_sampler::{slot_of, GpuRound, GpuSampler};

/// Slot events kept for one report at most; a worker that dies in a loop is counted, not
/// listed without end.
const MAX_EVENTS_PER_REPORT: usize = 1024;

/// Reporting state, when the interchange asked for reports.
#[derive(Default)]
pub(super) struct Reporting {
    pub on: bool,
    events: Vec<SlotEvent>,
    /// Events past the cap since the last report.
    dropped: usize,
    /// The latest GPU samples, sent with the next report.
    gpus: Vec<GpuSample>,
    slot_memory: Vec<SlotGpuMemory>,
    last: Option<Instant>,
}

impl State {
    /// Samples the GPUs of the slots, when there are any and a sample period.
    pub(super) fn start_gpu_sampler(&self) -> Option<GpuSampler> {
        let uuids: BTreeSet<String> = self
            .slots
            .iter()
            .filter_map(|s| s.descriptor.gpu_uuid.clone())
            .collect();
        let events = self.events.clone();
        GpuSampler::start(uuids, self.config.gpu_sample_period, move |round| {
            events.send(Event::GpuSamples(round)).is_ok()
        })
    }

    /// A round of samples replaces the one not reported yet; each process's memory counts for
    /// the slot whose worker started it.
    pub(super) fn on_gpu_samples(&mut self, round: GpuRound) {
        let workers: Vec<Option<u32>> = self.slots.iter().map(|s| s.pid).collect();
        let mut per_slot = vec![0u64; self.slots.len()];
        for p in &round.processes {
            if let Some(slot) = slot_of(p.pid, &workers) {
                per_slot[slot] += p.bytes;
            }
        }
        self.reporting.gpus = round.gpus;
        self.reporting.slot_memory = per_slot
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.slots[*i].descriptor.gpu_uuid.is_some())
            .map(|(slot, bytes)| SlotGpuMemory {
                slot: slot as u32,
                bytes,
            })
            .collect();
    }

    /// Records what happened to a slot's worker, for the next report.
    pub(super) fn slot_event(
        &mut self,
        slot: usize,
        kind: SlotEventKind,
        pid: Option<u32>,
        detail: Option<String>,
    ) {
        let reporting = &mut self.reporting;
        if !reporting.on {
            return;
        }
        if reporting.events.len() >= MAX_EVENTS_PER_REPORT {
            reporting.dropped += 1;
            return;
        }
        reporting.events.push(SlotEvent {
            slot: slot as u32,
            at_us: htex_protocol::now_us(),
            kind,
            pid,
            detail,
        });
    }

    /// The report due now, if reports are on and a heartbeat period passed since the last.
    pub(super) fn due_report(&mut self, now: Instant) -> Option<ManagerMessage> {
        let period = self.heartbeat.period;
        let reporting = &mut self.reporting;
        if !reporting.on
            || reporting
                .last
                .is_some_and(|l| now.duration_since(l) < period)
        {
            return None;
        }
        reporting.last = Some(now);
        if reporting.dropped > 0 {
            tracing::warn!(
                dropped = reporting.dropped,
                "slot events past {MAX_EVENTS_PER_REPORT} in one heartbeat period were not reported"
            );
            reporting.dropped = 0;
        }
        let slots = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, slot)| htex_protocol::SlotState {
                slot: i as u32,
                busy: matches!(slot.state, SlotState::Busy(_)),
                pid: slot.pid,
            })
            .collect();
        let report = ManagerReport {
            at_us: htex_protocol::now_us(),
            slots,
            slot_events: std::mem::take(&mut reporting.events),
            gpus: std::mem::take(&mut reporting.gpus),
            slot_gpu_memory: std::mem::take(&mut reporting.slot_memory),
        };
        Some(ManagerMessage::Report(Box::new(report)))
    }
}
