//! The manager table: registration (and coming back on a new connection), results, drain and
//! hold, loss. Each record knows its slots and which slot every constrained task it holds has
//! reserved, so the interchange never sends a manager more GPU (or other constrained) tasks than
//! it has distinct slots to run them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use htex_protocol::{
    Command, CommandReply, InterchangeMessage, ManagerMessage, ManagerState, ManagerStatus,
    Registration, ResourceRequest, TaskError, TaskId, PROTOCOL_VERSION,
};

use htex_monitoring::event::Registered;
use htex_monitoring::Event;

use super::{link_limit, version_mismatch, BadFrame, Core, Effects, Incoming, Now, Side};
use crate::records::{GlobalId, IdMap, IdSet, ManagerKey, TaskState};

/// A registered manager.
pub(crate) struct ManagerRecord {
    pub peer: Bytes,
    pub registration: Registration,
    pub state: ManagerState,
    pub last_seen: Instant,
    /// The last time it was sent a task or sent a result: with no task held, it has been idle
    /// since.
    pub last_busy: Instant,
    /// Tasks it holds, running or prefetched.
    pub tasks: IdSet,
    /// The frame limit of the link to it (the smaller of both ends').
    pub max_frame_bytes: usize,
    /// Its slots from least to most capable: reservations take the first that fits.
    by_capability: Vec<usize>,
    /// The task each slot is reserved for, if any.
    reserved: Vec<Option<GlobalId>>,
    /// The slot each constrained task it holds reserved.
    reservations: IdMap<usize>,
    /// Bytes of the encoded specs of the tasks it holds.
    pub held_bytes: usize,
    /// Results received from this registration (what `Stored` counts).
    pub results_received: u64,
    /// Its last report (slot states, GPU samples), for `htex status`.
    pub last_report: Option<Box<htex_protocol::ManagerReport>>,
}

impl ManagerRecord {
    fn new(peer: Bytes, registration: Registration, max_frame_bytes: usize, now: Instant) -> Self {
        let slots = &registration.slots;
        let mut by_capability: Vec<usize> = (0..slots.len()).collect();
        by_capability.sort_by_key(|&i| slots[i].capability());
        ManagerRecord {
            peer,
            reserved: vec![None; slots.len()],
            registration,
            state: ManagerState::Active,
            last_seen: now,
            last_busy: now,
            tasks: IdSet::default(),
            max_frame_bytes,
            by_capability,
            reservations: IdMap::default(),
            held_bytes: 0,
            results_received: 0,
            last_report: None,
        }
    }

    pub fn capacity(&self) -> usize {
        self.registration.slots.len() + self.registration.prefetch as usize
    }

    /// How many more tasks it may be sent now.
    pub fn free(&self) -> usize {
        match self.state {
            ManagerState::Active => self.capacity().saturating_sub(self.tasks.len()),
            ManagerState::Held | ManagerState::Draining => 0,
        }
    }

    /// Whether any of its slots could run a task with these needs.
    pub fn could_run(&self, request: &ResourceRequest) -> bool {
        request.is_any() || self.registration.slots.iter().any(|s| s.satisfies(request))
    }

    /// The least capable slot that fits `request` and is not reserved; `None` for a request
    /// that asks for nothing (it needs no reservation) or when every fitting slot is taken.
    fn free_slot_for(&self, request: &ResourceRequest) -> Option<usize> {
        self.by_capability
            .iter()
            .copied()
            .find(|&i| self.reserved[i].is_none() && self.registration.slots[i].satisfies(request))
    }

    /// Whether a task with these needs would find a slot of its own: tasks that ask for
    /// nothing fit any free capacity, others need an unreserved fitting slot.
    pub fn has_room_for(&self, request: &ResourceRequest) -> bool {
        request.is_any() || self.free_slot_for(request).is_some()
    }

    /// Whether a task of `bytes` fits the bytes it may hold (`window`): always the first.
    pub fn has_window_for(&self, bytes: usize, window: usize) -> bool {
        self.held_bytes == 0 || self.held_bytes + bytes <= window
    }

