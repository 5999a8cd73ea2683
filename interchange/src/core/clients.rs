//! The client table: hello, submissions (and `Busy` while the interchange holds as many task
//! bytes as it may), cancels, the command channel, goodbye, and the results that wait for the
//! next flush, packed into frames under the client's frame limit.

use std::collections::HashMap;

use bytes::Bytes;
use htex_protocol::{
    max_item_bytes, BatchEncoder, ClientHello, ClientReply, ClientRequest, CodecError, Command,
    CommandReply, StatusReport, TaskError, TaskId, TaskResult, TaskSpec, PROTOCOL_VERSION,
};

use super::managers::hex;
use super::{link_limit, version_mismatch, BadFrame, Core, Effects, Incoming, Now, Side};
use crate::records::{ClientKey, GlobalId, IdMap, KeyMap};

/// A client that said hello.
pub(crate) struct ClientRecord {
    pub peer: Bytes,
    pub name: String,
    /// Its outstanding tasks, by the client's own ids.
    pub tasks: IdMap<GlobalId>,
    /// It said Goodbye: its tasks are being cancelled, and their results still go to it.
    pub departed: bool,
    /// The frame limit of the link to it (the smaller of both ends').
    pub max_frame_bytes: usize,
    /// Results for the next flush.
    outbox: Vec<TaskResult>,
    /// It was told `Busy` and waits for `Resume`.
    paused: bool,
    /// The first task of the last frame accepted and not yet acknowledged, and the task bytes
    /// accepted since the last acknowledgement (see `ACK_BYTES`).
    unacked: Option<TaskId>,
    unacked_bytes: usize,
}

/// Task bytes accepted from a client before `Accepted` goes out at once; below it, the
/// acknowledgement waits for the next tick. `Accepted` is cumulative (it covers every frame up
/// to the one it names), so one answer serves many frames, and a lone task's round trip does
/// not pay for an extra message. What the client keeps for re-sending stays about this size.
pub(crate) const ACK_BYTES: usize = 1 << 20;

#[derive(Default)]
pub(crate) struct Clients {
    records: KeyMap<ClientKey, ClientRecord>,
    keys: HashMap<Bytes, ClientKey>,
    next: ClientKey,
    /// Clients with results waiting, or departed ones to forget once answered.
    dirty: Vec<ClientKey>,
    /// Clients waiting for `Resume`.
    paused: Vec<ClientKey>,
}

impl Clients {
    pub fn get(&self, key: ClientKey) -> Option<&ClientRecord> {
        self.records.get(&key)
    }

    pub fn get_mut(&mut self, key: ClientKey) -> Option<&mut ClientRecord> {
        self.records.get_mut(&key)
    }

    /// Peers of clients that have not said goodbye.
    pub fn connected_peers(&self) -> Vec<Bytes> {
        self.records
            .values()
            .filter(|c| !c.departed)
            .map(|c| c.peer.clone())
            .collect()
    }

    fn connected(&self, peer: &Bytes) -> Option<ClientKey> {
        let key = *self.keys.get(peer)?;
        self.records.get(&key).filter(|c| !c.departed).map(|_| key)
    }

    fn forget(&mut self, key: ClientKey) -> Option<ClientRecord> {
        let record = self.records.remove(&key)?;
        self.keys.remove(&record.peer);
        Some(record)
    }
}

