//! The core's transitions, driven input by input with a hand-held clock: no ports, no processes.

use std::time::Duration;

use bytes::Bytes;
use htex_protocol::{
    decode, encode, ClientHello, ClientReply, ClientRequest, Command, CommandReply, EncodedTask,
    InterchangeMessage, ManagerMessage, Registration, ResourceRequest, SlotDescriptor, SlotKind,
    TaskError, TaskKind, TaskOutput, TaskResult, TaskSpec, Timings, PROTOCOL_VERSION,
};

use super::clients::ACK_BYTES;
use super::*;
use crate::InterchangeConfig;

#[path = "blocks_tests.rs"]
mod blocks;
#[path = "journal_tests.rs"]
mod journal;

const LIMIT: usize = 1 << 20;

struct Harness {
    core: Core,
    now: Now,
    out: Effects,
}

/// What the core sent, decoded.
#[derive(Default, Debug)]
struct Sent {
    to_clients: Vec<(Bytes, ClientReply)>,
    to_managers: Vec<(Bytes, InterchangeMessage)>,
    disconnected: Vec<Bytes>,
    frame_sizes: Vec<usize>,
    provider: Vec<ProviderAction>,
    journal: Vec<crate::journal::Batch>,
    events: Vec<htex_monitoring::Event>,
}

impl Sent {
    fn client(&self, peer: &str) -> Vec<&ClientReply> {
        self.to_clients
            .iter()
            .filter(|(p, _)| p == &Bytes::from(peer.to_string()))
            .map(|(_, r)| r)
            .collect()
    }

