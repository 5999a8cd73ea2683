//! MessagePack encoding of messages, with the frame size limit every receiver enforces.

use serde::de::{DeserializeOwned, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Frames larger than this are refused unless a component is configured otherwise.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed frame ({size} bytes): {reason}")]
    Malformed { size: usize, reason: String },
    #[error("cannot encode message: {0}")]
    Encode(String),
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

/// Reads the protocol version out of a `Register` or `Hello` frame from any protocol version,
/// so that a peer speaking another version can be told which versions differ.
pub fn peek_protocol_version(frame: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    enum Probe {
        Register(FirstField),
        Hello(FirstField),
    }
    match rmp_serde::from_slice::<Probe>(frame).ok()? {
        Probe::Register(FirstField(v)) | Probe::Hello(FirstField(v)) => Some(v),
    }
}

/// The first element of a struct encoded as an array; the rest is skipped.
struct FirstField(u32);

impl<'de> Deserialize<'de> for FirstField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor;
        impl<'de> Visitor<'de> for FirstVisitor {
            type Value = FirstField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a struct whose first field is a u32")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstField, A::Error> {
                let first: u32 = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::custom("empty struct"))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstField(first))
            }
        }
        deserializer.deserialize_seq(FirstVisitor)
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
        });
        assert_eq!(peek_protocol_version(&encode(&current).unwrap()), Some(1));
    }
}
