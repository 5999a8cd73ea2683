//! `htex report` on a database written here: every attempt gets exactly one bar, the page
//! fetches nothing and escapes what users wrote, and bad input gives sentences.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use htex_monitoring::report::{render_html, render_timeline_svg, ReportError, RunSelector};
use rusqlite::{params, Connection};

const SCHEMA: &str = include_str!("../src/schema.sql");
const T0: i64 = 1_700_000_000_000_000;
const S: i64 = 1_000_000;
const LABEL: &str = "<script>alert('x')</script>";

fn new_db(dir: &Path, name: &str, version: i64) -> (PathBuf, Connection) {
    let path = dir.join(name);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    conn.execute("INSERT INTO schema_version VALUES (?1)", [version])
        .unwrap();
    (path, conn)
}

/// Run 1: managers 1 (two mps slots and a cpu one, lost at 40 s) and 2 (two cpu slots), 50
/// ended tasks whose attempts have every outcome (task 7's first was lost before it reached a
/// slot) and one task still in flight. Run 2 is empty. The writer's connection stays open, as
/// a live interchange's would.
fn fixture(dir: &Path) -> (PathBuf, Connection) {
    let (path, conn) = new_db(dir, "htex.db", 1);
    conn.execute_batch(&format!(
        "INSERT INTO runs VALUES (1, {T0}, {}, 'tcp://127.0.0.1:5555', 'node1', 42, '0.1.0', 3);
         INSERT INTO runs VALUES (2, {}, NULL, 'tcp://127.0.0.1:5555', 'node1', 43, '0.1.0', 0);
         INSERT INTO clients VALUES (1, 1, 'alice');
         INSERT INTO managers VALUES (1, 1, 'mgr-a', 'node1', NULL, 100, {T0}, 'lost', {},
                                      'heartbeat missed <3 times>');
         INSERT INTO managers VALUES (1, 2, 'mgr-b', 'node2', 'block-1', 101, {}, 'active',
                                      NULL, NULL);
         INSERT INTO slots VALUES (1, 1, 0, 'mps', 'GPU-abc', 0, 25, NULL, NULL, NULL, NULL);
         INSERT INTO slots VALUES (1, 1, 1, 'mps', 'GPU-abc', 0, 75, NULL, NULL, NULL, NULL);
         INSERT INTO slots VALUES (1, 1, 2, 'cpu', NULL, NULL, NULL, NULL, NULL, NULL, '0,1');
         INSERT INTO slots VALUES (1, 2, 0, 'cpu', NULL, NULL, NULL, NULL, NULL, NULL, '0');
         INSERT INTO slots VALUES (1, 2, 1, 'cpu', NULL, NULL, NULL, NULL, NULL, NULL, '1');",
        T0 + 60 * S,
        T0 + 100 * S,
        T0 + 40 * S,
        T0 + S,
    ))
    .unwrap();
    for id in 0..50 {
        insert_task(&conn, &ended_task(&conn, id));
    }
    let in_flight = Task {
        id: 50,
        label: "fn-running".into(),
        queued: T0 + 30 * S,
        ended: None,
        outcome: None,
        error_kind: None,
        attempts: 1,
        last: Some(Last {
            manager: 2,
            slot: Some(1),
            dispatched: T0 + 31 * S,
            ran: None,
        }),
    };
    insert_task(&conn, &in_flight);
    (path, conn)
}

struct Task {
    id: i64,
    label: String,
    queued: i64,
    ended: Option<i64>,
    outcome: Option<&'static str>,
    error_kind: Option<&'static str>,
    attempts: i64,
    last: Option<Last>,
}

/// The attempt that ended a task: where, and when it started and finished on its worker.
struct Last {
    manager: i64,
    slot: Option<i64>,
    dispatched: i64,
    ran: Option<(i64, Option<i64>)>,
}

