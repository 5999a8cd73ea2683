//! Worker processes through their lives: spawned per slot, handed answers and exits, timed out,
//! restarted (with a backoff for one that keeps dying), and their pipes' unstarted tasks taken
//! back when they die.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use htex_protocol::{SlotEventKind, SlotRef, TaskError, TaskResult, WorkerReply};

use super::slot::{QueuedTask, RunningTask, SlotState, WorkerPipe};
use super::{State, WorkerEvent};
use crate::workers::WorkerProcess;

/// A worker that dies sooner than this after starting is restarted with a growing delay.
const QUICK_DEATH: Duration = Duration::from_secs(1);

/// How long the `WorkerLost` of a worker killed by a signal from outside waits, in case the
/// same signal reaches this manager (the end of a batch job) and the task should run again.
const SIGNAL_GRACE: Duration = Duration::from_secs(1);

/// Whether a command's result says a signal that ends jobs (TERM, KILL, INT, HUP) killed it.
fn killed_from_outside(result: &TaskResult) -> bool {
    let Err(TaskError::Failed {
        output: Some(output),
        ..
    }) = &result.outcome
    else {
        return false;
    };
    matches!(
        output.signal,
        Some(libc::SIGTERM | libc::SIGKILL | libc::SIGINT | libc::SIGHUP)
    )
}

impl WorkerPipe for WorkerProcess {
    fn send(&self, request: &htex_protocol::WorkerRequest) {
        WorkerProcess::send(self, request)
    }

    fn kill(&self) {
        WorkerProcess::kill(self)
    }
}

impl State {
    pub(super) fn on_worker(&mut self, index: usize, event: WorkerEvent) {
        match event {
            WorkerEvent::Reply(WorkerReply::Ready { pid, .. }) => {
                tracing::debug!(slot = index, pid, "worker ready");
                self.slots[index].state = SlotState::Idle;
                self.slots[index].pid = Some(pid);
                self.slot_event(index, SlotEventKind::WorkerStarted, Some(pid), None);
            }
            WorkerEvent::Reply(WorkerReply::Done(result)) => self.on_done(index, result),
            WorkerEvent::Exited { detail, by_signal } => self.on_exit(index, detail, by_signal),
        }
    }

    /// A worker answered: the result goes out unless nobody is owed it.
    fn on_done(&mut self, index: usize, mut result: TaskResult) {
        let Some(task) = self.slots[index].finish(&result) else {
            return;
        };
        if !task.owes_result() {
            return;
        }
        // A GPU fault poisons the work the task did, even when it answered first.
        let ended_by_manager = task.ending.is_some();
        if let Some(error @ TaskError::GpuFault { .. }) = task.ending {
            result.outcome = Err(error);
        }
        result.slot = Some(self.slot_ref(index));
        // A command killed by a signal the manager did not send (the task's `ending` is unset)
        // may have died of the signal that ends a batch job: it waits as a dead worker's task
        // does, and is dropped if that signal reaches this manager too.
        if !ended_by_manager && killed_from_outside(&result) {
            if self.signalled {
                tracing::warn!(
                    slot = index,
                    task = result.id,
                    "the task's command was killed by a signal while this manager stops on one: \
                     the interchange runs the task again"
                );
                return;
            }
            self.suspect.push((Instant::now() + SIGNAL_GRACE, result));
            return;
        }
        self.outbox.push(result);
    }

    /// A worker died (or was killed): its task ends, the tasks in its pipe go back, and a new
    /// worker starts.
    fn on_exit(&mut self, index: usize, detail: String, by_signal: bool) {
        let pid = self.slots[index].pid.take();
        self.slot_event(index, SlotEventKind::WorkerDied, pid, Some(detail.clone()));
        let slot = &mut self.slots[index];
        slot.process = None;
        let queued = std::mem::take(&mut slot.queued);
        let down = SlotState::Down {
            restart_at: Instant::now(),
        };
        match std::mem::replace(&mut slot.state, down) {
            SlotState::Busy(task) => self.end_killed_task(index, task, detail, by_signal),
            _ => tracing::warn!(slot = index, "{detail}"),
        }
        self.take_back(queued);
        self.schedule_restart(index);
    }

    fn slot_ref(&self, index: usize) -> SlotRef {
        SlotRef {
            manager: self.config.manager_id.clone(),
            slot: index as u32,
        }
    }

