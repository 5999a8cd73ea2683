//! The CURVE mechanism of the vendored zmq.rs (`zeromq::curve`), in memory: libzmq's test keys,
//! a whole handshake, messages both ways, and every refusal (wrong key, altered or replayed
//! bytes, malformed commands, a refused client).

use bytes::{Bytes, BytesMut};
use zeromq::curve::*;

// The fixed pairs of libzmq's zmq_curve(7), "TEST KEY VALUES".
const CLIENT_PUBLIC: &str = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
const CLIENT_SECRET: &str = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs";
const SERVER_PUBLIC: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
const SERVER_SECRET: &str = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";

fn keys() -> (CurveSecretKey, CurveSecretKey) {
    (
        CurveSecretKey::from_z85(CLIENT_SECRET).unwrap(),
        CurveSecretKey::from_z85(SERVER_SECRET).unwrap(),
    )
}

struct Accepted {
    key: CurvePublicKey,
    metadata: Vec<(String, Bytes)>,
}

/// A whole handshake in memory; returns both sessions and what the server learned.
fn handshake() -> (CurveSession, CurveSession, Accepted) {
    let (client_secret, server_secret) = keys();
    let mut client = ClientHandshake::new(&server_secret.public_key(), &client_secret);
    let mut server = ServerHandshake::new(&server_secret);
    let welcome = server.welcome(&client.hello()).unwrap();
    let meta = encode_metadata([("Socket-Type", &b"DEALER"[..])]);
    let initiate = client.initiate(&welcome, &meta).unwrap();
    let accepted = server.accept(&initiate).unwrap();
    let view = Accepted {
        key: accepted.client_key,
        metadata: accepted.metadata.clone(),
    };
    let (ready, server_session) =
        accepted.ready(&encode_metadata([("Socket-Type", &b"ROUTER"[..])]));
    let (server_meta, client_session) = client.ready(&ready).unwrap();
    assert_eq!(server_meta[0].1, Bytes::from_static(b"ROUTER"));
    (client_session, server_session, view)
}

/// A sealed frame's MESSAGE body (without the ZMTP frame header).
fn body_of(frame: &BytesMut) -> BytesMut {
    let skip = if frame[0] & 0x02 != 0 { 9 } else { 2 };
    BytesMut::from(&frame[skip..])
}

#[test]
fn libzmq_test_keys_derive_their_public_halves() {
    let (client, server) = keys();
    assert_eq!(client.public_key().to_z85(), CLIENT_PUBLIC);
    assert_eq!(server.public_key().to_z85(), SERVER_PUBLIC);
    assert_eq!(&*client.to_z85(), CLIENT_SECRET);
    assert_eq!(format!("{client:?}"), "CurveSecretKey([REDACTED])");
}

#[test]
fn keys_of_the_wrong_length_or_alphabet_are_refused() {
    assert_eq!(
        CurvePublicKey::from_z85("abc"),
        Err(CurveKeyError::Length(3))
    );
    let bad = "~".repeat(40);
    assert_eq!(CurvePublicKey::from_z85(&bad), Err(CurveKeyError::Alphabet));
}

#[test]
fn a_handshake_authenticates_the_client_and_carries_metadata() {
    let (_, _, view) = handshake();
    assert_eq!(view.key.to_z85(), CLIENT_PUBLIC);
    assert_eq!(view.metadata[0].0, "Socket-Type");
    assert_eq!(view.metadata[0].1, Bytes::from_static(b"DEALER"));
}

#[test]
fn messages_travel_both_ways_with_their_more_flag() {
    let (mut client, mut server, _) = handshake();
    for (size, more) in [(0usize, true), (10, false), (300, true), (70_000, false)] {
        let data = vec![0xab; size];
        let mut frame = BytesMut::new();
        client.sealer.seal_frame(&data, more, &mut frame).unwrap();
        assert_eq!(
            frame[0] & 0x01,
            0,
            "MORE travels inside the box, as libzmq's does"
        );
        let (opened, opened_more) = server.opener.open_frame(body_of(&frame)).unwrap();
        assert_eq!((opened.len(), opened_more), (size, more));
        assert!(opened.iter().all(|&b| b == 0xab));
        let mut back = BytesMut::new();
        server.sealer.seal_frame(&data, more, &mut back).unwrap();
        assert_eq!(client.opener.open_frame(body_of(&back)).unwrap().0, opened);
    }
}

#[test]
fn a_replayed_or_reordered_message_is_refused() {
    let (mut client, mut server, _) = handshake();
    let mut first = BytesMut::new();
    client.sealer.seal_frame(b"one", false, &mut first).unwrap();
    let mut second = BytesMut::new();
    client
        .sealer
        .seal_frame(b"two", false, &mut second)
        .unwrap();
    server.opener.open_frame(body_of(&second)).unwrap();
    assert!(matches!(
        server.opener.open_frame(body_of(&first)),
        Err(CurveError::Sequence { .. })
    ));
    assert!(matches!(
        server.opener.open_frame(body_of(&second)),
        Err(CurveError::Sequence { .. })
    ));
}

