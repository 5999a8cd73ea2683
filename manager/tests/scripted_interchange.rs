//! The manager against a scripted interchange: a ROUTER socket this test drives message by
//! message, so each case sets up exactly the exchange it checks: registering again with work in
//! hand, a task batch right behind `Registered`, frame limits, MPS control programs that hang or
//! fail. The managers' workers are this very binary (`main` serves as one when told to), which is
//! why it runs without libtest: the harness would print to the stdout the worker protocol owns.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use htex_manager::inventory::simulated;
use htex_manager::{plan, Manager, ManagerConfig, SlotSpec};
use htex_protocol::{
    decode, encode, EncodedTask, InterchangeMessage, ManagerMessage, Registration, TaskError,
    TaskId, TaskKind, TaskOutput, TaskResult, TaskSpec, DEFAULT_MAX_FRAME_BYTES,
    MIN_MAX_FRAME_BYTES,
};
use htex_transport::{
    bind_router, NetConfig, RouterRecvHalf, RouterSendHalf, SocketRecv, ZmqMessage,
};

/// Set in a worker's environment: this binary then serves tasks instead of running tests.
const AS_WORKER: &str = "HTEX_SCRIPTED_TEST_WORKER";

type Case = fn() -> Pin<Box<dyn Future<Output = ()>>>;

fn main() {
    if std::env::var_os(AS_WORKER).is_some() {
        serve_as_worker();
        return;
    }
    let cases: [(&str, Case); 8] = [
        (
            "results_are_kept_until_stored_and_sent_again_after_registering_again",
            || Box::pin(results_are_kept_until_stored_and_sent_again_after_registering_again()),
        ),
        ("a_task_batch_right_behind_registered_again_is_kept", || {
            Box::pin(a_task_batch_right_behind_registered_again_is_kept())
        }),
        (
            "work_held_through_an_outage_goes_on_and_its_results_count",
            || Box::pin(work_held_through_an_outage_goes_on_and_its_results_count()),
        ),
        (
            "results_stay_under_the_link_limit_and_one_too_large_ends_alone",
            || Box::pin(results_stay_under_the_link_limit_and_one_too_large_ends_alone()),
        ),
        (
            "a_result_over_the_workers_limit_ends_its_task_and_the_worker_goes_on",
            || Box::pin(a_result_over_the_workers_limit_ends_its_task_and_the_worker_goes_on()),
        ),
        (
            "a_hanging_mps_control_program_fails_the_start_in_time",
            || Box::pin(a_hanging_mps_control_program_fails_the_start_in_time()),
        ),
        ("a_failed_mps_start_is_reported", || {
            Box::pin(a_failed_mps_start_is_reported())
        }),
        ("an_ignored_mps_quit_does_not_hang_the_stop", || {
            Box::pin(an_ignored_mps_quit_does_not_hang_the_stop())
        }),
    ];
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut ran = 0;
    for (name, case) in cases {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(case());
        runtime.shutdown_timeout(Duration::from_secs(1));
        println!("test {name} ... ok");
        ran += 1;
    }
    println!("\ntest result: ok. {ran} passed");
}

fn serve_as_worker() {
    let mut registry = htex_worker::Registry::with_builtins();
    registry.register("pid", |()| Ok::<_, String>(std::process::id()));
    registry.register("bytes", |n: usize| Ok::<_, String>(vec![1u8; n]));
    if let Err(e) = htex_worker::serve(&registry) {
        eprintln!("scripted-interchange test worker: {e}");
        std::process::exit(1);
    }
}

/// The interchange's side of the manager link, driven by the test.
struct Script {
    endpoint: String,
    send: RouterSendHalf,
    recv: RouterRecvHalf,
}

/// A message from one manager connection.
struct Heard {
    peer: Bytes,
    frame_len: usize,
    message: ManagerMessage,
}

impl Script {
    async fn bind() -> Script {
        let net = NetConfig {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            connect_timeout: Duration::from_secs(5),
            security: Default::default(),
        };
        let listener = bind_router("tcp://127.0.0.1:0", &net).await.unwrap();
        Script {
            endpoint: listener.endpoint,
            send: listener.send,
            recv: listener.recv,
        }
    }

