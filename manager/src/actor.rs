//! The manager's event loop: one task owns the slots, the pending tasks and the result outbox.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use htex_protocol::{
    InterchangeMessage, ManagerMessage, SlotRef, TaskError, TaskId, TaskResult, TaskSpec,
    WorkerReply, WorkerRequest,
};
use tokio::sync::mpsc;

use crate::link::{Heartbeat, Link};
use crate::workers::WorkerProcess;
use crate::NodeResources;
use crate::{ManagerConfig, ManagerError};

pub(crate) enum Event {
    /// A message on link `generation`.
    Interchange {
        generation: u64,
        message: InterchangeMessage,
    },
    InterchangeGone {
        generation: u64,
    },
    /// A new link after the old one was lost.
    Reconnected(Link, Heartbeat),
    /// No interchange within the reconnect timeout (or it refused this manager).
    ReconnectFailed(ManagerError),
    /// Finish the running tasks, give back the rest, then exit (SIGTERM, say).
    Drain,
    Worker {
        slot: usize,
        generation: u64,
        event: WorkerEvent,
    },
    Stop,
}

pub(crate) enum WorkerEvent {
    Reply(WorkerReply),
    Exited(String),
}

/// What a slot's worker is doing.
enum SlotState {
    /// Spawned, not yet `Ready`.
    Starting,
    Idle,
    Busy(RunningTask),
    /// No process; a new one starts at `restart_at`.
    Down {
        restart_at: Instant,
    },
}

struct RunningTask {
    id: TaskId,
    timeout_ms: Option<u64>,
    deadline: Option<Instant>,
    /// Set when the manager killed the worker on purpose, to report this instead of `WorkerLost`.
    ending: Option<TaskError>,
    /// The interchange no longer holds the task (this manager registered again): no result.
    orphaned: bool,
    /// Its result went out already (cancelled while it waited in the worker's pipe): the
    /// worker's answer is dropped.
    answered: bool,
}

impl RunningTask {
    /// A task the worker starts now: its timeout counts from here.
    fn starting(spec: &TaskSpec, answered: bool) -> Self {
        RunningTask {
            id: spec.id,
            timeout_ms: spec.timeout_ms,
            deadline: spec
                .timeout_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms)),
            ending: None,
            orphaned: false,
            answered,
        }
    }
}

/// A task written to a worker's pipe behind the one it runs (see [`PIPELINE_SHORT_US`]).
struct QueuedTask {
    spec: TaskSpec,
    /// Cancelled while queued: answered already, and not put back if the worker dies.
    cancelled: bool,
}

struct Slot {
    descriptor: htex_protocol::SlotDescriptor,
    /// The worker's environment: GPU confinement and `HTEX_SLOT_*`.
    env: Vec<(String, String)>,
    state: SlotState,
    /// Tasks in the worker's pipe behind the running one, in the order it will run them.
    queued: VecDeque<QueuedTask>,
    /// Moving average of how long this slot's tasks ran (µs), as the worker timed them.
    run_avg_us: Option<f64>,
    process: Option<WorkerProcess>,
    generation: u64,
    spawned_at: Instant,
    /// Consecutive quick deaths, for restart backoff.
    quick_deaths: u32,
    /// No restart before this (the MPS server recovering from a fault).
    hold_until: Option<Instant>,
}

/// Most events handled before pending tasks are assigned and results flushed.
const EVENT_BURST: usize = 1024;
/// How often deadlines, restarts and heartbeats are looked at.
const TICK: Duration = Duration::from_millis(50);
/// While other slots are busy, results wait up to this long to share a frame with theirs. A
/// result with no other task running goes out at once, so a lone task is never held back.
const RESULT_HOLD: Duration = Duration::from_micros(500);
/// Results that go out in one frame whatever the hold.
const RESULT_BATCH: usize = 1024;
/// A worker that dies sooner than this after starting is restarted with a growing delay.
const QUICK_DEATH: Duration = Duration::from_secs(1);
/// Tasks are queued in a busy worker's pipe (up to `ManagerConfig::pipeline_depth`) only while
/// its slot's tasks run shorter than this on average: then a worker goes from one task to the
/// next without waiting for the manager, and a task that waits behind another waits little.
const PIPELINE_SHORT_US: f64 = 1000.0;
/// Weight of the newest run time in a slot's moving average.
const RUN_AVG_WEIGHT: f64 = 0.2;

