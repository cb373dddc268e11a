//! Step 1 of applying a service: its backends. Removed ones retire (keep
//! their slot while flows use them), new ones get a slot and a fresh
//! generation, and every entry is rewritten when its next hop changes.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use libbpf_rs::{MapCore, MapFlags};
use pnlb_core::config::{Encap, Method, Service as ServiceConfig};

use super::{map_err, zero_percpu, ApplyReport, BackendSlot, ServiceSlot, Slots, Taken};
use crate::abi::{self, bytes_of, Backend, BackendFlags, BackendStats};
use crate::grace::Element;
use crate::loader::{Dataplane, DataplaneError};
use crate::nexthop::{NextHop, Resolution};

/// Which of each backend slot's two copies packets read (see
/// [`crate::grace`]): the other one is the next to write.
#[derive(Default)]
pub(super) struct BackendCopies {
    pub(super) live: HashMap<u32, u32>,
}

impl Slots {
    /// Writes backend slot `id`: the spare copy, then the selector, so a
    /// packet reads the old entry or the new, never a mix. A slot never
    /// used before that no table names yet is written in place, and not
    /// at once: no packet reads it, so its entry waits for
    /// [`Self::write_unpublished`], in one system call with the others.
    pub(super) fn write_backend(
        &mut self,
        dataplane: &Dataplane,
        id: u32,
        value: &Backend,
    ) -> Result<(), DataplaneError> {
        if self.unpublished.contains(&id) {
            let index = id * 2 + self.copies.live.get(&id).copied().unwrap_or(0);
            self.unwritten.push((index, *value));
            return Ok(());
        }
        let spare = self.copies.live.get(&id).copied().unwrap_or(0) ^ 1;
        self.grace.before_rewrite(Element::BackendSpare(id));
        let maps = dataplane.maps();
        let index = id * 2 + spare;
        maps.pnlb_backends
            .update(&index.to_ne_bytes(), bytes_of(value), MapFlags::ANY)
            .map_err(map_err("pnlb_backends"))?;
        maps.pnlb_live_copy
            .update(&id.to_ne_bytes(), &spare.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("pnlb_live_copy"))?;
        self.copies.live.insert(id, spare);
        Ok(())
    }

    /// Writes the entries of the slots no table names yet, all in one
    /// batch (a start of 10,000 services of ten backends made 100,000
    /// updates of one entry each); then tables may name them. Before any
    /// table that names one is published. An entry the batch failed to
    /// write stays to write, and its slot unpublished.
    pub(super) fn write_unpublished(
        &mut self,
        dataplane: &Dataplane,
    ) -> Result<(), DataplaneError> {
        if !self.unwritten.is_empty() {
            let map = &dataplane.maps().pnlb_backends;
            let keys: Vec<u8> = self
                .unwritten
                .iter()
                .flat_map(|(index, _)| index.to_ne_bytes())
                .collect();
            let values: Vec<u8> = self
                .unwritten
                .iter()
                .flat_map(|(_, value)| bytes_of(value).iter().copied())
                .collect();
            crate::batch::update_all(map, &keys, &values, self.unwritten.len())
                .map_err(map_err("pnlb_backends"))?;
            self.unwritten.clear();
        }
        self.unpublished.clear();
        Ok(())
    }

    /// Persists the next backend generation in a pinned data plane, so a
    /// process that adopts it never gives a generation again (adoption
    /// also takes the highest it finds in the backends). Once per apply,
    /// before any new backend is in a published table.
    pub(super) fn persist_generation(
        &mut self,
        dataplane: &Dataplane,
    ) -> Result<(), DataplaneError> {
        if dataplane.pin_dir().is_none() || self.persisted_generation == self.next_generation {
            return Ok(());
        }
        dataplane.set_meta(
            abi::MetaSlot::PNLB_META_NEXT_GENERATION,
            self.next_generation,
        )?;
        self.persisted_generation = self.next_generation;
        Ok(())
    }

    /// Empties a slot: flows pinned to it find no backend.
    pub(super) fn clear_backend(
        &mut self,
        dataplane: &Dataplane,
        id: u32,
    ) -> Result<(), DataplaneError> {
        self.write_backend(dataplane, id, &Backend::default())
    }

