//! The interchange's event loop. One task owns every table; socket receive loops feed it events.
//! After each burst of events it dispatches queued tasks and flushes buffered results, so batches
//! form under load without delaying a lone task.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use htex_protocol::{
    now_us, ClientHello, ClientReply, ClientRequest, Command, CommandReply, EncodedTask,
    InterchangeMessage, ManagerMessage, ManagerState, Registration, StatusReport, TaskError,
    TaskKind, TaskResult, TaskSpec, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;

use crate::queue::{GlobalId, TaskQueue};
use crate::records::{ClientKey, ClientRecord, IdMap, ManagerRecord, TaskRecord, TaskState};
use crate::sockets::{hex, Router};
use crate::task_table::TaskTable;
use crate::InterchangeConfig;

/// A decoded frame, or why it could not be decoded and the protocol version it claimed.
pub(crate) type Incoming<T> = Result<T, (String, Option<u32>)>;

pub(crate) enum Event {
    Client(Bytes, Incoming<ClientRequest>),
    Manager(Bytes, Incoming<ManagerMessage>),
    Stop,
}

/// Most events handled between two dispatch rounds.
const EVENT_BURST: usize = 4096;
/// Most tasks set aside in one dispatch round because only busy managers could run them.
const MAX_DEFERRED: usize = 1024;

/// Messages from the sockets that may wait for the actor; beyond this the sockets stop reading.
pub(crate) const INCOMING_QUEUE: usize = 64;

pub(crate) async fn run(
    config: InterchangeConfig,
    clients: Router,
    managers: Router,
    mut net: mpsc::Receiver<Event>,
    mut control: mpsc::UnboundedReceiver<Event>,
) {
    let mut state = State::new(config, clients, managers);
    let mut tick = tokio::time::interval(state.config.heartbeat_period);
    let (mut net_open, mut control_open) = (true, true);
    loop {
        let event = tokio::select! {
            event = net.recv(), if net_open => event.or_else(|| { net_open = false; None }),
            event = control.recv(), if control_open => event.or_else(|| { control_open = false; None }),
            _ = tick.tick() => {
                state.on_tick().await;
                state.flush_results().await;
                continue;
            }
        };
        let Some(mut event) = event else {
            if net_open || control_open {
                continue;
            }
            break;
        };
        let mut handled = 0;
        let stop = loop {
            if state.handle(event).await == Flow::Stop {
                break true;
            }
            handled += 1;
            let next = control.try_recv().or_else(|_| net.try_recv());
            match next {
                Ok(next) if handled < EVENT_BURST => event = next,
                Ok(next) => {
                    state.dispatch().await;
                    state.flush_results().await;
                    handled = 0;
                    event = next;
                }
                Err(_) => break false,
            }
        };
        if stop {
            state.shut_down().await;
            break;
        }
        state.dispatch().await;
        state.flush_results().await;
    }
    // zmq.rs gives no way to wait for queued frames to reach the wire: give them a moment.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    tracing::info!("interchange stopped");
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Stop,
}

struct State {
    config: InterchangeConfig,
    client_sock: Router,
    manager_sock: Router,
    started: Instant,
    tasks: TaskTable,
    queue: TaskQueue,
    /// Tasks no connected manager could run, and since when.
    parked: Vec<(GlobalId, Instant)>,
    next_id: GlobalId,
    clients: HashMap<ClientKey, ClientRecord>,
    client_keys: HashMap<Bytes, ClientKey>,
    next_client_key: ClientKey,
    managers: HashMap<u64, ManagerRecord>,
    manager_keys: HashMap<Bytes, u64>,
    next_manager_key: u64,
    /// Round-robin cursor over managers, so batches spread evenly.
    cursor: usize,
    /// Results waiting for the next flush, per client.
    outbox: HashMap<ClientKey, Vec<TaskResult>>,
}

impl State {
    fn new(config: InterchangeConfig, client_sock: Router, manager_sock: Router) -> Self {
        State {
            config,
            client_sock,
            manager_sock,
            started: Instant::now(),
            tasks: TaskTable::new(1),
            queue: TaskQueue::default(),
            parked: Vec::new(),
            next_id: 1,
            clients: HashMap::new(),
            client_keys: HashMap::new(),
            next_client_key: 1,
            managers: HashMap::new(),
            manager_keys: HashMap::new(),
            next_manager_key: 1,
            cursor: 0,
            outbox: HashMap::new(),
        }
    }