pub(crate) async fn run(
    config: ManagerConfig,
    resources: NodeResources,
    link: Link,
    heartbeat: Heartbeat,
    events_tx: mpsc::UnboundedSender<Event>,
    mut events: mpsc::UnboundedReceiver<Event>,
) -> Result<(), ManagerError> {
    let mut state = State::new(config, resources, link, heartbeat, events_tx);
    if !state.config.zero_worker {
        for index in 0..state.slots.len() {
            state.spawn_worker(index);
        }
    }
    let mut tick = tokio::time::interval(TICK);
    let outcome = loop {
        let hold_until = state.hold_until();
        let event = tokio::select! {
            event = events.recv() => event.unwrap_or(Event::Stop),
            _ = tokio::time::sleep_until(hold_until.unwrap_or_else(Instant::now).into()), if hold_until.is_some() => {
                state.flush().await;
                continue;
            }
            _ = tick.tick() => {
                if let Some(end) = state.on_tick().await {
                    break end;
                }
                state.assign();
                state.flush().await;
                continue;
            }
        };
        let mut event = event;
        let mut handled = 0;
        let end = loop {
            if let Some(end) = state.handle(event).await {
                break Some(end);
            }
            handled += 1;
            match events.try_recv() {
                Ok(next) if handled < EVENT_BURST => event = next,
                _ => break None,
            }
        };
        state.assign();
        if end.is_some() || state.results_due() {
            state.flush().await;
        }
        if let Some(end) = end {
            break end;
        }
        if state.drained() {
            if let Some(link) = &mut state.link {
                link.send(&ManagerMessage::Goodbye).await;
            }
            break Ok(());
        }
    };
    state.stop_workers();
    // zmq.rs gives no way to wait for queued frames to reach the wire: give them a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::info!(manager = %state.config.manager_id, "manager stopped");
    outcome
}

struct State {
    config: ManagerConfig,
    /// MPS daemons, watched for GPU faults, and quit when the manager stops (dropped with the
    /// state), as is the empty pipe directory.
    mps: Vec<crate::mps::MpsDaemon>,
    _empty_pipe: Option<crate::mps::EmptyPipeDir>,
    /// `None` while reconnecting.
    link: Option<Link>,
    /// Generation of the current link; events of older links are ignored.
    link_generation: u64,
    heartbeat: Heartbeat,
    events: mpsc::UnboundedSender<Event>,
    slots: Vec<Slot>,
    /// Tasks received and not yet on a worker, in arrival order.
    pending: VecDeque<TaskSpec>,
    outbox: Vec<TaskResult>,
    /// When the oldest result in the outbox arrived.
    outbox_since: Option<Instant>,
    draining: bool,
    /// When a drain gives up on running tasks and stops.
    drain_deadline: Option<Instant>,
    /// Tasks given back by a drain, for the `Draining` message the next flush sends.
    returned: Option<Vec<TaskId>>,
    last_heard: Instant,
    last_sent: Instant,
}

impl State {
    fn new(
        config: ManagerConfig,
        resources: NodeResources,
        link: Link,
        heartbeat: Heartbeat,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        let now = Instant::now();
        let slots = config
            .slots
            .iter()
            .zip(resources.slot_envs)
            .map(|(planned, env)| Slot {
                descriptor: planned.descriptor.clone(),
                env,
                state: SlotState::Down { restart_at: now },
                queued: VecDeque::new(),
                run_avg_us: None,
                process: None,
                generation: 0,
                spawned_at: now,
                quick_deaths: 0,
                hold_until: None,
            })
            .collect();
        State {
            config,
            mps: resources.mps_daemons,
            _empty_pipe: resources.empty_pipe,
            link: Some(link),
            link_generation: 0,
            heartbeat,
            events,
            slots,
            pending: VecDeque::new(),
            outbox: Vec::new(),
            outbox_since: None,
            draining: false,
            drain_deadline: None,
            returned: None,
            last_heard: now,
            last_sent: now,
        }
    }

