//! CURVE on every link: an interchange with `--keys` serves the clients and managers whose keys
//! it lists, each on its own port, and refuses everyone else before they reach its peer table;
//! a libzmq peer (pyzmq, both roles) completes the handshake with htex; a tampered or replayed
//! frame closes the connection and delivers nothing; a stalled or malformed handshake is dropped.
//!
//! The pyzmq tests need `HTEX_TEST_PYTHON` with `pyzmq` and `msgpack` (`.ci/run` provides it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use htex_client::{Client, ClientConfig, ClientError, Task};
use htex_interchange::{Interchange, InterchangeConfig, InterchangeError};
use htex_manager::{Manager, ManagerConfig};
use htex_tests::{test_worker, TestCluster};
use htex_transport::keys::keygen;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A key directory as the interchange reads it, and client and manager pairs beside it.
struct Keys {
    root: PathBuf,
}

impl Keys {
    /// `server`, clients `alice` (listed) and `bob` (not), manager `m1` (listed).
    fn new(name: &str) -> Keys {
        let root = std::env::temp_dir().join(format!("htex-curve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let keys = Keys { root };
        keygen(&keys.dir(), "server").unwrap();
        std::fs::create_dir_all(keys.dir().join("clients")).unwrap();
        std::fs::create_dir_all(keys.dir().join("managers")).unwrap();
        for (name, list) in [
            ("alice", Some("clients")),
            ("bob", None),
            ("m1", Some("managers")),
        ] {
            let (public, _) = keygen(&keys.own(), name).unwrap();
            if let Some(list) = list {
                std::fs::copy(&public, keys.dir().join(list).join(format!("{name}.key"))).unwrap();
            }
        }
        keys
    }

    /// What `--keys` names.
    fn dir(&self) -> PathBuf {
        self.root.join("interchange")
    }

    /// Where the clients' and managers' own pairs live.
    fn own(&self) -> PathBuf {
        self.root.join("own")
    }

    fn server_key(&self) -> PathBuf {
        self.dir().join("server.key")
    }

    fn secret(&self, name: &str) -> PathBuf {
        self.own().join(format!("{name}.key_secret"))
    }

    fn client_config(&self, name: &str) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            connect_timeout: Duration::from_secs(3),
            heartbeat_threshold: Duration::from_secs(3),
            server_key: Some(self.server_key()),
            key: Some(self.secret(name)),
            ..ClientConfig::default()
        }
    }

