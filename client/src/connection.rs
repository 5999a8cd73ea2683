//! The connection to the interchange: a sender task that batches submissions into frames, a
//! receiver task that routes results to their handles, and a watchdog for a silent interchange.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use htex_protocol::{
    decode, encode, now_us, ClientHello, ClientReply, ClientRequest, Command, CommandReply,
    StatusReport, TaskId, TaskSpec, PROTOCOL_VERSION,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage,
};

use crate::handle::{ResultSender, TaskHandle, TypedHandle};
use crate::{ClientError, Task};

/// How a client connects and when it gives up on a silent interchange.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// A label shown in the interchange's logs.
    pub name: String,
    pub connect_timeout: Duration,
    /// Outstanding handles fail when the interchange is silent this long.
    pub heartbeat_threshold: Duration,
    pub max_frame_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            name: format!("client-{}", std::process::id()),
            connect_timeout: Duration::from_secs(10),
            heartbeat_threshold: Duration::from_secs(10),
            max_frame_bytes: htex_protocol::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// Most tasks packed into one `Submit` frame.
const SUBMIT_BATCH: usize = 4096;

enum Outgoing {
    Task(TaskSpec),
    Cancel(TaskId),
    Command(u64, Command),
    Goodbye(oneshot::Sender<()>),
}

/// A connection to an interchange. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: String,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    pending: DashMap<TaskId, ResultSender>,
    commands: DashMap<u64, oneshot::Sender<CommandReply>>,
    next_task: AtomicU64,
    next_request: AtomicU64,
    /// Results that matched no outstanding task (a second result for a task would count here).
    stray_results: AtomicU64,
    /// Set once the connection failed; later submissions fail with it.
    failure: Mutex<Option<ClientError>>,
}

impl Shared {
    /// Fails every outstanding handle and command, and all later ones.
    fn fail(&self, error: ClientError) {
        self.failure
            .lock()
            .expect("not poisoned")
            .get_or_insert(error.clone());
        let ids: Vec<TaskId> = self.pending.iter().map(|e| *e.key()).collect();
        for id in ids {
            if let Some((_, tx)) = self.pending.remove(&id) {
                let _ = tx.send(Err(error.clone()));
            }
        }
        self.commands.clear();
    }

    fn failure(&self) -> Option<ClientError> {
        self.failure.lock().expect("not poisoned").clone()
    }
}

impl Client {
    /// Connects with the default config. `endpoint` is `tcp://host:port` or `host:port`.
    pub async fn connect(endpoint: &str) -> Result<Client, ClientError> {
        Client::connect_with(endpoint, ClientConfig::default()).await
    }

    /// Connects, says hello and waits for the interchange's welcome.
    pub async fn connect_with(endpoint: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let endpoint = normalize(endpoint);
        let fail = |reason: String| ClientError::Connect {
            endpoint: endpoint.clone(),
            reason,
        };
        let mut options = zeromq::SocketOptions::default();
        options.max_frame_size(config.max_frame_bytes.saturating_mul(2));
        let mut socket = DealerSocket::with_options(options);
        tokio::time::timeout(config.connect_timeout, socket.connect(&endpoint))
            .await
            .map_err(|_| fail(format!("no connection within {:?}", config.connect_timeout)))?
            .map_err(|e| fail(e.to_string()))?;
        let (mut send, mut recv) = socket.split();
        let hello = ClientRequest::Hello(ClientHello {
            protocol_version: PROTOCOL_VERSION,
            name: config.name.clone(),
        });
        send_frame(&mut send, &hello)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let reply = tokio::time::timeout(config.connect_timeout, recv.recv())
            .await
            .map_err(|_| fail(format!("no welcome within {:?}", config.connect_timeout)))?
            .map_err(|e| fail(e.to_string()))?;
        let frame = reply.into_vec().pop().unwrap_or_default();
        match decode::<ClientReply>(&frame, config.max_frame_bytes) {
            Ok(ClientReply::Welcome { .. }) => {}
            Ok(ClientReply::Refused { reason }) => return Err(ClientError::Refused(reason)),
            Ok(other) => return Err(fail(format!("unexpected first reply {other:?}"))),
            Err(e) => return Err(fail(e.to_string())),
        }
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            endpoint,
            outgoing,
            pending: DashMap::new(),
            commands: DashMap::new(),
            next_task: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            stray_results: AtomicU64::new(0),
            failure: Mutex::new(None),
        });
        tokio::spawn(send_loop(send, outgoing_rx, shared.clone()));
        tokio::spawn(receive_loop(recv, config, shared.clone()));
        Ok(Client { shared })
    }

    /// Submits a task; the handle resolves to its result.
    pub fn submit(&self, task: Task) -> TaskHandle {
        let id = self.shared.next_task.fetch_add(1, Ordering::Relaxed);
        let (handle, tx) = TaskHandle::new(id);
        if let Some(error) = self.shared.failure() {
            let _ = tx.send(Err(error));
            return handle;
        }
        self.shared.pending.insert(id, tx);
        if self
            .shared
            .outgoing
            .send(Outgoing::Task(task.into_spec(id, now_us())))
            .is_err()
        {
            if let Some((_, tx)) = self.shared.pending.remove(&id) {
                let _ = tx.send(Err(ClientError::Closed));
            }
        }
        handle
    }

    /// Submits many tasks; they travel in as few frames as possible.
    pub fn submit_batch(&self, tasks: impl IntoIterator<Item = Task>) -> Vec<TaskHandle> {
        tasks.into_iter().map(|t| self.submit(t)).collect()
    }

    /// Calls a registered function with typed arguments; the handle decodes its value into `R`.
    pub fn call<A, R>(&self, function: &str, args: &A) -> Result<TypedHandle<R>, ClientError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        Ok(TypedHandle::new(self.submit(Task::call(function, args)?)))
    }

    /// Cancels a task by id: it ends with `Cancelled` unless it finished first.
    pub fn cancel(&self, id: TaskId) {
        let _ = self.shared.outgoing.send(Outgoing::Cancel(id));
    }

    /// Results received for no outstanding task: a second result for one task would show here,
    /// so this stays 0 while the exactly-once promise holds.
    pub fn stray_results(&self) -> u64 {
        self.shared.stray_results.load(Ordering::Relaxed)
    }

    /// Tasks submitted through this client and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.shared.pending.len()
    }

    /// The interchange's managers, slots, queue and outstanding tasks.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        match self.command(Command::Status).await? {
            CommandReply::Status(report) => Ok(report),
            other => Err(ClientError::Command(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sends a command-channel request and waits for its answer.
    pub async fn command(&self, command: Command) -> Result<CommandReply, ClientError> {
        if let Some(error) = self.shared.failure() {
            return Err(error);
        }
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.commands.insert(id, tx);
        self.shared
            .outgoing
            .send(Outgoing::Command(id, command))
            .map_err(|_| ClientError::Closed)?;
        match rx.await {
            Ok(CommandReply::Error { message }) => Err(ClientError::Command(message)),
            Ok(reply) => Ok(reply),
            Err(_) => Err(self.shared.failure().unwrap_or(ClientError::Closed)),
        }
    }

    /// Says goodbye; tasks still outstanding are cancelled by the interchange.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.outgoing.send(Outgoing::Goodbye(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
        }
    }

    /// The interchange endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }
}