    /// Handles one event; `Some` ends the manager.
    async fn handle(&mut self, event: Event) -> Option<Result<(), ManagerError>> {
        match event {
            Event::Interchange {
                generation,
                message,
            } if generation == self.link_generation => {
                self.last_heard = Instant::now();
                return self.on_interchange(message);
            }
            Event::InterchangeGone { generation } if generation == self.link_generation => {
                return self.lose_link("its connection closed");
            }
            Event::Interchange { .. } | Event::InterchangeGone { .. } => {}
            Event::Reconnected(link, heartbeat) => {
                tracing::info!(manager = %self.config.manager_id, "registered again with the interchange");
                // The interchange queued again (or never knew) every task this manager held: the
                // pending ones are dropped and the running ones stopped, so the slots are free.
                let mut dropped = self.pending.len();
                self.pending.clear();
                let mut stopped = 0;
                for slot in &mut self.slots {
                    dropped += slot.queued.len();
                    slot.queued.clear();
                    if let (SlotState::Busy(task), Some(process)) = (&mut slot.state, &slot.process)
                    {
                        task.orphaned = true;
                        process.kill();
                        stopped += 1;
                    }
                }
                if dropped + stopped > 0 {
                    tracing::info!("dropped {dropped} pending and stopped {stopped} running task(s) the interchange has requeued");
                }
                self.link = Some(link);
                self.heartbeat = heartbeat;
                self.last_heard = Instant::now();
            }
            Event::ReconnectFailed(error) => return Some(Err(error)),
            Event::Drain => self.start_draining(),
            Event::Worker {
                slot,
                generation,
                event,
            } => {
                if self.slots[slot].generation == generation {
                    self.on_worker(slot, event);
                }
            }
            Event::Stop => {
                if let Some(link) = &mut self.link {
                    link.send(&ManagerMessage::Goodbye).await;
                }
                return Some(Ok(()));
            }
        }
        None
    }

    fn on_interchange(&mut self, message: InterchangeMessage) -> Option<Result<(), ManagerError>> {
        match message {
            InterchangeMessage::Tasks(encoded) => {
                let limit = self.config.max_frame_bytes;
                let tasks = encoded.iter().filter_map(|t| match t.decode(limit) {
                    Ok(spec) => Some(spec),
                    Err(e) => {
                        // Only the interchange encodes these; one that does not decode is a bug
                        // there, and the task has no id to answer.
                        tracing::error!("dropping a task the interchange sent undecodable: {e}");
                        None
                    }
                });
                if !self.config.zero_worker {
                    self.pending.extend(tasks);
                    return None;
                }
                let now = htex_protocol::now_us();
                self.outbox.extend(tasks.into_iter().map(|t| TaskResult {
                    id: t.id,
                    outcome: Ok(htex_protocol::TaskOutput::Value(vec![0xc0])),
                    timings: htex_protocol::Timings {
                        started_us: now,
                        finished_us: now,
                        ..Default::default()
                    },
                    slot: None,
                    attempts: 1,
                }));
            }
            InterchangeMessage::Cancel(ids) => ids.into_iter().for_each(|id| self.cancel(id)),
            InterchangeMessage::Drain => self.start_draining(),
            InterchangeMessage::Shutdown => {
                tracing::info!("the interchange asked this manager to shut down");
                return Some(Ok(()));
            }
            InterchangeMessage::Refused { reason } => {
                return Some(Err(ManagerError::Refused(reason)))
            }
            InterchangeMessage::RegisterAgain => {
                return self.lose_link("the interchange no longer knows this manager")
            }
            InterchangeMessage::Heartbeat | InterchangeMessage::Registered { .. } => {}
        }
        None
    }

    /// Takes no more tasks: pending ones go back to the interchange, running ones finish (until
    /// the drain timeout, after which the manager stops).
    fn start_draining(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.drain_deadline = Some(Instant::now() + self.config.drain_timeout);
        let returned: Vec<TaskId> = self.pending.drain(..).map(|t| t.id).collect();
        tracing::info!(
            "draining: finishing {} running task(s), giving back {}",
            self.load(),
            returned.len()
        );
        self.returned = Some(returned);
    }

