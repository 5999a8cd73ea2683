//! The monitoring database: a SQLite file in WAL mode (readers never block the writer, nor it
//! them), written by one thread from the event stream in batched transactions. The schema is
//! `schema.sql` (version [`SCHEMA_VERSION`]); a file of another version is refused, not changed.

use std::path::{Path, PathBuf};

use htex_protocol::format_cpu_list;
use rusqlite::{params, Connection, OptionalExtension};

use crate::event::{Attempt, Ended, Event, Registered, Submitted};

/// The schema this htex writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

pub(crate) const SCHEMA: &str = include_str!("schema.sql");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the monitoring database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the monitoring database {path} has schema version {found}; this htex writes version \
         {SCHEMA_VERSION}: give --monitoring a new file"
    )]
    Version { path: PathBuf, found: i64 },
    #[error("cannot write to the monitoring database {path}: {source}")]
    Write {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// Who wrote a run: the `runs` row.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub started_us: u64,
    pub interchange: String,
    pub host: String,
    pub pid: u32,
    pub htex_version: String,
}

/// Tasks that end within this long of being accepted are written once, at their end; older
/// ones are written at the next commit (readers see them in flight) and updated at their end.
const IN_FLIGHT_WRITE_AFTER_US: u64 = 1_000_000;

/// An open monitoring database and the run this interchange writes into it.
pub struct Database {
    path: PathBuf,
    conn: Connection,
    run_id: i64,
    /// Accepted tasks not written yet, by task id, oldest first.
    pending: std::collections::BTreeMap<u64, Submitted>,
    in_transaction: bool,
}