    async fn handle(&mut self, event: Event) -> Flow {
        match event {
            Event::Client(peer, message) => self.on_client(peer, message).await,
            Event::Manager(peer, message) => {
                self.on_manager(peer, message).await;
                Flow::Continue
            }
            Event::Stop => Flow::Stop,
        }
    }

    // ---- clients ----

    async fn on_client(&mut self, peer: Bytes, message: Incoming<ClientRequest>) -> Flow {
        let request = match message {
            Ok(request) => request,
            Err((reason, claimed)) => {
                let reply = match claimed.filter(|v| *v != PROTOCOL_VERSION) {
                    Some(v) => ClientReply::Refused {
                        reason: version_mismatch("client", v),
                    },
                    None => ClientReply::Error {
                        message: format!("malformed message: {reason}"),
                    },
                };
                tracing::warn!("bad frame from client {}: {reason}", hex(&peer));
                self.client_sock.send(&peer, &reply).await;
                return Flow::Continue;
            }
        };
        if let ClientRequest::Hello(hello) = request {
            self.on_hello(peer, hello).await;
            return Flow::Continue;
        }
        let key = self.client_keys.get(&peer).copied();
        let Some(key) = key.filter(|k| self.clients.get(k).is_some_and(|c| !c.departed)) else {
            let message = "unknown client: send Hello before anything else".to_string();
            self.client_sock
                .send(&peer, &ClientReply::Error { message })
                .await;
            return Flow::Continue;
        };
        match request {
            ClientRequest::Hello(_) => unreachable!("handled above"),
            ClientRequest::Submit(specs) => {
                let received_us = now_us();
                for spec in specs {
                    self.accept(key, spec, received_us);
                }
            }
            ClientRequest::Cancel(ids) => {
                for id in ids {
                    let gid = self
                        .clients
                        .get(&key)
                        .and_then(|c| c.tasks.get(&id))
                        .copied();
                    if let Some(gid) = gid {
                        self.cancel(gid, "cancelled by the client").await;
                    }
                }
            }
            ClientRequest::Command {
                request_id,
                command,
            } => {
                let stop = command == Command::Shutdown;
                let reply = self.on_command(command).await;
                let message = ClientReply::CommandReply { request_id, reply };
                self.client_sock.send(&peer, &message).await;
                if stop {
                    return Flow::Stop;
                }
            }
            ClientRequest::Heartbeat => {}
            ClientRequest::Goodbye => {
                // Its tasks are cancelled; their results still go to its connection, and the
                // record goes once they have (flush_results).
                let gids: Vec<GlobalId> = match self.clients.get_mut(&key) {
                    Some(client) => {
                        tracing::info!(client = %client.name, "client left");
                        client.departed = true;
                        client.tasks.values().copied().collect()
                    }
                    None => Vec::new(),
                };
                // The next flush sends what is waiting for it and, with nothing outstanding,
                // forgets it.
                self.outbox.entry(key).or_default();
                for gid in gids {
                    self.cancel(gid, "the client left").await;
                }
            }
        }
        Flow::Continue
    }

    async fn on_hello(&mut self, peer: Bytes, hello: ClientHello) {
        if hello.protocol_version != PROTOCOL_VERSION {
            let reason = version_mismatch("client", hello.protocol_version);
            tracing::warn!(client = %hello.name, "{reason}");
            self.client_sock
                .send(&peer, &ClientReply::Refused { reason })
                .await;
            return;
        }
        tracing::info!(client = %hello.name, "client connected");
        match self
            .client_keys
            .get(&peer)
            .and_then(|k| self.clients.get_mut(k))
        {
            // Hello again on the same connection (after Goodbye, say): the same record, with
            // the tasks it still has outstanding.
            Some(client) => {
                client.name = hello.name;
                client.departed = false;
            }
            None => {
                let key = self.next_client_key;
                self.next_client_key += 1;
                self.client_keys.insert(peer.clone(), key);
                let record = ClientRecord {
                    peer: peer.clone(),
                    name: hello.name,
                    tasks: IdMap::default(),
                    departed: false,
                };
                self.clients.insert(key, record);
            }
        }
        let welcome = ClientReply::Welcome {
            protocol_version: PROTOCOL_VERSION,
            interchange: format!("htex {}", env!("CARGO_PKG_VERSION")),
        };
        self.client_sock.send(&peer, &welcome).await;
    }

