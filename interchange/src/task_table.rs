//! The table of accepted, unanswered tasks. Global ids are handed out in order, so the table is a
//! deque indexed by `id - base` rather than a hash map: no hashing, no bucket slack. It is kept
//! in fixed chunks, so a million queued tasks cost their records and no more: a table that
//! doubled would carry up to half its size in spare capacity, and would copy itself (both copies
//! live at once) each time it grew. A chunk whose tasks are all answered gives its memory back
//! wherever it is (a couple of emptied buffers are kept for the next chunks), so one old task
//! still running does not pin the records of every task after it.

use std::collections::VecDeque;

use crate::records::{GlobalId, TaskRecord};

/// Records per chunk.
const CHUNK: usize = 4096;

struct Chunk<T> {
    /// `CHUNK` entries once full (the last chunk fills as ids are handed out); `None` for tasks
    /// already answered; emptied (no allocation) once every entry of a full chunk is answered.
    entries: Vec<Option<T>>,
    live: usize,
}

pub(crate) struct TaskTable<T = TaskRecord> {
    /// The id of `chunks[0]`'s first entry.
    base: GlobalId,
    chunks: VecDeque<Chunk<T>>,
    /// Entries handed out from `base` on, answered or not.
    span: usize,
    live: usize,
    /// Emptied chunks' buffers, kept for the next chunks (at most `SPARE_CHUNKS`): a fresh
    /// allocation of a chunk's size is fresh pages, faulted in one by one as it fills.
    spare: Vec<Vec<Option<T>>>,
}

/// Emptied chunk buffers kept for reuse.
const SPARE_CHUNKS: usize = 2;

impl<T> TaskTable<T> {
    /// A table whose first id will be `first`.
    pub fn new(first: GlobalId) -> Self {
        TaskTable {
            base: first,
            chunks: VecDeque::new(),
            span: 0,
            live: 0,
            spare: Vec::new(),
        }
    }

    /// The id the next task must have.
    pub fn next_id(&self) -> GlobalId {
        self.base + self.span as u64
    }

