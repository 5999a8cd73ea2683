//! Property tests of the wire codec: every variant of every message enum survives `encode` then
//! `decode`, and hostile frames (random or truncated bytes) are errors, never panics.

use htex_protocol::*;
use proptest::collection::vec;
use proptest::option::of as maybe;
use proptest::prelude::*;
use proptest::sample::Index;

// ---- Building blocks --------------------------------------------------------------------------

/// Short strings, any printable Unicode.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..32)
}

// ---- Slots ------------------------------------------------------------------------------------

fn slot_kind() -> impl Strategy<Value = SlotKind> {
    prop_oneof![
        Just(SlotKind::Cpu),
        Just(SlotKind::Gpu),
        Just(SlotKind::Mps),
        Just(SlotKind::Mig)
    ]
}

prop_compose! {
    fn resource_request()(
        gpu in any::<bool>(), whole_gpu in any::<bool>(), cpu_only in any::<bool>(),
        min_mps_percentage in maybe(any::<u8>()), min_sm_count in maybe(any::<u32>()),
        min_gpu_memory_bytes in maybe(any::<u64>()), mig_profile in maybe(text()),
    ) -> ResourceRequest {
        ResourceRequest {
            gpu, whole_gpu, min_mps_percentage, min_sm_count, min_gpu_memory_bytes, mig_profile,
            cpu_only,
        }
    }
}

prop_compose! {
    fn slot_descriptor()(
        index in any::<u32>(), kind in slot_kind(), gpu_uuid in maybe(text()),
        gpu_index in maybe(any::<u32>()), mps_percentage in maybe(any::<u8>()),
        memory_bytes in maybe(any::<u64>()), mig_profile in maybe(text()),
        sm_count in maybe(any::<u32>()), cpus in vec(any::<u32>(), 0..4),
    ) -> SlotDescriptor {
        SlotDescriptor {
            index, kind, gpu_uuid, gpu_index, mps_percentage, memory_bytes, mig_profile, sm_count,
            cpus,
        }
    }
}

prop_compose! {
    fn slot_ref()(manager in text(), slot in any::<u32>()) -> SlotRef {
        SlotRef { manager, slot }
    }
}

// ---- Tasks and results ------------------------------------------------------------------------

prop_compose! {
    fn command_spec()(
        argv in vec(text(), 0..4), env in vec((text(), text()), 0..3),
        cwd in maybe(text()), stdin in maybe(bytes()),
    ) -> CommandSpec {
        CommandSpec { argv, env, cwd, stdin }
    }
}

fn task_kind() -> impl Strategy<Value = TaskKind> {
    prop_oneof![
        command_spec().prop_map(TaskKind::Command),
        (text(), bytes()).prop_map(|(name, args)| TaskKind::Function { name, args }),
        (text(), bytes()).prop_map(|(runner, args)| TaskKind::Call { runner, args }),
    ]
}

prop_compose! {
    fn task_spec()(
        id in any::<u64>(), kind in task_kind(), resources in resource_request(),
        priority in any::<i32>(), timeout_ms in maybe(any::<u64>()),
        max_retries in any::<u32>(), submitted_us in any::<u64>(),
    ) -> TaskSpec {
        TaskSpec { id, kind, resources, priority, timeout_ms, max_retries, submitted_us }
    }
}

prop_compose! {
    fn command_output()(
        exit_code in maybe(any::<i32>()), signal in maybe(any::<i32>()),
        stdout in bytes(), stderr in bytes(),
        stdout_truncated in any::<bool>(), stderr_truncated in any::<bool>(),
    ) -> CommandOutput {
        CommandOutput { exit_code, signal, stdout, stderr, stdout_truncated, stderr_truncated }
    }
}

fn task_output() -> impl Strategy<Value = TaskOutput> {
    prop_oneof![
        bytes().prop_map(TaskOutput::Value),
        command_output().prop_map(TaskOutput::Command),
    ]
}

