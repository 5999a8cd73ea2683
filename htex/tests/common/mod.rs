//! Helpers for tests that run `htex` as separate processes: an interchange with a short heartbeat
//! threshold, managers, and a client, all cleaned up on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use htex_client::{Client, TaskHandle, TaskResult};

pub const HTEX: &str = env!("CARGO_BIN_EXE_htex");

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling a process this test started.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }
}

/// Starts `htex ARGS...` (optionally under a wrapper such as `ip netns exec NS`).
pub fn htex_in(wrapper: &[&str], args: &[&str]) -> Running {
    let mut argv: Vec<&str> = wrapper.to_vec();
    argv.push(HTEX);
    argv.extend_from_slice(args);
    Running(
        Command::new(argv[0])
            .args(&argv[1..])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn htex(args: &[&str]) -> Running {
    htex_in(&[], args)
}

/// A running interchange and where it listens.
pub struct TestInterchange {
    pub process: Running,
    pub client_endpoint: String,
    pub manager_port: String,
    /// `http://HOST:PORT/metrics`, with `--metrics-address`.
    pub metrics: Option<String>,
}

/// An interchange on `address` with heartbeats every 0.5 s and a 2 s threshold.
pub async fn interchange(name: &str, address: &str) -> TestInterchange {
    interchange_with(name, address, &[]).await
}

/// `interchange`, with more flags.
pub async fn interchange_with(name: &str, address: &str, extra: &[&str]) -> TestInterchange {
    let dir: PathBuf = std::env::temp_dir().join(format!("htex-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addresses = dir.join("addresses.json");
    let _ = std::fs::remove_file(&addresses);
    let mut args = vec![
        "interchange",
        "--address",
        address,
        "--heartbeat-period",
        "0.5",
        "--heartbeat-threshold",
        "2",
        "--addresses-file",
        addresses.to_str().unwrap(),
    ];
    if address != "127.0.0.1" {
        // These tests are about faults, not keys (tests/tests/curve.rs has those).
        args.push("--insecure");
    }
    args.extend_from_slice(extra);
    let process = htex(&args);
    let endpoints = read_endpoints(&addresses, "").await;
    let endpoint = |key: &str| endpoints[key].as_str().unwrap().to_string();
    let manager_port = endpoint("manager").rsplit(':').next().unwrap().to_string();
    let client_port = endpoint("client").rsplit(':').next().unwrap().to_string();
    TestInterchange {
        process,
        client_endpoint: format!("tcp://127.0.0.1:{client_port}"),
        manager_port,
        metrics: endpoints["metrics"].as_str().map(str::to_string),
    }
}

/// The endpoints an interchange wrote to its `--addresses-file` (waits up to 10 s for it;
/// `context` goes into the panic when it never comes).
pub async fn read_endpoints(addresses: &std::path::Path, context: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(addresses).ok();
        if let Some(value) = text.and_then(|t| serde_json::from_str(&t).ok()) {
            return value;
        }
        assert!(Instant::now() < deadline, "no addresses file {context}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A manager with 2 workers named `id`.
pub fn manager(wrapper: &[&str], host: &str, port: &str, id: &str) -> Running {
    htex_in(
        wrapper,
        &[
            "manager",
            "--interchange",
            host,
            "--port",
            port,
            "--workers",
            "2",
            "--manager-id",
            id,
        ],
    )
}

/// Waits until exactly `ids` are the connected managers (sorted), or panics after `timeout`.
pub async fn wait_for_managers(client: &Client, ids: &[&str], timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut now: Vec<String> = client
            .status()
            .await
            .unwrap()
            .managers
            .into_iter()
            .map(|m| m.id)
            .collect();
        now.sort();
        if now == ids {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "managers {now:?}, waited for {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits every handle (within a minute); each must end once, with its own id, successfully.
pub async fn all_succeeded(handles: Vec<TaskHandle>) -> Vec<TaskResult> {
    let ids: Vec<_> = handles.iter().map(|h| h.id()).collect();
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(handles))
        .await
        .expect("every task ends");
    ids.iter()
        .zip(results)
        .map(|(id, result)| {
            let result = result.unwrap();
            assert_eq!(result.id, *id);
            assert!(result.outcome.is_ok(), "task {id}: {:?}", result.outcome);
            result
        })
        .collect()
}

/// With `held` held, a new task must run on `serving`; nothing is left outstanding and no task
/// got a second result.
pub async fn serves_alone(client: &Client, serving: &str, held: &str) {
    client
        .command(htex_client::Command::Hold {
            manager: held.into(),
        })
        .await
        .unwrap();
    let result = client
        .submit(htex_client::Task::call("sleep", &1u64).unwrap())
        .await
        .unwrap();
    assert_eq!(result.slot.unwrap().manager, serving);
    assert_eq!(client.status().await.unwrap().outstanding, 0);
    assert_eq!(client.stray_results(), 0, "a task got a second result");
}
