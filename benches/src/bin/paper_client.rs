//! `paper-client`: the htex side of the paper experiment (benches/paper/README.md).
//!
//! Waits until a manager with `--slots` slots is registered, warms every slot with one
//! concurrent `llama:warmup` call per slot (the runner's file barrier makes them occupy distinct
//! slots, and each returns that runner's cold start), then submits all `--completions`
//! `llama:generate` calls at once, awaits them, and prints ONE JSON line on stdout:
//! label, slots, completions, total_s (first submit → last result), throughput, latency
//! (submit → result), service (slot start → result, the per-completion time the bare baseline
//! measures), exec (inside the runner), per-slot counts, cold starts and failures.
//! Progress goes to stderr. Exit status 0 when every completion succeeded, 1 otherwise.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use htex_client::{decode_value, Client, Task, TaskResult};
use htex_protocol::now_us;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "paper-client",
    about = "htex side of the LLaMa multiplexing experiment"
)]
struct Args {
    /// The interchange's client endpoint, e.g. tcp://127.0.0.1:55000.
    #[arg(long)]
    endpoint: String,
    /// Slots the manager must offer (one warm runner each).
    #[arg(long)]
    slots: usize,
    /// Completions to run, all submitted at once.
    #[arg(long, default_value_t = 100)]
    completions: usize,
    /// An empty directory for the warmup barrier (one file per runner).
    #[arg(long)]
    barrier_dir: PathBuf,
    /// Label of the JSON line.
    #[arg(long, default_value = "htex")]
    label: String,
    /// Multiplexing mode, copied into the JSON line (timeshare or mps).
    #[arg(long, default_value = "")]
    mode: String,
    /// The runner's name as given to `htex manager --runner NAME=...`.
    #[arg(long, default_value = "llama")]
    runner: String,
    /// Tokens every completion must return (the runner's NEW_TOKENS).
    #[arg(long, default_value_t = 24)]
    tokens: u64,
    /// Seconds to wait for the manager to register.
    #[arg(long, default_value_t = 120.0)]
    register_timeout_s: f64,
    /// Seconds for all warmups (runner start, model build, first completion, barrier).
    #[arg(long, default_value_t = 420.0)]
    warmup_timeout_s: f64,
    /// Seconds one completion may run on its slot.
    #[arg(long, default_value_t = 300.0)]
    task_timeout_s: f64,
    /// Seconds for all completions together.
    #[arg(long, default_value_t = 900.0)]
    run_timeout_s: f64,
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what} must be a positive number"))
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// mean, p50, p95 (linear interpolation between ranks, as numpy and bare.py) and max.
fn summary(values: &[f64]) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    let mut xs = values.to_vec();
    xs.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let pos = p * (xs.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(xs.len() - 1);
        xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64)
    };
    json!({
        "mean": round6(xs.iter().sum::<f64>() / xs.len() as f64),
        "p50": round6(q(0.5)),
        "p95": round6(q(0.95)),
        "max": round6(xs[xs.len() - 1]),
    })
}

fn slot_key(result: &TaskResult) -> String {
    match &result.slot {
        Some(s) => s.slot.to_string(),
        None => "?".into(),
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!(
        "[paper-client {:.3}] {}",
        now_us() as f64 / 1e6,
        msg.as_ref()
    );
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut record = json!({
        "system": "htex",
        "label": args.label,
        "mode": args.mode,
        "slots": args.slots,
        "completions": args.completions,
        "started_at_us": now_us(),
    });
    let outcome = run(&args, &mut record).await;
    let code = match outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            progress(format!("error: {e:#}"));
            record["error"] = json!(format!("{e:#}"));
            if record.get("ok").is_none() {
                record["ok"] = json!(0);
                record["failures"] = json!(args.completions);
            }
            1
        }
    };
    println!("{record}");
    std::process::ExitCode::from(code)
}

