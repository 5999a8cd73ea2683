//! The manager's DEALER connection to the interchange: registration, then a receive loop that
//! feeds the actor.

use std::time::Duration;

use htex_protocol::{
    decode, encode, InterchangeMessage, ManagerMessage, Registration, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use zeromq::{DealerSendHalf, DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::actor::Event;
use crate::{hostname, ManagerConfig, ManagerError};

/// The send side of the link; dropping it stops its receive loop.
pub(crate) struct Link {
    send: DealerSendHalf,
    pub endpoint: String,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

impl Link {
    /// Sends a message; failure means the interchange is gone, which heartbeats will tell.
    pub async fn send(&mut self, message: &ManagerMessage) {
        match encode(message) {
            Ok(frame) => {
                if let Err(e) = self.send.send(ZmqMessage::from(frame)).await {
                    tracing::warn!("cannot send to the interchange: {e}");
                }
            }
            Err(e) => tracing::error!("cannot encode a message: {e}"),
        }
    }
}

/// Heartbeat timing the interchange asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heartbeat {
    pub period: Duration,
    pub threshold: Duration,
}

/// Connects and registers; returns once the interchange said `Registered`.
/// Events of the receive loop carry `generation`, so those of a replaced link are ignored.
pub(crate) async fn connect(
    config: &ManagerConfig,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
) -> Result<(Link, Heartbeat), ManagerError> {
    let endpoint = config.interchange.clone();
    let fail = |reason: String| ManagerError::Connect {
        endpoint: endpoint.clone(),
        reason,
    };
    let mut options = zeromq::SocketOptions::default();
    options.max_frame_size(config.max_frame_bytes.saturating_mul(2));
    let mut socket = DealerSocket::with_options(options);
    tokio::time::timeout(config.connect_timeout, socket.connect(&endpoint))
        .await
        .map_err(|_| fail(format!("no answer within {:?}", config.connect_timeout)))?
        .map_err(|e| fail(e.to_string()))?;
    let (send, mut recv) = socket.split();
    let mut link = Link {
        send,
        endpoint: endpoint.clone(),
        reader: None,
    };
    let registration = Registration {
        protocol_version: PROTOCOL_VERSION,
        manager_id: config.manager_id.clone(),
        hostname: hostname(),
        block_id: config.block_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        slots: config.slots.iter().map(|s| s.descriptor.clone()).collect(),
        prefetch: config.prefetch as u32,
        pid: std::process::id(),
    };
    link.send(&ManagerMessage::Register(registration)).await;
    let limit = config.max_frame_bytes;
    let reply = tokio::time::timeout(config.connect_timeout, recv.recv())
        .await
        .map_err(|_| {
            fail(format!(
                "no registration reply within {:?}",
                config.connect_timeout
            ))
        })?
        .map_err(|e| fail(e.to_string()))?;
    let frame = reply.into_vec().pop().unwrap_or_default();
    let heartbeat = match decode::<InterchangeMessage>(&frame, limit) {
        Ok(InterchangeMessage::Registered {
            heartbeat_period_ms,
            heartbeat_threshold_ms,
        }) => Heartbeat {
            period: Duration::from_millis(heartbeat_period_ms),
            threshold: Duration::from_millis(heartbeat_threshold_ms),
        },
        Ok(InterchangeMessage::Refused { reason }) => return Err(ManagerError::Refused(reason)),
        Ok(other) => return Err(fail(format!("unexpected first reply {other:?}"))),
        Err(e) => return Err(fail(e.to_string())),
    };
    link.reader = Some(tokio::spawn(async move {
        loop {
            let message = match recv.recv().await {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!("interchange link closed: {e}");
                    let _ = events.send(Event::InterchangeGone { generation });
                    break;
                }
            };
            let frame = message.into_vec().pop().unwrap_or_default();
            let event = match decode::<InterchangeMessage>(&frame, limit) {
                Ok(message) => Event::Interchange {
                    generation,
                    message,
                },
                Err(e) => {
                    tracing::warn!("dropping a bad frame from the interchange: {e}");
                    continue;
                }
            };
            if events.send(event).is_err() {
                break;
            }
        }
    }));
    Ok((link, heartbeat))
}
