//! What a worker's tasks inherit, and how the manager tells that a worker is gone: the worker's
//! reply pipe to the manager is close-on-exec, so no command holds it; and the manager learns a
//! worker's exit from the process itself, so a process that outlives it (and left its process
//! group) cannot keep the slot busy.

use std::time::{Duration, Instant};

use htex_client::{Task, TaskError, TaskOutput};
use htex_tests::{test_worker, TestCluster};

/// Review #1: a daemon a command leaves behind used to hold the worker's protocol pipe, so the
/// `Timeout` waited for the daemon (12 s and more) instead of coming at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_not_held_up_by_a_daemon_the_command_left_behind() {
    let cluster = TestCluster::start(test_worker!(), 1, 1).await;
    let client = cluster.client().await;
    let dir = std::env::temp_dir().join(format!("htex-worker-fds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let daemon_pid = dir.join("daemon-pid");
    let script = format!(
        "setsid sleep 30 & echo $! > {}; sleep 5",
        daemon_pid.display()
    );
    let started = Instant::now();
    let task = Task::command(["sh", "-c", &script]).timeout(Duration::from_secs(1));
    let result = tokio::time::timeout(Duration::from_secs(20), client.submit(task))
        .await
        .expect("the task ends")
        .unwrap();
    match result.outcome {
        Err(TaskError::Timeout { after_ms }) => assert_eq!(after_ms, 1000),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the timeout took {took:?}");
    // The slot serves again at once.
    let next = client.submit(Task::command(["true"])).await.unwrap();
    assert!(next.outcome.is_ok(), "{next:?}");
    // The daemon left behind is no longer the manager's to kill; stop it by its pid.
    if let Some(pid) = std::fs::read_to_string(&daemon_pid)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        // SAFETY: signalling the `setsid sleep` this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    std::fs::remove_dir_all(&dir).ok();
    cluster.stop().await;
}

/// Review #1: the worker's reply pipe to the manager used to leak into every command (as fd 3).
/// A command lists its parent's descriptors (the worker's: fd 0 and fd 3 are the manager's
/// pipes) and its own, and holds none of the worker's protocol pipes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_inherits_no_pipe_of_the_manager() {
    let cluster = TestCluster::start(test_worker!(), 1, 1).await;
    let client = cluster.client().await;
    let script = "ls -l /proc/$PPID/fd; echo SELF; ls -l /proc/$$/fd";
    let result = client
        .submit(Task::command(["sh", "-c", script]))
        .await
        .unwrap();
    let Ok(TaskOutput::Command(out)) = result.outcome else {
        panic!("{result:?}")
    };
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let (worker, own) = listing.split_once("SELF").expect("both listings");
    let protocol: Vec<String> = descriptors(worker)
        .into_iter()
        .filter(|(fd, target)| (*fd == 0 || *fd == 3) && target.starts_with("pipe:"))
        .map(|(_, target)| target)
        .collect();
    assert_eq!(
        protocol.len(),
        2,
        "the worker's pipes to the manager: {worker}"
    );
    let own = descriptors(own);
    assert!(own.iter().any(|(fd, _)| *fd == 1), "no listing: {listing}");
    let leaked: Vec<_> = own.iter().filter(|(_, t)| protocol.contains(t)).collect();
    assert!(
        leaked.is_empty(),
        "the command holds the manager's pipes: {leaked:?}\n{listing}"
    );
    cluster.stop().await;
}

/// `(fd, target)` of each line of `ls -l /proc/PID/fd`, which look like
/// `lr-x------ 1 u g 64 Dec  1 12:00 3 -> pipe:[1234]`.
fn descriptors(listing: &str) -> Vec<(u32, String)> {
    listing
        .lines()
        .filter_map(|line| {
            let (left, target) = line.split_once(" -> ")?;
            let fd = left.split_whitespace().last()?.parse().ok()?;
            Some((fd, target.to_string()))
        })
        .collect()
}
