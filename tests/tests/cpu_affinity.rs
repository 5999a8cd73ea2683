//! CPU affinity of slots: real worker processes (and the commands they start) run confined to
//! the CPUs their slot was given, and impossible requests are refused before anything starts.

use std::collections::BTreeMap;

use htex_client::{Task, TaskOutput};
use htex_manager::affinity::{available_cpus, format_cpu_list, AffinityError};
use htex_manager::{CpuAffinity, Manager, ManagerConfig, ManagerError};
use htex_tests::{test_worker, TestCluster};

const PROBE: &str = "grep Cpus_allowed_list /proc/self/status | cut -f2; \
                     echo \"$OMP_NUM_THREADS $HTEX_SLOT_CPUS\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_their_commands_run_on_their_slot_cpus() {
    let available = available_cpus().unwrap();
    if available.len() < 2 {
        let why = format!("needs 2 CPUs, this process may use {}", available.len());
        htex_tests::skip_unless_required("cpus2", &why);
        return;
    }
    // Two slots, one CPU each, taken from the end of the list.
    let cluster = TestCluster::start_with(test_worker!(), Default::default(), 1, 2, |config| {
        config.cpu_affinity = CpuAffinity::BlockReverse;
        config.cores_per_slot = Some(1);
    })
    .await;
    let client = cluster.client().await;
    let status = client.status().await.unwrap();
    let slots: Vec<Vec<u32>> = status.managers[0]
        .slots
        .iter()
        .map(|s| s.cpus.clone())
        .collect();
    let last = available[available.len() - 1];
    let before_last = available[available.len() - 2];
    assert_eq!(slots, vec![vec![last], vec![before_last]]);

    let handles: Vec<_> = (0..16)
        .map(|_| client.submit(Task::command(["sh", "-c", PROBE])))
        .collect();
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    for handle in handles {
        let result = handle.await.unwrap();
        let slot = result.slot.clone().unwrap().slot;
        let TaskOutput::Command(out) = result.outcome.unwrap() else {
            panic!("not a command output");
        };
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let cpus = format_cpu_list(&slots[slot as usize]);
        assert_eq!(text, format!("{cpus}\n1 {cpus}\n"), "slot {slot}");
        seen.insert(slot, text);
    }
    assert_eq!(seen.len(), 2, "both slots ran probes: {seen:?}");
    cluster.stop().await;
}

#[tokio::test]
async fn impossible_affinity_is_refused_before_start() {
    let available = available_cpus().unwrap();
    let mut config = ManagerConfig::with_worker("tcp://127.0.0.1:1", 2, [test_worker!()]);
    config.cpu_affinity = CpuAffinity::Block;
    config.cores_per_slot = Some(available.len());
    let Err(err) = Manager::start(config).await else {
        panic!("a manager started with more CPUs than it has");
    };
    let ManagerError::Affinity(AffinityError::NotEnoughCpus { needed, .. }) = &err else {
        panic!("wrong error: {err}");
    };
    assert_eq!(*needed, 2 * available.len());
    assert!(err.to_string().contains("need"), "{err}");

    let mut config = ManagerConfig::with_worker("tcp://127.0.0.1:1", 1, [test_worker!()]);
    config.cpu_affinity = CpuAffinity::List(vec![vec![available[0]], vec![available[0]]]);
    let Err(err) = Manager::start(config).await else {
        panic!("a list with two entries for one slot was accepted");
    };
    assert!(
        err.to_string().contains("2 entries for 1 slots"),
        "unclear error: {err}"
    );
}
