//! One worker slot as the actor sees it: what its worker is doing ([`SlotState`]), the tasks
//! queued in its pipe, and the run-time average that decides whether to queue more there.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use htex_protocol::{SlotDescriptor, TaskError, TaskId, TaskResult, TaskSpec, WorkerRequest};

use crate::config::deadline_after;

/// A worker's stdin and its process group, as the actor uses them. `WorkerProcess` is the real
/// one; tests drive assignment and pipelining through a recording stand-in.
pub(crate) trait WorkerPipe {
    /// Queues a request on the worker's stdin.
    fn send(&self, request: &WorkerRequest);
    /// Kills the worker and everything it started.
    fn kill(&self);
}

/// What a slot's worker is doing.
pub(crate) enum SlotState {
    /// Spawned, not yet `Ready` (or being killed: no new task until the restart).
    Starting,
    Idle,
    Busy(RunningTask),
    /// No process; a new one starts at `restart_at`.
    Down {
        restart_at: Instant,
    },
}

pub(crate) struct RunningTask {
    pub id: TaskId,
    pub timeout_ms: Option<u64>,
    /// `None` without a timeout (or one past what the clock counts).
    pub deadline: Option<Instant>,
    /// Set when the manager killed the worker on purpose, to report this instead of `WorkerLost`.
    pub ending: Option<TaskError>,
    /// The interchange no longer expects the task (it said so on registering again): no result.
    pub orphaned: bool,
    /// Its result went out already (cancelled while it waited in the worker's pipe): the
    /// worker's answer is dropped.
    pub answered: bool,
}

impl RunningTask {
    /// A task the worker starts now: its timeout counts from here.
    pub fn starting(spec: &TaskSpec, answered: bool) -> Self {
        RunningTask {
            id: spec.id,
            timeout_ms: spec.timeout_ms,
            deadline: spec
                .timeout_ms
                .and_then(|ms| deadline_after(Duration::from_millis(ms))),
            ending: None,
            orphaned: false,
            answered,
        }
    }

    /// Whether the interchange still waits for this task's result from this manager.
    pub fn owes_result(&self) -> bool {
        !self.orphaned && !self.answered
    }
}

/// A task written to a worker's pipe behind the one it runs (see [`PIPELINE_SHORT_US`]).
pub(crate) struct QueuedTask {
    pub spec: TaskSpec,
    /// Answered already, or owed to nobody (cancelled, or orphaned by a new registration, while
    /// queued): the worker's answer is dropped, and it is not put back if the worker dies.
    pub answered: bool,
}

/// Tasks are queued in a busy worker's pipe (up to `ManagerConfig::pipeline_depth`) only while
/// its slot's tasks run shorter than this on average: then a worker goes from one task to the
/// next without waiting for the manager, and a task that waits behind another waits little.
pub(crate) const PIPELINE_SHORT_US: f64 = 1000.0;
/// Weight of the newest run time in a slot's moving average.
const RUN_AVG_WEIGHT: f64 = 0.2;

pub(crate) struct Slot<P> {
    pub descriptor: SlotDescriptor,
    /// The worker's environment: GPU confinement and `HTEX_SLOT_*`.
    pub env: Vec<(String, String)>,
    pub state: SlotState,
    /// Tasks in the worker's pipe behind the running one, in the order it will run them.
    pub queued: VecDeque<QueuedTask>,
    /// Moving average of how long this slot's tasks ran (µs), as the worker timed them.
    pub run_avg_us: Option<f64>,
    pub process: Option<P>,
    /// Its worker's pid, once the worker said `Ready`.
    pub pid: Option<u32>,
    pub generation: u64,
    pub spawned_at: Instant,
    /// Consecutive quick deaths, for restart backoff.
    pub quick_deaths: u32,
    /// No restart before this (the MPS server recovering from a fault).
    pub hold_until: Option<Instant>,
}

