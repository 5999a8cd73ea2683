//! The journal (`--journal FILE`): what the interchange accepted and has not finished answering,
//! on disk, so that a restart after a crash loses none of it.
//!
//! The core emits [`Record`]s as effects, in the order things happen: tasks accepted (their
//! encoded specs), results that came back, tasks the client has the results of (forgotten),
//! and client identities. The writer thread ([`Writer`]) appends them and makes them durable in
//! groups: one `write` and one `fdatasync` for everything queued since the last one (group
//! commit, so no timer adds delay: a batch waits only for the sync before it), then tells the
//! core which batches are durable. Only then does the core acknowledge a submission or start
//! its tasks, and acknowledge a manager's results. When the file grows past a few times what is
//! live, the core hands the writer a snapshot of the live state, which the writer puts in a new
//! file that replaces the old one (compaction).
//!
//! On start, [`replay`] folds the file into [`Restored`]: the tasks not yet forgotten, with
//! their results if they have one, and every client identity with the highest task id it had
//! accepted (so a re-sent submission is recognised).

mod file;
#[cfg(test)]
mod tests;

pub use file::JournalError;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use htex_protocol::{EncodedTask, TaskId, TaskResult};
use serde::{Deserialize, Serialize};

use crate::records::GlobalId;

/// A client identity's number in the journal's records.
pub(crate) type IdentityNumber = u32;

/// One entry of the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Record {
    /// A client identity, numbered for the records after it; it had accepted every one of its
    /// task ids up to `accepted_upto`.
    Client {
        number: IdentityNumber,
        identity: String,
        accepted_upto: TaskId,
    },
    /// Tasks accepted from one client, in order.
    Tasks {
        client: IdentityNumber,
        tasks: Vec<JournalTask>,
    },
    /// Results that came back, each for its task's global id (the result carries the client's
    /// own id, as the client gets it). Shared, so the copy the core keeps (to write again if
    /// the write fails) costs nothing.
    Results(std::sync::Arc<Vec<(GlobalId, TaskResult)>>),
    /// Tasks done with: the client has their results.
    Forget(Vec<GlobalId>),
    /// Global ids below this were handed out (the first record of a compacted journal).
    NextId(GlobalId),
}

/// An accepted task as the journal keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JournalTask {
    pub gid: GlobalId,
    pub id: TaskId,
    /// The spec as managers get it (its `id` is `gid`), encoded; shared with the task table
    /// (not copied) until the writer encodes it.
    pub spec: EncodedTask,
}

impl JournalTask {
    pub fn new(gid: GlobalId, id: TaskId, spec: &EncodedTask) -> JournalTask {
        JournalTask {
            gid,
            id,
            spec: spec.clone(),
        }
    }
}

/// A task the journal had not forgotten.
#[derive(Debug)]
pub(crate) struct RestoredTask {
    pub client: IdentityNumber,
    pub id: TaskId,
    pub spec: EncodedTask,
    pub result: Option<TaskResult>,
}

/// What a journal held.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    /// Identities by number: the identity and the highest task id accepted from it.
    pub clients: BTreeMap<IdentityNumber, (String, TaskId)>,
    pub tasks: BTreeMap<GlobalId, RestoredTask>,
    /// The first global id not handed out.
    pub next_gid: GlobalId,
    pub records: u64,
    /// Bytes of whole records (where appends go).
    pub end: u64,
    /// Bytes of a torn last write, cut off.
    pub torn_bytes: u64,
}

/// Reads the journal at `path` (none there: an empty one).
pub(crate) fn replay(path: &Path) -> Result<Restored, JournalError> {
    let mut restored = Restored {
        next_gid: 1,
        ..Restored::default()
    };
    let scan = file::scan(path, |record| restored.apply(record))?;
    restored.records = scan.records;
    restored.end = scan.end;
    restored.torn_bytes = scan.torn_bytes;
    Ok(restored)
}

impl Restored {
    fn apply(&mut self, record: Record) -> Result<(), String> {
        match record {
            Record::Client {
                number,
                identity,
                accepted_upto,
            } => {
                let entry = self
                    .clients
                    .entry(number)
                    .or_insert_with(|| (identity.clone(), 0));
                if entry.0 != identity {
                    return Err(format!(
                        "client number {number} is both `{}` and `{identity}`",
                        entry.0
                    ));
                }
                entry.1 = entry.1.max(accepted_upto);
            }
            Record::Tasks { client, tasks } => {
                let Some(entry) = self.clients.get_mut(&client) else {
                    return Err(format!("tasks of client number {client}, never named"));
                };
                for task in tasks {
                    entry.1 = entry.1.max(task.id);
                    self.next_gid = self.next_gid.max(task.gid + 1);
                    let restored = RestoredTask {
                        client,
                        id: task.id,
                        spec: task.spec,
                        result: None,
                    };
                    if self.tasks.insert(task.gid, restored).is_some() {
                        return Err(format!("task {} accepted twice", task.gid));
                    }
                }
            }
            Record::Results(results) => {
                for (gid, result) in std::sync::Arc::unwrap_or_clone(results) {
                    // A result for a task already forgotten was superseded; one for a task
                    // never accepted cannot be.
                    if gid >= self.next_gid {
                        return Err(format!("a result for task {gid}, never accepted"));
                    }
                    if let Some(task) = self.tasks.get_mut(&gid) {
                        task.result = Some(result);
                    }
                }
            }
            Record::Forget(gids) => {
                for gid in gids {
                    self.tasks.remove(&gid);
                }
            }
            Record::NextId(next) => self.next_gid = self.next_gid.max(next),
        }
        Ok(())
    }
}