    /// Records that a task was sent to it, reserving a slot for a constrained one.
    pub fn take(&mut self, gid: GlobalId, request: &ResourceRequest, bytes: usize) {
        if !self.tasks.insert(gid) {
            return;
        }
        self.held_bytes += bytes;
        if !request.is_any() {
            if let Some(slot) = self.free_slot_for(request) {
                self.reserved[slot] = Some(gid);
                self.reservations.insert(gid, slot);
            }
        }
    }

    /// Records that it no longer holds a task.
    pub fn release(&mut self, gid: GlobalId, bytes: usize) {
        if self.tasks.remove(&gid) {
            self.held_bytes -= bytes;
            if let Some(slot) = self.reservations.remove(&gid) {
                self.reserved[slot] = None;
            }
        }
    }

    pub fn status(&self, now: Instant) -> ManagerStatus {
        let r = &self.registration;
        ManagerStatus {
            id: r.manager_id.clone(),
            hostname: r.hostname.clone(),
            block_id: r.block_id.clone(),
            version: r.version.clone(),
            state: self.state,
            slots: r.slots.clone(),
            tasks: self.tasks.len() as u32,
            capacity: self.capacity() as u32,
            last_heartbeat_ms_ago: now.saturating_duration_since(self.last_seen).as_millis() as u64,
            report: self.last_report.clone(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Managers {
    records: BTreeMap<ManagerKey, ManagerRecord>,
    keys: HashMap<Bytes, ManagerKey>,
    next: ManagerKey,
    /// Round-robin position over managers, so that batches spread evenly.
    pub cursor: usize,
}

impl Managers {
    pub fn get(&self, key: ManagerKey) -> Option<&ManagerRecord> {
        self.records.get(&key)
    }

    pub fn get_mut(&mut self, key: ManagerKey) -> Option<&mut ManagerRecord> {
        self.records.get_mut(&key)
    }

    pub fn key_of(&self, peer: &Bytes) -> Option<ManagerKey> {
        self.keys.get(peer).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ManagerKey, &ManagerRecord)> {
        self.records.iter()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn peers(&self) -> Vec<Bytes> {
        self.records.values().map(|m| m.peer.clone()).collect()
    }

    /// Managers not heard from for over `threshold`.
    pub fn silent(&self, now: Instant, threshold: Duration) -> Vec<ManagerKey> {
        self.records
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > threshold)
            .map(|(&k, _)| k)
            .collect()
    }

    fn by_id(&self, manager_id: &str) -> Option<ManagerKey> {
        self.records
            .iter()
            .find(|(_, m)| m.registration.manager_id == manager_id)
            .map(|(&k, _)| k)
    }

    fn insert(&mut self, record: ManagerRecord) -> ManagerKey {
        self.next += 1;
        let key = self.next;
        self.keys.insert(record.peer.clone(), key);
        self.records.insert(key, record);
        key
    }

    fn remove(&mut self, key: ManagerKey) -> Option<ManagerRecord> {
        let record = self.records.remove(&key)?;
        if self.keys.get(&record.peer) == Some(&key) {
            self.keys.remove(&record.peer);
        }
        Some(record)
    }
}

impl Core {
    pub(super) fn on_manager(
        &mut self,
        now: Now,
        peer: Bytes,
        message: Incoming<ManagerMessage>,
        out: &mut Effects,
    ) {
        let message = match message {
            Ok(message) => message,
            Err(bad) => return self.on_bad_manager_frame(peer, bad, out),
        };
        if let ManagerMessage::Register(registration) = message {
            return self.on_register(now, peer, registration, out);
        }
        let Some(key) = self.managers.key_of(&peer) else {
            // A manager declared lost (a network blip, a pause) or known to an earlier
            // interchange: it registers again, and its late results count only if still wanted.
            tracing::info!(
                "message from an unknown manager {}: asking it to register",
                hex(&peer)
            );
            out.send(Side::Manager, &peer, &InterchangeMessage::RegisterAgain);
            return;
        };
        if let Some(record) = self.managers.get_mut(key) {
            record.last_seen = now.at;
        }
        match message {
            ManagerMessage::Register(_) => unreachable!("handled above"),
            ManagerMessage::Results(results) => {
                let count = results.len() as u64;
                for result in results {
                    self.complete(key, result);
                }
                if let Some(record) = self.managers.get_mut(key) {
                    record.last_busy = now.at;
                    record.results_received += count;
                    let upto = record.results_received;
                    self.journal_stored(key, upto);
                }
            }
            ManagerMessage::Heartbeat => {}
            ManagerMessage::Report(report) => {
                if self.events.is_some() {
                    let report = report.clone();
                    self.event(|| Event::ManagerReport {
                        manager: key,
                        report,
                    });
                }
                if let Some(record) = self.managers.get_mut(key) {
                    // `htex status` shows slot states and samples; the events went out above.
                    let mut report = report;
                    report.slot_events.clear();
                    record.last_report = Some(report);
                }
            }
            ManagerMessage::Goodbye => self.end_manager(key, "it said goodbye", true, false),
            ManagerMessage::Draining { returned } => self.on_draining(key, returned),
        }
    }

    /// A frame from a manager that could not be decoded: a registration from another protocol
    /// version is refused; an oversize result batch ends the tasks it carried.
    fn on_bad_manager_frame(&mut self, peer: Bytes, bad: BadFrame, out: &mut Effects) {
        if let Some(v) = bad.claimed_version.filter(|v| *v != PROTOCOL_VERSION) {
            let reason = version_mismatch("manager", v);
            tracing::warn!("refusing manager {}: {reason}", hex(&peer));
            out.send(
                Side::Manager,
                &peer,
                &InterchangeMessage::Refused { reason },
            );
            return;
        }
        tracing::warn!(
            "dropping a bad frame from manager {}: {}",
            hex(&peer),
            bad.reason
        );
        let (Some((size, ids)), Some(key)) = (bad.oversize, self.managers.key_of(&peer)) else {
            return;
        };
        let limit = self.config.max_frame_bytes as u64;
        for gid in ids {
            let on_it = self.tasks.get(&gid).map(|t| t.state)
                == Some(TaskState::Dispatched { manager: key });
            if on_it {
                self.finish(
                    gid,
                    TaskError::ResultTooLarge {
                        size: size as u64,
                        limit,
                    },
                );
            }
        }
    }

    fn on_register(
        &mut self,
        now: Now,
        peer: Bytes,
        mut registration: Registration,
        out: &mut Effects,
    ) {
        if registration.protocol_version != PROTOCOL_VERSION {
            let reason = version_mismatch("manager", registration.protocol_version);
            tracing::warn!(manager = %registration.manager_id, "{reason}");
            out.send(
                Side::Manager,
                &peer,
                &InterchangeMessage::Refused { reason },
            );
            return;
        }
        let previous = self.managers.by_id(&registration.manager_id);
        if let Some(old) = previous.and_then(|k| self.managers.get(k)) {
            let same = old.registration.instance == registration.instance;
            let alive =
                now.at.saturating_duration_since(old.last_seen) <= self.config.heartbeat_threshold;
            if !same && alive {
                let reason = format!(
                    "manager id `{}` is taken by a live manager (host {}, pid {}, heard from {} ms \
                     ago); give each manager its own --manager-id",
                    registration.manager_id,
                    old.registration.hostname,
                    old.registration.pid,
                    now.at.saturating_duration_since(old.last_seen).as_millis()
                );
                tracing::warn!(manager = %registration.manager_id, host = %registration.hostname, "refused: {reason}");
                out.send(
                    Side::Manager,
                    &peer,
                    &InterchangeMessage::Refused { reason },
                );
                return;
            }
        }
        // Another manager's record on this very connection is gone with it.
        if let Some(stale) = self.managers.key_of(&peer).filter(|k| Some(*k) != previous) {
            self.lose_manager(stale, "its connection registered another manager");
        }
        let held = std::mem::take(&mut registration.held);
        let limit = link_limit(self.config.max_frame_bytes, registration.max_frame_bytes);
        tracing::info!(
            manager = %registration.manager_id,
            host = %registration.hostname,
            slots = registration.slots.len(),
            resumed = previous.is_some(),
            "manager registered"
        );
        let mut record = ManagerRecord::new(peer.clone(), registration, limit, now.at);
        let old = previous.and_then(|k| self.managers.remove(k).map(|m| (k, m)));
        if let Some((_, old)) = &old {
            record.state = old.state;
        }
        let key = self.managers.insert(record);
        if let Some((old_key, _)) = &old {
            let (old_key, at_us) = (*old_key, now.epoch_us);
            self.event(|| Event::ManagerEnded {
                manager: old_key,
                at_us,
                lost: false,
                reason: "it registered again".into(),
            });
        }
        if self.events.is_some() {
            let r = &self.managers.get(key).expect("inserted").registration;
            let registered = Registered {
                manager: key,
                manager_id: r.manager_id.clone(),
                hostname: r.hostname.clone(),
                block_id: r.block_id.clone(),
                pid: r.pid,
                slots: r.slots.clone(),
                at_us: now.epoch_us,
            };
            self.event(|| Event::ManagerRegistered(Box::new(registered)));
        }
        let orphaned = self.adopt(key, old, &held);
        if !orphaned.is_empty() {
            tracing::info!(
                manager = key,
                orphaned = orphaned.len(),
                "the manager drops tasks no longer expected of it"
            );
        }
        let welcome = InterchangeMessage::Registered {
            heartbeat_period_ms: self.config.heartbeat_period.as_millis() as u64,
            heartbeat_threshold_ms: self.config.heartbeat_threshold.as_millis() as u64,
            max_frame_bytes: self.config.max_frame_bytes as u64,
            orphaned,
            stores_results: self.journal.is_some(),
            // Reports feed `htex status` too: one small frame a heartbeat period.
            wants_reports: true,
        };
        out.send(Side::Manager, &peer, &welcome);
        if previous.is_none() {
            self.block_manager_registered(now, key, out);
        }
        // Parked classes get another look now that new slots exist.
        self.classes.unpark_all();
    }

    /// A manager registered again (same id and instance, or a stale record of its id): the tasks
    /// it still holds stay with it where the interchange still expects them of it (dispatched to
    /// its old record, or queued again after it was declared lost and not sent elsewhere yet),
    /// and so do their results; tasks the old record held that it does not hold are queued again
    /// (they never reached it). Returns the held tasks it must drop.
    fn adopt(
        &mut self,
        key: ManagerKey,
        old: Option<(ManagerKey, ManagerRecord)>,
        held: &[TaskId],
    ) -> Vec<TaskId> {
        let same_instance = old
            .as_ref()
            .zip(self.managers.get(key))
            .is_some_and(|((_, o), n)| o.registration.instance == n.registration.instance);
        let old_key = old.as_ref().map(|(k, _)| *k);
        let mut orphaned = Vec::new();
        let mut kept = IdSet::default();
        for &gid in held {
            let state = self.tasks.get(&gid).map(|t| (t.state, t.class));
            let keep = match state {
                Some((TaskState::Dispatched { manager }, _)) => {
                    same_instance && Some(manager) == old_key
                }
                // Declared lost and queued again, but not sent anywhere yet: it runs on where
                // it is, and the loss did not happen.
                Some((TaskState::Queued, _)) => {
                    let record = self.tasks.get_mut(&gid).expect("looked up above");
                    record.losses = record.losses.saturating_sub(1);
                    self.queued -= 1;
                    true
                }
                // Restored from the journal, waiting for the manager that holds it: this one.
                Some((TaskState::Held, _)) => self.is_restored(gid),
                None => false,
            };
            if keep {
                let (previous, class) = state.expect("kept tasks exist");
                let request = self.classes.get(class).request.clone();
                let record = self.tasks.get_mut(&gid).expect("looked up above");
                if !matches!(previous, TaskState::Dispatched { .. }) {
                    // Queued after a loss, or restored: from here on it is a new attempt (the
                    // event stream has ended the one before).
                    record.dispatches = record.dispatches.saturating_add(1);
                    record.dispatched_us = self.event_us;
                }
                record.state = TaskState::Dispatched { manager: key };
                let bytes = record.bytes();
                self.managers
                    .get_mut(key)
                    .expect("inserted")
                    .take(gid, &request, bytes);
            }
            if keep {
                kept.insert(gid);
            } else {
                orphaned.push(gid);
            }
        }
        if let Some((old_key, old)) = old {
            let name = old.registration.manager_id.clone();
            for gid in old.tasks {
                if kept.contains(&gid) {
                    continue;
                }
                let on_old = self.tasks.get(&gid).map(|t| t.state)
                    == Some(TaskState::Dispatched { manager: old_key });
                if on_old {
                    // The old record is gone (`requeue` releases nothing): requeue as if from
                    // it, counting a loss only when another instance took over (the old one may
                    // have run it).
                    self.requeue(gid, (!same_instance).then_some(name.as_str()));
                }
            }
        }
        orphaned
    }

    /// A manager stops taking tasks; those it gives back are queued again, with no loss counted.
    fn on_draining(&mut self, key: ManagerKey, returned: Vec<GlobalId>) {
        let Some(manager) = self.managers.get_mut(key) else {
            return;
        };
        manager.state = ManagerState::Draining;
        tracing::info!(manager = %manager.registration.manager_id, returned = returned.len(), "manager draining");
        let at_us = self.event_us;
        self.event(|| Event::ManagerDraining {
            manager: key,
            at_us,
        });
        for gid in returned {
            if self.tasks.get(&gid).map(|t| t.state) == Some(TaskState::Dispatched { manager: key })
            {
                self.requeue(gid, None);
            }
        }
    }

    /// Drops a manager; each task it held is queued again or, past its retries, `ManagerLost`.
    pub(super) fn lose_manager(&mut self, key: ManagerKey, why: &str) {
        self.lose_manager_charged(key, why, true);
    }

    /// Loses a manager; its tasks go back to the queue, each loss counted against the task's
    /// retries when `charge` (not when its block ended by walltime or was released by htex).
    pub(super) fn lose_manager_charged(&mut self, key: ManagerKey, why: &str, charge: bool) {
        self.end_manager(key, why, charge, charge);
    }

    /// Ends a manager's registration, its tasks queued again (`charge`: as losses); the event
    /// stream records it as `lost`, or as gone when it left or its block ended as planned.
    fn end_manager(&mut self, key: ManagerKey, why: &str, charge: bool, lost: bool) {
        let Some(record) = self.managers.get(key) else {
            return;
        };
        let name = record.registration.manager_id.clone();
        let held: Vec<GlobalId> = record.tasks.iter().copied().collect();
        if held.is_empty() {
            tracing::info!(manager = %name, "manager left: {why}");
        } else {
            tracing::warn!(manager = %name, tasks = held.len(), "manager lost: {why}");
        }
        for gid in held {
            self.requeue(gid, charge.then_some(name.as_str()));
        }
        self.managers.remove(key);
        self.cancels.remove(&key);
        let at_us = self.event_us;
        self.event(|| Event::ManagerEnded {
            manager: key,
            at_us,
            lost,
            reason: why.to_string(),
        });
    }

    /// The command channel's manager commands.
    pub(super) fn manager_command(&mut self, command: Command, out: &mut Effects) -> CommandReply {
        let target = match &command {
            Command::Drain { manager }
            | Command::Hold { manager }
            | Command::Release { manager } => manager.clone(),
            Command::Status | Command::Shutdown | Command::ResumeScaling => {
                unreachable!("not a manager command")
            }
        };
        let Some(key) = self.managers.by_id(&target) else {
            let known: Vec<_> = self
                .managers
                .iter()
                .map(|(_, m)| m.registration.manager_id.as_str())
                .collect();
            let message = format!("no manager `{target}`; connected: [{}]", known.join(", "));
            return CommandReply::Error { message };
        };
        let record = self.managers.get_mut(key).expect("found above");
        match (command, record.state) {
            (Command::Drain { .. }, _) => {
                record.state = ManagerState::Draining;
                out.send(Side::Manager, &record.peer, &InterchangeMessage::Drain);
            }
            (Command::Hold { .. }, ManagerState::Active) => record.state = ManagerState::Held,
            (Command::Release { .. }, ManagerState::Held) => record.state = ManagerState::Active,
            (_, state) => {
                let message = format!("manager `{target}` is {state}");
                return CommandReply::Error { message };
            }
        }
        CommandReply::Done
    }
}

/// A peer identity for logs.
pub(crate) fn hex(peer: &[u8]) -> String {
    peer.iter().map(|b| format!("{b:02x}")).collect()
}
