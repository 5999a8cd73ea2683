//! Typed task errors, each beside healthy tasks that must be unaffected.

use htex_client::{Task, TaskError, TaskOutput};
use htex_tests::{test_worker, worker_pids, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_and_do_not_disturb_other_tasks() {
    let cluster = TestCluster::start(test_worker!(), 1, 2).await;
    let client = cluster.client().await;
    let before = worker_pids(&client, 2).await;
    assert_eq!(before.len(), 2, "two workers serve: {before:?}");
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(client.submit(Task::call("add", &(i, 1)).unwrap()));
    }
    let unknown = client.submit(Task::function("no_such_function", vec![0xc0]));
    let missing = client.submit(Task::command(["/definitely/not/a/program", "x"]));
    let panics = client.submit(Task::call("panic", "deliberate").unwrap());
    let fails = client.submit(Task::call("fail", "told to fail").unwrap());
    let exit3 = client.submit(Task::command(["sh", "-c", "echo partial; exit 3"]));
    let bad_args = client.submit(Task::call("add", "not a pair").unwrap());
    for i in 10..20 {
        handles.push(client.submit(Task::call("add", &(i, 1)).unwrap()));
    }

    match unknown.await.unwrap().outcome {
        Err(TaskError::UnknownFunction { name, available }) => {
            assert_eq!(name, "no_such_function");
            assert!(available.contains(&"add".to_string()), "{available:?}");
        }
        other => panic!("expected UnknownFunction, got {other:?}"),
    }
    match missing.await.unwrap().outcome {
        Err(TaskError::Failed {
            message,
            output: None,
        }) => {
            assert!(message.contains("No such file or directory"), "{message}")
        }
        other => panic!("expected Failed with the OS error, got {other:?}"),
    }
    match panics.await.unwrap().outcome {
        Err(TaskError::Panicked { message }) => assert_eq!(message, "deliberate"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    match fails.await.unwrap().outcome {
        Err(TaskError::Failed { message, .. }) => assert_eq!(message, "told to fail"),
        other => panic!("expected Failed, got {other:?}"),
    }
    match exit3.await.unwrap().outcome {
        Err(TaskError::Failed {
            output: Some(out), ..
        }) => {
            assert_eq!(
                (out.exit_code, out.stdout.as_slice()),
                (Some(3), &b"partial\n"[..])
            )
        }
        other => panic!("expected Failed with exit code 3, got {other:?}"),
    }
    assert!(matches!(
        bad_args.await.unwrap().outcome,
        Err(TaskError::BadRequest { .. })
    ));
    for (i, handle) in handles.into_iter().enumerate() {
        let i = i as i64;
        let value: i64 = htex_client::decode_value(&handle.await.unwrap()).unwrap();
        assert_eq!(value, i + 1);
    }
    // The panic (and every other error) killed no worker: the same two processes serve on.
    let after = worker_pids(&client, 2).await;
    assert_eq!(after, before, "workers were restarted");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_and_timeouts_end_with_their_own_errors() {
    let cluster = TestCluster::start(test_worker!(), 1, 2).await;
    let client = cluster.client().await;
    let empty = client.submit(Task::command(Vec::<String>::new()));
    assert!(matches!(
        empty.await.unwrap().outcome,
        Err(TaskError::BadRequest { .. })
    ));
    let slow = client
        .submit(Task::command(["sleep", "30"]).timeout(std::time::Duration::from_millis(300)));
    let started = std::time::Instant::now();
    match slow.await.unwrap().outcome {
        Err(TaskError::Timeout { after_ms }) => assert_eq!(after_ms, 300),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let after = client
        .submit(Task::command(["echo", "still here"]))
        .await
        .unwrap();
    assert!(matches!(after.outcome, Ok(TaskOutput::Command(_))));
    cluster.stop().await;
}
