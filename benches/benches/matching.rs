//! Task-to-slot matching: how fast a task's resource request is checked against a node's slots.

use criterion::{criterion_group, criterion_main, Criterion};
use htex_protocol::{ResourceRequest, SlotDescriptor, SlotKind};

/// A GPU node: 4 whole GPUs, 8 MPS slots, 7 MIG instances, 16 CPU slots.
fn node() -> Vec<SlotDescriptor> {
    let mut slots = Vec::new();
    let mut add = |kind, pct: Option<u8>, sm: Option<u32>, mem: Option<u64>, mig: Option<&str>| {
        let index = slots.len() as u32;
        slots.push(SlotDescriptor {
            kind,
            gpu_uuid: (kind != SlotKind::Cpu).then(|| format!("GPU-{index:08}")),
            mps_percentage: pct,
            sm_count: sm,
            memory_bytes: mem,
            mig_profile: mig.map(str::to_string),
            ..SlotDescriptor::cpu(index)
        });
    };
    (0..4).for_each(|_| add(SlotKind::Gpu, None, Some(132), Some(80 << 30), None));
    (0..8).for_each(|i| {
        add(
            SlotKind::Mps,
            Some(if i % 2 == 0 { 50 } else { 25 }),
            Some(33),
            Some(20 << 30),
            None,
        )
    });
    (0..7).for_each(|_| {
        add(
            SlotKind::Mig,
            None,
            Some(16),
            Some(10 << 30),
            Some("1g.10gb"),
        )
    });
    (0..16).for_each(|_| add(SlotKind::Cpu, None, None, None, None));
    slots
}

fn matching(c: &mut Criterion) {
    let slots = node();
    let requests = [
        ("any", ResourceRequest::default()),
        (
            "cpu_only",
            ResourceRequest {
                cpu_only: true,
                ..Default::default()
            },
        ),
        (
            "mps_50",
            ResourceRequest {
                min_mps_percentage: Some(50),
                ..Default::default()
            },
        ),
        (
            "mig_1g",
            ResourceRequest {
                mig_profile: Some("1g.10gb".into()),
                ..Default::default()
            },
        ),
        (
            "impossible",
            ResourceRequest {
                min_gpu_memory_bytes: Some(1 << 50),
                ..Default::default()
            },
        ),
    ];
    let mut group = c.benchmark_group("matching");
    for (name, request) in &requests {
        group.bench_function(*name, |b| {
            b.iter(|| slots.iter().position(|s| s.satisfies(request)))
        });
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
