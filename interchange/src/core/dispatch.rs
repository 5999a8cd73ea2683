//! Resource classes and dispatch. Tasks that ask for the same `ResourceRequest` form a class with
//! its own queue (HyperQueue's request variants), so tasks waiting for busy GPU slots never hide
//! the tasks behind them that free CPU slots could run: a dispatch round looks at the head of
//! each class, in priority and age order across classes, and a class that no manager has room for
//! sits the round out without a single task being popped. A class that no connected manager could
//! ever run is parked until a manager registers, and its tasks end `Unsatisfiable` after the
//! grace period.

use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use htex_protocol::{max_item_bytes, BatchEncoder, InterchangeMessage, ResourceRequest, TaskError};

use super::{Core, Effects, Now, Side};
use crate::queue::TaskQueue;
use crate::records::{ClassId, GlobalId, ManagerKey, TaskState};

/// The class every task that asks for nothing belongs to.
pub(crate) const ANY: ClassId = 0;

pub(crate) struct Class {
    pub request: ResourceRequest,
    pub queue: TaskQueue,
    /// Tasks in the table of this class, queued or not: the class goes when none is left.
    tasks: usize,
    /// Since when no connected manager could run this class, if none can.
    pub parked_since: Option<Instant>,
}

/// Every class in use, by id and by request.
pub(crate) struct Classes {
    by_request: HashMap<ResourceRequest, ClassId>,
    classes: Vec<Option<Class>>,
    free: Vec<ClassId>,
}

impl Default for Classes {
    fn default() -> Self {
        let any = Class {
            request: ResourceRequest::default(),
            queue: TaskQueue::default(),
            tasks: 0,
            parked_since: None,
        };
        Classes {
            by_request: HashMap::from([(ResourceRequest::default(), ANY)]),
            classes: vec![Some(any)],
            free: Vec::new(),
        }
    }
}

impl Classes {
    /// The class of a request, made if new; one more task counts in it.
    pub fn intern(&mut self, request: &ResourceRequest) -> ClassId {
        // Most tasks ask for nothing: their class needs no hashing of the request.
        let known = if request.is_any() {
            Some(&ANY)
        } else {
            self.by_request.get(request)
        };
        let id = match known {
            Some(&id) => id,
            None => {
                let class = Class {
                    request: request.clone(),
                    queue: TaskQueue::default(),
                    tasks: 0,
                    parked_since: None,
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.classes[id as usize] = Some(class);
                        id
                    }
                    None => {
                        self.classes.push(Some(class));
                        (self.classes.len() - 1) as ClassId
                    }
                };
                self.by_request.insert(request.clone(), id);
                id
            }
        };
        self.get_mut(id).tasks += 1;
        id
    }

    pub fn get(&self, id: ClassId) -> &Class {
        self.classes[id as usize]
            .as_ref()
            .expect("a task's class lives as long as the task")
    }

    pub fn get_mut(&mut self, id: ClassId) -> &mut Class {
        self.classes[id as usize]
            .as_mut()
            .expect("a task's class lives as long as the task")
    }

    pub fn queue_task(&mut self, id: ClassId, priority: i32, gid: GlobalId) {
        self.get_mut(id).queue.push(priority, gid);
    }

    /// A task of the class left the table; the class goes with its last task (but `ANY`).
    pub fn task_ended(&mut self, id: ClassId) {
        let class = self.get_mut(id);
        class.tasks -= 1;
        if class.tasks == 0 && id != ANY {
            let class = self.classes[id as usize].take().expect("checked above");
            self.by_request.remove(&class.request);
            self.free.push(id);
        }
    }

    /// Ids of the classes in use.
    pub fn ids(&self) -> Vec<ClassId> {
        (0..self.classes.len() as ClassId)
            .filter(|&id| self.classes[id as usize].is_some())
            .collect()
    }

    /// Every parked class gets another look (a manager registered).
    pub fn unpark_all(&mut self) {
        for class in self.classes.iter_mut().flatten() {
            class.parked_since = None;
        }
    }
}

/// Per-manager room and frame packing during one dispatch round.
struct Outgoing {
    key: ManagerKey,
    free: usize,
    batch: Option<BatchEncoder>,
    item_limit: usize,
    /// Until its block's walltime ends, when known: a task whose time limit is longer is not
    /// sent to it.
    time_left: Option<std::time::Duration>,
}