impl<P: WorkerPipe> Slot<P> {
    /// A slot with no worker yet (one starts at once).
    pub fn new(descriptor: SlotDescriptor, env: Vec<(String, String)>) -> Self {
        let now = Instant::now();
        Slot {
            descriptor,
            env,
            state: SlotState::Down { restart_at: now },
            queued: VecDeque::new(),
            run_avg_us: None,
            process: None,
            pid: None,
            generation: 0,
            spawned_at: now,
            quick_deaths: 0,
            hold_until: None,
        }
    }

    /// Whether its worker is ready for a task now.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, SlotState::Idle) && self.process.is_some()
    }

    /// Whether its worker runs a task or has some waiting in its pipe.
    pub fn is_working(&self) -> bool {
        matches!(self.state, SlotState::Busy(_)) || !self.queued.is_empty()
    }

    /// Tasks on its worker: the running one and those queued behind it.
    pub fn load(&self) -> usize {
        usize::from(matches!(self.state, SlotState::Busy(_))) + self.queued.len()
    }

    /// Whether more tasks may be queued behind the one its worker runs.
    pub fn takes_queued(&self, depth: usize) -> bool {
        let running =
            matches!(&self.state, SlotState::Busy(t) if t.ending.is_none() && !t.orphaned);
        running
            && self.process.is_some()
            && self.queued.len() < depth
            && self.run_avg_us.is_some_and(|avg| avg < PIPELINE_SHORT_US)
    }

    /// Hands an idle worker a task.
    pub fn start(&mut self, task: TaskSpec) {
        self.state = SlotState::Busy(RunningTask::starting(&task, false));
        if let Some(process) = &self.process {
            process.send(&WorkerRequest::Run(task));
        }
    }

    /// Writes a task into a busy worker's pipe, behind what it runs.
    pub fn queue(&mut self, spec: TaskSpec) {
        let Some(process) = &self.process else {
            unreachable!("takes_queued checked the process")
        };
        let request = WorkerRequest::Run(spec);
        process.send(&request);
        let WorkerRequest::Run(spec) = request else {
            unreachable!("built above")
        };
        self.queued.push_back(QueuedTask {
            spec,
            answered: false,
        });
    }

    /// The worker answered `result`: the running task ends and the next queued one (if any)
    /// starts. Returns the task that ended, or `None` for an answer to a task it was not
    /// running (dropped).
    pub fn finish(&mut self, result: &TaskResult) -> Option<RunningTask> {
        if !matches!(&self.state, SlotState::Busy(t) if t.id == result.id) {
            // A worker being killed may still answer tasks queued behind the one it is killed
            // for, before the signal lands: those tasks go back to the queue when it exits and
            // run again, so the answer is dropped.
            let being_killed = matches!(self.state, SlotState::Starting)
                && self.queued.iter().any(|q| q.spec.id == result.id);
            if !being_killed {
                tracing::warn!(task = result.id, "worker answered a task it was not given");
            }
            return None;
        }
        let SlotState::Busy(task) = std::mem::replace(&mut self.state, SlotState::Idle) else {
            unreachable!("matched above")
        };
        self.quick_deaths = 0;
        let ran_us = result
            .timings
            .finished_us
            .saturating_sub(result.timings.started_us) as f64;
        self.run_avg_us = Some(match self.run_avg_us {
            Some(avg) => avg + RUN_AVG_WEIGHT * (ran_us - avg),
            None => ran_us,
        });
        if task.ending.is_some() || task.orphaned {
            // Its worker is being killed: no new task until the restart.
            self.state = SlotState::Starting;
        } else if let Some(next) = self.queued.pop_front() {
            self.state = SlotState::Busy(RunningTask::starting(&next.spec, next.answered));
        }
        Some(task)
    }

    /// Kills its worker, which ends the running task with `ending` (unless it answers first).
    pub fn kill_for(&mut self, ending: TaskError) {
        if let SlotState::Busy(task) = &mut self.state {
            task.ending = Some(ending);
        }
        if let Some(process) = &self.process {
            process.kill();
        }
    }
}
