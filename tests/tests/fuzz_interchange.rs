//! A property test against one live cluster (1 manager × 2 workers): random, truncated, oversize,
//! multi-frame and misdirected frames on both interchange ports, raw TCP garbage, a hello'd client
//! doing odd but legal things, and a fake manager (registered, no slots) sending results for ids
//! it never held, while a real client keeps submitting. Each frame gets exactly the reply the
//! interchange promises, or none; every real task gets one right result; the interchange serves
//! on. Replay a run with `HTEX_FUZZ_SEED=<seed>`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use htex_client::{Task, TaskOutput};
use htex_interchange::InterchangeConfig;
use htex_protocol::*;
use htex_tests::{test_worker, TestCluster};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

const LIMIT: usize = 1 << 20;
const FAKE: &str = "fuzz-fake";
const PV: u32 = PROTOCOL_VERSION;
/// Tasks accepted so far, about the interchange's newest global id.
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
// The start of the `Debug` form of replies the interchange promises.
const MALFORMED: &str = "Error { message: \"malformed message";
const NO_HELLO: &str = "Error { message: \"unknown client: send Hello";

/// A frame, shown on failure by its length and first bytes.
#[derive(Clone)]
struct Frame(Vec<u8>);

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let head = &self.0[..self.0.len().min(24)];
        write!(f, "{} bytes {head:02x?}", self.0.len())
    }
}

/// A DEALER that never says Hello (client port) or Register (manager port), or the fake manager.
#[derive(Debug, Clone, Copy, PartialEq)]
enum To {
    Client,
    Manager,
    Fake,
}

#[derive(Debug, Clone)]
enum Op {
    /// One message of these frames.
    Frames(To, Vec<Frame>),
    /// Bytes that are not ZMTP, straight at the manager (`true`) or client port; `hold` keeps
    /// the connection open.
    Raw(bool, Frame, bool),
    /// The case's hello'd client submits noops (`true`) and invalid tasks, plus the first id
    /// again if `dup`...
    Submit(Vec<bool>, bool),
    /// ...cancels ids (some its own), sends a command, says Goodbye and Hello again.
    Cancel(Vec<TaskId>),
    Command(Command),
    Rejoin,
    /// The fake manager sends results (or, if `true`, returns tasks) for every global id near
    /// the newest: real tasks on the real manager among them.
    Sweep(bool),
}

/// The reply due to a frame, as the start of its `Debug` form, if any; `None`: the frame would
/// say Hello or Register. `registered`: the sender is a known manager (follows Goodbye).
fn due(to: To, frames: &[Vec<u8>], registered: &mut bool) -> Option<Option<String>> {
    let [frame] = frames else {
        return Some((to == To::Client).then(|| MALFORMED.into()));
    };
    let peer = ["client", "manager"][(to != To::Client) as usize];
    let refused = |v| format!("Refused {{ reason: \"{peer} speaks htex protocol version {v},");
    let claimed = peek_protocol_version(frame).filter(|v| *v != PV);
    if to == To::Client {
        return match decode::<ClientRequest>(frame, LIMIT) {
            Ok(ClientRequest::Hello(h)) if h.protocol_version == PV => None,
            Ok(ClientRequest::Hello(h)) => Some(Some(refused(h.protocol_version))),
            Ok(_) => Some(Some(NO_HELLO.into())),
            Err(_) => Some(Some(claimed.map_or(MALFORMED.into(), refused))),
        };
    }
    Some(match decode::<ManagerMessage>(frame, LIMIT) {
        Ok(ManagerMessage::Register(r)) if r.protocol_version == PV => return None,
        Ok(ManagerMessage::Register(r)) => Some(refused(r.protocol_version)),
        Ok(_) if !*registered => Some("RegisterAgain".into()),
        Ok(message) => {
            *registered = message != ManagerMessage::Goodbye;
            None
        }
        Err(_) => claimed.map(refused),
    })
}