    /// The next message other than a heartbeat.
    async fn next(&mut self) -> Heard {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.recv.recv())
                .await
                .expect("the manager said something within 30 s")
                .unwrap();
            let mut frames = message.into_vec();
            let payload = frames.pop().unwrap();
            let heard = Heard {
                peer: frames.remove(0),
                frame_len: payload.len(),
                message: decode(&payload, DEFAULT_MAX_FRAME_BYTES).unwrap(),
            };
            if !matches!(heard.message, ManagerMessage::Heartbeat) {
                return heard;
            }
        }
    }

    fn send(&self, peer: &Bytes, message: &InterchangeMessage) {
        let frame = encode(message).unwrap();
        self.send
            .try_send_to(peer, ZmqMessage::from(frame))
            .expect("the manager's connection is there");
    }

    /// Waits for a registration; returns the connection it came on and what it said.
    async fn registration(&mut self) -> (Bytes, Registration) {
        let heard = self.next().await;
        let ManagerMessage::Register(registration) = heard.message else {
            panic!("expected a registration")
        };
        (heard.peer, registration)
    }

    /// Waits for a registration and accepts it with `max_frame_bytes`, orphaning nothing.
    async fn accept(&mut self, max_frame_bytes: usize) -> (Bytes, Registration) {
        let (peer, registration) = self.registration().await;
        self.send(&peer, &registered(max_frame_bytes, Vec::new()));
        (peer, registration)
    }

    /// The next `n` results, each with the connection and the size of the frame it came in.
    async fn results(&mut self, n: usize) -> Vec<(Bytes, usize, TaskResult)> {
        let mut got = Vec::new();
        while got.len() < n {
            let heard = self.next().await;
            match heard.message {
                ManagerMessage::Results(results) => got.extend(
                    results
                        .into_iter()
                        .map(|r| (heard.peer.clone(), heard.frame_len, r)),
                ),
                _ => panic!("expected results"),
            }
        }
        assert_eq!(got.len(), n, "more results than tasks");
        got
    }
}

fn registered(max_frame_bytes: usize, orphaned: Vec<TaskId>) -> InterchangeMessage {
    InterchangeMessage::Registered {
        heartbeat_period_ms: 10_000,
        heartbeat_threshold_ms: 60_000,
        max_frame_bytes: max_frame_bytes as u64,
        orphaned,
        stores_results: false,
        wants_reports: false,
    }
}

/// `Registered` from an interchange with a journal.
fn registered_storing() -> InterchangeMessage {
    InterchangeMessage::Registered {
        heartbeat_period_ms: 10_000,
        heartbeat_threshold_ms: 60_000,
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u64,
        orphaned: Vec::new(),
        stores_results: true,
        wants_reports: false,
    }
}

fn tasks(specs: Vec<TaskSpec>) -> InterchangeMessage {
    InterchangeMessage::Tasks(
        specs
            .iter()
            .map(|s| EncodedTask::encode(s).unwrap())
            .collect(),
    )
}

fn call(id: TaskId, function: &str, args: impl serde::Serialize) -> TaskSpec {
    TaskSpec {
        id,
        kind: TaskKind::Function {
            name: function.into(),
            args: rmp_serde::to_vec(&args).unwrap(),
        },
        resources: Default::default(),
        priority: 0,
        timeout_ms: None,
        max_retries: 0,
        submitted_us: 0,
    }
}

fn value<T: serde::de::DeserializeOwned>(result: &TaskResult) -> T {
    match &result.outcome {
        Ok(TaskOutput::Value(bytes)) => rmp_serde::from_slice(bytes).unwrap(),
        other => panic!("task {} did not succeed: {other:?}", result.id),
    }
}

/// A manager of `workers` CPU slots whose workers are this binary.
fn config(script: &Script, workers: usize) -> ManagerConfig {
    let exe = std::env::current_exe().unwrap();
    let worker = [
        "env".to_string(),
        format!("{AS_WORKER}=1"),
        exe.to_string_lossy().into_owned(),
    ];
    let mut config = ManagerConfig::with_worker(&script.endpoint, workers, worker);
    config.manager_id = "scripted".into();
    config.connect_timeout = Duration::from_secs(10);
    config.reconnect_timeout = Duration::from_secs(30);
    config.prefetch = 2000;
    config
}