    /// Takes a submitted task into the queue, or answers it at once when it is invalid.
    fn accept(&mut self, key: ClientKey, mut spec: TaskSpec, received_us: u64) {
        let client = self
            .clients
            .get_mut(&key)
            .expect("caller checked the client");
        let invalid = if client.tasks.contains_key(&spec.id) {
            Some(format!(
                "task id {} is already outstanding for this client",
                spec.id
            ))
        } else {
            validate(&spec)
        };
        if let Some(message) = invalid {
            let result = TaskResult::error(spec.id, TaskError::BadRequest { message });
            self.outbox.entry(key).or_default().push(result);
            return;
        }
        let gid = self.next_id;
        self.next_id += 1;
        client.tasks.insert(spec.id, gid);
        let client_task_id = spec.id;
        spec.id = gid;
        let task = match EncodedTask::encode(&spec) {
            Ok(task) => task,
            Err(e) => {
                client.tasks.remove(&client_task_id);
                let message = format!("cannot encode the task: {e}");
                let result = TaskResult::error(client_task_id, TaskError::BadRequest { message });
                self.outbox.entry(key).or_default().push(result);
                return;
            }
        };
        self.queue.push(spec.priority, gid);
        let record = TaskRecord {
            client: key,
            client_task_id,
            task,
            resources: (!spec.resources.is_any()).then(|| Box::new(spec.resources)),
            priority: spec.priority,
            max_retries: spec.max_retries,
            submitted_us: spec.submitted_us,
            state: TaskState::Queued,
            received_us,
            dispatched_us: 0,
            losses: 0,
        };
        self.tasks.insert(gid, record);
    }

    /// Ends a task with `Cancelled`: at once when it is not on a manager, else through the
    /// manager, whose answer is the task's one result.
    async fn cancel(&mut self, gid: GlobalId, reason: &str) {
        let Some(record) = self.tasks.get(&gid) else {
            return;
        };
        if let TaskState::Dispatched { manager } = record.state {
            if let Some(m) = self.managers.get(&manager) {
                let peer = m.peer.clone();
                self.manager_sock
                    .send(&peer, &InterchangeMessage::Cancel(vec![gid]))
                    .await;
                return;
            }
        }
        self.finish(
            gid,
            TaskError::Cancelled {
                reason: reason.to_string(),
            },
        );
    }

    async fn on_command(&mut self, command: Command) -> CommandReply {
        let target = match &command {
            Command::Status => return CommandReply::Status(self.status()),
            Command::Shutdown => return CommandReply::Done,
            Command::Drain { manager }
            | Command::Hold { manager }
            | Command::Release { manager } => manager,
        };
        let found = self
            .managers
            .iter_mut()
            .find(|(_, m)| &m.registration.manager_id == target);
        let Some((_, record)) = found else {
            let known: Vec<_> = self
                .managers
                .values()
                .map(|m| m.registration.manager_id.as_str())
                .collect();
            let message = format!("no manager `{target}`; connected: [{}]", known.join(", "));
            return CommandReply::Error { message };
        };
        let peer = record.peer.clone();
        match command {
            Command::Drain { .. } => {
                record.state = ManagerState::Draining;
                self.manager_sock
                    .send(&peer, &InterchangeMessage::Drain)
                    .await;
            }
            Command::Hold { .. } if record.state == ManagerState::Active => {
                record.state = ManagerState::Held;
            }
            Command::Release { .. } if record.state == ManagerState::Held => {
                record.state = ManagerState::Active;
            }
            _ => {
                let message = format!("manager `{target}` is {:?}", record.state);
                return CommandReply::Error { message };
            }
        }
        CommandReply::Done
    }

    fn status(&self) -> StatusReport {
        let now = Instant::now();
        let queued = self
            .tasks
            .iter()
            .filter(|(_, t)| !matches!(t.state, TaskState::Dispatched { .. }));
        let mut managers: Vec<_> = self.managers.values().map(|m| m.status(now)).collect();
        managers.sort_by(|a, b| a.id.cmp(&b.id));
        StatusReport {
            interchange: format!("htex {}", env!("CARGO_PKG_VERSION")),
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            clients: self.clients.values().filter(|c| !c.departed).count() as u32,
            queued: queued.count() as u64,
            outstanding: self.tasks.len() as u64,
            managers,
        }
    }

