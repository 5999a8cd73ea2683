//! The manager's DEALER connection to the interchange: registration, then a receive loop that
//! feeds the actor. The loop starts only once the actor installed the link
//! ([`Link::start_reader`]), so nothing it reads can reach the actor ahead of the link itself.

use std::time::Duration;

use htex_protocol::{
    decode, encode, InterchangeMessage, ManagerMessage, Registration, TaskId, PROTOCOL_VERSION,
};
use htex_transport::{
    connect_dealer, DealerRecvHalf, DealerSendHalf, NetConfig, Security, SocketRecv, SocketSend,
    WhenRefused, ZmqMessage,
};
use tokio::sync::mpsc;

use crate::actor::Event;
use crate::config::seconds_text;
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
            Ok(frame) => self.send_frame(frame).await,
            Err(e) => tracing::error!("cannot encode a message: {e}"),
        }
    }

    /// Sends a frame already encoded (a batch of results).
    pub async fn send_frame(&mut self, frame: Vec<u8>) {
        if let Err(e) = self.send.send(ZmqMessage::from(frame)).await {
            tracing::warn!("cannot send to the interchange: {e}");
        }
    }

    /// Starts the receive loop: frames become events tagged with `generation`, so those of a
    /// replaced link are ignored.
    pub fn start_reader(
        &mut self,
        mut recv: DealerRecvHalf,
        events: mpsc::UnboundedSender<Event>,
        generation: u64,
        limit: usize,
    ) {
        self.reader = Some(tokio::spawn(async move {
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
    }
}

/// Heartbeat timing the interchange asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heartbeat {
    pub period: Duration,
    pub threshold: Duration,
}

/// What the interchange said in `Registered`.
pub(crate) struct Session {
    pub heartbeat: Heartbeat,
    /// The interchange's frame limit.
    pub max_frame_bytes: usize,
    /// Held tasks the interchange no longer expects from this manager.
    pub orphaned: Vec<TaskId>,
    /// The interchange journals results: keep each sent one until `Stored` covers it.
    pub stores_results: bool,
    /// The interchange records events: send a `Report` in place of each heartbeat.
    pub wants_reports: bool,
}

/// A link that registered, with its receive half not yet read (see [`Link::start_reader`]).
pub(crate) struct Registered {
    pub link: Link,
    pub recv: DealerRecvHalf,
    pub session: Session,
}

/// Connects and registers as `instance` of this manager, still holding `held` (empty the first
/// time); returns once the interchange said `Registered`.
pub(crate) async fn connect(
    config: &ManagerConfig,
    instance: u64,
    held: Vec<TaskId>,
) -> Result<Registered, ManagerError> {
    let endpoint = config.interchange.clone();
    let security = Security::client(config.server_key.as_deref(), config.key.as_deref())?;
    let net = NetConfig {
        max_frame_bytes: config.max_frame_bytes,
        connect_timeout: config.connect_timeout,
        security,
    };
    // A manager may start before its interchange: a refused connection is tried again.
    let (send, mut recv) = connect_dealer(&endpoint, &net, WhenRefused::Retry).await?;
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
        // `validate` keeps it far below u32::MAX.
        prefetch: u32::try_from(config.prefetch).unwrap_or(u32::MAX),
        pid: std::process::id(),
        instance,
        held,
        max_frame_bytes: config.max_frame_bytes as u64,
    };
    link.send(&ManagerMessage::Register(registration)).await;
    let fail = |reason: String| ManagerError::Register {
        endpoint: endpoint.clone(),
        reason,
    };
    let reply = tokio::time::timeout(config.connect_timeout, recv.recv())
        .await
        .map_err(|_| {
            fail(format!(
                "no answer to the registration within {} s",
                seconds_text(config.connect_timeout)
            ))
        })?
        .map_err(|e| fail(e.to_string()))?;
    let frame = reply.into_vec().pop().unwrap_or_default();
    let session = match decode::<InterchangeMessage>(&frame, config.max_frame_bytes) {
        Ok(InterchangeMessage::Registered {
            heartbeat_period_ms,
            heartbeat_threshold_ms,
            max_frame_bytes,
            orphaned,
            stores_results,
            wants_reports,
        }) => Session {
            heartbeat: Heartbeat {
                period: Duration::from_millis(heartbeat_period_ms),
                threshold: Duration::from_millis(heartbeat_threshold_ms),
            },
            max_frame_bytes: usize::try_from(max_frame_bytes).unwrap_or(usize::MAX),
            orphaned,
            stores_results,
            wants_reports,
        },
        Ok(InterchangeMessage::Refused { reason }) => return Err(ManagerError::Refused(reason)),
        Ok(other) => {
            return Err(fail(format!(
                "it answered the registration with {}, not `Registered`",
                describe(&other)
            )))
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    Ok(Registered {
        link,
        recv,
        session,
    })
}

/// A message named in words, for errors.
fn describe(message: &InterchangeMessage) -> String {
    match message {
        InterchangeMessage::Registered { .. } => "`Registered`".into(),
        InterchangeMessage::Refused { .. } => "a refusal".into(),
        InterchangeMessage::Tasks(tasks) => format!("a batch of {} task(s)", tasks.len()),
        InterchangeMessage::Cancel(ids) => format!("a cancel of {} task(s)", ids.len()),
        InterchangeMessage::Drain => "a drain request".into(),
        InterchangeMessage::Shutdown => "a shutdown request".into(),
        InterchangeMessage::Heartbeat => "a heartbeat".into(),
        InterchangeMessage::RegisterAgain => "a request to register again".into(),
        InterchangeMessage::Stored { results } => format!("`Stored` of {results} result(s)"),
    }
}
