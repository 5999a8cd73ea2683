//! The scaling loop, input by input: blocks submitted for a backlog, released when idle,
//! lost behind htex's back, failed submissions, walltime.

use std::collections::HashMap;

use htex_provider::{JobEnd, JobState, JobStatus};

use super::*;
use crate::scaling::ScalingConfig;

fn scaling() -> ScalingConfig {
    ScalingConfig {
        max_blocks: 3,
        poll_interval_s: 1.0,
        idle_timeout_s: 5.0,
        drain_timeout_s: 30.0,
        drain_margin_s: 60.0,
        ..ScalingConfig::default()
    }
}

fn scaled(config: ScalingConfig, walltime: Option<Duration>) -> Harness {
    let now = Now::read();
    let shape = BlockShape {
        kind: "slurm",
        managers_per_block: 1,
        walltime,
        slots_estimate: 2,
    };
    Harness {
        core: Core::new(
            super::config(),
            "plaintext (loopback)",
            Some(Scaling::new(config, shape)),
            None,
            true,
            now,
        ),
        now,
        out: Effects::default(),
    }
}

fn submits(sent: &Sent) -> Vec<u64> {
    sent.provider
        .iter()
        .filter_map(|a| match a {
            ProviderAction::Submit { block } => Some(*block),
            _ => None,
        })
        .collect()
}

fn cancels(sent: &Sent) -> Vec<String> {
    sent.provider
        .iter()
        .filter_map(|a| match a {
            ProviderAction::Cancel { job, .. } => Some(job.clone()),
            _ => None,
        })
        .collect()
}

fn drains(sent: &Sent, manager: &str) -> usize {
    sent.to_managers
        .iter()
        .filter(|(p, m)| p == &peer(manager) && matches!(m, InterchangeMessage::Drain))
        .count()
}

impl Harness {
    fn provider(&mut self, event: ProviderEvent) -> Sent {
        self.apply(Input::Provider(event))
    }

    fn submitted(&mut self, block: u64, job: &str) -> Sent {
        self.provider(ProviderEvent::Submitted {
            block,
            result: Ok(job.into()),
        })
    }

    fn polled(&mut self, states: &[(&str, JobState)]) -> Sent {
        let map: HashMap<String, JobStatus> = states
            .iter()
            .map(|(job, state)| {
                let status = JobStatus {
                    state: state.clone(),
                    reason: None,
                };
                (job.to_string(), status)
            })
            .collect();
        self.provider(ProviderEvent::Polled(Ok(map)))
    }

    /// A tick, with its poll (if it makes one) answered with `states`.
    fn step(&mut self, states: &[(&str, JobState)]) -> Sent {
        let mut sent = self.tick();
        if sent
            .provider
            .iter()
            .any(|a| matches!(a, ProviderAction::Poll { .. }))
        {
            let answer = self.polled(states);
            sent.to_managers.extend(answer.to_managers);
            sent.provider.extend(answer.provider);
        }
        sent
    }

    fn block_manager(&mut self, name: &str, block: u64) -> Sent {
        let mut r = registration(name, 1, cpu_slots(2), 0);
        r.block_id = Some(format!("b{block}"));
        self.register(name, r)
    }

    fn report(&mut self) -> htex_protocol::ScalingReport {
        self.core.scaling_report(self.now.at).expect("scaling")
    }
}

fn retried(id: u64) -> TaskSpec {
    TaskSpec {
        max_retries: 1,
        ..spec(id)
    }
}

