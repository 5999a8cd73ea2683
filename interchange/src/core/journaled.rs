//! The core's side of the journal (`--journal`): what it records, what waits until its records
//! are durable, restoring from a journal at start, and compaction.
//!
//! Every burst of inputs ends with one batch of records (`flush_journal`), numbered in order.
//! What depends on a batch being on disk waits in `pending` until the writer says so: the
//! tasks of a `Submit` frame are neither queued nor acknowledged before their records are
//! durable (so a task acknowledged, or run, is one the journal has), and a manager is told
//! `Stored` for its results only once they are. A batch that cannot be written fails the tasks
//! it carried (`NotAccepted`: nothing was acknowledged) and is written again for the rest;
//! until a write works, new submissions are refused the same way.
//!
//! Only clients that name an identity are journaled (the Rust client always does): the
//! journal knows a task by its client's identity and its id, which is how a client that
//! reconnects after a restart finds its tasks, and how its re-sent submissions are recognised.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use htex_protocol::{
    decode, ClientReply, EncodedTask, InterchangeMessage, TaskError, TaskId, TaskResult, TaskSpec,
};

use super::{Core, Effect, Effects, Now, Side};
use crate::journal::{Batch, IdentityNumber, JournalEvent, JournalTask, Record, Restored};
use crate::records::{ClientKey, GlobalId, IdSet, ManagerKey, TaskState};

/// Past this many bytes, a journal over `COMPACT_FACTOR` times the live state is compacted.
const COMPACT_MIN_BYTES: u64 = 64 << 20;
const COMPACT_FACTOR: u64 = 4;
/// What a task or result costs the journal beyond its bytes (ids, framing), for the estimate.
const RECORD_OVERHEAD: u64 = 48;

/// What a batch releases once durable.
enum Release {
    /// The tasks of a `Submit` frame: queued, and the client told `Accepted`.
    Submitted {
        client: ClientKey,
        first: TaskId,
        gids: Vec<GlobalId>,
    },
    /// A manager's results up to its `upto`-th: it is told `Stored`.
    Stored { manager: ManagerKey, upto: u64 },
}

struct Pending {
    seq: u64,
    /// The records to write again if the batch fails (all but the tasks, which fail instead).
    retry: Vec<Record>,
    releases: Vec<Release>,
}

pub(crate) struct JournalState {
    /// The journal's path, for messages.
    path: String,
    seq: u64,
    /// Records and releases of the burst under way; its results go last, in one record.
    records: Vec<Record>,
    results: Vec<(GlobalId, TaskResult)>,
    releases: Vec<Release>,
    pending: VecDeque<Pending>,
    /// Identities by name, and the client record of each.
    identities: HashMap<String, (IdentityNumber, ClientKey)>,
    next_identity: IdentityNumber,
    /// Why the journal cannot be written, since its last failure.
    failing: Option<String>,
    file_bytes: u64,
    /// A snapshot is on its way to the writer: the batch that carries it.
    compacting: Option<u64>,
    /// Restored tasks that wait for their managers to register again, until `restore_until`.
    restored: IdSet,
    restore_until: Option<Instant>,
}

impl JournalState {
    pub fn new(path: &std::path::Path) -> JournalState {
        JournalState {
            path: path.display().to_string(),
            seq: 0,
            records: Vec::new(),
            results: Vec::new(),
            releases: Vec::new(),
            pending: VecDeque::new(),
            identities: HashMap::new(),
            next_identity: 0,
            failing: None,
            file_bytes: 0,
            compacting: None,
            restored: IdSet::default(),
            restore_until: None,
        }
    }
}

impl Core {
    fn journal_mut(&mut self) -> Option<&mut JournalState> {
        self.journal.as_deref_mut()
    }

    /// The journal's number for a client, if it is journaled.
    pub(super) fn journaled(&self, client: ClientKey) -> Option<IdentityNumber> {
        self.journal.as_ref()?;
        self.clients.get(client)?.identity
    }

    /// Binds a hello's identity to its client record: the record it had (across a
    /// reconnection or a restart), or a new one. Returns the key to use.
    pub(super) fn identity_of(&mut self, identity: &str) -> Option<(IdentityNumber, ClientKey)> {
        self.journal.as_ref()?.identities.get(identity).copied()
    }

    /// Names a new identity (its first hello).
    pub(super) fn name_identity(&mut self, identity: &str, key: ClientKey) -> IdentityNumber {
        let journal = self.journal_mut().expect("journaled");
        let number = journal.next_identity;
        journal.next_identity += 1;
        journal
            .identities
            .insert(identity.to_string(), (number, key));
        journal.records.push(Record::Client {
            number,
            identity: identity.to_string(),
            accepted_upto: 0,
        });
        number
    }