    /// The link is gone: exit, or (with a reconnect timeout) keep running tasks, buffer their
    /// results and register again in the background.
    fn lose_link(&mut self, why: &str) -> Option<Result<(), ManagerError>> {
        let link = self.link.take()?;
        let timeout = self.config.reconnect_timeout;
        if timeout.is_zero() {
            return Some(Err(ManagerError::InterchangeLost(link.endpoint.clone())));
        }
        tracing::warn!(manager = %self.config.manager_id, "lost the interchange ({why}); reconnecting for up to {timeout:?}");
        self.link_generation += 1;
        tokio::spawn(reconnect(
            self.config.clone(),
            self.events.clone(),
            self.link_generation,
        ));
        None
    }

    fn on_worker(&mut self, index: usize, event: WorkerEvent) {
        // A failure in an MPS slot may be a GPU fault the log already reports: handle that
        // first, so the failure is judged as part of it.
        let failed = match &event {
            WorkerEvent::Reply(WorkerReply::Done(result)) => result.outcome.is_err(),
            WorkerEvent::Exited(_) => true,
            WorkerEvent::Reply(_) => false,
        };
        if failed && self.slots[index].descriptor.kind == htex_protocol::SlotKind::Mps {
            self.check_gpu_faults();
        }
        let manager = self.config.manager_id.clone();
        let slot = &mut self.slots[index];
        match event {
            WorkerEvent::Reply(WorkerReply::Ready { pid, .. }) => {
                tracing::debug!(slot = index, pid, "worker ready");
                slot.state = SlotState::Idle;
            }
            WorkerEvent::Reply(WorkerReply::Done(mut result)) => {
                if !matches!(&slot.state, SlotState::Busy(t) if t.id == result.id) {
                    // A worker being killed may still answer tasks queued behind the one it is
                    // killed for, before the signal lands: those tasks go back to the queue when
                    // it exits and run again, so the answer is dropped.
                    let being_killed = matches!(slot.state, SlotState::Starting)
                        && slot.queued.iter().any(|q| q.spec.id == result.id);
                    if !being_killed {
                        tracing::warn!(
                            slot = index,
                            task = result.id,
                            "worker answered a task it was not given"
                        );
                    }
                    return;
                }
                let SlotState::Busy(task) = std::mem::replace(&mut slot.state, SlotState::Idle)
                else {
                    unreachable!("matched above")
                };
                slot.quick_deaths = 0;
                let ran_us = result
                    .timings
                    .finished_us
                    .saturating_sub(result.timings.started_us) as f64;
                slot.run_avg_us = Some(match slot.run_avg_us {
                    Some(avg) => avg + RUN_AVG_WEIGHT * (ran_us - avg),
                    None => ran_us,
                });
                if task.ending.is_some() || task.orphaned {
                    // Its worker is being killed: no new task until the restart.
                    slot.state = SlotState::Starting;
                } else if let Some(next) = slot.queued.pop_front() {
                    slot.state = SlotState::Busy(RunningTask::starting(&next.spec, next.cancelled));
                }
                if task.orphaned || task.answered {
                    return;
                }
                // A GPU fault poisons the work the task did, even when it answered first.
                if let Some(error @ TaskError::GpuFault { .. }) = task.ending {
                    result.outcome = Err(error);
                }
                result.slot = Some(SlotRef {
                    manager,
                    slot: index as u32,
                });
                self.outbox.push(result);
            }
            WorkerEvent::Exited(detail) => {
                slot.process = None;
                let now = Instant::now();
                let queued = std::mem::take(&mut slot.queued);
                match std::mem::replace(&mut slot.state, SlotState::Down { restart_at: now }) {
                    SlotState::Busy(task) => self.end_killed_task(index, task, detail),
                    _ => tracing::warn!(slot = index, "{detail}"),
                }
                self.take_back(queued);
                self.schedule_restart(index);
            }
        }
    }

    /// Tasks that waited in a dead worker's pipe never started: they go back to the front of
    /// the pending queue in their order (or back to the interchange while draining).
    fn take_back(&mut self, queued: VecDeque<QueuedTask>) {
        let specs = queued.into_iter().filter(|q| !q.cancelled).map(|q| q.spec);
        if self.draining {
            let returned = self.returned.get_or_insert_with(Vec::new);
            returned.extend(specs.map(|spec| spec.id));
        } else {
            for spec in specs.rev() {
                self.pending.push_front(spec);
            }
        }
    }

