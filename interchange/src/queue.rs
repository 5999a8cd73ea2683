//! A queue of one resource class's tasks: highest priority first, then oldest first.

use std::collections::{BTreeMap, VecDeque};

use crate::records::GlobalId;

/// Task numbers ordered by (priority, age): one FIFO per priority, so that the common case (one
/// priority, ids in order) pushes and pops in constant time. Entries whose task has since been
/// cancelled or taken out another way stay and are skipped when met: the task table is the
/// truth.
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

    /// Entries, stale ones included: at least the queued tasks of the class.
    pub fn len(&self) -> usize {
        self.by_priority.values().map(VecDeque::len).sum()
    }

    /// The first entry, with its priority.
    pub fn peek(&self) -> Option<(i32, GlobalId)> {
        let (&priority, fifo) = self.by_priority.last_key_value()?;
        fifo.front().map(|&id| (priority, id))
    }

    pub fn pop(&mut self) -> Option<GlobalId> {
        let mut highest = self.by_priority.last_entry()?;
        let id = highest.get_mut().pop_front();
        if highest.get().is_empty() {
            highest.remove();
        }
        id
    }

    /// Takes out, of every priority, the entries from the front that `expired` says are due
    /// (entries are oldest first within a priority), stopping at the first that is not.
    pub fn drain_front_while(
        &mut self,
        mut expired: impl FnMut(GlobalId) -> bool,
    ) -> Vec<GlobalId> {
        let mut taken = Vec::new();
        self.by_priority.retain(|_, fifo| {
            while let Some(&id) = fifo.front() {
                if !expired(id) {
                    break;
                }
                taken.push(id);
                fifo.pop_front();
            }
            !fifo.is_empty()
        });
        taken
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
        assert_eq!(q.peek(), Some((5, 4)));
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![4, 9, 1, 3, 0]);
        assert_eq!(q.peek(), None);
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

    #[test]
    fn drains_the_due_front_of_each_priority() {
        let mut q = TaskQueue::default();
        for (prio, id) in [(0, 1), (0, 2), (0, 9), (3, 4), (3, 8)] {
            q.push(prio, id);
        }
        let mut due = q.drain_front_while(|id| id < 5);
        due.sort();
        assert_eq!(due, [1, 2, 4]);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, [8, 9]);
    }
}
