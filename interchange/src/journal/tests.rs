use std::sync::mpsc;
use std::time::Duration;

use htex_protocol::{EncodedTask, TaskOutput, TaskResult};

use super::file::{HEADER_BYTES, RECORD_HEADER_BYTES};
use super::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("htex-journal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("journal")
}

fn spec(n: u8) -> EncodedTask {
    EncodedTask(vec![n; 10].into())
}

fn task(gid: GlobalId, id: TaskId) -> JournalTask {
    JournalTask::new(gid, id, &spec(gid as u8))
}

fn value(id: TaskId) -> TaskResult {
    let mut result = TaskResult::error(
        id,
        htex_protocol::TaskError::Cancelled {
            reason: String::new(),
        },
    );
    result.outcome = Ok(TaskOutput::Value(vec![id as u8]));
    result
}

/// Writes `batches` through a writer and waits until all are durable.
fn write(path: &Path, end: u64, batches: Vec<Batch>) -> Vec<JournalEvent> {
    let (tx, rx) = mpsc::channel();
    let writer = Writer::start(path, end, move |event| {
        let _ = tx.send(event);
    })
    .unwrap();
    let last = batches.iter().map(Batch::seq).max().unwrap_or(0);
    for batch in batches {
        assert!(writer.send(batch));
    }
    let mut events = Vec::new();
    loop {
        let event = rx.recv_timeout(Duration::from_secs(10)).expect("an event");
        let done = matches!(event, JournalEvent::Durable { seq, .. } if seq == last);
        events.push(event);
        if done {
            break;
        }
    }
    writer.finish();
    events
}

fn client(number: u32, name: &str) -> Record {
    Record::Client {
        number,
        identity: name.into(),
        accepted_upto: 0,
    }
}

fn sample() -> Vec<Batch> {
    vec![
        Batch::Append {
            seq: 1,
            records: vec![
                client(0, "alice"),
                Record::Tasks {
                    client: 0,
                    tasks: vec![task(1, 10), task(2, 11), task(3, 12)],
                },
            ],
        },
        Batch::Append {
            seq: 2,
            records: vec![
                Record::Results(vec![(1, value(10)), (2, value(11))].into()),
                Record::Forget(vec![1]),
            ],
        },
    ]
}

#[test]
fn records_written_in_groups_replay_to_the_live_tasks() {
    let path = scratch("replay");
    let events = write(&path, 0, sample());
    assert!(events
        .iter()
        .all(|e| matches!(e, JournalEvent::Durable { .. })));
    let restored = replay(&path).unwrap();
    assert_eq!(restored.records, 4);
    assert_eq!(restored.torn_bytes, 0);
    assert_eq!(restored.next_gid, 4);
    assert_eq!(restored.clients[&0], ("alice".to_string(), 12));
    assert_eq!(restored.tasks.keys().copied().collect::<Vec<_>>(), [2, 3]);
    assert_eq!(restored.tasks[&2].result, Some(value(11)));
    assert_eq!(restored.tasks[&3].result, None);
    assert_eq!(&*restored.tasks[&3].spec.0, &[3u8; 10]);
    assert_eq!(restored.end, std::fs::metadata(&path).unwrap().len());
}

#[test]
fn a_missing_file_is_an_empty_journal_and_appends_go_after_what_it_holds() {
    let path = scratch("append");
    let empty = replay(&path).unwrap();
    assert_eq!((empty.records, empty.end, empty.tasks.len()), (0, 0, 0));
    write(&path, 0, sample());
    let end = replay(&path).unwrap().end;
    write(
        &path,
        end,
        vec![Batch::Append {
            seq: 3,
            records: vec![Record::Forget(vec![2, 3])],
        }],
    );
    let restored = replay(&path).unwrap();
    assert_eq!((restored.records, restored.tasks.len()), (5, 0));
    assert_eq!(restored.next_gid, 4, "ids stay handed out");
}

