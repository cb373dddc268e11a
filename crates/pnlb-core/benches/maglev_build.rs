//! How long a Maglev table build takes (65537 slots) for 10, 100 and 1000
//! backends (weights 1-4), and a small table (1031 slots) of 10. A
//! benchmark, not a test: nothing is asserted.
//! Run: cargo bench -p pnlb-core --bench maglev_build

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pnlb_core::maglev::{build, MaglevBackend, TABLE_SIZE};

fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|id| MaglevBackend {
            id,
            weight: 1 + id % 4,
            key: format!("10.{}.{}.{}:80", id >> 16, (id >> 8) & 255, id & 255).into_bytes(),
        })
        .collect()
}

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev build, 65537 slots");
    group.sample_size(20);
    for n in [10u32, 100, 1000] {
        let backends = backends(n);
        group.bench_with_input(BenchmarkId::new("backends", n), &backends, |b, backends| {
            b.iter(|| build(backends, TABLE_SIZE))
        });
    }
    group.finish();

    // A 10,000-service start's case: a small table per service, each from
    // other backends. Built from the same backends again and again, a
    // table takes a third of the time: the CPU learns the probes' branches.
    let mut group = c.benchmark_group("maglev build, 1031 slots, 10 backends");
    let pools: Vec<Vec<MaglevBackend>> = (0..1000u32)
        .map(|pool| {
            (0..10)
                .map(|i| MaglevBackend {
                    id: i,
                    weight: 1,
                    key: format!("10.201.{}.{}:{}", pool % 4, i * 20 + 1, 8000 + pool).into_bytes(),
                })
                .collect()
        })
        .collect();
    let mut next = 0;
    group.bench_function("equal weights, another pool each time", |b| {
        b.iter(|| {
            next = (next + 1) % pools.len();
            build(&pools[next], 1031)
        })
    });
    group.finish();
}

criterion_group!(benches, maglev_build);
criterion_main!(benches);
