//! The manager's event loop: one task owns the slots, the pending tasks and the result outbox.
//! Events come from the link's reader, the workers' readers and the manager's handles; each
//! burst of them is followed by assigning pending tasks and, when due, flushing results. The
//! concerns live beside this loop: `slot` (a slot's state), `assign` (which worker runs which
//! task), `outbox` (results), `session` (links and reconnects), `lifecycle` (worker processes),
//! `faults` (GPU faults on MPS slots) and `report` (reports for a monitoring interchange).

mod assign;
mod faults;
mod lifecycle;
mod outbox;
mod report;
mod session;
mod slot;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use htex_protocol::{
    InterchangeMessage, ManagerMessage, TaskId, TaskOutput, TaskResult, TaskSpec, Timings,
    WorkerReply,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::link::{Heartbeat, Link, Registered};
use crate::mps::{FaultLog, GpuFault};
use crate::workers::WorkerProcess;
use crate::NodeResources;
use crate::{ManagerConfig, ManagerError};
use faults::FaultWatch;
use outbox::Outbox;
use slot::Slot;

pub(crate) enum Event {
    /// A message on link `generation`.
    Interchange {
        generation: u64,
        message: InterchangeMessage,
    },
    InterchangeGone {
        generation: u64,
    },
    /// Registered again after link `generation - 1` was lost; its reader is not started yet.
    Reconnected {
        generation: u64,
        registered: Registered,
    },
    /// No interchange within the reconnect timeout (or it refused this manager).
    ReconnectFailed(ManagerError),
    /// Finish the running tasks, give back the rest, then exit (SIGTERM, say).
    Drain,
    Worker {
        slot: usize,
        generation: u64,
        event: WorkerEvent,
    },
    /// The MPS servers' logs were read (off the event loop), with the faults they reported.
    FaultsRead {
        logs: Vec<FaultLog>,
        faults: Vec<GpuFault>,
    },
    /// A round of GPU samples (the sampler thread).
    GpuSamples(crate::gpu_sampler::GpuRound),
    Stop,
}

pub(crate) enum WorkerEvent {
    Reply(WorkerReply),
    /// `by_signal`: a signal ended it (the manager's own kills are told apart by the task's
    /// `ending`).
    Exited {
        detail: String,
        by_signal: bool,
    },
}

/// Most events handled before pending tasks are assigned and results flushed.
const EVENT_BURST: usize = 1024;
/// How often deadlines, restarts, GPU faults and heartbeats are looked at.
const TICK: Duration = Duration::from_millis(50);

/// What `Manager::start` hands the loop.
pub(crate) struct Start {
    pub config: ManagerConfig,
    /// Random per `Manager::start`: registering again as the same instance keeps its tasks.
    pub instance: u64,
    pub resources: NodeResources,
    pub registered: Registered,
    pub events_tx: mpsc::UnboundedSender<Event>,
}

pub(crate) async fn run(
    start: Start,
    mut events: mpsc::UnboundedReceiver<Event>,
) -> Result<(), ManagerError> {
    let mut state = State::new(start);
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
    if let Some(reconnecting) = state.reconnecting.take() {
        reconnecting.abort();
    }
    // MPS daemons quit, each call of their control program bounded, off the event loop.
    let node = (std::mem::take(&mut state.mps), state.empty_pipe.take());
    let _ = tokio::task::spawn_blocking(move || drop(node)).await;
    // zmq.rs gives no way to wait for queued frames to reach the wire: give them a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::info!(manager = %state.config.manager_id, "manager stopped");
    outcome
}

pub(crate) struct State {
    config: ManagerConfig,
    instance: u64,
    /// MPS daemons, quit when the manager stops, as the empty pipe directory is removed.
    mps: Vec<crate::mps::MpsDaemon>,
    empty_pipe: Option<crate::mps::EmptyPipeDir>,
    faults: FaultWatch,
    /// `None` while reconnecting.
    link: Option<Link>,
    /// Generation of the current link; events of older links are ignored.
    link_generation: u64,
    /// The background registration while the link is down.
    reconnecting: Option<JoinHandle<()>>,
    heartbeat: Heartbeat,
    /// The largest frame on the link: this manager's limit or the interchange's, the smaller.
    frame_limit: usize,
    events: mpsc::UnboundedSender<Event>,
    slots: Vec<Slot<WorkerProcess>>,
    /// Tasks received and not yet on a worker, in arrival order.
    pending: VecDeque<TaskSpec>,
    outbox: Outbox,
    draining: bool,
    /// Draining because this process got SIGTERM or SIGINT (a batch job ending signals every
    /// process of the job: a worker that dies now leaves its task to be run again).
    signalled: bool,
    /// `WorkerLost` results of workers a signal from outside killed, held until the instant
    /// given: if this manager is signalled meanwhile (a batch job ending signals every process,
    /// and the workers often die first), they are dropped and the interchange runs the tasks
    /// again.
    suspect: Vec<(Instant, TaskResult)>,
    /// When a drain gives up on running tasks and stops (`None`: not draining, or never).
    drain_deadline: Option<Instant>,
    last_heard: Instant,
    last_sent: Instant,
    /// Reports for an interchange that records events.
    reporting: report::Reporting,
    /// Samples the slots' GPUs while it lives.
    _gpu_sampler: Option<crate::gpu_sampler::GpuSampler>,
}

impl State {
    fn new(start: Start) -> Self {
        let Start {
            config,
            instance,
            resources,
            registered,
            events_tx,
        } = start;
        let now = Instant::now();
        let slots = config
            .slots
            .iter()
            .zip(resources.slot_envs)
            .map(|(planned, env)| Slot::new(planned.descriptor.clone(), env))
            .collect();
        let logs = resources
            .mps_daemons
            .iter()
            .map(|d| d.fault_log())
            .collect();
        let mut state = State {
            outbox: Outbox::new(config.max_frame_bytes),
            frame_limit: config.max_frame_bytes,
            config,
            instance,
            mps: resources.mps_daemons,
            empty_pipe: resources.empty_pipe,
            faults: FaultWatch::new(logs),
            link: None,
            link_generation: 0,
            reconnecting: None,
            heartbeat: registered.session.heartbeat,
            events: events_tx,
            slots,
            pending: VecDeque::new(),
            draining: false,
            signalled: false,
            suspect: Vec::new(),
            drain_deadline: None,
            last_heard: now,
            last_sent: now,
            reporting: report::Reporting::default(),
            _gpu_sampler: None,
        };
        state._gpu_sampler = state.start_gpu_sampler();
        state.install(registered);
        state
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
            Event::Reconnected {
                generation,
                registered,
            } => self.on_reconnected(generation, registered).await,
            Event::ReconnectFailed(error) => return Some(Err(error)),
            Event::Drain => {
                self.signalled = true;
                for (_, result) in self.suspect.drain(..) {
                    tracing::warn!(
                        task = result.id,
                        "its worker died of the signal this manager got: the interchange runs it again"
                    );
                }
                self.start_draining();
            }
            Event::Worker {
                slot,
                generation,
                event,
            } => {
                if self.slots[slot].generation == generation {
                    if let Some(event) = self.defer_for_faults(slot, generation, event) {
                        self.on_worker(slot, event);
                    }
                }
            }
            Event::FaultsRead { logs, faults } => self.on_faults_read(logs, faults),
            Event::GpuSamples(round) => self.on_gpu_samples(round),
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
                if self.config.zero_worker {
                    let now = htex_protocol::now_us();
                    tasks.for_each(|t| self.outbox.push(answered_at_once(t.id, now)));
                } else {
                    self.pending.extend(tasks);
                }
            }
            InterchangeMessage::Cancel(ids) => {
                for id in ids {
                    let answer = assign::cancel(&mut self.slots, &mut self.pending, id);
                    if let Some(answer) = answer {
                        self.outbox.push(answer);
                    }
                }
            }
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
            InterchangeMessage::Stored { results } => self.outbox.stored(results),
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
        self.drain_deadline = crate::config::deadline_after(self.config.drain_timeout);
        let returned: Vec<TaskId> = self.pending.drain(..).map(|t| t.id).collect();
        tracing::info!(
            "draining: finishing {} running task(s), giving back {}",
            self.load(),
            returned.len()
        );
        self.outbox.give_back(returned);
    }

