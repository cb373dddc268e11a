//! What a config's data plane takes of the kernel's memory, estimated from
//! the map sizes it asks for (`pnlb check` prints it): the connection
//! tables, the scheduling tables and the per-CPU counters are what grow.
//! The kernel allocates all of it when the program loads (hash maps are
//! preallocated), whether or not it fills.

use pnlb_core::config::Config;

use crate::abi::{self, Backend, BackendStats, Conn, FlowKey, ServiceStats};
use crate::loader::{Limits, TableSizes};

/// Bytes, by what takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The established and new-flow tables and the snat rest map.
    pub connections: u64,
    /// Every service's scheduling table.
    pub tables: u64,
    /// Counters kept per CPU (services, backends), all CPUs together.
    pub per_cpu: u64,
    /// Everything else (backends, small maps, the sync ring).
    pub other: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.connections + self.tables + self.per_cpu + self.other
    }

    /// One line a person can act on.
    pub fn describe(&self, cpus: usize) -> String {
        let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        format!(
            "the data plane takes about {:.0} MB of kernel memory: connection tables {:.0} MB (daemon.conn_table_size), scheduling tables {:.0} MB (table_size per service), per-CPU counters {:.0} MB ({cpus} CPUs; max_services, max_backends), the rest {:.0} MB",
            mb(self.total()),
            mb(self.connections),
            mb(self.tables),
            mb(self.per_cpu),
            mb(self.other)
        )
    }
}

/// A preallocated hash map's element: the kernel's header, key and value.
fn hash_element(key: usize, value: usize) -> u64 {
    const HEADER: usize = 48;
    (HEADER + key.next_multiple_of(8) + value.next_multiple_of(8)) as u64
}

/// A hash map of `entries`: its elements and its buckets.
fn hash_map(entries: u32, key: usize, value: usize) -> u64 {
    const BUCKET: u64 = 16;
    u64::from(entries) * hash_element(key, value) + u64::from(entries.next_power_of_two()) * BUCKET
}

/// The CPUs per-CPU maps keep a value for (the kernel's possible CPUs).
pub fn possible_cpus() -> usize {
    libbpf_rs::num_possible_cpus().unwrap_or(1)
}

/// An estimate for `config` on a machine of `cpus` CPUs.
pub fn estimate(config: &Config, cpus: usize) -> MemoryEstimate {
    let sizes = TableSizes::for_size(config.daemon.conn_table_size);
    let limits = Limits::of(&config.daemon);
    let (key, conn) = (size_of::<FlowKey>(), size_of::<Conn>());
    let connections = hash_map(sizes.established, key, conn)
        + hash_map(sizes.new, key, conn)
        + hash_map(sizes.snat_rest, key, size_of::<u64>());
    // Array elements are 8 bytes each (values round up to 8), after a
    // header of lengths and, for chbl, a list of backends.
    let tables = config
        .services
        .iter()
        .map(|service| {
            let slots = if service.scheduler.hashes() {
                service.table_size as usize + service.backends.len()
            } else {
                service.backends.len()
            };
            (crate::abi::TABLE_HEADER as usize + slots) as u64 * 8
        })
        .sum::<u64>()
        + spare_tables(config, &limits);
    // Access rules' hit counters: one per possible rule, per CPU.
    let access_hits = u64::from(abi::AccessLimits::PNLB_MAX_ACCESS_RULES.0) * 8;
    let per_cpu = (u64::from(limits.services) * size_of::<ServiceStats>() as u64
        + u64::from(limits.backends) * size_of::<BackendStats>() as u64
        + access_hits)
        * cpus as u64;
    const SYNC_RING: u64 = 4 << 20;
    // The per-source new-flow clocks (an LRU, preallocated); the access
    // rules' trie allocates per rule, next to nothing.
    let source_rates = hash_map(
        abi::SourceLimits::PNLB_MAX_METERED_SOURCES.0,
        size_of::<abi::SourceKey>(),
        size_of::<u64>(),
    );
    // The two address filters, 64 bits a word.
    let address_filters = 2 * crate::address_filter::WORDS as u64 * 8;
    // Two copies of each service by id, and their selectors.
    let service_copies =
        u64::from(limits.services) * (2 * size_of::<abi::ServiceCopy>() as u64 + 8);
    let other = u64::from(limits.backends) * 2 * size_of::<Backend>() as u64
        + service_copies
        + SYNC_RING
        + source_rates
        + address_filters;
    MemoryEstimate {
        connections,
        tables,
        per_cpu,
        other,
    }
}

/// The full-size closed tables kept ahead at the next free service slots
/// (programmer/spare_tables.rs), as many as fit under max_services.
fn spare_tables(config: &Config, limits: &Limits) -> u64 {
    let free = limits.services.saturating_sub(config.services.len() as u32);
    u64::from(crate::programmer::SPARE_TABLES.min(free)) * u64::from(abi::TABLE_CAPACITY) * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_daemon: &str, service: &str) -> Config {
        let text = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\n{extra_daemon}\n[[service]]\nname = \"web\"\nvip = \"10.77.100.1\"\nport = 80\n{service}\n[[service.backend]]\naddress = \"10.77.1.11\"\n"
        );
        pnlb_core::config::parse(std::path::Path::new("lb.toml"), &text).expect("valid")
    }

    #[test]
    fn the_estimate_follows_what_the_config_sizes() {
        let default = estimate(&config("", ""), 2);
        // 262,144 established entries of ~184 bytes, a quarter more new,
        // and the rest map: 60-90 MB.
        assert!(
            (60 << 20..90 << 20).contains(&default.connections),
            "{default:?}"
        );
        // One Maglev table of 65,537 slots (about 512 KiB), and two
        // spares of the full capacity.
        let spares = 2 * u64::from(abi::TABLE_CAPACITY) * 8;
        assert_eq!(default.tables, (2 + 65_537 + 1) * 8 + spares);
        let small = estimate(&config("", "table_size = 1031"), 2);
        assert_eq!(small.tables, (2 + 1031 + 1) * 8 + spares);
        let rr = estimate(&config("", "scheduler = \"rr\""), 2);
        assert_eq!(
            rr.tables,
            (2 + 1) * 8 + spares,
            "a list, not a Maglev table"
        );
        let full = estimate(&config("max_services = 1", "scheduler = \"rr\""), 2);
        assert_eq!(full.tables, (2 + 1) * 8, "no slot left for a spare");
        let big = estimate(&config("conn_table_size = 1048576", ""), 2);
        assert!(big.connections > 3 * default.connections);
        let more_cpus = estimate(&config("", ""), 64);
        assert_eq!(more_cpus.per_cpu, default.per_cpu * 32);
        println!("{}", default.describe(2));
        assert!(default.describe(2).contains("kernel memory"));
    }
}