    /// Tasks that waited in a dead worker's pipe never started: they go back to the front of
    /// the pending queue in their order (or back to the interchange while draining).
    fn take_back(&mut self, queued: VecDeque<QueuedTask>) {
        let specs = queued.into_iter().filter(|q| !q.answered).map(|q| q.spec);
        if self.draining {
            self.outbox.give_back(specs.map(|spec| spec.id));
        } else {
            for spec in specs.rev() {
                self.pending.push_front(spec);
            }
        }
    }

    /// Ends the task of a worker that died: as the manager decided when it killed it, else
    /// `WorkerLost` — unless the manager itself is stopping on a signal, when the worker most
    /// likely died of the same one (Slurm signals every process of a job it ends): the task is
    /// not answered, and the interchange runs it again when this manager leaves (a loss counted
    /// against its retries).
    fn end_killed_task(
        &mut self,
        index: usize,
        task: RunningTask,
        detail: String,
        by_signal: bool,
    ) {
        if !task.owes_result() {
            return;
        }
        if self.signalled && task.ending.is_none() {
            tracing::warn!(
                slot = index,
                task = task.id,
                "{detail} while this manager stops on a signal: the interchange runs the task again"
            );
            return;
        }
        let from_outside = by_signal && task.ending.is_none();
        let error = task.ending.unwrap_or_else(|| {
            tracing::warn!(slot = index, task = task.id, "{detail}");
            TaskError::WorkerLost { detail }
        });
        let mut result = TaskResult::error(task.id, error);
        result.slot = Some(self.slot_ref(index));
        result.attempts = 1;
        if from_outside {
            self.suspect.push((Instant::now() + SIGNAL_GRACE, result));
        } else {
            self.outbox.push(result);
        }
    }

    /// Kills the workers of tasks past their timeout, and starts the workers due to restart.
    pub(super) fn check_deadlines(&mut self, now: Instant) {
        let (due, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.suspect)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.suspect = held;
        for (_, result) in due {
            self.outbox.push(result);
        }
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            match &slot.state {
                SlotState::Busy(task)
                    if task.ending.is_none() && task.deadline.is_some_and(|d| now >= d) =>
                {
                    let after_ms = task.timeout_ms.unwrap_or(0);
                    slot.kill_for(TaskError::Timeout { after_ms });
                }
                SlotState::Down { restart_at } if now >= *restart_at => self.spawn_worker(index),
                _ => {}
            }
        }
    }

    /// Restarts a slot's worker: at once, after a backoff if it keeps dying, and never before
    /// its GPU recovered from a fault.
    fn schedule_restart(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if slot.spawned_at.elapsed() < QUICK_DEATH {
            slot.quick_deaths += 1;
        } else {
            slot.quick_deaths = 0;
        }
        let now = Instant::now();
        let mut restart_at = now + restart_backoff(slot.quick_deaths);
        if let Some(hold) = slot.hold_until.filter(|h| *h > restart_at) {
            restart_at = hold;
        }
        slot.state = SlotState::Down { restart_at };
        if restart_at <= now {
            self.spawn_worker(index);
        }
    }

    pub(super) fn spawn_worker(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.generation += 1;
        slot.spawned_at = Instant::now();
        match WorkerProcess::spawn(
            &self.config,
            index,
            &slot.env,
            slot.generation,
            self.frame_limit,
            self.events.clone(),
        ) {
            Ok(process) => {
                slot.process = Some(process);
                slot.state = SlotState::Starting;
            }
            Err(e) => {
                slot.quick_deaths += 1;
                let backoff = restart_backoff(slot.quick_deaths).max(Duration::from_millis(100));
                tracing::error!(
                    slot = index,
                    "cannot start worker `{}`: {e}; retrying in {} s",
                    self.config.worker_command.join(" "),
                    crate::config::seconds_text(backoff)
                );
                slot.state = SlotState::Down {
                    restart_at: Instant::now() + backoff,
                };
            }
        }
    }

    pub(super) fn stop_workers(&mut self) {
        for slot in &mut self.slots {
            if let Some(process) = slot.process.take() {
                process.kill();
            }
        }
    }
}

/// No delay for a worker that ran a while; then 100 ms doubling up to 5 s for one that keeps dying.
fn restart_backoff(quick_deaths: u32) -> Duration {
    if quick_deaths <= 1 {
        return Duration::ZERO;
    }
    Duration::from_millis(100u64 << (quick_deaths - 2).min(6)).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_only_for_workers_that_keep_dying() {
        let delays: Vec<u64> = (0..10)
            .map(|n| restart_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 0, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