fn task_error() -> impl Strategy<Value = TaskError> {
    prop_oneof![
        (text(), maybe(command_output()))
            .prop_map(|(message, output)| TaskError::Failed { message, output }),
        text().prop_map(|message| TaskError::Panicked { message }),
        (text(), vec(text(), 0..4))
            .prop_map(|(name, available)| TaskError::UnknownFunction { name, available }),
        text().prop_map(|message| TaskError::BadRequest { message }),
        any::<u64>().prop_map(|after_ms| TaskError::Timeout { after_ms }),
        text().prop_map(|reason| TaskError::Cancelled { reason }),
        text().prop_map(|detail| TaskError::WorkerLost { detail }),
        text().prop_map(|manager| TaskError::ManagerLost { manager }),
        text().prop_map(|detail| TaskError::GpuFault { detail }),
        text().prop_map(|reason| TaskError::Unsatisfiable { reason }),
        (text(), text(), text()).prop_map(|(exception, message, traceback)| {
            TaskError::Exception {
                exception,
                message,
                traceback,
            }
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(size, limit)| TaskError::ResultTooLarge { size, limit }),
        text().prop_map(|reason| TaskError::NotAccepted { reason }),
    ]
}

prop_compose! {
    fn timings()(stages in any::<[u64; 5]>()) -> Timings {
        let [submitted_us, received_us, dispatched_us, started_us, finished_us] = stages;
        Timings { submitted_us, received_us, dispatched_us, started_us, finished_us }
    }
}

prop_compose! {
    fn task_result()(
        id in any::<u64>(),
        outcome in prop_oneof![task_output().prop_map(Ok), task_error().prop_map(Err)],
        timings in timings(), slot in maybe(slot_ref()), attempts in any::<u32>(),
    ) -> TaskResult {
        TaskResult { id, outcome, timings, slot, attempts }
    }
}

// ---- Commands and status ----------------------------------------------------------------------

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Status),
        text().prop_map(|manager| Command::Drain { manager }),
        text().prop_map(|manager| Command::Hold { manager }),
        text().prop_map(|manager| Command::Release { manager }),
        Just(Command::Shutdown),
        Just(Command::ResumeScaling),
    ]
}

fn manager_state() -> impl Strategy<Value = ManagerState> {
    prop_oneof![
        Just(ManagerState::Active),
        Just(ManagerState::Held),
        Just(ManagerState::Draining)
    ]
}

prop_compose! {
    fn manager_status()(
        id in text(), hostname in text(), block_id in maybe(text()), version in text(),
        state in manager_state(), slots in vec(slot_descriptor(), 0..3),
        tasks in any::<u32>(), capacity in any::<u32>(), last_heartbeat_ms_ago in any::<u64>(),
        report in maybe(manager_report().prop_map(Box::new)),
    ) -> ManagerStatus {
        ManagerStatus {
            id, hostname, block_id, version, state, slots, tasks, capacity, last_heartbeat_ms_ago,
            report,
        }
    }
}

prop_compose! {
    fn block_report()(
        block in text(), job_id in maybe(text()), state in text(),
        reason in maybe(text()), managers in any::<u32>(), age_ms in any::<u64>(),
        idle_ms in maybe(any::<u64>()), time_left_ms in maybe(any::<u64>()),
    ) -> BlockReport {
        BlockReport { block, job_id, state, reason, managers, age_ms, idle_ms, time_left_ms }
    }
}

prop_compose! {
    fn scaling_report()(
        provider in text(), min_blocks in any::<u32>(), max_blocks in any::<u32>(),
        blocks in vec(block_report(), 0..3), decision in text(), paused in maybe(text()),
        last_error in maybe(text()), failures in any::<u32>(),
    ) -> ScalingReport {
        ScalingReport {
            provider, min_blocks, max_blocks, blocks, decision, paused, last_error, failures,
        }
    }
}

prop_compose! {
    fn status_report()(
        interchange in text(), protocol_version in any::<u32>(), uptime_ms in any::<u64>(),
        clients in any::<u32>(), queued in any::<u64>(), outstanding in any::<u64>(),
        managers in vec(manager_status(), 0..3), task_bytes in any::<u64>(),
        max_task_bytes in any::<u64>(), security in text(),
        scaling in maybe(scaling_report().prop_map(Box::new)),
        totals in (any::<u64>(), any::<u64>(), any::<u64>()),
    ) -> StatusReport {
        let (submitted_total, completed_total, failed_total) = totals;
        StatusReport {
            interchange, protocol_version, uptime_ms, clients, queued, outstanding, managers,
            task_bytes, max_task_bytes, security, scaling, submitted_total, completed_total,
            failed_total,
        }
    }
}

