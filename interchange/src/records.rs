//! The interchange's tables: tasks, managers and clients, with their states.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;
use htex_protocol::{
    EncodedTask, ManagerState, ManagerStatus, Registration, ResourceRequest, TaskId,
};

use crate::queue::GlobalId;

/// The interchange's number for a connected client (4 bytes in every task record, where the
/// client's socket identity would take 32).
pub(crate) type ClientKey = u32;

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

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;
pub(crate) type IdSet = HashSet<u64, std::hash::BuildHasherDefault<IdHasher>>;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// In the queue, waiting for capacity.
    Queued,
    /// No connected manager has a slot that could run it (since when: the actor's parked list).
    Parked,
    /// Sent to a manager, waiting for its result.
    Dispatched { manager: u64 },
}

/// An accepted task that has not been answered yet. The spec is kept encoded, as managers get
/// it; only what scheduling reads is kept decoded beside it.
pub(crate) struct TaskRecord {
    pub client: ClientKey,
    pub client_task_id: TaskId,
    /// The spec as the managers see it (`id` is the global id), encoded.
    pub task: EncodedTask,
    /// What it needs of a slot; `None` for the common "anything".
    pub resources: Option<Box<ResourceRequest>>,
    pub priority: i32,
    pub max_retries: u32,
    pub submitted_us: u64,
    pub state: TaskState,
    pub received_us: u64,
    pub dispatched_us: u64,
    /// How many managers were lost while holding the task.
    pub losses: u32,
}

/// The request of a task that asks for nothing.
const ANY: ResourceRequest = ResourceRequest {
    gpu: false,
    whole_gpu: false,
    min_mps_percentage: None,
    min_sm_count: None,
    min_gpu_memory_bytes: None,
    mig_profile: None,
    cpu_only: false,
};

impl TaskRecord {
    pub fn resources(&self) -> &ResourceRequest {
        self.resources.as_deref().unwrap_or(&ANY)
    }
}

/// A connected manager.
pub(crate) struct ManagerRecord {
    pub peer: Bytes,
    pub registration: Registration,
    pub state: ManagerState,
    pub last_seen: Instant,
    /// Tasks it holds, running or prefetched.
    pub tasks: IdSet,
    /// How many of those tasks ask for specific resources, per request.
    pub constrained: HashMap<ResourceRequest, u32>,
}

impl ManagerRecord {
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

    /// Whether a task with these needs would find a slot free for it: more fitting slots than
    /// tasks with the same needs already sent. Tasks that ask for nothing fit any free capacity.
    pub fn has_room_for(&self, request: &ResourceRequest) -> bool {
        if request.is_any() {
            return true;
        }
        let fitting = self
            .registration
            .slots
            .iter()
            .filter(|s| s.satisfies(request))
            .count();
        fitting > self.constrained.get(request).copied().unwrap_or(0) as usize
    }

    /// Records that a task was sent to it.
    pub fn take(&mut self, gid: GlobalId, request: &ResourceRequest) {
        self.tasks.insert(gid);
        if !request.is_any() {
            *self.constrained.entry(request.clone()).or_default() += 1;
        }
    }

    /// Records that it no longer holds a task.
    pub fn release(&mut self, gid: GlobalId, request: &ResourceRequest) {
        if self.tasks.remove(&gid) && !request.is_any() {
            if let Some(n) = self.constrained.get_mut(request) {
                *n = n.saturating_sub(1);
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
            last_heartbeat_ms_ago: now.duration_since(self.last_seen).as_millis() as u64,
        }
    }
}

/// A client that said hello.
pub(crate) struct ClientRecord {
    pub peer: Bytes,
    pub name: String,
    /// Its outstanding tasks, by the client's own ids.
    pub tasks: IdMap<GlobalId>,
    /// It said Goodbye: its tasks are being cancelled and their results still go to it.
    pub departed: bool,
}

// A million queued tasks hold a million of these: keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<TaskRecord>() <= 88);
