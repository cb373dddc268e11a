//! Taking over a data plane left running ([`crate::pinning`]): the slots
//! its maps give services and backends are kept, so every flow in its
//! connection table keeps its service and its backend (slot and
//! generation), and so does every counter. Services are matched to the
//! config by their listener (VIP, port, protocol); a service or backend the
//! config no longer has goes the way a reload would send it (removed, or
//! retired while its flows last). The scheduling tables are published
//! again from the config: the same config gives the same tables.

use std::collections::HashMap;

use libbpf_rs::{MapCore, MapFlags};
use pnlb_core::config::Config;

use super::{map_err, BackendSlot, Programmer, ServiceSlot};
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
        let maps = dataplane.maps();
        for key_bytes in maps.pnlb_services.keys() {
            let Some(key) = from_bytes::<ServiceKey>(&key_bytes) else {
                continue;
            };
            let value = maps
                .pnlb_services
                .lookup(&key_bytes, MapFlags::ANY)
                .map_err(map_err("pnlb_services"))?
                .and_then(|bytes| from_bytes::<abi::Service>(&bytes));
            let Some(value) = value else { continue };
            let vip = abi::ip_of(&key.vip);
            let port = u16::from_be(key.port);
            let name = config
                .services
                .iter()
                .find(|s| s.vip == vip && s.port == port && s.protocol.number() == key.protocol)
                .map_or_else(
                    || format!("(left running) {vip} port {port}/{}", key.protocol),
                    |s| s.name.clone(),
                );
            programmer.service_ids.used.insert(value.id);
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
                    snat: None,
                    translates,
                },
            );
        }

        let mut next_generation = dataplane
            .meta(abi::MetaSlot::PNLB_META_NEXT_GENERATION)
            .max(1);
        for id in 0..abi::MAX_BACKENDS {
            let live = maps
                .pnlb_live_copy
                .lookup(&id.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("pnlb_live_copy"))?
                .and_then(|bytes| bytes.try_into().ok())
                .map_or(0, u32::from_ne_bytes)
                & 1;
            programmer.slots.copies.live.insert(id, live);
            let mut present = None;
            for copy in 0..2 {
                let index = id * 2 + copy;
                let backend = maps
                    .pnlb_backends
                    .lookup(&index.to_ne_bytes(), MapFlags::ANY)
                    .map_err(map_err("pnlb_backends"))?
                    .and_then(|bytes| from_bytes::<Backend>(&bytes));
                let Some(backend) = backend else { continue };
                // No generation either copy ever held is given again.
                next_generation = next_generation.max(backend.generation.wrapping_add(1));
                if copy == live && backend.flags & BackendFlags::PNLB_BACKEND_F_PRESENT.0 as u8 != 0
                {
                    present = Some(backend);
                }
            }
            let Some(backend) = present else { continue };
            let Some(slot) = programmer
                .services
                .values_mut()
                .find(|s| s.id == backend.service_id)
            else {
                continue;
            };
            programmer.slots.backend_ids.used.insert(id);
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
        Ok(programmer)
    }

    /// How many services and backends an adoption found.
    pub fn adopted_counts(&self) -> (usize, usize) {
        let backends = self
            .services
            .values()
            .map(|s| s.backends.len() + s.retiring.len())
            .sum();
        (self.services.len(), backends)
    }
}
