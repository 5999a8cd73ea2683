//! The scaling loop: blocks of managers asked of a provider as the backlog grows, drained and
//! released when idle, replaced before their walltime ends. It runs in the core, in the same
//! steps that dispatch tasks: a block chosen for release is set draining before any other input
//! is applied, so no task is sent to a block that is going away. Its I/O (`sbatch`, `squeue`,
//! `scancel`) is effects, run by the shell on a thread of its own, whose answers come back as
//! inputs.
//!
//! The rules, against what Parsl's and HyperQueue's users run into:
//! - pending blocks count as capacity and at most `max_pending` wait at once: a backlog never
//!   submits a block twice, and a scheduler blip (a failing `squeue`) stops every decision
//!   until the state is known again, instead of reading as "no blocks";
//! - release drains first: the managers finish what they hold, say goodbye and exit, and the job
//!   ends `COMPLETED`; only a drain past `drain_timeout` or a pending block is cancelled;
//! - a block that ends behind htex's back (scancel, node failure, walltime) is lost at once: its
//!   managers' tasks are retried (a loss counted against their `max_retries`) without waiting
//!   for the heartbeat threshold; a block htex released costs its tasks no retry, and near its
//!   walltime a block drains and takes no task whose time limit would outlast it;
//! - failed submissions back off, and past `max_failures` in a row scaling pauses with the
//!   command's error in `htex blocks` until `htex blocks --resume`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use htex_protocol::{BlockReport, InterchangeMessage, ManagerState, ScalingReport, SlotDescriptor};
use htex_provider::{JobEnd, JobId, JobState, JobStatus};

use super::{Core, Effect, Effects, Now, Side};
use crate::records::ManagerKey;
use crate::scaling::ScalingConfig;

/// Ended blocks kept for `htex blocks`.
const ENDED_KEPT: usize = 32;

/// Pending reasons that never clear by waiting: the block is cancelled and the submission
/// counts as failed.
const HOPELESS: &[&str] = &[
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMaxNodePerJobLimit",
    "QOSMaxWallDurationPerJobLimit",
    "AssocMaxNodesPerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
    "BadConstraints",
    "ReqNodeNotAvail, UnavailableNodes",
];

/// What the shell asks of the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProviderAction {
    Submit { block: u64 },
    Poll { jobs: Vec<JobId> },
    Cancel { block: u64, job: JobId },
}

/// The provider's answers.
#[derive(Debug)]
pub(crate) enum ProviderEvent {
    Submitted {
        block: u64,
        result: Result<JobId, String>,
    },
    Polled(Result<HashMap<JobId, JobStatus>, String>),
    Cancelled {
        block: u64,
        result: Result<(), String>,
    },
}

/// What the core knows of the provider's blocks before any registers.
#[derive(Debug, Clone)]
pub(crate) struct BlockShape {
    pub kind: &'static str,
    pub managers_per_block: u32,
    pub walltime: Option<Duration>,
    pub slots_estimate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `sbatch` is running.
    Submitting,
    Pending,
    Running,
    /// Its managers were told to drain; it ends when they exit.
    Draining,
    /// `scancel` was asked for.
    Cancelling,
    Ended,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Submitting => "submitting",
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Cancelling => "cancelling",
            Phase::Ended => "ended",
        }
    }

    /// Counts against `max_blocks` and as capacity for the backlog.
    fn live(self) -> bool {
        matches!(self, Phase::Submitting | Phase::Pending | Phase::Running)
    }
}

struct Block {
    number: u64,
    job: Option<JobId>,
    phase: Phase,
    submitted: Instant,
    /// When it was first seen running or a manager of it registered.
    started: Option<Instant>,
    /// The scheduler's reason, or how it ended.
    reason: Option<String>,
    /// Managers of it that ever registered.
    managers_seen: u32,
    /// Since when it has been draining (or cancelling).
    releasing_since: Option<Instant>,
    /// Cancel it as soon as its job id is known.
    cancel_when_submitted: bool,
}

