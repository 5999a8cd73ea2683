//! The two ROUTER sockets: receive loops that decode frames into events for the actor, and the
//! send halves the actor writes through.

use bytes::Bytes;
use htex_protocol::{decode, encode, peek_protocol_version, ClientRequest, ManagerMessage};
use serde::Serialize;
use tokio::sync::mpsc;
use zeromq::{
    RouterSendHalf, RouterSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage,
};

use crate::actor::{Event, Incoming};
use crate::{InterchangeConfig, InterchangeError};

/// The send side of a bound ROUTER.
pub(crate) struct Router {
    pub endpoint: String,
    send: RouterSendHalf,
}

impl Router {
    /// Sends one message to a peer; a peer that went away is logged, not an error.
    pub async fn send<T: Serialize>(&mut self, peer: &Bytes, message: &T) {
        let frame = match encode(message) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!("cannot encode a message: {e}");
                return;
            }
        };
        let mut zmsg = ZmqMessage::from(frame);
        zmsg.push_front(peer.clone());
        if let Err(e) = self.send.send(zmsg).await {
            tracing::debug!("cannot send to peer {}: {e}", hex(peer));
        }
    }
}

/// Binds a ROUTER and spawns its receive loop. `what` is "client" or "manager".
pub(crate) async fn bind(
    what: &'static str,
    endpoint: &str,
    events: mpsc::Sender<Event>,
    config: &InterchangeConfig,
) -> Result<Router, InterchangeError> {
    let mut options = SocketOptions::default();
    // Frames up to twice the limit are read and refused with a clear error; longer ones drop
    // their connection before anything is allocated for them.
    options.max_frame_size(config.max_frame_bytes.saturating_mul(2));
    let mut socket = RouterSocket::with_options(options);
    let bound = socket
        .bind(endpoint)
        .await
        .map_err(|source| InterchangeError::Bind {
            what,
            endpoint: endpoint.to_string(),
            source,
        })?;
    let (send, mut recv) = socket.split();
    let limit = config.max_frame_bytes;
    tokio::spawn(async move {
        loop {
            let message = match recv.recv().await {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!("{what} socket receive ended: {e}");
                    break;
                }
            };
            let mut frames = message.into_vec();
            let peer = frames.remove(0);
            let incoming = if frames.len() != 1 {
                Err(format!(
                    "expected one frame per message, got {}",
                    frames.len()
                ))
            } else {
                Ok(frames.pop().unwrap_or_default())
            };
            let event = match what {
                "client" => Event::Client(peer, decode_incoming::<ClientRequest>(incoming, limit)),
                _ => Event::Manager(peer, decode_incoming::<ManagerMessage>(incoming, limit)),
            };
            if events.send(event).await.is_err() {
                break;
            }
        }
    });
    Ok(Router {
        endpoint: bound.to_string(),
        send,
    })
}

fn decode_incoming<T: serde::de::DeserializeOwned>(
    frame: Result<Bytes, String>,
    limit: usize,
) -> Incoming<T> {
    let frame = frame.map_err(|reason| (reason, None))?;
    decode::<T>(&frame, limit).map_err(|e| (e.to_string(), peek_protocol_version(&frame)))
}

/// A peer identity for logs.
pub(crate) fn hex(peer: &[u8]) -> String {
    peer.iter().map(|b| format!("{b:02x}")).collect()
}
