//! A task's life in the interchange: accepted into its class's queue, dispatched to a manager,
//! put back when that manager is lost or drains, and ended exactly once, by a manager's result
//! (`complete`) or by the interchange itself (`finish`). These are the only functions that add or
//! remove tasks or change their state, and they keep the counters (`queued`, `task_bytes`) true.

use htex_protocol::{
    max_item_bytes, EncodedTask, InterchangeMessage, TaskError, TaskId, TaskKind, TaskResult,
    TaskSpec,
};

use htex_monitoring::Event;

use super::{Core, Effects, Now, Side};
use crate::records::{ClientKey, GlobalId, ManagerKey, TaskRecord, TaskState};

impl Core {
    /// Takes a submitted task into its class's queue (or, with `hold`, into the table only,
    /// until its journal record is durable), or says why it cannot run at all.
    pub(super) fn accept(
        &mut self,
        client: ClientKey,
        mut spec: TaskSpec,
        now: Now,
        hold: bool,
    ) -> Result<GlobalId, TaskError> {
        let bad = |message: String| TaskError::BadRequest { message };
        let record = self
            .clients
            .get(client)
            .expect("the caller checked the client");
        if record.tasks.contains_key(&spec.id) {
            return Err(bad(format!(
                "task id {} is already outstanding for this client",
                spec.id
            )));
        }
        if let Some(why) = invalid(&spec) {
            return Err(bad(why));
        }
        let gid = self.tasks.next_id();
        let client_task_id = spec.id;
        spec.id = gid;
        let task =
            EncodedTask::encode(&spec).map_err(|e| bad(format!("cannot encode the task: {e}")))?;
        let limit = max_item_bytes(self.config.max_frame_bytes);
        if task.0.len() > limit {
            return Err(bad(format!(
                "the task is {} bytes encoded, over the limit of {limit} bytes per task \
                 (--max-frame-bytes {})",
                task.0.len(),
                self.config.max_frame_bytes
            )));
        }
        let state = if hold {
            TaskState::Held
        } else {
            TaskState::Queued
        };
        self.insert_task(client, client_task_id, task, &spec, state, false, now);
        Ok(gid)
    }

