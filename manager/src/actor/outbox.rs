//! Results on their way to the interchange: held briefly so that busy slots' results share a
//! frame, then packed into `Results` frames none over the link's frame limit. A result too large
//! to travel even alone goes out as `ResultTooLarge` for its task only.
//!
//! With an interchange that journals results, each frame sent is kept until `Stored` says the
//! interchange has it on disk, and is sent again after registering again: a result the
//! interchange had not made durable when it crashed is not lost, and its task does not run a
//! second time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use htex_protocol::{BatchEncoder, CodecError, ManagerMessage, TaskError, TaskId, TaskResult};

use crate::link::Link;

/// While other slots are busy, results wait up to this long to share a frame with theirs. A
/// result with no other task running goes out at once, so a lone task is never held back.
const RESULT_HOLD: Duration = Duration::from_micros(500);
/// Results that go out whatever the hold.
const RESULT_BATCH: usize = 1024;

pub(crate) struct Outbox {
    results: Vec<TaskResult>,
    /// When the oldest result in the outbox arrived.
    since: Option<Instant>,
    /// Tasks given back by a drain, for the `Draining` message the next flush sends.
    returned: Option<Vec<TaskId>>,
    /// Packs `Results` frames under the link's limit.
    encoder: BatchEncoder,
    /// Keep sent frames until `Stored` (the interchange journals results).
    keep_sent: bool,
    /// Results sent on this link.
    sent: u64,
    /// Frames sent and not yet stored, oldest first.
    unconfirmed: VecDeque<SentFrame>,
    /// Frames of an earlier link not known to be stored, to send first on this one.
    resend: VecDeque<SentFrame>,
}

/// A results frame kept until the interchange stored it.
struct SentFrame {
    /// Results sent on the link up to and including this frame's.
    upto: u64,
    /// Results in the frame (what the interchange counts).
    count: u64,
    /// Their tasks, less those the interchange no longer expects.
    ids: Vec<TaskId>,
    frame: Vec<u8>,
}

impl Outbox {
    /// An outbox whose frames stay under `frame_limit` bytes.
    pub fn new(frame_limit: usize) -> Self {
        Outbox {
            results: Vec::new(),
            since: None,
            returned: None,
            encoder: results_encoder(frame_limit),
            keep_sent: false,
            sent: 0,
            unconfirmed: VecDeque::new(),
            resend: VecDeque::new(),
        }
    }

    /// A new registration: what the last link did not see stored goes out again first, and
    /// `keep_sent` says whether this interchange stores results.
    pub fn new_link(&mut self, keep_sent: bool) {
        let mut earlier = std::mem::take(&mut self.unconfirmed);
        earlier.extend(std::mem::take(&mut self.resend));
        self.resend = earlier;
        self.keep_sent = keep_sent;
        self.sent = 0;
    }

    /// The interchange stored the first `upto` results of this link.
    pub fn stored(&mut self, upto: u64) {
        while self.unconfirmed.front().is_some_and(|f| f.upto <= upto) {
            self.unconfirmed.pop_front();
        }
    }

    /// Nothing sent waits to be stored.
    pub fn settled(&self) -> bool {
        self.unconfirmed.is_empty() && self.resend.is_empty()
    }

    /// The link's frame limit changed (a new registration).
    pub fn set_frame_limit(&mut self, frame_limit: usize) {
        self.encoder = results_encoder(frame_limit);
    }

    pub fn push(&mut self, result: TaskResult) {
        self.results.push(result);
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Tasks whose results wait here (or were sent and not yet stored), or that wait to be
    /// given back.
    pub fn ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        let returned = self.returned.iter().flatten().copied();
        let kept = self
            .unconfirmed
            .iter()
            .chain(self.resend.iter())
            .flat_map(|f| f.ids.iter().copied());
        self.results
            .iter()
            .map(|r| r.id)
            .chain(returned)
            .chain(kept)
    }

    /// Forgets the tasks `keep` refuses: their results (and give-backs) are owed to nobody. A
    /// kept frame stays whole (the interchange ignores results it does not expect), but the
    /// refused ids leave its list.
    pub fn retain(&mut self, keep: impl Fn(TaskId) -> bool) {
        self.results.retain(|r| keep(r.id));
        if let Some(returned) = &mut self.returned {
            returned.retain(|&id| keep(id));
        }
        for frame in self.unconfirmed.iter_mut().chain(self.resend.iter_mut()) {
            frame.ids.retain(|&id| keep(id));
        }
    }

    /// Tasks a drain gives back, told to the interchange with the next flush.
    pub fn give_back(&mut self, ids: impl IntoIterator<Item = TaskId>) {
        self.returned.get_or_insert_with(Vec::new).extend(ids);
    }