/// The experiment; fills `record`. Ok(true) when every completion succeeded.
async fn run(args: &Args, record: &mut Value) -> anyhow::Result<bool> {
    if args.slots == 0 || args.completions == 0 {
        bail!("--slots and --completions must be at least 1");
    }
    let t_start = Instant::now();
    let client = Client::connect(&args.endpoint)
        .await
        .with_context(|| format!("cannot connect to {}", args.endpoint))?;

    // 1. A manager with N slots.
    let deadline = t_start + secs(args.register_timeout_s, "register-timeout-s")?;
    let manager = loop {
        let status = client.status().await?;
        if let Some(m) = status.managers.iter().find(|m| m.slots.len() == args.slots) {
            break m.clone();
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = status
                .managers
                .iter()
                .map(|m| format!("{} ({} slots)", m.id, m.slots.len()))
                .collect();
            bail!(
                "no manager with {} slots within {} s (registered: {:?})",
                args.slots,
                args.register_timeout_s,
                seen
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    record["manager"] = json!(manager.id);
    record["slot_kinds"] = json!(manager
        .slots
        .iter()
        .map(|s| json!({
            "index": s.index,
            "kind": format!("{:?}", s.kind).to_lowercase(),
            "mps_percentage": s.mps_percentage,
            "sm_count": s.sm_count,
        }))
        .collect::<Vec<_>>());
    record["register_wait_s"] = json!(round6(t_start.elapsed().as_secs_f64()));
    progress(format!(
        "manager {} registered with {} slots after {:.1}s; warming {} runner(s)",
        manager.id,
        args.slots,
        t_start.elapsed().as_secs_f64(),
        args.slots
    ));

    // 2. One warmup per slot, all at once; the barrier holds each on its slot until all arrived.
    std::fs::create_dir_all(&args.barrier_dir)
        .with_context(|| format!("cannot create {}", args.barrier_dir.display()))?;
    let warmup_limit = secs(args.warmup_timeout_s, "warmup-timeout-s")?;
    let barrier = args.barrier_dir.display().to_string();
    let t_warm = Instant::now();
    let warmups: Vec<_> = (0..args.slots)
        .map(|_| {
            let call = (barrier.as_str(), args.slots as u32, args.warmup_timeout_s);
            let bytes = rmp_serde::to_vec(&call).expect("warmup args encode");
            client.submit(
                Task::runner_call(format!("{}:warmup", args.runner), bytes).timeout(warmup_limit),
            )
        })
        .collect();
    let warm_results = tokio::time::timeout(
        warmup_limit + Duration::from_secs(30),
        futures::future::join_all(warmups),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "warmups not all answered within {} s",
            args.warmup_timeout_s
        )
    })?;
    let mut cold_starts = Vec::new();
    let mut warm_slots = std::collections::BTreeSet::new();
    let mut warm_errors = Vec::new();
    for r in warm_results {
        let r = r.context("warmup lost")?;
        match decode_value::<Value>(&r) {
            Ok(mut v) => {
                v["htex_slot"] = json!(slot_key(&r));
                warm_slots.insert(slot_key(&r));
                cold_starts.push(v);
            }
            Err(e) => warm_errors.push(format!("slot {}: {e}", slot_key(&r))),
        }
    }
    cold_starts.sort_by_key(|v| v["htex_slot"].as_str().unwrap_or("").to_string());
    let colds: Vec<f64> = cold_starts
        .iter()
        .filter_map(|v| v["cold_start_s"].as_f64())
        .collect();
    record["warmup_wall_s"] = json!(round6(t_warm.elapsed().as_secs_f64()));
    record["setup_wall_s"] = json!(round6(t_start.elapsed().as_secs_f64()));
    record["cold_start_s"] = if colds.is_empty() {
        Value::Null
    } else {
        json!({
            "mean": round6(colds.iter().sum::<f64>() / colds.len() as f64),
            "max": colds.iter().cloned().fold(f64::MIN, f64::max),
        })
    };
    record["cold_starts"] = json!(cold_starts);
    record["warm_slots_distinct"] = json!(warm_slots.len());
    if !warm_errors.is_empty() {
        bail!("warmup failed: {}", warm_errors.join("; "));
    }
    if warm_slots.len() != args.slots {
        bail!(
            "warmups ran on {} distinct slot(s), not {}: {:?}",
            warm_slots.len(),
            args.slots,
            warm_slots
        );
    }
    progress(format!(
        "all {} slot(s) warm after {:.1}s (cold starts {:?} s); submitting {} completions",
        args.slots,
        t_warm.elapsed().as_secs_f64(),
        colds,
        args.completions
    ));

    // 3. All completions at once.
    let task_limit = secs(args.task_timeout_s, "task-timeout-s")?;
    let generate = format!("{}:generate", args.runner);
    let t0 = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..args.completions {
        let bytes = rmp_serde::to_vec(&(i as u64,)).expect("generate args encode");
        let submitted = Instant::now();
        let handle = client.submit(Task::runner_call(generate.clone(), bytes).timeout(task_limit));
        pending.push(async move {
            let r = handle.await;
            (i, submitted, Instant::now(), now_us(), r)
        });
    }
    let run_deadline = tokio::time::Instant::now() + secs(args.run_timeout_s, "run-timeout-s")?;
    let (mut latency, mut service, mut execs) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_slot: BTreeMap<String, u64> = (0..args.slots).map(|s| (s.to_string(), 0)).collect();
    let mut errors: Vec<String> = Vec::new();
    // One [completion, slot, answered_at_s (since the first submit), service_s, exec_s] per answer.
    let mut samples: Vec<Value> = Vec::new();
    let mut ok = 0usize;
    let mut last = t0;
    let step = (args.completions / 10).max(1);
    let mut next_report = step;
    loop {
        let next = match tokio::time::timeout_at(run_deadline, pending.next()).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(_) => {
                errors.push(format!(
                    "run timeout: {} completion(s) outstanding after {} s",
                    pending.len(),
                    args.run_timeout_s
                ));
                break;
            }
        };
        let (i, submitted, received, received_us, r) = next;
        let result = match r {
            Ok(result) => result,
            Err(e) => {
                errors.push(format!("completion {i}: {e}"));
                continue;
            }
        };
        match decode_value::<Value>(&result) {
            Ok(v) if v["tokens"].as_u64() == Some(args.tokens) => {
                ok += 1;
                last = last.max(received);
                latency.push((received - submitted).as_secs_f64());
                let started = result.timings.started_us;
                let svc = (started > 0 && received_us >= started)
                    .then(|| (received_us - started) as f64 / 1e6);
                if let Some(s) = svc {
                    service.push(s);
                }
                if let Some(e) = v["exec_s"].as_f64() {
                    execs.push(e);
                }
                samples.push(json!([
                    i,
                    slot_key(&result),
                    round6((received - t0).as_secs_f64()),
                    svc.map(round6),
                    v["exec_s"]
                ]));
                *per_slot.entry(slot_key(&result)).or_default() += 1;
                if ok >= next_report || ok == args.completions {
                    next_report += step;
                    progress(format!(
                        "{}: {}/{} done, {:.1}s",
                        args.label,
                        ok,
                        args.completions,
                        t0.elapsed().as_secs_f64()
                    ));
                }
            }
            Ok(v) => errors.push(format!("completion {i}: unexpected value {v}")),
            Err(e) => errors.push(format!("completion {i} on slot {}: {e}", slot_key(&result))),
        }
    }
    let total = (last - t0).as_secs_f64();
    let failures = args.completions - ok;
    record["ok"] = json!(ok);
    record["failures"] = json!(failures);
    errors.truncate(10);
    record["errors"] = json!(errors);
    record["total_s"] = json!(round6(total));
    record["throughput"] = if ok > 0 && total > 0.0 {
        json!(round6(ok as f64 / total))
    } else {
        Value::Null
    };
    record["latency_s"] = summary(&latency);
    record["service_s"] = summary(&service);
    record["exec_s"] = summary(&execs);
    record["per_slot"] = json!(per_slot);
    record["samples"] = json!(samples);
    client.close().await;
    Ok(failures == 0)
}
