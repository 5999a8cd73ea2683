//! Which worker runs which task: pending tasks go, in order, to idle workers whose slots fit
//! them; what is left is queued in the pipes of busy workers whose tasks run short; a cancel
//! finds a task wherever it waits. Functions over the slots and the pending queue, so they are
//! tested without processes.

use std::collections::VecDeque;

use htex_protocol::{TaskError, TaskId, TaskResult, TaskSpec};

use super::slot::{Slot, SlotState, WorkerPipe};

/// Gives pending tasks, in order, to idle workers whose slots satisfy them; each task takes the
/// least capable idle slot that fits, leaving bigger slots for tasks that need them. Then queues
/// the rest behind busy workers (up to `depth` each, see [`queue_behind`]).
pub(crate) fn assign<P: WorkerPipe>(
    slots: &mut [Slot<P>],
    pending: &mut VecDeque<TaskSpec>,
    depth: usize,
) {
    if pending.is_empty() {
        return;
    }
    let mut idle: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_idle()).collect();
    let mut next = 0;
    let rank = |slot: &Slot<P>| slot.descriptor.capability();
    while !idle.is_empty() {
        let Some((at, task)) = take_fitting(slots, pending, &mut next, &idle, rank) else {
            break;
        };
        let index = idle.swap_remove(at);
        slots[index].start(task);
    }
    queue_behind(slots, pending, depth);
}

/// Queues the rest of the pending tasks, in order, in the pipes of busy workers whose tasks run
/// short, each to the fitting slot with the fewest queued.
fn queue_behind<P: WorkerPipe>(
    slots: &mut [Slot<P>],
    pending: &mut VecDeque<TaskSpec>,
    depth: usize,
) {
    if pending.is_empty() {
        return;
    }
    let mut open: Vec<usize> = (0..slots.len())
        .filter(|&i| slots[i].takes_queued(depth))
        .collect();
    let mut next = 0;
    let rank = |slot: &Slot<P>| (slot.queued.len(), slot.descriptor.capability());
    // Stops once every open pipe is full, not after a walk over the whole pending queue.
    while !open.is_empty() {
        let Some((at, spec)) = take_fitting(slots, pending, &mut next, &open, rank) else {
            break;
        };
        let slot = &mut slots[open[at]];
        slot.queue(spec);
        if slot.queued.len() >= depth {
            open.remove(at);
        }
    }
}

/// Takes out the first pending task from `*next` on that one of `candidates` (slot indices)
/// satisfies, with the position in `candidates` of the fitting slot `rank` puts first; `*next`
/// moves past the tasks none of them fits. `None` once no pending task fits.
fn take_fitting<P, R: Ord>(
    slots: &[Slot<P>],
    pending: &mut VecDeque<TaskSpec>,
    next: &mut usize,
    candidates: &[usize],
    rank: impl Fn(&Slot<P>) -> R,
) -> Option<(usize, TaskSpec)> {
    while *next < pending.len() {
        let request = &pending[*next].resources;
        let best = candidates
            .iter()
            .enumerate()
            .filter(|(_, &s)| slots[s].descriptor.satisfies(request))
            .min_by_key(|(_, &s)| rank(&slots[s]))
            .map(|(at, _)| at);
        match best {
            Some(at) => {
                let task = pending.remove(*next).expect("index is in range");
                return Some((at, task));
            }
            None => *next += 1,
        }
    }
    None
}

