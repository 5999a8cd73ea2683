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
}

/// Interchange → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientReply {
    Welcome {
        protocol_version: u32,
        interchange: String,
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
}

/// Interchange → manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InterchangeMessage {
    Registered {
        heartbeat_period_ms: u64,
        heartbeat_threshold_ms: u64,
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
