//! The pending-task queue: highest priority first, then oldest first.

use std::collections::{BTreeMap, VecDeque};

/// The interchange's own task number, unique across clients.
pub(crate) type GlobalId = u64;

/// Task numbers ordered by (priority, age): one FIFO per priority, so that the common case (one
/// priority, ids in order) pushes and pops in constant time. Entries whose task has since been
/// cancelled stay and are skipped when popped: the task table is the truth.
#[derive(Default)]
pub(crate) struct TaskQueue {
    by_priority: BTreeMap<i32, VecDeque<GlobalId>>,
}

impl TaskQueue {
    pub fn push(&mut self, priority: i32, id: GlobalId) {
        let fifo = self.by_priority.entry(priority).or_default();
        match fifo.back() {
            Some(&last) if last > id => {
                // A task put back (its manager was lost) goes before younger ones.
                let at = fifo.partition_point(|&queued| queued < id);
                fifo.insert(at, id);
            }
            _ => fifo.push_back(id),
        }
    }

    pub fn pop(&mut self) -> Option<GlobalId> {
        let mut highest = self.by_priority.last_entry()?;
        let id = highest.get_mut().pop_front();
        if highest.get().is_empty() {
            highest.remove();
        }
        id
    }

    pub fn is_empty(&self) -> bool {
        self.by_priority.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_age() {
        let mut q = TaskQueue::default();
        for (prio, id) in [(0, 3), (5, 4), (0, 1), (5, 9), (-1, 0)] {
            q.push(prio, id);
        }
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![4, 9, 1, 3, 0]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_task_put_back_goes_before_younger_ones() {
        let mut q = TaskQueue::default();
        for id in [10, 11, 12] {
            q.push(0, id);
        }
        q.push(0, 5);
        q.push(0, 11);
        q.push(0, 20);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![5, 10, 11, 11, 12, 20]);
    }
}