    /// Why submissions are refused now, if the journal is failing.
    pub(super) fn journal_failing(&self) -> Option<String> {
        let journal = self.journal.as_ref()?;
        journal.failing.as_ref().map(|reason| {
            format!(
                "the interchange cannot write its journal {}: {reason}; the task was not accepted",
                journal.path
            )
        })
    }

    /// Records a `Submit` frame's accepted tasks (held until durable; `answered` were answered
    /// at once, and are journaled with their answer) and what to do once they are durable.
    pub(super) fn journal_submitted(
        &mut self,
        client: ClientKey,
        number: IdentityNumber,
        first: TaskId,
        gids: Vec<GlobalId>,
        answered: Vec<(GlobalId, TaskId)>,
    ) {
        let mut tasks: Vec<JournalTask> = gids
            .iter()
            .filter_map(|gid| {
                let record = self.tasks.get(gid)?;
                Some(JournalTask::new(*gid, record.client_task_id, &record.task))
            })
            .collect();
        tasks.extend(answered.into_iter().map(|(gid, id)| JournalTask {
            gid,
            id,
            spec: EncodedTask(Vec::new().into()),
        }));
        let journal = self.journal.as_deref_mut().expect("journaled");
        if !tasks.is_empty() {
            journal.records.push(Record::Tasks {
                client: number,
                tasks,
            });
        }
        journal.releases.push(Release::Submitted {
            client,
            first,
            gids,
        });
    }

    /// Records a result for a journaled client's task.
    pub(super) fn journal_result(&mut self, gid: GlobalId, result: TaskResult) {
        if let Some(journal) = self.journal_mut() {
            journal.results.push((gid, result));
        }
    }

    /// A journaled client's record is gone: its identity is no longer bound.
    pub(super) fn drop_identity(&mut self, key: ClientKey) {
        if let Some(journal) = self.journal_mut() {
            journal.identities.retain(|_, (_, k)| *k != key);
        }
    }

    /// A manager's results up to its `upto`-th are acknowledged once this burst is durable.
    pub(super) fn journal_stored(&mut self, manager: ManagerKey, upto: u64) {
        if let Some(journal) = self.journal_mut() {
            journal.releases.push(Release::Stored { manager, upto });
        }
    }

    /// Tasks a client has the results of.
    pub(super) fn journal_forget(&mut self, gids: Vec<GlobalId>) {
        if gids.is_empty() {
            return;
        }
        if let Some(journal) = self.journal_mut() {
            journal.records.push(Record::Forget(gids));
        }
    }

    /// Ends the burst: its records go to the writer as one batch.
    pub(super) fn flush_journal(&mut self, out: &mut Effects) {
        let Some(journal) = self.journal.as_deref_mut() else {
            return;
        };
        if !journal.results.is_empty() {
            let results = std::mem::take(&mut journal.results);
            journal.records.push(Record::Results(results.into()));
        }
        if journal.records.is_empty() && journal.releases.is_empty() {
            return;
        }
        journal.seq += 1;
        let records = std::mem::take(&mut journal.records);
        let retry = records
            .iter()
            .filter(|r| !matches!(r, Record::Tasks { .. }))
            .cloned()
            .collect();
        journal.pending.push_back(Pending {
            seq: journal.seq,
            retry,
            releases: std::mem::take(&mut journal.releases),
        });
        out.0.push(Effect::Journal(Batch::Append {
            seq: journal.seq,
            records,
        }));
    }

    /// The writer's answer.
    pub(super) fn on_journal(&mut self, event: JournalEvent, out: &mut Effects) {
        match event {
            JournalEvent::Durable { seq, file_bytes } => {
                let Some(journal) = self.journal_mut() else {
                    return;
                };
                journal.file_bytes = file_bytes;
                if journal.compacting.is_some_and(|s| s <= seq) {
                    journal.compacting = None;
                }
                if let Some(reason) = journal.failing.take() {
                    tracing::info!("the journal is written again (it failed: {reason})");
                }
                let mut done = Vec::new();
                while journal.pending.front().is_some_and(|p| p.seq <= seq) {
                    done.push(journal.pending.pop_front().expect("checked"));
                }
                for pending in done {
                    for release in pending.releases {
                        self.release(release, out);
                    }
                }
                self.maybe_compact(out);
            }
            JournalEvent::Failed {
                first,
                last,
                reason,
            } => self.on_journal_failed(first, last, reason, out),
        }
    }

