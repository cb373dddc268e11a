//! Flows between nodes: a flow names its service by listener and its
//! backend by address and port, because slot ids are each node's own. A
//! [`FlowNames`] is a snapshot of this node's slots in both directions,
//! which failover sync (on threads of its own) translates with while the
//! daemon loop goes on programming; the daemon publishes a new one after
//! every apply.

use std::collections::HashMap;
use std::net::IpAddr;

use super::Programmer;
use crate::abi::{bytes_of, ServiceKey};

/// (service id, backend id, backend generation) on this node.
pub type SlotIds = (u32, u32, u32);

#[derive(Clone, Debug, Default)]
pub struct FlowNames {
    by_slot: HashMap<(u32, u32), (ServiceKey, IpAddr, u16)>,
    by_name: HashMap<(Vec<u8>, IpAddr, u16), SlotIds>,
}

impl FlowNames {
    /// A flow's service (by its listener) and backend (by address and
    /// port), from this node's slot ids: what another node can resolve.
    pub fn describe(&self, service_id: u32, backend_id: u32) -> Option<(ServiceKey, IpAddr, u16)> {
        self.by_slot.get(&(service_id, backend_id)).copied()
    }

    /// The reverse of [`Self::describe`] on this node.
    pub fn resolve(&self, service: &ServiceKey, address: IpAddr, port: u16) -> Option<SlotIds> {
        self.by_name
            .get(&(bytes_of(service).to_vec(), address, port))
            .copied()
    }
}

impl Programmer {
    /// This node's slots as they are now, removed backends still in use
    /// included.
    pub fn names(&self) -> FlowNames {
        let mut names = FlowNames::default();
        for slot in self.services.values() {
            for ((address, port), backend) in slot.backends.iter().chain(slot.retiring.iter()) {
                names
                    .by_slot
                    .insert((slot.id, backend.id), (slot.key, *address, *port));
                names.by_name.insert(
                    (bytes_of(&slot.key).to_vec(), *address, *port),
                    (slot.id, backend.id, backend.value.generation),
                );
            }
        }
        names
    }
}