impl Database {
    /// Opens (or creates) the file, checks its schema and starts a new run in it.
    pub fn open(path: &Path, run: &RunInfo) -> Result<Database, DbError> {
        let open_error = |source| DbError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        // WAL: readers see the last commit while the writer goes on. NORMAL: a commit is not
        // synced (the WAL is, at checkpoints), so a power cut may lose the last commits but
        // never corrupts the file; the journal, not this database, is what keeps tasks.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -32768;",
        )
        .map_err(open_error)?;
        conn.execute_batch(SCHEMA).map_err(open_error)?;
        let found: Option<i64> = conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .optional()
            .map_err(open_error)?
            .flatten();
        match found {
            None => {
                conn.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(open_error)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(found) => {
                return Err(DbError::Version {
                    path: path.to_path_buf(),
                    found,
                })
            }
        }
        conn.execute(
            "INSERT INTO runs (started_us, interchange, host, pid, htex_version)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                run.started_us as i64,
                run.interchange,
                run.host,
                run.pid,
                run.htex_version
            ],
        )
        .map_err(open_error)?;
        let run_id = conn.last_insert_rowid();
        Ok(Database {
            path: path.to_path_buf(),
            conn,
            run_id,
            pending: std::collections::BTreeMap::new(),
            in_transaction: false,
        })
    }

    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a batch of events into the open transaction (one is begun if none is).
    pub fn apply(&mut self, events: &[Event]) -> Result<(), DbError> {
        self.begin().map_err(|e| self.write_error(e))?;
        for event in events {
            self.apply_one(event).map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    /// Opens the transaction writes go into, unless one is open.
    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN")?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Commits what `apply` wrote: readers see it from now on, with the tasks in flight for
    /// over a second.
    pub fn commit(&mut self) -> Result<(), DbError> {
        let before = htex_protocol::now_us().saturating_sub(IN_FLIGHT_WRITE_AFTER_US);
        self.write_pending(before)
            .map_err(|e| self.write_error(e))?;
        if self.in_transaction {
            self.in_transaction = false;
            self.conn
                .execute_batch("COMMIT")
                .map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    /// Ends the run: its end time and the events that were dropped, committed.
    pub fn finish(&mut self, ended_us: u64, dropped: u64) -> Result<(), DbError> {
        self.write_pending(u64::MAX)
            .map_err(|e| self.write_error(e))?;
        self.commit()?;
        self.conn
            .execute(
                "UPDATE runs SET ended_us = ?1, events_dropped = ?2 WHERE run_id = ?3",
                params![ended_us as i64, dropped as i64, self.run_id],
            )
            .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    /// Records how many events were dropped so far (readers of a live run see it).
    pub fn set_dropped(&mut self, dropped: u64) -> Result<(), DbError> {
        self.conn
            .prepare_cached("UPDATE runs SET events_dropped = ?1 WHERE run_id = ?2")
            .and_then(|mut s| s.execute(params![dropped as i64, self.run_id]))
            .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    fn write_error(&self, source: rusqlite::Error) -> DbError {
        DbError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn apply_one(&mut self, event: &Event) -> rusqlite::Result<()> {
        match event {
            Event::ClientConnected { client, name } => self
                .conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO clients (run_id, client_key, name) VALUES (?1,?2,?3)",
                )?
                .execute(params![self.run_id, client, name])
                .map(drop),
            Event::Submitted(task) => self.submitted(task),
            Event::AttemptEnded { task, attempt } => self.interrupted(*task, attempt),
            Event::Ended(ended) => self.ended(ended),
            Event::ManagerRegistered(manager) => self.registered(manager),
            Event::ManagerDraining { manager, .. } => self
                .conn
                .prepare_cached(
                    "UPDATE managers SET state = 'draining' WHERE run_id = ?1 AND manager_key = ?2",
                )?
                .execute(params![self.run_id, *manager as i64])
                .map(drop),
            Event::ManagerEnded {
                manager,
                at_us,
                lost,
                reason,
            } => self
                .conn
                .prepare_cached(
                    "UPDATE managers SET state = ?1, ended_us = ?2, reason = ?3
                     WHERE run_id = ?4 AND manager_key = ?5",
                )?
                .execute(params![
                    if *lost { "lost" } else { "gone" },
                    *at_us as i64,
                    reason,
                    self.run_id,
                    *manager as i64
                ])
                .map(drop),
            Event::ManagerReport { manager, report } => self.report(*manager, report),
            Event::Queued { .. } | Event::Dispatched { .. } | Event::Gauges(_) => Ok(()),
        }
    }

    fn submitted(&mut self, task: &Submitted) -> rusqlite::Result<()> {
        self.pending.insert(task.task, task.clone());
        Ok(())
    }

    /// Writes the pending tasks accepted before `before_us`, as in flight.
    fn write_pending(&mut self, before_us: u64) -> rusqlite::Result<()> {
        let old: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, t)| t.queued_us < before_us)
            .map(|(&id, _)| id)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        self.begin()?;
        for id in old {
            if let Some(task) = self.pending.remove(&id) {
                self.insert_task(&task, None)?;
            }
        }
        Ok(())
    }

    /// A task's row (keyed by `run_id << 40 | task_id`), with its end when it has one.
    fn insert_task(&self, task: &Submitted, ended: Option<&Ended>) -> rusqlite::Result<()> {
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO tasks (task_key, client_key, client_task_id, label, kind,
             priority, submitted_us, queued_us, restored, ended_us, outcome, error_kind, error,
             attempts, manager_key, slot, dispatched_us, started_us, finished_us)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19)",
        )?;
        // Bound one by one: a slice of 19 `dyn ToSql` costs as much as the insert itself.
        insert.raw_bind_parameter(1, (self.run_id << 40) | task.task as i64)?;
        insert.raw_bind_parameter(2, task.client)?;
        insert.raw_bind_parameter(3, task.client_task as i64)?;
        insert.raw_bind_parameter(4, &*task.label)?;
        insert.raw_bind_parameter(5, task.kind.as_str())?;
        insert.raw_bind_parameter(6, task.priority)?;
        insert.raw_bind_parameter(7, task.submitted_us as i64)?;
        insert.raw_bind_parameter(8, task.queued_us as i64)?;
        insert.raw_bind_parameter(9, task.restored)?;
        bind_end(&mut insert, 10, ended)?;
        insert.raw_execute().map(drop)
    }

    fn interrupted(&mut self, task: u64, a: &Attempt) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO interrupted_attempts (run_id, task_id, attempt,
                 manager_key, slot, dispatched_us, ended_us, outcome)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
            )?
            .execute(params![
                self.run_id,
                task as i64,
                a.attempt,
                a.manager as i64,
                a.slot,
                a.dispatched_us as i64,
                a.ended_us as i64,
                a.outcome.as_str(),
            ])
            .map(drop)
    }

    fn ended(&mut self, ended: &Ended) -> rusqlite::Result<()> {
        if let Some(task) = self.pending.remove(&ended.task) {
            return self.insert_task(&task, Some(ended));
        }
        // Written in flight (or its acceptance was among dropped events): its end updates it.
        let mut update = self.conn.prepare_cached(
            "UPDATE tasks SET ended_us = ?1, outcome = ?2, error_kind = ?3, error = ?4,
             attempts = ?5, manager_key = ?6, slot = ?7, dispatched_us = ?8, started_us = ?9,
             finished_us = ?10 WHERE task_key = ?11",
        )?;
        bind_end(&mut update, 1, Some(ended))?;
        update.raw_bind_parameter(11, (self.run_id << 40) | ended.task as i64)?;
        update.raw_execute().map(drop)
    }

    fn registered(&mut self, m: &Registered) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO managers (run_id, manager_key, manager_id, hostname,
                 block_id, pid, registered_us, state) VALUES (?1,?2,?3,?4,?5,?6,?7,'active')",
            )?
            .execute(params![
                self.run_id,
                m.manager as i64,
                m.manager_id,
                m.hostname,
                m.block_id,
                m.pid,
                m.at_us as i64
            ])?;
        let mut insert = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO slots (run_id, manager_key, slot, kind, gpu_uuid, gpu_index,
             mps_percentage, memory_bytes, mig_profile, sm_count, cpus)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
        )?;
        for s in &m.slots {
            insert.execute(params![
                self.run_id,
                m.manager as i64,
                s.index,
                s.kind.as_str(),
                s.gpu_uuid,
                s.gpu_index,
                s.mps_percentage,
                s.memory_bytes.map(|b| b as i64),
                s.mig_profile,
                s.sm_count,
                (!s.cpus.is_empty()).then(|| format_cpu_list(&s.cpus)),
            ])?;
        }
        Ok(())
    }

    fn report(&mut self, manager: u64, r: &htex_protocol::ManagerReport) -> rusqlite::Result<()> {
        let (run, key) = (self.run_id, manager as i64);
        let mut events = self.conn.prepare_cached(
            "INSERT INTO slot_events (run_id, manager_key, slot, at_us, event, pid, detail)
             VALUES (?1,?2,?3,?4,?5,?6,?7)",
        )?;
        for e in &r.slot_events {
            events.execute(params![
                run,
                key,
                e.slot,
                e.at_us as i64,
                e.kind.as_str(),
                e.pid,
                e.detail
            ])?;
        }
        let mut gpus = self.conn.prepare_cached(
            "INSERT INTO gpu_samples (run_id, manager_key, gpu_uuid, at_us, utilization_ratio,
             sm_activity_ratio, memory_used_bytes, memory_total_bytes)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
        )?;
        for g in &r.gpus {
            gpus.execute(params![
                run,
                key,
                g.gpu_uuid,
                g.at_us as i64,
                g.utilization_ratio,
                g.sm_activity_ratio,
                g.memory_used_bytes.map(|b| b as i64),
                g.memory_total_bytes.map(|b| b as i64)
            ])?;
        }
        let mut slots = self.conn.prepare_cached(
            "INSERT INTO slot_samples (run_id, manager_key, slot, at_us, gpu_memory_used_bytes)
             VALUES (?1,?2,?3,?4,?5)",
        )?;
        for s in &r.slot_gpu_memory {
            slots.execute(params![run, key, s.slot, r.at_us as i64, s.bytes as i64])?;
        }
        Ok(())
    }
}