pub(crate) struct Scaling {
    config: ScalingConfig,
    shape: BlockShape,
    /// The slots of the first manager of a block that registered: what a block can run.
    slots: Option<Vec<SlotDescriptor>>,
    blocks: BTreeMap<u64, Block>,
    ended: VecDeque<Block>,
    next_block: u64,
    init_done: bool,
    poll_in_flight: bool,
    last_poll: Option<Instant>,
    /// When a poll last succeeded: decisions need a state this fresh.
    last_ok: Option<Instant>,
    /// The last poll failed: no decision until one succeeds.
    status_unknown: Option<String>,
    failures: u32,
    next_submit: Option<Instant>,
    paused: Option<String>,
    last_error: Option<String>,
    decision: String,
}

impl Scaling {
    pub fn new(config: ScalingConfig, shape: BlockShape) -> Scaling {
        Scaling {
            config,
            shape,
            slots: None,
            blocks: BTreeMap::new(),
            ended: VecDeque::new(),
            next_block: 0,
            init_done: false,
            poll_in_flight: false,
            last_poll: None,
            last_ok: None,
            status_unknown: None,
            failures: 0,
            next_submit: None,
            paused: None,
            last_error: None,
            decision: "no decision yet".into(),
        }
    }

    /// Why submissions are paused, if they are.
    pub fn paused(&self) -> Option<&str> {
        self.paused.as_deref()
    }

    /// The block number a manager's `--block-id` names, when it is one of ours.
    fn block_of(&self, block_id: Option<&str>) -> Option<u64> {
        let n: u64 = block_id?.strip_prefix('b')?.parse().ok()?;
        self.blocks.contains_key(&n).then_some(n)
    }

    fn slots_per_block(&self) -> usize {
        match &self.slots {
            Some(slots) => (slots.len().max(1)) * self.shape.managers_per_block as usize,
            None => self.shape.slots_estimate.max(1) as usize,
        }
    }

    /// Whether blocks could run tasks with these needs (unknown until a block registered:
    /// assumed so).
    pub fn could_serve(&self, request: &htex_protocol::ResourceRequest) -> bool {
        self.paused.is_none()
            && match &self.slots {
                None => true,
                Some(slots) => request.is_any() || slots.iter().any(|s| s.satisfies(request)),
            }
    }

    fn end(&mut self, number: u64, why: String) {
        if let Some(mut block) = self.blocks.remove(&number) {
            block.phase = Phase::Ended;
            block.reason = Some(why);
            self.ended.push_front(block);
            self.ended.truncate(ENDED_KEPT);
        }
    }

    fn failed_submission(&mut self, now: Instant, why: String) {
        self.failures += 1;
        let wait = self.config.backoff(self.failures);
        self.next_submit = Some(now + wait);
        if self.failures >= self.config.max_failures {
            self.paused = Some(format!(
                "paused after {} failed block submissions in a row; fix the provider settings \
                 and run `htex blocks --resume`",
                self.failures
            ));
            tracing::error!(failures = self.failures, "scaling paused: {why}");
        } else {
            tracing::error!(
                failures = self.failures,
                "a block submission failed (next try in {:.0} s): {why}",
                wait.as_secs_f64()
            );
        }
        self.last_error = Some(why);
    }
}

/// What a manager contributes to its block's idleness: `None` while it holds tasks.
fn idle_for(now: Instant, tasks: usize, last_busy: Instant) -> Option<Duration> {
    (tasks == 0).then(|| now.saturating_duration_since(last_busy))
}

impl Core {
    /// A manager registered: its block is running, and its slots say what blocks can run.
    pub(super) fn block_manager_registered(
        &mut self,
        now: Now,
        key: ManagerKey,
        out: &mut Effects,
    ) {
        let Some(scaling) = self.scaling.as_mut() else {
            return;
        };
        let Some(record) = self.managers.get(key) else {
            return;
        };
        let Some(number) = scaling.block_of(record.registration.block_id.as_deref()) else {
            return;
        };
        if scaling.slots.is_none() && !record.registration.slots.is_empty() {
            scaling.slots = Some(record.registration.slots.clone());
        }
        let block = scaling.blocks.get_mut(&number).expect("block_of checked");
        block.managers_seen += 1;
        block.started.get_or_insert(now.at);
        if matches!(block.phase, Phase::Submitting | Phase::Pending) {
            block.phase = Phase::Running;
        }
        if matches!(block.phase, Phase::Draining | Phase::Cancelling) {
            // A manager that comes up in a block being released gets nothing.
            if let Some(m) = self.managers.get_mut(key) {
                m.state = ManagerState::Draining;
                out.send(Side::Manager, &m.peer, &InterchangeMessage::Drain);
            }
        }
    }

