//! The monitoring database and the metrics endpoint, against real runs: a 100,000-task
//! `htex run --monitoring` whose database matches its results file, a manager killed mid-run
//! (lost in the database, its tasks with two attempts), and `/metrics` checked by `promtool`
//! and scraped by a real Prometheus server.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{interchange_with, manager, wait_for_managers, Running, HTEX};
use htex_client::{Client, Task};
use rusqlite::Connection;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("htex-monitoring-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn open(db: &Path) -> Connection {
    Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// Waits until the latest run of `db` has `tasks` ended tasks (the writer commits every 0.5 s).
fn wait_for_ended(db: &Path, tasks: u64) -> htex_monitoring::db::RunCounts {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = htex_monitoring::db::count_latest_run(db).ok();
        if let Some(c) = counts.filter(|c| c.ended >= tasks) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{db:?}: tasks not all ended: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a result line and a database row both say of a task: outcome, attempts, slot,
/// submitted time, queue time and run time.
type Fingerprint = (String, u64, String, u64, u64, u64);

#[test]
fn a_monitored_run_s_database_matches_its_results_file() {
    let dir = scratch("run");
    let tasks = dir.join("tasks.jsonl");
    let n = 100_000u64;
    let mut text = String::new();
    for i in 0..n {
        // Every 1000th task fails, so the database has both outcomes.
        if i % 1000 == 999 {
            text.push_str(&format!(
                "{{\"id\": \"t{i}\", \"function\": \"fail\", \"args\": \"boom\"}}\n"
            ));
        } else {
            text.push_str(&format!("{{\"id\": \"t{i}\", \"function\": \"noop\"}}\n"));
        }
    }
    std::fs::write(&tasks, text).unwrap();
    let results = dir.join("results.jsonl");
    let db = dir.join("monitoring.db");
    let status = Command::new(HTEX)
        .args(["run", tasks.to_str().unwrap(), "--quiet", "--workers", "2"])
        .args(["--results", results.to_str().unwrap()])
        .args(["--monitoring", db.to_str().unwrap()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "the failing tasks make it exit 1");

    let mut from_file: BTreeMap<Fingerprint, u32> = BTreeMap::new();
    for line in std::fs::read_to_string(&results).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = &v["timings_us"];
        let outcome = match v["outcome"].as_str().unwrap() {
            "success" => "completed".to_string(),
            _ => format!("failed:{}", v["error"].as_str().unwrap()),
        };
        let key = (
            outcome,
            v["attempts"].as_u64().unwrap(),
            v["slot"].as_str().unwrap_or("").to_string(),
            t["submitted"].as_u64().unwrap(),
            t["queued"].as_u64().unwrap(),
            t["run"].as_u64().unwrap(),
        );
        *from_file.entry(key).or_default() += 1;
    }
    assert_eq!(from_file.values().map(|&c| u64::from(c)).sum::<u64>(), n);

    // `htex run` ends the run cleanly: the database is complete when it exits.
    let counts = htex_monitoring::db::count_latest_run(&db).unwrap();
    assert_eq!((counts.tasks, counts.ended, counts.attempts), (n, n, n));
    assert_eq!(counts.events_dropped, 0);
    let conn = open(&db);
    let mut query = conn
        .prepare(
            "SELECT t.outcome, t.error_kind, t.attempts, m.manager_id || '/' || t.slot,
                    t.submitted_us, t.dispatched_us - t.queued_us, t.finished_us - t.started_us
             FROM tasks t
             JOIN managers m ON m.run_id = t.run_id AND m.manager_key = t.manager_key
             WHERE t.run_id = ?1",
        )
        .unwrap();
    let mut from_db: BTreeMap<Fingerprint, u32> = BTreeMap::new();
    let rows = query
        .query_map([counts.run_id], |r| {
            let outcome: String = r.get(0)?;
            let kind: Option<String> = r.get(1)?;
            let outcome = match kind {
                Some(kind) => format!("{outcome}:{kind}"),
                None => outcome,
            };
            Ok((
                outcome,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)? as u64,
                r.get::<_, i64>(5)? as u64,
                r.get::<_, i64>(6)? as u64,
            ))
        })
        .unwrap();
    for row in rows {
        *from_db.entry(row.unwrap()).or_default() += 1;
    }
    assert_eq!(from_db.len(), from_file.len());
    assert!(
        from_db == from_file,
        "the database and the results file differ"
    );

    // Every task went submitted, queued, dispatched, running, finished, then its outcome.
    let changes: Vec<(String, i64)> = conn
        .prepare(
            "SELECT state, count(*) FROM task_state_changes WHERE run_id = ?1
             GROUP BY state ORDER BY state",
        )
        .unwrap()
        .query_map([counts.run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let failed = (n / 1000) as i64;
    let n = n as i64;
    assert_eq!(
        changes,
        [
            ("completed".to_string(), n - failed),
            ("dispatched".into(), n),
            ("failed".into(), failed),
            ("finished".into(), n),
            ("queued".into(), n),
            ("running".into(), n),
            ("submitted".into(), n),
        ]
    );
    // The report's timeline draws one bar per attempt.
    let svg = dir.join("timeline.svg");
    let drawn = Command::new(HTEX)
        .args([
            "report",
            db.to_str().unwrap(),
            "--svg",
            "--out",
            svg.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(drawn.success());
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(svg.matches("class=\"attempt\"").count() as i64, n);
    let db_bytes = std::fs::metadata(&db).unwrap().len();
    println!(
        "{n} tasks: database {db_bytes} bytes ({:.0} bytes per task)",
        db_bytes as f64 / n as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_manager_is_lost_in_the_database_and_its_tasks_have_two_attempts() {
    let dir = scratch("kill");
    let db = dir.join("monitoring.db");
    let ic = interchange_with(
        "monitoring-kill",
        "127.0.0.1",
        &["--monitoring", db.to_str().unwrap()],
    )
    .await;
    let mut a = manager(&[], "127.0.0.1", &ic.manager_port, "a");
    let _b = manager(&[], "127.0.0.1", &ic.manager_port, "b");
    let client = Client::connect(&ic.client_endpoint).await.unwrap();
    wait_for_managers(&client, &["a", "b"], Duration::from_secs(10)).await;
    let n = 4_000u64;
    let handles: Vec<_> = (0..n)
        .map(|_| client.submit(Task::call("sleep", &1u64).unwrap().max_retries(1)))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.0.kill().unwrap(); // SIGKILL
    let results = common::all_succeeded(handles).await;
    let retried = results.iter().filter(|r| r.attempts == 2).count() as i64;
    assert!(retried > 0, "no task was on the killed manager");

    let counts = tokio::task::spawn_blocking({
        let db = db.clone();
        move || wait_for_ended(&db, n)
    })
    .await
    .unwrap();
    let conn = open(&db);
    let (state, reason): (String, String) = conn
        .query_row(
            "SELECT state, reason FROM managers WHERE run_id = ?1 AND manager_id = 'a'",
            [counts.run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(state, "lost");
    assert!(reason.contains("no message"), "{reason}");
    let one = |sql: &str| -> i64 { conn.query_row(sql, [counts.run_id], |r| r.get(0)).unwrap() };
    assert_eq!(
        one("SELECT count(*) FROM tasks WHERE run_id = ?1 AND attempts = 2"),
        retried,
        "the database's retried tasks are the client's"
    );
    // Each retried task: attempt 1 lost on `a`, attempt 2 completed on `b`.
    assert_eq!(
        one("SELECT count(*) FROM interrupted_attempts a1
             JOIN tasks t ON t.task_key = (a1.run_id << 40) | a1.task_id
             JOIN managers ma ON ma.run_id = a1.run_id AND ma.manager_key = a1.manager_key
             JOIN managers mb ON mb.run_id = t.run_id AND mb.manager_key = t.manager_key
             WHERE a1.run_id = ?1 AND a1.attempt = 1 AND a1.outcome = 'lost'
                AND ma.manager_id = 'a' AND mb.manager_id = 'b' AND t.attempts = 2
                AND t.outcome = 'completed'"),
        retried
    );
    assert_eq!(
        one("SELECT count(*) FROM task_state_changes WHERE run_id = ?1 AND state = 'lost'"),
        retried
    );
    // Each manager reported its two workers starting.
    assert!(
        one("SELECT count(*) FROM slot_events WHERE run_id = ?1 AND event = 'worker_started'") >= 4,
        "the managers' reports did not reach the database"
    );
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
}

/// GETs `url` (`http://HOST:PORT/PATH`) and returns the status code and body.
fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn found(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    let ic = interchange_with(
        "metrics",
        "127.0.0.1",
        &["--metrics-address", "127.0.0.1:0"],
    )
    .await;
    let url = ic
        .metrics
        .clone()
        .expect("the addresses file names the metrics endpoint");
    let _m = manager(&[], "127.0.0.1", &ic.manager_port, "m");
    let client = Client::connect(&ic.client_endpoint).await.unwrap();
    wait_for_managers(&client, &["m"], Duration::from_secs(10)).await;
    let ok: Vec<_> = (0..200)
        .map(|_| client.submit(Task::call("noop", &()).unwrap()))
        .collect();
    let failing = client.submit(Task::call("fail", &"boom").unwrap());
    common::all_succeeded(ok).await;
    assert!(failing.await.unwrap().outcome.is_err());
    // A report and the gauges arrive with the next heartbeat (0.5 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (code, body) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || http_get(&url)
    })
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        sample(&body, "htex_tasks_submitted_total"),
        Some(201.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "htex_tasks_ended_total{outcome=\"completed\",error_kind=\"\"}"
        ),
        Some(200.0)
    );
    let failed: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("htex_tasks_ended_total{outcome=\"failed\""))
        .collect();
    assert_eq!(failed.len(), 1, "one error kind: {failed:?}");
    assert!(
        failed[0].ends_with(" 1") && !failed[0].contains("error_kind=\"\""),
        "{failed:?}"
    );
    assert_eq!(sample(&body, "htex_managers{state=\"active\"}"), Some(1.0));
    assert_eq!(
        sample(&body, "htex_slots{kind=\"cpu\",state=\"idle\"}"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(sample(&body, "htex_task_run_seconds_count"), Some(201.0));
    for slot in 0..2 {
        let busy = sample(
            &body,
            &format!("htex_slot_busy_seconds_total{{manager=\"m\",slot=\"{slot}\"}}"),
        );
        assert!(
            busy.is_some_and(|s| s > 0.0),
            "slot {slot} busy seconds: {body}"
        );
    }
    let (code, _) = tokio::task::spawn_blocking({
        let url = url.replace("/metrics", "/other");
        move || http_get(&url)
    })
    .await
    .unwrap();
    assert_eq!(code, 404);

    if !found("promtool") || !found("prometheus") {
        htex_tests::skip_unless_required(
            "prometheus",
            "promtool and prometheus are not installed (Debian: apt-get install prometheus)",
        );
        return;
    }
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let dir = scratch("prometheus");
    let target = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: htex\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = common::free_port();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=htex_tasks_ended_total%7Boutcome%3D%22completed%22%7D"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let scraped = loop {
        let answer = std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| http_get(&query));
        if let Some((200, body)) = &answer {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
                break value.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped htex: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(scraped, "200");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The text on a tmux session's screen.
fn screen(session: &str) -> String {
    let out = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", session])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_for_screen(session: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = screen(session);
        if text.contains(what) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no `{what}` on the screen:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_redraws_busy_and_idle_slots_in_a_terminal() {
    if !found("tmux") {
        htex_tests::skip_unless_required("tmux", "tmux is not installed (apt-get install tmux)");
        return;
    }
    let ic = interchange_with("live", "127.0.0.1", &[]).await;
    let _m = manager(&[], "127.0.0.1", &ic.manager_port, "m");
    let client = Client::connect(&ic.client_endpoint).await.unwrap();
    wait_for_managers(&client, &["m"], Duration::from_secs(10)).await;
    let session = format!("htex-live-{}", std::process::id());
    let port = ic.client_endpoint.rsplit(':').next().unwrap().to_string();
    let command = format!("{HTEX} top --every 0.2 --port {port}");
    let started = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "40",
            &command,
        ])
        .status()
        .unwrap();
    assert!(started.success());
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .status();
        }
    }
    let _kill = Kill(session.clone());
    let idle = wait_for_screen(&session, "[idle] slot 1 cpu").await;
    assert!(idle.contains("manager m on"), "{idle}");
    assert!(idle.contains("0/2 slots busy"), "{idle}");
    let sleeping: Vec<_> = (0..2)
        .map(|_| client.submit(Task::call("sleep", &3000u64).unwrap()))
        .collect();
    let busy = wait_for_screen(&session, "2/2 slots busy").await;
    assert!(busy.contains("[busy] slot 0 cpu"), "{busy}");
    // Redrawn in place: one frame on the screen, not a scroll of them.
    assert_eq!(busy.matches("manager m on").count(), 1, "{busy}");
    common::all_succeeded(sleeping).await;
    wait_for_screen(&session, "completed 2").await;
    // The slots' states come with the manager's next report (every heartbeat period).
    let done = wait_for_screen(&session, "0/2 slots busy").await;
    assert!(done.contains("[idle] slot 0 cpu"), "{done}");
}