    /// A slot for a new backend, its counters zeroed, with a generation no
    /// earlier occupant had.
    fn new_backend_slot(&mut self, dataplane: &Dataplane) -> Result<BackendSlot, DataplaneError> {
        let maps = dataplane.maps();
        let Taken { id, fresh } = self
            .backend_ids
            .take_or_full(dataplane.limits().backends, "backends")?;
        if fresh {
            self.unpublished.insert(id);
        } else {
            zero_percpu::<BackendStats>(&maps.pnlb_backend_stats, id, "pnlb_backend_stats")?;
            // A reused slot starts with no connections counted.
            for (map, name) in [
                (&maps.pnlb_backend_conns, "pnlb_backend_conns"),
                (&maps.pnlb_backend_load, "pnlb_backend_load"),
            ] {
                let zero = vec![0u8; map.value_size() as usize];
                map.update(&id.to_ne_bytes(), &zero, MapFlags::ANY)
                    .map_err(map_err(name))?;
            }
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        Ok(BackendSlot {
            id,
            value: Backend {
                generation,
                ..Backend::default()
            },
            reachable: false,
            problem: None,
        })
    }

    /// Gives every configured backend a slot and writes what changed;
    /// each backend added is reported when `report_added` (not for a new
    /// service, whose line counts them).
    pub(super) fn apply_backends(
        &mut self,
        dataplane: &Dataplane,
        slot: &mut ServiceSlot,
        config: &ServiceConfig,
        resolution: &Resolution,
        report_added: bool,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        for backend in &config.backends {
            let key = (backend.address, backend.port);
            if let Some(returning) = slot.retiring.remove(&key) {
                slot.backends.insert(key, returning);
            }
            let entry = match slot.backends.entry(key) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let fresh = self.new_backend_slot(dataplane)?;
                    if report_added {
                        report.changes.push(format!(
                            "service {}: backend {}:{} weight {} added",
                            config.name, backend.address, backend.port, backend.weight
                        ));
                    }
                    e.insert(fresh)
                }
            };
            let resolved = usable_for(config, backend.address, resolution);
            let mut value = Backend {
                addr: abi::addr(backend.address),
                port: backend.port.to_be(),
                flags: BackendFlags::PNLB_BACKEND_F_PRESENT.0 as u8,
                generation: entry.value.generation,
                weight: backend.weight,
                max_conns: backend.max_conns.unwrap_or(0),
                service_id: slot.id,
                ..Backend::default()
            };
            if let Some(tunnel) = &config.tunnel {
                let (encap, gue_port) = match tunnel.encap {
                    Encap::Ipip => (abi::Encap::PNLB_ENCAP_IPIP, 0),
                    Encap::Gue { port } => (abi::Encap::PNLB_ENCAP_GUE, port),
                };
                value.encap = encap.0 as u8;
                value.gue_port = gue_port.to_be();
                if tunnel.source.is_some() {
                    value.tun_src_entropy_bits = tunnel.source_entropy_bits;
                }
            }
            match &resolved {
                Ok(hop) => {
                    value.ifindex = hop.ifindex;
                    value.vlan = hop.vlan;
                    value.mac = hop.mac;
                    value.src_mac = hop.src_mac;
                    if let Some(tunnel) = &config.tunnel {
                        // usable_for made sure there is one.
                        if let Some(source) = tunnel.source.or(hop.source) {
                            value.tun_src = abi::addr(source);
                        }
                    }
                    if entry.problem.take().is_some() {
                        report.changes.push(format!(
                            "service {}: backend {} is reachable again",
                            config.name, backend.address
                        ));
                    }
                }
                Err(problem) => {
                    // Keep the last known next hop: established flows go on
                    // while the neighbour is re-learned.
                    value.ifindex = entry.value.ifindex;
                    value.vlan = entry.value.vlan;
                    value.mac = entry.value.mac;
                    value.src_mac = entry.value.src_mac;
                    value.tun_src = entry.value.tun_src;
                    if entry.problem.as_deref() != Some(problem.as_str()) {
                        report.problems.push(format!(
                            "service {}: backend {} gets no new flows: {problem}",
                            config.name, backend.address
                        ));
                        entry.problem = Some(problem.clone());
                    }
                }
            }
            entry.reachable = resolved.is_ok();
            if bytes_of(&value) != bytes_of(&entry.value) {
                self.write_backend(dataplane, entry.id, &value)?;
                entry.value = value;
            }
        }
        Ok(())
    }
}

/// Moves backends no longer configured to the service's retiring set.
pub(super) fn retire_removed(
    dataplane: &Dataplane,
    slot: &mut ServiceSlot,
    config: &ServiceConfig,
    report: &mut ApplyReport,
) {
    let removed: Vec<(IpAddr, u16)> = slot
        .backends
        .keys()
        .filter(|key| !config.backends.iter().any(|b| (b.address, b.port) == **key))
        .copied()
        .collect();
    for key in removed {
        if let Some(backend) = slot.backends.remove(&key) {
            let (active, inactive) = dataplane.backend_load(backend.id).unwrap_or((0, 0));
            report.changes.push(format!(
                "service {}: backend {} removed; its {} connection(s) continue until they end",
                config.name,
                SocketAddr::new(key.0, key.1),
                active + inactive
            ));
            slot.retiring.insert(key, backend);
        }
    }
}

fn usable_for(
    service: &ServiceConfig,
    address: IpAddr,
    resolution: &Resolution,
) -> Result<NextHop, String> {
    let hop = resolution
        .get(&address)
        .cloned()
        .unwrap_or_else(|| Err(format!("{address} was not resolved")))?;
    match (service.method, hop.gateway) {
        (Method::Dr, Some(gateway)) => Err(format!(
            "it is reached through router {gateway}; direct routing needs backends on the load balancer's own L2 segment (method = \"tun\" reaches routed backends)"
        )),
        (Method::Tun, _)
            if service.tunnel.and_then(|t| t.source).is_none() && hop.source.is_none() =>
        {
            Err(format!(
                "the route to {address} names no source address for the tunnel; set tunnel_source on the service"
            ))
        }
        _ => Ok(hop),
    }
}