#[test]
fn a_backlog_submits_one_pending_block_at_a_time_never_twice_and_up_to_max_blocks() {
    let mut h = scaled(scaling(), None);
    h.hello("c");
    h.submit("c", (1..=10).map(spec).collect());
    assert_eq!(submits(&h.tick()), vec![1]);
    // Submitting, then pending: it counts as capacity, and max_pending is 1.
    assert!(submits(&h.tick()).is_empty());
    h.submitted(1, "101");
    h.advance(Duration::from_secs(2));
    let sent = h.tick();
    assert!(submits(&sent).is_empty());
    assert_eq!(
        sent.provider,
        vec![ProviderAction::Poll {
            jobs: vec!["101".into()]
        }]
    );
    h.polled(&[("101", JobState::Pending)]);
    assert!(
        h.report().decision.contains("waiting: 1 pending"),
        "{}",
        h.report().decision
    );
    // Running: the next one goes, then the third; never a fourth.
    let sent = h.block_manager("m1", 1);
    assert_eq!(
        sent.tasks("m1").len(),
        2,
        "the running block takes tasks at once"
    );
    assert_eq!(submits(&h.tick()), vec![2]);
    h.submitted(2, "102");
    h.block_manager("m2", 2);
    assert_eq!(submits(&h.tick()), vec![3]);
    h.submitted(3, "103");
    h.block_manager("m3", 3);
    for _ in 0..5 {
        assert!(submits(&h.tick()).is_empty());
    }
    let report = h.report();
    assert_eq!(report.blocks.len(), 3);
    assert!(
        report.blocks.iter().all(|b| b.state == "running"),
        "{report:?}"
    );
}

#[test]
fn an_idle_block_is_drained_not_cancelled_and_ends_released() {
    let mut h = scaled(scaling(), None);
    h.hello("c");
    h.submit("c", vec![spec(1)]);
    assert_eq!(submits(&h.tick()), vec![1]);
    h.submitted(1, "101");
    let sent = h.block_manager("m1", 1);
    let gid = sent.tasks("m1")[0].id;
    h.manager("m1", ManagerMessage::Results(vec![ok_result(gid)]));
    let running = [("101", JobState::Running)];
    h.advance(Duration::from_secs(3));
    h.manager("m1", ManagerMessage::Heartbeat);
    let sent = h.step(&running);
    assert_eq!(drains(&sent, "m1"), 0, "idle for 3 s of 5");
    h.advance(Duration::from_secs(3));
    h.manager("m1", ManagerMessage::Heartbeat);
    let sent = h.step(&running);
    assert_eq!(drains(&sent, "m1"), 1);
    assert!(
        cancels(&sent).is_empty(),
        "a running block is drained, never cancelled"
    );
    // A task submitted now does not go to the draining block: a new block is asked for.
    h.submit("c", vec![spec(2)]);
    let sent = h.tick();
    assert!(sent.tasks("m1").is_empty());
    assert_eq!(submits(&sent), vec![2]);
    h.manager("m1", ManagerMessage::Goodbye);
    h.advance(Duration::from_secs(1));
    h.tick();
    h.polled(&[("101", JobState::Ended(JobEnd::Completed))]);
    let report = h.report();
    let b1 = report.blocks.iter().find(|b| b.block == "b1").unwrap();
    assert_eq!(b1.state, "ended");
    assert!(
        b1.reason.as_deref().unwrap().starts_with("released"),
        "{b1:?}"
    );
    assert_eq!(report.failures, 0);
}

#[test]
fn a_drain_past_its_timeout_is_cancelled() {
    let mut h = scaled(scaling(), None);
    h.hello("c");
    h.submit("c", vec![spec(1)]);
    h.tick();
    h.submitted(1, "101");
    let gid = h.block_manager("m1", 1).tasks("m1")[0].id;
    h.manager("m1", ManagerMessage::Results(vec![ok_result(gid)]));
    let running = [("101", JobState::Running)];
    h.advance(Duration::from_secs(6));
    h.manager("m1", ManagerMessage::Heartbeat);
    assert_eq!(drains(&h.step(&running), "m1"), 1);
    // The manager never says goodbye (heartbeats go on).
    for _ in 0..29 {
        h.advance(Duration::from_secs(1));
        h.manager("m1", ManagerMessage::Heartbeat);
        assert!(cancels(&h.step(&running)).is_empty());
    }
    h.advance(Duration::from_secs(2));
    h.manager("m1", ManagerMessage::Heartbeat);
    assert_eq!(cancels(&h.step(&running)), vec!["101".to_string()]);
}