    fn interchange(&self) -> InterchangeConfig {
        InterchangeConfig {
            keys: Some(self.dir()),
            ..InterchangeConfig::default()
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn noop_round(client: &Client, n: usize) {
    let handles: Vec<_> = (0..n)
        .map(|_| client.submit(Task::function("noop", vec![0xc0])))
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(30), join_all(handles))
        .await
        .expect("the tasks end within 30 s");
    for r in results {
        assert!(r.expect("a result").outcome.is_ok());
    }
}

async fn encrypted_cluster(keys: &Keys) -> TestCluster {
    let (server_key, key) = (keys.server_key(), keys.secret("m1"));
    TestCluster::start_with(test_worker!(), keys.interchange(), 1, 1, move |m| {
        m.server_key = Some(server_key.clone());
        m.key = Some(key.clone());
    })
    .await
}

/// A client that cannot connect, and the error it reads.
async fn refused(endpoint: &str, config: ClientConfig) -> String {
    let started = Instant::now();
    let error = Client::connect_with(endpoint, config)
        .await
        .err()
        .expect("the interchange must refuse this client");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused only after {:?}: {error}",
        started.elapsed()
    );
    error.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_keys_run_tasks_and_every_other_peer_is_refused() {
    let keys = Keys::new("roles");
    let cluster = encrypted_cluster(&keys).await;
    let endpoint = cluster.client_endpoint().to_string();
    let alice = Client::connect_with(&endpoint, keys.client_config("alice"))
        .await
        .expect("a listed client connects");
    noop_round(&alice, 200).await;
    let status = alice.status().await.unwrap();
    assert_eq!(status.security, "curve");

    // An unlisted key; the manager's key on the client port; a wrong server key; plaintext.
    let bob = refused(&endpoint, keys.client_config("bob")).await;
    assert!(bob.contains("refused") || bob.contains("allow"), "{bob}");
    let mut as_manager = keys.client_config("alice");
    as_manager.key = Some(keys.secret("m1"));
    refused(&endpoint, as_manager).await;
    let mut wrong_server = keys.client_config("alice");
    wrong_server.server_key = Some(keys.own().join("bob.key"));
    let wrong = refused(&endpoint, wrong_server).await;
    assert!(wrong.contains("CURVE"), "{wrong}");
    let plain = ClientConfig {
        connect_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    };
    refused(&endpoint, plain).await;

    // A client key on the manager port cannot register.
    let mut manager = ManagerConfig::with_worker(cluster.manager_endpoint(), 1, [test_worker!()]);
    manager.manager_id = "impostor".into();
    manager.connect_timeout = Duration::from_secs(3);
    manager.server_key = Some(keys.server_key());
    manager.key = Some(keys.secret("alice"));
    let error = Manager::start(manager).await.err().expect("refused");
    assert!(error.to_string().contains("CURVE"), "{error}");

    // None of that disturbed the listed ones; only one manager registered, one client is on.
    noop_round(&alice, 200).await;
    let status = alice.status().await.unwrap();
    assert_eq!(status.managers.len(), 1, "{:?}", status.managers);
    assert_eq!(status.clients, 1);

    // Revocation: alice's file goes, her next connection is refused; the open one runs on.
    std::fs::remove_file(keys.dir().join("clients/alice.key")).unwrap();
    refused(&endpoint, keys.client_config("alice")).await;
    noop_round(&alice, 50).await;
    alice.close().await;
    cluster.stop().await;
}

#[tokio::test]
async fn keys_the_interchange_cannot_use_stop_it_at_start() {
    let keys = Keys::new("start");
    // A key on both lists.
    std::fs::copy(
        keys.dir().join("clients/alice.key"),
        keys.dir().join("managers/alice.key"),
    )
    .unwrap();
    let error = Interchange::start(keys.interchange()).await.err().unwrap();
    assert!(
        matches!(error, InterchangeError::KeyOnBothLists { .. }),
        "{error}"
    );
    std::fs::remove_file(keys.dir().join("managers/alice.key")).unwrap();
    // A secret the group can read.
    let secret = keys.dir().join("server.key_secret");
    let text = std::fs::read_to_string(&secret).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let error = Interchange::start(keys.interchange()).await.err().unwrap();
    let message = error.to_string();
    assert!(message.contains("chmod 600"), "{message}");
    let z85 = load_secret_text(&text);
    assert!(!message.contains(&z85), "the error shows the secret");
    // No keys on a public address.
    let error = Interchange::start(InterchangeConfig {
        client_bind: "tcp://0.0.0.0:0".into(),
        ..InterchangeConfig::default()
    })
    .await
    .err()
    .unwrap();
    assert!(
        matches!(error, InterchangeError::Insecure { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("htex keygen"), "{error}");
}

fn load_secret_text(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("secret-key = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

// ---- Against libzmq (pyzmq) -------------------------------------------------------------------

fn python() -> Option<String> {
    let python = std::env::var("HTEX_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Process::new(&python)
        .args(["-c", "import zmq, msgpack; assert zmq.has('curve')"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        htex_tests::skip_unless_required(
            "python",
            &format!("`{python}` with pyzmq (CURVE) and msgpack is needed for the interop tests"),
        );
    }
    ok.then_some(python)
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/pyzmq_peer.py")
}

/// Runs the pyzmq peer as a client and returns what it printed.
fn pyzmq_client(python: &str, args: &[&str]) -> String {
    let out = Process::new(python)
        .arg(peer_script())
        .args(args)
        .output()
        .expect("the pyzmq peer runs");
    assert!(
        out.status.success(),
        "pyzmq peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_client_completes_the_handshake_with_the_interchange() {
    let Some(python) = python() else { return };
    let keys = Keys::new("pyclient");
    let interchange = Interchange::start(keys.interchange()).await.unwrap();
    let endpoint = interchange.client_endpoint().to_string();
    let server = htex_transport::keys::load_public(&keys.server_key())
        .unwrap()
        .to_z85();
    let run = |args: Vec<String>| {
        let python = python.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pyzmq_client(&python, &args)
        })
    };
    let secret = |name: &str| keys.secret(name).display().to_string();
    let listed = run(vec![
        "client".into(),
        endpoint.clone(),
        server.clone(),
        secret("alice"),
    ]);
    assert_eq!(
        listed.await.unwrap(),
        "Welcome",
        "a listed libzmq client is welcomed"
    );
    let unlisted = run(vec![
        "client".into(),
        endpoint.clone(),
        server.clone(),
        secret("bob"),
    ]);
    assert_eq!(unlisted.await.unwrap(), "no reply");
    let plain = run(vec!["plain".into(), endpoint.clone()]);
    assert_eq!(plain.await.unwrap(), "no reply");
    interchange.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_htex_client_completes_the_handshake_with_a_libzmq_server() {
    let Some(python) = python() else { return };
    let keys = Keys::new("pyserver");
    let mut server = Process::new(&python)
        .arg(peer_script())
        .arg("interchange")
        .arg(keys.dir().join("server.key_secret"))
        .arg(keys.dir().join("clients"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the pyzmq interchange starts");
    let mut line = String::new();
    let mut stdout = server.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    let endpoint = line.trim().to_string();
    // Its Welcome, then its answer to a command, both through libzmq's CURVE.
    let alice = Client::connect_with(&endpoint, keys.client_config("alice"))
        .await
        .expect("htex's CURVE client is welcomed by libzmq");
    match alice.status().await {
        Err(ClientError::Command(message)) => assert!(message.contains("pyzmq"), "{message}"),
        other => panic!("expected pyzmq's answer, got {other:?}"),
    }
    // ZAP refuses an unlisted key; a wrong server key gets nothing.
    refused(&endpoint, keys.client_config("bob")).await;
    let mut wrong_server = keys.client_config("alice");
    wrong_server.server_key = Some(keys.own().join("bob.key"));
    refused(&endpoint, wrong_server).await;
    drop(server.stdin.take());
    let _ = server.wait();
}

// ---- Tampering, replay, hostile handshakes ----------------------------------------------------

/// What a proxy does to the client's frames after the handshake.
#[derive(Clone, Copy)]
enum Meddle {
    /// Flip one byte of the second MESSAGE's ciphertext (the first is the Hello).
    Flip,
    /// Send the second MESSAGE twice.
    Replay,
}

/// A TCP proxy to `target` that meddles with the first connection's client-to-server stream;
/// returns its endpoint.
async fn meddling_proxy(target: String, meddle: Meddle) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((inbound, _)) = listener.accept().await {
            let address = target.trim_start_matches("tcp://").to_string();
            let outbound = tokio::net::TcpStream::connect(address).await.unwrap();
            let meddle = first.then_some(meddle);
            first = false;
            tokio::spawn(async move {
                let (mut in_read, mut in_write) = inbound.into_split();
                let (mut out_read, mut out_write) = outbound.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                });
                let _ = client_to_server(&mut in_read, &mut out_write, meddle).await;
            });
        }
    });
    endpoint
}

/// Copies the client's stream frame by frame (after the 64-byte greeting), meddling with the
/// fourth frame (HELLO, INITIATE, MESSAGE Hello, then the MESSAGE that carries a Submit).
async fn client_to_server(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    meddle: Option<Meddle>,
) -> std::io::Result<()> {
    let mut greeting = [0u8; 64];
    from.read_exact(&mut greeting).await?;
    to.write_all(&greeting).await?;
    let mut frames = 0;
    loop {
        let flags = from.read_u8().await?;
        let len = if flags & 0x02 != 0 {
            from.read_u64().await? as usize
        } else {
            from.read_u8().await? as usize
        };
        let mut body = vec![0u8; len];
        from.read_exact(&mut body).await?;
        let mut frame = vec![flags];
        if flags & 0x02 != 0 {
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        } else {
            frame.push(len as u8);
        }
        let header = frame.len();
        frame.extend_from_slice(&body);
        frames += 1;
        match (frames, meddle) {
            (4, Some(Meddle::Flip)) => {
                let last = frame.len() - 1;
                frame[last] ^= 0x01;
                to.write_all(&frame).await?;
            }
            (4, Some(Meddle::Replay)) => {
                to.write_all(&frame).await?;
                to.write_all(&frame).await?;
            }
            _ => to.write_all(&frame).await?,
        }
        let _ = header;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_or_replayed_message_closes_the_connection_and_runs_nothing() {
    let keys = Keys::new("tamper");
    let cluster = encrypted_cluster(&keys).await;
    let watcher = Client::connect_with(cluster.client_endpoint(), keys.client_config("alice"))
        .await
        .unwrap();
    for meddle in [Meddle::Flip, Meddle::Replay] {
        let proxy = meddling_proxy(cluster.client_endpoint().to_string(), meddle).await;
        let client = Client::connect_with(&proxy, keys.client_config("alice"))
            .await
            .expect("the handshake and Hello pass the proxy untouched");
        let handles: Vec<_> = (0..10)
            .map(|_| client.submit(Task::function("echo", vec![7u8; 100])))
            .collect();
        let results = tokio::time::timeout(Duration::from_secs(20), join_all(handles))
            .await
            .expect("the meddled tasks end, with an error");
        for result in results {
            match (meddle, result) {
                // The altered frame does not open: none of its tasks was taken.
                (_, Err(ClientError::InterchangeLost { .. })) => {}
                // The first copy of a replayed frame is genuine and may have run; its copy
                // closed the connection, so results that made it back before are the only ones.
                (Meddle::Replay, Ok(r)) => assert!(r.outcome.is_ok()),
                (_, other) => panic!("a meddled frame's task ended {other:?}"),
            }
        }
        // The client learns of the closed connection at once; tasks the genuine copy of a
        // replayed frame brought may still be finishing: none stays behind.
        let mut outstanding = u64::MAX;
        for _ in 0..100 {
            outstanding = watcher.status().await.unwrap().outstanding;
            if outstanding == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(outstanding, 0, "a meddled frame left tasks behind");
        client.close().await;
    }
    // The listed client was served throughout.
    noop_round(&watcher, 100).await;
    watcher.close().await;
    cluster.stop().await;
}

/// Connects, writes `bytes`, and returns how long the interchange took to close the connection.
fn closed_after(endpoint: &str, bytes: &[u8], limit: Duration) -> Duration {
    let mut stream = TcpStream::connect(endpoint.trim_start_matches("tcp://")).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    let _ = stream.write_all(bytes);
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("still open after {limit:?} ({e})"),
        }
    }
}

fn greeting(mechanism: &[u8], as_server: bool) -> Vec<u8> {
    let mut g = vec![0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[12..12 + mechanism.len()].copy_from_slice(mechanism);
    g[32] = as_server as u8;
    g
}

/// NULL's READY command from a DEALER.
fn ready_dealer() -> Vec<u8> {
    let mut body = b"\x05READY\x0bSocket-Type".to_vec();
    body.extend_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(b"DEALER");
    command(&body)
}

fn command(body: &[u8]) -> Vec<u8> {
    let mut frame = if body.len() > 255 {
        let mut f = vec![0x06];
        f.extend_from_slice(&(body.len() as u64).to_be_bytes());
        f
    } else {
        vec![0x04, body.len() as u8]
    };
    frame.extend_from_slice(body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handshakes_are_dropped_and_others_are_served() {
    let keys = Keys::new("hostile");
    let cluster = encrypted_cluster(&keys).await;
    let endpoint = cluster.client_endpoint().to_string();
    let hello_of = |len: usize| {
        let mut body = b"\x05HELLO\x01\x00".to_vec();
        body.resize(len, 0);
        command(&body)
    };
    let quick = Duration::from_secs(3);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a NULL greeting", greeting(b"NULL", false)),
        ("a second CURVE server", greeting(b"CURVE", true)),
        (
            "a truncated HELLO",
            [greeting(b"CURVE", false), hello_of(199)].concat(),
        ),
        (
            "an oversized HELLO",
            [greeting(b"CURVE", false), hello_of(4000)].concat(),
        ),
        (
            "a HELLO of zeros",
            [greeting(b"CURVE", false), hello_of(200)].concat(),
        ),
    ];
    let ends = cases.into_iter().map(|(what, bytes)| {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || (what, closed_after(&endpoint, &bytes, quick)))
    });
    for end in join_all(ends).await {
        let (what, after) = end.unwrap();
        println!("{what}: closed after {after:?}");
    }
    // A peer that greets and then says nothing is dropped at the handshake deadline (10 s).
    let stalled = {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            closed_after(
                &endpoint,
                &greeting(b"CURVE", false),
                Duration::from_secs(20),
            )
        })
    };
    let alice = Client::connect_with(&endpoint, keys.client_config("alice"))
        .await
        .unwrap();
    noop_round(&alice, 100).await;
    let after = stalled.await.unwrap();
    assert!(after >= Duration::from_secs(9), "dropped after {after:?}");
    assert_eq!(alice.status().await.unwrap().clients, 1);
    alice.close().await;
    cluster.stop().await;
}

/// 16 peers connect (most complete the NULL handshake, joining the peer table), send garbage
/// or nothing, and drop, for 60 s, while a client's status calls must keep being answered:
/// zmq.rs's peer table once deadlocked both runtime threads under this churn (its async and
/// sync map operations mixed on one map), within a minute. The interchange runs on its own
/// thread and runtime, so a deadlock fails this test instead of hanging it.
#[test]
fn connection_churn_never_stalls_the_interchange() {
    let (endpoints_tx, endpoints_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let interchange = Interchange::start(InterchangeConfig::default())
                .await
                .unwrap();
            let endpoints = (
                interchange.client_endpoint().to_string(),
                interchange.manager_endpoint().to_string(),
            );
            endpoints_tx.send(endpoints).unwrap();
            let _ = stop_rx.await;
            interchange.shutdown().await.unwrap();
        });
    });
    let (endpoint, manager_endpoint) = endpoints_rx.recv().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churners: Vec<_> = (0..16)
        .map(|i| {
            let target = if i % 2 == 0 {
                endpoint.clone()
            } else {
                manager_endpoint.clone()
            };
            let stop = stop.clone();
            std::thread::spawn(move || {
                let address: std::net::SocketAddr =
                    target.trim_start_matches("tcp://").parse().unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let Ok(mut s) = TcpStream::connect_timeout(&address, Duration::from_secs(1))
                    else {
                        continue;
                    };
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let joined = [greeting(b"NULL", false), ready_dealer()].concat();
                    let junk: Vec<u8> = match (i + n as usize) % 5 {
                        0 => [joined, vec![0x00, 3, 1, 2, 3]].concat(),
                        1 => [joined, vec![0x02], u64::MAX.to_be_bytes().to_vec()].concat(),
                        2 => [joined, vec![0x00, 200], vec![0x5a; 200]].concat(),
                        3 => [greeting(b"NULL", false), vec![0x02; 64]].concat(),
                        _ => joined,
                    };
                    let _ = s.write_all(&junk);
                    let mut sink = [0u8; 256];
                    let _ = s.set_read_timeout(Some(Duration::from_millis(5)));
                    let _ = s.read(&mut sink);
                }
            })
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let slowest = runtime.block_on(async move {
        let client = Client::connect(&endpoint).await.unwrap();
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        while started.elapsed() < Duration::from_secs(60) {
            let at = Instant::now();
            let answered = tokio::time::timeout(Duration::from_secs(5), client.status()).await;
            // On a stall, fail without joining anything: the stalled threads stay behind.
            assert!(
                matches!(answered, Ok(Ok(_))),
                "the interchange stopped answering after {:?} of churn",
                started.elapsed()
            );
            slowest = slowest.max(at.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slowest
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in churners {
        c.join().unwrap();
    }
    println!("slowest status under churn: {slowest:?}");
    let _ = stop_tx.send(());
}
