//! The connection to the interchange: a sender task that packs submissions into frames under the
//! link's frame limit (and holds frames the interchange has not taken yet), a receiver task that
//! routes results to their handles, and a watchdog for a silent interchange.
//!
//! With an interchange that keeps a journal (its welcome says so), a lost connection is not the
//! end: the receiver connects again, as the same identity, for up to the reconnect window, and
//! the sender re-sends every frame not yet `Accepted`, in order; the interchange skips the
//! tasks it had taken (ids only grow: they are handed out in the order frames are packed) and
//! sends again every result this client had not confirmed with `Received`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use htex_protocol::{
    decode, encode, max_item_bytes, now_us, BatchEncoder, ClientHello, ClientReply, ClientRequest,
    CodecError, Command, CommandReply, StatusReport, TaskError, TaskId, TaskResult, TaskSpec,
    MIN_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use htex_transport::{
    connect_dealer_watched, normalize_endpoint, ConnectionWatch, DealerRecvHalf, DealerSendHalf,
    NetConfig, Security, SocketRecv, SocketSend, WhenRefused, ZmqMessage,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

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
    /// The largest frame this client sends or accepts; the interchange's own limit, if smaller,
    /// applies. A task larger than [`htex_protocol::max_item_bytes`] of it ends `BadRequest`.
    pub max_frame_bytes: usize,
    /// CURVE: the interchange's public key file (`server.key`); with [`Self::key`].
    pub server_key: Option<std::path::PathBuf>,
    /// CURVE: this client's own `.key_secret` file (its public key must be in the
    /// interchange's `clients/` allow-list).
    pub key: Option<std::path::PathBuf>,
    /// Who this client is to an interchange with a journal, across connections and restarts
    /// (default: random, so one `Client` is one identity). Two live clients must not share one.
    pub identity: Option<String>,
    /// With a journal: how long a lost interchange may take to come back before outstanding
    /// handles fail with `InterchangeLost`.
    pub reconnect_window: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            name: format!("client-{}", std::process::id()),
            connect_timeout: Duration::from_secs(10),
            heartbeat_threshold: Duration::from_secs(10),
            max_frame_bytes: htex_protocol::DEFAULT_MAX_FRAME_BYTES,
            server_key: None,
            key: None,
            identity: None,
            reconnect_window: Duration::from_secs(60),
        }
    }
}

impl ClientConfig {
    /// Says what is wrong with a config that could not work.
    pub fn validate(&self) -> Result<(), ClientError> {
        let fail = |message: String| Err(ClientError::Config(message));
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(86_400) {
            return fail("the connect timeout must be more than 0 and at most a day".into());
        }
        if self.heartbeat_threshold < Duration::from_millis(10)
            || self.heartbeat_threshold > Duration::from_secs(86_400 * 365)
        {
            return fail("the heartbeat threshold must be between 10 ms and a year".into());
        }
        if self.reconnect_window > Duration::from_secs(86_400 * 365) {
            return fail("the reconnect window must be at most a year".into());
        }
        if self
            .identity
            .as_ref()
            .is_some_and(|i| i.is_empty() || i.len() > 256)
        {
            return fail("a client identity must be 1 to 256 bytes".into());
        }
        if self.max_frame_bytes < MIN_MAX_FRAME_BYTES || self.max_frame_bytes > u32::MAX as usize {
            return fail(format!(
                "max_frame_bytes must be between {MIN_MAX_FRAME_BYTES} and {} bytes, not {}",
                u32::MAX,
                self.max_frame_bytes
            ));
        }
        Ok(())
    }
}

/// Most tasks packed into one `Submit` frame (fewer when the frame limit is reached first).
const SUBMIT_BATCH: usize = 4096;

