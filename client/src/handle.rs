//! Task handles: futures of a task's one result.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::oneshot;
use htex_protocol::{TaskId, TaskResult};
use serde::de::DeserializeOwned;

use crate::{decode_value, ClientError};

/// The result channel is `futures`' oneshot, not tokio's: tokio's counts each poll against the
/// task's cooperative budget, and a program awaiting many handles at once (a `FuturesUnordered`
/// or `join_all` of 100,000) then spends its budget on handles that are ready but report
/// `Pending`, which on a one-thread runtime starved the client's own receive loop (23k tasks/s,
/// results 8.7 s late; 180k tasks/s without the budget).
pub(crate) type ResultSender = oneshot::Sender<Result<TaskResult, ClientError>>;

/// A submitted task. Await it for the task's result.
#[derive(Debug)]
pub struct TaskHandle {
    id: TaskId,
    rx: oneshot::Receiver<Result<TaskResult, ClientError>>,
}

impl TaskHandle {
    pub(crate) fn new(id: TaskId) -> (Self, ResultSender) {
        let (tx, rx) = oneshot::channel();
        (TaskHandle { id, rx }, tx)
    }

    /// The client's id for this task (use it with [`crate::Client::cancel`]).
    pub fn id(&self) -> TaskId {
        self.id
    }
}

impl Future for TaskHandle {
    type Output = Result<TaskResult, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// A submitted function task whose value decodes into `R`.
#[derive(Debug)]
pub struct TypedHandle<R> {
    inner: TaskHandle,
    _value: PhantomData<fn() -> R>,
}

impl<R> TypedHandle<R> {
    pub(crate) fn new(inner: TaskHandle) -> Self {
        TypedHandle {
            inner,
            _value: PhantomData,
        }
    }

    pub fn id(&self) -> TaskId {
        self.inner.id
    }
}

impl<R: DeserializeOwned> Future for TypedHandle<R> {
    type Output = Result<R, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner)
            .poll(cx)
            .map(|r| r.and_then(|result| decode_value(&result)))
    }
}