    /// Managers of a block of ours, with their keys.
    fn block_managers(&self, number: u64) -> Vec<ManagerKey> {
        let tag = format!("b{number}");
        self.managers
            .iter()
            .filter(|(_, m)| m.registration.block_id.as_deref() == Some(tag.as_str()))
            .map(|(&k, _)| k)
            .collect()
    }

    /// The provider answered.
    pub(super) fn on_provider(&mut self, now: Now, event: ProviderEvent, out: &mut Effects) {
        let Some(scaling) = self.scaling.as_mut() else {
            return;
        };
        match event {
            ProviderEvent::Submitted { block, result } => match result {
                Ok(job) => {
                    scaling.failures = 0;
                    scaling.next_submit = None;
                    let Some(b) = scaling.blocks.get_mut(&block) else {
                        return;
                    };
                    tracing::info!(block = %format!("b{block}"), job = %job, "block submitted");
                    b.job = Some(job.clone());
                    if b.phase == Phase::Submitting {
                        b.phase = Phase::Pending;
                    }
                    if b.cancel_when_submitted {
                        b.phase = Phase::Cancelling;
                        b.releasing_since = Some(now.at);
                        out.0
                            .push(Effect::Provider(ProviderAction::Cancel { block, job }));
                    }
                }
                Err(why) => {
                    scaling.end(block, format!("submission failed: {why}"));
                    scaling.failed_submission(now.at, why);
                }
            },
            ProviderEvent::Cancelled { block, result } => {
                if let Err(why) = result {
                    tracing::warn!(block = %format!("b{block}"), "cancel failed: {why}");
                    scaling.last_error = Some(why);
                }
            }
            ProviderEvent::Polled(Err(why)) => {
                scaling.poll_in_flight = false;
                if scaling.status_unknown.is_none() {
                    tracing::warn!("cannot read the blocks' states; scaling waits: {why}");
                }
                scaling.status_unknown = Some(why.clone());
                scaling.last_error = Some(why);
            }
            ProviderEvent::Polled(Ok(states)) => {
                scaling.poll_in_flight = false;
                scaling.last_ok = Some(now.at);
                if scaling.status_unknown.take().is_some() {
                    tracing::info!("the blocks' states can be read again");
                }
                self.apply_states(now, states, out);
            }
        }
    }

    fn apply_states(&mut self, now: Now, states: HashMap<JobId, JobStatus>, out: &mut Effects) {
        let scaling = self.scaling.as_mut().expect("called with scaling");
        let mut ended: Vec<(u64, JobEnd, Option<String>)> = Vec::new();
        let mut hopeless: Vec<(u64, JobId, String)> = Vec::new();
        for (&number, block) in scaling.blocks.iter_mut() {
            let Some(job) = &block.job else {
                continue;
            };
            match states.get(job) {
                None => ended.push((number, JobEnd::Vanished, None)),
                Some(JobStatus {
                    state: JobState::Ended(end),
                    reason,
                }) => ended.push((number, end.clone(), reason.clone())),
                Some(JobStatus {
                    state: JobState::Pending,
                    reason,
                }) => {
                    block.reason = reason.clone();
                    let never = reason
                        .as_deref()
                        .filter(|r| HOPELESS.iter().any(|h| r.starts_with(h)));
                    if let (Some(r), Phase::Pending) = (never, block.phase) {
                        hopeless.push((number, job.clone(), r.to_string()));
                    }
                }
                Some(JobStatus {
                    state: JobState::Running,
                    reason,
                }) => {
                    block.reason = reason.clone();
                    block.started.get_or_insert(now.at);
                    if block.phase == Phase::Pending {
                        block.phase = Phase::Running;
                    }
                }
            }
        }
        for (number, job, reason) in hopeless {
            let why = format!(
                "block b{number} (job {job}) can never start: the scheduler says `{reason}`; \
                 change the provider settings"
            );
            if let Some(b) = scaling.blocks.get_mut(&number) {
                b.phase = Phase::Cancelling;
                b.releasing_since = Some(now.at);
                b.reason = Some(reason);
            }
            out.0.push(Effect::Provider(ProviderAction::Cancel {
                block: number,
                job,
            }));
            scaling.failed_submission(now.at, why);
        }
        for (number, end, reason) in ended {
            self.block_ended(now, number, end, reason);
        }
    }