fn command_reply() -> impl Strategy<Value = CommandReply> {
    prop_oneof![
        status_report().prop_map(CommandReply::Status),
        Just(CommandReply::Done),
        text().prop_map(|message| CommandReply::Error { message }),
    ]
}

// ---- Messages, one enum per direction of each link --------------------------------------------

prop_compose! {
    fn client_hello()(
        protocol_version in any::<u32>(), name in text(), max_frame_bytes in any::<u64>(),
        identity in text(),
    ) -> ClientHello {
        ClientHello { protocol_version, name, max_frame_bytes, identity }
    }
}

fn client_request() -> impl Strategy<Value = ClientRequest> {
    prop_oneof![
        client_hello().prop_map(ClientRequest::Hello),
        vec(task_spec(), 0..3).prop_map(ClientRequest::Submit),
        vec(any::<u64>(), 0..8).prop_map(ClientRequest::Cancel),
        (any::<u64>(), command()).prop_map(|(request_id, command)| ClientRequest::Command {
            request_id,
            command
        }),
        Just(ClientRequest::Heartbeat),
        Just(ClientRequest::Goodbye),
        any::<u64>().prop_map(|results| ClientRequest::Received { results }),
    ]
}

fn client_reply() -> impl Strategy<Value = ClientReply> {
    prop_oneof![
        (
            any::<u32>(),
            text(),
            any::<u64>(),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(
                |(protocol_version, interchange, max_frame_bytes, journal, accepted_upto)| {
                    ClientReply::Welcome {
                        protocol_version,
                        interchange,
                        max_frame_bytes,
                        journal,
                        accepted_upto,
                    }
                }
            ),
        (vec(any::<u64>(), 0..8), text())
            .prop_map(|(ids, reason)| ClientReply::Busy { ids, reason }),
        Just(ClientReply::Resume),
        any::<u64>().prop_map(|first| ClientReply::Accepted { first }),
        text().prop_map(|reason| ClientReply::Refused { reason }),
        vec(task_result(), 0..3).prop_map(ClientReply::Results),
        (any::<u64>(), command_reply())
            .prop_map(|(request_id, reply)| ClientReply::CommandReply { request_id, reply }),
        text().prop_map(|message| ClientReply::Error { message }),
        Just(ClientReply::Heartbeat),
    ]
}

prop_compose! {
    fn registration()(
        protocol_version in any::<u32>(), manager_id in text(), hostname in text(),
        block_id in maybe(text()), version in text(), slots in vec(slot_descriptor(), 0..4),
        prefetch in any::<u32>(), pid in any::<u32>(), instance in any::<u64>(),
        held in vec(any::<u64>(), 0..8), max_frame_bytes in any::<u64>(),
    ) -> Registration {
        Registration {
            protocol_version, manager_id, hostname, block_id, version, slots, prefetch, pid,
            instance, held, max_frame_bytes,
        }
    }
}

fn manager_message() -> impl Strategy<Value = ManagerMessage> {
    prop_oneof![
        registration().prop_map(ManagerMessage::Register),
        vec(task_result(), 0..3).prop_map(ManagerMessage::Results),
        Just(ManagerMessage::Heartbeat),
        Just(ManagerMessage::Goodbye),
        vec(any::<u64>(), 0..8).prop_map(|returned| ManagerMessage::Draining { returned }),
        manager_report().prop_map(|r| ManagerMessage::Report(Box::new(r))),
    ]
}

fn manager_report() -> impl Strategy<Value = ManagerReport> {
    let slot_state = (any::<u32>(), any::<bool>(), maybe(any::<u32>()))
        .prop_map(|(slot, busy, pid)| SlotState { slot, busy, pid });
    let kind = prop_oneof![
        Just(SlotEventKind::WorkerStarted),
        Just(SlotEventKind::WorkerDied),
        Just(SlotEventKind::GpuFault),
    ];
    let event = (
        any::<u32>(),
        any::<u64>(),
        kind,
        maybe(any::<u32>()),
        maybe(text()),
    )
        .prop_map(|(slot, at_us, kind, pid, detail)| SlotEvent {
            slot,
            at_us,
            kind,
            pid,
            detail,
        });
    let ratio = || maybe(0.0f32..=1.0);
    let gpu = (text(), any::<u64>(), ratio(), ratio(), maybe(any::<u64>())).prop_map(
        |(gpu_uuid, at_us, utilization_ratio, sm_activity_ratio, used)| GpuSample {
            gpu_uuid,
            at_us,
            utilization_ratio,
            sm_activity_ratio,
            memory_used_bytes: used,
            memory_total_bytes: used.map(|u| u.saturating_mul(2)),
        },
    );
    let memory =
        (any::<u32>(), any::<u64>()).prop_map(|(slot, bytes)| SlotGpuMemory { slot, bytes });
    (
        any::<u64>(),
        vec(slot_state, 0..4),
        vec(event, 0..4),
        vec(gpu, 0..3),
        vec(memory, 0..3),
    )
        .prop_map(
            |(at_us, slots, slot_events, gpus, slot_gpu_memory)| ManagerReport {
                at_us,
                slots,
                slot_events,
                gpus,
                slot_gpu_memory,
            },
        )
}

fn interchange_message() -> impl Strategy<Value = InterchangeMessage> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            vec(any::<u64>(), 0..8),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(
                    heartbeat_period_ms,
                    heartbeat_threshold_ms,
                    max_frame_bytes,
                    orphaned,
                    stores_results,
                    wants_reports,
                )| {
                    InterchangeMessage::Registered {
                        heartbeat_period_ms,
                        heartbeat_threshold_ms,
                        max_frame_bytes,
                        orphaned,
                        stores_results,
                        wants_reports,
                    }
                }
            ),
        text().prop_map(|reason| InterchangeMessage::Refused { reason }),
        vec(task_spec(), 0..3).prop_map(|specs| InterchangeMessage::Tasks(
            specs
                .iter()
                .map(|s| EncodedTask::encode(s).unwrap())
                .collect()
        )),
        vec(any::<u64>(), 0..8).prop_map(InterchangeMessage::Cancel),
        Just(InterchangeMessage::Drain),
        Just(InterchangeMessage::Shutdown),
        Just(InterchangeMessage::Heartbeat),
        Just(InterchangeMessage::RegisterAgain),
        any::<u64>().prop_map(|results| InterchangeMessage::Stored { results }),
    ]
}

