//! The client table: hello, submissions (and `Busy` while the interchange holds as many task
//! bytes as it may), cancels, the command channel, goodbye, and the results that wait for the
//! next flush, packed into frames under the client's frame limit.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use htex_protocol::{
    decode, max_item_bytes, BatchEncoder, ClientHello, ClientReply, ClientRequest, CodecError,
    Command, CommandReply, StatusReport, TaskError, TaskId, TaskResult, TaskSpec, PROTOCOL_VERSION,
};

use super::managers::hex;
use super::{link_limit, version_mismatch, BadFrame, Core, Effects, Incoming, Now, Side};
use crate::journal::IdentityNumber;
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
    /// Its identity's number in the journal: only journaled clients have one.
    /// Whether the event stream has been told its name.
    pub announced: bool,
    pub identity: Option<IdentityNumber>,
    /// The highest task id taken from it: a re-sent task up to it is a duplicate.
    pub accepted_upto: TaskId,
    /// Connected. A client restored from the journal is not until it says hello; its results
    /// wait for it.
    pub online: bool,
    /// Results frames sent to a journaled client that it has not confirmed (`Received`), kept
    /// to send again if it reconnects.
    sent: VecDeque<SentFrame>,
    /// Results sent on its current connection.
    sent_total: u64,
    /// Results for the next flush, with their tasks' global ids (0: a task answered before it
    /// had one).
    outbox: Vec<(GlobalId, TaskResult)>,
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

/// A results frame sent and not yet confirmed.
struct SentFrame {
    /// The results sent on the connection up to and including this frame's.
    upto: u64,
    gids: Vec<GlobalId>,
    frame: Vec<u8>,
}

impl ClientRecord {
    fn new(peer: Bytes, name: String, max_frame_bytes: usize) -> ClientRecord {
        ClientRecord {
            peer,
            name,
            tasks: IdMap::default(),
            departed: false,
            max_frame_bytes,
            identity: None,
            announced: false,
            accepted_upto: 0,
            online: true,
            sent: VecDeque::new(),
            sent_total: 0,
            outbox: Vec::new(),
            paused: false,
            unacked: None,
            unacked_bytes: 0,
        }
    }

