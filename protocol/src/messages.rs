//! The message enums, one per direction of each link.

use serde::{Deserialize, Serialize};

use crate::slot::SlotDescriptor;
use crate::task::{EncodedTask, TaskId, TaskResult, TaskSpec};

/// The first message a client sends; it must name the protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientHello {
    pub protocol_version: u32,
    /// A label for logs and `htex status`.
    pub name: String,
    /// The largest frame this client accepts: result batches to it stay under it.
    pub max_frame_bytes: u64,
    /// Who the client is across connections (random per `Client` unless set): an interchange
    /// with a journal keeps its tasks under it, so the client finds them again after a
    /// reconnection or a restart. Empty: an anonymous client, which is not journaled.
    #[serde(default)]
    pub identity: String,
}

/// Client → interchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    Hello(ClientHello),
    /// A batch of tasks.
    Submit(Vec<TaskSpec>),
    /// Cancel queued or running tasks by the client's ids.
    Cancel(Vec<TaskId>),
    Command {
        request_id: u64,
        command: Command,
    },
    Heartbeat,
    Goodbye,
    /// The client has the first `results` results sent to it on this connection (counted from
    /// its hello): an interchange with a journal forgets them.
    Received {
        results: u64,
    },
}

/// Interchange → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientReply {
    Welcome {
        protocol_version: u32,
        interchange: String,
        /// The largest frame the interchange accepts: submissions stay under it, and a task
        /// over [`crate::max_item_bytes`] of it cannot be submitted.
        max_frame_bytes: u64,
        /// The interchange keeps a journal and this client named an identity: what it
        /// accepted survives a crash, and the client should reconnect (re-sending what was
        /// not accepted) and acknowledge results with `Received`.
        #[serde(default)]
        journal: bool,
        /// The highest task id it accepted from this identity before (0: none): a
        /// reconnecting client's re-sent tasks up to it are already taken.
        #[serde(default)]
        accepted_upto: TaskId,
    },
    Refused {
        reason: String,
    },
    /// A batch of results, ids in the client's numbering.
    Results(Vec<TaskResult>),
    CommandReply {
        request_id: u64,
        reply: CommandReply,
    },
    /// The client sent something the interchange could not accept; nothing else happened.
    Error {
        message: String,
    },
    Heartbeat,
    /// The `Submit` frame whose first task is `first` was taken, and so was every frame sent
    /// before it that was not answered `Busy`: each of their tasks is accepted (or already
    /// answered, if it was invalid). Cumulative, so the interchange answers many frames at once
    /// (at least every 1 MiB of tasks, and on its heartbeat tick); until then the client keeps
    /// the frames.
    Accepted {
        first: TaskId,
    },
    /// The interchange holds as many task bytes as it may (`--max-queued-bytes`): the `Submit`
    /// frame with these tasks was not taken; send it again after `Resume`. Nothing else about
    /// its tasks happened.
    Busy {
        ids: Vec<TaskId>,
        reason: String,
    },
    /// Room again after `Busy`: submissions may resume.
    Resume,
}

/// Requests on the command channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Status,
    /// Stop sending tasks to a manager; it finishes what it holds and exits.
    Drain {
        manager: String,
    },
    /// Stop sending tasks to a manager, keeping it connected.
    Hold {
        manager: String,
    },
    /// Undo `Hold`.
    Release {
        manager: String,
    },
    /// Stop managers and the interchange; outstanding tasks end with `Cancelled`.
    Shutdown,
    /// Scaling paused after failed submissions goes on (the failure count starts again).
    ResumeScaling,
}

/// Answers on the command channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandReply {
    Status(StatusReport),
    Done,
    Error { message: String },
}