/// Starts the manager and accepts its registration with `max_frame_bytes`.
async fn start(
    script: &mut Script,
    config: impl FnOnce(&Script) -> ManagerConfig,
    max_frame_bytes: usize,
) -> (Manager, Bytes, Registration) {
    let starting = tokio::spawn(Manager::start(config(script)));
    let (peer, registration) = script.accept(max_frame_bytes).await;
    assert!(registration.held.is_empty());
    let manager = starting.await.unwrap().expect("the manager starts");
    (manager, peer, registration)
}

/// CPU time this process has used (the managers run in it; their workers do not).
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Review #4: the reader of a new link used to start before the actor installed the link, so a
/// `Tasks` batch right behind `Registered` could reach the pending queue first and be wiped.
async fn a_task_batch_right_behind_registered_again_is_kept() {
    let mut script = Script::bind().await;
    let (manager, peer, first) =
        start(&mut script, |s| config(s, 2), DEFAULT_MAX_FRAME_BYTES).await;
    script.send(&peer, &InterchangeMessage::RegisterAgain);
    let (again, registration) = script.registration().await;
    assert_ne!(again, peer, "a new connection");
    assert_eq!(registration.instance, first.instance, "the same manager");
    assert!(registration.held.is_empty(), "{:?}", registration.held);
    script.send(&again, &registered(DEFAULT_MAX_FRAME_BYTES, Vec::new()));
    // 1 ms each, so most of the batch still waits when the link is installed (noop tasks would
    // all have run by then, whatever the order).
    let backlog = (1..=1000).map(|id| call(id, "sleep", 1u64)).collect();
    script.send(&again, &tasks(backlog));
    let results = script.results(1000).await;
    let ids: HashSet<TaskId> = results.iter().map(|(_, _, r)| r.id).collect();
    assert_eq!(ids.len(), 1000, "each task answered once");
    assert!(results
        .iter()
        .all(|(p, _, r)| r.outcome.is_ok() && *p == again));
    manager.stop().await.unwrap();
}

