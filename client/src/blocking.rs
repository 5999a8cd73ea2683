//! A blocking facade over [`crate::Client`] for programs without an async runtime.
//!
//! ```no_run
//! let client = htex_client::blocking::Client::connect("tcp://127.0.0.1:55000")?;
//! let handle = client.submit(htex_client::Task::command(["hostname"]));
//! let result = handle.wait()?;
//! println!("{:?}", result.outcome);
//! # Ok::<(), htex_client::ClientError>(())
//! ```

use std::sync::Arc;

use htex_protocol::{StatusReport, TaskId, TaskResult};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::{ClientError, Task};

/// A client that blocks the calling thread; it runs its own small runtime.
pub struct Client {
    runtime: Arc<Runtime>,
    inner: crate::Client,
}

/// A submitted task; [`TaskHandle::wait`] blocks until its result.
pub struct TaskHandle {
    runtime: Arc<Runtime>,
    inner: crate::TaskHandle,
}

impl Client {
    pub fn connect(endpoint: &str) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| ClientError::Connect {
                endpoint: endpoint.into(),
                reason: e.to_string(),
            })?;
        let inner = runtime.block_on(crate::Client::connect(endpoint))?;
        Ok(Client {
            runtime: Arc::new(runtime),
            inner,
        })
    }

    pub fn submit(&self, task: Task) -> TaskHandle {
        let _guard = self.runtime.enter();
        TaskHandle {
            runtime: self.runtime.clone(),
            inner: self.inner.submit(task),
        }
    }

    pub fn submit_batch(&self, tasks: impl IntoIterator<Item = Task>) -> Vec<TaskHandle> {
        tasks.into_iter().map(|t| self.submit(t)).collect()
    }

    /// Calls a registered function and waits for its typed value.
    pub fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        function: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        let handle = self.inner.call::<A, R>(function, args)?;
        self.runtime.block_on(handle)
    }

    pub fn cancel(&self, id: TaskId) {
        self.inner.cancel(id);
    }

    pub fn status(&self) -> Result<StatusReport, ClientError> {
        self.runtime.block_on(self.inner.status())
    }

    pub fn close(self) {
        self.runtime.block_on(self.inner.close());
    }
}

impl TaskHandle {
    pub fn id(&self) -> TaskId {
        self.inner.id()
    }

    pub fn wait(self) -> Result<TaskResult, ClientError> {
        self.runtime.block_on(self.inner)
    }
}