/// Records the core hands the writer, numbered in order.
#[derive(Debug)]
pub(crate) enum Batch {
    Append {
        seq: u64,
        records: Vec<Record>,
    },
    /// The whole live state: it replaces the file.
    Snapshot {
        seq: u64,
        records: Vec<Record>,
    },
}

impl Batch {
    fn seq(&self) -> u64 {
        match self {
            Batch::Append { seq, .. } | Batch::Snapshot { seq, .. } => *seq,
        }
    }
}

/// What the writer tells the core.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JournalEvent {
    /// Every batch up to `seq` is on disk; the file is `file_bytes` long.
    Durable { seq: u64, file_bytes: u64 },
    /// Batches `first..=last` could not be written (the file is as it was before them); the
    /// writer goes on with the next ones.
    Failed {
        first: u64,
        last: u64,
        reason: String,
    },
}

/// Most bytes one write carries: a bigger backlog goes in several, each synced.
const WRITE_BYTES: usize = 8 << 20;
/// After a failed write the writer waits this long before the next.
const FAILURE_PAUSE: Duration = Duration::from_millis(200);

/// The thread that appends to the journal and syncs it.
pub(crate) struct Writer {
    batches: std::sync::mpsc::Sender<Batch>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Opens `path` for appending at `end` (cutting off a torn tail) and starts the thread;
    /// `report` gets its events.
    pub fn start(
        path: &Path,
        end: u64,
        report: impl Fn(JournalEvent) + Send + 'static,
    ) -> Result<Writer, JournalError> {
        let mut out = Output::open(path, end)?;
        let (batches, queue) = std::sync::mpsc::channel::<Batch>();
        let thread = std::thread::Builder::new()
            .name("htex-journal".into())
            .spawn(move || {
                let mut buffer = Vec::new();
                let mut held: Option<Batch> = None;
                loop {
                    let first = match held.take() {
                        Some(batch) => batch,
                        None => match queue.recv() {
                            Ok(batch) => batch,
                            Err(_) => break,
                        },
                    };
                    // Everything queued goes in one write and one sync, up to WRITE_BYTES; a
                    // snapshot goes alone.
                    let (first_seq, mut last_seq) = (first.seq(), first.seq());
                    let outcome = match first {
                        Batch::Snapshot { records, .. } => out.replace(&records),
                        Batch::Append { records, .. } => {
                            buffer.clear();
                            encode(&records, &mut buffer);
                            while buffer.len() < WRITE_BYTES {
                                match queue.try_recv() {
                                    Ok(Batch::Append { seq, records }) => {
                                        encode(&records, &mut buffer);
                                        last_seq = seq;
                                    }
                                    Ok(snapshot) => {
                                        held = Some(snapshot);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            out.append(&buffer)
                        }
                    };
                    match outcome {
                        Ok(()) => report(JournalEvent::Durable {
                            seq: last_seq,
                            file_bytes: out.len,
                        }),
                        Err(e) => {
                            let reason = e.to_string();
                            tracing::error!("journal write failed: {reason}");
                            report(JournalEvent::Failed {
                                first: first_seq,
                                last: last_seq,
                                reason,
                            });
                            std::thread::sleep(FAILURE_PAUSE);
                        }
                    }
                }
            })
            .map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Writer { batches, thread })
    }

    /// Queues a batch; false once the writer has stopped.
    pub fn send(&self, batch: Batch) -> bool {
        self.batches.send(batch).is_ok()
    }

    /// Writes what is queued and stops.
    pub fn finish(self) {
        drop(self.batches);
        let _ = self.thread.join();
    }
}

fn encode(records: &[Record], out: &mut Vec<u8>) {
    let mut payload = Vec::new();
    for record in records {
        payload.clear();
        match rmp_serde::encode::write(&mut payload, record) {
            Ok(()) => file::frame(&payload, out),
            // Records are plain data; this would be a bug, and the record is left out.
            Err(e) => tracing::error!("cannot encode a journal record: {e}"),
        }
    }
}

/// The open journal file.
struct Output {
    path: PathBuf,
    file: File,
    /// Bytes of whole, synced records.
    len: u64,
}

impl Output {
    fn open(path: &Path, end: u64) -> Result<Output, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let len = if end < file::HEADER_BYTES {
            file.set_len(0).map_err(io)?;
            file.write_all(&file::header()).map_err(io)?;
            file::HEADER_BYTES
        } else {
            end
        };
        // A torn tail past `end` is cut off.
        file.set_len(len).map_err(io)?;
        file.sync_all().map_err(io)?;
        sync_dir(path).map_err(io)?;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(len)).map_err(io)?;
        Ok(Output {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Appends and syncs; on failure the file is cut back to where it was.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let done = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        match done {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                use std::io::Seek;
                let _ = self.file.set_len(self.len);
                let _ = self.file.seek(std::io::SeekFrom::Start(self.len));
                Err(e)
            }
        }
    }

    /// Writes `records` to a new file beside the journal and renames it over the journal.
    fn replace(&mut self, records: &[Record]) -> std::io::Result<()> {
        let fresh = self.path.with_extension("compacting");
        let mut bytes = Vec::with_capacity(1 << 20);
        bytes.extend_from_slice(&file::header());
        encode(records, &mut bytes);
        let written = (|| {
            let mut file = File::create(&fresh)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&fresh, &self.path)?;
            sync_dir(&self.path)?;
            Ok::<File, std::io::Error>(file)
        })();
        match written {
            Ok(file) => {
                self.file = file;
                self.len = bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&fresh);
                Err(e)
            }
        }
    }
}

/// Makes a rename or a new file in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