/// Review #11: registering again used to drop every task the manager held, and the loop spun
/// while results waited for the new link. Now it names what it holds, keeps all of it but what
/// the interchange orphans, and sends the results held meanwhile on the new link.
async fn work_held_through_an_outage_goes_on_and_its_results_count() {
    let mut script = Script::bind().await;
    let (manager, peer, first) =
        start(&mut script, |s| config(s, 2), DEFAULT_MAX_FRAME_BYTES).await;
    let started = Instant::now();
    // 1 ends during the outage, 2 runs past it, 3 waits for a slot and is orphaned.
    script.send(
        &peer,
        &tasks(vec![
            call(1, "sleep", 400u64),
            call(2, "sleep", 1800u64),
            call(3, "sleep", 1500u64),
        ]),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    script.send(&peer, &InterchangeMessage::RegisterAgain);
    let (again, registration) = script.registration().await;
    assert_eq!(registration.instance, first.instance);
    let held: HashSet<TaskId> = registration.held.iter().copied().collect();
    assert_eq!(held, HashSet::from([1, 2, 3]));
    // The outage: task 1's result waits for the link, and the manager waits without spinning.
    let cpu = cpu_time();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let spent = cpu_time() - cpu;
    assert!(
        spent < Duration::from_millis(300),
        "the manager spun: {spent:?} of CPU in 1 s"
    );
    script.send(&again, &registered(DEFAULT_MAX_FRAME_BYTES, vec![3]));
    let results = script.results(2).await;
    let ids: Vec<TaskId> = results.iter().map(|(_, _, r)| r.id).collect();
    assert_eq!(ids, [1, 2]);
    assert!(results
        .iter()
        .all(|(p, _, r)| r.outcome.is_ok() && *p == again));
    // Task 3 would have ended by now had it not been stopped.
    let by = Duration::from_millis(2400);
    tokio::time::sleep(by.saturating_sub(started.elapsed())).await;
    script.send(&again, &tasks(vec![call(4, "pid", ())]));
    let results = script.results(1).await;
    assert_eq!(results[0].2.id, 4, "the orphaned task was answered");
    let _: u32 = value(&results[0].2);
    manager.stop().await.unwrap();
}

/// An interchange with a journal says `Stored` once results are on disk: until then the
/// manager keeps them, names their tasks as held when it registers again (after a crash of the
/// interchange, say), and sends them again on the new link; what was stored is not.
async fn results_are_kept_until_stored_and_sent_again_after_registering_again() {
    let mut script = Script::bind().await;
    let starting = tokio::spawn(Manager::start(config(&script, 1)));
    let (peer, _) = script.registration().await;
    script.send(&peer, &registered_storing());
    let manager = starting.await.unwrap().expect("the manager starts");
    for id in [1, 2] {
        script.send(&peer, &tasks(vec![call(id, "pid", ())]));
        assert_eq!(script.results(1).await[0].2.id, id);
    }
    // The interchange stored the first result only, then lost the link.
    script.send(&peer, &InterchangeMessage::Stored { results: 1 });
    tokio::time::sleep(Duration::from_millis(100)).await;
    script.send(&peer, &InterchangeMessage::RegisterAgain);
    let (again, registration) = script.registration().await;
    assert_eq!(registration.held, [2], "the unstored result's task is held");
    script.send(&again, &registered_storing());
    let resent = script.results(1).await;
    assert_eq!((resent[0].2.id, &resent[0].0), (2, &again));
    let _: u32 = value(&resent[0].2);
    // Stored on the new link: held no more.
    script.send(&again, &InterchangeMessage::Stored { results: 1 });
    tokio::time::sleep(Duration::from_millis(100)).await;
    script.send(&again, &InterchangeMessage::RegisterAgain);
    let (_, registration) = script.registration().await;
    assert!(registration.held.is_empty(), "{:?}", registration.held);
    manager.stop().await.unwrap();
}

/// Results go out in frames under the smaller of the two limits; one the worker let through
/// but too large for the link (its limit shrank when it registered again) is answered
/// `ResultTooLarge` for that task only.
async fn results_stay_under_the_link_limit_and_one_too_large_ends_alone() {
    let mut script = Script::bind().await;
    let (manager, peer, _) = start(&mut script, |s| config(s, 1), DEFAULT_MAX_FRAME_BYTES).await;
    script.send(&peer, &tasks(vec![call(1, "bytes", 200_000usize)]));
    let results = script.results(1).await;
    assert_eq!(value::<Vec<u8>>(&results[0].2).len(), 200_000);

    script.send(&peer, &InterchangeMessage::RegisterAgain);
    let (again, _) = script.registration().await;
    let limit = MIN_MAX_FRAME_BYTES;
    script.send(&again, &registered(limit, Vec::new()));
    let mut specs = vec![call(2, "bytes", 200_000usize), call(3, "pid", ())];
    specs.extend((4..14).map(|id| call(id, "bytes", 40_000usize)));
    script.send(&again, &tasks(specs));
    let results = script.results(12).await;
    let by_id: BTreeMap<TaskId, &TaskResult> = results.iter().map(|(_, _, r)| (r.id, r)).collect();
    match &by_id[&2].outcome {
        Err(TaskError::ResultTooLarge { size, limit: l }) => {
            assert!(*size > 200_000 && *l < limit as u64, "{size} {l}")
        }
        other => panic!("expected ResultTooLarge, got {other:?}"),
    }
    let _: u32 = value(by_id[&3]);
    assert!((4..14).all(|id| value::<Vec<u8>>(by_id[&id]).len() == 40_000));
    for (_, frame_len, _) in &results {
        assert!(
            *frame_len <= limit,
            "a frame of {frame_len} bytes over {limit}"
        );
    }
    manager.stop().await.unwrap();
}

/// The worker caps its results to its manager's limit: a function returning more ends with
/// `ResultTooLarge`, and the same worker process runs the next task.
async fn a_result_over_the_workers_limit_ends_its_task_and_the_worker_goes_on() {
    let mut script = Script::bind().await;
    let small = |s: &Script| ManagerConfig {
        max_frame_bytes: 256 << 10,
        ..config(s, 1)
    };
    let (manager, peer, registration) = start(&mut script, small, DEFAULT_MAX_FRAME_BYTES).await;
    assert_eq!(registration.max_frame_bytes, 256 << 10);
    script.send(
        &peer,
        &tasks(vec![
            call(1, "pid", ()),
            call(2, "bytes", 300_000usize),
            call(3, "pid", ()),
        ]),
    );
    let results = script.results(3).await;
    let by_id: BTreeMap<TaskId, &TaskResult> = results.iter().map(|(_, _, r)| (r.id, r)).collect();
    match &by_id[&2].outcome {
        Err(TaskError::ResultTooLarge { size, limit }) => {
            assert!(*size > 300_000, "{size}");
            assert_eq!(*limit, htex_protocol::max_item_bytes(256 << 10) as u64);
        }
        other => panic!("expected ResultTooLarge, got {other:?}"),
    }
    assert_eq!(
        value::<u32>(by_id[&1]),
        value::<u32>(by_id[&3]),
        "the worker was replaced"
    );
    manager.stop().await.unwrap();
}

/// The stand-in `nvidia-cuda-mps-control` in a scratch directory, run in `mode`
/// (`HTEX_FAKE_MPS`) through a wrapper, so this process's environment stays as it is.
fn fake_mps_control(name: &str, mode: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("htex-scripted-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("nvidia-cuda-mps-control");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nvidia-cuda-mps-control");
    std::fs::copy(fixture, &fake).unwrap();
    let wrapper = dir.join("control");
    let script = format!(
        "#!/bin/sh\nHTEX_FAKE_MPS={mode} exec '{}' \"$@\"\n",
        fake.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    (wrapper, dir)
}

/// A manager with two MPS slots on the simulated H100, run by `control`.
fn mps_config(script: &Script, control: PathBuf) -> ManagerConfig {
    let inventory = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/inventory/h100.json");
    let spec = SlotSpec {
        mps: vec!["0:50,50".into()],
        ..SlotSpec::default()
    };
    let mut config = config(script, 0);
    config.slots = plan(&spec, &simulated::load_inventory(&inventory).unwrap()).unwrap();
    config.mps_control = control;
    config.mps_control_timeout = Duration::from_secs(1);
    config
}

async fn a_hanging_mps_control_program_fails_the_start_in_time() {
    let script = Script::bind().await;
    let (control, dir) = fake_mps_control("hang", "hang");
    let started = Instant::now();
    let error = Manager::start(mps_config(&script, control))
        .await
        .err()
        .expect("a manager whose MPS daemon hangs does not start");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let message = error.to_string();
    assert!(message.contains("did not finish within 1.0 s"), "{message}");
    std::fs::remove_dir_all(dir).ok();
}

async fn a_failed_mps_start_is_reported() {
    let script = Script::bind().await;
    let (control, dir) = fake_mps_control("fail-start", "fail-start");
    let error = Manager::start(mps_config(&script, control))
        .await
        .err()
        .expect("a manager whose MPS daemon fails does not start");
    let message = error.to_string();
    assert!(
        message.contains("did not start") && message.contains("exclusive-process mode"),
        "{message}"
    );
    std::fs::remove_dir_all(dir).ok();
}

async fn an_ignored_mps_quit_does_not_hang_the_stop() {
    let mut script = Script::bind().await;
    let (control, dir) = fake_mps_control("ignore-quit", "ignore-quit");
    let (manager, peer, _) = start(
        &mut script,
        |s| mps_config(s, control),
        DEFAULT_MAX_FRAME_BYTES,
    )
    .await;
    script.send(&peer, &tasks(vec![call(1, "pid", ())]));
    let _: u32 = value(&script.results(1).await[0].2);
    let stopping = Instant::now();
    manager.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopping.elapsed()
    );
    let calls = std::fs::read_to_string(dir.join("mps-calls.log")).unwrap();
    assert!(calls.contains("quit pipe="), "{calls}");
    std::fs::remove_dir_all(dir).ok();
}
