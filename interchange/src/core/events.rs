//! The core's event stream (`--monitoring`, `--metrics-address`): the task and manager moves
//! push typed events here as they happen, and each flush hands them to the monitor as one
//! effect. With monitoring off there is no log and each move pays one branch.

use std::collections::HashMap;
use std::sync::Arc;

use htex_monitoring::event::{Attempt, AttemptOutcome, Ended, Event, Submitted, TaskKindName};
use htex_protocol::{TaskError, TaskId, TaskKind, TaskResult, TaskSpec};

use super::{Core, Effect, Effects, Now};
use crate::records::{ClientKey, GlobalId, ManagerKey, TaskRecord, TaskState};

/// Events made since the last flush, and the task labels seen so far (one allocation per
/// function name, not per task).
#[derive(Default)]
pub(crate) struct EventLog {
    events: Vec<Event>,
    labels: HashMap<Box<str>, Arc<str>>,
}

impl EventLog {
    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// What the monitoring database calls a task: its kind and its function, runner or program.
    pub fn label(&mut self, spec: &TaskSpec) -> (TaskKindName, Arc<str>) {
        let (kind, name) = match &spec.kind {
            TaskKind::Function { name, .. } => (TaskKindName::Function, name.as_str()),
            TaskKind::Call { runner, .. } => (TaskKindName::Call, runner.as_str()),
            TaskKind::Command(c) => (
                TaskKindName::Command,
                c.argv.first().map_or("", String::as_str),
            ),
        };
        if let Some(label) = self.labels.get(name) {
            return (kind, label.clone());
        }
        let label: Arc<str> = name.into();
        // Command lines may name a new program per task: stop remembering past a bound.
        if self.labels.len() < 4096 {
            self.labels.insert(name.into(), label.clone());
        }
        (kind, label)
    }
}

impl Core {
    /// Pushes an event when monitoring is on; `make` runs only then.
    pub(super) fn event(&mut self, make: impl FnOnce() -> Event) {
        if let Some(log) = &mut self.events {
            log.push(make());
        }
    }

    /// The attempt a task's current dispatch was, ended now with `outcome`.
    pub(super) fn attempt_of(
        &self,
        record: &TaskRecord,
        manager: ManagerKey,
        outcome: AttemptOutcome,
    ) -> Attempt {
        Attempt {
            attempt: u32::from(record.dispatches),
            manager,
            slot: None,
            dispatched_us: record.dispatched_us,
            started_us: 0,
            finished_us: 0,
            ended_us: self.event_us,
            outcome,
            error_kind: None,
        }
    }

    /// An attempt ended without ending its task: its manager was lost or gave it back.
    pub(super) fn attempt_interrupted(&mut self, gid: GlobalId, lost: bool) {
        if self.events.is_none() {
            return;
        }
        let Some(record) = self.tasks.get(&gid) else {
            return;
        };
        let TaskState::Dispatched { manager } = record.state else {
            return;
        };
        let outcome = if lost {
            AttemptOutcome::Lost
        } else {
            AttemptOutcome::Returned
        };
        let attempt = self.attempt_of(record, manager, outcome);
        self.event(|| Event::AttemptEnded { task: gid, attempt });
    }

    pub(super) fn task_submitted(
        &mut self,
        client: ClientKey,
        client_task: TaskId,
        spec: &TaskSpec,
        state: TaskState,
        restored: bool,
        now: Now,
    ) {
        let Some(log) = &mut self.events else {
            return;
        };
        if let Some(record) = self.clients.get_mut(client).filter(|c| !c.announced) {
            record.announced = true;
            log.push(Event::ClientConnected {
                client,
                name: record.name.clone(),
            });
        }
        let (kind, label) = log.label(spec);
        log.push(Event::Submitted(Submitted {
            task: spec.id,
            client,
            client_task,
            kind,
            label,
            priority: spec.priority,
            submitted_us: spec.submitted_us,
            queued_us: now.epoch_us,
            held: state == TaskState::Held,
            restored,
        }));
    }

    /// A manager's result ended a task (`record`, just removed from the table).
    pub(super) fn task_answered(
        &mut self,
        gid: GlobalId,
        record: &TaskRecord,
        manager: ManagerKey,
        result: &TaskResult,
    ) {
        let error = result.outcome.as_ref().err();
        let mut last = self.attempt_of(record, manager, attempt_outcome(error));
        last.slot = result.slot.as_ref().map(|s| s.slot);
        last.started_us = result.timings.started_us;
        last.finished_us = result.timings.finished_us;
        last.error_kind = error.map(TaskError::kind);
        let ended = Ended {
            task: gid,
            ended_us: self.event_us,
            error: error.map(|e| (e.kind(), e.to_string())),
            attempts: u32::from(record.dispatches),
            last: Some(last),
            queue_us: record.dispatched_us.saturating_sub(record.received_us),
        };
        self.event(|| Event::Ended(ended));
    }

    /// The interchange ended a task itself (`record`, just removed from the table): the attempt
    /// on a manager it was in, if any, ends with it.
    pub(super) fn task_failed(&mut self, gid: GlobalId, record: &TaskRecord, error: &TaskError) {
        let last = match record.state {
            // A lost manager's task past its retries: that attempt ended as `lost`, already.
            TaskState::Dispatched { .. } if matches!(error, TaskError::ManagerLost { .. }) => None,
            TaskState::Dispatched { manager } => {
                let mut last = self.attempt_of(record, manager, attempt_outcome(Some(error)));
                last.error_kind = Some(error.kind());
                Some(last)
            }
            TaskState::Queued | TaskState::Held => None,
        };
        let queue_us = if record.dispatches > 0 {
            record.dispatched_us.saturating_sub(record.received_us)
        } else {
            0
        };
        let ended = Ended {
            task: gid,
            ended_us: self.event_us,
            error: Some((error.kind(), error.to_string())),
            attempts: u32::from(record.dispatches),
            last,
            queue_us,
        };
        self.event(|| Event::Ended(ended));
    }

    /// The batch of events goes to the monitor.
    pub(super) fn flush_events(&mut self, out: &mut Effects) {
        if let Some(log) = &mut self.events {
            if !log.events.is_empty() {
                out.0.push(Effect::Events(std::mem::take(&mut log.events)));
            }
        }
    }
}

/// How an attempt that ended its task ended: with no error, or with this one.
fn attempt_outcome(error: Option<&TaskError>) -> AttemptOutcome {
    match error {
        None => AttemptOutcome::Completed,
        Some(TaskError::Cancelled { .. }) => AttemptOutcome::Cancelled,
        Some(_) => AttemptOutcome::Failed,
    }
}
