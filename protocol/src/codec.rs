//! MessagePack encoding of messages, with the frame size limit every receiver enforces.

use serde::de::{DeserializeOwned, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Frames larger than this are refused unless a component is configured otherwise.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;

/// Room a frame keeps beside its one largest item for the message around it (the variant, the
/// batch header, a result's slot and timings as later hops fill them in).
pub const ENVELOPE_BYTES: usize = 64 << 10;

/// Smallest frame limit a component accepts: below it the envelope would not fit.
pub const MIN_MAX_FRAME_BYTES: usize = 2 * ENVELOPE_BYTES;

/// The largest task or result (encoded on its own) that travels in a frame of `max_frame_bytes`:
/// whatever fits this always travels, alone if need be.
pub fn max_item_bytes(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_sub(ENVELOPE_BYTES)
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed frame ({size} bytes): {reason}")]
    Malformed { size: usize, reason: String },
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("{size} bytes exceed the limit of {limit} bytes")]
    ItemTooLarge { size: usize, limit: usize },
}

/// Encodes a message as one MessagePack frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec(message).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes one frame, refusing frames over `limit` bytes before looking inside.
pub fn decode<T: DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, CodecError> {
    if frame.len() > limit {
        return Err(CodecError::TooLarge {
            size: frame.len(),
            limit,
        });
    }
    rmp_serde::from_slice(frame).map_err(|e| CodecError::Malformed {
        size: frame.len(),
        reason: e.to_string(),
    })
}

/// Packs items into frames of one batch message (`Submit`, `Tasks`, `Results`: a variant holding
/// one `Vec` of them), none over a byte limit. Each item is encoded once, straight into the frame;
/// an item that would take the frame past the limit closes it and opens the next one, and an item
/// that cannot fit even alone is refused with its size, so the caller can answer it.
///
/// ```
/// use htex_protocol::{codec::BatchEncoder, decode, ClientRequest, TaskKind, TaskSpec};
/// # let spec = |id| TaskSpec { id, kind: TaskKind::Function { name: "noop".into(), args: vec![] },
/// #   resources: Default::default(), priority: 0, timeout_ms: None, max_retries: 0, submitted_us: 0 };
/// let mut batch = BatchEncoder::new(&ClientRequest::Submit(Vec::new()), 1 << 20).unwrap();
/// let mut frames = Vec::new();
/// for id in 1..=3 {
///     frames.extend(batch.push(&spec(id)).unwrap());
/// }
/// frames.extend(batch.finish());
/// assert_eq!(frames.len(), 1);
/// let ClientRequest::Submit(specs) = decode(&frames[0], 1 << 20).unwrap() else { panic!() };
/// assert_eq!(specs.len(), 3);
/// ```
pub struct BatchEncoder {
    /// The message's bytes up to its array of items.
    prefix: Vec<u8>,
    limit: usize,
    frame: Vec<u8>,
    items: u32,
}

/// A MessagePack array header with a 32-bit count, patched when the frame closes.
const ARRAY32: u8 = 0xdd;
const ARRAY_HEADER: usize = 5;

impl BatchEncoder {
    /// A packer for frames shaped like `empty`, a batch message with no items, of at most
    /// `limit` bytes each.
    pub fn new<M: Serialize>(empty: &M, limit: usize) -> Result<BatchEncoder, CodecError> {
        let mut prefix = encode(empty)?;
        // An empty array is the one byte 0x90, and the batch's array ends the message.
        if prefix.pop() != Some(0x90) {
            return Err(CodecError::Encode(
                "a batch message must end with its (empty) array of items".into(),
            ));
        }
        let mut encoder = BatchEncoder {
            prefix,
            limit,
            frame: Vec::new(),
            items: 0,
        };
        encoder.open();
        Ok(encoder)
    }

    /// The largest item this packer can carry.
    pub fn item_limit(&self) -> usize {
        self.limit.saturating_sub(self.prefix.len() + ARRAY_HEADER)
    }

    /// Items in the open frame.
    pub fn len(&self) -> usize {
        self.items as usize
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Bytes in the open frame.
    pub fn frame_len(&self) -> usize {
        self.frame.len()
    }

    /// Adds an item. Returns the frame it closed, if the item did not fit beside the items
    /// already packed; `ItemTooLarge` (and nothing packed) for an item over [`Self::item_limit`].
    pub fn push<T: Serialize>(&mut self, item: &T) -> Result<Option<Vec<u8>>, CodecError> {
        let mark = self.frame.len();
        if let Err(e) = rmp_serde::encode::write(&mut self.frame, item) {
            self.frame.truncate(mark);
            return Err(CodecError::Encode(e.to_string()));
        }
        let size = self.frame.len() - mark;
        if size > self.item_limit() {
            self.frame.truncate(mark);
            return Err(CodecError::ItemTooLarge {
                size,
                limit: self.item_limit(),
            });
        }
        if self.frame.len() <= self.limit {
            self.items += 1;
            return Ok(None);
        }
        // Over the limit beside the others: close the frame without it, and start the next.
        let item = self.frame.split_off(mark);
        let full = self.close();
        self.frame.extend_from_slice(&item);
        self.items = 1;
        Ok(full)
    }

    /// Closes the open frame, if it holds any item.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if self.items == 0 {
            return None;
        }
        self.close()
    }

    fn open(&mut self) {
        self.frame.clear();
        self.frame.extend_from_slice(&self.prefix);
        self.frame.push(ARRAY32);
        self.frame.extend_from_slice(&[0; 4]);
        self.items = 0;
    }

    fn close(&mut self) -> Option<Vec<u8>> {
        let at = self.prefix.len() + 1;
        self.frame[at..at + 4].copy_from_slice(&self.items.to_be_bytes());
        // The next frame starts small: most frames are, and a full one may be most of the limit.
        let capacity = self.frame.len().min(1 << 16);
        let full = std::mem::replace(&mut self.frame, Vec::with_capacity(capacity));
        self.open();
        Some(full)
    }
}

