//! The table of accepted, unanswered tasks. Global ids are handed out in order, so the table is a
//! deque indexed by `id - base` rather than a hash map: no hashing, no bucket slack. It is kept
//! in fixed chunks, so a million queued tasks cost their records and no more: a table that
//! doubled would carry up to half its size in spare capacity, and would copy itself (both copies
//! live at once) each time it grew.

use std::collections::VecDeque;

use crate::queue::GlobalId;
use crate::records::TaskRecord;

/// Records per chunk.
const CHUNK: usize = 4096;

pub(crate) struct TaskTable<T = TaskRecord> {
    /// The id of `chunks[0][0]`.
    base: GlobalId,
    /// Every chunk holds `CHUNK` entries but the last; `None` for tasks already answered.
    chunks: VecDeque<Vec<Option<T>>>,
    /// Entries at the front of `chunks[0]` known to be answered (trimmed).
    trimmed: usize,
    live: usize,
}

impl<T> TaskTable<T> {
    /// A table whose first id will be `first`.
    pub fn new(first: GlobalId) -> Self {
        TaskTable {
            base: first,
            chunks: VecDeque::new(),
            trimmed: 0,
            live: 0,
        }
    }

    /// Adds the next task; ids must come in order, one after another.
    pub fn insert(&mut self, id: GlobalId, record: T) {
        assert_eq!(
            id,
            self.base + self.span() as u64,
            "task ids are handed out in order"
        );
        if self.chunks.back().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push_back(Vec::with_capacity(CHUNK));
        }
        self.chunks
            .back_mut()
            .expect("pushed above")
            .push(Some(record));
        self.live += 1;
    }

    pub fn get(&self, id: &GlobalId) -> Option<&T> {
        let (chunk, at) = self.index(*id)?;
        self.chunks[chunk][at].as_ref()
    }

    pub fn get_mut(&mut self, id: &GlobalId) -> Option<&mut T> {
        let (chunk, at) = self.index(*id)?;
        self.chunks[chunk][at].as_mut()
    }

    pub fn remove(&mut self, id: &GlobalId) -> Option<T> {
        let (chunk, at) = self.index(*id)?;
        let record = self.chunks[chunk][at].take()?;
        self.live -= 1;
        self.trim();
        Some(record)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    /// Every live task, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (GlobalId, &T)> {
        let base = self.base;
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .skip(self.trimmed)
            .filter_map(move |(i, r)| r.as_ref().map(|r| (base + i as u64, r)))
    }

    /// Entries from `base` to the newest, answered or not.
    fn span(&self) -> usize {
        match self.chunks.back() {
            Some(last) => (self.chunks.len() - 1) * CHUNK + last.len(),
            None => 0,
        }
    }

    /// Drops answered entries from the front, and each chunk once all of it is answered.
    fn trim(&mut self) {
        while let Some(front) = self.chunks.front() {
            while self.trimmed < front.len() && front[self.trimmed].is_none() {
                self.trimmed += 1;
            }
            // The last chunk stays while it is not full: new ids go on in it.
            if self.trimmed < CHUNK {
                break;
            }
            self.chunks.pop_front();
            self.base += CHUNK as u64;
            self.trimmed = 0;
        }
    }

    fn index(&self, id: GlobalId) -> Option<(usize, usize)> {
        let i = id.checked_sub(self.base)? as usize;
        (i >= self.trimmed && i < self.span()).then_some((i / CHUNK, i % CHUNK))
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

    #[test]
    fn spans_chunks_and_frees_the_answered_ones() {
        let n = 3 * CHUNK as u64 + 10;
        let mut table: TaskTable<u64> = TaskTable::new(7);
        for id in 7..7 + n {
            table.insert(id, id * 2);
        }
        assert_eq!(table.chunks.len(), 4);
        assert_eq!(
            table.get(&(7 + CHUNK as u64)),
            Some(&((7 + CHUNK as u64) * 2))
        );
        // Answer everything but one task in the second chunk, out of order.
        let keep = 7 + CHUNK as u64 + 5;
        for id in (7..7 + n).rev().filter(|&id| id != keep) {
            assert_eq!(table.remove(&id), Some(id * 2));
        }
        assert_eq!(table.len(), 1);
        assert_eq!(table.chunks.len(), 3, "the first chunk was freed");
        assert_eq!(table.iter().collect::<Vec<_>>(), [(keep, &(keep * 2))]);
        assert_eq!(table.remove(&keep), Some(keep * 2));
        assert_eq!((table.len(), table.chunks.len()), (0, 1));
        // Ids go on after the last one given out; nothing old is reachable.
        table.insert(7 + n, 1);
        assert_eq!(table.get(&(7 + n)), Some(&1));
        assert_eq!(table.get(&keep), None);
        assert_eq!(table.iter().count(), 1);
    }
}
