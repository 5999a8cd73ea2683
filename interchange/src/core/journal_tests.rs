//! The core with a journal: what waits for durability, failed writes, re-sent submissions,
//! results kept until the client confirms them, and restoring from a journal.

use super::*;
use crate::journal::{Batch, JournalEvent, Record, Restored, RestoredTask};

fn journaled() -> Harness {
    let now = Now::read();
    Harness {
        core: Core::new(
            config(),
            "plaintext (loopback)",
            None,
            Some(JournalState::new(std::path::Path::new("test.journal"))),
            true,
            now,
        ),
        now,
        out: Effects::default(),
    }
}

impl Harness {
    fn hello_as(&mut self, peer: &str, identity: &str) -> Sent {
        self.client(
            peer,
            ClientRequest::Hello(ClientHello {
                protocol_version: PROTOCOL_VERSION,
                name: identity.into(),
                max_frame_bytes: LIMIT as u64,
                identity: identity.into(),
            }),
        )
    }

    fn durable(&mut self, seq: u64) -> Sent {
        self.apply(Input::Journal(JournalEvent::Durable {
            seq,
            file_bytes: 1000,
        }))
    }
}

/// The sequence numbers and records of the batches sent to the writer.
fn appended(sent: &Sent) -> Vec<(u64, Vec<Record>)> {
    sent.journal
        .iter()
        .map(|b| match b {
            Batch::Append { seq, records } | Batch::Snapshot { seq, records } => {
                (*seq, records.clone())
            }
        })
        .collect()
}

fn accepted(sent: &Sent, peer: &str) -> Vec<u64> {
    sent.client(peer)
        .into_iter()
        .filter_map(|r| match r {
            ClientReply::Accepted { first } => Some(*first),
            _ => None,
        })
        .collect()
}