    /// A block's job ended: its managers are gone with it.
    fn block_ended(&mut self, now: Now, number: u64, end: JobEnd, reason: Option<String>) {
        let scaling = self.scaling.as_mut().expect("called with scaling");
        let Some(block) = scaling.blocks.get(&number) else {
            return;
        };
        let ours = matches!(block.phase, Phase::Draining | Phase::Cancelling);
        let never_started = block.managers_seen == 0;
        let mut why = match (ours, &end) {
            (true, _) => format!("released ({end})"),
            (false, JobEnd::Cancelled) => "cancelled outside htex".to_string(),
            (false, end) => format!("{end} outside htex's control"),
        };
        if let Some(r) = reason {
            why.push_str(&format!(": {r}"));
        }
        let job = block.job.clone().unwrap_or_default();
        scaling.end(number, why.clone());
        if !ours {
            tracing::warn!(block = %format!("b{number}"), job = %job, "block lost: {why}");
        } else {
            tracing::info!(block = %format!("b{number}"), job = %job, "block ended: {why}");
        }
        if never_started && !ours {
            let why = format!(
                "block b{number} (job {job}) ended before any manager registered ({end}); its \
                 output is in the provider's run_dir, b{number}/"
            );
            scaling.failed_submission(now.at, why);
        }
        // One of htex's own releases is not the tasks' fault; any other end (walltime
        // included: a task longer than any block must not retry forever) counts a loss.
        let charge = !ours;
        for key in self.block_managers(number) {
            self.lose_manager_charged(key, &format!("its block b{number} {why}"), charge);
        }
    }

    /// Drains a block: its managers get no more tasks, finish what they hold and exit.
    fn release_block(&mut self, now: Now, number: u64, why: &str, out: &mut Effects) {
        let keys = self.block_managers(number);
        let scaling = self.scaling.as_mut().expect("called with scaling");
        let Some(block) = scaling.blocks.get_mut(&number) else {
            return;
        };
        tracing::info!(block = %format!("b{number}"), "releasing block: {why}");
        block.releasing_since = Some(now.at);
        block.reason = Some(why.to_string());
        match (&block.job, block.phase) {
            (None, _) => {
                block.cancel_when_submitted = true;
                block.phase = Phase::Cancelling;
            }
            (Some(job), Phase::Pending) if keys.is_empty() => {
                block.phase = Phase::Cancelling;
                out.0.push(Effect::Provider(ProviderAction::Cancel {
                    block: number,
                    job: job.clone(),
                }));
            }
            _ => {
                block.phase = Phase::Draining;
                for key in keys {
                    if let Some(m) = self.managers.get_mut(key) {
                        m.state = ManagerState::Draining;
                        out.send(Side::Manager, &m.peer, &InterchangeMessage::Drain);
                    }
                }
            }
        }
    }