    fn results(&self, peer: &str) -> Vec<TaskResult> {
        self.client(peer)
            .into_iter()
            .filter_map(|r| match r {
                ClientReply::Results(results) => Some(results.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Task specs sent to a manager, decoded.
    fn tasks(&self, peer: &str) -> Vec<TaskSpec> {
        self.to_managers
            .iter()
            .filter(|(p, _)| p == &Bytes::from(peer.to_string()))
            .filter_map(|(_, m)| match m {
                InterchangeMessage::Tasks(tasks) => Some(tasks.clone()),
                _ => None,
            })
            .flatten()
            .map(|t: EncodedTask| t.decode(LIMIT).unwrap())
            .collect()
    }
}

fn config() -> InterchangeConfig {
    InterchangeConfig {
        max_frame_bytes: LIMIT,
        max_queued_bytes: 64 * LIMIT,
        manager_window_bytes: 4 * LIMIT,
        max_peer_backlog_bytes: 4 * LIMIT,
        ..InterchangeConfig::default()
    }
}

fn peer(name: &str) -> Bytes {
    Bytes::from(name.to_string())
}

fn spec(id: u64) -> TaskSpec {
    TaskSpec {
        id,
        kind: TaskKind::Function {
            name: "noop".into(),
            args: vec![],
        },
        resources: ResourceRequest::default(),
        priority: 0,
        timeout_ms: None,
        max_retries: 0,
        submitted_us: 0,
    }
}

fn with_args(id: u64, bytes: usize) -> TaskSpec {
    TaskSpec {
        kind: TaskKind::Function {
            name: "echo".into(),
            args: vec![1; bytes],
        },
        ..spec(id)
    }
}

fn gpu_spec(id: u64) -> TaskSpec {
    TaskSpec {
        resources: ResourceRequest {
            gpu: true,
            ..Default::default()
        },
        ..spec(id)
    }
}

fn cpu_slots(n: u32) -> Vec<SlotDescriptor> {
    (0..n).map(SlotDescriptor::cpu).collect()
}

fn gpu_slot(index: u32, kind: SlotKind, percentage: Option<u8>) -> SlotDescriptor {
    SlotDescriptor {
        kind,
        gpu_uuid: Some("GPU-0".into()),
        gpu_index: Some(0),
        mps_percentage: percentage,
        ..SlotDescriptor::cpu(index)
    }
}

fn registration(
    id: &str,
    instance: u64,
    slots: Vec<SlotDescriptor>,
    prefetch: u32,
) -> Registration {
    Registration {
        protocol_version: PROTOCOL_VERSION,
        manager_id: id.into(),
        hostname: "node".into(),
        block_id: None,
        version: "test".into(),
        slots,
        prefetch,
        pid: 1,
        instance,
        held: vec![],
        max_frame_bytes: LIMIT as u64,
    }
}

fn ok_result(id: u64) -> TaskResult {
    TaskResult {
        id,
        outcome: Ok(TaskOutput::Value(vec![0xc0])),
        timings: Timings::default(),
        slot: None,
        attempts: 1,
    }
}

impl Harness {
    fn new(config: InterchangeConfig) -> Harness {
        let now = Now::read();
        Harness {
            core: Core::new(config, "plaintext (loopback)", None, None, true, now),
            now,
            out: Effects::default(),
        }
    }

    fn apply(&mut self, input: Input) -> Sent {
        self.core.apply(self.now, input, &mut self.out);
        self.core.apply(self.now, Input::Flush, &mut self.out);
        self.take()
    }

    fn take(&mut self) -> Sent {
        let mut sent = Sent::default();
        for effect in std::mem::take(&mut self.out.0) {
            match effect {
                Effect::Send { side, peer, frame } => {
                    sent.frame_sizes.push(frame.len());
                    match side {
                        Side::Client => sent
                            .to_clients
                            .push((peer, decode(&frame, usize::MAX).unwrap())),
                        Side::Manager => sent
                            .to_managers
                            .push((peer, decode(&frame, usize::MAX).unwrap())),
                    }
                }
                Effect::Disconnect { peer, .. } => sent.disconnected.push(peer),
                Effect::Provider(action) => sent.provider.push(action),
                Effect::Journal(batch) => sent.journal.push(batch),
                Effect::Events(events) => sent.events.extend(events),
                Effect::Stopped => {}
            }
        }
        sent
    }

    fn client(&mut self, name: &str, request: ClientRequest) -> Sent {
        self.apply(Input::Client {
            peer: peer(name),
            message: Ok(request),
        })
    }

    fn hello(&mut self, name: &str) -> Sent {
        self.client(
            name,
            ClientRequest::Hello(ClientHello {
                protocol_version: PROTOCOL_VERSION,
                name: name.into(),
                max_frame_bytes: LIMIT as u64,
                identity: String::new(),
            }),
        )
    }

    fn submit(&mut self, name: &str, specs: Vec<TaskSpec>) -> Sent {
        self.client(name, ClientRequest::Submit(specs))
    }

    fn manager(&mut self, name: &str, message: ManagerMessage) -> Sent {
        self.apply(Input::Manager {
            peer: peer(name),
            message: Ok(message),
        })
    }

    fn register(&mut self, name: &str, registration: Registration) -> Sent {
        self.manager(name, ManagerMessage::Register(registration))
    }

    fn advance(&mut self, by: Duration) {
        self.now.at += by;
        self.now.epoch_us += by.as_micros() as u64;
    }

    fn tick(&mut self) -> Sent {
        self.core.apply(self.now, Input::Tick, &mut self.out);
        self.take()
    }
}

#[test]
fn a_task_goes_to_a_manager_and_its_result_to_its_client() {
    let mut h = Harness::new(config());
    let welcome = h.hello("c");
    assert!(matches!(
        welcome.client("c")[..],
        [ClientReply::Welcome { max_frame_bytes, .. }] if *max_frame_bytes == LIMIT as u64
    ));
    let registered = h.register("m", registration("m", 1, cpu_slots(2), 0));
    assert!(matches!(
        registered.to_managers[..],
        [(_, InterchangeMessage::Registered { .. })]
    ));
    let sent = h.submit("c", vec![spec(7), spec(8)]);
    // A small frame's acknowledgement waits for the tick; the tasks do not.
    assert!(sent.client("c").is_empty(), "{:?}", sent.to_clients);
    let tasks = sent.tasks("m");
    assert_eq!(tasks.len(), 2, "one frame carries both");
    assert_eq!(sent.to_managers.len(), 1);
    let gid = tasks[0].id;
    let sent = h.manager("m", ManagerMessage::Results(vec![ok_result(gid)]));
    let results = sent.results("c");
    assert_eq!(results.len(), 1);
    assert_eq!((results[0].id, results[0].attempts), (7, 1));
    // A second result for the same task is a duplicate.
    let sent = h.manager("m", ManagerMessage::Results(vec![ok_result(gid)]));
    assert!(sent.results("c").is_empty());
}

#[test]
fn accepted_is_cumulative_at_the_tick_at_once_past_a_mebibyte_and_before_busy() {
    let mut h = Harness::new(InterchangeConfig {
        max_queued_bytes: ACK_BYTES * 3 / 2,
        ..config()
    });
    h.hello("c");
    h.submit("c", vec![spec(1)]);
    h.submit("c", vec![spec(2), spec(3)]);
    // One answer for both frames, on the tick; nothing more on the next.
    let sent = h.tick();
    assert!(matches!(
        sent.client("c")[..],
        [ClientReply::Accepted { first: 2 }, ..]
    ));
    assert!(!h
        .tick()
        .client("c")
        .iter()
        .any(|r| matches!(r, ClientReply::Accepted { .. })));
    // A mebibyte of tasks is answered at once.
    let sent = h.submit(
        "c",
        vec![with_args(10, ACK_BYTES / 2), with_args(11, ACK_BYTES / 2)],
    );
    assert!(matches!(
        sent.client("c")[..],
        [ClientReply::Accepted { first: 10 }]
    ));
    // A frame that reaches the cap, then one refused: the first is answered before the refusal.
    h.submit("c", vec![with_args(20, ACK_BYTES / 2)]);
    let sent = h.submit("c", vec![spec(31)]);
    assert!(
        matches!(
            sent.client("c")[..],
            [ClientReply::Accepted { first: 20 }, ClientReply::Busy { ref ids, .. }] if ids == &[31]
        ),
        "{:?}",
        sent.to_clients
    );
}

#[test]
fn tasks_waiting_for_busy_gpu_slots_do_not_hide_cpu_tasks_behind_them() {
    let mut h = Harness::new(config());
    h.hello("c");
    // A GPU manager with one slot, and a CPU manager with two.
    h.register(
        "gpu",
        registration("gpu", 1, vec![gpu_slot(0, SlotKind::Gpu, None)], 0),
    );
    h.register("cpu", registration("cpu", 2, cpu_slots(2), 0));
    let mut specs: Vec<TaskSpec> = (1..=3000).map(gpu_spec).collect();
    specs.extend((3001..=3002).map(spec));
    let sent = h.submit("c", specs);
    assert_eq!(sent.tasks("gpu").len(), 1, "one GPU slot, one GPU task");
    let cpu: Vec<u64> = sent.tasks("cpu").iter().map(|t| t.id).collect();
    assert_eq!(
        cpu.len(),
        2,
        "both CPU slots get the CPU tasks behind 2,999 waiting GPU tasks"
    );
}

#[test]
fn a_slot_is_reserved_by_one_constrained_task_whatever_it_asked() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.register(
        "m",
        registration("m", 1, vec![gpu_slot(0, SlotKind::Gpu, None)], 4),
    );
    let half = TaskSpec {
        resources: ResourceRequest {
            min_mps_percentage: Some(50),
            ..Default::default()
        },
        ..spec(2)
    };
    let sent = h.submit("c", vec![gpu_spec(1), half]);
    assert_eq!(
        sent.tasks("m").len(),
        1,
        "two requests, one slot: one task goes"
    );
    let gid = sent.tasks("m")[0].id;
    let sent = h.manager("m", ManagerMessage::Results(vec![ok_result(gid)]));
    assert_eq!(
        sent.tasks("m").len(),
        1,
        "the slot is free again for the other"
    );
}

#[test]
fn impossible_requests_are_bad_requests_and_unfit_ones_unsatisfiable_after_the_grace() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.register("m", registration("m", 1, cpu_slots(1), 0));
    let over = TaskSpec {
        resources: ResourceRequest {
            min_mps_percentage: Some(150),
            ..Default::default()
        },
        ..spec(1)
    };
    let sent = h.submit("c", vec![over, gpu_spec(2)]);
    let results = sent.results("c");
    assert!(
        matches!(&results[..], [r] if r.id == 1 && matches!(&r.outcome, Err(TaskError::BadRequest { message }) if message.contains("150"))),
        "{results:?}"
    );
    h.advance(Duration::from_secs(5));
    h.manager("m", ManagerMessage::Heartbeat);
    assert!(h.tick().results("c").is_empty(), "still within the grace");
    h.advance(Duration::from_secs(6));
    h.manager("m", ManagerMessage::Heartbeat);
    let results = h.tick().results("c");
    let [r] = &results[..] else {
        panic!("{results:?}")
    };
    let Err(TaskError::Unsatisfiable { reason }) = &r.outcome else {
        panic!("{r:?}")
    };
    assert!(
        reason.starts_with("`gpu` fits no slot of the 1 connected manager(s)"),
        "{reason}"
    );
}

#[test]
fn a_manager_registering_gives_parked_tasks_another_chance() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.register("m", registration("m", 1, cpu_slots(1), 0));
    h.submit("c", vec![gpu_spec(1)]);
    h.advance(Duration::from_secs(8));
    let sent = h.register(
        "g",
        registration("g", 2, vec![gpu_slot(0, SlotKind::Gpu, None)], 0),
    );
    assert_eq!(sent.tasks("g").len(), 1);
}

#[test]
fn dispatch_frames_stay_under_the_limit() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.register("m", registration("m", 1, cpu_slots(1), 20));
    let specs: Vec<TaskSpec> = (1..=6).map(|id| with_args(id, LIMIT * 2 / 5)).collect();
    let sent = h.submit("c", specs);
    assert_eq!(sent.tasks("m").len(), 6);
    assert_eq!(sent.to_managers.len(), 3, "two tasks of 40 % per frame");
    assert!(sent.frame_sizes.iter().all(|&s| s <= LIMIT));
}