    /// Ends the task of a worker that died: as the manager decided when it killed it, else
    /// `WorkerLost`.
    fn end_killed_task(&mut self, index: usize, task: RunningTask, detail: String) {
        if task.orphaned || task.answered {
            return;
        }
        let error = task.ending.unwrap_or_else(|| {
            tracing::warn!(slot = index, task = task.id, "{detail}");
            TaskError::WorkerLost { detail }
        });
        let mut result = TaskResult::error(task.id, error);
        result.slot = Some(SlotRef {
            manager: self.config.manager_id.clone(),
            slot: index as u32,
        });
        result.attempts = 1;
        self.outbox.push(result);
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

    fn spawn_worker(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.generation += 1;
        slot.spawned_at = Instant::now();
        match WorkerProcess::spawn(
            &self.config,
            index,
            &slot.env,
            slot.generation,
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
                    "cannot start worker {:?}: {e}; retrying in {backoff:?}",
                    self.config.worker_command
                );
                slot.state = SlotState::Down {
                    restart_at: Instant::now() + backoff,
                };
            }
        }
    }

    /// Cancels a task: dropped if still pending, answered at once if queued in a worker's pipe
    /// (the worker may still run it, and its answer is dropped), its worker killed if running.
    fn cancel(&mut self, id: TaskId) {
        let reason = "cancelled by the client".to_string();
        if let Some(pos) = self.pending.iter().position(|t| t.id == id) {
            self.pending.remove(pos);
            self.outbox
                .push(TaskResult::error(id, TaskError::Cancelled { reason }));
            return;
        }
        let queued = self
            .slots
            .iter_mut()
            .flat_map(|slot| slot.queued.iter_mut())
            .find(|q| q.spec.id == id && !q.cancelled);
        if let Some(queued) = queued {
            queued.cancelled = true;
            self.outbox
                .push(TaskResult::error(id, TaskError::Cancelled { reason }));
            return;
        }
        for slot in &mut self.slots {
            if let (SlotState::Busy(task), Some(process)) = (&mut slot.state, &slot.process) {
                if task.id == id && task.ending.is_none() && !task.answered {
                    task.ending = Some(TaskError::Cancelled { reason });
                    process.kill();
                    return;
                }
            }
        }
    }

    /// Gives pending tasks, in order, to idle workers whose slots satisfy them; each task takes
    /// the least capable idle slot that fits, leaving bigger slots for tasks that need them.
    fn assign(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut idle: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                matches!(self.slots[i].state, SlotState::Idle) && self.slots[i].process.is_some()
            })
            .collect();
        let mut next = 0;
        let rank = |slot: &Slot| capability(&slot.descriptor);
        while !idle.is_empty() {
            let Some((at, task)) = self.take_fitting(&mut next, &idle, rank) else {
                break;
            };
            let index = idle.swap_remove(at);
            let slot = &mut self.slots[index];
            slot.state = SlotState::Busy(RunningTask::starting(&task, false));
            if let Some(process) = &slot.process {
                process.send(&WorkerRequest::Run(task));
            }
        }
        self.queue_behind();
    }

    /// Queues the rest of the pending tasks, in order, in the pipes of busy workers whose tasks
    /// run short, each to the fitting slot with the fewest queued.
    fn queue_behind(&mut self) {
        let depth = self.config.pipeline_depth;
        let mut open: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].takes_queued(depth))
            .collect();
        let mut next = 0;
        let rank = |slot: &Slot| (slot.queued.len(), capability(&slot.descriptor));
        // Stops once every open pipe is full, not after a walk over the whole pending queue.
        while !open.is_empty() {
            let Some((at, spec)) = self.take_fitting(&mut next, &open, rank) else {
                break;
            };
            let index = open[at];
            let slot = &mut self.slots[index];
            let Some(process) = &slot.process else {
                unreachable!("takes_queued checked the process")
            };
            let request = WorkerRequest::Run(spec);
            process.send(&request);
            let WorkerRequest::Run(spec) = request else {
                unreachable!("built above")
            };
            slot.queued.push_back(QueuedTask {
                spec,
                cancelled: false,
            });
            if slot.queued.len() >= depth {
                open.remove(at);
            }
        }
    }

    /// Takes out the first pending task from `*next` on that one of `candidates` (slot indices)
    /// satisfies, with the position in `candidates` of the fitting slot `rank` puts first;
    /// `*next` moves past the tasks none of them fits. `None` once no pending task fits.
    fn take_fitting<R: Ord>(
        &mut self,
        next: &mut usize,
        candidates: &[usize],
        rank: impl Fn(&Slot) -> R,
    ) -> Option<(usize, TaskSpec)> {
        while *next < self.pending.len() {
            let request = &self.pending[*next].resources;
            let best = candidates
                .iter()
                .enumerate()
                .filter(|(_, &s)| self.slots[s].descriptor.satisfies(request))
                .min_by_key(|(_, &s)| rank(&self.slots[s]))
                .map(|(at, _)| at);
            match best {
                Some(at) => {
                    let task = self.pending.remove(*next).expect("index is in range");
                    return Some((at, task));
                }
                None => *next += 1,
            }
        }
        None
    }

    /// Whether buffered results should go out now: no other task is running (so none is coming
    /// soon), enough have gathered, or the oldest has waited `RESULT_HOLD`.
    fn results_due(&mut self) -> bool {
        if self.outbox.is_empty() {
            return self.returned.is_some();
        }
        let since = *self.outbox_since.get_or_insert_with(Instant::now);
        let running = self
            .slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Busy(_)) || !s.queued.is_empty());
        !running
            || self.outbox.len() >= RESULT_BATCH
            || since.elapsed() >= RESULT_HOLD
            || self.draining
    }

    /// When held results must go out, if any are held.
    fn hold_until(&self) -> Option<Instant> {
        self.outbox_since
            .filter(|_| !self.outbox.is_empty())
            .map(|since| since + RESULT_HOLD)
    }

    /// Sends buffered results; while reconnecting they wait for the new link.
    async fn flush(&mut self) {
        let Some(link) = &mut self.link else { return };
        self.outbox_since = None;
        if let Some(returned) = self.returned.take() {
            link.send(&ManagerMessage::Draining { returned }).await;
        }
        if !self.outbox.is_empty() {
            let results = std::mem::take(&mut self.outbox);
            link.send(&ManagerMessage::Results(results)).await;
            self.last_sent = Instant::now();
        }
    }

    /// Reads the MPS servers' logs for fatal GPU errors and handles each as a GPU event.
    fn check_gpu_faults(&mut self) {
        let faults: Vec<_> = self.mps.iter_mut().flat_map(|d| d.take_faults()).collect();
        for fault in faults {
            self.on_gpu_fault(fault);
        }
    }

    /// A fatal error on an MPS GPU poisons every client on it, and the MPS server does not say
    /// which client caused it (the client its log names is not reliably the culprit,
    /// docs/results/mps-fault.md). So every task running on the GPU ends with `GpuFault`, and
    /// every worker there is killed and restarted once the server had time to recover.
    fn on_gpu_fault(&mut self, fault: crate::mps::GpuFault) {
        tracing::error!(gpu = %fault.gpu_uuid, "MPS fatal GPU error: {}", fault.line);
        let hold = Instant::now() + GPU_RECOVERY;
        let detail = format!(
            "fatal GPU error on {}, which every MPS client of the GPU shares",
            fault.gpu_uuid
        );
        let on_gpu = |s: &Slot| {
            s.descriptor.kind == htex_protocol::SlotKind::Mps
                && s.descriptor.gpu_uuid.as_deref() == Some(fault.gpu_uuid.as_str())
        };
        for slot in self.slots.iter_mut().filter(|s| on_gpu(s)) {
            slot.hold_until = Some(hold);
            if let SlotState::Busy(task) = &mut slot.state {
                task.ending = Some(TaskError::GpuFault {
                    detail: detail.clone(),
                });
            }
            if let Some(process) = &slot.process {
                process.kill();
            }
        }
    }

    /// Timeouts, restarts and heartbeats; `Some` ends the manager.
    async fn on_tick(&mut self) -> Option<Result<(), ManagerError>> {
        self.check_gpu_faults();
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            match &mut slot.state {
                SlotState::Busy(task)
                    if task.ending.is_none() && task.deadline.is_some_and(|d| now >= d) =>
                {
                    let after_ms = task.timeout_ms.unwrap_or(0);
                    task.ending = Some(TaskError::Timeout { after_ms });
                    if let Some(process) = &slot.process {
                        process.kill();
                    }
                }
                SlotState::Down { restart_at } if now >= *restart_at => self.spawn_worker(index),
                _ => {}
            }
        }
        if self.drain_deadline.is_some_and(|d| now >= d) {
            tracing::warn!(
                "drain timeout: stopping with {} task(s) still running",
                self.load()
            );
            if let Some(link) = &mut self.link {
                link.send(&ManagerMessage::Goodbye).await;
            }
            return Some(Ok(()));
        }
        // While reconnecting, neither heartbeats nor silence count.
        self.link.as_ref()?;
        if now.duration_since(self.last_heard) > self.heartbeat.threshold {
            let why = format!("silent for over {:?}", self.heartbeat.threshold);
            return self.lose_link(&why);
        }
        if now.duration_since(self.last_sent) >= self.heartbeat.period {
            if let Some(link) = &mut self.link {
                link.send(&ManagerMessage::Heartbeat).await;
            }
            self.last_sent = now;
        }
        None
    }

    fn load(&self) -> usize {
        self.pending.len()
            + self
                .slots
                .iter()
                .map(|s| usize::from(matches!(s.state, SlotState::Busy(_))) + s.queued.len())
                .sum::<usize>()
    }

    fn drained(&self) -> bool {
        self.draining && self.load() == 0 && self.outbox.is_empty()
    }

    fn stop_workers(&mut self) {
        for slot in &mut self.slots {
            if let Some(process) = slot.process.take() {
                process.kill();
            }
        }
    }
}

