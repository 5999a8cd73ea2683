//! `htex interchange`: flags and the TOML file (`--config`), flags winning; and the blocks
//! table that `htex blocks` prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use htex_interchange::{Interchange, InterchangeConfig, ProviderConfig, ScalingConfig};
use htex_protocol::ScalingReport;
use serde::Deserialize;

use crate::common::{parse_bytes, seconds, shutdown_signal};

#[derive(Args, Default)]
pub struct InterchangeArgs {
    /// TOML file with any of these options (flags win), and `[provider]` and `[scaling]`
    /// tables for blocks of managers (see examples/slurm.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on; 0.0.0.0 for every interface (default 127.0.0.1).
    #[arg(long)]
    address: Option<String>,
    /// Client port (0 picks a free one).
    #[arg(long)]
    client_port: Option<u16>,
    /// Manager port (0 picks a free one).
    #[arg(long)]
    manager_port: Option<u16>,
    /// Write the bound endpoints to this file as JSON.
    #[arg(long)]
    addresses_file: Option<PathBuf>,
    /// Seconds between heartbeats (default 2); the scaling loop runs on the same tick.
    #[arg(long)]
    heartbeat_period: Option<f64>,
    /// Seconds of silence after which a manager is lost (default 6).
    #[arg(long)]
    heartbeat_threshold: Option<f64>,
    /// The largest message accepted or sent (e.g. 64M); a task or result travels if it fits one
    /// with 64 KiB to spare, and a larger one ends with a clear error.
    #[arg(long, value_parser = parse_bytes)]
    max_frame_bytes: Option<usize>,
    /// Bytes of task specs the interchange holds (queued or on managers) before submissions
    /// wait (default: a quarter of this machine's memory).
    #[arg(long, value_parser = parse_bytes)]
    max_queued_bytes: Option<usize>,
    /// CURVE keys: DIR/server.key_secret, and the public keys allowed in DIR/clients/*.key
    /// (client port) and DIR/managers/*.key (manager port). Removing a file revokes its key.
    #[arg(long, value_name = "DIR")]
    keys: Option<PathBuf>,
    /// Listen in plaintext on a non-loopback address (refused otherwise): anyone who reaches
    /// the ports can submit tasks or pose as a manager.
    #[arg(long)]
    insecure: bool,
    /// Blocks kept however idle (overrides `[scaling] min_blocks`).
    #[arg(long)]
    min_blocks: Option<u32>,
    /// Most blocks at once (overrides `[scaling] max_blocks`).
    #[arg(long)]
    max_blocks: Option<u32>,
    /// Keep a journal in FILE: every task accepted, every result until its client has it. A
    /// restart on the same file after a crash restores them (made if missing).
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
    /// Record every task, attempt, manager, slot and GPU sample in this SQLite file (made if
    /// missing; each start adds a run). Read it with `htex report` or sqlite3 while it runs.
    #[arg(long, value_name = "DB")]
    monitoring: Option<PathBuf>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free one; the
    /// addresses file names it).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_socket_address)]
    metrics_address: Option<std::net::SocketAddr>,
}

/// `HOST:PORT` as a socket address (a host name is looked up).
pub fn parse_socket_address(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addresses = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}` is not HOST:PORT ({e})"))?;
    addresses
        .next()
        .ok_or_else(|| format!("`{text}` names no address"))
}

impl InterchangeArgs {
    /// The options of a config file alone, no flags.
    pub fn from_file(path: &std::path::Path) -> InterchangeArgs {
        InterchangeArgs {
            config: Some(path.to_path_buf()),
            ..InterchangeArgs::default()
        }
    }
}

/// A byte count in the file: a number, or a string with a unit (`"64M"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Bytes {
    Count(u64),
    Text(String),
}

impl Bytes {
    fn get(&self, key: &str) -> anyhow::Result<usize> {
        match self {
            Bytes::Count(n) => usize::try_from(*n).with_context(|| format!("{key} is too large")),
            Bytes::Text(t) => parse_bytes(t).map_err(|e| anyhow::anyhow!("{key}: {e}")),
        }
    }
}

/// The interchange's TOML file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InterchangeFile {
    address: Option<String>,
    client_port: Option<u16>,
    manager_port: Option<u16>,
    addresses_file: Option<PathBuf>,
    heartbeat_period: Option<f64>,
    heartbeat_threshold: Option<f64>,
    max_frame_bytes: Option<Bytes>,
    max_queued_bytes: Option<Bytes>,
    keys: Option<PathBuf>,
    insecure: Option<bool>,
    provider: Option<ProviderConfig>,
    scaling: Option<ScalingConfig>,
    journal: Option<PathBuf>,
    monitoring: Option<PathBuf>,
    metrics_address: Option<String>,
}