#[test]
fn a_poll_that_hangs_stops_every_decision() {
    let mut h = scaled(scaling(), None);
    h.hello("c");
    h.submit("c", (1..=2).map(spec).collect());
    h.tick();
    h.submitted(1, "101");
    h.step(&[("101", JobState::Pending)]);
    h.submit("c", (3..=8).map(spec).collect());
    h.advance(Duration::from_secs(1));
    let sent = h.tick();
    assert!(matches!(sent.provider[..], [ProviderAction::Poll { .. }]));
    // squeue takes seconds to fail while the controller is down: the state goes stale.
    for _ in 0..10 {
        h.advance(Duration::from_secs(1));
        assert!(submits(&h.tick()).is_empty());
    }
    assert!(
        h.report().decision.contains("has not answered"),
        "{}",
        h.report().decision
    );
}

#[test]
fn a_failing_poll_stops_every_decision_and_a_vanished_block_has_its_tasks_retried() {
    let mut h = scaled(scaling(), None);
    h.hello("c");
    h.submit("c", (1..=4).map(retried).collect());
    h.tick();
    h.submitted(1, "101");
    assert_eq!(h.block_manager("m1", 1).tasks("m1").len(), 2);
    h.provider(ProviderEvent::Polled(Err(
        "`squeue` exited with exit status: 1: slurm_load_jobs error: Unable to contact slurm \
         controller"
            .into(),
    )));
    for _ in 0..5 {
        h.advance(Duration::from_secs(2));
        h.manager("m1", ManagerMessage::Heartbeat);
        let sent = h.tick();
        assert!(
            submits(&sent).is_empty(),
            "no scaling while the state is unknown"
        );
        h.provider(ProviderEvent::Polled(Err("controller down".into())));
    }
    assert!(h.report().decision.contains("cannot be read"));
    assert!(
        h.core.managers.key_of(&peer("m1")).is_some(),
        "not declared lost"
    );
    // The controller is back and the job is gone from its answer: the block ended.
    h.polled(&[]);
    assert!(h.core.managers.key_of(&peer("m1")).is_none());
    assert_eq!(h.core.queued, 4, "its two tasks are queued again");
    let report = h.report();
    assert!(
        report.blocks[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("outside htex"),
        "{report:?}"
    );
    assert_eq!(
        report.failures, 0,
        "a block that ran is not a failed submission"
    );
    assert_eq!(submits(&h.tick()), vec![2], "a replacement");
}

#[test]
fn a_block_cancelled_outside_htex_is_lost_and_its_tasks_go_to_another_block() {
    let mut h = scaled(scaling(), None);
    h.hello("c");
    h.submit("c", (1..=2).map(retried).collect());
    h.tick();
    h.submitted(1, "101");
    h.block_manager("m1", 1);
    h.polled(&[("101", JobState::Ended(JobEnd::Cancelled))]);
    assert_eq!(h.core.queued, 2);
    assert_eq!(submits(&h.tick()), vec![2]);
    h.submitted(2, "102");
    let tasks = h.block_manager("m2", 2).tasks("m2");
    let ids: Vec<u64> = tasks.iter().map(|t| t.id).collect();
    let sent = h.manager(
        "m2",
        ManagerMessage::Results(ids.iter().map(|&i| ok_result(i)).collect()),
    );
    let results = sent.results("c");
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.outcome.is_ok() && r.attempts == 2));
    let b1 = &h.report().blocks[1];
    assert_eq!(b1.reason.as_deref(), Some("cancelled outside htex"));
}