#[test]
fn a_message_from_the_other_direction_does_not_open() {
    let (mut client, _, _) = handshake();
    let (_, mut other_server, _) = handshake();
    let mut frame = BytesMut::new();
    client.sealer.seal_frame(b"x", false, &mut frame).unwrap();
    // Another connection's keys: the box does not open.
    assert_eq!(
        other_server.opener.open_frame(body_of(&frame)).unwrap_err(),
        CurveError::Open("MESSAGE")
    );
}

#[test]
fn a_flipped_byte_anywhere_in_a_message_is_refused() {
    let (mut client, mut server, _) = handshake();
    let mut frame = BytesMut::new();
    client
        .sealer
        .seal_frame(b"payload", false, &mut frame)
        .unwrap();
    let body = body_of(&frame);
    for at in 16..body.len() {
        let mut tampered = body.clone();
        tampered[at] ^= 0x01;
        assert_eq!(
            server.opener.open_frame(tampered).unwrap_err(),
            CurveError::Open("MESSAGE"),
            "byte {at}"
        );
    }
    server.opener.open_frame(body).unwrap();
}

#[test]
fn a_wrong_server_key_fails_at_hello() {
    let (client_secret, server_secret) = keys();
    let other = CurveSecretKey::generate().public_key();
    let mut client = ClientHandshake::new(&other, &client_secret);
    let mut server = ServerHandshake::new(&server_secret);
    assert_eq!(
        server.welcome(&client.hello()).unwrap_err(),
        CurveError::Open("HELLO")
    );
}

#[test]
fn malformed_hello_commands_are_refused() {
    let (client_secret, server_secret) = keys();
    let mut client = ClientHandshake::new(&server_secret.public_key(), &client_secret);
    let hello = client.hello().to_vec();
    let mut server = ServerHandshake::new(&server_secret);
    assert!(matches!(
        server.welcome(&hello[..199]),
        Err(CurveError::Size { .. })
    ));
    let mut long = hello.clone();
    long.push(0);
    assert!(matches!(
        server.welcome(&long),
        Err(CurveError::Size { .. })
    ));
    let mut version = hello.clone();
    version[6] = 2;
    assert_eq!(server.welcome(&version), Err(CurveError::Version(2, 0)));
    let mut padding = hello.clone();
    padding[40] = 1;
    assert_eq!(server.welcome(&padding), Err(CurveError::Padding));
    let mut signature = hello.clone();
    signature[150] ^= 1;
    assert_eq!(server.welcome(&signature), Err(CurveError::Open("HELLO")));
    assert!(matches!(
        server.welcome(b"\x05READY"),
        Err(CurveError::Unexpected { .. })
    ));
    server.welcome(&hello).unwrap();
}

#[test]
fn a_tampered_or_replayed_initiate_is_refused() {
    let (client_secret, server_secret) = keys();
    let mut client = ClientHandshake::new(&server_secret.public_key(), &client_secret);
    let mut server = ServerHandshake::new(&server_secret);
    let hello = client.hello();
    let welcome = server.welcome(&hello).unwrap();
    let initiate = client.initiate(&welcome, &[]).unwrap().to_vec();
    // A flipped byte in the cookie, then in the box.
    for (at, error) in [
        (30, CurveError::Cookie),
        (200, CurveError::Open("INITIATE")),
    ] {
        let mut server = ServerHandshake::new(&server_secret);
        let mut client = ClientHandshake::new(&server_secret.public_key(), &client_secret);
        let welcome = server.welcome(&client.hello()).unwrap();
        let mut bad = client.initiate(&welcome, &[]).unwrap().to_vec();
        bad[at] ^= 1;
        assert_eq!(server.accept(&bad).unwrap_err(), error);
    }
    assert!(matches!(
        ServerHandshake::new(&server_secret).accept(&initiate[..200]),
        Err(CurveError::Size { .. })
    ));
    server.accept(&initiate).unwrap();
    // The recorded HELLO and INITIATE played to a new connection: the HELLO is answered with a
    // new cookie, and the old INITIATE's cookie does not open.
    let mut replayed = ServerHandshake::new(&server_secret);
    replayed.welcome(&hello).unwrap();
    assert_eq!(replayed.accept(&initiate).unwrap_err(), CurveError::Cookie);
}

#[test]
fn an_initiate_from_another_connection_is_refused() {
    let (client_secret, server_secret) = keys();
    let mut a = ClientHandshake::new(&server_secret.public_key(), &client_secret);
    let mut b = ClientHandshake::new(&server_secret.public_key(), &client_secret);
    let mut server_a = ServerHandshake::new(&server_secret);
    let mut server_b = ServerHandshake::new(&server_secret);
    let welcome_a = server_a.welcome(&a.hello()).unwrap();
    let initiate_a = a.initiate(&welcome_a, &[]).unwrap();
    let _ = server_b.welcome(&b.hello()).unwrap();
    // Connection a's INITIATE sent on connection b: its cookie is not b's.
    assert_eq!(
        server_b.accept(&initiate_a).unwrap_err(),
        CurveError::Cookie
    );
}

#[test]
fn an_error_command_reads_as_a_refusal() {
    let (client_secret, server_secret) = keys();
    let mut client = ClientHandshake::new(&server_secret.public_key(), &client_secret);
    let _ = client.hello();
    assert_eq!(
        client
            .initiate(&error_command("not allowed"), &[])
            .unwrap_err(),
        CurveError::Refused("not allowed".into())
    );
}
