//! Per-packet run times of the XDP program, from a build with the
//! `run-times` feature (bpf/lb.bpf.c, PNLB_RUN_TIMES): a histogram in
//! power-of-two buckets of nanoseconds, read from the map of a running
//! data plane, so that `pnlb-lab bench` can tell the spread of the
//! program's own cost from the rest of the path's.

use libbpf_rs::query::MapInfoIter;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

/// Bucket b counts run times in [2^b, 2^(b+1)) ns.
pub const BUCKETS: usize = 32;
const MAP: &str = "pnlb_run_times";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTimes(pub [u64; BUCKETS]);

impl RunTimes {
    /// The id of the newest such map loaded on this machine (by its name:
    /// the daemon's pins live in its own mount namespace); None unless a
    /// `run-times` build runs.
    pub fn newest_map() -> Option<u32> {
        MapInfoIter::default()
            .filter(|info| info.name.to_str() == Some(MAP))
            .map(|info| info.id)
            .max()
    }

    /// The histogram in map `id`, summed over CPUs.
    pub fn read(id: u32) -> Option<Self> {
        let map = MapHandle::from_map_id(id).ok()?;
        let mut counts = [0u64; BUCKETS];
        for (bucket, count) in counts.iter_mut().enumerate() {
            let key = (bucket as u32).to_ne_bytes();
            let per_cpu = map.lookup_percpu(&key, MapFlags::ANY).ok()??;
            *count = per_cpu
                .iter()
                .filter_map(|value| value.get(..8)?.try_into().ok())
                .map(u64::from_ne_bytes)
                .sum();
        }
        Some(Self(counts))
    }

    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        let mut counts = self.0;
        for (count, before) in counts.iter_mut().zip(earlier.0) {
            *count = count.saturating_sub(before);
        }
        Self(counts)
    }

    pub fn packets(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The upper bound in ns of the bucket that holds quantile `q` (0..=1)
    /// of the packets: "at most this"; None without packets.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let packets = self.packets();
        if packets == 0 {
            return None;
        }
        let rank = ((packets as f64 * q.clamp(0.0, 1.0)).ceil() as u64).max(1);
        let mut seen = 0;
        self.0.iter().enumerate().find_map(|(bucket, count)| {
            seen += count;
            (seen >= rank).then_some(2u64 << bucket)
        })
    }

    /// Packets that took `ns` or more (counted by whole buckets from the
    /// one `ns` falls in).
    pub fn at_least(&self, ns: u64) -> u64 {
        let from = (u64::BITS - ns.max(1).leading_zeros() - 1) as usize;
        self.0.iter().skip(from).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut counts = [0u64; BUCKETS];
        counts[7] = 90; // 128..256 ns
        counts[9] = 9; // 512..1024 ns
        counts[14] = 1; // 16..32 us
        let times = RunTimes(counts);
        assert_eq!(times.packets(), 100);
        assert_eq!(times.quantile_ns(0.5), Some(256));
        assert_eq!(times.quantile_ns(0.9), Some(256));
        assert_eq!(times.quantile_ns(0.95), Some(1024));
        assert_eq!(times.quantile_ns(1.0), Some(32_768));
        assert_eq!(times.at_least(16_384), 1);
        assert_eq!(times.at_least(300), 10);
        assert_eq!(RunTimes::default().quantile_ns(0.5), None);
        let later = RunTimes([1; BUCKETS]);
        assert_eq!(later.since(&times).0[7], 0);
        assert_eq!(later.since(&times).0[0], 1);
    }
}