#[test]
fn a_task_too_large_for_a_frame_is_a_bad_request_and_the_others_run() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.register("m", registration("m", 1, cpu_slots(2), 0));
    let sent = h.submit("c", vec![with_args(1, LIMIT), spec(2)]);
    let results = sent.results("c");
    assert!(
        matches!(&results[..], [r] if r.id == 1 && matches!(&r.outcome, Err(TaskError::BadRequest { message }) if message.contains("over the limit"))),
        "{results:?}"
    );
    assert_eq!(sent.tasks("m").len(), 1);
}

#[test]
fn an_oversize_frame_is_answered_task_by_task() {
    let mut h = Harness::new(config());
    h.hello("c");
    let sent = h.apply(Input::Client {
        peer: peer("c"),
        message: Err(BadFrame {
            reason: "too large".into(),
            claimed_version: None,
            oversize: Some((3 * LIMIT, vec![4, 5])),
        }),
    });
    let results = sent.results("c");
    assert_eq!(results.iter().map(|r| r.id).collect::<Vec<_>>(), [4, 5]);
    assert!(results
        .iter()
        .all(|r| matches!(r.outcome, Err(TaskError::BadRequest { .. }))));
}

#[test]
fn past_the_byte_cap_submissions_are_busy_until_room_frees() {
    let mut h = Harness::new(InterchangeConfig {
        max_queued_bytes: LIMIT,
        ..config()
    });
    h.hello("c");
    h.register("m", registration("m", 1, cpu_slots(1), 0));
    let big = |id| with_args(id, LIMIT / 2);
    h.submit("c", vec![big(1), big(2)]);
    let sent = h.submit("c", vec![big(3)]);
    assert!(
        matches!(sent.client("c")[..], [ClientReply::Busy { ref ids, .. }] if ids == &[3]),
        "{:?}",
        sent.to_clients
    );
    // The first task ends: under three quarters of the cap again.
    let gid = h.core.tasks.iter().next().map(|(gid, _)| gid).unwrap();
    let sent = h.manager("m", ManagerMessage::Results(vec![ok_result(gid)]));
    assert!(sent
        .client("c")
        .iter()
        .any(|r| matches!(r, ClientReply::Resume)));
    let sent = h.submit("c", vec![big(3)]);
    assert!(!sent
        .client("c")
        .iter()
        .any(|r| matches!(r, ClientReply::Busy { .. })));
}

