//! The interchange's event stream: one typed event per task, manager and slot state change,
//! emitted by the interchange's core beside the effects it already makes, and read by every
//! consumer (the monitoring database, the Prometheus metrics). Events are plain data, in the
//! order the core made them; times are µs since the epoch.

use std::sync::Arc;

use htex_protocol::{ManagerReport, SlotDescriptor};

/// The interchange's number for a registered manager (one per registration).
pub type ManagerKey = u64;

/// The interchange's number for a connected client.
pub type ClientKey = u32;

/// What kind of work a task is (the `tasks.kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKindName {
    Function,
    Call,
    Command,
}

impl TaskKindName {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKindName::Function => "function",
            TaskKindName::Call => "call",
            TaskKindName::Command => "command",
        }
    }
}

/// How one attempt (one dispatch to a manager) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Completed,
    Failed,
    /// Its manager was lost while holding it.
    Lost,
    /// Its manager gave it back unstarted (draining).
    Returned,
    Cancelled,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Returned => "returned",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

/// One attempt of a task, as it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first dispatch.
    pub attempt: u32,
    pub manager: ManagerKey,
    pub slot: Option<u32>,
    pub dispatched_us: u64,
    /// The worker's clock (0: it did not start, or its manager did not say).
    pub started_us: u64,
    pub finished_us: u64,
    pub ended_us: u64,
    pub outcome: AttemptOutcome,
    pub error_kind: Option<&'static str>,
}

/// A task the interchange accepted (or restored from its journal).
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub task: u64,
    pub client: ClientKey,
    pub client_task: u64,
    pub kind: TaskKindName,
    /// The function's name, `runner` of a call, or a command's argv[0].
    pub label: Arc<str>,
    pub priority: i32,
    pub submitted_us: u64,
    pub queued_us: u64,
    /// Waits for its journal record (or its manager, when restored) before it is queued.
    pub held: bool,
    pub restored: bool,
}

/// A task's one end.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub task: u64,
    pub ended_us: u64,
    /// `None`: completed; else the error's kind and the error as a sentence.
    pub error: Option<(&'static str, String)>,
    /// Attempts that reached a manager.
    pub attempts: u32,
    /// The attempt that ended it, when a manager answered.
    pub last: Option<Attempt>,
    /// Time from queued to first dispatched (0: never dispatched), for the queue histogram.
    pub queue_us: u64,
}

/// A registered manager and its slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub manager: ManagerKey,
    pub manager_id: String,
    pub hostname: String,
    pub block_id: Option<String>,
    pub pid: u32,
    pub slots: Vec<SlotDescriptor>,
    pub at_us: u64,
}

/// The interchange's counters at a tick: what gauges show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    pub at_us: u64,
    pub queued: u64,
    /// Accepted and not answered, queued included.
    pub outstanding: u64,
    /// Tasks on managers (running or prefetched).
    pub dispatched: u64,
    pub clients: u32,
    pub task_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ClientConnected {
        client: ClientKey,
        name: String,
    },
    Submitted(Submitted),
    /// A held task went into its queue.
    Queued {
        task: u64,
        at_us: u64,
    },
    Dispatched {
        task: u64,
        manager: ManagerKey,
        at_us: u64,
    },
    /// An attempt ended without a result from its manager (lost, returned): the task is queued
    /// again, or ends next with `ManagerLost`.
    AttemptEnded {
        task: u64,
        attempt: Attempt,
    },
    Ended(Ended),
    ManagerRegistered(Box<Registered>),
    ManagerDraining {
        manager: ManagerKey,
        at_us: u64,
    },
    /// A manager's registration ended: `lost` (silent, dropped, its connection gone) or it left.
    ManagerEnded {
        manager: ManagerKey,
        at_us: u64,
        lost: bool,
        reason: String,
    },
    /// What a manager saw since its last report: slot states and events, GPU samples.
    ManagerReport {
        manager: ManagerKey,
        report: Box<ManagerReport>,
    },
    Gauges(Gauges),
}
