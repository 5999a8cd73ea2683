//! The htex client library: connect to an interchange, submit tasks, await their results.
//!
//! ```no_run
//! use htex_client::{Client, Task};
//!
//! # async fn example() -> Result<(), htex_client::ClientError> {
//! let client = Client::connect("tcp://127.0.0.1:55000").await?;
//! // A command, awaited as a future of its result:
//! let result = client.submit(Task::command(["echo", "hi"])).await?;
//! println!("{:?}", result.outcome);
//! // A registered function with typed arguments and result:
//! let doubled: Vec<u32> = client.call("echo", &vec![1u32, 2])?.await?;
//! assert_eq!(doubled, vec![1, 2]);
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! Every task ends with exactly one [`TaskResult`]; a task that failed carries a typed
//! [`TaskError`] in `outcome`, and a lost interchange fails every outstanding handle.

pub mod blocking;
mod connection;
mod handle;
mod task;

pub use connection::{Client, ClientConfig};
pub use handle::{TaskHandle, TypedHandle};
pub use htex_protocol::{
    Command, CommandOutput, CommandReply, ManagerStatus, ResourceRequest, StatusReport, TaskError,
    TaskId, TaskOutput, TaskResult,
};
pub use task::Task;

/// What can go wrong between a client and the interchange, or in decoding a typed result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the interchange at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    /// No connection could be made (nothing listening, a timeout); the message says which.
    #[error("{0}")]
    Unreachable(String),
    #[error("invalid client config: {0}")]
    Config(String),
    #[error("the interchange refused this client: {0}")]
    Refused(String),
    #[error("lost the interchange at {endpoint}: {reason}")]
    InterchangeLost { endpoint: String, reason: String },
    #[error("the client is closed")]
    Closed,
    #[error("the interchange answered with an error: {0}")]
    Command(String),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("cannot encode the arguments: {0}")]
    Encode(String),
    #[error("cannot decode the task's value: {0}")]
    Decode(String),
    #[error("the task produced {0}, not a value")]
    NotAValue(&'static str),
}

/// Decodes a function task's MessagePack value, or returns its error.
pub fn decode_value<R: serde::de::DeserializeOwned>(result: &TaskResult) -> Result<R, ClientError> {
    match &result.outcome {
        Ok(TaskOutput::Value(bytes)) => {
            rmp_serde::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
        }
        Ok(TaskOutput::Command(_)) => Err(ClientError::NotAValue("command output")),
        Err(e) => Err(ClientError::Task(e.clone())),
    }
}