    /// One scaling step, on the tick.
    pub(super) fn scale(&mut self, now: Now, out: &mut Effects) {
        let Some(scaling) = self.scaling.as_mut() else {
            return;
        };
        // A poll that hangs (a controller going down takes seconds to fail) leaves the state
        // stale: no decision on it either.
        let known_since = scaling.last_ok.or(scaling.last_poll);
        let stale = scaling.poll_in_flight
            && known_since.is_some_and(|at| {
                now.at.saturating_duration_since(at) > scaling.config.poll_interval() * 2
            });
        // Poll while any block has a job to ask about.
        let jobs: Vec<JobId> = scaling
            .blocks
            .values()
            .filter_map(|b| b.job.clone())
            .collect();
        let due = scaling.last_poll.is_none_or(|at| {
            now.at.saturating_duration_since(at) >= scaling.config.poll_interval()
        });
        if !jobs.is_empty() && !scaling.poll_in_flight && due {
            scaling.poll_in_flight = true;
            scaling.last_poll = Some(now.at);
            out.0.push(Effect::Provider(ProviderAction::Poll { jobs }));
        }
        // Drains are between htex and its managers: they go on whatever the scheduler says.
        self.release_by_walltime_and_drain_timeout(now, out);
        let scaling = self.scaling.as_mut().expect("checked above");
        if let Some(why) = &scaling.status_unknown {
            scaling.decision = format!("waiting: the blocks' states cannot be read ({why})");
            return;
        }
        if stale {
            scaling.decision = format!(
                "waiting: the provider has not answered about its blocks for {:.0} s",
                now.at
                    .saturating_duration_since(known_since.expect("checked"))
                    .as_secs_f64()
            );
            return;
        }
        let (wanted, backlog) = self.blocks_wanted(now);
        let scaling = self.scaling.as_mut().expect("checked above");
        let live = scaling.blocks.values().filter(|b| b.phase.live()).count() as u32;
        let pending = scaling
            .blocks
            .values()
            .filter(|b| matches!(b.phase, Phase::Submitting | Phase::Pending))
            .count() as u32;
        let releasing = scaling.blocks.len() as u32 - live;
        let slots = scaling.slots_per_block();
        if wanted > live {
            // Draining blocks still hold their nodes: they count against max_blocks.
            let room = scaling.config.max_blocks.saturating_sub(live + releasing);
            let pending_room = scaling.config.max_pending.saturating_sub(pending);
            let n = (wanted - live).min(room).min(pending_room);
            let waiting = scaling.next_submit.filter(|&at| now.at < at);
            scaling.decision = if let Some(paused) = &scaling.paused {
                paused.clone()
            } else if let Some(at) = waiting {
                format!(
                    "{wanted} block(s) wanted for {backlog} task(s); backing off after {} failed \
                     submission(s), next try in {:.0} s",
                    scaling.failures,
                    at.saturating_duration_since(now.at).as_secs_f64()
                )
            } else if n == 0 {
                format!(
                    "{wanted} block(s) wanted for {backlog} task(s) ({slots} slot(s) each); \
                     waiting: {pending} pending (max_pending {}), {} of max_blocks {} in use",
                    scaling.config.max_pending,
                    live + releasing,
                    scaling.config.max_blocks
                )
            } else {
                for _ in 0..n {
                    scaling.next_block += 1;
                    let number = scaling.next_block;
                    scaling.blocks.insert(
                        number,
                        Block {
                            number,
                            job: None,
                            phase: Phase::Submitting,
                            submitted: now.at,
                            started: None,
                            reason: None,
                            managers_seen: 0,
                            releasing_since: None,
                            cancel_when_submitted: false,
                        },
                    );
                    out.0
                        .push(Effect::Provider(ProviderAction::Submit { block: number }));
                }
                format!(
                    "{wanted} block(s) wanted for {backlog} task(s) ({slots} slot(s) each), \
                     {live} live: submitting {n}"
                )
            };
            scaling.init_done = true;
            return;
        }
        scaling.init_done = true;
        if wanted == live {
            scaling.decision = format!("{live} block(s) for {backlog} task(s): steady");
            return;
        }
        // Release: pending blocks with no manager first (youngest first), then blocks idle past
        // the idle timeout (longest idle first).
        let mut excess = live - wanted;
        let mut pending_blocks: Vec<(Instant, u64)> = scaling
            .blocks
            .values()
            .filter(|b| {
                matches!(b.phase, Phase::Submitting | Phase::Pending) && b.managers_seen == 0
            })
            .map(|b| (b.submitted, b.number))
            .collect();
        pending_blocks.sort_by(|a, b| b.cmp(a));
        let mut chosen: Vec<(u64, String)> = Vec::new();
        for (_, number) in pending_blocks.into_iter().take(excess as usize) {
            chosen.push((number, "not needed any more".into()));
            excess -= 1;
        }
        let idle_timeout = scaling.config.idle_timeout();
        let running: Vec<u64> = scaling
            .blocks
            .values()
            .filter(|b| b.phase == Phase::Running)
            .map(|b| b.number)
            .collect();
        let mut idle: Vec<(Duration, u64)> = Vec::new();
        for number in running {
            if let Some(d) = self.block_idle_for(now.at, number) {
                if d >= idle_timeout {
                    idle.push((d, number));
                }
            }
        }
        idle.sort_by(|a, b| b.cmp(a));
        for (d, number) in idle.into_iter().take(excess as usize) {
            chosen.push((number, format!("idle for {:.0} s", d.as_secs_f64())));
        }
        let scaling = self.scaling.as_mut().expect("checked above");
        scaling.decision = if chosen.is_empty() {
            format!(
                "{live} block(s) for {backlog} task(s), {wanted} wanted: none idle for {:.0} s yet",
                idle_timeout.as_secs_f64()
            )
        } else {
            let names: Vec<String> = chosen.iter().map(|(n, _)| format!("b{n}")).collect();
            format!(
                "{live} block(s) for {backlog} task(s), {wanted} wanted: releasing {}",
                names.join(", ")
            )
        };
        for (number, why) in chosen {
            self.release_block(now, number, &why, out);
        }
    }

