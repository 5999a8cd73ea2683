//! Warm runners with the shipped Python side (`python/htex_runner`) and a small CPU-only module
//! (`tests/fixtures/runner_module.py`): state that lives across calls, Python exceptions as typed
//! errors with tracebacks, a runner killed mid-call, timeouts, and bad targets.
//!
//! Needs `python3` with `msgpack` (`.ci/run` provides both; `HTEX_TEST_PYTHON` picks another
//! interpreter); without them each test says why and returns.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use htex_client::{Client, Task, TaskError};
use htex_interchange::InterchangeConfig;
use htex_protocol::RunnerSpec;
use htex_tests::{test_worker, TestCluster};
use serde::Deserialize;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The interpreter to use, or `None` (with the reason printed) when it cannot serve runners.
fn python() -> Option<String> {
    let python = std::env::var("HTEX_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import msgpack"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        htex_tests::skip_unless_required(
            "python",
            &format!("`{python}` with the msgpack package is needed for warm runners"),
        );
    }
    ok.then_some(python)
}

fn runner(python: &str, module: &str, eager: bool) -> RunnerSpec {
    let pythonpath = format!("PYTHONPATH={}", repo().join("python").display());
    let fixtures = repo().join("tests/fixtures").display().to_string();
    let command = [
        "env",
        &pythonpath,
        python,
        "-m",
        "htex_runner",
        module,
        "--path",
        &fixtures,
    ];
    RunnerSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        eager,
    }
}

async fn cluster(python: &str, workers: usize) -> TestCluster {
    let runners: BTreeMap<String, RunnerSpec> = [
        ("mod".to_string(), runner(python, "runner_module", true)),
        ("broken".to_string(), runner(python, "runner_broken", false)),
    ]
    .into();
    TestCluster::start_with(
        test_worker!(),
        InterchangeConfig::default(),
        1,
        workers,
        |c| {
            c.runners = runners.clone();
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
struct State {
    setups: u32,
    pid: u32,
    calls: u32,
    slot: Option<String>,
}

async fn state(client: &Client) -> (State, u32) {
    let result = client
        .submit(Task::call_runner("mod", "state", &()).unwrap())
        .await
        .unwrap();
    let slot = result.slot.clone().unwrap().slot;
    (htex_client::decode_value(&result).unwrap(), slot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_state_lives_across_calls_and_sees_its_slot() {
    let Some(python) = python() else { return };
    let cluster = cluster(&python, 2).await;
    let client = cluster.client().await;
    let sum: i64 = htex_client::decode_value(
        &client
            .submit(Task::call_runner("mod", "add", &(2, 3)).unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sum, 5);
    let kwargs: BTreeMap<&str, i64> = [("a", 40), ("b", 2)].into();
    let result = client
        .submit(Task::call_runner("mod", "add", &kwargs).unwrap())
        .await
        .unwrap();
    assert_eq!(htex_client::decode_value::<i64>(&result).unwrap(), 42);
    let loud = client
        .submit(Task::call_runner("mod", "shout", &("quiet",)).unwrap())
        .await
        .unwrap();
    assert_eq!(htex_client::decode_value::<String>(&loud).unwrap(), "QUIET");

    let mut pids = HashSet::new();
    let mut last_calls = BTreeMap::new();
    for _ in 0..20 {
        let (state, slot) = state(&client).await;
        assert_eq!(state.setups, 1, "setup ran again: {state:?}");
        assert_eq!(
            state.slot.as_deref(),
            Some(slot.to_string().as_str()),
            "runner sees its slot"
        );
        if let Some(previous) = last_calls.insert(state.pid, state.calls) {
            assert!(state.calls > previous, "calls did not increase: {state:?}");
        }
        pids.insert(state.pid);
    }
    assert!(pids.len() <= 2, "more runners than slots: {pids:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_are_typed_with_tracebacks_and_bad_targets_are_refused() {
    let Some(python) = python() else { return };
    let cluster = cluster(&python, 1).await;
    let client = cluster.client().await;
    let outcome = |task: Task| {
        let client = client.clone();
        async move { client.submit(task).await.unwrap().outcome }
    };
    match outcome(Task::call_runner("mod", "boom", &("kaput",)).unwrap()).await {
        Err(TaskError::Exception {
            exception,
            message,
            traceback,
        }) => {
            assert_eq!(
                (exception.as_str(), message.as_str()),
                ("ValueError", "kaput")
            );
            assert!(
                traceback.contains("runner_module.py") && traceback.contains("boom"),
                "{traceback}"
            );
        }
        other => panic!("expected Exception, got {other:?}"),
    }
    match outcome(Task::call_runner("mod", "nope", &()).unwrap()).await {
        Err(TaskError::UnknownFunction { name, available }) => {
            assert_eq!(name, "mod:nope");
            assert!(available.contains(&"add".to_string()), "{available:?}");
        }
        other => panic!("expected UnknownFunction, got {other:?}"),
    }
    match outcome(Task::call_runner("broken", "anything", &()).unwrap()).await {
        Err(TaskError::Exception {
            exception,
            message,
            traceback,
        }) => {
            assert_eq!(exception, "RuntimeError");
            assert!(
                message.contains("setup of runner `broken` failed")
                    && message.contains("no model here")
            );
            assert!(traceback.contains("setup"), "{traceback}");
        }
        other => panic!("expected the setup's Exception, got {other:?}"),
    }
    for (target, hint) in [("ghost:f", "no runner `ghost`"), ("mod", "NAME:FUNCTION")] {
        match outcome(Task::runner_call(target, vec![0xc0])).await {
            Err(TaskError::BadRequest { message }) => assert!(message.contains(hint), "{message}"),
            other => panic!("{target}: expected BadRequest, got {other:?}"),
        }
    }
    // The runner served on through all of it.
    assert_eq!(state(&client).await.0.setups, 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_dies_mid_call_is_lost_and_restarted() {
    let Some(python) = python() else { return };
    let cluster = cluster(&python, 1).await;
    let client = cluster.client().await;
    let (before, _) = state(&client).await;
    match client
        .submit(Task::call_runner("mod", "die", &()).unwrap())
        .await
        .unwrap()
        .outcome
    {
        Err(TaskError::WorkerLost { detail }) => {
            assert!(
                detail.contains("runner `mod`") && detail.contains("signal 9"),
                "{detail}"
            )
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }
    let (after, _) = state(&client).await;
    assert_ne!(after.pid, before.pid, "the dead runner answered");
    assert_eq!(
        (after.setups, after.calls),
        (1, 1),
        "a fresh runner: {after:?}"
    );

    // A call past its timeout takes the worker and its runner down; both come back.
    let slow = Task::call_runner("mod", "sleep", &(30,))
        .unwrap()
        .timeout(Duration::from_millis(500));
    assert!(matches!(
        client.submit(slow).await.unwrap().outcome,
        Err(TaskError::Timeout { .. })
    ));
    let (fresh, _) = state(&client).await;
    assert_ne!(fresh.pid, after.pid);
    cluster.stop().await;
}