    /// Puts a task in the table under its spec's (global) id, and in its class's queue when
    /// `state` is `Queued`, keeping the counters true: a submitted task, or one restored from
    /// the journal (`restored`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_task(
        &mut self,
        client: ClientKey,
        client_task_id: TaskId,
        task: EncodedTask,
        spec: &TaskSpec,
        state: TaskState,
        restored: bool,
        now: Now,
    ) {
        let gid = spec.id;
        self.totals.submitted += u64::from(!restored);
        if self.events.is_some() {
            self.task_submitted(client, client_task_id, spec, state, restored, now);
        }
        let class = self.classes.intern(&spec.resources);
        if state == TaskState::Queued {
            self.classes.queue_task(class, spec.priority, gid);
            self.queued += 1;
        }
        if let Some(record) = self.clients.get_mut(client) {
            record.tasks.insert(client_task_id, gid);
        }
        self.task_bytes += task.0.len();
        self.tasks.insert(
            gid,
            TaskRecord {
                client,
                client_task_id,
                task,
                class,
                priority: spec.priority,
                max_retries: spec.max_retries,
                submitted_us: spec.submitted_us,
                state,
                received_us: now.epoch_us,
                dispatched_us: 0,
                losses: 0,
                dispatches: 0,
                timeout_s: spec
                    .timeout_ms
                    .map_or(0, |ms| u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)),
            },
        );
    }

    /// A held task (durable now, or restored and unclaimed) goes into its class's queue.
    pub(super) fn unhold(&mut self, gid: GlobalId) {
        let Some(record) = self.tasks.get_mut(&gid) else {
            return;
        };
        if record.state != TaskState::Held {
            return;
        }
        record.state = TaskState::Queued;
        self.queued += 1;
        self.classes.queue_task(record.class, record.priority, gid);
        let at_us = self.event_us;
        self.event(|| Event::Queued { task: gid, at_us });
    }

    /// Ends a task with `Cancelled`: at once when it is not on a manager, else through the
    /// manager, whose answer is the task's one result.
    pub(super) fn cancel(&mut self, gid: GlobalId, reason: &str) {
        let Some(record) = self.tasks.get(&gid) else {
            return;
        };
        if let TaskState::Dispatched { manager } = record.state {
            if self.managers.get(manager).is_some() {
                self.cancels.entry(manager).or_default().push(gid);
                return;
            }
        }
        self.finish(
            gid,
            TaskError::Cancelled {
                reason: reason.to_string(),
            },
        );
    }

    /// Marks a queued task as sent to `manager` (which records it), and returns its spec.
    pub(super) fn dispatch_to(
        &mut self,
        gid: GlobalId,
        manager: ManagerKey,
        now: Now,
    ) -> Option<EncodedTask> {
        let record = self.tasks.get_mut(&gid)?;
        debug_assert_eq!(record.state, TaskState::Queued);
        record.state = TaskState::Dispatched { manager };
        record.dispatched_us = now.epoch_us;
        record.dispatches = record.dispatches.saturating_add(1);
        self.queued -= 1;
        let request = &self.classes.get(record.class).request;
        let m = self
            .managers
            .get_mut(manager)
            .expect("the caller chose a registered manager");
        m.take(gid, request, record.task.0.len());
        m.last_busy = now.at;
        let task = record.task.clone();
        self.event(|| Event::Dispatched {
            task: gid,
            manager,
            at_us: now.epoch_us,
        });
        Some(task)
    }

    /// Puts a dispatched task back in its queue: its manager was lost (`lost`: counted against
    /// its retries, and past them it ends `ManagerLost`) or gave it back unstarted.
    pub(super) fn requeue(&mut self, gid: GlobalId, lost: Option<&str>) {
        self.attempt_interrupted(gid, lost.is_some());
        let Some(record) = self.tasks.get_mut(&gid) else {
            return;
        };
        let TaskState::Dispatched { manager } = record.state else {
            return;
        };
        if let Some(m) = self.managers.get_mut(manager) {
            m.release(gid, record.task.0.len());
        }
        if let Some(manager) = lost {
            record.losses = record.losses.saturating_add(1);
            if u32::from(record.losses) > record.max_retries {
                let manager = manager.to_string();
                self.finish(gid, TaskError::ManagerLost { manager });
                return;
            }
        }
        record.state = TaskState::Queued;
        self.queued += 1;
        self.classes.queue_task(record.class, record.priority, gid);
    }

    /// Records a manager's result; results for tasks it does not hold are duplicates.
    pub(super) fn complete(&mut self, manager: ManagerKey, mut result: TaskResult) {
        let gid = result.id;
        let holds =
            self.tasks.get(&gid).map(|t| t.state) == Some(TaskState::Dispatched { manager });
        if !holds {
            tracing::debug!(task = gid, "dropping a duplicate or unknown result");
            return;
        }
        let record = self.remove(gid).expect("checked above");
        result.id = record.client_task_id;
        result.timings.submitted_us = record.submitted_us;
        result.timings.received_us = record.received_us;
        result.timings.dispatched_us = record.dispatched_us;
        result.attempts = u32::from(record.losses) + 1;
        if result.outcome.is_ok() {
            self.totals.completed += 1;
        } else {
            self.totals.failed += 1;
        }
        if self.events.is_some() {
            self.task_answered(gid, &record, manager, &result);
        }
        self.deliver(record.client, gid, result);
    }

    /// Ends a task that is not on a manager (or whose manager is gone) with an error.
    pub(super) fn finish(&mut self, gid: GlobalId, error: TaskError) {
        self.finish_as(gid, error, true);
    }

    /// `finish`, where `journaled` says whether the journal knows the task (one whose record
    /// could not be written is answered without a trace in it).
    pub(super) fn finish_as(&mut self, gid: GlobalId, error: TaskError, journaled: bool) {
        let Some(record) = self.remove(gid) else {
            return;
        };
        self.totals.failed += 1;
        if self.events.is_some() {
            self.task_failed(gid, &record, &error);
        }
        let mut result = TaskResult::error(record.client_task_id, error);
        result.timings.submitted_us = record.submitted_us;
        result.timings.received_us = record.received_us;
        result.attempts = u32::from(record.losses);
        self.deliver(record.client, if journaled { gid } else { 0 }, result);
    }

    /// Takes a task out of every table (its queue entry, if any, is skipped when met).
    fn remove(&mut self, gid: GlobalId) -> Option<TaskRecord> {
        let record = self.tasks.remove(&gid)?;
        match record.state {
            TaskState::Queued => self.queued -= 1,
            TaskState::Dispatched { manager } => {
                if let Some(m) = self.managers.get_mut(manager) {
                    m.release(gid, record.bytes());
                }
            }
            TaskState::Held => {}
        }
        self.task_bytes -= record.bytes();
        self.classes.task_ended(record.class);
        if let Some(client) = self.clients.get_mut(record.client) {
            client.tasks.remove(&record.client_task_id);
        }
        Some(record)
    }

    /// Cancels for tasks on managers go out, one frame per manager.
    pub(super) fn flush_cancels(&mut self, out: &mut Effects) {
        for (key, gids) in std::mem::take(&mut self.cancels) {
            if let Some(manager) = self.managers.get(key) {
                out.send(
                    Side::Manager,
                    &manager.peer,
                    &InterchangeMessage::Cancel(gids),
                );
            }
        }
    }
}

/// Why a task can never run, checked when it is submitted.
fn invalid(spec: &TaskSpec) -> Option<String> {
    match &spec.kind {
        TaskKind::Command(c) if c.argv.is_empty() => {
            return Some("command has an empty argv".into())
        }
        TaskKind::Function { name, .. } if name.is_empty() => {
            return Some("function name is empty".into())
        }
        TaskKind::Call { runner, .. } if runner.is_empty() => {
            return Some("runner name is empty".into())
        }
        _ => {}
    }
    spec.resources.impossible()
}
