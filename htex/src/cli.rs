//! Subcommands of `htex`; `htex --help` is the reference.

use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use htex_client::Client;
use htex_interchange::Interchange;
use htex_protocol::{Command, StatusReport};

use htex_local::LocalCluster;

use crate::common::default_workers;
use crate::run::run_tasks;
use crate::taskfile;

#[derive(Parser)]
#[command(
    name = "htex",
    version,
    about = "A pilot-job task executor for GPU nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run a task file on an embedded local cluster (interchange, managers and workers).
    Run(RunArgs),
    /// Send a task file to a running interchange and wait for every result.
    Submit(SubmitArgs),
    /// Start an interchange: the client port and the manager port.
    Interchange(Box<crate::interchange_cmd::InterchangeArgs>),
    /// Start a manager: connects to an interchange and runs one worker per slot.
    Manager(Box<crate::manager_cmd::ManagerArgs>),
    /// Serve tasks on stdin/stdout (what a manager spawns; not for direct use).
    Worker,
    /// Benchmark an interchange and managers started as separate processes; prints one JSON line.
    Bench(crate::bench::BenchArgs),
    /// Show an interchange's managers, slots, load and queue.
    Status(StatusArgs),
    /// The live view: `htex status --watch`.
    Top(TopArgs),
    /// Draw a monitoring database (`--monitoring`) as one self-contained HTML file: a timeline
    /// of every slot, tasks in flight, queue and run times, slot and GPU use.
    Report(ReportArgs),
    /// Show the blocks of managers the interchange's provider started (Slurm jobs, local
    /// processes): job id, state, managers, age, idle time, time left, and the last scaling
    /// decision.
    Blocks {
        #[command(flatten)]
        target: InterchangeAddress,
        /// Resume scaling paused after failed submissions.
        #[arg(long)]
        resume: bool,
    },
    /// Stop sending tasks to a manager; it finishes what it has and exits.
    Drain {
        #[command(flatten)]
        target: InterchangeAddress,
        /// The manager's id, as `htex status` shows it.
        manager: String,
    },
    /// Shut an interchange down; its managers stop and outstanding tasks are cancelled.
    Shutdown {
        #[command(flatten)]
        target: InterchangeAddress,
    },
    /// Make a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret (mode 0600), in
    /// ZeroMQ's certificate format. Existing files are never overwritten.
    Keygen {
        /// Where to write them (made, mode 0700, if missing).
        dir: PathBuf,
        /// `server` for the interchange's own pair; any name for a client or manager.
        name: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Task file: one JSON object per line.
    tasks: PathBuf,
    /// Where to write one JSON result line per task.
    #[arg(long, default_value = "htex-results.jsonl")]
    results: PathBuf,
    /// Managers to start.
    #[arg(long, default_value_t = 1)]
    managers: usize,
    /// Worker processes per manager (default: one per CPU core).
    #[arg(long)]
    workers: Option<usize>,
    /// Run on blocks of managers instead of the embedded cluster: an interchange config with
    /// `[provider]` and `[scaling]` tables (e.g. examples/slurm.toml). The interchange runs in
    /// this process and shuts its blocks down when the tasks are done.
    #[arg(long, conflicts_with_all = ["managers", "workers"])]
    config: Option<PathBuf>,
    /// With `--config` naming `keys`: this client's secret key (its public half in KEYS/clients).
    #[arg(long, requires = "config")]
    key: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Record the run in this SQLite file (see `htex interchange --monitoring`).
    #[arg(long, value_name = "DB")]
    monitoring: Option<PathBuf>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics while the run lasts.
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::interchange_cmd::parse_socket_address)]
    metrics_address: Option<std::net::SocketAddr>,
}

impl RunArgs {
    fn monitoring(&self) -> htex_monitoring::MonitorConfig {
        htex_monitoring::MonitorConfig {
            database: self.monitoring.clone(),
            metrics_address: self.metrics_address,
        }
    }
}