fn task_ids(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Tasks { tasks, .. } => Some(tasks.iter().map(|t| t.id).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn tasks_neither_run_nor_are_acknowledged_before_their_records_are_durable() {
    let mut h = journaled();
    let welcome = h.hello_as("c", "alice");
    assert!(matches!(
        welcome.client("c")[..],
        [ClientReply::Welcome {
            journal: true,
            accepted_upto: 0,
            ..
        }]
    ));
    assert!(matches!(
        &appended(&welcome)[0].1[..],
        [Record::Client { identity, .. }] if identity == "alice"
    ));
    h.register("m", registration("m", 1, cpu_slots(2), 0));
    let sent = h.submit("c", vec![spec(1), spec(2)]);
    assert!(sent.tasks("m").is_empty(), "dispatched before durable");
    assert!(
        accepted(&sent, "c").is_empty(),
        "acknowledged before durable"
    );
    let batches = appended(&sent);
    assert_eq!(batches.len(), 1);
    let (seq, records) = &batches[0];
    assert_eq!(task_ids(records), [1, 2]);

    let sent = h.durable(*seq);
    assert_eq!(accepted(&sent, "c"), [1]);
    let dispatched: Vec<u64> = sent.tasks("m").iter().map(|t| t.id).collect();
    assert_eq!(dispatched.len(), 2);

    // Results are journaled; the manager hears `Stored` only once they are durable.
    let sent = h.manager(
        "m",
        ManagerMessage::Results(dispatched.iter().map(|&g| ok_result(g)).collect()),
    );
    assert_eq!(
        sent.results("c").len(),
        2,
        "results go to the client at once"
    );
    assert!(!sent
        .to_managers
        .iter()
        .any(|(_, m)| matches!(m, InterchangeMessage::Stored { .. })));
    let batches = appended(&sent);
    assert!(matches!(&batches[0].1[..], [Record::Results(r)] if r.len() == 2));
    let sent = h.durable(batches[0].0);
    assert!(sent
        .to_managers
        .iter()
        .any(|(_, m)| matches!(m, InterchangeMessage::Stored { results: 2 })));

    // The client confirms: the journal forgets both.
    let sent = h.client("c", ClientRequest::Received { results: 2 });
    let batches = appended(&sent);
    assert!(
        matches!(&batches[0].1[..], [Record::Forget(g)] if g.len() == 2),
        "{batches:?}"
    );
}

#[test]
fn a_failed_write_answers_its_tasks_not_accepted_and_refuses_more_until_one_works() {
    let mut h = journaled();
    let hello = appended(&h.hello_as("c", "alice"))[0].0;
    h.register("m", registration("m", 1, cpu_slots(2), 0));
    let sent = h.submit("c", vec![spec(1), spec(2)]);
    let seq = appended(&sent)[0].0;
    // One write carried both batches, and failed.
    let sent = h.apply(Input::Journal(JournalEvent::Failed {
        first: hello,
        last: seq,
        reason: "No space left on device (os error 28)".into(),
    }));
    let results = sent.results("c");
    assert_eq!(results.len(), 2);
    for result in &results {
        let Err(TaskError::NotAccepted { reason }) = &result.outcome else {
            panic!("{result:?}");
        };
        assert!(reason.contains("No space left on device"), "{reason}");
        assert!(reason.contains("test.journal"), "{reason}");
    }
    assert_eq!(accepted(&sent, "c"), [1], "the client may drop the frame");
    assert!(sent.tasks("m").is_empty(), "nothing ran");
    // The identity's record is written again with the next batch; the failed tasks leave no
    // trace (their results are not journaled: the journal never had them).
    let retry = appended(&sent);
    assert!(!retry
        .iter()
        .any(|(_, r)| r.iter().any(|r| matches!(r, Record::Results(_)))));
    assert!(
        retry
            .iter()
            .any(|(_, r)| r.iter().any(|r| matches!(r, Record::Client { .. }))),
        "{retry:?}"
    );

    let sent = h.submit("c", vec![spec(3)]);
    assert!(matches!(
        sent.results("c")[..],
        [TaskResult {
            id: 3,
            outcome: Err(TaskError::NotAccepted { .. }),
            ..
        }]
    ));
    assert_eq!(accepted(&sent, "c"), [3]);

    // A write works again: submissions are taken again.
    h.durable(retry[0].0);
    let sent = h.submit("c", vec![spec(4)]);
    assert!(sent.results("c").is_empty());
    assert_eq!(task_ids(&appended(&sent)[0].1), [4]);
}

#[test]
fn a_client_that_reconnects_is_told_what_was_taken_and_gets_its_unconfirmed_results_again() {
    let mut h = journaled();
    h.hello_as("c1", "alice");
    h.register("m", registration("m", 1, cpu_slots(2), 0));
    let sent = h.submit("c1", vec![spec(1), spec(2)]);
    let sent = h.durable(appended(&sent)[0].0);
    let gids: Vec<u64> = sent.tasks("m").iter().map(|t| t.id).collect();
    let sent = h.manager("m", ManagerMessage::Results(vec![ok_result(gids[0])]));
    assert_eq!(sent.results("c1").len(), 1);

    // A new connection with the same identity: told 2 was taken, sent result 1 again.
    let sent = h.hello_as("c2", "alice");
    assert!(matches!(
        sent.client("c2")[0],
        ClientReply::Welcome {
            journal: true,
            accepted_upto: 2,
            ..
        }
    ));
    let again: Vec<u64> = sent.results("c2").iter().map(|r| r.id).collect();
    assert_eq!(again, [1]);
    // It re-sends the frame it had no `Accepted` for, with a new task: only 3 is new.
    let sent = h.submit("c2", vec![spec(1), spec(2), spec(3)]);
    assert_eq!(task_ids(&appended(&sent)[0].1), [3]);
    // Task 2's result goes to the new connection.
    let sent = h.manager("m", ManagerMessage::Results(vec![ok_result(gids[1])]));
    assert_eq!(sent.results("c2").len(), 1);
    assert!(sent.results("c1").is_empty());
    // The new connection counts its results from its hello: result 1 again, then 2.
    let sent = h.client("c2", ClientRequest::Received { results: 2 });
    assert!(matches!(&appended(&sent)[0].1[..], [Record::Forget(g)] if g.len() == 2));
}

#[test]
fn restored_tasks_wait_for_the_manager_that_holds_them_and_results_for_their_client() {
    let mut h = journaled();
    let mut restored = Restored {
        next_gid: 30,
        ..Restored::default()
    };
    restored.clients.insert(0, ("alice".into(), 12));
    let encoded = |gid: u64| {
        let mut s = spec(0);
        s.id = gid;
        EncodedTask::encode(&s).unwrap()
    };
    for (gid, id) in [(20, 10), (21, 11)] {
        restored.tasks.insert(
            gid,
            RestoredTask {
                client: 0,
                id,
                spec: encoded(gid),
                result: None,
            },
        );
    }
    restored.tasks.insert(
        22,
        RestoredTask {
            client: 0,
            id: 12,
            spec: encoded(22),
            result: Some(ok_result(12)),
        },
    );
    let now = h.now;
    h.core.restore(now, restored);

    // A manager that held task 20 before the crash keeps it; 21 waits for the grace.
    let mut again = registration("a", 7, cpu_slots(2), 0);
    again.held = vec![20];
    let sent = h.register("a", again);
    assert!(matches!(
        &sent.to_managers[0].1,
        InterchangeMessage::Registered { orphaned, stores_results: true, .. } if orphaned.is_empty()
    ));
    assert!(
        sent.tasks("a").is_empty(),
        "21 is held: its manager may come back"
    );
    h.advance(h.core.config.heartbeat_threshold + Duration::from_millis(1));
    h.manager("a", ManagerMessage::Heartbeat);
    let sent = h.tick();
    let sent_ids: Vec<u64> = sent.tasks("a").iter().map(|t| t.id).collect();
    assert_eq!(sent_ids, [21]);

    // The client comes back: the result restored for 12 comes to it, and it learns that
    // everything up to 12 was taken.
    let sent = h.hello_as("c", "alice");
    assert!(matches!(
        sent.client("c")[0],
        ClientReply::Welcome {
            accepted_upto: 12,
            ..
        }
    ));
    let mut results: Vec<u64> = sent.results("c").iter().map(|r| r.id).collect();
    let sent = h.manager(
        "a",
        ManagerMessage::Results(vec![ok_result(20), ok_result(21)]),
    );
    results.extend(sent.results("c").iter().map(|r| r.id));
    results.sort();
    assert_eq!(results, [10, 11, 12]);
    assert_eq!(h.core.tasks.next_id(), 30, "ids go on after the journal's");
}

#[test]
fn a_journal_several_times_the_live_state_is_replaced_by_a_snapshot_of_it() {
    let mut h = journaled();
    h.hello_as("c", "alice");
    h.register("m", registration("m", 1, cpu_slots(1), 0));
    let sent = h.submit("c", vec![spec(1), spec(2), spec(3)]);
    let sent = h.durable(appended(&sent)[0].0);
    let gids: Vec<u64> = sent.tasks("m").iter().map(|t| t.id).collect();
    assert_eq!(gids.len(), 1, "one slot: one task out, two queued");
    // Its result reaches the client, which has not confirmed it yet.
    let sent = h.manager("m", ManagerMessage::Results(vec![ok_result(gids[0])]));
    let seq = appended(&sent)[0].0;
    // A file far larger than what is live: the next durable batch brings a snapshot.
    let sent = h.apply(Input::Journal(JournalEvent::Durable {
        seq,
        file_bytes: 1 << 30,
    }));
    let snapshot = sent
        .journal
        .iter()
        .find_map(|b| match b {
            Batch::Snapshot { records, .. } => Some(records.clone()),
            Batch::Append { .. } => None,
        })
        .expect("a snapshot");
    assert!(matches!(snapshot[0], Record::NextId(n) if n == h.core.tasks.next_id()));
    assert!(snapshot.iter().any(|r| matches!(
        r,
        Record::Client { identity, accepted_upto: 3, .. } if identity == "alice"
    )));
    let mut ids = task_ids(&snapshot);
    ids.sort();
    assert_eq!(
        ids,
        [1, 2, 3],
        "two tasks live, one answered and not confirmed"
    );
    assert!(snapshot
        .iter()
        .any(|r| matches!(r, Record::Results(r) if r.len() == 1 && r[0].1.id == 1)));
    // Once confirmed, a later snapshot leaves the answered task out.
    h.client("c", ClientRequest::Received { results: 1 });
    let snapshot_seq = match sent.journal.last() {
        Some(Batch::Snapshot { seq, .. }) => *seq,
        other => panic!("{other:?}"),
    };
    let sent = h.apply(Input::Journal(JournalEvent::Durable {
        seq: snapshot_seq + 1,
        file_bytes: 1 << 30,
    }));
    let later = sent
        .journal
        .iter()
        .find_map(|b| match b {
            Batch::Snapshot { records, .. } => Some(records.clone()),
            Batch::Append { .. } => None,
        })
        .expect("a second snapshot");
    let mut ids = task_ids(&later);
    ids.sort();
    assert_eq!(ids, [2, 3]);
}