    /// Whether results should go out now: no task is running (so none is coming soon), enough
    /// have gathered, the oldest has waited `RESULT_HOLD`, or the manager drains.
    pub fn due(&mut self, running: bool, draining: bool) -> bool {
        if self.results.is_empty() {
            return self.returned.is_some() || !self.resend.is_empty();
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        !running || self.results.len() >= RESULT_BATCH || since.elapsed() >= RESULT_HOLD || draining
    }

    /// When held results must go out, if any are held.
    pub fn hold_until(&self) -> Option<Instant> {
        self.since
            .filter(|_| !self.results.is_empty())
            .map(|since| since + RESULT_HOLD)
    }

    /// Sends everything held on `link`; returns whether results went out.
    pub async fn flush(&mut self, link: &mut Link) -> bool {
        self.since = None;
        let resent = !self.resend.is_empty();
        for frame in std::mem::take(&mut self.resend) {
            self.send(link, frame.count, frame.ids, frame.frame).await;
        }
        if let Some(returned) = self.returned.take() {
            link.send(&ManagerMessage::Draining { returned }).await;
        }
        if self.results.is_empty() {
            return resent;
        }
        let mut ids = Vec::new();
        for result in std::mem::take(&mut self.results) {
            let id = result.id;
            if let Some(frame) = pack(&mut self.encoder, result) {
                // The frame of the results before this one; this one starts the next.
                let before = std::mem::replace(&mut ids, vec![id]);
                self.send(link, before.len() as u64, before, frame).await;
            } else {
                ids.push(id);
            }
        }
        if let Some(frame) = self.encoder.finish() {
            self.send(link, ids.len() as u64, ids, frame).await;
        }
        true
    }

    async fn send(&mut self, link: &mut Link, count: u64, ids: Vec<TaskId>, frame: Vec<u8>) {
        if !self.keep_sent {
            link.send_frame(frame).await;
            return;
        }
        self.sent += count;
        link.send_frame(frame.clone()).await;
        self.unconfirmed.push_back(SentFrame {
            upto: self.sent,
            count,
            ids,
            frame,
        });
    }
}

fn results_encoder(frame_limit: usize) -> BatchEncoder {
    BatchEncoder::new(&ManagerMessage::Results(Vec::new()), frame_limit)
        .expect("an empty Results message encodes as a batch")
}

/// Packs one result; returns a frame it closed. A result that cannot travel is replaced by its
/// error, which always can.
fn pack(encoder: &mut BatchEncoder, result: TaskResult) -> Option<Vec<u8>> {
    let error = match encoder.push(&result) {
        Ok(frame) => return frame,
        Err(CodecError::ItemTooLarge { size, limit }) => {
            tracing::warn!(
                task = result.id,
                size,
                limit,
                "a result is too large to send"
            );
            TaskError::ResultTooLarge {
                size: size as u64,
                limit: limit as u64,
            }
        }
        Err(e) => {
            tracing::error!(task = result.id, "cannot encode a result: {e}");
            TaskError::Failed {
                message: format!("the manager cannot encode the task's result: {e}"),
                output: None,
            }
        }
    };
    let replacement = TaskResult {
        outcome: Err(error),
        ..result
    };
    match encoder.push(&replacement) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::error!(
                task = replacement.id,
                "cannot encode even an error result: {e}"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use htex_protocol::{decode, TaskOutput, MIN_MAX_FRAME_BYTES};

    use super::*;

    fn value(id: TaskId, bytes: usize) -> TaskResult {
        let mut result = TaskResult::error(
            id,
            TaskError::Cancelled {
                reason: String::new(),
            },
        );
        result.outcome = Ok(TaskOutput::Value(vec![7; bytes]));
        result
    }

    fn frames(results: Vec<TaskResult>, limit: usize) -> Vec<Vec<TaskResult>> {
        let mut encoder = results_encoder(limit);
        let mut frames: Vec<Vec<u8>> = results
            .into_iter()
            .filter_map(|r| pack(&mut encoder, r))
            .collect();
        frames.extend(encoder.finish());
        frames
            .iter()
            .map(|f| {
                assert!(
                    f.len() <= limit,
                    "a frame of {} bytes over {limit}",
                    f.len()
                );
                let ManagerMessage::Results(results) = decode(f, limit).unwrap() else {
                    panic!("not a Results frame")
                };
                results
            })
            .collect()
    }

    #[test]
    fn results_are_packed_into_frames_under_the_limit() {
        let limit = MIN_MAX_FRAME_BYTES;
        let results = (1..=10).map(|id| value(id, 30_000)).collect();
        let packed = frames(results, limit);
        assert!(packed.len() >= 3, "{} frame(s)", packed.len());
        let ids: Vec<TaskId> = packed.iter().flatten().map(|r| r.id).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_result_too_large_to_travel_alone_becomes_result_too_large_for_its_task_only() {
        let limit = MIN_MAX_FRAME_BYTES;
        let packed = frames(vec![value(1, 10), value(2, limit), value(3, 10)], limit);
        let results: Vec<&TaskResult> = packed.iter().flatten().collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].outcome.is_ok() && results[2].outcome.is_ok());
        match &results[1].outcome {
            Err(TaskError::ResultTooLarge { size, limit: l }) => {
                assert!(*size > limit as u64 && *l < limit as u64, "{size} {l}")
            }
            other => panic!("expected ResultTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn results_wait_only_while_others_run() {
        let mut outbox = Outbox::new(MIN_MAX_FRAME_BYTES);
        assert!(!outbox.due(true, false));
        outbox.push(value(1, 1));
        assert!(outbox.due(false, false), "nothing else running: at once");
        assert!(!outbox.due(true, false), "others running: held");
        assert!(outbox.hold_until().is_some());
        outbox.give_back([5]);
        assert_eq!(outbox.ids().collect::<Vec<_>>(), [1, 5]);
        outbox.retain(|id| id != 1 && id != 5);
        assert!(outbox.is_empty() && outbox.ids().next().is_none());
    }
}