/// Checks a reply on the client (`to` is `To::Client`) or manager port against what was due.
fn check(to: To, want: &str, frame: &[u8]) {
    let got = match to {
        To::Client => format!("{:?}", decode::<ClientReply>(frame, LIMIT)),
        _ => format!("{:?}", decode::<InterchangeMessage>(frame, LIMIT)),
    };
    let want = format!("Ok({want}");
    assert!(got.starts_with(&want), "expected {want}..., got {got}");
}

// ---- strategies -------------------------------------------------------------------------------

fn version() -> impl Strategy<Value = u32> {
    prop_oneof![Just(PV), Just(PV + 1), Just(0), any::<u32>()]
}

/// One of the first `kinds` of Status, Drain, Hold, Release (of a manager named by the regex
/// `names`) and Shutdown.
fn command(names: &'static str, kinds: u8) -> impl Strategy<Value = Command> {
    (0..kinds, names).prop_map(|(i, manager)| match i {
        0 => Command::Status,
        1 => Command::Drain { manager },
        2 => Command::Hold { manager },
        3 => Command::Release { manager },
        _ => Command::Shutdown,
    })
}

fn spec(id: TaskId, valid: bool) -> TaskSpec {
    let name = if valid { "noop" } else { "" };
    let kind = match (valid, id % 2) {
        (false, 0) => TaskKind::Command(CommandSpec::default()),
        _ => TaskKind::Function {
            name: name.into(),
            args: vec![],
        },
    };
    let (priority, timeout_ms, max_retries, submitted_us) = (0, None, 0, 0);
    let resources = ResourceRequest::default();
    TaskSpec {
        id,
        kind,
        resources,
        priority,
        timeout_ms,
        max_retries,
        submitted_us,
    }
}

fn client_request() -> impl Strategy<Value = ClientRequest> {
    let submit = |s: Vec<(u64, bool)>| s.into_iter().map(|(id, v)| spec(id, v)).collect();
    prop_oneof![
        (version(), "\\PC{0,8}").prop_map(|(v, name)| hello(v, name)),
        vec((any::<u64>(), any::<bool>()), 0..3)
            .prop_map(move |s| ClientRequest::Submit(submit(s))),
        vec(any::<u64>(), 0..4).prop_map(ClientRequest::Cancel),
        (any::<u64>(), command("fz-[a-z]{0,4}|test-0|fuzz-fake", 5))
            .prop_map(|(id, c)| command_request(id, c)),
        Just(ClientRequest::Heartbeat),
        Just(ClientRequest::Goodbye),
    ]
}

/// A manager with no slots and no prefetch: it is never sent a task.
fn registration(protocol_version: u32, manager_id: String) -> Registration {
    let (hostname, version, block_id, slots, prefetch, pid) =
        ("fuzz".into(), "0".into(), None, vec![], 0, 1);
    Registration {
        protocol_version,
        manager_id,
        hostname,
        block_id,
        version,
        slots,
        prefetch,
        pid,
        instance: 1,
        held: vec![],
        max_frame_bytes: htex_protocol::DEFAULT_MAX_FRAME_BYTES as u64,
    }
}

/// A result a manager that never held the task sends; it must never reach a client.
fn fake_result(id: TaskId) -> TaskResult {
    let reason = "FAKE".to_string();
    TaskResult::error(id, TaskError::Cancelled { reason })
}

/// Results and returned tasks, for ids that may be real tasks' global ids.
fn manager_message() -> impl Strategy<Value = ManagerMessage> {
    prop_oneof![
        (version(), "fz-[a-z]{0,4}")
            .prop_map(|(v, id)| ManagerMessage::Register(registration(v, id))),
        vec(prop_oneof![0..5000u64, any::<u64>()], 0..5)
            .prop_map(|ids| ManagerMessage::Results(ids.into_iter().map(fake_result).collect())),
        vec(0..5000u64, 0..5).prop_map(|returned| ManagerMessage::Draining { returned }),
        Just(ManagerMessage::Heartbeat),
        Just(ManagerMessage::Goodbye),
    ]
}