enum Outgoing {
    Task(TaskSpec),
    Cancel(TaskId),
    Command(u64, Command),
    Goodbye(oneshot::Sender<()>),
    /// The interchange's answers about `Submit` frames (by their first task), from the receive
    /// loop.
    Accepted(TaskId),
    Busy(TaskId),
    Resume,
    /// The client has this many results of the current connection.
    Received(u64),
    /// A new connection, from the receiver after a reconnect: re-send what was not accepted.
    Reconnected(DealerSendHalf, usize),
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
    /// Results the interchange sent again after a reconnection, for tasks already answered.
    resent_results: AtomicU64,
    /// Ids are handed out and tasks queued for the sender under this lock, so frames carry ids
    /// in increasing order (what lets an interchange recognise a re-sent task).
    order: Mutex<()>,
    /// The interchange keeps a journal: reconnect when the connection is lost.
    journal: AtomicBool,
    /// Set once the connection failed; later submissions fail with it.
    failure: Mutex<Option<ClientError>>,
    /// Whether `failure` is set: read on every submit without taking the lock.
    failed: AtomicBool,
}

impl Shared {
    /// Fails every outstanding handle and command, and all later ones.
    fn fail(&self, error: ClientError) {
        self.failure
            .lock()
            .expect("not poisoned")
            .get_or_insert(error.clone());
        // SeqCst pairs with `submit`: either it sees the flag after inserting its handle, or
        // the sweep below sees the handle.
        self.failed.store(true, Ordering::SeqCst);
        let ids: Vec<TaskId> = self.pending.iter().map(|e| *e.key()).collect();
        for id in ids {
            if let Some((_, tx)) = self.pending.remove(&id) {
                let _ = tx.send(Err(error.clone()));
            }
        }
        self.commands.clear();
    }

    fn failure(&self) -> Option<ClientError> {
        if !self.failed.load(Ordering::SeqCst) {
            return None;
        }
        self.failure.lock().expect("not poisoned").clone()
    }

    fn lost(&self, reason: String) {
        self.fail(ClientError::InterchangeLost {
            endpoint: self.endpoint.clone(),
            reason,
        });
    }

    /// Answers a task here, without the interchange (one the client refused to send).
    fn answer(&self, result: TaskResult) {
        if let Some((_, tx)) = self.pending.remove(&result.id) {
            let _ = tx.send(Ok(result));
        }
    }
}

impl Client {
    /// Connects with the default config. `endpoint` is `tcp://host:port` or `host:port`.
    pub async fn connect(endpoint: &str) -> Result<Client, ClientError> {
        Client::connect_with(endpoint, ClientConfig::default()).await
    }

    /// Connects, says hello and waits for the interchange's welcome.
    pub async fn connect_with(
        endpoint: &str,
        mut config: ClientConfig,
    ) -> Result<Client, ClientError> {
        config.validate()?;
        if config.identity.is_none() {
            config.identity = Some(random_identity());
        }
        let endpoint = normalize_endpoint(endpoint);
        let opened = open(&endpoint, &config, WhenRefused::Fail).await?;
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            endpoint,
            outgoing,
            pending: DashMap::new(),
            commands: DashMap::new(),
            next_task: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            stray_results: AtomicU64::new(0),
            resent_results: AtomicU64::new(0),
            order: Mutex::new(()),
            journal: AtomicBool::new(opened.journal),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
        });
        let sender = Sender::new(opened.send, opened.limit, shared.clone());
        tokio::spawn(sender.run(outgoing_rx));
        tokio::spawn(receive_loop(
            opened.recv,
            opened.watch,
            config,
            shared.clone(),
        ));
        Ok(Client { shared })
    }

    /// Submits a task; the handle resolves to its result.
    pub fn submit(&self, task: Task) -> TaskHandle {
        let _order = self.shared.order.lock().expect("not poisoned");
        let id = self.shared.next_task.fetch_add(1, Ordering::Relaxed);
        let (handle, tx) = TaskHandle::new(id);
        if let Some(error) = self.shared.failure() {
            let _ = tx.send(Err(error));
            return handle;
        }
        self.shared.pending.insert(id, tx);
        // The connection may have failed between the check and the insert, after `fail` took
        // out every pending handle: this one would then wait forever.
        if let Some(error) = self.shared.failure() {
            if let Some((_, tx)) = self.shared.pending.remove(&id) {
                let _ = tx.send(Err(error));
            }
            return handle;
        }
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
    /// so this stays 0 while the exactly-once promise holds. (After a reconnection the
    /// interchange sends again the results this client had not confirmed; those for tasks
    /// already answered count in [`Client::resent_results`] instead.)
    pub fn stray_results(&self) -> u64 {
        self.shared.stray_results.load(Ordering::Relaxed)
    }

    /// Results sent again after a reconnection for tasks this client had already answered.
    pub fn resent_results(&self) -> u64 {
        self.shared.resent_results.load(Ordering::Relaxed)
    }

    /// Tasks submitted through this client and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.shared.pending.len()
    }

    /// The interchange's managers, slots, queue and outstanding tasks.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        match self.command(Command::Status).await? {
            CommandReply::Status(report) => Ok(report),
            CommandReply::Done => Err(ClientError::Command(
                "the interchange answered the status request without a report".into(),
            )),
            CommandReply::Error { message } => Err(ClientError::Command(message)),
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
        // As in `submit`: a failure between the check and the insert would leave it waiting.
        if let Some(error) = self.shared.failure() {
            self.shared.commands.remove(&id);
            return Err(error);
        }
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

