//! A manager that goes silent and comes back: paused with SIGSTOP past the heartbeat threshold
//! and resumed with SIGCONT, and cut off by taking down the veth link of its network namespace.
//! Either way the interchange declares it lost and retries its tasks elsewhere; the manager
//! notices, registers again, serves on; late results are dropped as duplicates; every task ends
//! exactly once.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{all_succeeded, interchange, manager, serves_alone, wait_for_managers};
use htex_client::{Client, Task, TaskHandle};

fn sleeps(client: &Client, n: usize, ms: u64) -> Vec<TaskHandle> {
    (0..n)
        .map(|_| client.submit(Task::call("sleep", &ms).unwrap().max_retries(2)))
        .collect()
}

/// Every task succeeded once, some after a retry; returns how many were retried.
async fn all_succeeded_counting_retries(handles: Vec<TaskHandle>) -> usize {
    all_succeeded(handles)
        .await
        .iter()
        .filter(|r| r.attempts > 1)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_manager_is_lost_then_registers_again() {
    let ic = interchange("sigstop", "127.0.0.1").await;
    let a = manager(&[], "127.0.0.1", &ic.manager_port, "a");
    let _b = manager(&[], "127.0.0.1", &ic.manager_port, "b");
    let client = Client::connect(&ic.client_endpoint).await.unwrap();
    wait_for_managers(&client, &["a", "b"], Duration::from_secs(10)).await;

    let handles = sleeps(&client, 3000, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal(libc::SIGSTOP);
    let detected = wait_for_managers(&client, &["b"], Duration::from_secs(10)).await;
    println!("paused manager declared lost after {detected:?}");
    assert!(detected < Duration::from_secs(5), "threshold is 2 s");
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal(libc::SIGCONT);
    let back = wait_for_managers(&client, &["a", "b"], Duration::from_secs(15)).await;
    println!("resumed manager registered again after {back:?}");
    let retried = all_succeeded_counting_retries(handles).await;
    assert!(retried > 0, "the paused manager held no task");
    // It serves again: with b held, new tasks can only run on a.
    serves_alone(&client, "a", "b").await;
}

/// Runs `ip ARGS`; false when it fails (no privileges, no iproute2).
fn ip(args: &str) -> bool {
    Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace joined to the host by a veth pair: host 10.231.X.1, namespace 10.231.X.2.
struct Namespace {
    name: String,
    host_side: String,
}

impl Namespace {
    fn create() -> Option<Namespace> {
        let id = std::process::id() % 200 + 20;
        let name = format!("htex-ns-{id}");
        let host_side = format!("htexh{id}");
        let inner = format!("htexn{id}");
        let ns = Namespace {
            name: name.clone(),
            host_side: host_side.clone(),
        };
        let ok = ip(&format!("netns add {name}"))
            && ip(&format!("link add {host_side} type veth peer name {inner}"))
            && ip(&format!("link set {inner} netns {name}"))
            && ip(&format!("addr add 10.231.{id}.1/30 dev {host_side}"))
            && ip(&format!("link set {host_side} up"))
            && ip(&format!(
                "netns exec {name} ip addr add 10.231.{id}.2/30 dev {inner}"
            ))
            && ip(&format!("netns exec {name} ip link set {inner} up"))
            && ip(&format!("netns exec {name} ip link set lo up"));
        ok.then_some(ns)
    }

    fn host_address(&self) -> String {
        format!("10.231.{}.1", self.name.rsplit('-').next().unwrap())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        ip(&format!("link del {}", self.host_side));
        ip(&format!("netns del {}", self.name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_cut_off_by_the_network_is_lost_then_registers_again() {
    let Some(ns) = Namespace::create() else {
        let why = "cannot create a network namespace and veth pair here (needs root and \
                   iproute2); the SIGSTOP test covers a silent manager";
        htex_tests::skip_unless_required("netns", why);
        return;
    };
    let ic = interchange("netcut", "0.0.0.0").await;
    let inside = ["ip", "netns", "exec", ns.name.as_str()];
    let _a = manager(&inside, &ns.host_address(), &ic.manager_port, "a");
    let _b = manager(&[], "127.0.0.1", &ic.manager_port, "b");
    let client = Client::connect(&ic.client_endpoint).await.unwrap();
    wait_for_managers(&client, &["a", "b"], Duration::from_secs(10)).await;

    let handles = sleeps(&client, 3000, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_at = Instant::now();
    assert!(ip(&format!("link set {} down", ns.host_side)));
    let detected = wait_for_managers(&client, &["b"], Duration::from_secs(10)).await;
    println!("cut-off manager declared lost after {detected:?}");
    let retried = all_succeeded_counting_retries(handles).await;
    assert!(retried > 0, "the cut-off manager held no task");
    assert!(ip(&format!("link set {} up", ns.host_side)));
    let back = wait_for_managers(&client, &["a", "b"], Duration::from_secs(30)).await;
    println!(
        "manager registered again {back:?} after the link came back ({:?} after the cut)",
        cut_at.elapsed()
    );
    serves_alone(&client, "a", "b").await;
}