/// What `htex status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub interchange: String,
    pub protocol_version: u32,
    pub uptime_ms: u64,
    pub clients: u32,
    /// Tasks waiting for a slot.
    pub queued: u64,
    /// Tasks accepted and not yet answered (queued included).
    pub outstanding: u64,
    pub managers: Vec<ManagerStatus>,
    /// Bytes of the encoded specs of outstanding tasks, which the interchange holds in memory.
    pub task_bytes: u64,
    /// Past this many task bytes, submissions wait (`Busy`).
    pub max_task_bytes: u64,
    /// How the interchange's ports are secured: `curve`, `plaintext (loopback)` or
    /// `plaintext (--insecure)`.
    #[serde(default)]
    pub security: String,
    /// Blocks and the scaling loop, when the interchange has a provider.
    #[serde(default)]
    pub scaling: Option<Box<ScalingReport>>,
    /// Tasks accepted since the interchange started (restored ones not counted).
    #[serde(default)]
    pub submitted_total: u64,
    /// Tasks that ended with a result since it started.
    #[serde(default)]
    pub completed_total: u64,
    /// Tasks that ended with an error since it started.
    #[serde(default)]
    pub failed_total: u64,
}

/// The scaling loop: its provider, its blocks, and why it did what it did last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingReport {
    /// `slurm` or `local`.
    pub provider: String,
    pub min_blocks: u32,
    pub max_blocks: u32,
    /// Blocks, live first, then the most recent ended ones.
    pub blocks: Vec<BlockReport>,
    /// The last decision, as a sentence ("backlog of 30 tasks ...: submitting 1 block").
    pub decision: String,
    /// Why submissions are paused (after failures in a row), if they are.
    pub paused: Option<String>,
    /// The last provider error (a failed `sbatch`, `squeue` or `scancel`), with the command's
    /// own words.
    pub last_error: Option<String>,
    /// Failed submissions in a row.
    pub failures: u32,
}

/// One block as `htex blocks` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockReport {
    pub block: String,
    /// The batch system's id, once submitted.
    pub job_id: Option<String>,
    /// `submitting`, `pending`, `running`, `draining`, `cancelling` or `ended`.
    pub state: String,
    /// The scheduler's reason, or how and why it ended.
    pub reason: Option<String>,
    /// Managers of the block connected now.
    pub managers: u32,
    pub age_ms: u64,
    /// How long all of its managers have held no task.
    pub idle_ms: Option<u64>,
    /// Until its walltime ends.
    pub time_left_ms: Option<u64>,
}

/// One row of the manager table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagerStatus {
    pub id: String,
    pub hostname: String,
    pub block_id: Option<String>,
    pub version: String,
    pub state: ManagerState,
    pub slots: Vec<SlotDescriptor>,
    /// Tasks the manager holds (running and prefetched).
    pub tasks: u32,
    /// Most tasks it may hold: slots + prefetch.
    pub capacity: u32,
    pub last_heartbeat_ms_ago: u64,
    /// Its last report: each slot busy or idle, its GPUs' samples.
    #[serde(default)]
    pub report: Option<Box<ManagerReport>>,
}

/// A manager's state as the interchange sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerState {
    Active,
    /// Connected, gets no new tasks (`Hold`).
    Held,
    /// Finishing its tasks before it exits.
    Draining,
}

impl ManagerState {
    /// The state's name as `htex status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ManagerState::Active => "active",
            ManagerState::Held => "held",
            ManagerState::Draining => "draining",
        }
    }
}

impl std::fmt::Display for ManagerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A manager's registration: who it is and what slots it offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// Must stay the first field: [`crate::peek_protocol_version`] reads it from any version.
    pub protocol_version: u32,
    pub manager_id: String,
    pub hostname: String,
    pub block_id: Option<String>,
    /// The htex release, for `htex status`.
    pub version: String,
    pub slots: Vec<SlotDescriptor>,
    /// Tasks it accepts beyond one per slot.
    pub prefetch: u32,
    pub pid: u32,
    /// Random per manager process: a registration with the same id and instance is the same
    /// manager coming back on a new connection, not another one claiming its id.
    pub instance: u64,
    /// Tasks it still holds from before (registering again): running, waiting, or answered with
    /// the result not yet sent. `Registered` says which of them the interchange no longer
    /// expects; the others go on and their results count.
    pub held: Vec<TaskId>,
    /// The largest frame this manager accepts: task batches to it stay under it.
    pub max_frame_bytes: u64,
}