#[derive(Args)]
struct SubmitArgs {
    #[command(flatten)]
    target: InterchangeAddress,
    tasks: PathBuf,
    #[arg(long, default_value = "htex-results.jsonl")]
    results: PathBuf,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct InterchangeAddress {
    /// Interchange host.
    #[arg(long, default_value = "127.0.0.1")]
    interchange: String,
    /// Interchange client port.
    #[arg(long)]
    port: u16,
    /// CURVE: the interchange's public key (`server.key`), with --key.
    #[arg(long, value_name = "FILE")]
    server_key: Option<PathBuf>,
    /// CURVE: this client's own secret key file (`NAME.key_secret`, mode 0600); its public key
    /// must be in the interchange's `clients/` directory.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

impl InterchangeAddress {
    fn endpoint(&self) -> String {
        format!("tcp://{}:{}", self.interchange, self.port)
    }

    async fn connect(&self) -> Result<Client, htex_client::ClientError> {
        let config = htex_client::ClientConfig {
            server_key: self.server_key.clone(),
            key: self.key.clone(),
            ..htex_client::ClientConfig::default()
        };
        Client::connect_with(&self.endpoint(), config).await
    }
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    target: InterchangeAddress,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Redraw the status in place every SECONDS (default 1) until Ctrl-C: queue, rates,
    /// managers, every slot busy or idle with its GPU share and use.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1", conflicts_with = "json")]
    watch: Option<f64>,
}

#[derive(Args)]
struct ReportArgs {
    /// The monitoring database.
    database: PathBuf,
    /// Where to write the report.
    #[arg(long, default_value = "htex-report.html")]
    out: PathBuf,
    /// Write the slot timeline alone, as an SVG file.
    #[arg(long)]
    svg: bool,
    /// Which run of the database (default: the latest).
    #[arg(long)]
    run: Option<i64>,
}

#[derive(Args)]
struct TopArgs {
    #[command(flatten)]
    target: InterchangeAddress,
    /// Seconds between frames.
    #[arg(long, default_value_t = 1.0)]
    every: f64,
}

/// An error and its causes as one sentence, each cause once: library errors often name their
/// source in their own message already (`cannot open X: <source>`), and the chain repeats it.
fn sentence(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Runs the command line; errors are printed, not panicked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Commands::Worker = cli.command {
        return match htex_worker::serve(&htex_worker::Registry::with_builtins()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("htex worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let service = matches!(cli.command, Commands::Interchange(_) | Commands::Manager(_));
    init_logging(service);
    let runtime = runtime(service, std::env::var("HTEX_THREADS").ok().as_deref());
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("htex: {}", sentence(&e));
            ExitCode::from(2)
        }
    }
}

/// The async runtime. The interchange and the manager are each one event loop of small I/O
/// steps: they run on one thread, which spares the cross-thread wake-ups that cost more than the
/// work on a small node (measured: 41k → 51k noop tasks/s end to end on 2 cores). Client
/// commands (`run`, `submit`, `bench`, ...) get a thread per core. `HTEX_THREADS=N` overrides
/// both (1: one thread).
fn runtime(service: bool, threads: Option<&str>) -> tokio::runtime::Runtime {
    let threads = threads.and_then(|v| v.parse::<usize>().ok());
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        None if service => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = threads.filter(|&n| n > 1) {
                b.worker_threads(n);
            }
            b
        }
    };
    builder.enable_all().build().expect("a tokio runtime")
}

fn init_logging(service: bool) {
    let default = if service { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log file or pipe gets plain text. A log line that cannot be
    // written is dropped: by default the subscriber reports that with `eprintln!`, which
    // panics when stderr is a pipe nobody reads any more, and the panic ended whichever task
    // was logging (the signal handler's, so a manager ignored SIGTERM).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(command: Commands) -> anyhow::Result<ExitCode> {
    match command {
        Commands::Run(args) => run(args).await,
        Commands::Submit(args) => submit(args).await,
        Commands::Interchange(args) => crate::interchange_cmd::interchange(*args).await,
        Commands::Blocks { target, resume } => blocks(target, resume).await,
        Commands::Manager(args) => crate::manager_cmd::manager(*args).await,
        Commands::Status(args) => status(args).await,
        Commands::Report(args) => report(args),
        Commands::Top(args) => {
            status(StatusArgs {
                target: args.target,
                json: false,
                watch: Some(args.every),
            })
            .await
        }
        Commands::Bench(args) => crate::bench::bench(args).await,
        Commands::Keygen { dir, name } => {
            let (public, secret) = htex_transport::keys::keygen(&dir, &name)?;
            println!("public key: {}", public.display());
            println!("secret key: {} (keep it private)", secret.display());
            Ok(ExitCode::SUCCESS)
        }
        Commands::Drain { target, manager } => {
            let client = target.connect().await?;
            client
                .command(Command::Drain {
                    manager: manager.clone(),
                })
                .await?;
            println!("manager {manager} is draining");
            Ok(ExitCode::SUCCESS)
        }
        Commands::Shutdown { target } => {
            let client = target.connect().await?;
            client.command(Command::Shutdown).await?;
            println!("interchange shutting down");
            Ok(ExitCode::SUCCESS)
        }
        Commands::Worker => unreachable!("handled before the runtime starts"),
    }
}

fn read_task_file(path: &PathBuf) -> anyhow::Result<Vec<taskfile::NamedTask>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read task file {}", path.display()))?;
    match taskfile::parse(&text) {
        Ok(tasks) if tasks.is_empty() => bail!("{}: no tasks", path.display()),
        Ok(tasks) => Ok(tasks),
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            bail!(
                "{} has {} bad line(s); nothing was run:\n{}",
                path.display(),
                errors.len(),
                lines.join("\n")
            )
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let tasks = read_task_file(&args.tasks)?;
    if let Some(path) = &args.config {
        return run_on_blocks(tasks, path, &args).await;
    }
    let workers = args.workers.unwrap_or_else(default_workers);
    if args.managers == 0 || workers == 0 {
        bail!("--managers and --workers must be at least 1");
    }
    let cluster =
        LocalCluster::start_monitored(args.managers, workers, None, args.monitoring()).await?;
    announce_monitoring(&args, cluster.interchange().metrics_address());
    let client = Client::connect(cluster.client_endpoint()).await?;
    let outcome = write_results(&client, tasks, &args.results, !args.quiet).await;
    client.close().await;
    cluster.stop().await?;
    outcome
}

/// `htex run --config`: an interchange with the file's provider, in this process, and a client
/// of it; shutting the interchange down stops its managers, which ends their blocks.
async fn run_on_blocks(
    tasks: Vec<taskfile::NamedTask>,
    path: &std::path::Path,
    args: &RunArgs,
) -> anyhow::Result<ExitCode> {
    let mut config = crate::interchange_cmd::interchange_config(
        &crate::interchange_cmd::InterchangeArgs::from_file(path),
    )?;
    let monitoring = args.monitoring();
    if monitoring.database.is_some() {
        config.monitoring.database = monitoring.database;
    }
    if monitoring.metrics_address.is_some() {
        config.monitoring.metrics_address = monitoring.metrics_address;
    }
    if config.provider.is_none() {
        bail!(
            "{} has no [provider] table: `htex run --config` runs its tasks on blocks of \
             managers, and needs a provider to start them",
            path.display()
        );
    }
    let server_key = config.keys.as_ref().map(|dir| dir.join("server.key"));
    if server_key.is_some() && args.key.is_none() {
        bail!(
            "{} names keys: pass --key with a client's secret key whose public half is in \
             KEYS/clients",
            path.display()
        );
    }
    let interchange = Interchange::start(config).await?;
    eprintln!(
        "interchange: clients {}, managers {}",
        interchange.client_endpoint(),
        interchange.manager_endpoint()
    );
    announce_monitoring(args, interchange.metrics_address());
    let client_config = htex_client::ClientConfig {
        server_key,
        key: args.key.clone(),
        ..htex_client::ClientConfig::default()
    };
    let outcome = match Client::connect_with(interchange.client_endpoint(), client_config).await {
        Ok(client) => {
            let outcome = write_results(&client, tasks, &args.results, !args.quiet).await;
            client.close().await;
            outcome
        }
        Err(e) => Err(e.into()),
    };
    interchange.shutdown().await?;
    outcome
}

fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    use htex_monitoring::report::{render_html, render_timeline_svg, RunSelector};
    let run = args.run.map_or(RunSelector::Latest, RunSelector::Id);
    let text = if args.svg {
        render_timeline_svg(&args.database, run)?
    } else {
        render_html(&args.database, run)?
    };
    std::fs::write(&args.out, text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Where the run's monitoring goes, on stderr (stdout is the summary).
fn announce_monitoring(args: &RunArgs, metrics: Option<std::net::SocketAddr>) {
    if let Some(db) = &args.monitoring {
        eprintln!(
            "monitoring: {} (htex report {0} --out report.html)",
            db.display()
        );
    }
    if let Some(address) = metrics {
        eprintln!("metrics: http://{address}/metrics");
    }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let tasks = read_task_file(&args.tasks)?;
    let client = args.target.connect().await?;
    let outcome = write_results(&client, tasks, &args.results, !args.quiet).await;
    client.close().await;
    outcome
}

async fn write_results(
    client: &Client,
    tasks: Vec<taskfile::NamedTask>,
    results: &PathBuf,
    progress: bool,
) -> anyhow::Result<ExitCode> {
    let file = File::create(results)
        .with_context(|| format!("cannot create results file {}", results.display()))?;
    let mut out = BufWriter::new(file);
    let show = progress && std::io::stderr().is_terminal();
    let summary = run_tasks(client, tasks, &mut out, show).await?;
    summary.print(&results.display().to_string());
    Ok(if summary.failures() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn blocks(target: InterchangeAddress, resume: bool) -> anyhow::Result<ExitCode> {
    let client = target.connect().await?;
    if resume {
        client.command(Command::ResumeScaling).await?;
        println!("scaling resumed");
    }
    let report = client.status().await?;
    client.close().await;
    match &report.scaling {
        Some(scaling) => crate::interchange_cmd::print_blocks(scaling),
        None => println!("this interchange has no provider: its managers are started by hand"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.target.connect().await?;
    if let Some(seconds) = args.watch {
        let every = crate::common::seconds("watch", seconds)?;
        if every < std::time::Duration::from_millis(50) {
            bail!("--watch {seconds}: give at least 0.05 seconds between frames");
        }
        let watched = crate::live::watch(&client, every).await;
        client.close().await;
        watched?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = client.status().await?;
    client.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&report))?);
    } else {
        print_status(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn status_json(report: &StatusReport) -> serde_json::Value {
    serde_json::to_value(report).unwrap_or_default()
}

fn print_status(report: &StatusReport) {
    println!(
        "{} (protocol {}), up {:.0} s: {} client(s), {} queued, {} outstanding ({:.1} of {:.1} MiB \
         of tasks held)",
        report.interchange,
        report.protocol_version,
        report.uptime_ms as f64 / 1000.0,
        report.clients,
        report.queued,
        report.outstanding,
        report.task_bytes as f64 / (1u64 << 20) as f64,
        report.max_task_bytes as f64 / (1u64 << 20) as f64,
    );
    match report.security.as_str() {
        "curve" => println!("links: CURVE, encrypted and authenticated"),
        "" => {}
        other if other.contains("insecure") => println!(
            "WARNING: links are {other}: anyone who reaches the ports can submit tasks or pose \
             as a manager"
        ),
        other => println!("links: {other}"),
    }
    if let Some(scaling) = &report.scaling {
        let live = scaling.blocks.iter().filter(|b| b.state != "ended").count();
        println!(
            "blocks ({}): {live} live of {}..{}; {}",
            scaling.provider, scaling.min_blocks, scaling.max_blocks, scaling.decision
        );
        if let Some(paused) = &scaling.paused {
            println!("WARNING: block scaling {paused}");
        }
    }
    for m in &report.managers {
        println!(
            "manager {} on {} ({}): {}/{} tasks, {} slot(s), heard from {} ms ago",
            m.id,
            m.hostname,
            m.state,
            m.tasks,
            m.capacity,
            m.slots.len(),
            m.last_heartbeat_ms_ago
        );
        for slot in &m.slots {
            println!("  slot {slot}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sentence;

    #[test]
    fn an_error_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open j: {source}")]
        struct Open {
            source: std::io::Error,
        }
        let error = anyhow::Error::new(Open { source: io }).context("starting the interchange");
        assert_eq!(
            sentence(&error),
            "starting the interchange: cannot open j: no such file"
        );
    }
}