    /// How long every manager of a block has held no task; `None` while one holds any (or it
    /// has none connected).
    fn block_idle_for(&self, now: Instant, number: u64) -> Option<Duration> {
        let keys = self.block_managers(number);
        if keys.is_empty() {
            return None;
        }
        keys.iter()
            .map(|&k| {
                let m = self.managers.get(k).expect("listed");
                idle_for(now, m.tasks.len(), m.last_busy)
            })
            .try_fold(Duration::MAX, |acc, d| d.map(|d| acc.min(d)))
    }

    /// Blocks wanted for the backlog (within min and max, init at the first step), and the
    /// backlog: queued tasks a block could run plus those on live blocks' managers.
    fn blocks_wanted(&self, _now: Now) -> (u32, usize) {
        let scaling = self.scaling.as_ref().expect("called with scaling");
        // Queue entries overcount by the cancelled tasks not yet met at a head: the queued
        // count is exact when every class can be served.
        let mut servable = 0usize;
        let mut all = true;
        for id in self.classes.ids() {
            let class = self.classes.get(id);
            if scaling.could_serve(&class.request) {
                servable += class.queue.len();
            } else if class.queue.len() > 0 {
                all = false;
            }
        }
        let mut backlog = if all {
            self.queued
        } else {
            servable.min(self.queued)
        };
        for (number, block) in &scaling.blocks {
            if block.phase.live() {
                for key in self.block_managers(*number) {
                    backlog += self.managers.get(key).map_or(0, |m| m.tasks.len());
                }
            }
        }
        let slots = scaling.slots_per_block() as f64;
        let needed = ((backlog as f64) * scaling.config.parallelism / slots).ceil() as u32;
        let mut wanted = needed.clamp(scaling.config.min_blocks, scaling.config.max_blocks);
        if !scaling.init_done {
            wanted = wanted.max(scaling.config.init_blocks);
        }
        (wanted, backlog)
    }

    /// Blocks near their walltime drain; drains past their timeout are cancelled.
    fn release_by_walltime_and_drain_timeout(&mut self, now: Now, out: &mut Effects) {
        let scaling = self.scaling.as_mut().expect("called with scaling");
        let margin = scaling.config.drain_margin();
        let drain_timeout = scaling.config.drain_timeout();
        let mut near_end = Vec::new();
        let mut overdue = Vec::new();
        for block in scaling.blocks.values_mut() {
            if let (Some(wall), Some(started), Phase::Running) =
                (scaling.shape.walltime, block.started, block.phase)
            {
                let left = (started + wall).saturating_duration_since(now.at);
                if left <= margin {
                    near_end.push((block.number, left));
                }
            }
            let releasing = matches!(block.phase, Phase::Draining | Phase::Cancelling);
            if let (true, Some(since), Some(job)) = (releasing, block.releasing_since, &block.job) {
                if now.at.saturating_duration_since(since) >= drain_timeout {
                    overdue.push((block.number, job.clone(), block.phase));
                }
            }
        }
        for (number, job, phase) in overdue {
            if let Some(b) = scaling.blocks.get_mut(&number) {
                // Once per timeout.
                b.releasing_since = Some(now.at);
                b.phase = Phase::Cancelling;
            }
            tracing::warn!(
                block = %format!("b{number}"),
                "the block was {} for over {:.0} s: cancelling it",
                phase.as_str(),
                drain_timeout.as_secs_f64()
            );
            out.0.push(Effect::Provider(ProviderAction::Cancel {
                block: number,
                job,
            }));
        }
        for (number, left) in near_end {
            let why = format!("its walltime ends in {:.0} s", left.as_secs_f64());
            self.release_block(now, number, &why, out);
        }
    }

