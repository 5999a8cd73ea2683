//! Reads one run of a monitoring database into memory: the rows the report draws, and the span
//! of time it covers.

use rusqlite::{Connection, Row};

/// Everything the report shows of one run.
pub(super) struct RunData {
    pub run: RunRow,
    pub managers: Vec<ManagerRow>,
    pub slots: Vec<SlotRow>,
    pub tasks: Vec<TaskRow>,
    pub attempts: Vec<AttemptRow>,
    pub gpu_samples: Vec<GpuSample>,
    pub slot_samples: Vec<SlotSample>,
    /// The time the figures start at (µs): the run's start.
    pub t0: i64,
    /// The time they end at: the run's end, or the last time a row mentions when it has none
    /// (still running, or killed), whichever is later; always after `t0`.
    pub t1: i64,
}

impl RunData {
    /// Seconds since the run started, for a time in µs.
    pub fn seconds(&self, us: i64) -> f64 {
        (us - self.t0) as f64 / 1e6
    }

    /// The run's length in seconds, the x range of every figure.
    pub fn span_s(&self) -> f64 {
        self.seconds(self.t1)
    }
}

pub(super) struct RunRow {
    pub run_id: i64,
    pub started_us: i64,
    pub ended_us: Option<i64>,
    pub interchange: String,
    pub host: String,
    pub pid: i64,
    pub htex_version: String,
    pub events_dropped: i64,
}

pub(super) struct ManagerRow {
    pub key: i64,
    pub manager_id: String,
    pub hostname: String,
    pub registered_us: i64,
    pub state: String,
    pub ended_us: Option<i64>,
    pub reason: Option<String>,
}

pub(super) struct SlotRow {
    pub manager_key: i64,
    pub slot: i64,
    pub kind: String,
    pub gpu_uuid: Option<String>,
    pub gpu_index: Option<i64>,
    pub mps_percentage: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub mig_profile: Option<String>,
    pub cpus: Option<String>,
}

pub(super) struct TaskRow {
    pub task_id: i64,
    pub queued_us: i64,
    pub ended_us: Option<i64>,
    pub outcome: Option<String>,
    pub error_kind: Option<String>,
    pub restored: bool,
    /// When its attempt in flight was dispatched, for a task still in flight at a manager:
    /// that attempt is in no `attempts` row yet.
    pub in_flight_since: Option<i64>,
}

/// An attempt, with its task's client id and label (absent if the task row is missing).
pub(super) struct AttemptRow {
    pub task_id: i64,
    pub attempt: i64,
    pub manager_key: i64,
    pub slot: Option<i64>,
    pub dispatched_us: i64,
    pub started_us: Option<i64>,
    pub finished_us: Option<i64>,
    pub ended_us: i64,
    pub outcome: String,
    pub error_kind: Option<String>,
    pub client_task_id: Option<i64>,
    pub label: Option<String>,
}

impl AttemptRow {
    /// Where its bar goes (µs): from its start on the worker, else its dispatch, to its finish
    /// on the worker, else the moment the interchange learned its end.
    pub fn span(&self) -> (i64, i64) {
        let start = self.started_us.unwrap_or(self.dispatched_us);
        let end = self.finished_us.unwrap_or(self.ended_us);
        (start, end.max(start))
    }
}

pub(super) struct GpuSample {
    pub manager_key: i64,
    pub gpu_uuid: String,
    pub at_us: i64,
    pub utilization_ratio: Option<f64>,
    pub sm_activity_ratio: Option<f64>,
    pub memory_used_bytes: Option<i64>,
    pub memory_total_bytes: Option<i64>,
}

pub(super) struct SlotSample {
    pub manager_key: i64,
    pub slot: i64,
    pub at_us: i64,
    pub gpu_memory_used_bytes: Option<i64>,
}

/// Reads run `run_id` (which exists) from `conn`.
pub(super) fn load(conn: &Connection, run_id: i64) -> rusqlite::Result<RunData> {
    let run = conn.query_row(
        "SELECT run_id, started_us, ended_us, interchange, host, pid, htex_version,
         events_dropped FROM runs WHERE run_id = ?1",
        [run_id],
        |r| {
            Ok(RunRow {
                run_id: r.get(0)?,
                started_us: r.get(1)?,
                ended_us: r.get(2)?,
                interchange: r.get(3)?,
                host: r.get(4)?,
                pid: r.get(5)?,
                htex_version: r.get(6)?,
                events_dropped: r.get(7)?,
            })
        },
    )?;
    let mut data = RunData {
        t0: run.started_us,
        t1: run.started_us,
        run,
        managers: select(conn, MANAGERS, run_id, manager)?,
        slots: select(conn, SLOTS, run_id, slot)?,
        tasks: select(conn, TASKS, run_id, task)?,
        attempts: select(conn, ATTEMPTS, run_id, attempt)?,
        gpu_samples: select(conn, GPU_SAMPLES, run_id, gpu_sample)?,
        slot_samples: select(conn, SLOT_SAMPLES, run_id, slot_sample)?,
    };
    data.t1 = end_of(&data);
    Ok(data)
}

