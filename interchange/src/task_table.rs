//! The table of accepted, unanswered tasks. Global ids are handed out in order, so the table is a
//! deque indexed by `id - base` rather than a hash map: no hashing, no bucket slack, and a million
//! queued tasks cost little more than their records.

use std::collections::VecDeque;

use crate::queue::GlobalId;
use crate::records::TaskRecord;

pub(crate) struct TaskTable<T = TaskRecord> {
    /// The id of `slots[0]`.
    base: GlobalId,
    /// `None` for tasks already answered; trimmed from the front as the oldest are answered.
    slots: VecDeque<Option<T>>,
    live: usize,
}

impl<T> TaskTable<T> {
    /// A table whose first id will be `first`.
    pub fn new(first: GlobalId) -> Self {
        TaskTable {
            base: first,
            slots: VecDeque::new(),
            live: 0,
        }
    }

    /// Adds the next task; ids must come in order, one after another.
    pub fn insert(&mut self, id: GlobalId, record: T) {
        assert_eq!(
            id,
            self.base + self.slots.len() as u64,
            "task ids are handed out in order"
        );
        self.slots.push_back(Some(record));
        self.live += 1;
    }

    pub fn get(&self, id: &GlobalId) -> Option<&T> {
        self.index(*id).and_then(|i| self.slots[i].as_ref())
    }

    pub fn get_mut(&mut self, id: &GlobalId) -> Option<&mut T> {
        self.index(*id).and_then(|i| self.slots[i].as_mut())
    }

    pub fn remove(&mut self, id: &GlobalId) -> Option<T> {
        let record = self.index(*id).and_then(|i| self.slots[i].take())?;
        self.live -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(record)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    /// Every live task, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (GlobalId, &T)> {
        let base = self.base;
        self.slots
            .iter()
            .enumerate()
            .filter_map(move |(i, r)| r.as_ref().map(|r| (base + i as u64, r)))
    }

    fn index(&self, id: GlobalId) -> Option<usize> {
        let i = id.checked_sub(self.base)? as usize;
        (i < self.slots.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_tasks_by_id_and_trims_answered_ones() {
        let mut table: TaskTable<&str> = TaskTable::new(1);
        for (id, name) in [(1, "a"), (2, "b"), (3, "c")] {
            table.insert(id, name);
        }
        assert_eq!(table.remove(&2), Some("b"));
        assert_eq!(
            (table.len(), table.get(&2), table.get(&3)),
            (2, None, Some(&"c"))
        );
        assert_eq!(table.remove(&1), Some("a"));
        // 1 and 2 are gone from the front; 3 stays reachable and new ids follow on.
        table.insert(4, "d");
        assert_eq!(table.iter().map(|(id, _)| id).collect::<Vec<_>>(), [3, 4]);
        assert_eq!((table.get(&0), table.get(&9)), (None, None));
        assert_eq!(table.remove(&1), None);
        assert_eq!(table.len(), 2);
    }
}
