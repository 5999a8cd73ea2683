//! GPU faults on MPS slots. A fatal error on an MPS GPU poisons every client on it, and the MPS
//! server does not say which client caused it (the client its log names is not reliably the
//! culprit, docs/results/mps-fault.md). So every task running on the GPU ends with `GpuFault`,
//! and every worker there is killed and restarted once the server had time to recover.
//!
//! The servers' logs are read on a blocking thread, never on the event loop: every tick, and
//! whenever a task on an MPS slot fails, since the failure may be the fault the log already
//! reports. Such a failure (and every later event of MPS slots, to keep their order) waits for
//! that read, then is handled as part of what it found.

use std::collections::VecDeque;
use std::time::Duration;

use htex_protocol::{SlotEventKind, SlotKind, TaskError, WorkerReply};
use tokio::sync::mpsc;

use super::{Event, State, WorkerEvent};
use crate::mps::{FaultLog, GpuFault};

/// How long the workers of a faulted GPU stay down: the MPS server recovers once every client
/// exited (a new client ran 4.7 s after the fault on an H100, docs/results/mps-fault.md).
const GPU_RECOVERY: Duration = Duration::from_secs(2);

/// The MPS servers' logs and the worker events waiting for a read of them.
pub(crate) struct FaultWatch {
    /// `None` while a read has them.
    logs: Option<Vec<FaultLog>>,
    /// Worker events of MPS slots held until the logs are read: (slot, generation, event).
    deferred: VecDeque<(usize, u64, WorkerEvent)>,
    /// A failure arrived while a read was under way, which may have missed its log line.
    read_again: bool,
}

impl FaultWatch {
    pub fn new(logs: Vec<FaultLog>) -> Self {
        FaultWatch {
            logs: Some(logs),
            deferred: VecDeque::new(),
            read_again: false,
        }
    }

    /// Whether this manager reads any log at all (it has MPS slots); `None` means a read has
    /// them.
    fn watches(&self) -> bool {
        self.logs.as_ref().is_none_or(|logs| !logs.is_empty())
    }

    /// Starts reading the logs on a blocking thread, unless a read is under way; the result
    /// comes back as [`Event::FaultsRead`].
    fn read(&mut self, events: &mpsc::UnboundedSender<Event>) -> bool {
        let Some(mut logs) = self.logs.take() else {
            return false;
        };
        let events = events.clone();
        tokio::task::spawn_blocking(move || {
            let faults: Vec<GpuFault> = logs.iter_mut().flat_map(FaultLog::take_faults).collect();
            let _ = events.send(Event::FaultsRead { logs, faults });
        });
        true
    }
}

impl WorkerEvent {
    fn is_failure(&self) -> bool {
        match self {
            WorkerEvent::Reply(WorkerReply::Done(result)) => result.outcome.is_err(),
            WorkerEvent::Exited { .. } => true,
            WorkerEvent::Reply(_) => false,
        }
    }
}

impl State {
    /// The tick's look at the logs.
    pub(super) fn read_fault_logs(&mut self) {
        if self.faults.watches() {
            self.faults.read(&self.events);
        }
    }

    /// Holds a worker event of an MPS slot that must wait for the logs; returns it back when it
    /// can be handled now.
    pub(super) fn defer_for_faults(
        &mut self,
        slot: usize,
        generation: u64,
        event: WorkerEvent,
    ) -> Option<WorkerEvent> {
        let mps = self.slots[slot].descriptor.kind == SlotKind::Mps;
        let failed = event.is_failure();
        let waiting = !self.faults.deferred.is_empty();
        if !mps || !self.faults.watches() || !(failed || waiting) {
            return Some(event);
        }
        self.faults.deferred.push_back((slot, generation, event));
        if failed && !self.faults.read(&self.events) {
            // The read under way may have looked before this failure's log line.
            self.faults.read_again = true;
        }
        None
    }

    /// The logs were read: each fault is handled, then the events that waited for it.
    pub(super) fn on_faults_read(&mut self, logs: Vec<FaultLog>, faults: Vec<GpuFault>) {
        self.faults.logs = Some(logs);
        for fault in faults {
            self.on_gpu_fault(fault);
        }
        if self.faults.deferred.is_empty() {
            return;
        }
        if std::mem::take(&mut self.faults.read_again) {
            self.faults.read(&self.events);
            return;
        }
        while let Some((slot, generation, event)) = self.faults.deferred.pop_front() {
            if self.slots[slot].generation == generation {
                self.on_worker(slot, event);
            }
        }
    }

    fn on_gpu_fault(&mut self, fault: GpuFault) {
        tracing::error!(gpu = %fault.gpu_uuid, "MPS fatal GPU error: {}", fault.line);
        let hold = crate::config::deadline_after(GPU_RECOVERY);
        let detail = format!(
            "fatal GPU error on {}, which every MPS client of the GPU shares",
            fault.gpu_uuid
        );
        let on_gpu = |kind: SlotKind, uuid: Option<&str>| {
            kind == SlotKind::Mps && uuid == Some(fault.gpu_uuid.as_str())
        };
        let hit: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let d = &self.slots[i].descriptor;
                on_gpu(d.kind, d.gpu_uuid.as_deref())
            })
            .collect();
        for &i in &hit {
            let pid = self.slots[i].pid;
            self.slot_event(i, SlotEventKind::GpuFault, pid, Some(fault.line.clone()));
        }
        for slot in self.slots.iter_mut() {
            if !on_gpu(slot.descriptor.kind, slot.descriptor.gpu_uuid.as_deref()) {
                continue;
            }
            slot.hold_until = hold;
            slot.kill_for(TaskError::GpuFault {
                detail: detail.clone(),
            });
        }
    }
}
