//! One new-flow pick by each scheduler's reference implementation (the
//! algorithms the data plane's tables and scans follow), over 8 and 64
//! backends with mixed weights and loads. A benchmark, not a test.
//! Run: cargo bench -p pnlb-core --bench scheduler_pick
//! (The data plane's own per-new-flow cost, per scheduler, is in
//! pnlb-dataplane's `xdp` benchmark.)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pnlb_core::maglev::TABLE_SIZE;
use pnlb_core::sched::chbl::BoundedLoad;
use pnlb_core::sched::lc::LeastConnection;
use pnlb_core::sched::maglev_sched::TableHash;
use pnlb_core::sched::nq::NeverQueue;
use pnlb_core::sched::p2c::PowerOfTwoChoices;
use pnlb_core::sched::rr::RoundRobin;
use pnlb_core::sched::sed::ShortestExpectedDelay;
use pnlb_core::sched::wlc::WeightedLeastConnection;
use pnlb_core::sched::wrr::WeightedRoundRobin;
use pnlb_core::sched::{BackendLoad, FlowInput, Scheduler};

fn loads(n: usize) -> Vec<BackendLoad> {
    (0..n)
        .map(|i| BackendLoad {
            weight: 1 + (i as u32 % 4),
            active: (i as u32 * 7) % 50,
            inactive: (i as u32 * 13) % 30,
            max_conns: None,
        })
        .collect()
}

fn schedulers(backends: &[BackendLoad]) -> Vec<(&'static str, Box<dyn Scheduler>)> {
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    let keys: Vec<Vec<u8>> = (0..backends.len())
        .map(|i| format!("10.0.0.{i}:80").into_bytes())
        .collect();
    let table = || TableHash::new(&weights, &keys, TABLE_SIZE);
    vec![
        ("rr", Box::new(RoundRobin::default())),
        ("wrr", Box::new(WeightedRoundRobin::new(&weights))),
        ("lc", Box::new(LeastConnection)),
        ("wlc", Box::new(WeightedLeastConnection)),
        ("sed", Box::new(ShortestExpectedDelay)),
        ("nq", Box::new(NeverQueue)),
        ("p2c", Box::new(PowerOfTwoChoices)),
        ("maglev / sh / dh", Box::new(table())),
        ("chbl", Box::new(BoundedLoad::new(table(), 0.25))),
    ]
}

fn scheduler_pick(c: &mut Criterion) {
    for n in [8usize, 64] {
        let backends = loads(n);
        let mut group = c.benchmark_group(format!("pick, {n} backends"));
        for (name, mut scheduler) in schedulers(&backends) {
            let mut flow = FlowInput::default();
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    flow.hash = flow.hash.wrapping_mul(2_654_435_761).wrapping_add(1);
                    flow.random = flow.hash.rotate_left(13);
                    scheduler.pick(&backends, flow)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, scheduler_pick);
criterion_main!(benches);