fn frames() -> impl Strategy<Value = Vec<Frame>> {
    let message = prop_oneof![
        client_request().prop_map(|m| encode(&m).unwrap()),
        manager_message().prop_map(|m| encode(&m).unwrap()),
    ]
    .boxed();
    let truncate = |(f, i): (Vec<u8>, Index)| vec![f[..i.index(f.len())].to_vec()];
    let pad = |(mut f, n): (Vec<u8>, usize)| {
        f.resize(LIMIT + n, 0); // just over the limit
        vec![f]
    };
    prop_oneof![
        3 => vec(vec(any::<u8>(), 0..2048), 1),
        1 => vec(vec(any::<u8>(), 0..64), 2..5),
        3 => vec(message.clone(), 1),
        2 => (message.clone(), any::<Index>()).prop_map(truncate),
        1 => (message, 1..64usize).prop_map(pad),
    ]
    .prop_map(|frames| frames.into_iter().map(Frame).collect())
}

fn op() -> impl Strategy<Value = Op> {
    let to = prop_oneof![Just(To::Client), Just(To::Manager), Just(To::Fake)];
    let raw = (any::<bool>(), vec(any::<u8>(), 0..2048), any::<bool>());
    prop_oneof![
        12 => (to, frames()).prop_map(|(to, f)| Op::Frames(to, f)),
        2 => raw.prop_map(|(manager, bytes, hold)| Op::Raw(manager, Frame(bytes), hold)),
        2 => (vec(any::<bool>(), 1..4), any::<bool>()).prop_map(|(v, dup)| Op::Submit(v, dup)),
        1 => vec(0..12u64, 0..4).prop_map(Op::Cancel),
        2 => command("fz-[a-z]{0,4}", 4).prop_map(Op::Command),
        1 => Just(Op::Rejoin),
        1 => any::<bool>().prop_map(Op::Sweep),
    ]
}

// ---- the live side ----------------------------------------------------------------------------

struct World {
    endpoints: [String; 2],
    fake: DealerSocket,
    held: Vec<TcpStream>,
    sent: u64,
    replies: u64,
}

async fn dealer(endpoint: &str) -> DealerSocket {
    let mut socket = DealerSocket::new();
    let connected = tokio::time::timeout(Duration::from_secs(3), socket.connect(endpoint)).await;
    connected.expect("connected within 3 s").expect("connects");
    socket
}

async fn send_frames(socket: &mut DealerSocket, frames: Vec<Vec<u8>>) {
    let frames: Vec<_> = frames.into_iter().map(bytes::Bytes::from).collect();
    let message = ZmqMessage::try_from(frames).unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(3), socket.send(message)).await;
    sent.expect("sent within 3 s").expect("sends");
}

async fn send<T: serde::Serialize>(socket: &mut DealerSocket, message: &T) {
    send_frames(socket, vec![encode(message).unwrap()]).await;
}

async fn recv(socket: &mut DealerSocket, within: Duration) -> Option<Vec<u8>> {
    let message = tokio::time::timeout(within, socket.recv()).await.ok()?;
    let mut frames = message.expect("a message").into_vec();
    Some(frames.pop().unwrap().to_vec())
}

async fn reply(socket: &mut DealerSocket) -> Vec<u8> {
    let within = Duration::from_secs(3);
    recv(socket, within).await.expect("a reply within 3 s")
}

fn command_request(request_id: u64, command: Command) -> ClientRequest {
    ClientRequest::Command {
        request_id,
        command,
    }
}

fn hello(protocol_version: u32, name: String) -> ClientRequest {
    ClientRequest::Hello(ClientHello {
        protocol_version,
        name,
        max_frame_bytes: LIMIT as u64,
        identity: String::new(),
    })
}

