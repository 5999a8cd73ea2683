//! Peers that speak the wrong thing: a manager of another protocol version is refused with a
//! message naming both versions; garbage from a client gets an error reply or is dropped, and the
//! interchange keeps serving everyone else.

use std::io::Write;
use std::time::Duration;

use htex_client::{Task, TaskOutput};
use htex_protocol::{
    decode, encode, ClientReply, InterchangeMessage, ManagerMessage, Registration, SlotDescriptor,
    DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use htex_tests::{test_worker, TestCluster};
use serde::Serialize;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

async fn dealer(endpoint: &str) -> DealerSocket {
    let mut socket = DealerSocket::new();
    socket.connect(endpoint).await.expect("connects");
    socket
}

async fn recv_frame(socket: &mut DealerSocket) -> Vec<u8> {
    let message = tokio::time::timeout(Duration::from_secs(5), socket.recv())
        .await
        .expect("an answer within 5 s")
        .expect("a message");
    message.into_vec().pop().unwrap().to_vec()
}

fn registration(version: u32) -> Registration {
    Registration {
        protocol_version: version,
        manager_id: "time-traveller".into(),
        hostname: "elsewhere".into(),
        block_id: None,
        version: "99.0.0".into(),
        slots: vec![SlotDescriptor::cpu(0)],
        prefetch: 0,
        pid: 1,
        instance: 1,
        held: vec![],
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u64,
    }
}

async fn assert_refused_naming_versions(endpoint: &str, frame: Vec<u8>, theirs: u32) {
    let mut socket = dealer(endpoint).await;
    socket.send(ZmqMessage::from(frame)).await.unwrap();
    let reply = recv_frame(&mut socket).await;
    match decode::<InterchangeMessage>(&reply, DEFAULT_MAX_FRAME_BYTES).unwrap() {
        InterchangeMessage::Refused { reason } => {
            assert!(reason.contains(&format!("version {theirs}")), "{reason}");
            assert!(
                reason.contains(&format!("version {PROTOCOL_VERSION}")),
                "{reason}"
            );
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_of_another_version_is_refused_naming_both() {
    let cluster = TestCluster::start(test_worker!(), 1, 1).await;
    let endpoint = cluster.manager_endpoint().to_string();
    // Same message shape, another version number.
    let same_shape = encode(&ManagerMessage::Register(registration(
        PROTOCOL_VERSION + 1,
    )))
    .unwrap();
    assert_refused_naming_versions(&endpoint, same_shape, PROTOCOL_VERSION + 1).await;
    // A registration of a different shape, as a future release might send.
    #[derive(Serialize)]
    enum FutureManagerMessage {
        Register(u32, String, Vec<String>, bool),
    }
    let future = FutureManagerMessage::Register(7, "m".into(), vec!["gpu".into()], true);
    assert_refused_naming_versions(&endpoint, encode(&future).unwrap(), 7).await;

    // The refused manager is not in the table; the real one serves on.
    let client = cluster.client().await;
    let status = client.status().await.unwrap();
    assert_eq!(status.managers.len(), 1);
    assert_eq!(status.managers[0].id, "test-0");
    let done = client
        .submit(Task::function("noop", vec![0xc0]))
        .await
        .unwrap();
    assert!(done.outcome.is_ok());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_clients_is_answered_or_dropped_and_others_are_served() {
    let cluster = TestCluster::start(test_worker!(), 1, 2).await;
    let endpoint = cluster.client_endpoint().to_string();
    let client = cluster.client().await;
    let steady: Vec<_> = (0..200)
        .map(|i| client.call::<_, i64>("add", &(i, i)).unwrap())
        .collect();

    let mut rogue = dealer(&endpoint).await;
    let garbage: [&[u8]; 5] = [
        b"",
        b"\xc1\xc1\xc1",
        b"hello interchange",
        &[0xff; 4096],
        &[0x92, 0x01],
    ];
    for frame in garbage {
        rogue.send(ZmqMessage::from(frame.to_vec())).await.unwrap();
        let reply = recv_frame(&mut rogue).await;
        match decode::<ClientReply>(&reply, DEFAULT_MAX_FRAME_BYTES).unwrap() {
            ClientReply::Error { message } => assert!(message.contains("malformed"), "{message}"),
            other => panic!("expected an error reply, got {other:?}"),
        }
    }
    // A well-formed request before Hello is refused with a reason.
    let submit = htex_protocol::ClientRequest::Submit(vec![]);
    rogue
        .send(ZmqMessage::from(encode(&submit).unwrap()))
        .await
        .unwrap();
    let reply =
        decode::<ClientReply>(&recv_frame(&mut rogue).await, DEFAULT_MAX_FRAME_BYTES).unwrap();
    assert!(matches!(reply, ClientReply::Error { message } if message.contains("Hello")));
    // A multi-frame message is malformed too.
    let mut multi = ZmqMessage::from(vec![1u8]);
    multi.push_back(vec![2u8].into());
    rogue.send(multi).await.unwrap();
    let reply =
        decode::<ClientReply>(&recv_frame(&mut rogue).await, DEFAULT_MAX_FRAME_BYTES).unwrap();
    assert!(matches!(reply, ClientReply::Error { .. }));

    // Raw bytes that are not ZeroMQ at all, straight at the TCP port.
    let address = endpoint.trim_start_matches("tcp://").to_string();
    for _ in 0..3 {
        if let Ok(mut raw) = std::net::TcpStream::connect(&address) {
            let _ = raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\xff\x00\xff");
        }
    }

    for (i, handle) in steady.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), 2 * i as i64);
    }
    let after = client.submit(Task::command(["echo", "ok"])).await.unwrap();
    assert!(matches!(after.outcome, Ok(TaskOutput::Command(_))));
    cluster.stop().await;
}

/// A ZMTP 3.0 NULL-mechanism greeting and a READY command of a DEALER: a real ZeroMQ handshake.
fn zmtp_handshake() -> Vec<u8> {
    let mut bytes = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    let mut mechanism = b"NULL".to_vec();
    mechanism.resize(20, 0);
    bytes.extend(mechanism);
    bytes.push(0); // as-server
    bytes.extend([0u8; 31]);
    let mut ready = vec![5u8];
    ready.extend(b"READY");
    ready.push(11);
    ready.extend(b"Socket-Type");
    ready.extend(6u32.to_be_bytes());
    ready.extend(b"DEALER");
    bytes.extend([0x04, ready.len() as u8]);
    bytes.extend(ready);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_a_huge_frame_is_dropped_not_allocated_for() {
    let cluster = TestCluster::start(test_worker!(), 1, 1).await;
    let endpoints = [
        cluster.client_endpoint().to_string(),
        cluster.manager_endpoint().to_string(),
    ];
    for endpoint in &endpoints {
        let address = endpoint.trim_start_matches("tcp://").to_string();
        let mut raw = std::net::TcpStream::connect(&address).unwrap();
        let mut bytes = zmtp_handshake();
        // A message frame (long form) announcing 1 TiB: the process would abort reserving it.
        bytes.push(0x02);
        bytes.extend((1u64 << 40).to_be_bytes());
        raw.write_all(&bytes).unwrap();
        // The interchange drops the connection.
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut raw, &mut sink);
    }
    let client = cluster.client().await;
    let status = client.status().await.unwrap();
    assert_eq!(status.managers.len(), 1);
    let done = client
        .submit(Task::function("noop", vec![0xc0]))
        .await
        .unwrap();
    assert!(done.outcome.is_ok());
    cluster.stop().await;
}
