//! The monitor: the thread that takes the interchange's event batches and hands each to the
//! consumers that are on (the database, the metrics), and the metrics endpoint. Sending never
//! blocks the interchange: past [`MAX_QUEUED_EVENTS`] waiting, batches are dropped and counted
//! (`runs.events_dropped`, `htex_monitoring_events_dropped_total`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::{Database, DbError, RunInfo};
use crate::event::Event;
use crate::metrics::Metrics;

/// Events that may wait for the consumers (about 150 MB at most); ten seconds of 100,000
/// tasks a second.
pub const MAX_QUEUED_EVENTS: usize = 1 << 20;

/// How often the database commits while events flow: readers see a run at most this late.
const COMMIT_PERIOD: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default)]
pub struct MonitorConfig {
    /// The SQLite file (`--monitoring`).
    pub database: Option<PathBuf>,
    /// Where `/metrics` is served (`--metrics-address`).
    pub metrics_address: Option<SocketAddr>,
}

impl MonitorConfig {
    pub fn is_on(&self) -> bool {
        self.database.is_some() || self.metrics_address.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("cannot serve metrics on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The monitoring consumers of one interchange run.
pub struct Monitor {
    sender: Option<Sender<Vec<Event>>>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    metrics_address: Option<SocketAddr>,
    database: Option<(PathBuf, i64)>,
}

impl Monitor {
    /// Opens the database and binds the metrics endpoint (within a tokio runtime), so that a bad
    /// path or a taken port is an error before the interchange starts.
    pub async fn start(config: &MonitorConfig, run: &RunInfo) -> Result<Monitor, MonitorError> {
        let database = match &config.database {
            Some(path) => Some(Database::open(path, run)?),
            None => None,
        };
        let metrics = config
            .metrics_address
            .map(|_| Arc::new(Mutex::new(Metrics::new(&run.htex_version))));
        let (server, metrics_address) = match (config.metrics_address, &metrics) {
            (Some(address), Some(metrics)) => {
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(|source| MonitorError::Bind { address, source })?;
                let bound = listener.local_addr().unwrap_or(address);
                tracing::info!(address = %bound, "serving Prometheus metrics at /metrics");
                let server = tokio::spawn(crate::http::serve(listener, metrics.clone()));
                (Some(server), Some(bound))
            }
            _ => (None, None),
        };
        let (sender, receiver) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let described = database
            .as_ref()
            .map(|d| (d.path().to_path_buf(), d.run_id()));
        let consumers = Consumers {
            database,
            metrics,
            queued: queued.clone(),
            dropped: dropped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("htex-monitor".into())
            .spawn(move || consumers.run(receiver))
            .expect("a thread for the monitor");
        Ok(Monitor {
            sender: Some(sender),
            queued,
            dropped,
            thread: Some(thread),
            server,
            metrics_address,
            database: described,
        })
    }

    /// Where `/metrics` is served (the bound port, when the config named port 0).
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// The database file and this run's id in it.
    pub fn database(&self) -> Option<&(PathBuf, i64)> {
        self.database.as_ref()
    }

    /// Hands a batch to the consumers, or drops it (counted) when they are too far behind.
    pub fn send(&self, events: Vec<Event>) {
        let n = events.len();
        if n == 0 {
            return;
        }
        if self.queued.load(Ordering::Relaxed) + n > MAX_QUEUED_EVENTS {
            let before = self.dropped.fetch_add(n as u64, Ordering::Relaxed);
            if before == 0 {
                tracing::warn!(
                    "monitoring cannot keep up: over {MAX_QUEUED_EVENTS} events wait; dropping \
                     events (counted in runs.events_dropped and \
                     htex_monitoring_events_dropped_total)"
                );
            }
            return;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        if let Some(sender) = &self.sender {
            let _ = sender.send(events);
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes what waits, ends the run in the database and stops serving metrics.
    pub async fn finish(mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// What the monitor thread owns.
struct Consumers {
    database: Option<Database>,
    metrics: Option<Arc<Mutex<Metrics>>>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl Consumers {
    fn run(mut self, receiver: Receiver<Vec<Event>>) {
        let mut last_commit = Instant::now();
        loop {
            let wait = COMMIT_PERIOD.saturating_sub(last_commit.elapsed());
            match receiver.recv_timeout(wait) {
                Ok(batch) => {
                    self.consume(&batch);
                    self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                    if last_commit.elapsed() >= COMMIT_PERIOD {
                        self.commit();
                        last_commit = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.commit();
                    last_commit = Instant::now();
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if let Some(db) = &mut self.database {
            match db.finish(htex_protocol::now_us(), dropped) {
                Ok(()) => tracing::info!(
                    path = %db.path().display(),
                    run = db.run_id(),
                    dropped,
                    "monitoring database written"
                ),
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    fn consume(&mut self, batch: &[Event]) {
        if let Some(db) = &mut self.database {
            if let Err(e) = db.apply(batch) {
                // A full disk or a removed file: the interchange goes on without its database.
                tracing::error!("{e}; monitoring stops writing to it");
                self.database = None;
            }
        }
        if let Some(metrics) = &self.metrics {
            let mut metrics = metrics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            metrics.set_dropped(self.dropped.load(Ordering::Relaxed));
            metrics.apply(batch);
        }
    }

    fn commit(&mut self) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if let Some(db) = &mut self.database {
            let result = db.commit().and_then(|()| {
                if dropped > 0 {
                    db.set_dropped(dropped)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                tracing::error!("{e}; monitoring stops writing to it");
                self.database = None;
            }
        }
    }
}