async fn run_case(w: &mut World, ops: Vec<Op>) {
    // Strangers to the client and manager ports, and a client that says Hello.
    let mut strangers = [dealer(&w.endpoints[0]).await, dealer(&w.endpoints[1]).await];
    let mut member = dealer(&w.endpoints[0]).await;
    send(&mut member, &hello(PV, "fuzz".into())).await;
    let (mut wants, mut registered) = ([vec![], vec![], vec![]], [false, false, true]);
    // The member's due replies: results by task id (`true`: BadRequest), command replies by
    // request id (`true`: Status), Welcomes, and `Accepted` for every Submit frame (by its first
    // task; one `Accepted` covers the frames before it too).
    let (mut results, mut commands) = (HashMap::<TaskId, Vec<bool>>::new(), HashMap::new());
    let (mut welcomes, mut next_id) = (1, 1);
    let mut accepts: Vec<TaskId> = Vec::new();
    for op in ops {
        match op {
            Op::Frames(to, frames) => {
                let frames: Vec<Vec<u8>> = frames.into_iter().map(|f| f.0).collect();
                let Some(want) = due(to, &frames, &mut registered[to as usize]) else {
                    continue;
                };
                wants[to as usize].extend(want);
                let socket = strangers.get_mut(to as usize).unwrap_or(&mut w.fake);
                send_frames(socket, frames).await;
            }
            Op::Raw(manager, Frame(mut bytes), hold) => {
                if bytes.first() == Some(&0xff) {
                    bytes[0] = 0; // never a ZMTP greeting
                }
                let address = w.endpoints[manager as usize].trim_start_matches("tcp://");
                let mut raw = TcpStream::connect(address).unwrap();
                let _ = raw.write_all(&bytes);
                if hold && w.held.len() < 16 {
                    w.held.push(raw);
                }
            }
            Op::Submit(valid, dup) => {
                let ids = next_id..next_id + valid.len() as u64;
                let mut specs: Vec<_> = ids.zip(&valid).map(|(id, v)| spec(id, *v)).collect();
                next_id += specs.len() as u64;
                let accepted = valid.iter().filter(|v| **v).count() as u64;
                ACCEPTED.fetch_add(accepted, Ordering::Relaxed);
                if dup {
                    specs.push(specs[0].clone());
                }
                for (i, s) in specs.iter().enumerate() {
                    let bad = valid.get(i) != Some(&true);
                    results.entry(s.id).or_default().push(bad);
                }
                accepts.push(specs[0].id);
                send(&mut member, &ClientRequest::Submit(specs)).await;
            }
            Op::Cancel(ids) => send(&mut member, &ClientRequest::Cancel(ids)).await,
            Op::Command(command) => {
                commands.insert(next_id, command == Command::Status);
                let request_id = next_id;
                next_id += 1;
                send(&mut member, &command_request(request_id, command)).await;
            }
            Op::Sweep(returned) => {
                let newest = ACCEPTED.load(Ordering::Relaxed) + 50;
                let ids = newest.saturating_sub(2000)..newest;
                let message = match returned {
                    true => ManagerMessage::Draining {
                        returned: ids.collect(),
                    },
                    false => ManagerMessage::Results(ids.map(fake_result).collect()),
                };
                let frames = vec![encode(&message).unwrap()];
                wants[2].extend(due(To::Fake, &frames, &mut registered[2]).unwrap());
                send_frames(&mut w.fake, frames).await;
            }
            Op::Rejoin => {
                send(&mut member, &ClientRequest::Goodbye).await;
                send(&mut member, &hello(PV, "fuzz".into())).await;
                welcomes += 1;
            }
        }
        w.sent += 1;
    }
    // Probes: each socket's last reply answers its probe, so no promised reply is missing.
    send(&mut strangers[0], &ClientRequest::Heartbeat).await;
    wants[0].push(NO_HELLO.into());
    send(&mut strangers[1], &ManagerMessage::Results(vec![])).await;
    wants[1].push("RegisterAgain".into());
    let sockets = strangers.iter_mut().zip([To::Client, To::Manager]);
    for ((socket, to), wants) in sockets.zip(&wants) {
        for want in wants {
            check(to, want, &reply(socket).await);
            w.replies += 1;
        }
    }
    w.replies += register_fake(&mut w.fake, std::mem::take(&mut wants[2])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(results.is_empty() && commands.is_empty() && welcomes == 0 && accepts.is_empty()) {
        let missing = format!(
            "{results:?}, commands {commands:?}, {welcomes} Welcomes, Accepted for {accepts:?}"
        );
        assert!(Instant::now() < deadline, "the member is missing {missing}");
        let frame = reply(&mut member).await;
        match decode::<ClientReply>(&frame, LIMIT).unwrap() {
            ClientReply::Welcome { .. } if welcomes > 0 => welcomes -= 1,
            ClientReply::Heartbeat => {}
            ClientReply::Accepted { first } => {
                // Cumulative, and in the order the frames were sent.
                let at = accepts.iter().position(|a| *a == first);
                let at = at.unwrap_or_else(|| panic!("Accepted {first} out of order: {accepts:?}"));
                accepts.drain(..=at);
            }
            ClientReply::Results(batch) => {
                for r in batch {
                    let bad = matches!(r.outcome, Err(TaskError::BadRequest { .. }));
                    let due = results.get_mut(&r.id).filter(|due| due.contains(&bad));
                    let due = due.unwrap_or_else(|| panic!("unexpected {r:?}"));
                    due.remove(due.iter().position(|b| *b == bad).unwrap());
                    if due.is_empty() {
                        results.remove(&r.id);
                    }
                    assert!(bad || ran_or_cancelled(&r.outcome), "{r:?}");
                }
            }
            ClientReply::CommandReply { request_id, reply } => {
                let status = commands.remove(&request_id);
                match (status, reply) {
                    (Some(true), CommandReply::Status(s)) => {
                        assert!(s.managers.iter().any(|m| m.id == "test-0"))
                    }
                    (Some(false), CommandReply::Error { message }) => {
                        assert!(message.contains("no manager"), "{message}")
                    }
                    other => panic!("command {request_id}: {other:?}"),
                }
            }
            other => panic!("the member got {other:?}"),
        }
        w.replies += 1;
    }
    send(&mut member, &ClientRequest::Goodbye).await;
    // Nothing beyond the promised replies.
    for socket in &mut strangers {
        let extra = recv(socket, Duration::from_millis(5)).await;
        assert!(extra.is_none(), "an extra reply");
    }
}

/// (Re-)registers the fake manager, checking the replies due to it before `Registered`.
async fn register_fake(fake: &mut DealerSocket, due: Vec<String>) -> u64 {
    let register = ManagerMessage::Register(registration(PV, FAKE.into()));
    send(fake, &register).await;
    let (mut due, mut seen) = (due.into_iter(), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "the fake is not registered");
        let frame = reply(fake).await;
        match decode::<InterchangeMessage>(&frame, LIMIT) {
            Ok(InterchangeMessage::Registered { .. }) => {
                assert!(due.len() == 0, "missing: {due:?}");
                return seen;
            }
            Ok(InterchangeMessage::Heartbeat) => continue,
            _ => check(To::Fake, &due.next().expect("a due reply"), &frame),
        }
        seen += 1;
    }
}

