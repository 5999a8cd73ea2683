//! Every ZeroMQ socket htex opens is built here: the interchange's two ROUTERs and the DEALER of
//! each client and manager. One place sets what every link needs, so a link cannot forget it:
//! the frame-size guard (a peer announcing a frame past it is dropped before anything is
//! allocated for it), the connect timeout, whether a refused connection is tried again, and the
//! errors a user reads when a connection cannot be made, and the CURVE security of the link
//! (`Security`): the interchange's ROUTERs are CURVE servers, each with its own allow-list, and
//! clients and managers are CURVE clients that know the interchange's public key.

pub mod keys;

use std::sync::Arc;
use std::time::Duration;

pub use keys::{AllowList, KeyError, KeyPair};
pub use zeromq::curve::{CurvePublicKey, CurveSecretKey};

use zeromq::{CurveConfig, DealerSocket, RouterSocket, Socket, SocketOptions, ZmqError};
pub use zeromq::{
    DealerRecvHalf, DealerSendHalf, RouterRecvHalf, RouterSendHalf, SocketRecv, SocketSend,
    TrySendError, ZmqMessage,
};

/// What every socket of a component is built with.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The largest message this component accepts; see [`guard_bytes`] for what the socket
    /// itself refuses.
    pub max_frame_bytes: usize,
    /// How long a connection (TCP and the ZMTP handshake) may take.
    pub connect_timeout: Duration,
    /// Plaintext, or CURVE in one of its roles.
    pub security: Security,
}

/// How a socket secures its connections.
#[derive(Clone, Default)]
pub enum Security {
    /// ZMTP's NULL mechanism: no encryption, no authentication (loopback, or `--insecure`).
    #[default]
    Plain,
    /// A CURVE server (the interchange's ports): its key pair, and the client keys this port
    /// lets in, read again as the allow-list directory changes. `port` names the port in logs.
    Server {
        keys: KeyPair,
        allowed: Arc<AllowList>,
        port: &'static str,
    },
    /// A CURVE client (managers, clients): the server's public key and its own pair.
    Client {
        server: CurvePublicKey,
        keys: KeyPair,
    },
}

impl Security {
    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Security::Plain)
    }

    /// A client's or manager's security from `--server-key FILE` (the interchange's public
    /// key) and `--key FILE` (its own `.key_secret`): both for CURVE, neither for plaintext.
    pub fn client(
        server_key: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Security, KeyError> {
        match (server_key, key) {
            (None, None) => Ok(Security::Plain),
            (Some(server), Some(key)) => Ok(Security::Client {
                server: keys::load_public(server)?,
                keys: keys::load_secret(key)?,
            }),
            (Some(_), None) => Err(KeyError::Incomplete("--server-key needs --key")),
            (None, Some(_)) => Err(KeyError::Incomplete("--key needs --server-key")),
        }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Security::Plain => f.write_str("Plain"),
            Security::Server {
                keys,
                allowed,
                port,
            } => write!(
                f,
                "CurveServer({port} port, key {}, allow-list {})",
                keys.public.fingerprint(),
                allowed.dir().display()
            ),
            Security::Client { server, keys } => write!(
                f,
                "CurveClient(server {}, key {})",
                server.fingerprint(),
                keys.public.fingerprint()
            ),
        }
    }
}

/// Frames up to twice the message limit are read, so the component can refuse them with an
/// answer; a longer one drops its connection before any memory is reserved for it.
pub fn guard_bytes(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_mul(2)
}

/// What a connecting side does while nothing listens at the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenRefused {
    /// Say so at once (clients and commands: the user wants to know now).
    Fail,
    /// Try again until the connect timeout (managers, which may start before the interchange).
    Retry,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {endpoint}: {reason}")]
    Bind { endpoint: String, reason: String },
    #[error(
        "nothing is listening at {endpoint} (connection refused); is `htex interchange` running \
         there, and is that its port?"
    )]
    Refused { endpoint: String },
    #[error(
        "no connection to {endpoint} within {:.1} s; is the interchange running and reachable \
         from here?",
        after.as_secs_f64()
    )]
    Timeout { endpoint: String, after: Duration },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error(
        "the interchange at {endpoint} refused this link's CURVE handshake: {reason}; check \
         --server-key (the interchange's public key) and that this key is in its allow-list"
    )]
    Security { endpoint: String, reason: String },
}

fn options(net: &NetConfig) -> SocketOptions {
    let mut options = SocketOptions::default();
    options.max_frame_size(guard_bytes(net.max_frame_bytes));
    options.connect_timeout(net.connect_timeout);
    match &net.security {
        Security::Plain => {}
        Security::Server {
            keys,
            allowed,
            port,
        } => {
            let allowed = allowed.clone();
            let port = *port;
            let authorizer = Arc::new(move |key: &CurvePublicKey| {
                let allows = allowed.allows(key);
                if !allows {
                    tracing::warn!(
                        "refused a CURVE client on the {port} port: its key {} is not in {}",
                        key.fingerprint(),
                        allowed.dir().display()
                    );
                }
                allows
            });
            options.curve(CurveConfig::Server {
                secret: keys.secret.clone(),
                authorizer,
            });
        }
        Security::Client { server, keys } => {
            options.curve(CurveConfig::Client {
                server_key: *server,
                secret: keys.secret.clone(),
            });
        }
    }
    options
}

