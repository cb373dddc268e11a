//! pnlb-dataplane: the XDP program and everything that touches it.
//!
//! - [`abi`]: the map key/value types, generated from `bpf/include/pnlb_abi.h`;
//! - [`loader`]: load the program, attach it to interfaces, detach on drop;
//! - [`conntrack`]: expire idle connections by state (and free SNAT ports);
//! - [`decap`]: the real-server side of tun (`pnlb decap`);
//! - [`programmer`]: turn validated config into map contents, and diff on reload;
//! - [`netdev`]: what a device offers XDP (driver, XDP features, offloads);
//! - [`nexthop`]: find the MAC and interface each backend is reached through;
//! - [`pinning`]: a data plane that outlives its daemon (bpffs pins, adoption);
//! - [`netwatch`]: neighbour, route and link events, and neighbour re-verification;
//! - [`rtnetlink`]: the kernel's route, neighbour, link and address tables, asked in process;
//! - [`stats`]: read the per-CPU counters;
//! - [`sync`]: flows in and out, for failover sync;
//! - [`vlan`]: the VLAN devices replies may be routed out of;
//! - [`prog_stats`]: the kernel's CPU-time accounting of BPF programs (benchmarks);
//! - [`xdp_pass`]: the pass-everything program veth peers need;
//! - [`xdp_ceiling`]: the benchmark's minimal XDP_TX forwarder.

pub mod abi;
pub mod address_filter;
mod batch;
pub mod checksum;
pub mod conntrack;
pub mod decap;
pub mod grace;
pub mod inspect;
pub mod last_known;
pub mod loader;
mod mapped;
pub mod memory;
pub mod netdev;
pub mod netwatch;
pub mod nexthop;
pub mod nodes;
pub mod own_macs;
pub mod pinning;
pub mod prog_stats;
pub mod programmer;
pub mod rtnetlink;
pub mod run_times;
pub mod service_copies;
pub mod stats;
pub mod sync;
pub mod vlan;
pub mod xdp_ceiling;
pub mod xdp_pass;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/lb.skel.rs"));
}
mod pass_skel {
    include!(concat!(env!("OUT_DIR"), "/xdp_pass.skel.rs"));
}
mod decap_skel {
    include!(concat!(env!("OUT_DIR"), "/decap.skel.rs"));
}
mod ceiling_skel {
    include!(concat!(env!("OUT_DIR"), "/xdp_ceiling.skel.rs"));
}

pub use loader::{Attachment, Dataplane, DataplaneError, Limits, LoadOptions};
pub use programmer::{ApplyReport, Programmer};