impl Core {
    pub(super) fn on_client(
        &mut self,
        now: Now,
        peer: Bytes,
        message: Incoming<ClientRequest>,
        out: &mut Effects,
    ) {
        let request = match message {
            Ok(request) => request,
            Err(bad) => return self.on_bad_client_frame(peer, bad, out),
        };
        if let ClientRequest::Hello(hello) = request {
            return self.on_hello(peer, hello, out);
        }
        let Some(key) = self.clients.connected(&peer) else {
            let message = "unknown client: send Hello before anything else".to_string();
            out.send(Side::Client, &peer, &ClientReply::Error { message });
            return;
        };
        match request {
            ClientRequest::Hello(_) => unreachable!("handled above"),
            ClientRequest::Submit(specs) => self.on_submit(key, specs, now, out),
            ClientRequest::Cancel(ids) => {
                for id in ids {
                    let gid = self
                        .clients
                        .get(key)
                        .and_then(|c| c.tasks.get(&id))
                        .copied();
                    if let Some(gid) = gid {
                        self.cancel(gid, "cancelled by the client");
                    }
                }
            }
            ClientRequest::Command {
                request_id,
                command,
            } => {
                let stop = command == Command::Shutdown;
                let reply = match command {
                    Command::Status => CommandReply::Status(self.status(now)),
                    Command::Shutdown => CommandReply::Done,
                    Command::ResumeScaling => match self.resume_scaling() {
                        Ok(()) => CommandReply::Done,
                        Err(message) => CommandReply::Error { message },
                    },
                    other => self.manager_command(other, out),
                };
                out.send(
                    Side::Client,
                    &peer,
                    &ClientReply::CommandReply { request_id, reply },
                );
                if stop {
                    self.shut_down(now, out);
                }
            }
            ClientRequest::Heartbeat => {}
            ClientRequest::Goodbye => self.on_goodbye(key, out),
        }
    }

    /// A frame that does not decode: a hello from another protocol version is refused; an
    /// oversize batch is answered task by task (`BadRequest`), so the client fails exactly the
    /// tasks it carried; anything else gets an error.
    fn on_bad_client_frame(&mut self, peer: Bytes, bad: BadFrame, out: &mut Effects) {
        tracing::warn!("bad frame from client {}: {}", hex(&peer), bad.reason);
        if let Some(v) = bad.claimed_version.filter(|v| *v != PROTOCOL_VERSION) {
            let reason = version_mismatch("client", v);
            out.send(Side::Client, &peer, &ClientReply::Refused { reason });
            return;
        }
        if let (Some((size, ids)), Some(key)) = (&bad.oversize, self.clients.connected(&peer)) {
            let message = format!(
                "the frame carrying this task was {size} bytes, over the interchange's limit of {} \
                 bytes; send fewer or smaller tasks per frame",
                self.config.max_frame_bytes
            );
            for &id in ids {
                let error = TaskError::BadRequest {
                    message: message.clone(),
                };
                self.deliver(key, TaskResult::error(id, error));
            }
            if let Some(&first) = ids.first() {
                if let Some(client) = self.clients.get_mut(key) {
                    client.unacked = None;
                    client.unacked_bytes = 0;
                }
                out.send(Side::Client, &peer, &ClientReply::Accepted { first });
            }
            return;
        }
        let message = format!("malformed message: {}", bad.reason);
        out.send(Side::Client, &peer, &ClientReply::Error { message });
    }

    fn on_hello(&mut self, peer: Bytes, hello: ClientHello, out: &mut Effects) {
        if hello.protocol_version != PROTOCOL_VERSION {
            let reason = version_mismatch("client", hello.protocol_version);
            tracing::warn!(client = %hello.name, "{reason}");
            out.send(Side::Client, &peer, &ClientReply::Refused { reason });
            return;
        }
        tracing::info!(client = %hello.name, "client connected");
        let limit = link_limit(self.config.max_frame_bytes, hello.max_frame_bytes);
        let clients = &mut self.clients;
        match clients
            .keys
            .get(&peer)
            .and_then(|k| clients.records.get_mut(k))
        {
            // Hello again on the same connection (after Goodbye, say): the same record, with
            // the tasks it still has outstanding.
            Some(client) => {
                client.name = hello.name;
                client.departed = false;
                client.max_frame_bytes = limit;
            }
            None => {
                clients.next += 1;
                let key = clients.next;
                clients.keys.insert(peer.clone(), key);
                let record = ClientRecord {
                    peer: peer.clone(),
                    name: hello.name,
                    tasks: IdMap::default(),
                    departed: false,
                    max_frame_bytes: limit,
                    outbox: Vec::new(),
                    paused: false,
                    unacked: None,
                    unacked_bytes: 0,
                };
                clients.records.insert(key, record);
            }
        }
        let welcome = ClientReply::Welcome {
            protocol_version: PROTOCOL_VERSION,
            interchange: format!("htex {}", env!("CARGO_PKG_VERSION")),
            max_frame_bytes: self.config.max_frame_bytes as u64,
        };
        out.send(Side::Client, &peer, &welcome);
    }