/// Cancels a task: dropped if still pending, answered at once if queued in a worker's pipe (the
/// worker may still run it, and its answer is dropped), its worker killed if running (the
/// worker's exit answers it). Returns the answer to send now, if any.
pub(crate) fn cancel<P: WorkerPipe>(
    slots: &mut [Slot<P>],
    pending: &mut VecDeque<TaskSpec>,
    id: TaskId,
) -> Option<TaskResult> {
    let reason = "cancelled by the client".to_string();
    let answer = |reason| Some(TaskResult::error(id, TaskError::Cancelled { reason }));
    if let Some(pos) = pending.iter().position(|t| t.id == id) {
        pending.remove(pos);
        return answer(reason);
    }
    let queued = slots
        .iter_mut()
        .flat_map(|slot| slot.queued.iter_mut())
        .find(|q| q.spec.id == id && !q.answered);
    if let Some(queued) = queued {
        queued.answered = true;
        return answer(reason);
    }
    for slot in slots.iter_mut() {
        if let SlotState::Busy(task) = &slot.state {
            if task.id == id && task.ending.is_none() && !task.answered && slot.process.is_some() {
                slot.kill_for(TaskError::Cancelled { reason });
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use htex_protocol::{
        ResourceRequest, SlotDescriptor, TaskKind, TaskOutput, Timings, WorkerRequest,
    };

    use super::*;

    /// What a stand-in worker was asked: the ids it was given to run, and kills.
    #[derive(Default)]
    pub(crate) struct Record {
        pub sent: Vec<TaskId>,
        pub kills: usize,
    }

    /// A worker pipe that records instead of writing.
    #[derive(Clone, Default)]
    pub(crate) struct FakePipe(pub Rc<RefCell<Record>>);

    impl WorkerPipe for FakePipe {
        fn send(&self, request: &WorkerRequest) {
            if let WorkerRequest::Run(spec) = request {
                self.0.borrow_mut().sent.push(spec.id);
            }
        }

        fn kill(&self) {
            self.0.borrow_mut().kills += 1;
        }
    }

    pub(crate) fn spec(id: TaskId) -> TaskSpec {
        TaskSpec {
            id,
            kind: TaskKind::Function {
                name: "noop".into(),
                args: vec![],
            },
            resources: ResourceRequest::default(),
            priority: 0,
            timeout_ms: None,
            max_retries: 0,
            submitted_us: 0,
        }
    }

    /// `n` CPU slots with idle workers, each recording what it is sent.
    pub(crate) fn idle_slots(n: u32) -> Vec<Slot<FakePipe>> {
        (0..n)
            .map(|i| {
                let mut slot = Slot::new(SlotDescriptor::cpu(i), Vec::new());
                slot.process = Some(FakePipe::default());
                slot.state = SlotState::Idle;
                slot
            })
            .collect()
    }

    /// What the worker answers for `id` after running it for `ran_us`.
    pub(crate) fn done(id: TaskId, ran_us: u64) -> TaskResult {
        TaskResult {
            id,
            outcome: Ok(TaskOutput::Value(vec![0xc0])),
            timings: Timings {
                started_us: 1_000,
                finished_us: 1_000 + ran_us,
                ..Timings::default()
            },
            slot: None,
            attempts: 1,
        }
    }

    fn sent(slot: &Slot<FakePipe>) -> Vec<TaskId> {
        slot.process.as_ref().unwrap().0.borrow().sent.clone()
    }

    fn pending(ids: impl IntoIterator<Item = TaskId>) -> VecDeque<TaskSpec> {
        ids.into_iter().map(spec).collect()
    }

    /// Makes slot 0's worker look short-running: it ran one task in 10 µs, and runs another.
    fn short_and_busy(slots: &mut [Slot<FakePipe>], queue: &mut VecDeque<TaskSpec>, depth: usize) {
        queue.push_front(spec(1000));
        assign(slots, queue, depth);
        assert!(slots[0].finish(&done(1000, 10)).is_some());
        queue.push_front(spec(1001));
        assign(slots, queue, depth);
    }

    #[test]
    fn each_idle_worker_gets_one_task_and_the_rest_wait_without_a_short_history() {
        let mut slots = idle_slots(2);
        let mut queue = pending(1..=5);
        assign(&mut slots, &mut queue, 16);
        assert_eq!((sent(&slots[0]), sent(&slots[1])), (vec![1], vec![2]));
        assert_eq!(
            queue.len(),
            3,
            "no run time known yet: nothing is queued in pipes"
        );
    }

    #[test]
    fn short_tasks_are_queued_in_a_busy_workers_pipe_up_to_the_depth() {
        let mut slots = idle_slots(1);
        let mut queue = pending(1..=10);
        short_and_busy(&mut slots, &mut queue, 4);
        assert_eq!(sent(&slots[0]), [1000, 1001, 1, 2, 3, 4]);
        assert_eq!(slots[0].queued.len(), 4);
        assert_eq!(queue.len(), 6);
        // The answer starts the next queued task without the manager sending anything.
        let ended = slots[0].finish(&done(1001, 10)).unwrap();
        assert_eq!(ended.id, 1001);
        assert!(matches!(&slots[0].state, SlotState::Busy(t) if t.id == 1));
        assert_eq!(slots[0].queued.len(), 3);
    }

    #[test]
    fn depth_zero_never_queues_behind_a_running_task() {
        let mut slots = idle_slots(1);
        let mut queue = pending(1..=10);
        short_and_busy(&mut slots, &mut queue, 0);
        assert_eq!(sent(&slots[0]), [1000, 1001]);
        assert!(slots[0].queued.is_empty());
        assert_eq!(queue.len(), 10);
    }

    #[test]
    fn long_running_slots_take_no_queued_tasks() {
        let mut slots = idle_slots(1);
        let mut queue = pending([1, 2, 3]);
        assign(&mut slots, &mut queue, 16);
        assert!(slots[0].finish(&done(1, 50_000)).is_some());
        assign(&mut slots, &mut queue, 16);
        assert_eq!(sent(&slots[0]), [1, 2]);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn queued_tasks_spread_over_the_pipes_with_the_fewest() {
        let mut slots = idle_slots(2);
        let mut queue = pending([1, 2]);
        assign(&mut slots, &mut queue, 8);
        slots[0].finish(&done(1, 10)).unwrap();
        slots[1].finish(&done(2, 10)).unwrap();
        let mut queue = pending(3..=8);
        assign(&mut slots, &mut queue, 8);
        assert_eq!(sent(&slots[0]), [1, 3, 5, 7]);
        assert_eq!(sent(&slots[1]), [2, 4, 6, 8]);
    }

    #[test]
    fn a_task_takes_the_least_capable_slot_that_fits() {
        let mut gpu = SlotDescriptor::cpu(0);
        gpu.kind = htex_protocol::SlotKind::Gpu;
        gpu.gpu_uuid = Some("GPU-0".into());
        let mut slots = idle_slots(2);
        slots[0].descriptor = gpu;
        let mut queue = pending([1, 2]);
        queue[0].resources.gpu = true;
        assign(&mut slots, &mut queue, 0);
        assert_eq!((sent(&slots[0]), sent(&slots[1])), (vec![1], vec![2]));

        // A CPU task never takes the GPU while the CPU slot is free.
        let mut slots = idle_slots(2);
        slots[0].descriptor.kind = htex_protocol::SlotKind::Gpu;
        let mut queue = pending([7]);
        assign(&mut slots, &mut queue, 0);
        assert_eq!((sent(&slots[0]), sent(&slots[1])), (vec![], vec![7]));
    }

    #[test]
    fn cancels_find_a_task_wherever_it_waits() {
        let mut slots = idle_slots(1);
        let mut queue = pending(1..=4);
        short_and_busy(&mut slots, &mut queue, 2);
        // Running 1001, queued 1 and 2, pending 3 and 4.
        let answered = |r: Option<TaskResult>| {
            matches!(
                r,
                Some(TaskResult {
                    outcome: Err(TaskError::Cancelled { .. }),
                    ..
                })
            )
        };
        assert!(answered(cancel(&mut slots, &mut queue, 4)));
        assert_eq!(queue.len(), 1);
        assert!(answered(cancel(&mut slots, &mut queue, 2)));
        assert!(slots[0].queued[1].answered);
        assert!(cancel(&mut slots, &mut queue, 2).is_none(), "answered once");
        assert!(cancel(&mut slots, &mut queue, 1001).is_none());
        assert_eq!(slots[0].process.as_ref().unwrap().0.borrow().kills, 1);
        assert!(matches!(
            &slots[0].state,
            SlotState::Busy(t) if matches!(t.ending, Some(TaskError::Cancelled { .. }))
        ));
    }
}
