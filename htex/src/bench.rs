//! `htex bench`: an end-to-end benchmark. The interchange and the managers run as separate
//! processes, as in a deployment, so their memory and CPU can be read from /proc; the client runs
//! here, keeps a window of tasks in flight and times each from submit to result.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};
use htex_client::{Client, ClientConfig, Task};
use htex_protocol::Command as ClusterCommand;
use serde_json::json;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Tasks to run.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// What each task does.
    #[arg(long, value_enum, default_value_t = Workload::Noop)]
    kind: Workload,
    /// Milliseconds each task sleeps (`--kind sleep`).
    #[arg(long, default_value_t = 1)]
    sleep_ms: u64,
    /// Bytes each task carries there and back (`--kind payload`).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 1)]
    managers: usize,
    /// Worker processes per manager.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Tasks each manager holds beyond one per worker (default: 512 per worker).
    #[arg(long)]
    prefetch: Option<usize>,
    /// Tasks submitted per client call before awaiting results.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Most tasks in flight at once (1 measures a lone task's latency).
    #[arg(long, default_value_t = 100_000)]
    window: usize,
    /// Managers answer without running tasks: measures the dispatch core alone.
    #[arg(long)]
    zero_worker: bool,
    /// Hold the managers, submit every task, wait until the interchange has queued them all and
    /// report its memory then (`queued`), then release the managers and time the rest.
    #[arg(long)]
    queue_first: bool,
    /// Beside the run, a client that asks for this many bytes of results (echo tasks of 1 MiB,
    /// e.g. `300M`) and never reads them: the interchange must drop it and serve the run on.
    #[arg(long, value_parser = crate::common::parse_bytes)]
    stalled_client: Option<usize>,
    /// The interchange's cap on queued task bytes (`htex interchange --max-queued-bytes`); with
    /// `--queue-first`, the queue fills up to it and the rest of the submission waits.
    #[arg(long, value_parser = crate::common::parse_bytes)]
    max_queued_bytes: Option<usize>,
    /// CURVE on every link: keys are made for the run (server, a client, a manager).
    #[arg(long)]
    encrypted: bool,
    /// The interchange keeps a journal (`htex interchange --journal`) in the run's directory.
    #[arg(long)]
    journal: bool,
    /// With `--queue-first --journal`: once every task is queued, `kill -9` the interchange
    /// and start it again on the same journal and ports; report how long it took to listen
    /// again, and run the tasks it restored.
    #[arg(long, requires_all = ["journal", "queue_first"])]
    restart: bool,
    /// The interchange records the run in a monitoring database (`htex interchange
    /// --monitoring`) in the run's directory; the report says its size per task and how long
    /// its writer took to catch up after the last result.
    #[arg(long)]
    monitoring: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Workload {
    Noop,
    Sleep,
    Payload,
}

/// A child process killed on drop.
struct Service {
    name: String,
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// A `/proc/PID/status` memory field (`VmHWM`, `VmRSS`) in MB, to 0.1.
    fn memory_mb(&self, field: &str) -> f64 {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        (kb / 1024.0 * 10.0).round() / 10.0
    }

    fn rss_now_mb(&self) -> f64 {
        self.memory_mb("VmRSS")
    }

    /// Peak resident memory (MB) and CPU seconds so far, from /proc.
    fn usage(&self) -> serde_json::Value {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at state; utime and
        // stime are fields 14 and 15 of the whole line.
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        json!({"name": self.name, "peak_rss_mb": self.memory_mb("VmHWM"),
               "cpu_s": (ticks / hz * 100.0).round() / 100.0})
    }
}