fn worker_request() -> impl Strategy<Value = WorkerRequest> {
    prop_oneof![
        task_spec().prop_map(WorkerRequest::Run),
        Just(WorkerRequest::Shutdown)
    ]
}

fn worker_reply() -> impl Strategy<Value = WorkerReply> {
    prop_oneof![
        (any::<u32>(), vec(text(), 0..4))
            .prop_map(|(pid, functions)| WorkerReply::Ready { pid, functions }),
        task_result().prop_map(WorkerReply::Done),
    ]
}

// ---- Properties -------------------------------------------------------------------------------

/// `decode(encode(value))`, with the default frame limit.
fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    let frame = encode(value).expect("encode");
    decode(&frame, DEFAULT_MAX_FRAME_BYTES).expect("decode")
}

/// One property per type, `name => strategy`: every value survives the round trip.
macro_rules! roundtrip_props {
    ($($name:ident => $strategy:expr),* $(,)?) => {
        proptest! {
            $(
                #[test]
                fn $name(value in $strategy) {
                    prop_assert_eq!(roundtrip(&value), value);
                }
            )*
        }
    };
}

roundtrip_props! {
    client_request_roundtrips => client_request(),
    client_reply_roundtrips => client_reply(),
    command_roundtrips => command(),
    command_reply_roundtrips => command_reply(),
    manager_message_roundtrips => manager_message(),
    interchange_message_roundtrips => interchange_message(),
    worker_request_roundtrips => worker_request(),
    worker_reply_roundtrips => worker_reply(),
    task_kind_roundtrips => task_kind(),
    task_output_roundtrips => task_output(),
    task_error_roundtrips => task_error(),
    slot_kind_roundtrips => slot_kind(),
    manager_state_roundtrips => manager_state(),
}