/// Task `id`: by `id % 5` completed, failed, lost (then failed), returned (then completed),
/// cancelled; task 7 was lost before reaching a slot, then completed.
fn ended_task(conn: &Connection, id: i64) -> Task {
    let queued = T0 + id * S / 2;
    let dispatched = queued + 1_000 + id * 37_000;
    let (manager, slot) = (1 + id % 2, id % 2);
    let ran = Some((dispatched + 500, Some(dispatched + 500 + id * 91_000)));
    let ended = dispatched + 1_000 + id * 91_000;
    let last = |ran| {
        Some(Last {
            manager,
            slot: Some(slot),
            dispatched,
            ran,
        })
    };
    let interrupt = |slot, outcome| {
        conn.execute(
            "INSERT INTO interrupted_attempts VALUES (1, ?1, 1, ?2, ?3, ?4, ?5, ?6)",
            params![id, manager, slot, queued + 200, queued + 700, outcome],
        )
        .unwrap();
    };
    let (outcome, error_kind, attempts, last) = match id % 5 {
        _ if id == 7 => {
            interrupt(None, "lost");
            ("completed", None, 2, last(ran))
        }
        0 => ("completed", None, 1, last(ran)),
        1 => ("failed", Some("TaskError"), 1, last(ran)),
        2 => {
            interrupt(Some(slot), "lost");
            ("failed", Some("WorkerLost"), 1, None)
        }
        3 => {
            interrupt(Some(slot), "returned");
            ("completed", None, 2, last(ran))
        }
        _ => (
            "failed",
            Some("Cancelled"),
            1,
            last(Some((dispatched + 500, None))),
        ),
    };
    let label = if id == 3 {
        LABEL.to_string()
    } else {
        format!("fn{}", id % 4)
    };
    Task {
        id,
        label,
        queued,
        ended: Some(ended),
        outcome: Some(outcome),
        error_kind,
        attempts,
        last,
    }
}

fn insert_task(conn: &Connection, t: &Task) {
    let last = t.last.as_ref();
    let ran = last.and_then(|l| l.ran);
    conn.execute(
        "INSERT INTO tasks (task_key, client_key, client_task_id, label, kind, priority,
         submitted_us, queued_us, restored, ended_us, outcome, error_kind, error, attempts,
         manager_key, slot, dispatched_us, started_us, finished_us)
         VALUES (?1, 1, ?2, ?3, 'function', 0, ?4, ?4, 0, ?5, ?6, ?7, NULL, ?8, ?9, ?10, ?11,
                 ?12, ?13)",
        params![
            (1i64 << 40) | t.id,
            1000 + t.id,
            t.label,
            t.queued,
            t.ended,
            t.outcome,
            t.error_kind,
            t.attempts,
            last.map(|l| l.manager),
            last.and_then(|l| l.slot),
            last.map(|l| l.dispatched),
            ran.map(|r| r.0),
            ran.and_then(|r| r.1),
        ],
    )
    .unwrap();
}

/// The (data-task, data-attempt) pair of every `class="attempt"` element.
fn attempt_bars(document: &str) -> Vec<(i64, i64)> {
    let attribute = |element: &str, name: &str| -> i64 {
        let from = element.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        element[from..].split('"').next().unwrap().parse().unwrap()
    };
    document
        .split("class=\"attempt\"")
        .skip(1)
        .map(|element| {
            let element = &element[..element.find('>').unwrap()];
            (
                attribute(element, "data-task"),
                attribute(element, "data-attempt"),
            )
        })
        .collect()
}