    fn release(&mut self, release: Release, out: &mut Effects) {
        match release {
            Release::Submitted {
                client,
                first,
                gids,
            } => {
                for gid in gids {
                    self.unhold(gid);
                }
                self.send_accepted(client, first, out);
            }
            Release::Stored { manager, upto } => {
                if let Some(record) = self.managers.get(manager) {
                    out.send(
                        Side::Manager,
                        &record.peer,
                        &InterchangeMessage::Stored { results: upto },
                    );
                }
            }
        }
    }

    /// Tells a connected client its frames up to the one starting with `first` were taken.
    fn send_accepted(&self, client: ClientKey, first: TaskId, out: &mut Effects) {
        if let Some(record) = self.clients.get(client).filter(|c| c.online) {
            out.send(Side::Client, &record.peer, &ClientReply::Accepted { first });
        }
    }

    /// A batch (or several) could not be written. The writer handles batches in order, so
    /// every batch before `first` was durable: an `Accepted` for a failed frame covers no
    /// frame that is not.
    fn on_journal_failed(&mut self, first: u64, last: u64, reason: String, out: &mut Effects) {
        let Some(journal) = self.journal.as_deref_mut() else {
            return;
        };
        tracing::error!(
            "cannot write the journal {}: {reason}; submissions are refused until it works",
            journal.path
        );
        journal.failing = Some(reason);
        journal.compacting = None;
        let mut failed = Vec::new();
        let mut later_stored = Vec::new();
        for pending in journal.pending.iter_mut() {
            if pending.seq >= first && pending.seq <= last {
                failed.push((
                    std::mem::take(&mut pending.retry),
                    std::mem::take(&mut pending.releases),
                ));
            } else if pending.seq > last {
                // A later batch's `Stored` would acknowledge results of the failed one, which
                // are written again after it: it waits for that rewrite.
                let (stored, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut pending.releases)
                    .into_iter()
                    .partition(|r| matches!(r, Release::Stored { .. }));
                pending.releases = kept;
                later_stored.extend(stored);
            }
        }
        journal.pending.retain(|p| p.seq < first || p.seq > last);
        let why = self.journal_failing().unwrap_or_default();
        for (retry, releases) in failed {
            for release in releases {
                match release {
                    Release::Submitted {
                        client,
                        first,
                        gids,
                    } => {
                        for gid in gids {
                            if self.tasks.get(&gid).map(|t| t.state) == Some(TaskState::Held) {
                                let error = TaskError::NotAccepted {
                                    reason: why.clone(),
                                };
                                self.finish_as(gid, error, false);
                            }
                        }
                        // Each of its tasks is answered: the client may drop the frame.
                        self.send_accepted(client, first, out);
                    }
                    stored @ Release::Stored { .. } => {
                        self.journal_mut().expect("journaled").releases.push(stored)
                    }
                }
            }
            self.journal_mut().expect("journaled").records.extend(retry);
        }
        let journal = self.journal_mut().expect("journaled");
        journal.releases.extend(later_stored);
    }

    /// When the file holds several times what is live, the live state replaces it.
    fn maybe_compact(&mut self, out: &mut Effects) {
        let Some(journal) = self.journal.as_ref() else {
            return;
        };
        if journal.compacting.is_some() || journal.file_bytes < COMPACT_MIN_BYTES {
            return;
        }
        let live = self.task_bytes as u64
            + self.tasks.len() as u64 * RECORD_OVERHEAD
            + self.clients.retained_bytes();
        if journal.file_bytes < COMPACT_FACTOR * live.max(1) {
            return;
        }
        let records = self.snapshot();
        let journal = self.journal_mut().expect("checked");
        journal.seq += 1;
        journal.compacting = Some(journal.seq);
        tracing::info!(
            file_bytes = journal.file_bytes,
            live_bytes = live,
            "compacting the journal"
        );
        // The burst's own records were taken into this snapshot's state already.
        journal.records.clear();
        journal.results.clear();
        let releases = std::mem::take(&mut journal.releases);
        journal.pending.push_back(Pending {
            seq: journal.seq,
            retry: Vec::new(),
            releases,
        });
        out.0.push(Effect::Journal(Batch::Snapshot {
            seq: journal.seq,
            records,
        }));
    }