/// Manager → interchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ManagerMessage {
    Register(Registration),
    Results(Vec<TaskResult>),
    Heartbeat,
    /// The manager finished draining and is exiting.
    Goodbye,
    /// The manager is draining (told to, or stopping on a signal): send it nothing more; the
    /// tasks it had not started go back to the queue.
    Draining {
        returned: Vec<TaskId>,
    },
    /// A heartbeat with what the manager saw since the last one (when `wants_reports`).
    Report(Box<ManagerReport>),
}

/// Interchange → manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InterchangeMessage {
    Registered {
        heartbeat_period_ms: u64,
        heartbeat_threshold_ms: u64,
        /// The largest frame the interchange accepts: result batches stay under it.
        max_frame_bytes: u64,
        /// Of the registration's `held` tasks, those the interchange no longer expects from
        /// this manager (requeued elsewhere, ended, or never known): drop them without a result.
        orphaned: Vec<TaskId>,
        /// The interchange keeps a journal: the manager keeps each result it sent until
        /// `Stored` covers it, and sends it again after registering again.
        #[serde(default)]
        stores_results: bool,
        /// The interchange records events (`--monitoring`, `--metrics-address`): the manager
        /// sends a `Report` (slot states, worker events, GPU samples) in place of each heartbeat.
        #[serde(default)]
        wants_reports: bool,
    },
    Refused {
        reason: String,
    },
    /// A batch of tasks, ids in the interchange's numbering, each encoded on its own.
    Tasks(Vec<EncodedTask>),
    Cancel(Vec<TaskId>),
    Drain,
    Shutdown,
    Heartbeat,
    /// The interchange does not know this manager (it was declared lost, or the interchange
    /// restarted): register again.
    RegisterAgain,
    /// The first `results` results this registration sent are in the journal.
    Stored {
        results: u64,
    },
}

/// Manager → worker, over the worker's stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerRequest {
    Run(TaskSpec),
    Shutdown,
}

/// Worker → manager, over the worker's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerReply {
    Ready { pid: u32, functions: Vec<String> },
    Done(TaskResult),
}

/// What a manager saw since its last report, sent in place of a heartbeat every heartbeat
/// period while the interchange records events (`Registered.wants_reports`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ManagerReport {
    pub at_us: u64,
    /// Every slot's state now.
    pub slots: Vec<SlotState>,
    /// What happened to slot workers since the last report.
    pub slot_events: Vec<SlotEvent>,
    /// One sample per GPU the manager's slots use.
    pub gpus: Vec<GpuSample>,
    /// GPU memory used by each GPU slot's worker processes (MPS clients included).
    pub slot_gpu_memory: Vec<SlotGpuMemory>,
}

/// A slot's state in a manager report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    pub slot: u32,
    /// Running a task now.
    pub busy: bool,
    /// Its worker's pid, when one is running.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotEventKind {
    /// A worker process started in the slot (the first, or one replacing a dead one).
    WorkerStarted,
    /// The slot's worker process died.
    WorkerDied,
    /// The slot's GPU reported a fault; its tasks were ended with `GpuFault`.
    GpuFault,
}

impl SlotEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotEventKind::WorkerStarted => "worker_started",
            SlotEventKind::WorkerDied => "worker_died",
            SlotEventKind::GpuFault => "gpu_fault",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotEvent {
    pub slot: u32,
    pub at_us: u64,
    pub kind: SlotEventKind,
    pub pid: Option<u32>,
    /// How it died, what the fault was.
    pub detail: Option<String>,
}

/// One NVML sample of a GPU (or MIG instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    pub gpu_uuid: String,
    pub at_us: u64,
    /// Fraction of the last sample period a kernel ran (`nvmlDeviceGetUtilizationRates`).
    pub utilization_ratio: Option<f32>,
    /// GPM SM activity (Hopper and later): how much of the GPU's SMs the slots kept busy.
    pub sm_activity_ratio: Option<f32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotGpuMemory {
    pub slot: u32,
    pub bytes: u64,
}
