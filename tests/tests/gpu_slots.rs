//! GPU slots on a machine without a GPU: a simulated NVML inventory, and a stand-in
//! `nvidia-cuda-mps-control` that records the commands it gets (the real daemon is exercised on
//! the GPU machine by scripts/gpu/check-slots.sh). Checks the environment workers start with, the
//! MPS daemon's lifecycle, matching of task resources to slots, and `Unsatisfiable`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use htex_client::{Client, ResourceRequest, Task, TaskError, TaskOutput, TaskResult};
use htex_interchange::InterchangeConfig;
use htex_manager::inventory::simulated;
use htex_manager::{plan, ManagerConfig, SlotSpec};
use htex_tests::{test_worker, TestCluster};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manager/fixtures/inventory")
        .join(name)
}

/// Copies the stand-in control program (tests/fixtures/nvidia-cuda-mps-control) into `dir`;
/// returns it and the log of calls it keeps beside itself.
fn fake_mps_control(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("nvidia-cuda-mps-control");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nvidia-cuda-mps-control");
    std::fs::copy(source, &script).unwrap();
    (script, dir.join("mps-calls.log"))
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("htex-gpu-{name}-{}", std::process::id()))
}

fn planned(inventory: &str, spec: SlotSpec) -> Vec<htex_manager::PlannedSlot> {
    let inventory = simulated::load_inventory(&fixture(inventory)).unwrap();
    plan(&spec, &inventory).unwrap()
}