/// A connection that said hello and was welcomed.
struct Opened {
    send: DealerSendHalf,
    recv: DealerRecvHalf,
    watch: ConnectionWatch,
    /// The link's frame limit.
    limit: usize,
    journal: bool,
}

/// Connects, says hello as the config's identity and waits for the welcome.
async fn open(
    endpoint: &str,
    config: &ClientConfig,
    when_refused: WhenRefused,
) -> Result<Opened, ClientError> {
    let fail = |reason: String| ClientError::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    let security = Security::client(config.server_key.as_deref(), config.key.as_deref())
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let net = NetConfig {
        max_frame_bytes: config.max_frame_bytes,
        connect_timeout: config.connect_timeout,
        security,
    };
    let (mut send, mut recv, watch) = connect_dealer_watched(endpoint, &net, when_refused)
        .await
        .map_err(|e| ClientError::Unreachable(e.to_string()))?;
    let hello = ClientRequest::Hello(ClientHello {
        protocol_version: PROTOCOL_VERSION,
        name: config.name.clone(),
        max_frame_bytes: config.max_frame_bytes as u64,
        identity: config.identity.clone().unwrap_or_default(),
    });
    send_frame(&mut send, &hello)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let reply = tokio::time::timeout(config.connect_timeout, recv.recv())
        .await
        .map_err(|_| {
            fail(format!(
                "no welcome within {:.1} s; is that the interchange's client port?",
                config.connect_timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| fail(e.to_string()))?;
    let frame = reply.into_vec().pop().unwrap_or_default();
    match decode::<ClientReply>(&frame, config.max_frame_bytes) {
        Ok(ClientReply::Welcome {
            max_frame_bytes,
            journal,
            ..
        }) => {
            let limit = match usize::try_from(max_frame_bytes) {
                Ok(0) | Err(_) => config.max_frame_bytes,
                Ok(theirs) => config.max_frame_bytes.min(theirs.max(MIN_MAX_FRAME_BYTES)),
            };
            Ok(Opened {
                send,
                recv,
                watch,
                limit,
                journal,
            })
        }
        Ok(ClientReply::Refused { reason }) => Err(ClientError::Refused(reason)),
        Ok(other) => Err(fail(format!(
            "the interchange answered the hello with {}, not a welcome",
            reply_name(&other)
        ))),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// 128 random bits in hex, from the kernel.
fn random_identity() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom: time and pid still tell clients of one interchange apart.
        let now = now_us().to_le_bytes();
        bytes[..8].copy_from_slice(&now);
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn send_frame(send: &mut DealerSendHalf, request: &ClientRequest) -> Result<(), String> {
    let frame = encode(request).map_err(|e| e.to_string())?;
    send.send(ZmqMessage::from(frame))
        .await
        .map_err(|e| e.to_string())
}

/// A `Submit` frame and its first task, kept until the interchange took it.
struct SubmitFrame {
    first: TaskId,
    frame: Bytes,
}

/// The send side: packs submissions into `Submit` frames under the link's limit, keeps each
/// frame until the interchange answers `Accepted` (or `Busy`: then it waits for `Resume` and
/// goes again, in order), and sends everything else as it comes.
struct Sender {
    send: DealerSendHalf,
    shared: Arc<Shared>,
    batch: BatchEncoder,
    /// The first task of the open frame.
    batch_first: Option<TaskId>,
    /// Frames sent and not yet answered, oldest first.
    in_flight: VecDeque<SubmitFrame>,
    /// Frames the interchange refused (`Busy`), to go first after `Resume`.
    refused: VecDeque<SubmitFrame>,
    /// Frames packed while paused.
    waiting: VecDeque<SubmitFrame>,
    paused: bool,
    limit: usize,
}

impl Sender {
    fn new(send: DealerSendHalf, limit: usize, shared: Arc<Shared>) -> Sender {
        Sender {
            send,
            shared,
            batch: BatchEncoder::new(&ClientRequest::Submit(Vec::new()), limit)
                .expect("a batch message"),
            batch_first: None,
            in_flight: VecDeque::new(),
            refused: VecDeque::new(),
            waiting: VecDeque::new(),
            paused: false,
            limit,
        }
    }

    async fn run(mut self, mut outgoing: mpsc::UnboundedReceiver<Outgoing>) {
        while let Some(first) = outgoing.recv().await {
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Outgoing::Task(spec) => {
                        self.pack(spec).await;
                        if self.batch.len() < SUBMIT_BATCH {
                            next = outgoing.try_recv().ok();
                            if next.is_some() {
                                continue;
                            }
                        }
                        self.close_batch().await;
                    }
                    Outgoing::Cancel(id) => {
                        self.close_batch().await;
                        self.request(&ClientRequest::Cancel(vec![id])).await;
                    }
                    Outgoing::Command(request_id, command) => {
                        self.close_batch().await;
                        let request = ClientRequest::Command {
                            request_id,
                            command,
                        };
                        self.request(&request).await;
                    }
                    Outgoing::Goodbye(done) => {
                        self.close_batch().await;
                        self.request(&ClientRequest::Goodbye).await;
                        let _ = done.send(());
                        return;
                    }
                    Outgoing::Accepted(first) => {
                        // Cumulative: this frame and every one sent before it were taken
                        // (those refused left `in_flight` when their `Busy` came).
                        if let Some(at) = self.in_flight.iter().position(|f| f.first == first) {
                            self.in_flight.drain(..=at);
                        }
                    }
                    Outgoing::Busy(first) => {
                        if let Some(at) = self.in_flight.iter().position(|f| f.first == first) {
                            let frame = self.in_flight.remove(at).expect("found");
                            self.refused.push_back(frame);
                        }
                        self.paused = true;
                    }
                    Outgoing::Resume => {
                        self.paused = false;
                        let again: Vec<_> = self
                            .refused
                            .drain(..)
                            .chain(self.waiting.drain(..))
                            .collect();
                        for frame in again {
                            self.submit_frame(frame).await;
                        }
                    }
                    Outgoing::Received(results) => {
                        self.request(&ClientRequest::Received { results }).await;
                    }
                    Outgoing::Reconnected(send, limit) => self.reconnected(send, limit).await,
                }
            }
            // Nothing more waits: the open frame goes now. (Replies about earlier frames share
            // this channel and may be the last item read, after tasks that are still packed.)
            self.close_batch().await;
        }
    }

    /// Adds a task to the open frame; one too large for any frame is answered `BadRequest`
    /// here, and never sent.
    async fn pack(&mut self, spec: TaskSpec) {
        let was_empty = self.batch.is_empty();
        match self.batch.push(&spec) {
            Ok(None) => {
                if was_empty {
                    self.batch_first = Some(spec.id);
                }
            }
            Ok(Some(full)) => {
                let first = self.batch_first.replace(spec.id).unwrap_or(spec.id);
                self.emit(first, full).await;
            }
            Err(CodecError::ItemTooLarge { size, .. }) => {
                let message = format!(
                    "the task is {size} bytes encoded, over the limit of {} bytes per task (the \
                     interchange's frames carry at most {} bytes); pass large data by file or \
                     raise --max-frame-bytes",
                    max_item_bytes(self.limit),
                    self.limit
                );
                let error = TaskError::BadRequest { message };
                self.shared.answer(TaskResult::error(spec.id, error));
            }
            Err(e) => {
                let error = TaskError::BadRequest {
                    message: format!("cannot encode the task: {e}"),
                };
                self.shared.answer(TaskResult::error(spec.id, error));
            }
        }
    }

    async fn close_batch(&mut self) {
        if let Some(frame) = self.batch.finish() {
            let first = self.batch_first.take().expect("a frame has a first task");
            self.emit(first, frame).await;
        }
    }

    async fn emit(&mut self, first: TaskId, frame: Vec<u8>) {
        let frame = SubmitFrame {
            first,
            frame: Bytes::from(frame),
        };
        if self.paused {
            self.waiting.push_back(frame);
        } else {
            self.submit_frame(frame).await;
        }
    }

    async fn submit_frame(&mut self, frame: SubmitFrame) {
        let sent = self.send.send(ZmqMessage::from(frame.frame.clone())).await;
        match sent {
            Ok(()) => self.in_flight.push_back(frame),
            // With a journal the receiver reconnects, and the frame goes again then.
            Err(_) if self.shared.journal.load(Ordering::SeqCst) => self.in_flight.push_back(frame),
            Err(e) => self.shared.lost(e.to_string()),
        }
    }

    /// A new connection: every frame not accepted goes again, oldest task first (the
    /// interchange skips what it had taken); frames packed for the old limit still fit, as the
    /// interchange's limit does not change across a restart with the same settings.
    async fn reconnected(&mut self, send: DealerSendHalf, limit: usize) {
        self.send = send;
        self.paused = false;
        if limit != self.limit {
            tracing::warn!(
                old = self.limit,
                new = limit,
                "the interchange's frame limit changed across the reconnection"
            );
        }
        let mut again: Vec<SubmitFrame> = self
            .in_flight
            .drain(..)
            .chain(self.refused.drain(..))
            .chain(self.waiting.drain(..))
            .collect();
        again.sort_by_key(|f| f.first);
        tracing::info!(
            frames = again.len(),
            "reconnected: sending again what was not accepted"
        );
        for frame in again {
            self.submit_frame(frame).await;
        }
    }

    async fn request(&mut self, request: &ClientRequest) {
        if let Err(e) = send_frame(&mut self.send, request).await {
            // With a journal the receiver reconnects; what this said is said again there
            // (`Received` counts again from the new hello) or was a command, which fails.
            if !self.shared.journal.load(Ordering::SeqCst) {
                self.shared.lost(e);
            }
        }
    }
}

/// A reply's name for an error message.
fn reply_name(reply: &ClientReply) -> &'static str {
    match reply {
        ClientReply::Welcome { .. } => "Welcome",
        ClientReply::Refused { .. } => "Refused",
        ClientReply::Results(_) => "a result batch",
        ClientReply::CommandReply { .. } => "a command reply",
        ClientReply::Error { .. } => "an error",
        ClientReply::Heartbeat => "a heartbeat",
        ClientReply::Accepted { .. } => "Accepted",
        ClientReply::Busy { .. } => "Busy",
        ClientReply::Resume => "Resume",
    }
}

/// Routes replies to handles; when the interchange goes silent or away, reconnects (with a
/// journal) or fails everything.
async fn receive_loop(
    mut recv: DealerRecvHalf,
    mut watch: ConnectionWatch,
    config: ClientConfig,
    shared: Arc<Shared>,
) {
    let mut resumed = false;
    loop {
        let Some(why) = serve(&mut recv, &mut watch, &config, &shared, resumed).await else {
            return;
        };
        if !shared.journal.load(Ordering::SeqCst) || config.reconnect_window.is_zero() {
            shared.lost(why);
            return;
        }
        tracing::warn!(
            "lost the interchange ({why}); connecting again for up to {:.0} s",
            config.reconnect_window.as_secs_f64()
        );
        // Commands in flight get no answer from a new connection.
        shared.commands.clear();
        match reconnect(&shared.endpoint, &config).await {
            Ok(opened) if opened.journal => {
                tracing::info!("connected to the interchange again");
                resumed = true;
                recv = opened.recv;
                watch = opened.watch;
                let _ = shared
                    .outgoing
                    .send(Outgoing::Reconnected(opened.send, opened.limit));
            }
            Ok(_) => {
                shared.lost(format!(
                    "{why}; it came back without its journal, so the tasks it had are gone"
                ));
                return;
            }
            Err(e) => {
                shared.lost(format!(
                    "{why}; it did not come back within {:.0} s ({e})",
                    config.reconnect_window.as_secs_f64()
                ));
                return;
            }
        }
    }
}

/// Connects again until the reconnect window passes; a refusal ends it at once.
async fn reconnect(endpoint: &str, config: &ClientConfig) -> Result<Opened, ClientError> {
    let deadline = Instant::now() + config.reconnect_window;
    let mut attempt = config.clone();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        attempt.connect_timeout = left.clamp(Duration::from_millis(100), Duration::from_secs(2));
        match open(endpoint, &attempt, WhenRefused::Fail).await {
            Ok(opened) => return Ok(opened),
            Err(e @ ClientError::Refused(_)) => return Err(e),
            Err(e) if Instant::now() + Duration::from_millis(200) >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!("the interchange is not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// How often a client with unconfirmed results tells a journaling interchange it has them.
const RECEIVED_EVERY: Duration = Duration::from_millis(20);
/// Results after which `Received` goes at once.
const RECEIVED_BATCH: u64 = 4096;

/// Reads one connection until it is lost (`Some(why)`) or the client must stop (`None`).
async fn serve(
    recv: &mut DealerRecvHalf,
    watch: &mut ConnectionWatch,
    config: &ClientConfig,
    shared: &Arc<Shared>,
    resumed: bool,
) -> Option<String> {
    let mut last_heard = Instant::now();
    let mut watchdog = tokio::time::interval(config.heartbeat_threshold / 4);
    let mut ack_timer = tokio::time::interval(RECEIVED_EVERY);
    ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut received, mut confirmed) = (0u64, 0u64);
    let to_sender = |item| {
        let _ = shared.outgoing.send(item);
    };
    loop {
        let message = tokio::select! {
            message = recv.recv() => message,
            _ = watchdog.tick() => {
                if last_heard.elapsed() > config.heartbeat_threshold {
                    return Some(format!(
                        "silent for over {:.1} s",
                        config.heartbeat_threshold.as_secs_f64()
                    ));
                }
                continue;
            }
            _ = watch.closed() => return Some("the connection closed".to_string()),
            _ = ack_timer.tick() => {
                if received > confirmed {
                    confirmed = received;
                    to_sender(Outgoing::Received(received));
                }
                continue;
            }
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => return Some(e.to_string()),
        };
        last_heard = Instant::now();
        let frame = message.into_vec().pop().unwrap_or_default();
        match decode::<ClientReply>(&frame, config.max_frame_bytes) {
            Ok(ClientReply::Results(results)) => {
                received += results.len() as u64;
                for result in results {
                    match shared.pending.remove(&result.id) {
                        Some((_, tx)) => {
                            let _ = tx.send(Ok(result));
                        }
                        None if resumed && result.id < shared.next_task.load(Ordering::Relaxed) => {
                            shared.resent_results.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            shared.stray_results.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(task = result.id, "result for an unknown task")
                        }
                    }
                }
                if shared.journal.load(Ordering::Relaxed) && received - confirmed >= RECEIVED_BATCH
                {
                    confirmed = received;
                    to_sender(Outgoing::Received(received));
                }
            }
            Ok(ClientReply::CommandReply { request_id, reply }) => {
                if let Some((_, tx)) = shared.commands.remove(&request_id) {
                    let _ = tx.send(reply);
                }
            }
            Ok(ClientReply::Accepted { first }) => to_sender(Outgoing::Accepted(first)),
            Ok(ClientReply::Busy { ids, reason }) => {
                tracing::info!("submissions wait: {reason}");
                if let Some(&first) = ids.first() {
                    to_sender(Outgoing::Busy(first));
                }
            }
            Ok(ClientReply::Resume) => to_sender(Outgoing::Resume),
            Ok(ClientReply::Error { message }) => tracing::warn!("interchange: {message}"),
            Ok(ClientReply::Refused { reason }) => {
                shared.fail(ClientError::Refused(reason));
                return None;
            }
            Ok(ClientReply::Heartbeat | ClientReply::Welcome { .. }) => {}
            Err(e) => tracing::warn!("dropping a bad frame from the interchange: {e}"),
        }
    }
}
