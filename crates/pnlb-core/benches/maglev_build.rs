//! How long a Maglev table build takes (65537 slots) for 10, 100 and 1000
//! backends. A benchmark, not a test: nothing is asserted.
//! Run: cargo bench -p pnlb-core --bench maglev_build

use std::time::Instant;

use pnlb_core::maglev::{build, MaglevBackend, TABLE_SIZE};

fn main() {
    for n in [10u32, 100, 1000] {
        let backends: Vec<MaglevBackend> = (0..n)
            .map(|id| MaglevBackend {
                id,
                weight: 1 + id % 4,
                key: format!("10.{}.{}.{}:80", id >> 16, (id >> 8) & 255, id & 255).into_bytes(),
            })
            .collect();
        let rounds = 20;
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let start = Instant::now();
            let table = build(&backends, TABLE_SIZE);
            times.push(start.elapsed());
            std::hint::black_box(table);
        }
        times.sort();
        println!(
            "maglev build, {TABLE_SIZE} slots, {n:>4} backends: median {:?}, min {:?}, max {:?} ({rounds} rounds)",
            times[rounds / 2],
            times[0],
            times[rounds - 1]
        );
    }
}