/// A bound ROUTER: its resolved endpoint (the port picked for port 0) and its two halves.
pub struct Listener {
    pub endpoint: String,
    pub send: RouterSendHalf,
    pub recv: RouterRecvHalf,
}

/// Binds a ROUTER at `endpoint` (`tcp://HOST:PORT`, port 0 for any free one).
pub async fn bind_router(endpoint: &str, net: &NetConfig) -> Result<Listener, TransportError> {
    let mut socket = RouterSocket::with_options(options(net));
    let bound = socket
        .bind(endpoint)
        .await
        .map_err(|e| TransportError::Bind {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    let (send, recv) = socket.split();
    Ok(Listener {
        endpoint: bound.to_string(),
        send,
        recv,
    })
}

/// Connects a DEALER to `endpoint`; returns once the ZMTP handshake is done.
pub async fn connect_dealer(
    endpoint: &str,
    net: &NetConfig,
    when_refused: WhenRefused,
) -> Result<(DealerSendHalf, DealerRecvHalf), TransportError> {
    let (send, recv, _) = connect_dealer_watched(endpoint, net, when_refused).await?;
    Ok((send, recv))
}

/// Says when a DEALER's connection closes (the peer went away), which its receive half does
/// not: it waits for a message that never comes.
pub struct ConnectionWatch(futures_channel::mpsc::Receiver<zeromq::SocketEvent>);

impl ConnectionWatch {
    /// Returns once the connection closed (or nothing can tell any more).
    pub async fn closed(&mut self) {
        use futures_util::StreamExt;
        while let Some(event) = self.0.next().await {
            if matches!(event, zeromq::SocketEvent::Disconnected(_)) {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// `connect_dealer`, with a watch on the connection.
pub async fn connect_dealer_watched(
    endpoint: &str,
    net: &NetConfig,
    when_refused: WhenRefused,
) -> Result<(DealerSendHalf, DealerRecvHalf, ConnectionWatch), TransportError> {
    let mut options = options(net);
    options.retry_refused_connections(when_refused == WhenRefused::Retry);
    let mut socket = DealerSocket::with_options(options);
    let watch = ConnectionWatch(socket.monitor());
    // zmq.rs bounds the connect by the option; the outer timeout also bounds name resolution.
    let connected = tokio::time::timeout(net.connect_timeout, socket.connect(endpoint)).await;
    match connected {
        Ok(Ok(())) => {
            let (send, recv) = socket.split();
            Ok((send, recv, watch))
        }
        Ok(Err(ZmqError::Network(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(TransportError::Refused {
                endpoint: endpoint.to_string(),
            })
        }
        Ok(Err(e @ (ZmqError::Curve(_) | ZmqError::Mechanism(_)))) => {
            Err(TransportError::Security {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })
        }
        // A CURVE server closes without a word on a HELLO it cannot open (a wrong server key).
        Ok(Err(e @ ZmqError::Other(_))) if net.security.is_encrypted() => {
            Err(TransportError::Security {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })
        }
        Ok(Err(ZmqError::ConnectTimeout(_))) | Err(_) => Err(TransportError::Timeout {
            endpoint: endpoint.to_string(),
            after: net.connect_timeout,
        }),
        Ok(Err(e)) => Err(TransportError::Connect {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// `tcp://host:port` for a bare `host:port`.
pub fn normalize_endpoint(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("tcp://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetConfig {
        NetConfig {
            max_frame_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            security: Security::Plain,
        }
    }

    #[tokio::test]
    async fn a_refused_connection_says_nothing_listens_at_once() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("tcp://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        let error = connect_dealer(&endpoint, &net(), WhenRefused::Fail)
            .await
            .err()
            .expect("nothing listens");
        assert!(matches!(error, TransportError::Refused { .. }), "{error}");
        assert!(
            error.to_string().contains("nothing is listening"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_router_and_a_dealer_talk_and_queued_bytes_are_counted() {
        let listener = bind_router("tcp://127.0.0.1:0", &net()).await.unwrap();
        let (mut send, mut recv) = connect_dealer(&listener.endpoint, &net(), WhenRefused::Fail)
            .await
            .unwrap();
        let mut router_recv = listener.recv;
        send.send(ZmqMessage::from("hello".to_string()))
            .await
            .unwrap();
        let message = router_recv.recv().await.unwrap().into_vec();
        let peer = message[0].clone();
        assert_eq!(&message[1][..], b"hello");
        let queued = listener
            .send
            .try_send_to(&peer, ZmqMessage::from(vec![7u8; 1000]))
            .unwrap();
        assert!(queued <= 1000, "{queued}");
        let reply = recv.recv().await.unwrap().into_vec();
        assert_eq!(reply[0].len(), 1000);
        let unknown = bytes::Bytes::from_static(b"nobody");
        assert!(matches!(
            listener
                .send
                .try_send_to(&unknown, ZmqMessage::from("x".to_string())),
            Err(TrySendError::UnknownPeer)
        ));
        listener.send.disconnect(&peer);
        assert!(matches!(
            listener
                .send
                .try_send_to(&peer, ZmqMessage::from("x".to_string())),
            Err(TrySendError::UnknownPeer)
        ));
    }
}
