//! Encode and decode of task and result batches, the frames that carry the throughput.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use htex_protocol::{
    decode, encode, ClientRequest, ManagerMessage, ResourceRequest, TaskKind, TaskOutput,
    TaskResult, TaskSpec, Timings, DEFAULT_MAX_FRAME_BYTES,
};

fn task(id: u64, payload: usize) -> TaskSpec {
    TaskSpec {
        id,
        kind: TaskKind::Function {
            name: "echo".into(),
            args: vec![7; payload],
        },
        resources: ResourceRequest::default(),
        priority: 0,
        timeout_ms: None,
        max_retries: 0,
        submitted_us: 1_700_000_000_000_000 + id,
    }
}

fn result(id: u64, payload: usize) -> TaskResult {
    TaskResult {
        id,
        outcome: Ok(TaskOutput::Value(vec![7; payload])),
        timings: Timings {
            started_us: 1,
            finished_us: 2,
            ..Timings::default()
        },
        slot: None,
        attempts: 1,
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for batch in [1usize, 64, 1024] {
        group.throughput(Throughput::Elements(batch as u64));
        let submit = ClientRequest::Submit((0..batch as u64).map(|i| task(i, 100)).collect());
        let frame = encode(&submit).unwrap();
        group.bench_with_input(
            BenchmarkId::new("encode_submit_100B", batch),
            &submit,
            |b, m| b.iter(|| encode(m).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("decode_submit_100B", batch),
            &frame,
            |b, f| b.iter(|| decode::<ClientRequest>(f, DEFAULT_MAX_FRAME_BYTES).unwrap()),
        );
        let results = ManagerMessage::Results((0..batch as u64).map(|i| result(i, 100)).collect());
        let frame = encode(&results).unwrap();
        group.bench_with_input(
            BenchmarkId::new("decode_results_100B", batch),
            &frame,
            |b, f| b.iter(|| decode::<ManagerMessage>(f, DEFAULT_MAX_FRAME_BYTES).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