fn select<T>(
    conn: &Connection,
    sql: &str,
    run_id: i64,
    row: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut statement = conn.prepare(sql)?;
    let rows = statement.query_map([run_id], row)?.collect();
    rows
}

fn end_of(data: &RunData) -> i64 {
    let times = data
        .attempts
        .iter()
        .flat_map(|a| [Some(a.ended_us), a.finished_us])
        .chain(
            data.tasks
                .iter()
                .flat_map(|t| [Some(t.queued_us), t.ended_us]),
        )
        .chain(
            data.managers
                .iter()
                .flat_map(|m| [Some(m.registered_us), m.ended_us]),
        )
        .chain(data.gpu_samples.iter().map(|s| Some(s.at_us)))
        .chain(data.slot_samples.iter().map(|s| Some(s.at_us)))
        .chain([data.run.ended_us]);
    let last = times.flatten().max().unwrap_or(data.t0);
    // A run that ended the moment it started still gets a millisecond of axis.
    last.max(data.t0 + 1_000)
}

const MANAGERS: &str = "SELECT manager_key, manager_id, hostname, registered_us, state, ended_us,
    reason FROM managers WHERE run_id = ?1 ORDER BY registered_us, manager_key";

fn manager(r: &Row<'_>) -> rusqlite::Result<ManagerRow> {
    Ok(ManagerRow {
        key: r.get(0)?,
        manager_id: r.get(1)?,
        hostname: r.get(2)?,
        registered_us: r.get(3)?,
        state: r.get(4)?,
        ended_us: r.get(5)?,
        reason: r.get(6)?,
    })
}

const SLOTS: &str = "SELECT manager_key, slot, kind, gpu_uuid, gpu_index, mps_percentage,
    memory_bytes, mig_profile, cpus FROM slots WHERE run_id = ?1 ORDER BY manager_key, slot";

fn slot(r: &Row<'_>) -> rusqlite::Result<SlotRow> {
    Ok(SlotRow {
        manager_key: r.get(0)?,
        slot: r.get(1)?,
        kind: r.get(2)?,
        gpu_uuid: r.get(3)?,
        gpu_index: r.get(4)?,
        mps_percentage: r.get(5)?,
        memory_bytes: r.get(6)?,
        mig_profile: r.get(7)?,
        cpus: r.get(8)?,
    })
}

// Tasks are keyed by run_id << 40 | task_id: a run's tasks are one range of the key.
const TASKS: &str = "SELECT task_id, queued_us, ended_us, outcome, error_kind, restored,
    CASE WHEN ended_us IS NULL THEN dispatched_us END
    FROM tasks WHERE task_key BETWEEN ?1 << 40 AND (?1 << 40) + 1099511627775";

fn task(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        task_id: r.get(0)?,
        queued_us: r.get(1)?,
        ended_us: r.get(2)?,
        outcome: r.get(3)?,
        error_kind: r.get(4)?,
        restored: r.get::<_, i64>(5)? != 0,
        in_flight_since: r.get(6)?,
    })
}

const ATTEMPTS: &str = "SELECT a.task_id, a.attempt, a.manager_key, a.slot, a.dispatched_us,
    a.started_us, a.finished_us, a.ended_us, a.outcome, a.error_kind, t.client_task_id, t.label
    FROM attempts a LEFT JOIN tasks t ON t.task_key = (a.run_id << 40) + a.task_id
    WHERE a.run_id = ?1 ORDER BY a.task_id, a.attempt";

fn attempt(r: &Row<'_>) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        task_id: r.get(0)?,
        attempt: r.get(1)?,
        manager_key: r.get(2)?,
        slot: r.get(3)?,
        dispatched_us: r.get(4)?,
        started_us: r.get(5)?,
        finished_us: r.get(6)?,
        ended_us: r.get(7)?,
        outcome: r.get(8)?,
        error_kind: r.get(9)?,
        client_task_id: r.get(10)?,
        label: r.get(11)?,
    })
}

const GPU_SAMPLES: &str = "SELECT manager_key, gpu_uuid, at_us, utilization_ratio,
    sm_activity_ratio, memory_used_bytes, memory_total_bytes
    FROM gpu_samples WHERE run_id = ?1 ORDER BY gpu_uuid, at_us";

fn gpu_sample(r: &Row<'_>) -> rusqlite::Result<GpuSample> {
    Ok(GpuSample {
        manager_key: r.get(0)?,
        gpu_uuid: r.get(1)?,
        at_us: r.get(2)?,
        utilization_ratio: r.get(3)?,
        sm_activity_ratio: r.get(4)?,
        memory_used_bytes: r.get(5)?,
        memory_total_bytes: r.get(6)?,
    })
}

const SLOT_SAMPLES: &str = "SELECT manager_key, slot, at_us, gpu_memory_used_bytes
    FROM slot_samples WHERE run_id = ?1 ORDER BY manager_key, slot, at_us";

fn slot_sample(r: &Row<'_>) -> rusqlite::Result<SlotSample> {
    Ok(SlotSample {
        manager_key: r.get(0)?,
        slot: r.get(1)?,
        at_us: r.get(2)?,
        gpu_memory_used_bytes: r.get(3)?,
    })
}
