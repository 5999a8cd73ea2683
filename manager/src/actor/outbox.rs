//! Results on their way to the interchange: held briefly so that busy slots' results share a
//! frame, then packed into `Results` frames none over the link's frame limit. A result too large
//! to travel even alone goes out as `ResultTooLarge` for its task only.

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
}

impl Outbox {
    /// An outbox whose frames stay under `frame_limit` bytes.
    pub fn new(frame_limit: usize) -> Self {
        Outbox {
            results: Vec::new(),
            since: None,
            returned: None,
            encoder: results_encoder(frame_limit),
        }
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

    /// Tasks whose results wait here, or that wait to be given back.
    pub fn ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        let returned = self.returned.iter().flatten().copied();
        self.results.iter().map(|r| r.id).chain(returned)
    }

    /// Forgets the tasks `keep` refuses: their results (and give-backs) are owed to nobody.
    pub fn retain(&mut self, keep: impl Fn(TaskId) -> bool) {
        self.results.retain(|r| keep(r.id));
        if let Some(returned) = &mut self.returned {
            returned.retain(|&id| keep(id));
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
            return self.returned.is_some();
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
        if let Some(returned) = self.returned.take() {
            link.send(&ManagerMessage::Draining { returned }).await;
        }
        if self.results.is_empty() {
            return false;
        }
        for result in self.results.drain(..) {
            if let Some(frame) = pack(&mut self.encoder, result) {
                link.send_frame(frame).await;
            }
        }
        if let Some(frame) = self.encoder.finish() {
            link.send_frame(frame).await;
        }
        true
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