/// The config the flags and the file make; relative paths in the file, as in flags, are from
/// the current directory.
pub fn interchange_config(args: &InterchangeArgs) -> anyhow::Result<InterchangeConfig> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<InterchangeFile>(&text)
                .with_context(|| format!("{} is not valid", path.display()))?
        }
        None => InterchangeFile::default(),
    };
    let address = args
        .address
        .clone()
        .or(file.address)
        .unwrap_or_else(|| "127.0.0.1".into());
    let client_port = args.client_port.or(file.client_port).unwrap_or(0);
    let manager_port = args.manager_port.or(file.manager_port).unwrap_or(0);
    let heartbeat_period = args
        .heartbeat_period
        .or(file.heartbeat_period)
        .unwrap_or(2.0);
    let heartbeat_threshold = args
        .heartbeat_threshold
        .or(file.heartbeat_threshold)
        .unwrap_or(6.0);
    let mut config = InterchangeConfig {
        client_bind: format!("tcp://{address}:{client_port}"),
        manager_bind: format!("tcp://{address}:{manager_port}"),
        heartbeat_period: seconds("heartbeat-period", heartbeat_period)?,
        heartbeat_threshold: seconds("heartbeat-threshold", heartbeat_threshold)?,
        addresses_file: args.addresses_file.clone().or(file.addresses_file),
        keys: args.keys.clone().or(file.keys),
        insecure: args.insecure || file.insecure.unwrap_or(false),
        journal: args.journal.clone().or(file.journal),
        ..InterchangeConfig::default()
    };
    config.monitoring.database = args.monitoring.clone().or(file.monitoring);
    config.monitoring.metrics_address = match (args.metrics_address, &file.metrics_address) {
        (Some(address), _) => Some(address),
        (None, Some(text)) => {
            Some(parse_socket_address(text).map_err(|e| anyhow::anyhow!("metrics_address: {e}"))?)
        }
        (None, None) => None,
    };
    let frame = match (args.max_frame_bytes, &file.max_frame_bytes) {
        (Some(n), _) => Some(n),
        (None, Some(b)) => Some(b.get("max_frame_bytes")?),
        (None, None) => None,
    };
    if let Some(bytes) = frame {
        config.max_frame_bytes = bytes;
        config.manager_window_bytes = 4 * bytes;
        config.max_peer_backlog_bytes = 4 * bytes;
    }
    match (args.max_queued_bytes, &file.max_queued_bytes) {
        (Some(n), _) => config.max_queued_bytes = n,
        (None, Some(b)) => config.max_queued_bytes = b.get("max_queued_bytes")?,
        (None, None) => {}
    }
    config.provider = file.provider;
    config.scaling = file.scaling.unwrap_or_default();
    if let Some(n) = args.min_blocks {
        config.scaling.min_blocks = n;
    }
    if let Some(n) = args.max_blocks {
        config.scaling.max_blocks = n;
    }
    if config.provider.is_none() && (args.min_blocks.is_some() || args.max_blocks.is_some()) {
        anyhow::bail!("--min-blocks and --max-blocks need a [provider] table in --config");
    }
    Ok(config)
}

pub async fn interchange(args: InterchangeArgs) -> anyhow::Result<ExitCode> {
    let config = interchange_config(&args)?;
    let interchange = Interchange::start(config).await?;
    println!("client endpoint: {}", interchange.client_endpoint());
    println!("manager endpoint: {}", interchange.manager_endpoint());
    if let Some(address) = interchange.metrics_address() {
        println!("metrics: http://{address}/metrics");
    }
    let stopper = interchange.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopper.stop();
    });
    interchange.wait().await?;
    Ok(ExitCode::SUCCESS)
}

fn ms(value: u64) -> String {
    let s = value as f64 / 1000.0;
    if s < 100.0 {
        format!("{s:.1}s")
    } else {
        format!("{s:.0}s")
    }
}

/// The blocks table `htex blocks` prints.
pub fn print_blocks(report: &ScalingReport) {
    println!(
        "provider {}: blocks {}..{}, {} failed submission(s) in a row",
        report.provider, report.min_blocks, report.max_blocks, report.failures
    );
    println!("last decision: {}", report.decision);
    if let Some(paused) = &report.paused {
        println!("PAUSED: {paused}");
    }
    if let Some(error) = &report.last_error {
        println!("last provider error: {error}");
    }
    println!(
        "{:<7} {:<12} {:<11} {:>8} {:>8} {:>8} {:>10}  reason",
        "block", "job", "state", "managers", "age", "idle", "time left"
    );
    for b in &report.blocks {
        println!(
            "{:<7} {:<12} {:<11} {:>8} {:>8} {:>8} {:>10}  {}",
            b.block,
            b.job_id.as_deref().unwrap_or("-"),
            b.state,
            b.managers,
            ms(b.age_ms),
            b.idle_ms.map_or("-".into(), ms),
            b.time_left_ms.map_or("-".into(), ms),
            b.reason.as_deref().unwrap_or("")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_sets_what_the_flags_do_not() {
        let dir = std::env::temp_dir().join(format!("htex-ic-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ic.toml");
        std::fs::write(
            &file,
            r#"
            address = "0.0.0.0"
            client_port = 7000
            max_frame_bytes = "8M"
            insecure = true
            [provider]
            kind = "slurm"
            partition = "debug"
            run_dir = "blocks"
            [scaling]
            max_blocks = 3
            idle_timeout_s = 5
            "#,
        )
        .unwrap();
        let args = InterchangeArgs {
            config: Some(file.clone()),
            client_port: Some(7001),
            max_blocks: Some(4),
            ..InterchangeArgs::default()
        };
        let config = interchange_config(&args).unwrap();
        assert_eq!(config.client_bind, "tcp://0.0.0.0:7001");
        assert_eq!(config.max_frame_bytes, 8 << 20);
        assert!(config.insecure);
        let provider = config.provider.unwrap();
        assert_eq!(provider.run_dir, PathBuf::from("blocks"));
        assert_eq!(config.scaling.max_blocks, 4);
        assert_eq!(config.scaling.idle_timeout_s, 5.0);

        std::fs::write(&file, "[scaling]\nmax_blcks = 3\n").unwrap();
        let err = interchange_config(&args).unwrap_err();
        assert!(format!("{err:#}").contains("max_blcks"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
