//! Running a task file through a client: progress bar, one JSON result line per task, summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use htex_client::{Client, ClientError, TaskError, TaskOutput, TaskResult};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::taskfile::NamedTask;

/// How a run went.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub tasks: usize,
    pub succeeded: usize,
    /// Failed tasks by error kind (`Failed`, `Timeout`, ...).
    pub failed: BTreeMap<String, usize>,
    pub wall: Duration,
}

impl RunSummary {
    pub fn failures(&self) -> usize {
        self.failed.values().sum()
    }

    pub fn print(&self, results_path: &str) {
        let rate = self.tasks as f64 / self.wall.as_secs_f64().max(1e-9);
        println!(
            "{} tasks in {:.2} s ({rate:.0} tasks/s): {} succeeded, {} failed",
            self.tasks,
            self.wall.as_secs_f64(),
            self.succeeded,
            self.failures()
        );
        for (kind, n) in &self.failed {
            println!("  {kind}: {n}");
        }
        println!("results: {results_path}");
    }
}

/// Submits every task and writes each result as it arrives.
pub async fn run_tasks(
    client: &Client,
    tasks: Vec<NamedTask>,
    out: &mut impl Write,
    show_progress: bool,
) -> std::io::Result<RunSummary> {
    let started = Instant::now();
    let progress = if show_progress {
        let bar = ProgressBar::new(tasks.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}  {msg}")
                .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut summary = RunSummary {
        tasks: tasks.len(),
        ..RunSummary::default()
    };
    let mut running: FuturesUnordered<_> = tasks
        .into_iter()
        .map(|t| {
            let handle = client.submit(t.task);
            async move { (t.name, handle.await) }
        })
        .collect();
    while let Some((name, result)) = running.next().await {
        let line = match &result {
            Ok(result) => result_line(&name, result),
            Err(error) => client_error_line(&name, error),
        };
        match result.as_ref().map(|r| &r.outcome) {
            Ok(Ok(_)) => summary.succeeded += 1,
            Ok(Err(e)) => *summary.failed.entry(e.kind().to_string()).or_default() += 1,
            Err(_) => *summary.failed.entry("ClientError".into()).or_default() += 1,
        }
        if summary.failures() > 0 {
            progress.set_message(format!("{} failed", summary.failures()));
        }
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    out.flush()?;
    summary.wall = started.elapsed();
    Ok(summary)
}

/// One line of the results file.
pub fn result_line(name: &str, result: &TaskResult) -> Value {
    let t = &result.timings;
    let mut line = json!({
        "id": name,
        "attempts": result.attempts,
        "slot": result.slot.as_ref().map(|s| format!("{}/{}", s.manager, s.slot)),
        "timings_us": {
            "submitted": t.submitted_us,
            "queued": t.dispatched_us.saturating_sub(t.received_us),
            "run": t.finished_us.saturating_sub(t.started_us),
            "total": t.finished_us.max(t.dispatched_us).saturating_sub(t.submitted_us),
        },
    });
    let fields = line.as_object_mut().expect("an object");
    match &result.outcome {
        Ok(TaskOutput::Value(bytes)) => {
            fields.insert("outcome".into(), json!("success"));
            fields.insert("value".into(), msgpack_to_json(bytes));
        }
        Ok(TaskOutput::Command(output)) => {
            fields.insert("outcome".into(), json!("success"));
            insert_command_output(fields, output);
        }
        Err(error) => {
            fields.insert("outcome".into(), json!("error"));
            fields.insert("error".into(), json!(error.kind()));
            fields.insert("message".into(), json!(error.to_string()));
            if let TaskError::Failed {
                output: Some(output),
                ..
            } = error
            {
                insert_command_output(fields, output);
            }
        }
    }
    line
}

fn insert_command_output(
    fields: &mut serde_json::Map<String, Value>,
    output: &htex_protocol::CommandOutput,
) {
    fields.insert("exit_code".into(), json!(output.exit_code));
    if let Some(signal) = output.signal {
        fields.insert("signal".into(), json!(signal));
    }
    fields.insert(
        "stdout".into(),
        json!(String::from_utf8_lossy(&output.stdout)),
    );
    fields.insert(
        "stderr".into(),
        json!(String::from_utf8_lossy(&output.stderr)),
    );
    if output.stdout_truncated || output.stderr_truncated {
        fields.insert(
            "truncated".into(),
            json!({"stdout": output.stdout_truncated, "stderr": output.stderr_truncated}),
        );
    }
}

fn client_error_line(name: &str, error: &ClientError) -> Value {
    json!({"id": name, "outcome": "error", "error": "ClientError", "message": error.to_string()})
}

/// A function's MessagePack value as JSON; values JSON cannot hold (raw bytes) come as hex.
fn msgpack_to_json(bytes: &[u8]) -> Value {
    rmp_serde::from_slice::<Value>(bytes).unwrap_or_else(
        |_| json!({ "msgpack_hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    )
}