/// A member's noop ran, or was cancelled by the member (not a fake manager's `Cancelled`).
fn ran_or_cancelled(outcome: &Result<TaskOutput, TaskError>) -> bool {
    match outcome {
        Ok(TaskOutput::Value(v)) => v == &[0xc0],
        Err(TaskError::Cancelled { reason }) => reason != "FAKE",
        _ => false,
    }
}

/// Real task `i` and what it must give back: an echo command's stdout, echoed bytes or nil.
fn steady(i: usize) -> (Task, Vec<u8>) {
    let line = format!("steady {i}");
    let payload: Vec<u8> = (0..(i * 37) % 3000).map(|k| (k ^ i) as u8).collect();
    match i % 8 {
        0 => (Task::command(["echo", &*line]), format!("{line}\n").into()),
        1..=3 => (Task::function("echo", payload.clone()), payload),
        _ => (Task::function("noop", Vec::new()), vec![0xc0]),
    }
}

#[test]
fn interchange_survives_fuzzed_peers() {
    let started = Instant::now();
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "error"); // the interchange warns of every bad frame
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let max_frame_bytes = LIMIT; // small, so oversize frames are cheap
    let config = InterchangeConfig {
        max_frame_bytes,
        ..Default::default()
    };
    let cluster = TestCluster::start_with(test_worker!(), config, 1, 2, |_| {});
    let cluster = rt.block_on(cluster);
    let client = rt.block_on(cluster.client());
    let endpoints = [cluster.client_endpoint(), cluster.manager_endpoint()].map(String::from);
    let mut fake = rt.block_on(dealer(&endpoints[1]));
    rt.block_on(register_fake(&mut fake, vec![]));
    // The real client submits throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (submitter, stopped) = (client.clone(), stop.clone());
    let submitter = rt.spawn(async move {
        let mut sent = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            for _ in 0..6 {
                let (task, want) = steady(sent.len());
                sent.push((submitter.submit(task), want));
                ACCEPTED.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    });

    let seed = std::env::var("HTEX_FUZZ_SEED").map_or_else(|_| now_us(), |s| s.parse().unwrap());
    eprintln!("fuzz_interchange: seed {seed}");
    // A hang fails the test rather than stalling it (zmq.rs can deadlock under peer churn).
    let (_running, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let timeout = std::sync::mpsc::RecvTimeoutError::Timeout;
        if watchdog.recv_timeout(Duration::from_secs(240)) == Err(timeout) {
            eprintln!("fuzz_interchange: hung for 240 s; seed {seed}");
            std::process::exit(101);
        }
    });
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[seed.to_le_bytes(); 4].concat());
    let mut config = Config::with_cases(64);
    (config.failure_persistence, config.max_shrink_time) = (None, 20_000);
    let (held, sent, replies) = (vec![], 0, 0);
    let world = RefCell::new(World {
        endpoints,
        fake,
        held,
        sent,
        replies,
    });
    let cases = Cell::new(0);
    let outcome = TestRunner::new_with_rng(config, rng).run(&vec(op(), 1..150), |ops| {
        rt.block_on(run_case(&mut world.borrow_mut(), ops));
        cases.set(cases.get() + 1);
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("seed {seed}: {e}");
    }

    stop.store(true, Ordering::Relaxed);
    let mut world = world.into_inner();
    let sent = rt.block_on(submitter).unwrap();
    let tasks = sent.len();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for (handle, want) in sent {
            let id = handle.id();
            let result = tokio::time::timeout_at(deadline, handle).await;
            let result = result
                .unwrap_or_else(|_| panic!("task {id}: no result in 30 s"))
                .unwrap();
            assert_eq!(result.id, id, "a result routed to the wrong handle");
            let got = match result.outcome {
                Ok(TaskOutput::Value(v)) => v,
                Ok(TaskOutput::Command(out)) => out.stdout,
                Err(e) => panic!("task {id}: {e}"),
            };
            assert!(got == want, "task {id}: wrong output");
        }
        assert_eq!(client.outstanding(), 0);
        // Both managers still registered, the fake never sent a task, and nothing left over.
        send(&mut world.fake, &ManagerMessage::Heartbeat).await;
        let status = client.status().await.unwrap();
        let managers: Vec<_> = status.managers.iter().map(|m| (&*m.id, m.tasks)).collect();
        assert_eq!(managers, [(FAKE, 0), ("test-0", 0)]);
        let left = (status.outstanding, status.queued, status.clients);
        assert_eq!(left, (0, 0, 1), "{status:?}");
        // A newcomer is served.
        let fresh = cluster.client().await;
        let after = b"after".to_vec();
        let done = fresh.submit(Task::function("echo", after.clone())).await;
        assert_eq!(done.unwrap().outcome, Ok(TaskOutput::Value(after)));
        fresh.close().await;
        client.close().await;
    });
    let (cases, sent, replies) = (cases.get(), world.sent, world.replies);
    let elapsed = started.elapsed();
    println!(
        "fuzz_interchange: {cases} cases, {sent} messages and raw writes, {replies} replies seen, \
         {tasks} real tasks right, {elapsed:.1?}"
    );
    drop(world.held);
    rt.block_on(cluster.stop());
}