#[test]
fn every_attempt_has_exactly_one_bar() {
    let dir = tempfile::tempdir().unwrap();
    let (path, conn) = fixture(dir.path());
    let svg = render_timeline_svg(&path, RunSelector::Id(1)).unwrap();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{}",
        &svg[..80]
    );
    let mut query = conn
        .prepare("SELECT task_id, attempt FROM attempts WHERE run_id = 1")
        .unwrap();
    let expected: HashSet<(i64, i64)> = query
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(expected.len(), 61, "10 + 10 + 11 + 20 + 10 attempts");
    let bars = attempt_bars(&svg);
    assert_eq!(bars.len(), expected.len());
    assert_eq!(bars.iter().copied().collect::<HashSet<_>>(), expected);
    assert_eq!(
        svg.matches("<rect class=\"attempt\"").count(),
        expected.len()
    );
    assert!(svg.contains("mgr-b / (no slot)"));
    assert!(svg.contains("mgr-a / slot 0 (mps 25 %)"));
    assert!(svg.contains("mgr-b / slot 1 (cpu)"));
    assert!(
        svg.contains("heartbeat missed &lt;3 times&gt;"),
        "the lost manager's reason"
    );
    for outcome in ["completed", "failed", "lost", "returned", "cancelled"] {
        assert!(
            svg.contains(&format!("data-outcome=\"{outcome}\"")),
            "{outcome}"
        );
    }

    let html = render_html(&path, RunSelector::Id(1)).unwrap();
    assert_eq!(
        attempt_bars(&html).len(),
        expected.len(),
        "the page embeds the same figure"
    );
    drop(query);
    drop(conn);
}

#[test]
fn the_page_is_self_contained_and_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _writer) = fixture(dir.path());
    let html = render_html(&path, RunSelector::Id(1)).unwrap();
    let outside = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!outside.contains("http://") && !outside.contains("https://"));
    assert!(
        !html.to_lowercase().contains("<script"),
        "no script, and the label is escaped"
    );
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(!html.contains("<link") && !html.contains("@import") && !html.contains("url("));
    assert!(
        html.contains("3 events were dropped"),
        "the dropped events' warning"
    );
    assert!(html.contains("2023-11-14 22:13:20 UTC"), "the start time");
    assert!(html.contains("p50") && html.contains("p99"));
    assert!(
        html.contains("no GPU samples in this run (managers without GPUs, or NVML unavailable)")
    );
    assert!(html.contains("failed: WorkerLost"));
}

#[test]
fn gpu_samples_are_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let (path, conn) = fixture(dir.path());
    for i in 0..20i64 {
        conn.execute(
            "INSERT INTO gpu_samples VALUES (1, 1, 'GPU-abc', ?1, ?2, 0.5, ?3, 85899345920)",
            params![T0 + i * S, i as f64 / 20.0, i << 30],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO slot_samples VALUES (1, 1, 0, ?1, ?2)",
            params![T0 + i * S, i << 28],
        )
        .unwrap();
    }
    let html = render_html(&path, RunSelector::Latest).unwrap();
    assert!(
        html.contains("no GPU samples"),
        "the latest run, 2, has none"
    );
    let html = render_html(&path, RunSelector::Id(1)).unwrap();
    assert!(!html.contains("no GPU samples"));
    assert!(html.contains("GPU-abc (mgr-a) SM activity"));
    assert!(html.contains("GPU memory of each slot"));
}

#[test]
fn an_empty_run_still_renders() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _writer) = fixture(dir.path());
    let html = render_html(&path, RunSelector::Latest).unwrap();
    assert!(html.contains("<h1>htex run 2</h1>"));
    assert!(html.contains("no slots and no attempts in this run"));
    assert!(html.contains("still running"));
    assert_eq!(
        attempt_bars(&render_timeline_svg(&path, RunSelector::Id(2)).unwrap()).len(),
        0
    );
}