    /// Accepts a batch of tasks, answering the invalid ones at once; while the interchange holds
    /// its cap of task bytes, the whole batch is refused with `Busy` (nothing is lost: the client
    /// sends it again after `Resume`).
    fn on_submit(&mut self, key: ClientKey, specs: Vec<TaskSpec>, now: Now, out: &mut Effects) {
        let clients = &mut self.clients;
        let client = clients
            .records
            .get_mut(&key)
            .expect("the caller checked the client");
        if client.paused || self.task_bytes >= self.config.max_queued_bytes {
            let ids: Vec<TaskId> = specs.iter().map(|s| s.id).collect();
            let reason = format!(
                "the interchange holds {} bytes of tasks, at its cap of {} bytes \
                 (--max-queued-bytes); send these again after Resume",
                self.task_bytes, self.config.max_queued_bytes
            );
            let peer = client.peer.clone();
            // The frames before this one were taken: the client hears so first.
            if let Some(first) = client.unacked.take() {
                client.unacked_bytes = 0;
                out.send(Side::Client, &peer, &ClientReply::Accepted { first });
            }
            if !client.paused {
                client.paused = true;
                clients.paused.push(key);
                tracing::info!(client = %client.name, task_bytes = self.task_bytes, "submissions wait: the task byte cap is reached");
            }
            out.send(Side::Client, &peer, &ClientReply::Busy { ids, reason });
            return;
        }
        let Some(first) = specs.first().map(|s| s.id) else {
            return;
        };
        let before = self.task_bytes;
        for spec in specs {
            let id = spec.id;
            if let Err(error) = self.accept(key, spec, now) {
                self.deliver(key, TaskResult::error(id, error));
            }
        }
        let client = self
            .clients
            .records
            .get_mut(&key)
            .expect("the caller checked the client");
        client.unacked = Some(first);
        client.unacked_bytes += self.task_bytes - before;
        if client.unacked_bytes >= ACK_BYTES {
            client.unacked = None;
            client.unacked_bytes = 0;
            out.send(Side::Client, &client.peer, &ClientReply::Accepted { first });
        }
    }

    /// Every acknowledgement that waits goes out (on each tick).
    pub(super) fn acknowledge_clients(&mut self, out: &mut Effects) {
        for client in self.clients.records.values_mut() {
            if let Some(first) = client.unacked.take() {
                client.unacked_bytes = 0;
                out.send(Side::Client, &client.peer, &ClientReply::Accepted { first });
            }
        }
    }

    /// Clients told `Busy` hear `Resume` once the held task bytes are below three quarters of
    /// the cap (not at once below it, so that each resume admits more than one frame).
    pub(super) fn resume_clients(&mut self, out: &mut Effects) {
        if self.clients.paused.is_empty() || self.task_bytes >= self.config.max_queued_bytes / 4 * 3
        {
            return;
        }
        for key in std::mem::take(&mut self.clients.paused) {
            if let Some(client) = self.clients.get_mut(key) {
                client.paused = false;
                out.send(Side::Client, &client.peer, &ClientReply::Resume);
            }
        }
    }