#[test]
fn a_torn_last_record_is_recovered_up_to_the_last_whole_one_at_every_cut() {
    let path = scratch("torn");
    write(&path, 0, sample());
    let whole = std::fs::read(&path).unwrap();
    // The last record (Forget) starts where the 3 before it end.
    let before_last = {
        let mut at = HEADER_BYTES as usize;
        for _ in 0..3 {
            let len = u32::from_le_bytes(whole[at..at + 4].try_into().unwrap()) as usize;
            at += RECORD_HEADER_BYTES as usize + len;
        }
        at
    };
    for cut in before_last + 1..whole.len() {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let restored = replay(&path).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(restored.records, 3, "cut at {cut}");
        assert_eq!(restored.end, before_last as u64);
        assert_eq!(restored.torn_bytes, (cut - before_last) as u64);
        assert_eq!(restored.tasks.len(), 3, "the Forget was torn off");
    }
    // A torn last write whose bytes are all there but wrong (a page half written).
    let mut damaged = whole.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();
    assert_eq!(replay(&path).unwrap().records, 3);
    // Zeros after the last record (a file extended, never written): torn too.
    let mut zeros = whole.clone();
    zeros.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&path, &zeros).unwrap();
    let restored = replay(&path).unwrap();
    assert_eq!((restored.records, restored.torn_bytes), (4, 4096));
    // Opening for appends cuts the torn tail off, and the new records follow the whole ones.
    write(
        &path,
        restored.end,
        vec![Batch::Append {
            seq: 9,
            records: vec![Record::Forget(vec![2])],
        }],
    );
    let again = replay(&path).unwrap();
    assert_eq!((again.records, again.torn_bytes), (5, 0));
    assert_eq!(again.tasks.keys().copied().collect::<Vec<_>>(), [3]);
}

#[test]
fn damage_before_the_last_record_is_refused_with_its_offset() {
    let path = scratch("corrupt");
    write(&path, 0, sample());
    let whole = std::fs::read(&path).unwrap();
    let second = {
        let len = u32::from_le_bytes(whole[16..20].try_into().unwrap()) as usize;
        16 + RECORD_HEADER_BYTES as usize + len
    };
    let mut damaged = whole.clone();
    damaged[second + RECORD_HEADER_BYTES as usize + 2] ^= 0x40;
    std::fs::write(&path, &damaged).unwrap();
    let error = replay(&path).unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, JournalError::Corrupt { offset, .. } if offset == second as u64),
        "{text}"
    );
    assert!(text.contains(&format!("at byte {second}")), "{text}");
    assert!(text.contains("checksum"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), damaged, "nothing discarded");
    // A length no record has, mid-file.
    let mut damaged = whole.clone();
    damaged[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, &damaged).unwrap();
    assert!(matches!(
        replay(&path),
        Err(JournalError::Corrupt { offset, .. }) if offset == second as u64
    ));
}

#[test]
fn a_foreign_file_or_another_version_is_refused() {
    let path = scratch("foreign");
    std::fs::write(&path, b"just some text that is not a journal").unwrap();
    let error = replay(&path).unwrap_err();
    assert!(matches!(error, JournalError::Foreign { .. }), "{error}");
    assert!(error.to_string().contains("not an htex journal"));
    std::fs::write(&path, b"abc").unwrap();
    assert!(matches!(replay(&path), Err(JournalError::Foreign { .. })));
    let mut header = file::header();
    header[8] = 7;
    std::fs::write(&path, header).unwrap();
    let error = replay(&path).unwrap_err();
    assert!(
        matches!(error, JournalError::Version { found: 7, .. }),
        "{error}"
    );
    // A header cut short is an empty journal.
    std::fs::write(&path, &file::header()[..5]).unwrap();
    assert_eq!(replay(&path).unwrap().torn_bytes, 5);
}

#[test]
fn records_that_contradict_each_other_are_refused() {
    let path = scratch("contradict");
    write(
        &path,
        0,
        vec![Batch::Append {
            seq: 1,
            records: vec![Record::Tasks {
                client: 3,
                tasks: vec![task(1, 1)],
            }],
        }],
    );
    let error = replay(&path).unwrap_err();
    assert!(error.to_string().contains("never named"), "{error}");
}

#[test]
fn a_snapshot_replaces_the_file_and_appends_follow_it() {
    let path = scratch("snapshot");
    write(&path, 0, sample());
    let big = std::fs::metadata(&path).unwrap().len();
    let events = write(
        &path,
        big,
        vec![
            Batch::Snapshot {
                seq: 3,
                records: vec![
                    Record::NextId(4),
                    Record::Client {
                        number: 0,
                        identity: "alice".into(),
                        accepted_upto: 12,
                    },
                    Record::Tasks {
                        client: 0,
                        tasks: vec![task(3, 12)],
                    },
                ],
            },
            Batch::Append {
                seq: 4,
                records: vec![Record::Results(vec![(3, value(12))].into())],
            },
        ],
    );
    assert!(matches!(
        events.last(),
        Some(JournalEvent::Durable { seq: 4, .. })
    ));
    let restored = replay(&path).unwrap();
    assert_eq!(restored.records, 4);
    assert_eq!(restored.next_gid, 4);
    assert_eq!(restored.clients[&0].1, 12);
    assert_eq!(restored.tasks.keys().copied().collect::<Vec<_>>(), [3]);
    assert_eq!(restored.tasks[&3].result, Some(value(12)));
    assert!(!path.with_extension("compacting").exists());
}