#[test]
fn bad_input_gives_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _writer) = fixture(dir.path());
    let message = |path: &Path, run| render_html(path, run).unwrap_err().to_string();
    assert_eq!(
        message(&path, RunSelector::Id(7)),
        format!(
            "the database {} has no run 7 (its runs: 1, 2)",
            path.display()
        )
    );

    let missing = dir.path().join("missing.db");
    let error = render_timeline_svg(&missing, RunSelector::Latest).unwrap_err();
    assert!(matches!(error, ReportError::Open { .. }));
    let prefix = format!(
        "cannot open the monitoring database {}: ",
        missing.display()
    );
    assert!(error.to_string().starts_with(&prefix), "{error}");
    assert!(
        !missing.exists(),
        "opened read-only, so nothing was created"
    );

    let (newer, _conn) = new_db(dir.path(), "newer.db", 2);
    assert_eq!(
        message(&newer, RunSelector::Latest),
        format!(
            "the database {} has schema version 2; this htex reads version 1",
            newer.display()
        )
    );

    let (empty, _conn) = new_db(dir.path(), "empty.db", 1);
    assert_eq!(
        message(&empty, RunSelector::Latest),
        format!("the database {} has no runs yet", empty.display())
    );

    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "not a database, but long enough to have a header page ".repeat(20),
    )
    .unwrap();
    assert!(message(&text, RunSelector::Latest).starts_with("cannot open the monitoring database"));
}

/// A run of `n` completed tasks, one attempt each, spread over 8 managers of 8 cpu slots.
fn large_run(dir: &Path, n: i64) -> PathBuf {
    let (path, mut conn) = new_db(dir, "large.db", 1);
    let writer = conn.transaction().unwrap();
    writer
        .execute(
            "INSERT INTO runs VALUES (1, ?1, ?2, 'tcp://[::1]:1', 'h', 1, '0.1.0', 0)",
            params![T0, T0 + 600 * S],
        )
        .unwrap();
    for manager in 0..8 {
        writer
            .execute(
                "INSERT INTO managers VALUES (1, ?1, ?2, 'h', NULL, 1, ?3, 'gone', ?4, 'drained')",
                params![manager, format!("m{manager}"), T0, T0 + 600 * S],
            )
            .unwrap();
        for slot in 0..8 {
            writer
                .execute(
                    "INSERT INTO slots (run_id, manager_key, slot, kind) VALUES (1, ?1, ?2, 'cpu')",
                    params![manager, slot],
                )
                .unwrap();
        }
    }
    let mut insert = writer
        .prepare(
            "INSERT INTO tasks (task_key, client_key, client_task_id, label, kind, priority,
             submitted_us, queued_us, ended_us, outcome, attempts, manager_key, slot,
             dispatched_us, started_us, finished_us)
             VALUES (?1, 1, ?2, 'f', 'function', 0, ?3, ?3, ?4, 'completed', 1, ?5, ?6, ?3, ?3, ?4)",
        )
        .unwrap();
    for task in 0..n {
        let start = T0 + task * (600 * S / n);
        let (manager, slot) = (task % 64 / 8, task % 8);
        insert
            .execute(params![
                (1i64 << 40) | task,
                task,
                start,
                start + 2_000,
                manager,
                slot
            ])
            .unwrap();
    }
    drop(insert);
    writer.commit().unwrap();
    path
}

#[test]
fn large_runs_keep_every_bar_and_drop_the_tooltips() {
    let dir = tempfile::tempdir().unwrap();
    let path = large_run(dir.path(), 25_000);
    let svg = render_timeline_svg(&path, RunSelector::Latest).unwrap();
    assert_eq!(svg.matches("class=\"attempt\"").count(), 25_000);
    assert_eq!(
        attempt_bars(&svg).into_iter().collect::<HashSet<_>>().len(),
        25_000
    );
    assert!(
        !svg.contains("</rect>"),
        "no tooltips above 20 000 attempts"
    );
    let html = render_html(&path, RunSelector::Latest).unwrap();
    assert!(html.contains("Bars carry no tooltips"));
}

/// A quarter of a million attempts: every bar drawn (a few seconds in a debug build).
#[test]
fn a_run_of_250_000_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let path = large_run(dir.path(), 250_000);
    let started = std::time::Instant::now();
    let html = render_html(&path, RunSelector::Latest).unwrap();
    println!("{} bytes in {:?}", html.len(), started.elapsed());
    assert_eq!(html.matches("class=\"attempt\"").count(), 250_000);
    assert!(html.len() < 40 << 20, "{} bytes", html.len());
}