/// Binds an end's ten columns from `first` on: ended_us, outcome, error_kind, error, attempts,
/// and the last attempt's manager_key, slot, dispatched_us, started_us, finished_us (all NULL
/// for a task not ended, or ended with no manager holding it).
fn bind_end(
    statement: &mut rusqlite::CachedStatement<'_>,
    first: usize,
    ended: Option<&Ended>,
) -> rusqlite::Result<()> {
    let (outcome, kind, error) = match ended.map(|e| &e.error) {
        None => (None, None, None),
        Some(None) => (Some("completed"), None, None),
        Some(Some((kind, error))) => (Some("failed"), Some(*kind), Some(error.as_str())),
    };
    let last = ended.and_then(|e| e.last.as_ref());
    let time = |us: u64| (us != 0).then_some(us as i64);
    statement.raw_bind_parameter(first, ended.map(|e| e.ended_us as i64))?;
    statement.raw_bind_parameter(first + 1, outcome)?;
    statement.raw_bind_parameter(first + 2, kind)?;
    statement.raw_bind_parameter(first + 3, error)?;
    statement.raw_bind_parameter(first + 4, ended.map_or(0, |e| e.attempts))?;
    statement.raw_bind_parameter(first + 5, last.map(|a| a.manager as i64))?;
    statement.raw_bind_parameter(first + 6, last.and_then(|a| a.slot))?;
    statement.raw_bind_parameter(first + 7, last.and_then(|a| time(a.dispatched_us)))?;
    statement.raw_bind_parameter(first + 8, last.and_then(|a| time(a.started_us)))?;
    statement.raw_bind_parameter(first + 9, last.and_then(|a| time(a.finished_us)))?;
    Ok(())
}

/// What a run in a monitoring database holds, counted (`htex bench --monitoring`, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub run_id: i64,
    pub tasks: u64,
    /// Tasks with an end.
    pub ended: u64,
    pub attempts: u64,
    pub events_dropped: u64,
}

/// Counts the latest run of a database, read-only (while its writer goes on, too).
pub fn count_latest_run(path: &Path) -> Result<RunCounts, DbError> {
    let fail = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(fail)?;
    conn.query_row(
        "SELECT r.run_id, r.events_dropped,
                (SELECT count(*) FROM tasks t WHERE t.run_id = r.run_id),
                (SELECT count(*) FROM tasks t WHERE t.run_id = r.run_id AND t.ended_us IS NOT NULL),
                (SELECT count(*) FROM attempts a WHERE a.run_id = r.run_id)
         FROM runs r ORDER BY r.run_id DESC LIMIT 1",
        [],
        |r| {
            Ok(RunCounts {
                run_id: r.get(0)?,
                events_dropped: r.get::<_, i64>(1)? as u64,
                tasks: r.get::<_, i64>(2)? as u64,
                ended: r.get::<_, i64>(3)? as u64,
                attempts: r.get::<_, i64>(4)? as u64,
            })
        },
    )
    .map_err(fail)
}