    // ---- managers ----

    async fn on_manager(&mut self, peer: Bytes, message: Incoming<ManagerMessage>) {
        let message = match message {
            Ok(message) => message,
            Err((reason, claimed)) => {
                if let Some(v) = claimed.filter(|v| *v != PROTOCOL_VERSION) {
                    let reason = version_mismatch("manager", v);
                    tracing::warn!("refusing manager {}: {reason}", hex(&peer));
                    self.manager_sock
                        .send(&peer, &InterchangeMessage::Refused { reason })
                        .await;
                } else {
                    tracing::warn!("dropping a bad frame from manager {}: {reason}", hex(&peer));
                }
                return;
            }
        };
        if let ManagerMessage::Register(registration) = message {
            self.on_register(peer, registration).await;
            return;
        }
        let Some(&key) = self.manager_keys.get(&peer) else {
            // A manager declared lost (a network blip, a pause) or known to an earlier
            // interchange: it registers again, and its late results count only if still wanted.
            tracing::info!(
                "message from an unknown manager {}: asking it to register",
                hex(&peer)
            );
            self.manager_sock
                .send(&peer, &InterchangeMessage::RegisterAgain)
                .await;
            return;
        };
        if let Some(record) = self.managers.get_mut(&key) {
            record.last_seen = Instant::now();
        }
        match message {
            ManagerMessage::Register(_) => unreachable!("handled above"),
            ManagerMessage::Results(results) => {
                for result in results {
                    self.complete(key, result);
                }
            }
            ManagerMessage::Heartbeat => {}
            ManagerMessage::Goodbye => self.lose_manager(key, "it said goodbye"),
            ManagerMessage::Draining { returned } => self.on_draining(key, returned),
        }
    }