fn normalize(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("tcp://{endpoint}")
    }
}

async fn send_frame(send: &mut DealerSendHalf, request: &ClientRequest) -> Result<(), String> {
    let frame = encode(request).map_err(|e| e.to_string())?;
    send.send(ZmqMessage::from(frame))
        .await
        .map_err(|e| e.to_string())
}

/// Packs queued submissions into `Submit` frames and sends everything else as it comes.
async fn send_loop(
    mut send: DealerSendHalf,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut batch = Vec::new();
    while let Some(first) = outgoing.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let request = match item {
                Outgoing::Task(spec) => {
                    batch.push(spec);
                    if batch.len() < SUBMIT_BATCH {
                        next = outgoing.try_recv().ok();
                        if next.is_some() {
                            continue;
                        }
                    }
                    ClientRequest::Submit(std::mem::take(&mut batch))
                }
                Outgoing::Cancel(id) => ClientRequest::Cancel(vec![id]),
                Outgoing::Command(id, command) => ClientRequest::Command {
                    request_id: id,
                    command,
                },
                Outgoing::Goodbye(done) => {
                    flush(&mut send, &mut batch, &shared).await;
                    let _ = send_frame(&mut send, &ClientRequest::Goodbye).await;
                    let _ = done.send(());
                    return;
                }
            };
            // A non-task item arrived behind tasks: send the tasks first, in order.
            if !matches!(request, ClientRequest::Submit(_)) {
                flush(&mut send, &mut batch, &shared).await;
            }
            if let Err(e) = send_frame(&mut send, &request).await {
                shared.fail(ClientError::InterchangeLost {
                    endpoint: shared.endpoint.clone(),
                    reason: e,
                });
            }
        }
    }
}

async fn flush(send: &mut DealerSendHalf, batch: &mut Vec<TaskSpec>, shared: &Shared) {
    if batch.is_empty() {
        return;
    }
    let request = ClientRequest::Submit(std::mem::take(batch));
    if let Err(e) = send_frame(send, &request).await {
        shared.fail(ClientError::InterchangeLost {
            endpoint: shared.endpoint.clone(),
            reason: e,
        });
    }
}

/// Routes replies to handles; fails everything when the interchange goes silent or away.
async fn receive_loop(mut recv: DealerRecvHalf, config: ClientConfig, shared: Arc<Shared>) {
    let mut last_heard = Instant::now();
    let mut watchdog = tokio::time::interval(config.heartbeat_threshold / 4);
    loop {
        let message = tokio::select! {
            message = recv.recv() => message,
            _ = watchdog.tick() => {
                if last_heard.elapsed() > config.heartbeat_threshold {
                    let reason = format!("silent for over {:?}", config.heartbeat_threshold);
                    shared.fail(ClientError::InterchangeLost { endpoint: shared.endpoint.clone(), reason });
                    return;
                }
                continue;
            }
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                let reason = e.to_string();
                shared.fail(ClientError::InterchangeLost {
                    endpoint: shared.endpoint.clone(),
                    reason,
                });
                return;
            }
        };
        last_heard = Instant::now();
        let frame = message.into_vec().pop().unwrap_or_default();
        match decode::<ClientReply>(&frame, config.max_frame_bytes) {
            Ok(ClientReply::Results(results)) => {
                for result in results {
                    match shared.pending.remove(&result.id) {
                        Some((_, tx)) => {
                            let _ = tx.send(Ok(result));
                        }
                        None => {
                            shared.stray_results.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(task = result.id, "result for an unknown task")
                        }
                    }
                }
            }
            Ok(ClientReply::CommandReply { request_id, reply }) => {
                if let Some((_, tx)) = shared.commands.remove(&request_id) {
                    let _ = tx.send(reply);
                }
            }
            Ok(ClientReply::Error { message }) => tracing::warn!("interchange: {message}"),
            Ok(ClientReply::Refused { reason }) => {
                shared.fail(ClientError::Refused(reason));
                return;
            }
            Ok(ClientReply::Heartbeat | ClientReply::Welcome { .. }) => {}
            Err(e) => tracing::warn!("dropping a bad frame from the interchange: {e}"),
        }
    }
}
