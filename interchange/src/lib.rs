//! The htex interchange: binds a client port and a manager port, queues tasks by resource class
//! and priority, keeps the manager table, dispatches tasks in batches to managers with room, and
//! routes each result back to the client that submitted its task.
//!
//! ```no_run
//! # async fn example() -> Result<(), htex_interchange::InterchangeError> {
//! use htex_interchange::{Interchange, InterchangeConfig};
//!
//! let interchange = Interchange::start(InterchangeConfig::default()).await?;
//! println!("clients: {}, managers: {}", interchange.client_endpoint(), interchange.manager_endpoint());
//! interchange.wait().await?;
//! # Ok(())
//! # }
//! ```

mod core;
pub mod journal;
mod queue;
mod records;
pub mod scaling;
mod shell;
mod task_table;

pub use htex_provider::{Launcher, ProviderConfig, ProviderKind};
pub use scaling::ScalingConfig;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use htex_protocol::MIN_MAX_FRAME_BYTES;
use htex_transport::{AllowList, NetConfig, Security, TransportError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How an interchange listens, what it holds, and when it declares peers lost.
#[derive(Debug, Clone)]
pub struct InterchangeConfig {
    /// ZeroMQ endpoint for clients; port 0 picks a free port.
    pub client_bind: String,
    /// ZeroMQ endpoint for managers; port 0 picks a free port.
    pub manager_bind: String,
    /// How often the interchange sends heartbeats, and managers are told to.
    pub heartbeat_period: Duration,
    /// A manager silent for this long is lost.
    pub heartbeat_threshold: Duration,
    /// How long a task no connected manager can run waits for one before it is `Unsatisfiable`.
    pub unsatisfiable_grace: Duration,
    /// The largest frame accepted or sent; a task (or result) travels if it fits one alone,
    /// less [`htex_protocol::ENVELOPE_BYTES`].
    pub max_frame_bytes: usize,
    /// Bytes of task specs held (queued or on managers) past which submissions wait: clients
    /// are told `Busy` and send them again after `Resume`.
    pub max_queued_bytes: usize,
    /// Bytes of task specs one manager may hold at once (at least one task always goes).
    pub manager_window_bytes: usize,
    /// Bytes queued for one peer that does not read them, past which (for a heartbeat
    /// threshold, or at once past twice as many) it is dropped.
    pub max_peer_backlog_bytes: usize,
    /// Write the bound endpoints to this file (JSON) once listening.
    pub addresses_file: Option<PathBuf>,
    /// CURVE keys: `DIR/server.key_secret` (the interchange's pair), and the allow-lists
    /// `DIR/clients/*.key` (client port) and `DIR/managers/*.key` (manager port).
    pub keys: Option<PathBuf>,
    /// Plaintext on a non-loopback address, which is otherwise refused.
    pub insecure: bool,
    /// Where blocks of managers come from, when the interchange starts them itself.
    pub provider: Option<ProviderConfig>,
    /// How many blocks it keeps, and when it adds and releases them (with `provider`).
    pub scaling: ScalingConfig,
    /// The journal file: what the interchange accepted survives a crash, and a restart on
    /// the same file restores it.
    pub journal: Option<PathBuf>,
    /// The event stream's consumers: the monitoring database and the metrics endpoint.
    pub monitoring: htex_monitoring::MonitorConfig,
}

impl Default for InterchangeConfig {
    fn default() -> Self {
        let frame = htex_protocol::DEFAULT_MAX_FRAME_BYTES;
        InterchangeConfig {
            client_bind: "tcp://127.0.0.1:0".into(),
            manager_bind: "tcp://127.0.0.1:0".into(),
            heartbeat_period: Duration::from_secs(2),
            heartbeat_threshold: Duration::from_secs(6),
            unsatisfiable_grace: Duration::from_secs(10),
            max_frame_bytes: frame,
            max_queued_bytes: default_max_queued_bytes(),
            manager_window_bytes: 4 * frame,
            max_peer_backlog_bytes: 4 * frame,
            addresses_file: None,
            keys: None,
            insecure: false,
            provider: None,
            scaling: ScalingConfig::default(),
            journal: None,
            monitoring: htex_monitoring::MonitorConfig::default(),
        }
    }
}

/// A quarter of this machine's memory (4 GiB where it cannot be read).
pub fn default_max_queued_bytes() -> usize {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    match total_kb {
        Some(kb) => usize::try_from(kb.saturating_mul(1024) / 4).unwrap_or(usize::MAX),
        None => 4 << 30,
    }
}

impl InterchangeConfig {
    /// Says what is wrong with a config that could not work, in the flags' terms.
    pub fn validate(&self) -> Result<(), InterchangeError> {
        let fail = |message: String| Err(InterchangeError::Config(message));
        if self.heartbeat_period.is_zero() {
            return fail("--heartbeat-period must be more than 0 seconds".into());
        }
        if self.heartbeat_threshold <= self.heartbeat_period {
            return fail(format!(
                "--heartbeat-threshold ({:.1} s) must be longer than --heartbeat-period ({:.1} s), \
                 or every manager is lost between two heartbeats",
                self.heartbeat_threshold.as_secs_f64(),
                self.heartbeat_period.as_secs_f64()
            ));
        }
        if self.heartbeat_threshold > Duration::from_secs(86_400 * 365) {
            return fail("--heartbeat-threshold must be at most a year".into());
        }
        if self.unsatisfiable_grace > Duration::from_secs(86_400 * 365) {
            return fail("the unsatisfiable grace must be at most a year".into());
        }
        if self.max_frame_bytes < MIN_MAX_FRAME_BYTES || self.max_frame_bytes > (u32::MAX as usize)
        {
            return fail(format!(
                "--max-frame-bytes must be between {MIN_MAX_FRAME_BYTES} and {} bytes, not {}",
                u32::MAX,
                self.max_frame_bytes
            ));
        }
        if self.max_queued_bytes < self.max_frame_bytes {
            return fail(format!(
                "--max-queued-bytes ({}) must be at least --max-frame-bytes ({})",
                self.max_queued_bytes, self.max_frame_bytes
            ));
        }
        if self.max_peer_backlog_bytes < self.max_frame_bytes {
            return fail(format!(
                "the peer backlog budget ({} bytes) must be at least --max-frame-bytes ({})",
                self.max_peer_backlog_bytes, self.max_frame_bytes
            ));
        }
        if let Some(provider) = &self.provider {
            provider
                .validate()
                .map_err(|e| InterchangeError::Config(format!("[provider] {e}")))?;
            self.scaling.validate()?;
            if self.keys.is_some() && provider.manager_key.is_none() {
                return fail(
                    "[provider] manager_key is needed with --keys: the secret key file the \
                     managers it starts use (its public key in KEYS/managers)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InterchangeError {
    #[error("invalid interchange config: {0}")]
    Config(String),
    #[error("cannot bind the {what} endpoint: {source}")]
    Bind {
        what: &'static str,
        source: TransportError,
    },
    #[error("cannot write the addresses file {path}: {source}")]
    AddressesFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the interchange crashed: {0}")]
    Crashed(String),
    #[error(
        "refusing to listen on {endpoint} without encryption: anyone who reaches it could run \
         commands as you. Make keys (`htex keygen KEYS server`, a key per client in \
         KEYS/clients and per manager in KEYS/managers) and pass `--keys KEYS`, or pass \
         `--insecure` on a network you trust"
    )]
    Insecure { endpoint: String },
    #[error("the interchange's keys: {0}")]
    Keys(#[from] htex_transport::KeyError),
    #[error(
        "the key {fingerprint} is in both {clients} and {managers}: a client could register as \
         a manager and a manager could submit; give each role its own key"
    )]
    KeyOnBothLists {
        fingerprint: String,
        clients: String,
        managers: String,
    },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Monitoring(#[from] htex_monitoring::MonitorError),
}

/// Whether an endpoint is reachable only from this machine (loopback TCP or IPC).
pub fn is_local_endpoint(endpoint: &str) -> bool {
    let endpoint = htex_transport::normalize_endpoint(endpoint);
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://");
    };
    let host = match rest.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => rest,
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How each port is secured, from `--keys` (or the lack of it, where that is allowed).
fn port_security(
    config: &InterchangeConfig,
) -> Result<(Security, Security, &'static str), InterchangeError> {
    let Some(dir) = &config.keys else {
        let open = [&config.client_bind, &config.manager_bind]
            .into_iter()
            .find(|e| !is_local_endpoint(e));
        return match (open, config.insecure) {
            (Some(endpoint), false) => Err(InterchangeError::Insecure {
                endpoint: endpoint.clone(),
            }),
            (Some(endpoint), true) => {
                tracing::warn!(
                    "--insecure: {endpoint} is not encrypted and lets anyone who reaches it \
                     submit tasks or pose as a manager"
                );
                Ok((Security::Plain, Security::Plain, "plaintext (--insecure)"))
            }
            (None, _) => Ok((Security::Plain, Security::Plain, "plaintext (loopback)")),
        };
    };
    let keys = htex_transport::keys::load_secret(&dir.join("server.key_secret"))?;
    let clients = Arc::new(AllowList::open(&dir.join("clients"))?);
    let managers = Arc::new(AllowList::open(&dir.join("managers"))?);
    let on_both = clients
        .keys()?
        .intersection(&managers.keys()?)
        .next()
        .copied();
    if let Some(key) = on_both {
        return Err(InterchangeError::KeyOnBothLists {
            fingerprint: key.fingerprint(),
            clients: clients.dir().display().to_string(),
            managers: managers.dir().display().to_string(),
        });
    }
    tracing::info!(
        server_key = %keys.public.fingerprint(),
        "CURVE on both ports; clients from {}, managers from {}",
        clients.dir().display(),
        managers.dir().display()
    );
    let server = |allowed, port| Security::Server {
        keys: keys.clone(),
        allowed,
        port,
    };
    Ok((
        server(clients, "client"),
        server(managers, "manager"),
        "curve",
    ))
}

/// Builds the provider, the manager command line its blocks run, and the scaling state.
fn start_provider(
    config: &InterchangeConfig,
    provider: &ProviderConfig,
    manager_endpoint: &str,
    inputs: &mpsc::Sender<shell::Inbound>,
) -> Result<(shell::ProviderThread, core::Scaling), InterchangeError> {
    let bad = |m: String| InterchangeError::Config(format!("[provider] {m}"));
    let built = htex_provider::build(provider).map_err(|e| bad(e.to_string()))?;
    let htex = match &provider.htex {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| bad(format!("cannot find the htex executable for managers: {e}")))?,
    };
    let endpoint = htex_transport::normalize_endpoint(manager_endpoint);
    let (host, port) = endpoint
        .strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
        .ok_or_else(|| bad(format!("managers cannot reach {manager_endpoint}: not TCP")))?;
    let host = match &provider.address {
        Some(address) => address.clone(),
        None if host == "0.0.0.0" || host == "*" || host == "[::]" => this_host(),
        None => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    };
    let mut manager = vec![
        htex.to_string_lossy().into_owned(),
        "manager".into(),
        "--interchange".into(),
        host,
        "--port".into(),
        port.to_string(),
    ];
    if let (Some(keys), Some(key)) = (&config.keys, &provider.manager_key) {
        manager.push("--server-key".into());
        manager.push(
            absolute(&keys.join("server.key"))
                .to_string_lossy()
                .into_owned(),
        );
        manager.push("--key".into());
        manager.push(absolute(key).to_string_lossy().into_owned());
    }
    manager.extend(provider.manager_args.iter().cloned());
    let run_dir = absolute(&provider.run_dir);
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| bad(format!("cannot make run_dir {}: {e}", run_dir.display())))?;
    let shape = core::BlockShape {
        kind: built.kind(),
        managers_per_block: built.managers_per_block(),
        walltime: built.walltime(),
        slots_estimate: provider.slots_per_block_estimate(),
    };
    tracing::info!(
        provider = shape.kind,
        run_dir = %run_dir.display(),
        min_blocks = config.scaling.min_blocks,
        max_blocks = config.scaling.max_blocks,
        "scaling blocks of managers"
    );
    let thread = shell::ProviderThread::spawn(built, run_dir, manager, inputs.clone());
    Ok((thread, core::Scaling::new(config.scaling.clone(), shape)))
}

fn absolute(path: &std::path::Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// This machine's host name, for managers on other nodes.
fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Reads the journal (off the runtime's thread: a large one takes seconds).
async fn read_journal(path: PathBuf) -> Result<journal::Restored, InterchangeError> {
    let started = std::time::Instant::now();
    let shown = path.display().to_string();
    let restored = tokio::task::spawn_blocking(move || journal::replay(&path))
        .await
        .map_err(|e| InterchangeError::Crashed(format!("reading the journal: {e}")))??;
    if restored.torn_bytes > 0 {
        tracing::warn!(
            journal = %shown,
            at = restored.end,
            bytes = restored.torn_bytes,
            "the journal's last write was cut short (a crash mid-write): recovered up to the \
             last whole record, the torn bytes are cut off"
        );
    }
    tracing::info!(
        journal = %shown,
        records = restored.records,
        tasks = restored.tasks.len(),
        clients = restored.clients.len(),
        ms = started.elapsed().as_millis() as u64,
        "journal read"
    );
    Ok(restored)
}

/// A running interchange.
pub struct Interchange {
    client_endpoint: String,
    manager_endpoint: String,
    metrics_address: Option<std::net::SocketAddr>,
    stop: mpsc::UnboundedSender<()>,
    task: JoinHandle<()>,
}

impl Interchange {
    /// Checks the config, binds both ports and starts serving.
    pub async fn start(config: InterchangeConfig) -> Result<Interchange, InterchangeError> {
        config.validate()?;
        let (client_security, manager_security, security) = port_security(&config)?;
        // The journal is read before the ports open: nobody connects to a half-restored
        // interchange, and a damaged journal stops it here.
        let restored = match &config.journal {
            Some(path) => Some(read_journal(path.clone()).await?),
            None => None,
        };
        let net = |security| NetConfig {
            max_frame_bytes: config.max_frame_bytes,
            connect_timeout: config.heartbeat_threshold,
            security,
        };
        let bind = |what| move |source| InterchangeError::Bind { what, source };
        let clients = htex_transport::bind_router(&config.client_bind, &net(client_security))
            .await
            .map_err(bind("client"))?;
        let managers = htex_transport::bind_router(&config.manager_bind, &net(manager_security))
            .await
            .map_err(bind("manager"))?;
        let client_endpoint = clients.endpoint.clone();
        let manager_endpoint = managers.endpoint.clone();
        let monitor = if config.monitoring.is_on() {
            let run = htex_monitoring::RunInfo {
                started_us: htex_protocol::now_us(),
                interchange: client_endpoint.clone(),
                host: this_host(),
                pid: std::process::id(),
                htex_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            Some(htex_monitoring::Monitor::start(&config.monitoring, &run).await?)
        } else {
            None
        };
        let metrics_address = monitor.as_ref().and_then(|m| m.metrics_address());
        if let Some(path) = &config.addresses_file {
            let metrics = metrics_address
                .map(|a| format!(", \"metrics\": \"http://{a}/metrics\""))
                .unwrap_or_default();
            let json = format!(
                "{{\"client\": \"{client_endpoint}\", \"manager\": \"{manager_endpoint}\"{metrics}}}\n"
            );
            std::fs::write(path, json).map_err(|source| InterchangeError::AddressesFile {
                path: path.clone(),
                source,
            })?;
        }
        tracing::info!(%client_endpoint, %manager_endpoint, "interchange listening");
        let (inputs_tx, inputs_rx) = mpsc::channel(shell::INCOMING_QUEUE);
        let (provider, scaling) = match &config.provider {
            Some(p) => {
                let (thread, scaling) = start_provider(&config, p, &manager_endpoint, &inputs_tx)?;
                (Some(thread), Some(scaling))
            }
            None => (None, None),
        };
        let journal = match (&config.journal, &restored) {
            (Some(path), Some(restored)) => {
                let inputs = inputs_tx.clone();
                let writer = journal::Writer::start(path, restored.end, move |event| {
                    let _ = inputs.blocking_send((core::Input::Journal(event), 0));
                })?;
                Some(writer)
            }
            _ => None,
        };
        let limit = config.max_frame_bytes;
        shell::spawn_reader(core::Side::Client, clients.recv, limit, inputs_tx.clone());
        shell::spawn_reader(core::Side::Manager, managers.recv, limit, inputs_tx);
        let shell_config = shell::ShellConfig {
            provider,
            journal,
            monitor,
            tick: config.heartbeat_period,
            max_frame_bytes: config.max_frame_bytes,
            backlog_budget: config.max_peer_backlog_bytes,
            backlog_grace: config.heartbeat_threshold,
        };
        let routers = shell::Routers {
            clients: clients.send,
            managers: managers.send,
        };
        let (stop, stop_rx) = mpsc::unbounded_channel();
        let journal_state = config.journal.as_deref().map(core::JournalState::new);
        let now = core::Now::read();
        let monitored = config.monitoring.is_on();
        let mut core = core::Core::new(config, security, scaling, journal_state, monitored, now);
        if let Some(restored) = restored {
            core.restore(now, restored);
        }
        let task = tokio::spawn(shell::run(core, routers, shell_config, inputs_rx, stop_rx));
        Ok(Interchange {
            client_endpoint,
            manager_endpoint,
            metrics_address,
            stop,
            task,
        })
    }

    /// A handle that shuts this interchange down from elsewhere (a signal handler, say).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// The endpoint clients connect to, e.g. `tcp://127.0.0.1:54321`.
    pub fn client_endpoint(&self) -> &str {
        &self.client_endpoint
    }

    /// The endpoint managers connect to.
    pub fn manager_endpoint(&self) -> &str {
        &self.manager_endpoint
    }

    /// Where `/metrics` is served, with `--metrics-address`.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_address
    }

    /// Shuts down as the `Shutdown` command does: managers are told to stop and every outstanding
    /// task ends with `Cancelled`.
    pub async fn shutdown(self) -> Result<(), InterchangeError> {
        let _ = self.stop.send(());
        joined(self.task.await)
    }

    /// Waits until the interchange stops (after a `Shutdown` command or a signal); an error if
    /// it crashed.
    pub async fn wait(self) -> Result<(), InterchangeError> {
        joined(self.task.await)
    }
}

fn joined(result: Result<(), tokio::task::JoinError>) -> Result<(), InterchangeError> {
    result.map_err(|e| {
        let why = match e.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into()),
            Err(e) => e.to_string(),
        };
        InterchangeError::Crashed(why)
    })
}

/// Shuts a running [`Interchange`] down; see [`Interchange::stopper`].
#[derive(Clone)]
pub struct Stopper(mpsc::UnboundedSender<()>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(());
    }
}
