//! Tasks and their results: what a client submits and what it gets back, exactly once per task.

use serde::{Deserialize, Serialize};

use crate::slot::{ResourceRequest, SlotRef};

/// A task's identifier. Clients number their own tasks; the interchange renumbers them on the
/// manager link so that ids from different clients never collide.
pub type TaskId = u64;

/// One unit of work, as submitted by a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: TaskId,
    pub kind: TaskKind,
    #[serde(default)]
    pub resources: ResourceRequest,
    /// Higher runs first; equal priorities run in submission order.
    #[serde(default)]
    pub priority: i32,
    /// Wall-clock limit from the moment a worker starts the task.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How many times the task may be re-run after losing its manager.
    #[serde(default)]
    pub max_retries: u32,
    /// When the client submitted the task (µs since the epoch).
    #[serde(default)]
    pub submitted_us: u64,
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    /// A process per task (Parsl's bash_app).
    Command(CommandSpec),
    /// A Rust function registered in the worker binary.
    Function {
        name: String,
        #[serde(with = "serde_bytes")]
        args: Vec<u8>,
    },
    /// A call to a warm runner process hosted by the slot.
    Call {
        runner: String,
        #[serde(with = "serde_bytes")]
        args: Vec<u8>,
    },
}

/// A command line to run, with its environment additions, working directory and standard input.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default, with = "serde_bytes")]
    pub stdin: Option<Vec<u8>>,
}

/// What a command printed and how it ended. Output beyond the worker's limit is cut and flagged.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CommandOutput {
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// A successful task's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskOutput {
    /// A function's or runner's return value, MessagePack-encoded by the worker.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A command that exited with status 0.
    Command(CommandOutput),
}

/// Why a task did not succeed. Every variant names its cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum TaskError {
    #[error("task failed: {message}")]
    Failed {
        message: String,
        /// Present for commands that ran and exited non-zero or were killed by a signal.
        output: Option<CommandOutput>,
    },
    #[error("task panicked: {message}")]
    Panicked { message: String },
    #[error("unknown function `{name}`; this worker offers: {}", available.join(", "))]
    UnknownFunction {
        name: String,
        available: Vec<String>,
    },
    #[error("bad request: {message}")]
    BadRequest { message: String },
    #[error("task timed out after {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("task cancelled: {reason}")]
    Cancelled { reason: String },
    #[error("worker lost while running the task: {detail}")]
    WorkerLost { detail: String },
    #[error("manager `{manager}` lost while holding the task")]
    ManagerLost { manager: String },
    #[error("GPU fault: {detail}")]
    GpuFault { detail: String },
    #[error("no connected manager can satisfy the task's resources: {reason}")]
    Unsatisfiable { reason: String },
    /// The task ran, but its result (value or output, encoded) is larger than a frame may carry
    /// on the way back; the worker goes on with the next task.
    #[error("the task's result of {size} bytes exceeds the limit of {limit} bytes per result")]
    ResultTooLarge { size: u64, limit: u64 },
    /// The interchange could not make the task durable (its journal could not be written) and
    /// did not accept it; nothing ran.
    #[error("the task was not accepted: {reason}")]
    NotAccepted { reason: String },
    /// A warm runner's function raised; `exception` is its type (a Python class name, say).
    #[error("{exception}: {message}")]
    Exception {
        exception: String,
        message: String,
        traceback: String,
    },
}

impl TaskError {
    /// A short stable name for the error kind (`"WorkerLost"`, ...), for logs and result files.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskError::Failed { .. } => "Failed",
            TaskError::Panicked { .. } => "Panicked",
            TaskError::UnknownFunction { .. } => "UnknownFunction",
            TaskError::BadRequest { .. } => "BadRequest",
            TaskError::Timeout { .. } => "Timeout",
            TaskError::Cancelled { .. } => "Cancelled",
            TaskError::WorkerLost { .. } => "WorkerLost",
            TaskError::ManagerLost { .. } => "ManagerLost",
            TaskError::GpuFault { .. } => "GpuFault",
            TaskError::Unsatisfiable { .. } => "Unsatisfiable",
            TaskError::Exception { .. } => "Exception",
            TaskError::ResultTooLarge { .. } => "ResultTooLarge",
            TaskError::NotAccepted { .. } => "NotAccepted",
        }
    }
}

/// When a task passed each stage, in µs since the epoch (0 = the stage was not reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timings {
    pub submitted_us: u64,
    pub received_us: u64,
    pub dispatched_us: u64,
    pub started_us: u64,
    pub finished_us: u64,
}

/// The one result every task ends with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub id: TaskId,
    pub outcome: Result<TaskOutput, TaskError>,
    pub timings: Timings,
    /// Where the task ran, if it reached a slot.
    pub slot: Option<SlotRef>,
    /// How many times the task was started (more than 1 after retries).
    #[serde(default)]
    pub attempts: u32,
}

impl TaskResult {
    /// A result for a task that ended without running (or without a worker's answer).
    pub fn error(id: TaskId, error: TaskError) -> Self {
        TaskResult {
            id,
            outcome: Err(error),
            timings: Timings::default(),
            slot: None,
            attempts: 0,
        }
    }
}

/// One task spec, MessagePack-encoded on its own: what the interchange keeps for a queued task
/// (about 300 bytes less than the decoded spec) and forwards to managers as it is. Cloning it
/// shares the bytes (a reference count; no allocation), and it is 16 bytes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedTask(pub std::sync::Arc<[u8]>);

impl EncodedTask {
    pub fn encode(spec: &TaskSpec) -> Result<EncodedTask, crate::CodecError> {
        // Exactly sized: the encoder's buffer grows by doubling, and a queued task keeps this.
        crate::encode(spec).map(|v| EncodedTask(v.into()))
    }

    pub fn decode(&self, max_frame_bytes: usize) -> Result<TaskSpec, crate::CodecError> {
        crate::decode(&self.0, max_frame_bytes)
    }
}

impl Serialize for EncodedTask {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for EncodedTask {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        Ok(EncodedTask(bytes.into_vec().into()))
    }
}