    /// The blocks' walltime, in whole seconds, when they have one.
    pub(super) fn block_walltime_s(&self) -> Option<u64> {
        Some(self.scaling.as_ref()?.shape.walltime?.as_secs())
    }

    /// The time a manager's block has left, when its walltime is known.
    pub(super) fn time_left(&self, now: Instant, block_id: Option<&str>) -> Option<Duration> {
        let scaling = self.scaling.as_ref()?;
        let wall = scaling.shape.walltime?;
        let number = scaling.block_of(block_id)?;
        let started = scaling.blocks.get(&number)?.started?;
        Some((started + wall).saturating_duration_since(now))
    }

    /// Shutting down: pending blocks are cancelled (running ones get `Shutdown` with every
    /// manager and end on their own).
    pub(super) fn cancel_pending_blocks(&mut self, now: Now, out: &mut Effects) {
        let Some(scaling) = self.scaling.as_mut() else {
            return;
        };
        let numbers: Vec<u64> = scaling.blocks.keys().copied().collect();
        for number in numbers {
            let b = scaling.blocks.get_mut(&number).expect("listed");
            if b.managers_seen == 0 && b.phase != Phase::Ended {
                b.releasing_since = Some(now.at);
                b.phase = Phase::Cancelling;
                match &b.job {
                    Some(job) => out.0.push(Effect::Provider(ProviderAction::Cancel {
                        block: number,
                        job: job.clone(),
                    })),
                    None => b.cancel_when_submitted = true,
                }
            }
        }
    }

    /// `htex blocks --resume`.
    pub(super) fn resume_scaling(&mut self) -> Result<(), String> {
        let Some(scaling) = self.scaling.as_mut() else {
            return Err("this interchange has no provider: it scales nothing".into());
        };
        if scaling.paused.take().is_some() {
            tracing::info!("scaling resumed");
        }
        scaling.failures = 0;
        scaling.next_submit = None;
        Ok(())
    }

    pub(super) fn scaling_report(&self, now: Instant) -> Option<ScalingReport> {
        let scaling = self.scaling.as_ref()?;
        let report = |b: &Block| {
            let managers = self.block_managers(b.number).len() as u32;
            let time_left = match (scaling.shape.walltime, b.started, b.phase) {
                (Some(w), Some(s), p) if p != Phase::Ended => {
                    Some((s + w).saturating_duration_since(now).as_millis() as u64)
                }
                _ => None,
            };
            BlockReport {
                block: format!("b{}", b.number),
                job_id: b.job.clone(),
                state: b.phase.as_str().into(),
                reason: b.reason.clone(),
                managers,
                age_ms: now.saturating_duration_since(b.submitted).as_millis() as u64,
                idle_ms: if b.phase == Phase::Ended {
                    None
                } else {
                    self.block_idle_for(now, b.number)
                        .map(|d| d.as_millis() as u64)
                },
                time_left_ms: time_left,
            }
        };
        Some(ScalingReport {
            provider: scaling.shape.kind.into(),
            min_blocks: scaling.config.min_blocks,
            max_blocks: scaling.config.max_blocks,
            blocks: scaling
                .blocks
                .values()
                .chain(scaling.ended.iter())
                .map(report)
                .collect(),
            decision: scaling.decision.clone(),
            paused: scaling.paused.clone(),
            last_error: scaling.last_error.clone(),
            failures: scaling.failures,
        })
    }
}