proptest! {
    #[test]
    fn encoded_tasks_carry_their_spec_through_a_batch(specs in vec(task_spec(), 0..4)) {
        let batch = InterchangeMessage::Tasks(
            specs.iter().map(|s| EncodedTask::encode(s).unwrap()).collect(),
        );
        let InterchangeMessage::Tasks(back) = roundtrip(&batch) else {
            panic!("not a task batch");
        };
        let decoded: Vec<TaskSpec> =
            back.iter().map(|t| t.decode(DEFAULT_MAX_FRAME_BYTES).unwrap()).collect();
        prop_assert_eq!(decoded, specs);
    }

    /// Packing by bytes: every item travels exactly once, in order, in frames under the limit,
    /// unless it could not fit a frame alone, and only then is it refused.
    #[test]
    fn batches_carry_every_item_that_fits_once(
        sizes in vec(prop_oneof![0usize..64, 0usize..3000, 2900usize..3200], 0..40),
    ) {
        let limit = 3000;
        let mut batch = BatchEncoder::new(&ManagerMessage::Results(Vec::new()), limit).unwrap();
        let result = |id: usize, size: usize| TaskResult {
            id: id as u64,
            outcome: Ok(TaskOutput::Value(vec![1; size])),
            timings: Timings::default(),
            slot: None,
            attempts: 1,
        };
        let (mut frames, mut refused) = (Vec::new(), Vec::new());
        for (id, &size) in sizes.iter().enumerate() {
            match batch.push(&result(id, size)) {
                Ok(closed) => frames.extend(closed),
                Err(CodecError::ItemTooLarge { .. }) => refused.push(id),
                Err(e) => panic!("{e}"),
            }
        }
        frames.extend(batch.finish());
        let mut carried = Vec::new();
        for frame in &frames {
            prop_assert!(frame.len() <= limit);
            let ManagerMessage::Results(results) = decode(frame, limit).unwrap() else {
                panic!("not a result batch")
            };
            prop_assert!(!results.is_empty());
            for r in results {
                let Ok(TaskOutput::Value(v)) = &r.outcome else { panic!() };
                prop_assert_eq!(v.len(), sizes[r.id as usize]);
                carried.push(r.id as usize);
            }
        }
        for &id in &refused {
            let alone = encode(&result(id, sizes[id])).unwrap();
            prop_assert!(alone.len() > batch.item_limit(), "item {} fits alone but was refused", id);
        }
        let mut all: Vec<usize> = carried.iter().chain(&refused).copied().collect();
        all.sort();
        prop_assert_eq!(all, (0..sizes.len()).collect::<Vec<_>>());
        let mut in_order = carried.clone();
        in_order.sort();
        prop_assert_eq!(carried, in_order);
    }

    #[test]
    fn random_bytes_decode_without_panicking(frame in vec(any::<u8>(), 0..256)) {
        let _ = decode::<ClientRequest>(&frame, DEFAULT_MAX_FRAME_BYTES);
        let _ = decode::<ManagerMessage>(&frame, DEFAULT_MAX_FRAME_BYTES);
        let _ = decode::<WorkerReply>(&frame, DEFAULT_MAX_FRAME_BYTES);
        let _ = peek_protocol_version(&frame);
        let _ = peek_batch_ids(&frame);
    }

    #[test]
    fn truncated_frames_are_errors(message in manager_message(), cut in any::<Index>()) {
        let frame = encode(&message).unwrap();
        let short = &frame[..cut.index(frame.len())];
        prop_assert!(decode::<ManagerMessage>(short, DEFAULT_MAX_FRAME_BYTES).is_err());
    }

    #[test]
    fn peek_reads_the_registration_version(registration in registration()) {
        let version = registration.protocol_version;
        let frame = encode(&ManagerMessage::Register(registration)).unwrap();
        prop_assert_eq!(peek_protocol_version(&frame), Some(version));
    }

    #[test]
    fn peek_reads_the_hello_version(hello in client_hello()) {
        let version = hello.protocol_version;
        let frame = encode(&ClientRequest::Hello(hello)).unwrap();
        prop_assert_eq!(peek_protocol_version(&frame), Some(version));
    }
}
