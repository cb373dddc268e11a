//! Taking over a data plane left running ([`crate::pinning`]): the slots
//! its maps give services and backends are kept, so every flow in its
//! connection table keeps its service and its backend (slot and
//! generation), and so does every counter. Services are matched to the
//! config by their listener (VIP, port, protocol); a service or backend the
//! config no longer has goes the way a reload would send it (removed, or
//! retired while its flows last). The scheduling tables are published
//! again from the config: the same config gives the same tables.

use std::collections::HashMap;

use pnlb_core::config::Config;

use super::{BackendSlot, Programmer, ServiceSlot};
use crate::abi::{self, from_bytes, Backend, BackendFlags, ServiceKey};
use crate::loader::{Dataplane, DataplaneError};

impl Programmer {
    /// The programmer for `dataplane`: empty for a fresh one, rebuilt from
    /// the maps for one adopted ([`Dataplane::adopted`]).
    pub fn adopt(dataplane: &Dataplane, config: &Config) -> Result<Self, DataplaneError> {
        let mut programmer = Programmer::new();
        if !dataplane.adopted() {
            return Ok(programmer);
        }
        programmer.service_ids.none_fresh();
        programmer.slots.backend_ids.none_fresh();
        // Its program, until ours replaces it, may be of an earlier build.
        programmer.slots.grace.set_earlier_program(true);
        programmer.access = super::access::AccessRules::adopt(dataplane);
        let maps = dataplane.maps();
        let by_listener: HashMap<(std::net::IpAddr, u16, u8), &str> = config
            .services
            .iter()
            .map(|s| ((s.vip, s.port, s.protocol.number()), s.name.as_str()))
            .collect();
        let mut services = crate::batch::entries(&maps.pnlb_services, 1024);
        for (key_bytes, value_bytes) in services.by_ref() {
            let (Some(key), Some(value)) = (
                from_bytes::<ServiceKey>(&key_bytes),
                from_bytes::<abi::Service>(&value_bytes),
            ) else {
                continue;
            };
            let vip = abi::ip_of(&key.vip);
            let port = u16::from_be(key.port);
            let name = by_listener.get(&(vip, port, key.protocol)).map_or_else(
                || format!("(left running) {vip} port {port}/{}", key.protocol),
                |name| name.to_string(),
            );
            programmer.service_ids.claim(value.id);
            let translates = value.method == abi::Method::PNLB_METHOD_NAT.0 as u8
                || value.method == abi::Method::PNLB_METHOD_SNAT.0 as u8;
            programmer.services.insert(
                name,
                ServiceSlot {
                    id: value.id,
                    key,
                    vip,
                    value,
                    backends: HashMap::new(),
                    retiring: HashMap::new(),
                    table_version: 0,
                    table: Vec::new(),
                    table_inputs: None,
                    applied: None,
                    snat: None,
                    translates,
                },
            );
        }
        read_whole("pnlb_services", &services)?;
        // Before anything else reads them (docs/conntrack.md, "A flow's
        // service").
        let by_id: crate::service_copies::ServicesById = programmer
            .services
            .values()
            .map(|slot| (slot.id, (slot.key, slot.value)))
            .collect();
        dataplane.service_copies.rewrite_all(&by_id);

        let mut next_generation = dataplane
            .meta(abi::MetaSlot::PNLB_META_NEXT_GENERATION)
            .max(1);
        // Whole arrays in batches: hundreds of thousands of slots would
        // take a lookup each, and a scan of the services each.
        let mut live_copy = vec![0u32; dataplane.limits().backends as usize];
        let mut copies = crate::batch::entries(&maps.pnlb_live_copy, 4096);
        for (key, value) in copies.by_ref() {
            if let (Some(id), Some(live)) = (from_bytes::<u32>(&key), from_bytes::<u32>(&value)) {
                if let Some(slot) = live_copy.get_mut(id as usize) {
                    *slot = live & 1;
                }
            }
        }
        read_whole("pnlb_live_copy", &copies)?;
        let mut present: HashMap<u32, Backend> = HashMap::new();
        let mut backends = crate::batch::entries(&maps.pnlb_backends, 4096);
        for (key, value) in backends.by_ref() {
            let (Some(index), Some(backend)) =
                (from_bytes::<u32>(&key), from_bytes::<Backend>(&value))
            else {
                continue;
            };
            // No generation either copy ever held is given again.
            next_generation = next_generation.max(backend.generation.wrapping_add(1));
            let id = index / 2;
            let live = live_copy.get(id as usize).copied().unwrap_or(0);
            if index % 2 == live
                && backend.flags & BackendFlags::PNLB_BACKEND_F_PRESENT.0 as u8 != 0
            {
                present.insert(id, backend);
            }
        }
        read_whole("pnlb_backends", &backends)?;
        for (id, live) in live_copy.iter().enumerate() {
            programmer.slots.copies.live.insert(id as u32, *live);
        }
        let names: HashMap<u32, String> = programmer
            .services
            .iter()
            .map(|(name, slot)| (slot.id, name.clone()))
            .collect();
        let mut present: Vec<(u32, Backend)> = present.into_iter().collect();
        present.sort_unstable_by_key(|(id, _)| *id);
        for (id, backend) in present {
            let Some(slot) = names
                .get(&backend.service_id)
                .and_then(|name| programmer.services.get_mut(name))
            else {
                continue;
            };
            programmer.slots.backend_ids.claim(id);
            slot.backends.insert(
                (abi::ip_of(&backend.addr), u16::from_be(backend.port)),
                BackendSlot {
                    id,
                    value: backend,
                    reachable: true,
                    problem: None,
                },
            );
        }
        programmer.slots.next_generation = next_generation;
        programmer.slots.persisted_generation = next_generation;
        Ok(programmer)
    }
}

/// An adoption must see every entry: a walk cut short is an error.
fn read_whole(map: &'static str, walk: &crate::batch::Entries<'_>) -> Result<(), DataplaneError> {
    match walk.error() {
        None => Ok(()),
        Some(err) => Err(DataplaneError::Map {
            map,
            source: libbpf_rs::Error::from(err),
        }),
    }
}