fn spawn(name: &str, args: &[String]) -> anyhow::Result<Service> {
    let exe = std::env::current_exe().context("cannot find the htex executable")?;
    let child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start the {name}"))?;
    Ok(Service {
        name: name.to_string(),
        child,
    })
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.tasks == 0 || args.managers == 0 || args.workers == 0 || args.window == 0 {
        bail!("--tasks, --managers, --workers and --window must be at least 1");
    }
    if args.encrypted && args.stalled_client.is_some() {
        bail!("--stalled-client speaks plaintext; run it without --encrypted");
    }
    let dir = std::env::temp_dir().join(format!("htex-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let addresses = dir.join("addresses.json");
    let mut iargs = vec![
        "interchange".to_string(),
        "--addresses-file".into(),
        path(&addresses),
    ];
    if let Some(bytes) = args.max_queued_bytes {
        iargs.extend(["--max-queued-bytes".into(), bytes.to_string()]);
    }
    let journal = dir.join("journal");
    let _ = std::fs::remove_file(&journal);
    if args.journal {
        iargs.extend(["--journal".into(), path(&journal)]);
    }
    let database = dir.join("monitoring.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
    if args.monitoring {
        iargs.extend(["--monitoring".into(), path(&database)]);
    }
    let keys = dir.join("keys");
    if args.encrypted {
        use htex_transport::keys::keygen;
        keygen(&keys, "server")?;
        for (name, list) in [("bench-client", "clients"), ("bench-manager", "managers")] {
            let (public, _) = keygen(&dir.join("own"), name)?;
            std::fs::create_dir_all(keys.join(list))?;
            std::fs::copy(&public, keys.join(list).join(format!("{name}.key")))?;
        }
        iargs.extend(["--keys".into(), path(&keys)]);
    }
    let own = |name: &str| path(&dir.join("own").join(format!("{name}.key_secret")));
    let mut interchange = spawn("interchange", &iargs)?;
    let endpoints = wait_for_addresses(&addresses).await?;
    let manager_port = endpoints["manager"]
        .as_str()
        .unwrap_or("")
        .rsplit(':')
        .next()
        .unwrap_or("")
        .to_string();
    let client_endpoint = endpoints["client"].as_str().unwrap_or("").to_string();
    let prefetch = args
        .prefetch
        .unwrap_or(DEFAULT_PREFETCH_PER_WORKER * args.workers);
    let mut managers = Vec::new();
    for i in 0..args.managers {
        let mut margs: Vec<String> = [
            "manager",
            "--port",
            &manager_port,
            "--manager-id",
            &format!("bench-{i}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        margs.extend([
            "--workers".into(),
            args.workers.to_string(),
            "--prefetch".into(),
            prefetch.to_string(),
        ]);
        if args.zero_worker {
            margs.push("--zero-worker".into());
        }
        if args.encrypted {
            margs.extend([
                "--server-key".into(),
                path(&keys.join("server.key")),
                "--key".into(),
                own("bench-manager"),
            ]);
        }
        managers.push(spawn(&format!("manager-{i}"), &margs)?);
    }
    let config = ClientConfig {
        name: "bench".into(),
        // A restart is noticed within this.
        heartbeat_threshold: if args.restart {
            Duration::from_secs(2)
        } else {
            ClientConfig::default().heartbeat_threshold
        },
        server_key: args.encrypted.then(|| keys.join("server.key")),
        key: args
            .encrypted
            .then(|| dir.join("own/bench-client.key_secret")),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&client_endpoint, config).await?;
    wait_for_managers(&client, args.managers).await?;
    // Every worker is up once a first round of tasks has come back.
    let warmup: Vec<_> = (0..args.managers * args.workers * 4)
        .map(|_| client.submit(make_task(&args)))
        .collect();
    futures::future::join_all(warmup).await;

    let stalled = match args.stalled_client {
        Some(bytes) => {
            let stalled = stalled_client(&client_endpoint, bytes).await?;
            // Its tasks run before the timed run does, so the run measures a client that does
            // not read, not the work of its tasks.
            let deadline = Instant::now() + Duration::from_secs(300);
            while client.status().await?.outstanding > 0 {
                if Instant::now() > deadline {
                    bail!("the stalled client's tasks did not finish within 300 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(stalled)
        }
        None => None,
    };
    let mut args = args;
    let window_asked = args.window;
    if let Workload::Payload = args.kind {
        // Tasks in flight hold their payload in this process: a byte budget, not a count.
        args.window = args
            .window
            .min((PAYLOAD_WINDOW_BYTES / args.payload_bytes.max(1)).max(4));
    }
    let restart = args.restart.then(|| Restart {
        args: iargs.clone(),
        addresses: addresses.clone(),
        journal: journal.clone(),
        client_endpoint: client_endpoint.clone(),
        manager_port: manager_port.clone(),
    });
    let (wall, mut latencies, failures, queued) = if args.queue_first {
        let (wall, latencies, failures, queued) =
            queue_first(&client, &args, &mut interchange, restart.as_ref()).await?;
        (wall, latencies, failures, Some(queued))
    } else {
        let (wall, latencies, failures) = drive(&client, &args).await;
        (wall, latencies, failures, None)
    };
    let payload = match args.kind {
        Workload::Payload => {
            let mb_per_s = args.tasks as f64 * args.payload_bytes as f64 / wall.as_secs_f64() / 1e6;
            let ceiling = loopback_mb_per_s().await?;
            Some(json!({
                "bytes": args.payload_bytes,
                "window_asked": window_asked,
                "mb_per_s_each_way": (mb_per_s * 10.0).round() / 10.0,
                "loopback_tcp_mb_per_s": (ceiling * 10.0).round() / 10.0,
                // Each byte crosses loopback TCP four times and a worker pipe twice.
                "share_of_loopback": ((mb_per_s / ceiling) * 1000.0).round() / 1000.0,
            }))
        }
        _ => None,
    };
    let stalled_report = match &stalled {
        Some(_) => Some(stalled_client_outcome(&client, args.stalled_client.unwrap_or(0)).await?),
        None => None,
    };
    latencies.sort_unstable();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let monitoring = if args.monitoring {
        Some(monitoring_report(&database, args.tasks).await)
    } else {
        None
    };
    let report = json!({
        "tasks": args.tasks,
        "kind": format!("{:?}", args.kind).to_lowercase(),
        "managers": args.managers,
        "workers": args.workers,
        "prefetch": prefetch,
        "batch": args.batch,
        "window": args.window,
        "zero_worker": args.zero_worker,
        "encrypted": args.encrypted,
        "journal": args.journal.then(|| json!({
            "bytes_at_end": std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0),
        })),
        "queue_first": args.queue_first,
        "monitoring": monitoring,
        "queued": queued,
        "payload": payload,
        "stalled_client": stalled_report,
        "failures": failures,
        "wall_s": (wall.as_secs_f64() * 1000.0).round() / 1000.0,
        "tasks_per_s": (args.tasks as f64 / wall.as_secs_f64()).round(),
        "latency_us": {"p50": quantile(0.5), "p99": quantile(0.99), "max": quantile(1.0)},
        "interchange": interchange.usage(),
        "manager_processes": managers.iter().map(Service::usage).collect::<Vec<_>>(),
    });
    println!("{report}");
    drop(stalled);
    client.close().await;
    drop(managers);
    drop(interchange);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if failures == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

/// `--monitoring`: waits (up to a minute) until the database holds every task's end, then
/// reports its size and how long that took after the last result.
async fn monitoring_report(database: &std::path::Path, tasks: usize) -> serde_json::Value {
    let started = std::time::Instant::now();
    let mut counts = Default::default();
    while started.elapsed() < std::time::Duration::from_secs(60) {
        match htex_monitoring::db::count_latest_run(database) {
            Ok(c) => {
                counts = c;
                if c.ended >= tasks as u64 {
                    break;
                }
            }
            Err(e) => tracing::debug!("{e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let size = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", database.display()))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let bytes = size("") + size("-wal");
    json!({
        "tasks": counts.tasks,
        "ended": counts.ended,
        "attempts": counts.attempts,
        "events_dropped": counts.events_dropped,
        "caught_up_after_s": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "db_bytes": size(""),
        "wal_bytes": size("-wal"),
        "bytes_per_task": (bytes as f64 / tasks.max(1) as f64).round(),
    })
}

/// `--stalled-client`: a raw client that says hello, submits echo tasks of 1 MiB worth `bytes` of
/// results, and never reads. Its connection is returned, to stay open while the run goes on.
async fn stalled_client(
    endpoint: &str,
    bytes: usize,
) -> anyhow::Result<(
    htex_transport::DealerSendHalf,
    htex_transport::DealerRecvHalf,
)> {
    use htex_protocol::{ClientHello, ClientRequest, TaskKind, TaskSpec};
    use htex_transport::SocketSend;
    let net = htex_transport::NetConfig {
        max_frame_bytes: htex_protocol::DEFAULT_MAX_FRAME_BYTES,
        connect_timeout: Duration::from_secs(10),
        security: Default::default(),
    };
    let (mut send, recv) =
        htex_transport::connect_dealer(endpoint, &net, htex_transport::WhenRefused::Fail).await?;
    let frame = |request: &ClientRequest| -> anyhow::Result<htex_transport::ZmqMessage> {
        Ok(htex_protocol::encode(request)?.into())
    };
    let hello = ClientRequest::Hello(ClientHello {
        protocol_version: htex_protocol::PROTOCOL_VERSION,
        name: "stalled".into(),
        max_frame_bytes: net.max_frame_bytes as u64,
        identity: String::new(),
    });
    send.send(frame(&hello)?).await?;
    let tasks = (bytes >> 20).max(1) as u64;
    let spec = |id| TaskSpec {
        id,
        kind: TaskKind::Function {
            name: "echo".into(),
            args: vec![0x5a; 1 << 20],
        },
        resources: Default::default(),
        priority: 0,
        timeout_ms: None,
        max_retries: 0,
        submitted_us: 0,
    };
    let mut next = 1;
    while next <= tasks {
        let batch: Vec<TaskSpec> = (next..=tasks.min(next + 31)).map(spec).collect();
        next += batch.len() as u64;
        send.send(frame(&ClientRequest::Submit(batch))?).await?;
    }
    Ok((send, recv))
}

/// Whether the interchange dropped the stalled client (within 30 s of the run's end).
async fn stalled_client_outcome(
    client: &Client,
    bytes: usize,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let dropped = loop {
        // The bench client itself is the one client left once the stalled one is dropped.
        if client.status().await?.clients <= 1 {
            break true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(json!({
        "asked_bytes": bytes,
        "dropped": dropped,
        "dropped_after_run_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    }))
}

/// Bytes of payload `--kind payload` keeps in flight at most (the window shrinks to fit).
const PAYLOAD_WINDOW_BYTES: usize = 1 << 30;

/// Bytes per second one TCP connection on loopback carries here, now: 1 GiB in 1 MiB writes
/// from one task to another, in this process. The ceiling for payload runs of the same moment.
async fn loopback_mb_per_s() -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOTAL: usize = 1 << 30;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < TOTAL {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok::<usize, std::io::Error>(got)
    });
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    for _ in 0..TOTAL / chunk.len() {
        stream.write_all(&chunk).await?;
    }
    stream.flush().await?;
    let got = reader.await??;
    Ok(got as f64 / started.elapsed().as_secs_f64() / 1e6)
}

fn make_task(args: &BenchArgs) -> Task {
    match args.kind {
        Workload::Noop => Task::function("noop", vec![0xc0]),
        Workload::Sleep => Task::call("sleep", &args.sleep_ms).expect("a u64 encodes"),
        Workload::Payload => Task::function("echo", vec![0x5a; args.payload_bytes]),
    }
}

/// Without `--prefetch`: enough prefetched tasks per worker that a manager's next batch is on
/// its way while it works through the last (64 per worker ran at 85-100k noop tasks/s on 2
/// cores, 512 at 146-170k; docs/results/performance.md).
const DEFAULT_PREFETCH_PER_WORKER: usize = 512;

/// Runs the tasks with at most `window` in flight; returns wall time, latencies (µs), failures.
async fn drive(client: &Client, args: &BenchArgs) -> (Duration, Vec<u64>, usize) {
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut latencies = Vec::with_capacity(args.tasks);
    let mut submitted = 0;
    let mut failures = 0;
    while latencies.len() < args.tasks {
        // Refill by whole batches (or whatever is left, or when nothing is in flight) while the
        // window has room, letting the client's sender run after each: on a one-thread
        // runtime it shares this thread.
        loop {
            let room = args.window - in_flight.len();
            let left = args.tasks - submitted;
            if left == 0 || (room < args.batch.min(left) && !in_flight.is_empty()) {
                break;
            }
            let n = args.batch.min(left).min(room);
            for _ in 0..n {
                let handle = client.submit(make_task(args));
                let at = Instant::now();
                in_flight.push(async move { (handle.await, at) });
            }
            submitted += n;
            tokio::task::yield_now().await;
        }
        let Some((result, at)) = in_flight.next().await else {
            break;
        };
        latencies.push(at.elapsed().as_micros() as u64);
        if !matches!(result, Ok(r) if r.outcome.is_ok()) {
            failures += 1;
        }
    }
    (started.elapsed(), latencies, failures)
}

/// `--queue-first`: every task queued at the interchange while the managers are held, the
/// interchange's memory read then, then the managers released; the wall time counts from there.
/// How to start the interchange again for `--restart`.
struct Restart {
    args: Vec<String>,
    addresses: PathBuf,
    journal: PathBuf,
    client_endpoint: String,
    manager_port: String,
}

impl Restart {
    /// `kill -9`, then the same command on the same ports; returns the new process and how
    /// long it took to listen (its journal read).
    async fn run(&self, interchange: &mut Service) -> anyhow::Result<Duration> {
        let client_port = self.client_endpoint.rsplit(':').next().unwrap_or("0");
        let mut args = self.args.clone();
        args.extend([
            "--client-port".into(),
            client_port.to_string(),
            "--manager-port".into(),
            self.manager_port.clone(),
        ]);
        let _ = interchange.child.kill();
        let _ = interchange.child.wait();
        let _ = std::fs::remove_file(&self.addresses);
        let started = Instant::now();
        *interchange = spawn("interchange", &args)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while std::fs::read_to_string(&self.addresses).is_err() {
            if Instant::now() > deadline {
                bail!("the restarted interchange did not listen within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(started.elapsed())
    }
}

async fn queue_first(
    client: &Client,
    args: &BenchArgs,
    interchange: &mut Service,
    restart: Option<&Restart>,
) -> anyhow::Result<(Duration, Vec<u64>, usize, serde_json::Value)> {
    let ids: Vec<String> = (0..args.managers).map(|i| format!("bench-{i}")).collect();
    for manager in &ids {
        let manager = manager.clone();
        expect_done(client.command(ClusterCommand::Hold { manager }).await?)?;
    }
    let submit_started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..args.tasks {
        let handle = client.submit(make_task(args));
        let at = Instant::now();
        in_flight.push(async move { (handle.await, at) });
    }
    // Every task queued, or the queue full: its byte cap reached and the count still for a second
    // (the rest of the submission waits at the client for the interchange's Resume).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = (0, Instant::now());
    let status = loop {
        let status = client.status().await?;
        if status.queued >= args.tasks as u64 {
            break status;
        }
        let full = status.task_bytes >= status.max_task_bytes;
        if status.queued != last.0 {
            last = (status.queued, Instant::now());
        } else if full && last.1.elapsed() > Duration::from_secs(1) {
            break status;
        }
        if Instant::now() > deadline {
            bail!(
                "the interchange queued {} of {} tasks in 300 s",
                status.queued,
                args.tasks
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut queued = json!({
        "tasks": status.queued,
        "submitted": args.tasks,
        "task_bytes": status.task_bytes,
        "max_task_bytes": status.max_task_bytes,
        "submit_s": (submit_started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "interchange_rss_mb": interchange.rss_now_mb(),
    });
    let started = Instant::now();
    if let Some(restart) = restart {
        let journal_bytes = std::fs::metadata(&restart.journal)
            .map(|m| m.len())
            .unwrap_or(0);
        let listening = restart.run(interchange).await?;
        queued["journal_bytes"] = json!(journal_bytes);
        queued["restart_to_listening_s"] =
            json!((listening.as_secs_f64() * 1000.0).round() / 1000.0);
        // The managers come back as new registrations, not held; the restored tasks go to
        // them once the interchange stops waiting for managers that held some.
    } else {
        for manager in ids {
            expect_done(client.command(ClusterCommand::Release { manager }).await?)?;
        }
    }
    let mut latencies = Vec::with_capacity(args.tasks);
    let mut failures = 0;
    while let Some((result, at)) = in_flight.next().await {
        latencies.push(at.elapsed().as_micros() as u64);
        if !matches!(result, Ok(r) if r.outcome.is_ok()) {
            failures += 1;
        }
    }
    Ok((started.elapsed(), latencies, failures, queued))
}

fn expect_done(reply: htex_client::CommandReply) -> anyhow::Result<()> {
    match reply {
        htex_client::CommandReply::Done => Ok(()),
        htex_client::CommandReply::Error { message } => {
            bail!("the interchange answered: {message}")
        }
        htex_client::CommandReply::Status(_) => {
            bail!("the interchange answered with a status report")
        }
    }
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

async fn wait_for_addresses(path: &PathBuf) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(value) = serde_json::from_str(&text) {
                return Ok(value);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the interchange did not write {} within 10 s",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_managers(client: &Client, managers: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.status().await?.managers.len() < managers {
        if Instant::now() > deadline {
            bail!("{managers} manager(s) did not register within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
