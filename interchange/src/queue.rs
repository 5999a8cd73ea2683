//! The pending-task queue: highest priority first, then oldest first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The interchange's own task number, unique across clients.
pub(crate) type GlobalId = u64;

/// Task numbers ordered by (priority, age). Entries whose task has since been cancelled stay in
/// the heap and are skipped when popped: the task table is the truth.
#[derive(Default)]
pub(crate) struct TaskQueue {
    heap: BinaryHeap<(i32, Reverse<GlobalId>)>,
}

impl TaskQueue {
    pub fn push(&mut self, priority: i32, id: GlobalId) {
        self.heap.push((priority, Reverse(id)));
    }

    pub fn pop(&mut self) -> Option<GlobalId> {
        self.heap.pop().map(|(_, Reverse(id))| id)
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
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
    }
}