#[test]
fn a_manager_back_on_a_new_connection_keeps_its_tasks_and_results() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.register("link1", registration("m", 42, cpu_slots(2), 2));
    let sent = h.submit("c", (1..=4).map(spec).collect());
    let gids: Vec<u64> = sent.tasks("link1").iter().map(|t| t.id).collect();
    assert_eq!(gids.len(), 4);
    // The same manager (same instance) registers on a new connection, holding three of them:
    // the fourth never reached it.
    let mut again = registration("m", 42, cpu_slots(2), 2);
    again.held = vec![gids[0], gids[1], gids[2], 999];
    let sent = h.register("link2", again);
    let orphaned = sent
        .to_managers
        .iter()
        .find_map(|(_, m)| match m {
            InterchangeMessage::Registered { orphaned, .. } => Some(orphaned.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(orphaned, [999]);
    assert_eq!(
        sent.tasks("link2").iter().map(|t| t.id).collect::<Vec<_>>(),
        [gids[3]],
        "sent again"
    );
    let results: Vec<_> = gids.iter().map(|&g| ok_result(g)).collect();
    let sent = h.manager("link2", ManagerMessage::Results(results));
    let mut ids: Vec<u64> = sent.results("c").iter().map(|r| r.id).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert!(
        sent.results("c").iter().all(|r| r.attempts == 1),
        "no loss was counted"
    );
}

#[test]
fn a_second_live_manager_with_the_same_id_is_refused() {
    let mut h = Harness::new(config());
    h.register("a", registration("m", 1, cpu_slots(1), 0));
    let sent = h.register("b", registration("m", 2, cpu_slots(1), 0));
    assert!(
        matches!(&sent.to_managers[..], [(_, InterchangeMessage::Refused { reason })] if reason.contains("taken by a live manager")),
        "{:?}",
        sent.to_managers
    );
    // Once the first is silent past the threshold, the id is free.
    h.advance(Duration::from_secs(7));
    let sent = h.register("b", registration("m", 2, cpu_slots(1), 0));
    assert!(matches!(
        &sent.to_managers[..],
        [(_, InterchangeMessage::Registered { .. })]
    ));
}

#[test]
fn a_lost_manager_s_tasks_run_elsewhere_or_end_manager_lost() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.register("a", registration("a", 1, cpu_slots(2), 0));
    let retried = TaskSpec {
        max_retries: 1,
        ..spec(1)
    };
    h.submit("c", vec![retried, spec(2)]);
    h.advance(Duration::from_secs(4));
    h.register("b", registration("b", 2, cpu_slots(2), 0));
    h.manager("b", ManagerMessage::Heartbeat);
    h.advance(Duration::from_secs(3));
    let sent = h.tick();
    let results = sent.results("c");
    assert!(
        matches!(&results[..], [r] if r.id == 2 && matches!(r.outcome, Err(TaskError::ManagerLost { .. }))),
        "{results:?}"
    );
    assert_eq!(
        sent.tasks("b").len(),
        1,
        "the task with a retry runs on the other manager, dispatched on the same tick"
    );
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_others_go_on() {
    let mut h = Harness::new(config());
    h.hello("slow");
    h.hello("fast");
    h.register("m", registration("m", 1, cpu_slots(1), 0));
    h.submit("slow", vec![spec(1), spec(2)]);
    let sent = h.apply(Input::Stalled {
        side: Side::Client,
        peer: peer("slow"),
        queued_bytes: 1 << 30,
    });
    assert_eq!(sent.disconnected, [peer("slow")]);
    // Its running task is cancelled at its manager; its queued one is gone.
    assert!(sent
        .to_managers
        .iter()
        .any(|(_, m)| matches!(m, InterchangeMessage::Cancel(ids) if ids.len() == 1)));
    let sent = h.submit("fast", vec![spec(1)]);
    assert!(sent.results("slow").is_empty());
    assert_eq!(
        h.core.tasks.len(),
        2,
        "the slow client's running task and the new one"
    );
    assert!(matches!(
        h.submit("slow", vec![spec(3)]).client("slow")[..],
        [ClientReply::Error { .. }]
    ));
}

#[test]
fn goodbye_cancels_outstanding_tasks_and_their_results_still_go_out() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.submit("c", vec![spec(1)]);
    let sent = h.client("c", ClientRequest::Goodbye);
    let results = sent.results("c");
    assert!(
        matches!(&results[..], [r] if matches!(r.outcome, Err(TaskError::Cancelled { .. }))),
        "{results:?}"
    );
    assert!(h.core.clients.get(1).is_none(), "forgotten once answered");
}

#[test]
fn status_and_shutdown() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.register("m", registration("m", 1, cpu_slots(1), 0));
    h.submit("c", vec![spec(1), spec(2)]);
    let sent = h.client(
        "c",
        ClientRequest::Command {
            request_id: 9,
            command: Command::Status,
        },
    );
    let Some(ClientReply::CommandReply {
        request_id: 9,
        reply: CommandReply::Status(report),
    }) = sent.client("c").first().cloned()
    else {
        panic!("{sent:?}")
    };
    assert_eq!(
        (report.queued, report.outstanding, report.managers.len()),
        (1, 2, 1)
    );
    assert!(report.task_bytes > 0);
    let sent = h.client(
        "c",
        ClientRequest::Command {
            request_id: 10,
            command: Command::Shutdown,
        },
    );
    assert!(sent
        .to_managers
        .iter()
        .any(|(_, m)| matches!(m, InterchangeMessage::Shutdown)));
    let results = sent.results("c");
    assert_eq!(results.len(), 2);
    assert!(h.core.stopped());
}

