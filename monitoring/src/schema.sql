-- The htex monitoring database, schema version 1. Written by one thread of the interchange in
-- batched transactions, in WAL mode: readers (htex report, sqlite3, a notebook) never block it.
-- Times are microseconds since the Unix epoch; sizes are bytes; ratios are 0-1.
-- A database holds any number of runs (one per interchange start); every row names its run.

CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);

-- One interchange start.
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a delete
    started_us INTEGER NOT NULL,
    ended_us INTEGER,                      -- NULL while it runs, or when it was killed
    interchange TEXT NOT NULL,             -- the client endpoint
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    htex_version TEXT NOT NULL,
    events_dropped INTEGER NOT NULL DEFAULT 0  -- events the writer could not keep up with
);

-- The name of each client that submitted tasks.
CREATE TABLE IF NOT EXISTS clients (
    run_id INTEGER NOT NULL,
    client_key INTEGER NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (run_id, client_key)
) WITHOUT ROWID;

-- One row per task, written when it ends (or, when it is in flight for over a second, then and
-- again when it ends), with the attempt that ended it. Keyed by run_id << 40 | task_id, so rows
-- append in order; run_id and task_id are columns computed from the key.
CREATE TABLE IF NOT EXISTS tasks (
    task_key INTEGER PRIMARY KEY,
    run_id INTEGER GENERATED ALWAYS AS (task_key >> 40) VIRTUAL,
    task_id INTEGER GENERATED ALWAYS AS (task_key & 1099511627775) VIRTUAL,
    client_key INTEGER NOT NULL,           -- clients.client_key
    client_task_id INTEGER NOT NULL,       -- the id the client gave it
    label TEXT NOT NULL,                   -- function name, runner of a call, or argv[0]
    kind TEXT NOT NULL,                    -- function | call | command
    priority INTEGER NOT NULL,
    submitted_us INTEGER NOT NULL,         -- the client's clock
    queued_us INTEGER NOT NULL,            -- accepted by the interchange (its id's time)
    restored INTEGER NOT NULL DEFAULT 0,   -- 1: restored from the journal of an earlier run
    ended_us INTEGER,                      -- NULL until it ends
    outcome TEXT,                          -- completed | failed
    error_kind TEXT,                       -- as result files spell it (WorkerLost, ...)
    error TEXT,                            -- the error as a sentence
    attempts INTEGER NOT NULL DEFAULT 0,   -- attempts that reached a manager
    -- The attempt that ended it, when a manager had it (its number is `attempts`):
    manager_key INTEGER,
    slot INTEGER,
    dispatched_us INTEGER,
    started_us INTEGER,                    -- the worker's clock
    finished_us INTEGER
);

-- Attempts that ended without ending their task: the manager was lost, or gave it back.
CREATE TABLE IF NOT EXISTS interrupted_attempts (
    run_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    manager_key INTEGER NOT NULL,
    slot INTEGER,
    dispatched_us INTEGER NOT NULL,
    ended_us INTEGER NOT NULL,             -- when the interchange learned of it
    outcome TEXT NOT NULL,                 -- lost | returned
    PRIMARY KEY (run_id, task_id, attempt)
) WITHOUT ROWID;

-- Every time a task was sent to a manager, and how that attempt ended: completed | failed |
-- cancelled | lost | returned.
CREATE VIEW IF NOT EXISTS attempts (run_id, task_id, attempt, manager_key, slot, dispatched_us,
        started_us, finished_us, ended_us, outcome, error_kind) AS
    SELECT run_id, task_id, attempts, manager_key, slot, dispatched_us, started_us, finished_us,
           ended_us, CASE WHEN error_kind = 'Cancelled' THEN 'cancelled' ELSE outcome END,
           error_kind
        FROM tasks WHERE manager_key IS NOT NULL AND ended_us IS NOT NULL
    UNION ALL
    SELECT run_id, task_id, attempt, manager_key, slot, dispatched_us, NULL, NULL, ended_us,
           outcome, NULL
        FROM interrupted_attempts;

-- One row per manager registration.
CREATE TABLE IF NOT EXISTS managers (
    run_id INTEGER NOT NULL,
    manager_key INTEGER NOT NULL,          -- the interchange's number for this registration
    manager_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    block_id TEXT,
    pid INTEGER NOT NULL,
    registered_us INTEGER NOT NULL,
    state TEXT NOT NULL,                   -- active | draining | lost | gone
    ended_us INTEGER,
    reason TEXT,                           -- why it was lost or left
    PRIMARY KEY (run_id, manager_key)
) WITHOUT ROWID;

-- The slots of each registration, as its manager planned them.
CREATE TABLE IF NOT EXISTS slots (
    run_id INTEGER NOT NULL,
    manager_key INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    kind TEXT NOT NULL,                    -- cpu | gpu | mps | mig
    gpu_uuid TEXT,
    gpu_index INTEGER,
    mps_percentage INTEGER,
    memory_bytes INTEGER,
    mig_profile TEXT,
    sm_count INTEGER,
    cpus TEXT,                             -- e.g. "0,1"
    PRIMARY KEY (run_id, manager_key, slot)
) WITHOUT ROWID;

-- What happened to a slot's worker process.
CREATE TABLE IF NOT EXISTS slot_events (
    run_id INTEGER NOT NULL,
    manager_key INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    at_us INTEGER NOT NULL,
    event TEXT NOT NULL,                   -- started | died | gpu_fault
    pid INTEGER,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS slot_events_by_slot ON slot_events (run_id, manager_key, slot, at_us);

-- NVML samples of each GPU a manager's slots use.
CREATE TABLE IF NOT EXISTS gpu_samples (
    run_id INTEGER NOT NULL,
    manager_key INTEGER NOT NULL,
    gpu_uuid TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    utilization_ratio REAL,                -- time a kernel ran, 0-1 (nvmlDeviceGetUtilizationRates)
    sm_activity_ratio REAL,                -- GPM SM activity, 0-1, where the GPU has GPM
    memory_used_bytes INTEGER,
    memory_total_bytes INTEGER
);
CREATE INDEX IF NOT EXISTS gpu_samples_by_gpu ON gpu_samples (run_id, gpu_uuid, at_us);

-- NVML samples per slot: the GPU memory of the slot's worker processes (per MPS client).
CREATE TABLE IF NOT EXISTS slot_samples (
    run_id INTEGER NOT NULL,
    manager_key INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    at_us INTEGER NOT NULL,
    gpu_memory_used_bytes INTEGER
);

-- Every state change of every task, with its time, derived from the columns above:
-- submitted, queued, then per attempt dispatched, running, finished (the worker's clock) or
-- lost | returned | cancelled, then the task's outcome (completed | failed).
CREATE VIEW IF NOT EXISTS task_state_changes (run_id, task_id, attempt, state, at_us) AS
    SELECT run_id, task_id, 0, 'submitted', submitted_us FROM tasks
    UNION ALL SELECT run_id, task_id, 0, 'queued', queued_us FROM tasks
    UNION ALL SELECT run_id, task_id, attempt, 'dispatched', dispatched_us FROM attempts
    UNION ALL SELECT run_id, task_id, attempt, 'running', started_us FROM attempts
        WHERE started_us IS NOT NULL
    UNION ALL SELECT run_id, task_id, attempt, 'finished', finished_us FROM attempts
        WHERE finished_us IS NOT NULL
    UNION ALL SELECT run_id, task_id, attempt, outcome, ended_us FROM attempts
        WHERE outcome IN ('lost', 'returned', 'cancelled')
    UNION ALL SELECT run_id, task_id, attempts, outcome, ended_us FROM tasks
        WHERE ended_us IS NOT NULL;
