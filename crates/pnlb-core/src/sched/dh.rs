//! Destination hashing (IPVS `dh`): flows to one destination (a port-0
//! service's traffic to one origin, a cache key) land on one backend. Like
//! [`super::sh`], the weighted Maglev table, keyed by the destination.

use super::maglev_sched::TableHash;

/// Destination hashing is Maglev over the destination (`hash_key = "destination"`).
pub type DestinationHash = TableHash;