#[test]
fn a_million_answered_tasks_leave_nothing_behind() {
    let mut h = Harness::new(config());
    h.hello("c");
    h.register("m", registration("m", 1, cpu_slots(4), 1000));
    let mut next = 1;
    for _ in 0..100 {
        let specs: Vec<TaskSpec> = (next..next + 1000).map(spec).collect();
        next += 1000;
        let sent = h.submit("c", specs);
        let results: Vec<TaskResult> = sent.tasks("m").iter().map(|t| ok_result(t.id)).collect();
        assert_eq!(results.len(), 1000);
        let sent = h.manager("m", ManagerMessage::Results(results));
        assert_eq!(sent.results("c").len(), 1000);
    }
    assert_eq!(
        (h.core.tasks.len(), h.core.queued, h.core.task_bytes),
        (0, 0, 0)
    );
    let m = h.core.managers.iter().next().unwrap().1;
    assert_eq!((m.tasks.len(), m.held_bytes), (0, 0));
    assert!(encode(&ClientRequest::Heartbeat).is_ok());
}

#[test]
fn the_event_stream_tells_each_task_s_attempts_and_each_manager_s_end() {
    use htex_monitoring::event::AttemptOutcome;
    use htex_monitoring::Event;
    let mut h = Harness::new(config());
    let mut events = Vec::new();
    events.extend(h.hello("c").events);
    events.extend(
        h.register("a", registration("a", 1, cpu_slots(1), 0))
            .events,
    );
    let retried = TaskSpec {
        max_retries: 1,
        ..spec(1)
    };
    events.extend(h.submit("c", vec![retried]).events);
    h.advance(Duration::from_secs(4));
    events.extend(
        h.register("b", registration("b", 2, cpu_slots(1), 0))
            .events,
    );
    events.extend(h.manager("b", ManagerMessage::Heartbeat).events);
    h.advance(Duration::from_secs(3));
    let sent = h.tick();
    let gid = sent.tasks("b")[0].id;
    events.extend(sent.events);
    let mut result = ok_result(gid);
    result.slot = Some(htex_protocol::SlotRef {
        manager: "b".into(),
        slot: 0,
    });
    result.timings.started_us = h.now.epoch_us + 10;
    result.timings.finished_us = h.now.epoch_us + 20;
    events.extend(h.manager("b", ManagerMessage::Results(vec![result])).events);

    let names: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::ClientConnected { .. } => Some("client"),
            Event::Submitted(_) => Some("submitted"),
            Event::Dispatched { .. } => Some("dispatched"),
            Event::AttemptEnded { .. } => Some("attempt ended"),
            Event::Ended(_) => Some("ended"),
            Event::ManagerRegistered(_) => Some("registered"),
            Event::ManagerEnded { .. } => Some("manager ended"),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        [
            "registered",
            "client",
            "submitted",
            "dispatched",
            "registered",
            "attempt ended",
            "manager ended",
            "dispatched",
            "ended"
        ]
    );
    let lost = events.iter().find_map(|e| match e {
        Event::AttemptEnded { task, attempt } => Some((*task, attempt.clone())),
        _ => None,
    });
    let (task, lost) = lost.expect("the lost attempt");
    assert_eq!(
        (task, lost.attempt, lost.outcome),
        (gid, 1, AttemptOutcome::Lost)
    );
    assert!(events.iter().any(|e| matches!(e,
        Event::ManagerEnded { lost: true, reason, .. } if reason.contains("no message"))));
    let Some(Event::Ended(ended)) = events.last() else {
        panic!("the task ends last: {events:?}");
    };
    let last = ended.last.as_ref().expect("answered by a manager");
    assert_eq!((ended.attempts, last.attempt, last.slot), (2, 2, Some(0)));
    assert_eq!(last.outcome, AttemptOutcome::Completed);
    assert_eq!(last.finished_us - last.started_us, 10);
    assert!(ended.error.is_none());
}