impl Slot {
    /// Whether more tasks may be queued behind the one its worker runs.
    fn takes_queued(&self, depth: usize) -> bool {
        let running =
            matches!(&self.state, SlotState::Busy(t) if t.ending.is_none() && !t.orphaned);
        running
            && self.process.is_some()
            && self.queued.len() < depth
            && self.run_avg_us.is_some_and(|avg| avg < PIPELINE_SHORT_US)
    }
}

/// How long the workers of a faulted GPU stay down: the MPS server recovers once every client
/// exited (a new client ran 4.7 s after the fault on an H100, docs/results/mps-fault.md).
const GPU_RECOVERY: Duration = Duration::from_secs(2);

/// Registers again until it works or the reconnect timeout passes; a refusal ends it at once.
async fn reconnect(config: ManagerConfig, events: mpsc::UnboundedSender<Event>, generation: u64) {
    let deadline = Instant::now() + config.reconnect_timeout;
    let mut attempt = config.clone();
    attempt.connect_timeout = config.connect_timeout.min(Duration::from_secs(5));
    loop {
        match crate::link::connect(&attempt, events.clone(), generation).await {
            Ok((link, heartbeat)) => {
                let _ = events.send(Event::Reconnected(link, heartbeat));
                return;
            }
            Err(error @ ManagerError::Refused(_)) => {
                let _ = events.send(Event::ReconnectFailed(error));
                return;
            }
            Err(error) if Instant::now() >= deadline => {
                tracing::error!("giving up on the interchange: {error}");
                let _ = events.send(Event::ReconnectFailed(ManagerError::InterchangeLost(
                    config.interchange.clone(),
                )));
                return;
            }
            Err(error) => {
                tracing::debug!("reconnect attempt failed: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Orders slots from least to most capable: CPU, MIG, MPS, whole GPU, then by SMs.
fn capability(slot: &htex_protocol::SlotDescriptor) -> (u8, u32) {
    let rank = match slot.kind {
        htex_protocol::SlotKind::Cpu => 0,
        htex_protocol::SlotKind::Mig => 1,
        htex_protocol::SlotKind::Mps => 2,
        htex_protocol::SlotKind::Gpu => 3,
    };
    (rank, slot.sm_count.unwrap_or(0))
}

/// No delay for a worker that ran a while; then 100 ms doubling up to 5 s for one that keeps dying.
fn restart_backoff(quick_deaths: u32) -> Duration {
    if quick_deaths <= 1 {
        return Duration::ZERO;
    }
    Duration::from_millis(100u64 << (quick_deaths - 2).min(6)).min(Duration::from_secs(5))
}
