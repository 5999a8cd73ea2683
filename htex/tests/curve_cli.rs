//! CURVE from the command line, as an operator runs it: `htex interchange --address 0.0.0.0`
//! without keys refuses to start; with `htex keygen` keys, a manager and `htex submit` reach it
//! on this host's non-loopback address, `htex status` says the links are CURVE; and no secret
//! key's text appears in any line any process printed at `RUST_LOG=trace`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const HTEX: &str = env!("CARGO_BIN_EXE_htex");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `htex ARGS` to its end; returns (success, stdout + stderr).
fn htex(args: &[&str], log: &Path) -> (bool, String) {
    let out = Command::new(HTEX)
        .args(args)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    append(log, &text);
    (out.status.success(), text)
}

fn append(log: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Starts `htex ARGS` in the background, its output going to `out`.
fn spawn(args: &[&str], out: &Path) -> Killed {
    let file = std::fs::File::create(out).unwrap();
    Killed(
        Command::new(HTEX)
            .args(args)
            .env("RUST_LOG", "trace")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
    )
}

/// An address of this host other than loopback, if it has one.
fn host_address() -> Option<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

fn secret_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret-key = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

#[test]
fn keys_from_the_command_line_secure_a_cluster_and_no_secret_is_printed() {
    let dir: PathBuf = std::env::temp_dir().join(format!("htex-curve-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("all-output.txt");
    let p = |name: &str| dir.join(name).display().to_string();

    // No keys on every interface: refused, saying how to make them.
    let (ok, text) = htex(&["interchange", "--address", "0.0.0.0"], &log);
    assert!(!ok, "an open interchange started: {text}");
    assert!(text.contains("htex keygen"), "{text}");

    for (d, name) in [("keys", "server"), ("own", "alice"), ("own", "node1")] {
        let (ok, text) = htex(&["keygen", &p(d), name], &log);
        assert!(ok, "{text}");
    }
    let (ok, text) = htex(&["keygen", &p("keys"), "server"], &log);
    assert!(
        !ok && text.contains("exists"),
        "keygen overwrote a key: {text}"
    );
    for (name, list) in [("alice", "clients"), ("node1", "managers")] {
        std::fs::create_dir_all(dir.join("keys").join(list)).unwrap();
        std::fs::copy(
            dir.join("own").join(format!("{name}.key")),
            dir.join("keys").join(list).join(format!("{name}.key")),
        )
        .unwrap();
    }

    let addresses = dir.join("addresses.json");
    let _interchange = spawn(
        &[
            "interchange",
            "--address",
            "0.0.0.0",
            "--keys",
            &p("keys"),
            "--addresses-file",
            &addresses.display().to_string(),
        ],
        &dir.join("interchange.out"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let endpoints: serde_json::Value = loop {
        if let Some(v) = std::fs::read_to_string(&addresses)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            break v;
        }
        assert!(Instant::now() < deadline, "the interchange did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let port = |key: &str| {
        endpoints[key]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    };
    let (client_port, manager_port) = (port("client"), port("manager"));
    let host = host_address().unwrap_or_else(|| "127.0.0.1".into());
    println!("reaching the interchange at {host}");
    let server_key = p("keys/server.key");
    let _manager = spawn(
        &[
            "manager",
            "--interchange",
            &host,
            "--port",
            &manager_port,
            "--workers",
            "1",
            "--manager-id",
            "node1",
            "--server-key",
            &server_key,
            "--key",
            &p("own/node1.key_secret"),
        ],
        &dir.join("manager.out"),
    );

    let tasks = dir.join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"id\": \"a\", \"command\": [\"echo\", \"over curve\"]}\n{\"id\": \"b\", \"function\": \"noop\", \"args\": null}\n",
    )
    .unwrap();
    let alice = p("own/alice.key_secret");
    let keys = ["--server-key", server_key.as_str(), "--key", alice.as_str()];
    let target = [
        "--interchange",
        host.as_str(),
        "--port",
        client_port.as_str(),
    ];
    let results = p("results.jsonl");
    let submit: Vec<&str> = ["submit"]
        .into_iter()
        .chain(target)
        .chain(keys)
        .chain([tasks.to_str().unwrap(), "--results", &results, "--quiet"])
        .collect();
    let (ok, text) = htex(&submit, &log);
    assert!(ok, "htex submit over CURVE: {text}");
    let written = std::fs::read_to_string(&results).unwrap();
    assert_eq!(written.lines().count(), 2, "{written}");
    assert!(written.contains("over curve"), "{written}");

    let status: Vec<&str> = ["status"].into_iter().chain(target).chain(keys).collect();
    let (ok, text) = htex(&status, &log);
    assert!(ok && text.contains("CURVE"), "{text}");
    // Without keys, the same port gives nothing.
    let plain: Vec<&str> = ["status"].into_iter().chain(target).collect();
    let (ok, _) = htex(&plain, &log);
    assert!(!ok, "a plaintext status was answered");

    let (ok, text) = htex(
        &["shutdown"]
            .into_iter()
            .chain(target)
            .chain(keys)
            .collect::<Vec<_>>(),
        &log,
    );
    assert!(ok, "{text}");
    std::thread::sleep(Duration::from_millis(500));
    for out in ["interchange.out", "manager.out"] {
        append(
            &log,
            &std::fs::read_to_string(dir.join(out)).unwrap_or_default(),
        );
    }
    let everything = std::fs::read_to_string(&log).unwrap();
    for expected in [
        "CURVE on both ports",
        "manager registered",
        "client connected",
    ] {
        assert!(
            everything.contains(expected),
            "the logs lack {expected:?}, so scanning them means little"
        );
    }
    for secret in [
        "keys/server.key_secret",
        "own/alice.key_secret",
        "own/node1.key_secret",
    ] {
        let z85 = secret_of(&dir.join(secret));
        assert!(
            !everything.contains(&z85),
            "the secret of {secret} was printed"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