#[test]
fn a_task_ended_by_the_interchange_says_why_and_no_attempt_when_never_sent() {
    use htex_monitoring::Event;
    let mut h = Harness::new(config());
    h.hello("c");
    let sent = h.submit("c", vec![spec(1)]);
    let gid = sent
        .events
        .iter()
        .find_map(|e| match e {
            Event::Submitted(s) => Some(s.task),
            _ => None,
        })
        .expect("submitted");
    let sent = h.client("c", ClientRequest::Cancel(vec![1]));
    let ended = sent.events.iter().find_map(|e| match e {
        Event::Ended(ended) => Some(ended.clone()),
        _ => None,
    });
    let ended = ended.expect("the cancel ends it");
    assert_eq!((ended.task, ended.attempts), (gid, 0));
    assert!(ended.last.is_none());
    assert!(matches!(ended.error, Some(("Cancelled", _))), "{ended:?}");
}

#[test]
fn a_task_lost_past_its_retries_has_its_lost_attempt_once() {
    use htex_monitoring::event::AttemptOutcome;
    use htex_monitoring::Event;
    let mut h = Harness::new(config());
    h.hello("c");
    h.register("a", registration("a", 1, cpu_slots(1), 0));
    h.submit("c", vec![spec(1)]);
    h.advance(Duration::from_secs(7));
    let events = h.tick().events;
    let lost: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::AttemptEnded { attempt, .. } => Some(attempt.outcome),
            _ => None,
        })
        .collect();
    assert_eq!(lost, [AttemptOutcome::Lost]);
    let ended = events.iter().find_map(|e| match e {
        Event::Ended(ended) => Some(ended.clone()),
        _ => None,
    });
    let ended = ended.expect("ManagerLost ends it");
    assert!(matches!(ended.error, Some(("ManagerLost", _))), "{ended:?}");
    assert!(ended.last.is_none(), "the lost attempt is not ended twice");
    assert_eq!(ended.attempts, 1);
}
