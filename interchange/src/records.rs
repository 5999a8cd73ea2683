//! What the interchange keeps per accepted task, and the cheap maps it keys by task id.

use std::collections::{HashMap, HashSet};

use htex_protocol::{EncodedTask, TaskId};

/// The interchange's own task number, unique across clients.
pub(crate) type GlobalId = u64;

/// The interchange's number for a connected client (4 bytes in every task record, where the
/// client's socket identity would take 32).
pub(crate) type ClientKey = u32;

/// The interchange's number for a registered manager (a new one per registration).
pub(crate) type ManagerKey = u64;

/// Index of a resource class: the tasks that ask for one same `ResourceRequest` (0: anything).
pub(crate) type ClassId = u32;

/// Hashes the 64-bit ids the interchange keys its biggest maps by (task ids, global ids) with one
/// multiplication (Fibonacci hashing, as FxHash does) instead of SipHash: these maps see an insert
/// and a remove per task, and their keys come from this interchange or a connected client, not
/// from strangers.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;
/// A map keyed by one of the interchange's own small integer keys (clients, managers).
pub(crate) type KeyMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
pub(crate) type IdSet = HashSet<u64, std::hash::BuildHasherDefault<IdHasher>>;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// In its class's queue, waiting for a slot.
    Queued,
    /// Sent to a manager, waiting for its result.
    Dispatched { manager: ManagerKey },
    /// Accepted and in no queue yet: waiting for its journal record to be durable, or restored
    /// from the journal and waiting for the manager that may hold it to register again.
    Held,
}

/// An accepted task that has not been answered yet. The spec is kept encoded, as managers get
/// it; only what scheduling reads is kept decoded beside it.
pub(crate) struct TaskRecord {
    pub client: ClientKey,
    pub client_task_id: TaskId,
    /// The spec as the managers see it (`id` is the global id), encoded.
    pub task: EncodedTask,
    /// Its resource class (what it needs of a slot).
    pub class: ClassId,
    pub priority: i32,
    pub max_retries: u32,
    pub submitted_us: u64,
    pub state: TaskState,
    pub received_us: u64,
    pub dispatched_us: u64,
    /// How many managers were lost while holding the task.
    pub losses: u16,
    /// How many times it was sent to a manager (its attempts).
    pub dispatches: u16,
    /// The task's declared time limit in whole seconds, rounded up (0: none): a block whose
    /// walltime ends sooner is not sent it.
    pub timeout_s: u32,
}

impl TaskRecord {
    /// Bytes of its encoded spec: what it costs the interchange's memory beyond the record.
    pub fn bytes(&self) -> usize {
        self.task.0.len()
    }
}

// A million queued tasks hold a million of these: keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<TaskRecord>() <= 88);