    /// Results not confirmed by the client, sent or not, with their global ids.
    pub fn unconfirmed_results(&self) -> Vec<(GlobalId, TaskResult)> {
        let mut all = Vec::new();
        for sent in &self.sent {
            if let Ok(ClientReply::Results(results)) =
                decode::<ClientReply>(&sent.frame, usize::MAX)
            {
                all.extend(sent.gids.iter().copied().zip(results));
            }
        }
        all.extend(self.outbox.iter().cloned());
        all.retain(|(gid, _)| *gid != 0);
        all
    }
}
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

    /// Peers of clients that are connected and have not said goodbye.
    pub fn connected_peers(&self) -> Vec<Bytes> {
        self.records
            .values()
            .filter(|c| !c.departed && c.online)
            .map(|c| c.peer.clone())
            .collect()
    }

    /// A client restored from the journal, not connected yet.
    pub fn add_offline(
        &mut self,
        name: String,
        identity: IdentityNumber,
        accepted_upto: TaskId,
    ) -> ClientKey {
        self.next += 1;
        let key = self.next;
        let mut record = ClientRecord::new(Bytes::new(), name, htex_protocol::MIN_MAX_FRAME_BYTES);
        record.identity = Some(identity);
        record.accepted_upto = accepted_upto;
        record.online = false;
        self.records.insert(key, record);
        key
    }

    /// A result restored from the journal, for the client's next connection.
    pub fn hold_result(&mut self, key: ClientKey, gid: GlobalId, result: TaskResult) {
        if let Some(record) = self.records.get_mut(&key) {
            record.outbox.push((gid, result));
        }
    }

    /// Bytes of results kept for clients (sent and unconfirmed, or waiting).
    pub fn retained_bytes(&self) -> u64 {
        self.records
            .values()
            .map(|c| {
                c.sent.iter().map(|f| f.frame.len() as u64).sum::<u64>()
                    + c.outbox.len() as u64 * 64
            })
            .sum()
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
            ClientRequest::Received { results } => self.on_received(key, results),
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
                self.deliver(key, 0, TaskResult::error(id, error));
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
        if self.journal.is_some() && !hello.identity.is_empty() {
            return self.on_journaled_hello(peer, hello, limit, out);
        }
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
                client.announced = false;
                client.departed = false;
                client.max_frame_bytes = limit;
            }
            None => {
                clients.next += 1;
                let key = clients.next;
                clients.keys.insert(peer.clone(), key);
                let record = ClientRecord::new(peer.clone(), hello.name, limit);
                clients.records.insert(key, record);
            }
        }
        self.welcome(&peer, false, 0, out);
    }

    fn welcome(&self, peer: &Bytes, journal: bool, accepted_upto: TaskId, out: &mut Effects) {
        let welcome = ClientReply::Welcome {
            protocol_version: PROTOCOL_VERSION,
            interchange: format!("htex {}", env!("CARGO_PKG_VERSION")),
            max_frame_bytes: self.config.max_frame_bytes as u64,
            journal,
            accepted_upto,
        };
        out.send(Side::Client, peer, &welcome);
    }

    /// A hello naming an identity, with a journal: the client's record (from before a
    /// reconnection or a restart) is bound to this connection, and every result it has not
    /// confirmed is sent again, in order; a new identity gets a new record.
    fn on_journaled_hello(
        &mut self,
        peer: Bytes,
        hello: ClientHello,
        limit: usize,
        out: &mut Effects,
    ) {
        let key = match self.identity_of(&hello.identity) {
            Some((_, key)) if self.clients.records.contains_key(&key) => key,
            _ => {
                if let Some(&old) = self.clients.keys.get(&peer) {
                    // This connection was another client: that one is gone with it.
                    self.clients.forget(old);
                }
                self.clients.next += 1;
                let key = self.clients.next;
                let mut record = ClientRecord::new(peer.clone(), hello.name.clone(), limit);
                let number = self.name_identity(&hello.identity, key);
                record.identity = Some(number);
                self.clients.records.insert(key, record);
                self.clients.keys.insert(peer.clone(), key);
                self.welcome(&peer, true, 0, out);
                return;
            }
        };
        let clients = &mut self.clients;
        let record = clients.records.get_mut(&key).expect("checked above");
        if record.peer != peer {
            let old = std::mem::replace(&mut record.peer, peer.clone());
            if clients.keys.get(&old) == Some(&key) {
                clients.keys.remove(&old);
            }
            clients.keys.insert(peer.clone(), key);
        }
        record.name = hello.name;
        record.announced = false;
        record.departed = false;
        record.online = true;
        record.max_frame_bytes = limit;
        record.unacked = None;
        record.unacked_bytes = 0;
        let accepted_upto = record.accepted_upto;
        tracing::info!(client = %record.name, outstanding = record.tasks.len(), unconfirmed = record.sent.len(), "client came back");
        self.welcome(&peer, true, accepted_upto, out);
        let record = self.clients.records.get_mut(&key).expect("checked above");
        record.sent_total = 0;
        for sent in record.sent.iter_mut() {
            record.sent_total += sent.gids.len() as u64;
            sent.upto = record.sent_total;
            out.frame(Side::Client, &peer, sent.frame.clone());
        }
        if !record.outbox.is_empty() {
            self.clients.dirty.push(key);
        }
        if record.paused {
            record.paused = false;
            out.send(Side::Client, &peer, &ClientReply::Resume);
        }
    }

    /// The client has the first `results` results of its connection: they are forgotten.
    fn on_received(&mut self, key: ClientKey, results: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let mut gids = Vec::new();
        while client.sent.front().is_some_and(|f| f.upto <= results) {
            let frame = client.sent.pop_front().expect("checked");
            gids.extend(frame.gids.into_iter().filter(|g| *g != 0));
        }
        self.journal_forget(gids);
    }

    /// Accepts a batch of tasks, answering the invalid ones at once; while the interchange holds
    /// its cap of task bytes, the whole batch is refused with `Busy` (nothing is lost: the client
    /// sends it again after `Resume`).
    fn on_submit(&mut self, key: ClientKey, specs: Vec<TaskSpec>, now: Now, out: &mut Effects) {
        if self.refuse_while_busy(key, &specs, out) {
            return;
        }
        if let Some(number) = self.journaled(key) {
            return self.on_journaled_submit(key, number, specs, now, out);
        }
        let Some(first) = specs.first().map(|s| s.id) else {
            return;
        };
        let before = self.task_bytes;
        for spec in specs {
            let id = spec.id;
            if let Err(error) = self.accept(key, spec, now, false) {
                self.deliver(key, 0, TaskResult::error(id, error));
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

    /// A journaled client's frame: tasks it sent before (up to what was taken from it) are
    /// skipped, the others held until their records are durable, and the frame acknowledged
    /// then. While the journal cannot be written, every task is answered `NotAccepted`.
    fn on_journaled_submit(
        &mut self,
        key: ClientKey,
        number: IdentityNumber,
        specs: Vec<TaskSpec>,
        now: Now,
        out: &mut Effects,
    ) {
        let Some(first) = specs.first().map(|s| s.id) else {
            return;
        };
        if let Some(reason) = self.journal_failing() {
            for spec in specs {
                let error = TaskError::NotAccepted {
                    reason: reason.clone(),
                };
                self.deliver(key, 0, TaskResult::error(spec.id, error));
            }
            let peer = self.clients.get(key).expect("checked").peer.clone();
            out.send(Side::Client, &peer, &ClientReply::Accepted { first });
            return;
        }
        let mut upto = self.clients.get(key).expect("checked").accepted_upto;
        let (mut gids, mut answered) = (Vec::new(), Vec::new());
        for spec in specs {
            let id = spec.id;
            if id <= upto {
                continue;
            }
            upto = id;
            match self.accept(key, spec, now, true) {
                Ok(gid) => gids.push(gid),
                Err(error) => {
                    // Answered at once, and journaled as answered, so that it stays answered.
                    let gid = self.tasks.next_id();
                    self.tasks.skip_to(gid + 1);
                    answered.push((gid, id));
                    self.deliver(key, gid, TaskResult::error(id, error));
                }
            }
        }
        self.clients.get_mut(key).expect("checked").accepted_upto = upto;
        self.journal_submitted(key, number, first, gids, answered);
    }

    /// While the interchange holds as many task bytes as it may (or the client waits for
    /// `Resume`), a frame is refused whole with `Busy`; returns whether it was.
    fn refuse_while_busy(&mut self, key: ClientKey, specs: &[TaskSpec], out: &mut Effects) -> bool {
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
            return true;
        }
        false
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
        let Some(mut client) = self.clients.forget(key) else {
            return;
        };
        tracing::warn!(client = %client.name, tasks = client.tasks.len(), "client dropped: {why}");
        for gid in std::mem::take(&mut client.tasks).into_values() {
            self.cancel(gid, "the client was dropped");
        }
        self.forget_identity(key, client);
    }

    /// A journaled client is gone for good (it left, or was dropped): the journal forgets
    /// every result kept for it, and its identity.
    fn forget_identity(&mut self, key: ClientKey, record: ClientRecord) {
        if record.identity.is_none() {
            return;
        }
        let mut gids: Vec<GlobalId> = record.sent.into_iter().flat_map(|f| f.gids).collect();
        gids.extend(record.outbox.iter().map(|(gid, _)| *gid));
        gids.retain(|g| *g != 0);
        self.journal_forget(gids);
        self.drop_identity(key);
    }

    /// Queues a result for its client's next flush (dropped if the client is gone), and
    /// journals it for a journaled client.
    pub(super) fn deliver(&mut self, key: ClientKey, gid: GlobalId, result: TaskResult) {
        let clients = &mut self.clients;
        let Some(client) = clients.records.get_mut(&key) else {
            // Nobody waits for it: the journal forgets the task.
            if gid != 0 {
                self.journal_forget(vec![gid]);
            }
            return;
        };
        if client.outbox.is_empty() {
            clients.dirty.push(key);
        }
        if client.identity.is_none() || gid == 0 {
            client.outbox.push((gid, result));
            return;
        }
        let journaled = result.clone();
        client.outbox.push((gid, result));
        self.journal_result(gid, journaled);
    }

    /// Sends waiting results, packed under each client's frame limit; a result too large to
    /// travel alone is replaced by `ResultTooLarge`. Departed clients with nothing outstanding
    /// are forgotten.
    pub(super) fn flush_results(&mut self, out: &mut Effects) {
        for key in std::mem::take(&mut self.clients.dirty) {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            if !client.online {
                // Restored and not back yet: its results wait (its hello marks it dirty).
                continue;
            }
            let results = std::mem::take(&mut client.outbox);
            let keep = client.identity.is_some();
            if !results.is_empty() {
                for (frame, gids) in pack_results(results, client.max_frame_bytes, keep) {
                    if keep {
                        client.sent_total += gids.len() as u64;
                        client.sent.push_back(SentFrame {
                            upto: client.sent_total,
                            gids,
                            frame: frame.clone(),
                        });
                    }
                    out.frame(Side::Client, &client.peer, frame);
                }
            }
            if client.departed && client.tasks.is_empty() {
                if let Some(record) = self.clients.forget(key) {
                    self.forget_identity(key, record);
                }
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
            submitted_total: self.totals.submitted,
            completed_total: self.totals.completed,
            failed_total: self.totals.failed,
        }
    }
}

/// Packs results into `Results` frames of at most `limit` bytes, each with its results' global
/// ids when `with_gids` (for a client whose frames are kept until it confirms them).
fn pack_results(
    results: Vec<(GlobalId, TaskResult)>,
    limit: usize,
    with_gids: bool,
) -> Vec<(Vec<u8>, Vec<GlobalId>)> {
    let mut batch =
        BatchEncoder::new(&ClientReply::Results(Vec::new()), limit).expect("a batch message");
    let mut frames = Vec::new();
    let mut gids = Vec::new();
    for (gid, mut result) in results {
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
            Ok(Some(full)) => {
                // The frame of the results before this one; this one starts the next.
                let next = if with_gids { vec![gid] } else { Vec::new() };
                frames.push((full, std::mem::replace(&mut gids, next)));
            }
            Ok(None) if with_gids => gids.push(gid),
            Ok(None) => {}
            Err(e) => tracing::error!("cannot pack a result: {e}"),
        }
    }
    if let Some(last) = batch.finish() {
        frames.push((last, gids));
    }
    frames
}