    /// The live state as records: every journaled identity, every journaled task the table
    /// holds, and every result not yet confirmed by its client.
    fn snapshot(&self) -> Vec<Record> {
        let journal = self.journal.as_ref().expect("journaled");
        let mut records = vec![Record::NextId(self.tasks.next_id())];
        let mut by_client: HashMap<IdentityNumber, Vec<JournalTask>> = HashMap::new();
        let mut results = Vec::new();
        for (name, &(number, key)) in &journal.identities {
            let Some(client) = self.clients.get(key) else {
                continue;
            };
            records.push(Record::Client {
                number,
                identity: name.clone(),
                accepted_upto: client.accepted_upto,
            });
            for (gid, result) in client.unconfirmed_results() {
                by_client.entry(number).or_default().push(JournalTask {
                    gid,
                    id: result.id,
                    spec: EncodedTask(Vec::new().into()),
                });
                results.push((gid, result));
            }
        }
        for (gid, task) in self.tasks.iter() {
            let Some(number) = self.clients.get(task.client).and_then(|c| c.identity) else {
                continue;
            };
            by_client.entry(number).or_default().push(JournalTask::new(
                gid,
                task.client_task_id,
                &task.task,
            ));
        }
        for (client, tasks) in by_client {
            records.push(Record::Tasks { client, tasks });
        }
        if !results.is_empty() {
            records.push(Record::Results(results.into()));
        }
        records
    }

    /// Restores what a journal held: identities as clients not connected yet, tasks with a
    /// result as results waiting for them, the others held until their managers register
    /// again (or `heartbeat_threshold` passes).
    pub(crate) fn restore(&mut self, now: Now, restored: Restored) {
        if self.journal.is_none() {
            return;
        }
        let Restored {
            clients,
            tasks,
            next_gid,
            ..
        } = restored;
        let mut keys = HashMap::new();
        for (number, (identity, accepted_upto)) in clients {
            let key = self
                .clients
                .add_offline(identity.clone(), number, accepted_upto);
            keys.insert(number, key);
            let journal = self.journal_mut().expect("journaled");
            journal.identities.insert(identity, (number, key));
            journal.next_identity = journal.next_identity.max(number + 1);
        }
        let (mut held, mut answered) = (IdSet::default(), 0usize);
        for (gid, task) in tasks {
            let Some(&client) = keys.get(&task.client) else {
                continue;
            };
            if let Some(result) = task.result {
                self.clients.hold_result(client, gid, result);
                answered += 1;
                continue;
            }
            match self.restore_task(client, gid, task.id, task.spec, now) {
                Ok(()) => {
                    held.insert(gid);
                }
                Err(why) => {
                    tracing::warn!(task = gid, "a task in the journal cannot run: {why}");
                    self.clients
                        .hold_result(client, gid, TaskResult::error(task.id, why));
                }
            }
        }
        if self.tasks.next_id() < next_gid {
            self.tasks.skip_to(next_gid);
        }
        tracing::info!(
            tasks = held.len(),
            results = answered,
            clients = keys.len(),
            "restored from the journal"
        );
        let threshold = self.config.heartbeat_threshold;
        let journal = self.journal_mut().expect("journaled");
        journal.restored = held;
        journal.restore_until = Some(now.at + threshold);
    }

    fn restore_task(
        &mut self,
        client: ClientKey,
        gid: GlobalId,
        id: TaskId,
        spec: EncodedTask,
        now: Now,
    ) -> Result<(), TaskError> {
        let decoded: TaskSpec = decode(&spec.0, usize::MAX).map_err(|e| TaskError::BadRequest {
            message: format!("its spec in the journal does not decode: {e}"),
        })?;
        if decoded.id != gid {
            return Err(TaskError::BadRequest {
                message: format!(
                    "its spec in the journal names task {}, not {gid}",
                    decoded.id
                ),
            });
        }
        if self.tasks.next_id() < gid {
            self.tasks.skip_to(gid);
        }
        self.insert_task(client, id, spec, &decoded, TaskState::Held, true, now);
        Ok(())
    }

    /// Whether a held task is one restored from the journal (not one waiting to be durable).
    pub(super) fn is_restored(&self, gid: GlobalId) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|j| j.restored.contains(&gid))
    }

    /// Restored tasks no manager claimed go into their queues once the wait is over.
    pub(super) fn release_restored(&mut self, now: Now) {
        let Some(journal) = self.journal.as_deref_mut() else {
            return;
        };
        let Some(until) = journal.restore_until else {
            return;
        };
        if now.at < until {
            return;
        }
        journal.restore_until = None;
        // Oldest first: a queue takes tasks in order at its end, and sorts one in otherwise.
        let mut restored: Vec<GlobalId> =
            std::mem::take(&mut journal.restored).into_iter().collect();
        restored.sort_unstable();
        let mut queued = 0;
        for gid in restored {
            if self.tasks.get(&gid).map(|t| t.state) == Some(TaskState::Held) {
                self.unhold(gid);
                queued += 1;
            }
        }
        if queued > 0 {
            tracing::info!(tasks = queued, "restored tasks no manager holds are queued");
        }
    }
}