    fn assign(&mut self) {
        assign::assign(
            &mut self.slots,
            &mut self.pending,
            self.config.pipeline_depth,
        );
    }

    fn results_due(&mut self) -> bool {
        let running = self.slots.iter().any(|s| s.is_working());
        self.outbox.due(running, self.draining)
    }

    /// When held results must go out; never while the link is down (they wait for the next).
    fn hold_until(&self) -> Option<Instant> {
        self.link.as_ref()?;
        self.outbox.hold_until()
    }

    /// Sends held results; while reconnecting they wait for the new link.
    async fn flush(&mut self) {
        let Some(link) = &mut self.link else { return };
        if self.outbox.flush(link).await {
            self.last_sent = Instant::now();
        }
    }

    /// Timeouts, restarts, GPU faults, the drain deadline and heartbeats; `Some` ends the manager.
    async fn on_tick(&mut self) -> Option<Result<(), ManagerError>> {
        self.read_fault_logs();
        let now = Instant::now();
        self.check_deadlines(now);
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
        self.keep_alive(now).await
    }

    fn load(&self) -> usize {
        self.pending.len() + self.slots.iter().map(|s| s.load()).sum::<usize>()
    }

    fn drained(&self) -> bool {
        self.draining
            && self.load() == 0
            && self.outbox.is_empty()
            && self.outbox.settled()
            && self.suspect.is_empty()
    }
}

/// The answer a zero-worker manager gives every task: success, with no run.
fn answered_at_once(id: TaskId, now: u64) -> TaskResult {
    TaskResult {
        id,
        outcome: Ok(TaskOutput::Value(vec![0xc0])),
        timings: Timings {
            started_us: now,
            finished_us: now,
            ..Default::default()
        },
        slot: None,
        attempts: 1,
    }
}