    fn on_goodbye(&mut self, key: ClientKey, out: &mut Effects) {
        // Its tasks are cancelled; their results still go to its connection, and the record
        // goes once they have (flush_results).
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        tracing::info!(client = %client.name, "client left");
        client.departed = true;
        if let Some(first) = client.unacked.take() {
            client.unacked_bytes = 0;
            out.send(Side::Client, &client.peer, &ClientReply::Accepted { first });
        }
        let gids: Vec<GlobalId> = client.tasks.values().copied().collect();
        self.clients.dirty.push(key);
        for gid in gids {
            self.cancel(gid, "the client left");
        }
    }

    /// A client that stopped reading: forgotten at once, its tasks cancelled and their results
    /// dropped, so the memory it held is freed and every other peer runs on.
    pub(super) fn drop_client(&mut self, peer: &Bytes, why: &str) {
        let Some(&key) = self.clients.keys.get(peer) else {
            return;
        };
        let Some(client) = self.clients.forget(key) else {
            return;
        };
        tracing::warn!(client = %client.name, tasks = client.tasks.len(), "client dropped: {why}");
        for gid in client.tasks.into_values() {
            self.cancel(gid, "the client was dropped");
        }
    }

    /// Queues a result for its client's next flush (dropped if the client is gone).
    pub(super) fn deliver(&mut self, key: ClientKey, result: TaskResult) {
        let clients = &mut self.clients;
        if let Some(client) = clients.records.get_mut(&key) {
            if client.outbox.is_empty() {
                clients.dirty.push(key);
            }
            client.outbox.push(result);
        }
    }

    /// Sends waiting results, packed under each client's frame limit; a result too large to
    /// travel alone is replaced by `ResultTooLarge`. Departed clients with nothing outstanding
    /// are forgotten.
    pub(super) fn flush_results(&mut self, out: &mut Effects) {
        for key in std::mem::take(&mut self.clients.dirty) {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            let results = std::mem::take(&mut client.outbox);
            if !results.is_empty() {
                for frame in pack_results(results, client.max_frame_bytes) {
                    out.frame(Side::Client, &client.peer, frame);
                }
            }
            if client.departed && client.tasks.is_empty() {
                self.clients.forget(key);
            }
        }
    }

    fn status(&self, now: Now) -> StatusReport {
        let mut managers: Vec<_> = self
            .managers
            .iter()
            .map(|(_, m)| m.status(now.at))
            .collect();
        managers.sort_by(|a, b| a.id.cmp(&b.id));
        StatusReport {
            interchange: format!("htex {}", env!("CARGO_PKG_VERSION")),
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: now.at.saturating_duration_since(self.started).as_millis() as u64,
            clients: self
                .clients
                .records
                .values()
                .filter(|c| !c.departed)
                .count() as u32,
            queued: self.queued as u64,
            outstanding: self.tasks.len() as u64,
            managers,
            task_bytes: self.task_bytes as u64,
            max_task_bytes: self.config.max_queued_bytes as u64,
            security: self.security.to_string(),
            scaling: self.scaling_report(now.at).map(Box::new),
        }
    }
}

/// Packs results into `Results` frames of at most `limit` bytes.
fn pack_results(results: Vec<TaskResult>, limit: usize) -> Vec<Vec<u8>> {
    let mut batch =
        BatchEncoder::new(&ClientReply::Results(Vec::new()), limit).expect("a batch message");
    let mut frames = Vec::new();
    for mut result in results {
        let pushed = match batch.push(&result) {
            Err(CodecError::ItemTooLarge { size, .. }) => {
                result.outcome = Err(TaskError::ResultTooLarge {
                    size: size as u64,
                    limit: max_item_bytes(limit) as u64,
                });
                batch.push(&result)
            }
            other => other,
        };
        match pushed {
            Ok(full) => frames.extend(full),
            Err(e) => tracing::error!("cannot pack a result: {e}"),
        }
    }
    frames.extend(batch.finish());
    frames
}