/// The ids of the tasks or results in a batch frame (`Submit`, `Results`) that is too large to
/// decode: each item's first field is its id, and the rest is skipped without allocating, so a
/// refused frame can still be answered task by task.
pub fn peek_batch_ids(frame: &[u8]) -> Option<Vec<u64>> {
    #[derive(Deserialize)]
    enum Probe {
        Submit(Vec<FirstField<u64>>),
        Results(Vec<FirstField<u64>>),
    }
    match rmp_serde::from_slice::<Probe>(frame).ok()? {
        Probe::Submit(items) | Probe::Results(items) => {
            Some(items.into_iter().map(|FirstField(id)| id).collect())
        }
    }
}

/// Reads the protocol version out of a `Register` or `Hello` frame from any protocol version,
/// so that a peer speaking another version can be told which versions differ.
pub fn peek_protocol_version(frame: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    enum Probe {
        Register(FirstField<u32>),
        Hello(FirstField<u32>),
    }
    match rmp_serde::from_slice::<Probe>(frame).ok()? {
        Probe::Register(FirstField(v)) | Probe::Hello(FirstField(v)) => Some(v),
    }
}

/// The first element of a struct encoded as an array; the rest is skipped.
struct FirstField<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for FirstField<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for FirstVisitor<T> {
            type Value = FirstField<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a struct encoded as an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstField<T>, A::Error> {
                let first: T = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::custom("empty struct"))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstField(first))
            }
        }
        deserializer.deserialize_seq(FirstVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientRequest, ManagerMessage, Registration};

    #[test]
    fn oversize_frames_are_refused_before_decoding() {
        let frame = encode(&ClientRequest::Heartbeat).unwrap();
        let err = decode::<ClientRequest>(&frame, frame.len() - 1).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for garbage in [&b""[..], b"\xc1", b"\x92\x01", b"hello world", &[0xff; 64]] {
            assert!(decode::<ManagerMessage>(garbage, 1 << 20).is_err());
        }
    }

    fn spec(id: u64, args: usize) -> crate::TaskSpec {
        crate::TaskSpec {
            id,
            kind: crate::TaskKind::Function {
                name: "echo".into(),
                args: vec![7; args],
            },
            resources: Default::default(),
            priority: 0,
            timeout_ms: None,
            max_retries: 0,
            submitted_us: 0,
        }
    }

    #[test]
    fn batches_stay_under_the_limit_and_refuse_what_cannot_fit_alone() {
        let limit = 10_000;
        let mut batch = BatchEncoder::new(&ClientRequest::Submit(Vec::new()), limit).unwrap();
        let mut frames = Vec::new();
        let mut refused = Vec::new();
        let sizes = [10, 4000, 4000, 4000, 20_000, 0, 9_980, 9_000, 3];
        for (id, &size) in sizes.iter().enumerate() {
            match batch.push(&spec(id as u64, size)) {
                Ok(closed) => frames.extend(closed),
                Err(CodecError::ItemTooLarge { size, limit }) => {
                    assert!(size > limit);
                    refused.push(id);
                }
                Err(e) => panic!("{e}"),
            }
        }
        frames.extend(batch.finish());
        // 20,000 and 9,980 bytes of arguments cannot travel in a 10,000-byte frame.
        assert_eq!(refused, [4, 6]);
        let mut ids = Vec::new();
        for frame in &frames {
            assert!(frame.len() <= limit, "a frame of {} bytes", frame.len());
            let ClientRequest::Submit(specs) = decode(frame, limit).unwrap() else {
                panic!("not a Submit")
            };
            ids.extend(specs.iter().map(|s| s.id));
            assert_eq!(
                peek_batch_ids(frame).unwrap(),
                specs.iter().map(|s| s.id).collect::<Vec<_>>()
            );
        }
        assert_eq!(ids, [0, 1, 2, 3, 5, 7, 8]);
        assert_eq!(
            frames.len(),
            3,
            "{:?}",
            frames.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_empty_batch_is_no_frame() {
        let mut batch = BatchEncoder::new(&ClientRequest::Submit(Vec::new()), 1000).unwrap();
        assert!(batch.finish().is_none());
        assert!(BatchEncoder::new(&ClientRequest::Heartbeat, 1000).is_err());
    }

    #[test]
    fn version_is_read_from_a_registration_of_another_shape() {
        // A future registration with extra fields still yields its version.
        #[derive(Serialize)]
        enum FutureMessage {
            Register(u32, String, Vec<u8>, bool),
        }
        let frame = encode(&FutureMessage::Register(7, "m".into(), vec![1, 2], true)).unwrap();
        assert_eq!(peek_protocol_version(&frame), Some(7));
        let current = ManagerMessage::Register(Registration {
            protocol_version: 1,
            manager_id: "m".into(),
            hostname: "h".into(),
            block_id: None,
            version: "0".into(),
            slots: vec![],
            prefetch: 0,
            pid: 1,
            instance: 1,
            held: vec![],
            max_frame_bytes: 1 << 20,
        });
        assert_eq!(peek_protocol_version(&encode(&current).unwrap()), Some(1));
    }
}