    /// Adds the next task; ids must come in order, one after another.
    pub fn insert(&mut self, id: GlobalId, record: T) {
        assert_eq!(id, self.next_id(), "task ids are handed out in order");
        if self.span.is_multiple_of(CHUNK) {
            let entries = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(CHUNK));
            self.chunks.push_back(Chunk { entries, live: 0 });
        }
        let chunk = self.chunks.back_mut().expect("pushed above");
        chunk.entries.push(Some(record));
        chunk.live += 1;
        self.span += 1;
        self.live += 1;
    }

    /// Leaves the ids from the next one up to `id` unused (a table restored from a journal has
    /// gaps where tasks were answered). Whole chunks of unused ids allocate nothing.
    pub fn skip_to(&mut self, id: GlobalId) {
        assert!(id >= self.next_id(), "ids only go forward");
        if self.live == 0 {
            self.chunks.clear();
            self.base = id;
            self.span = 0;
            return;
        }
        while self.next_id() < id {
            let in_chunk = self.span % CHUNK;
            if in_chunk == 0 && id - self.next_id() >= CHUNK as u64 {
                self.chunks.push_back(Chunk {
                    entries: Vec::new(),
                    live: 0,
                });
                self.span += CHUNK;
                continue;
            }
            if in_chunk == 0 {
                let entries = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(CHUNK));
                self.chunks.push_back(Chunk { entries, live: 0 });
            }
            self.chunks.back_mut().expect("a chunk").entries.push(None);
            self.span += 1;
        }
    }

    pub fn get(&self, id: &GlobalId) -> Option<&T> {
        let (chunk, at) = self.index(*id)?;
        self.chunks[chunk].entries.get(at)?.as_ref()
    }

    pub fn get_mut(&mut self, id: &GlobalId) -> Option<&mut T> {
        let (chunk, at) = self.index(*id)?;
        self.chunks[chunk].entries.get_mut(at)?.as_mut()
    }

    pub fn remove(&mut self, id: &GlobalId) -> Option<T> {
        let (index, at) = self.index(*id)?;
        let chunk = &mut self.chunks[index];
        let record = chunk.entries.get_mut(at)?.take()?;
        chunk.live -= 1;
        self.live -= 1;
        if chunk.live == 0 && chunk.entries.len() == CHUNK {
            let mut entries = std::mem::take(&mut chunk.entries);
            if self.spare.len() < SPARE_CHUNKS {
                entries.clear();
                self.spare.push(entries);
            }
            self.trim();
        }
        Some(record)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    /// Every live task, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (GlobalId, &T)> {
        let base = self.base;
        self.chunks.iter().enumerate().flat_map(move |(c, chunk)| {
            let first = base + (c * CHUNK) as u64;
            chunk
                .entries
                .iter()
                .enumerate()
                .filter_map(move |(i, r)| r.as_ref().map(|r| (first + i as u64, r)))
        })
    }

    /// Drops emptied chunks from the front; the last chunk stays, as new ids go on in it.
    fn trim(&mut self) {
        while self.chunks.len() > 1 && self.chunks[0].live == 0 {
            self.chunks.pop_front();
            self.base += CHUNK as u64;
            self.span -= CHUNK;
        }
    }

    fn index(&self, id: GlobalId) -> Option<(usize, usize)> {
        let i = id.checked_sub(self.base)? as usize;
        (i < self.span).then_some((i / CHUNK, i % CHUNK))
    }

    /// Chunks holding memory, for tests.
    #[cfg(test)]
    fn allocated_chunks(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| c.entries.capacity() > 0)
            .count()
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
        let keep = 7 + CHUNK as u64 + 5;
        for id in (7..7 + n).rev().filter(|&id| id != keep) {
            assert_eq!(table.remove(&id), Some(id * 2));
        }
        assert_eq!(table.len(), 1);
        assert_eq!(table.chunks.len(), 3, "the first chunk was dropped");
        assert_eq!(
            table.allocated_chunks(),
            2,
            "the third chunk gave its memory back"
        );
        assert_eq!(table.iter().collect::<Vec<_>>(), [(keep, &(keep * 2))]);
        assert_eq!(table.remove(&keep), Some(keep * 2));
        assert_eq!((table.len(), table.chunks.len()), (0, 1));
        table.insert(7 + n, 1);
        assert_eq!(table.get(&(7 + n)), Some(&1));
        assert_eq!(table.get(&keep), None);
        assert_eq!(table.iter().count(), 1);
    }

    #[test]
    fn skipped_ids_are_unused_and_whole_skipped_chunks_allocate_nothing() {
        let mut table: TaskTable<u64> = TaskTable::new(1);
        table.skip_to(100);
        table.insert(100, 1);
        table.skip_to(105);
        table.insert(105, 2);
        let far = 105 + 50 * CHUNK as u64;
        table.skip_to(far);
        table.insert(far, 3);
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(&101), None);
        assert_eq!(table.get(&far), Some(&3));
        assert_eq!(
            table.iter().map(|(id, v)| (id, *v)).collect::<Vec<_>>(),
            [(100, 1), (105, 2), (far, 3)]
        );
        assert!(
            table.allocated_chunks() <= 2,
            "{}",
            table.allocated_chunks()
        );
        table.insert(far + 1, 4);
        assert_eq!(table.remove(&100), Some(1));
        assert_eq!(table.remove(&105), Some(2));
        assert_eq!(table.iter().count(), 2);
    }

    /// One task left unanswered while a million after it come and go: the table holds the
    /// chunk of that task and the one being filled, not every chunk since.
    #[test]
    fn one_old_task_does_not_pin_the_memory_of_later_ones() {
        let mut table: TaskTable<u64> = TaskTable::new(1);
        table.insert(1, 0);
        for id in 2..1_000_000 {
            table.insert(id, id);
            table.remove(&id);
        }
        assert_eq!(table.len(), 1);
        assert!(
            table.allocated_chunks() <= 2,
            "{} chunks",
            table.allocated_chunks()
        );
        assert_eq!(table.get(&1), Some(&0));
    }
}