#[test]
fn failed_submissions_back_off_then_pause_until_resumed() {
    let mut h = scaled(
        ScalingConfig {
            submit_backoff_s: vec![0.0, 10.0],
            max_failures: 3,
            ..scaling()
        },
        None,
    );
    h.hello("c");
    h.submit("c", vec![spec(1)]);
    let mut submitted = 0;
    let fail = |h: &mut Harness, block| {
        h.provider(ProviderEvent::Submitted {
            block,
            result: Err(
                "`sbatch` exited with exit status: 1: sbatch: error: invalid partition \
                         specified: nope"
                    .into(),
            ),
        })
    };
    assert_eq!(submits(&h.tick()), vec![1]);
    submitted += 1;
    fail(&mut h, 1);
    assert_eq!(submits(&h.tick()), vec![2], "the first retry waits 0 s");
    submitted += 1;
    fail(&mut h, 2);
    assert!(submits(&h.tick()).is_empty());
    assert!(
        h.report().decision.contains("backing off"),
        "{}",
        h.report().decision
    );
    h.advance(Duration::from_secs(11));
    assert_eq!(submits(&h.tick()), vec![3]);
    submitted += 1;
    fail(&mut h, 3);
    for _ in 0..10 {
        h.advance(Duration::from_secs(100));
        assert!(submits(&h.tick()).is_empty(), "paused: no submit storm");
    }
    let report = h.report();
    assert!(report
        .paused
        .as_deref()
        .unwrap()
        .contains("htex blocks --resume"));
    assert!(report
        .last_error
        .as_deref()
        .unwrap()
        .contains("invalid partition"));
    assert_eq!(submitted, 3);
    // The queued task does not end while a block may still come... and resuming submits again.
    assert_eq!(h.core.queued, 1);
    let sent = h.client(
        "c",
        ClientRequest::Command {
            request_id: 1,
            command: Command::ResumeScaling,
        },
    );
    assert!(matches!(
        sent.client("c")[..],
        [ClientReply::CommandReply {
            reply: CommandReply::Done,
            ..
        }]
    ));
    assert_eq!(submits(&h.tick()), vec![4]);
}

#[test]
fn a_block_near_its_walltime_takes_no_task_that_would_outlast_it_then_drains() {
    let mut h = scaled(scaling(), Some(Duration::from_secs(600)));
    h.hello("c");
    h.tick();
    h.submit("c", vec![spec(1)]);
    assert_eq!(submits(&h.tick()), vec![1]);
    h.submitted(1, "101");
    h.block_manager("m1", 1);
    let short = TaskSpec {
        timeout_ms: Some(100_000),
        ..spec(2)
    };
    let long = TaskSpec {
        timeout_ms: Some(700_000),
        ..spec(3)
    };
    // (In one class a task waits behind the one at its head: the long one goes second.)
    let sent = h.submit("c", vec![short, long]);
    let sent_ids: Vec<u64> = sent.tasks("m1").iter().map(|t| t.id).collect();
    assert_eq!(
        sent_ids.len(),
        1,
        "only the 100 s task fits the 600 s block: {sent_ids:?}"
    );
    for _ in 0..109 {
        h.advance(Duration::from_secs(5));
        h.manager("m1", ManagerMessage::Heartbeat);
    }
    let sent = h.tick();
    assert_eq!(drains(&sent, "m1"), 1, "55 s left, under the 60 s margin");
    assert_eq!(submits(&sent), vec![2], "a replacement for the work left");
}

#[test]
fn a_block_that_can_never_start_is_cancelled_and_counts_as_failed() {
    let mut h = scaled(scaling(), None);
    h.hello("c");
    h.submit("c", vec![spec(1)]);
    h.tick();
    h.submitted(1, "101");
    let mut states = HashMap::new();
    states.insert(
        "101".to_string(),
        JobStatus {
            state: JobState::Pending,
            reason: Some("PartitionTimeLimit".into()),
        },
    );
    let sent = h.provider(ProviderEvent::Polled(Ok(states)));
    assert_eq!(cancels(&sent), vec!["101".to_string()]);
    let report = h.report();
    assert_eq!(report.failures, 1);
    assert!(report.last_error.unwrap().contains("can never start"));
}

#[test]
fn shutdown_cancels_blocks_that_never_started() {
    let mut h = scaled(
        ScalingConfig {
            max_pending: 2,
            ..scaling()
        },
        None,
    );
    h.hello("c");
    h.submit("c", (1..=4).map(spec).collect());
    assert_eq!(submits(&h.tick()), vec![1, 2]);
    h.submitted(1, "101");
    h.submitted(2, "102");
    h.block_manager("m1", 1);
    let sent = h.apply(Input::Stop);
    assert_eq!(cancels(&sent), vec!["102".to_string()]);
    assert!(sent
        .to_managers
        .iter()
        .any(|(p, m)| p == &peer("m1") && matches!(m, InterchangeMessage::Shutdown)));
}