/// Runs `env` in every slot at once (each holds its slot briefly) and returns each slot's env.
async fn env_per_slot(client: &Client, slots: usize) -> HashMap<u32, HashMap<String, String>> {
    let handles: Vec<_> = (0..slots)
        .map(|_| client.submit(Task::command(["sh", "-c", "env; sleep 0.5"])))
        .collect();
    let mut by_slot = HashMap::new();
    for handle in handles {
        let result = handle.await.unwrap();
        let slot = result.slot.clone().unwrap().slot;
        let Ok(TaskOutput::Command(out)) = result.outcome else {
            panic!("{result:?}")
        };
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        by_slot.insert(slot, env);
    }
    assert_eq!(by_slot.len(), slots, "each slot should run one probe");
    by_slot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mps_slots_get_their_environment_and_a_private_daemon() {
    let dir = scratch("mps-env");
    let (control, log) = fake_mps_control(&dir);
    let slots = planned(
        "h100.json",
        SlotSpec {
            mps: vec!["0:50,25,25".into()],
            mps_mem: vec!["0:8G,4G,4G".into()],
            ..SlotSpec::default()
        },
    );
    let uuid = slots[0].descriptor.gpu_uuid.clone().unwrap();
    let cluster =
        TestCluster::start_with(test_worker!(), InterchangeConfig::default(), 1, 1, |c| {
            c.slots = slots.clone();
            c.mps_control = control.clone();
        })
        .await;
    let client = cluster.client().await;
    let envs = env_per_slot(&client, 3).await;

    let calls = std::fs::read_to_string(&log).unwrap();
    let start = calls.lines().next().unwrap();
    assert!(
        start.starts_with("start ") && start.ends_with(&format!("visible={uuid}")),
        "{calls}"
    );
    assert_eq!(
        calls.matches("start ").count(),
        1,
        "one daemon for the one GPU: {calls}"
    );
    assert!(
        calls.contains("get_default_active_thread_percentage"),
        "no health check: {calls}"
    );
    let pipe = start
        .split("pipe=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(pipe.len() < 40, "pipe directory should be short: {pipe}");

    for (slot, (percentage, limit_mib)) in [(50, 8192u64), (25, 4096), (25, 4096)]
        .into_iter()
        .enumerate()
    {
        let env = &envs[&(slot as u32)];
        let want = [
            ("CUDA_VISIBLE_DEVICES", uuid.clone()),
            ("CUDA_MPS_PIPE_DIRECTORY", pipe.clone()),
            ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", percentage.to_string()),
            (
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
                format!("0={limit_mib}M"),
            ),
            ("HTEX_SLOT_INDEX", slot.to_string()),
            ("HTEX_SLOT_KIND", "mps".into()),
            ("HTEX_SLOT_GPU_UUID", uuid.clone()),
            ("HTEX_SLOT_MPS_PERCENTAGE", percentage.to_string()),
            ("HTEX_SLOT_MEMORY_BYTES", (limit_mib << 20).to_string()),
        ];
        for (key, value) in want {
            assert_eq!(env.get(key), Some(&value), "slot {slot}: {key}");
        }
    }
    let status = client.status().await.unwrap();
    let percentages: Vec<_> = status.managers[0]
        .slots
        .iter()
        .map(|s| s.mps_percentage)
        .collect();
    assert_eq!(percentages, [Some(50), Some(25), Some(25)]);

    cluster.stop().await;
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.lines().last().unwrap().starts_with("quit "),
        "daemon not quit: {calls}"
    );
    assert!(
        !Path::new(&pipe).exists(),
        "private directory left behind: {pipe}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_gpu_slots_see_only_their_gpu_and_an_empty_pipe_directory() {
    let dir = scratch("whole");
    let (control, log) = fake_mps_control(&dir);
    let slots = planned(
        "two-gpus.json",
        SlotSpec {
            gpus: Some("all".into()),
            cpu: 1,
            ..SlotSpec::default()
        },
    );
    let uuids: Vec<String> = slots
        .iter()
        .filter_map(|s| s.descriptor.gpu_uuid.clone())
        .collect();
    assert_eq!(uuids.len(), 2);
    let cluster =
        TestCluster::start_with(test_worker!(), InterchangeConfig::default(), 1, 1, |c| {
            c.slots = slots.clone();
            c.mps_control = control.clone();
        })
        .await;
    let client = cluster.client().await;
    let envs = env_per_slot(&client, 3).await;
    for (slot, uuid) in uuids.iter().enumerate() {
        let env = &envs[&(slot as u32)];
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], *uuid);
        assert_eq!(env["HTEX_SLOT_KIND"], "gpu");
        assert!(!env.contains_key("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
        let pipe = Path::new(&env["CUDA_MPS_PIPE_DIRECTORY"]);
        assert_eq!(
            std::fs::read_dir(pipe).unwrap().count(),
            0,
            "pipe directory is not empty"
        );
    }
    // The CPU slot sees no GPU.
    assert_eq!(envs[&2]["CUDA_VISIBLE_DEVICES"], "");
    assert!(!log.exists(), "no MPS daemon is needed for whole GPUs");
    let pipe = envs[&0]["CUDA_MPS_PIPE_DIRECTORY"].clone();
    cluster.stop().await;
    assert!(
        !Path::new(&pipe).exists(),
        "empty pipe directory left behind"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn slot_of(result: &TaskResult) -> (String, u32) {
    let slot = result
        .slot
        .clone()
        .unwrap_or_else(|| panic!("no slot: {result:?}"));
    (slot.manager, slot.slot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_go_only_to_slots_that_satisfy_them() {
    let dir = scratch("matching");
    let (control, _log) = fake_mps_control(&dir);
    let mps = planned(
        "h100.json",
        SlotSpec {
            mps: vec!["0:50,25,25".into()],
            ..SlotSpec::default()
        },
    );
    let interchange = InterchangeConfig {
        unsatisfiable_grace: Duration::from_millis(500),
        ..Default::default()
    };
    // test-0: three MPS slots on an H100; test-1: two CPU slots.
    let cluster = TestCluster::start_with(test_worker!(), interchange, 2, 2, |c| {
        if c.manager_id == "test-0" {
            c.slots = mps.clone();
            c.mps_control = control.clone();
        }
    })
    .await;
    let client = cluster.client().await;
    let sleep = || Task::command(["sleep", "0.1"]);
    let at_least = |p: u8| ResourceRequest {
        min_mps_percentage: Some(p),
        ..Default::default()
    };
    let six = |request: ResourceRequest| -> Vec<_> {
        (0..6)
            .map(|_| client.submit(sleep().resources(request.clone())))
            .collect()
    };
    let half = six(at_least(50));
    let cpu = six(ResourceRequest {
        cpu_only: true,
        ..Default::default()
    });
    let gpu = six(ResourceRequest {
        gpu: true,
        ..Default::default()
    });
    let big = ResourceRequest {
        min_sm_count: Some(60),
        ..Default::default()
    };
    let sm60 = client.submit(sleep().resources(big));
    let mig = client.submit(sleep().resources(ResourceRequest {
        mig_profile: Some("1g.10gb".into()),
        ..Default::default()
    }));
    let huge = client.submit(sleep().resources(ResourceRequest {
        min_gpu_memory_bytes: Some(1 << 40),
        ..Default::default()
    }));

    for handle in half {
        assert_eq!(
            slot_of(&handle.await.unwrap()),
            ("test-0".into(), 0),
            "50 % runs only in slot 0"
        );
    }
    for handle in cpu {
        assert_eq!(slot_of(&handle.await.unwrap()).0, "test-1");
    }
    for handle in gpu {
        assert_eq!(slot_of(&handle.await.unwrap()).0, "test-0");
    }
    assert_eq!(
        slot_of(&sm60.await.unwrap()),
        ("test-0".into(), 0),
        "66 SMs is the only slot with 60"
    );
    for handle in [mig, huge] {
        match handle.await.unwrap().outcome {
            Err(TaskError::Unsatisfiable { reason }) => {
                assert!(reason.contains("2 connected manager"), "{reason}")
            }
            other => panic!("expected Unsatisfiable, got {other:?}"),
        }
    }
    cluster.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_mps_control_program_is_a_clear_error() {
    let slots = planned(
        "h100.json",
        SlotSpec {
            mps_split: Some(2),
            ..SlotSpec::default()
        },
    );
    let interchange = htex_interchange::Interchange::start(InterchangeConfig::default())
        .await
        .unwrap();
    let mut config =
        ManagerConfig::with_worker(interchange.manager_endpoint(), 1, [test_worker!()]);
    config.slots = slots;
    config.mps_control = PathBuf::from("/nonexistent/nvidia-cuda-mps-control");
    let err = htex_manager::Manager::start(config)
        .await
        .err()
        .expect("refuses to start");
    let message = err.to_string();
    assert!(
        message.contains("nvidia-cuda-mps-control") && message.contains("--mps-control"),
        "{message}"
    );
    interchange
        .shutdown()
        .await
        .expect("the interchange did not crash");
}

/// Starts a cluster with three MPS slots on the simulated H100 and the stand-in control program;
/// returns it and the MPS log directory the manager gave the daemon.
async fn mps_cluster(dir: &Path) -> (TestCluster, PathBuf) {
    let (control, log) = fake_mps_control(dir);
    let slots = planned(
        "h100.json",
        SlotSpec {
            mps: vec!["0:34,33,33".into()],
            ..SlotSpec::default()
        },
    );
    let cluster =
        TestCluster::start_with(test_worker!(), InterchangeConfig::default(), 1, 1, |c| {
            c.slots = slots.clone();
            c.mps_control = control.clone();
        })
        .await;
    let calls = std::fs::read_to_string(log).unwrap();
    let logdir = calls
        .split("logdir=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    (cluster, PathBuf::from(logdir))
}

/// Three tasks that write their worker's pid and sleep, one per slot; returns handles and pids.
async fn three_busy_slots(client: &Client, dir: &Path) -> (Vec<htex_client::TaskHandle>, Vec<u32>) {
    let files: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("pid-{i}"))).collect();
    let handles: Vec<_> = files
        .iter()
        .map(|f| {
            client.submit(Task::call("pid_then_sleep", &(f.to_string_lossy(), 1500u64)).unwrap())
        })
        .collect();
    let mut pids = Vec::new();
    for f in &files {
        assert!(htex_tests::eventually(Duration::from_secs(10), || f.exists()).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        pids.push(std::fs::read_to_string(f).unwrap().trim().parse().unwrap());
    }
    (handles, pids)
}

/// What the H100's MPS server logs when a client faults (docs/results/mps-fault.md).
fn log_fault(logdir: &Path, pid: u32) {
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logdir.join("server.log"))
        .unwrap();
    writeln!(log, "[2026-11-25 13:12:21.953 Server   482] Client {{PID: {pid}, Context: 1}} encountered a fatal GPU error.").unwrap();
    writeln!(
        log,
        "[2026-11-25 13:12:21.953 Server   482] Server is handling a fatal GPU error."
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_fault_ends_every_task_on_the_gpu_and_replaces_its_workers() {
    let dir = scratch("fault");
    let (cluster, logdir) = mps_cluster(&dir).await;
    let client = cluster.client().await;
    let (handles, pids) = three_busy_slots(&client, &dir).await;
    // The log names one client; MPS does not say which one caused the fault, so all share it.
    log_fault(&logdir, pids[1]);
    for handle in handles {
        match handle.await.unwrap().outcome {
            Err(TaskError::GpuFault { detail }) => {
                assert!(detail.contains("fatal GPU error"), "{detail}")
            }
            other => panic!("expected GpuFault, got {other:?}"),
        }
    }
    // Every worker on the GPU was replaced: none of the old processes answers, and the slots
    // serve again.
    let now: Vec<u32> =
        futures::future::join_all((0..12).map(|_| client.call::<_, u32>("pid", &()).unwrap()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert!(
        now.iter().all(|pid| !pids.contains(pid)),
        "old workers still serve: {now:?} vs {pids:?}"
    );
    cluster.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
