//! The htex wire protocol: plain data types for every message that crosses a process boundary,
//! and the MessagePack codec that frames them.
//!
//! Three links, one enum per direction:
//! - client ⇄ interchange: [`ClientRequest`] / [`ClientReply`]
//! - manager ⇄ interchange: [`ManagerMessage`] / [`InterchangeMessage`]
//! - manager ⇄ worker: [`WorkerRequest`] / [`WorkerReply`]
//!
//! Payloads (function arguments, return values) are opaque bytes: only the worker and the
//! client ever decode them.

pub mod codec;
pub mod messages;
pub mod slot;
pub mod stdio;
pub mod task;

pub use codec::{
    decode, encode, max_item_bytes, peek_batch_ids, peek_protocol_version, BatchEncoder,
    CodecError, DEFAULT_MAX_FRAME_BYTES, ENVELOPE_BYTES, MIN_MAX_FRAME_BYTES,
};
pub use messages::*;
pub use slot::{format_cpu_list, ResourceRequest, RunnerSpec, SlotDescriptor, SlotKind, SlotRef};
pub use task::*;

/// Version of the wire protocol. Peers with another version are refused at hello/registration.
pub const PROTOCOL_VERSION: u32 = 5;

/// Microseconds since the Unix epoch, the time unit of every timestamp on the wire.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