    async fn on_register(&mut self, peer: Bytes, registration: Registration) {
        if registration.protocol_version != PROTOCOL_VERSION {
            let reason = version_mismatch("manager", registration.protocol_version);
            tracing::warn!(manager = %registration.manager_id, "{reason}");
            self.manager_sock
                .send(&peer, &InterchangeMessage::Refused { reason })
                .await;
            return;
        }
        // A manager that registers again (a new connection, or a restart) replaces its old record.
        let stale: Vec<u64> = self
            .managers
            .iter()
            .filter(|(_, m)| m.peer == peer || m.registration.manager_id == registration.manager_id)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.lose_manager(key, "it registered again");
        }
        let key = self.next_manager_key;
        self.next_manager_key += 1;
        tracing::info!(
            manager = %registration.manager_id,
            host = %registration.hostname,
            slots = registration.slots.len(),
            "manager registered"
        );
        self.manager_keys.insert(peer.clone(), key);
        let record = ManagerRecord {
            peer: peer.clone(),
            registration,
            state: ManagerState::Active,
            last_seen: Instant::now(),
            tasks: Default::default(),
            constrained: Default::default(),
        };
        self.managers.insert(key, record);
        let welcome = InterchangeMessage::Registered {
            heartbeat_period_ms: self.config.heartbeat_period.as_millis() as u64,
            heartbeat_threshold_ms: self.config.heartbeat_threshold.as_millis() as u64,
        };
        self.manager_sock.send(&peer, &welcome).await;
        // Parked tasks get another look now that new slots exist.
        for (gid, _) in std::mem::take(&mut self.parked) {
            if let Some(record) = self.tasks.get_mut(&gid) {
                record.state = TaskState::Queued;
                self.queue.push(record.priority, gid);
            }
        }
    }

    /// A manager stops taking tasks; those it gives back are queued again, with no loss counted.
    fn on_draining(&mut self, key: u64, returned: Vec<GlobalId>) {
        let Some(manager) = self.managers.get_mut(&key) else {
            return;
        };
        manager.state = ManagerState::Draining;
        tracing::info!(manager = %manager.registration.manager_id, returned = returned.len(), "manager draining");
        for gid in returned {
            let Some(task) = self.tasks.get_mut(&gid) else {
                continue;
            };
            if task.state != (TaskState::Dispatched { manager: key }) {
                continue;
            }
            manager.release(gid, task.resources());
            task.state = TaskState::Queued;
            self.queue.push(task.priority, gid);
        }
    }

    /// Records a manager's result; results for tasks it no longer holds are duplicates.
    fn complete(&mut self, manager: u64, mut result: TaskResult) {
        let gid = result.id;
        let holds =
            self.tasks.get(&gid).map(|t| t.state) == Some(TaskState::Dispatched { manager });
        if !holds {
            tracing::debug!(task = gid, "dropping a duplicate or unknown result");
            return;
        }
        let record = self.tasks.remove(&gid).expect("checked above");
        if let Some(m) = self.managers.get_mut(&manager) {
            m.release(gid, record.resources());
        }
        if let Some(client) = self.clients.get_mut(&record.client) {
            client.tasks.remove(&record.client_task_id);
        }
        result.id = record.client_task_id;
        result.timings.submitted_us = record.submitted_us;
        result.timings.received_us = record.received_us;
        result.timings.dispatched_us = record.dispatched_us;
        result.attempts = record.losses + 1;
        self.outbox.entry(record.client).or_default().push(result);
    }

    /// Ends a task that is not on a manager with an error.
    fn finish(&mut self, gid: GlobalId, error: TaskError) {
        let Some(record) = self.tasks.remove(&gid) else {
            return;
        };
        if let Some(client) = self.clients.get_mut(&record.client) {
            client.tasks.remove(&record.client_task_id);
        }
        let mut result = TaskResult::error(record.client_task_id, error);
        result.timings.submitted_us = record.submitted_us;
        result.timings.received_us = record.received_us;
        result.attempts = record.losses;
        self.outbox.entry(record.client).or_default().push(result);
    }

    /// Drops a manager; each task it held is queued again or, past its retries, `ManagerLost`.
    fn lose_manager(&mut self, key: u64, why: &str) {
        let Some(record) = self.managers.remove(&key) else {
            return;
        };
        self.manager_keys.remove(&record.peer);
        let name = record.registration.manager_id;
        if record.tasks.is_empty() {
            tracing::info!(manager = %name, "manager left: {why}");
        } else {
            tracing::warn!(manager = %name, tasks = record.tasks.len(), "manager lost: {why}");
        }
        for gid in record.tasks {
            let Some(task) = self.tasks.get_mut(&gid) else {
                continue;
            };
            task.losses += 1;
            if task.losses > task.max_retries {
                self.finish(
                    gid,
                    TaskError::ManagerLost {
                        manager: name.clone(),
                    },
                );
            } else {
                task.state = TaskState::Queued;
                self.queue.push(task.priority, gid);
            }
        }
    }

    // ---- dispatch and timers ----

    /// Hands queued tasks to managers with free capacity, one batch per manager.
    async fn dispatch(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut keys: Vec<u64> = self.managers.keys().copied().collect();
        keys.sort_unstable();
        let mut free: Vec<usize> = keys.iter().map(|k| self.managers[k].free()).collect();
        let mut total_free: usize = free.iter().sum();
        if total_free == 0 {
            return;
        }
        let mut batches: Vec<Vec<EncodedTask>> = vec![Vec::new(); keys.len()];
        let mut deferred = Vec::new();
        let now = now_us();
        while total_free > 0 && deferred.len() < MAX_DEFERRED {
            let Some(gid) = self.queue.pop() else { break };
            let Some(task) = self.tasks.get_mut(&gid) else {
                continue;
            };
            if task.state != TaskState::Queued {
                continue;
            }
            let n = keys.len();
            let request = task.resources();
            let chosen = (0..n).map(|i| (self.cursor + i) % n).find(|&i| {
                let m = &self.managers[&keys[i]];
                free[i] > 0 && m.could_run(request) && m.has_room_for(request)
            });
            match chosen {
                Some(i) => {
                    free[i] -= 1;
                    total_free -= 1;
                    self.cursor = (i + 1) % n;
                    task.state = TaskState::Dispatched { manager: keys[i] };
                    task.dispatched_us = now;
                    batches[i].push(task.task.clone());
                    if let Some(m) = self.managers.get_mut(&keys[i]) {
                        m.take(gid, task.resources());
                    }
                }
                None if self.managers.values().any(|m| m.could_run(request)) => deferred.push(gid),
                None => {
                    task.state = TaskState::Parked;
                    self.parked.push((gid, Instant::now()));
                }
            }
        }
        for gid in deferred {
            if let Some(task) = self.tasks.get(&gid) {
                self.queue.push(task.priority, gid);
            }
        }
        for (key, batch) in keys.iter().zip(batches) {
            if !batch.is_empty() {
                let peer = self.managers[key].peer.clone();
                self.manager_sock
                    .send(&peer, &InterchangeMessage::Tasks(batch))
                    .await;
            }
        }
    }

    async fn flush_results(&mut self) {
        for (key, results) in std::mem::take(&mut self.outbox) {
            let Some(client) = self.clients.get(&key) else {
                continue;
            };
            let peer = client.peer.clone();
            if !results.is_empty() {
                self.client_sock
                    .send(&peer, &ClientReply::Results(results))
                    .await;
            }
            // A client that said Goodbye is forgotten once its last result went out.
            if client.departed && client.tasks.is_empty() {
                self.clients.remove(&key);
                self.client_keys.remove(&peer);
            }
        }
    }

    /// Heartbeats out, silent managers lost, parked tasks past their grace `Unsatisfiable`.
    async fn on_tick(&mut self) {
        let now = Instant::now();
        let threshold = self.config.heartbeat_threshold;
        let silent: Vec<u64> = self
            .managers
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) > threshold)
            .map(|(k, _)| *k)
            .collect();
        for key in silent {
            self.lose_manager(key, &format!("no message for over {threshold:?}"));
        }
        let grace = self.config.unsatisfiable_grace;
        let parked = std::mem::take(&mut self.parked);
        for (gid, since) in parked {
            let Some(task) = self.tasks.get(&gid) else {
                continue;
            };
            match task.state {
                TaskState::Parked if now.duration_since(since) > grace => {
                    let reason = format!(
                        "{:?} fits no slot of the {} connected manager(s) after waiting {grace:?}",
                        task.resources(),
                        self.managers.len()
                    );
                    self.finish(gid, TaskError::Unsatisfiable { reason });
                }
                TaskState::Parked => self.parked.push((gid, since)),
                _ => {}
            }
        }
        let peers: Vec<Bytes> = self.managers.values().map(|m| m.peer.clone()).collect();
        for peer in peers {
            self.manager_sock
                .send(&peer, &InterchangeMessage::Heartbeat)
                .await;
        }
        let peers: Vec<Bytes> = self
            .clients
            .values()
            .filter(|c| !c.departed)
            .map(|c| c.peer.clone())
            .collect();
        for peer in peers {
            self.client_sock.send(&peer, &ClientReply::Heartbeat).await;
        }
    }

    /// Tells managers to stop and ends every outstanding task with `Cancelled`.
    async fn shut_down(&mut self) {
        tracing::info!(outstanding = self.tasks.len(), "interchange shutting down");
        let peers: Vec<Bytes> = self.managers.values().map(|m| m.peer.clone()).collect();
        for peer in peers {
            self.manager_sock
                .send(&peer, &InterchangeMessage::Shutdown)
                .await;
        }
        let gids: Vec<GlobalId> = self.tasks.iter().map(|(gid, _)| gid).collect();
        for gid in gids {
            self.finish(
                gid,
                TaskError::Cancelled {
                    reason: "the interchange shut down".into(),
                },
            );
        }
        self.flush_results().await;
    }
}

/// Why a task can never run, checked when it is submitted.
fn validate(spec: &TaskSpec) -> Option<String> {
    match &spec.kind {
        TaskKind::Command(c) if c.argv.is_empty() => Some("command has an empty argv".into()),
        TaskKind::Function { name, .. } if name.is_empty() => Some("function name is empty".into()),
        TaskKind::Call { runner, .. } if runner.is_empty() => Some("runner name is empty".into()),
        _ => None,
    }
}

fn version_mismatch(peer: &str, theirs: u32) -> String {
    format!(
        "{peer} speaks htex protocol version {theirs}, this interchange speaks version \
         {PROTOCOL_VERSION}; run the same htex release on both"
    )
}