impl Core {
    /// Hands queued tasks to managers with room: the best head (priority, then age) across
    /// classes first, each to the next manager in turn with a fitting free slot; one frame per
    /// manager unless the frame limit makes more.
    pub(super) fn dispatch(&mut self, now: Now, out: &mut Effects) {
        if self.queued == 0 {
            return;
        }
        let mut outgoing: Vec<Outgoing> = self
            .managers
            .iter()
            .filter(|(_, m)| m.free() > 0)
            .map(|(&key, m)| Outgoing {
                key,
                free: m.free(),
                batch: None,
                item_limit: max_item_bytes(m.max_frame_bytes),
                time_left: self.time_left(now.at, m.registration.block_id.as_deref()),
            })
            .collect();
        if outgoing.is_empty() {
            return;
        }
        let mut total_free: usize = outgoing.iter().map(|o| o.free).sum();
        // The best head of each class that may dispatch this round: (priority, -id, class).
        let mut heads = BinaryHeap::new();
        for id in self.classes.ids() {
            if self.classes.get(id).parked_since.is_none() {
                if let Some(head) = self.head(id) {
                    heads.push(head);
                }
            }
        }
        let n = outgoing.len();
        let window = self.config.manager_window_bytes;
        // A task longer than a whole block's walltime fits no block: the rule does not hold it.
        let walltime_s = self.block_walltime_s().unwrap_or(u64::MAX);
        while total_free > 0 {
            let Some((_, std::cmp::Reverse(gid), class)) = heads.pop() else {
                break;
            };
            let (size, timeout_s) = self
                .tasks
                .get(&gid)
                .map_or((0, 0), |t| (t.bytes(), t.timeout_s));
            let request = &self.classes.get(class).request;
            let cursor = self.managers.cursor % n;
            let chosen = (0..n).map(|i| (cursor + i) % n).find(|&i| {
                let o = &outgoing[i];
                let m = self.managers.get(o.key).expect("listed above");
                o.free > 0
                    && size <= o.item_limit
                    && (timeout_s == 0
                        || u64::from(timeout_s) > walltime_s
                        || o.time_left
                            .is_none_or(|left| u64::from(timeout_s) <= left.as_secs()))
                    && m.has_window_for(size, window)
                    && m.has_room_for(request)
            });
            let Some(i) = chosen else {
                self.class_blocked(class, size, now);
                continue;
            };
            self.classes.get_mut(class).queue.pop();
            self.managers.cursor = (i + 1) % n;
            outgoing[i].free -= 1;
            total_free -= 1;
            let key = outgoing[i].key;
            if let Some(task) = self.dispatch_to(gid, key, now) {
                let manager = self.managers.get(key).expect("listed above");
                let limit = manager.max_frame_bytes;
                let batch = outgoing[i].batch.get_or_insert_with(|| {
                    BatchEncoder::new(&InterchangeMessage::Tasks(Vec::new()), limit)
                        .expect("a batch message")
                });
                match batch.push(&task) {
                    Ok(Some(full)) => out.frame(Side::Manager, &manager.peer, full),
                    Ok(None) => {}
                    // Tasks over the manager's item limit were not chosen for it.
                    Err(e) => tracing::error!("cannot pack a task for a manager: {e}"),
                }
            }
            if let Some(head) = self.head(class) {
                heads.push(head);
            }
        }
        for o in outgoing {
            if let Some(frame) = o.batch.and_then(|mut b| b.finish()) {
                let peer = self.managers.get(o.key).expect("listed above").peer.clone();
                out.frame(Side::Manager, &peer, frame);
            }
        }
    }

    /// The class's first queued task, skipping (and dropping) entries of tasks no longer queued.
    fn head(&mut self, class: ClassId) -> Option<(i32, std::cmp::Reverse<GlobalId>, ClassId)> {
        let queue = &mut self.classes.get_mut(class).queue;
        while let Some((priority, gid)) = queue.peek() {
            let queued = self
                .tasks
                .get(&gid)
                .is_some_and(|t| t.state == TaskState::Queued && t.class == class);
            if queued {
                return Some((priority, std::cmp::Reverse(gid), class));
            }
            queue.pop();
        }
        None
    }

    /// No manager had room for the head of `class` this round: it waits, unless no connected
    /// manager could ever run it, when the class is parked (or, for a task larger than any
    /// manager's frames, the task ends).
    fn class_blocked(&mut self, class: ClassId, size: usize, now: Now) {
        let request = &self.classes.get(class).request;
        let could_run: Vec<_> = self
            .managers
            .iter()
            .filter(|(_, m)| m.could_run(request))
            .map(|(_, m)| max_item_bytes(m.max_frame_bytes))
            .collect();
        if could_run.is_empty() {
            self.classes
                .get_mut(class)
                .parked_since
                .get_or_insert(now.at);
            return;
        }
        let largest = could_run.iter().copied().max().unwrap_or(0);
        if size > largest {
            if let Some((_, std::cmp::Reverse(gid), _)) = self.head(class) {
                self.classes.get_mut(class).queue.pop();
                let reason = format!(
                    "the task is {size} bytes encoded, and the connected managers that could \
                     run it accept tasks of at most {largest} bytes"
                );
                self.finish(gid, TaskError::Unsatisfiable { reason });
            }
        }
    }

    /// Parked classes whose grace has passed end their tasks that waited as long.
    pub(super) fn expire_parked(&mut self, now: Now) {
        let grace = self.config.unsatisfiable_grace;
        let grace_us = grace.as_micros() as u64;
        for class in self.classes.ids() {
            let c = self.classes.get(class);
            let Some(since) = c.parked_since else {
                continue;
            };
            if now.at.duration_since(since) < grace {
                continue;
            }
            // Blocks the provider may still start could run it: it waits for them.
            if self
                .scaling
                .as_ref()
                .is_some_and(|s| s.could_serve(&c.request))
            {
                continue;
            }
            let mut reason = format!(
                "`{}` fits no slot of the {} connected manager(s) after waiting {:.0} s",
                c.request,
                self.managers.len(),
                grace.as_secs_f64()
            );
            if let Some(paused) = self.scaling.as_ref().and_then(|s| s.paused()) {
                reason.push_str(&format!("; block scaling is {paused}"));
            }
            let tasks = &self.tasks;
            let expired = self.classes.get_mut(class).queue.drain_front_while(|gid| {
                tasks.get(&gid).is_none_or(|t| {
                    t.state != TaskState::Queued
                        || t.class != class
                        || now.epoch_us.saturating_sub(t.received_us) >= grace_us
                })
            });
            for gid in expired {
                let queued_here = self
                    .tasks
                    .get(&gid)
                    .is_some_and(|t| t.state == TaskState::Queued && t.class == class);
                if queued_here {
                    self.finish(
                        gid,
                        TaskError::Unsatisfiable {
                            reason: reason.clone(),
                        },
                    );
                }
            }
        }
    }
}
