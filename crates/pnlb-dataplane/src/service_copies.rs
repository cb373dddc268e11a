//! The services by id (pnlb_service_copies, pnlb_service_live_copy): an
//! established flow's packets read their service here, through their
//! entry's service_id, instead of hashing their listener. The programmer
//! mirrors every write and removal of a pnlb_services entry here. As a
//! backend slot, an id has two copies and a selector: the spare copy is
//! written, then the selector flips, and that copy is written again only
//! after a grace period ([`crate::grace`]), so a packet reads the old
//! service or the new, never a mix. Both maps are written through shared
//! mappings, not a syscall per write.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{bytes_of, from_bytes, Service, ServiceCopy, ServiceKey};
use crate::grace::{wait_for_readers, Element, Grace};
use crate::loader::{Dataplane, DataplaneError};
use crate::mapped::{Mapped, ELEMENT};

/// A copy's 8-byte array elements (the value is 64 bytes).
const COPY_ELEMENTS: usize = size_of::<ServiceCopy>() / ELEMENT;

/// The element of a copy whose first four bytes are its listener's port,
/// protocol and padding (after the 16-byte VIP).
const LISTENER_PORT_ELEMENT: usize = offset_of!(ServiceCopy, key.port) / ELEMENT;
const _: () = assert!(offset_of!(ServiceCopy, key.port) % ELEMENT == 0);
const _: () =
    assert!(offset_of!(ServiceCopy, key.protocol) == offset_of!(ServiceCopy, key.port) + 2);

pub(crate) struct ServiceCopies {
    copies: Mapped,
    live: Mapped,
}

impl ServiceCopies {
    /// The two maps of a data plane made for `services` ids, mapped.
    pub(crate) fn map(
        copies: &impl AsFd,
        live: &impl AsFd,
        services: u32,
    ) -> std::io::Result<Self> {
        let services = services as usize;
        Ok(Self {
            copies: Mapped::new(copies.as_fd(), 2 * services * COPY_ELEMENTS)?,
            live: Mapped::new(live.as_fd(), services)?,
        })
    }

    /// Makes `id` read as (`key`, `service`).
    pub(crate) fn write(&self, grace: &mut Grace, id: u32, key: &ServiceKey, service: &Service) {
        grace.before_rewrite(Element::ServiceSpare(id));
        self.flip(id, key, service);
    }

    /// Makes `id` read as no service (its service left, or moved to
    /// another listener): packets of its flows look their listener up. In
    /// place, without waiting: one atomic store zeroes the live copy's
    /// port and protocol, so a packet reads the copy whole as it was (the
    /// rest is untouched) or as of no listener. The other copy keeps its
    /// grace period for the id's next write.
    pub(crate) fn clear(&self, id: u32) {
        let live = self.live.u32_at(id as usize).load(Ordering::Acquire) & 1;
        let copy = (id as usize * 2 + live as usize) * COPY_ELEMENTS;
        self.copies
            .u32_at(copy + LISTENER_PORT_ELEMENT)
            .store(0, Ordering::Release);
    }

    /// After adopting a data plane: every id reads as `services` says
    /// (the rest as none). The copies an earlier process left are not
    /// trusted: one of another version may have moved services between
    /// ids without keeping them.
    pub(crate) fn rewrite_all(&self, services: &ServicesById) {
        // The copies about to be written may have been live for runs
        // still under way (the last process's last flips).
        wait_for_readers();
        let empty = (ServiceKey::default(), Service::default());
        for id in 0..self.live.elements() as u32 {
            let (key, service) = services.get(&id).unwrap_or(&empty);
            self.flip(id, key, service);
        }
        // And these, until the next write of the same id.
        wait_for_readers();
    }

    /// The live copy of every id that holds a service.
    fn live(&self) -> ServicesById {
        (0..self.live.elements() as u32)
            .filter_map(|id| {
                let live = self.live.u32_at(id as usize).load(Ordering::Acquire) & 1;
                let index = id as usize * 2 + live as usize;
                let bytes = self
                    .copies
                    .read_from(index * COPY_ELEMENTS, size_of::<ServiceCopy>());
                let copy = from_bytes::<ServiceCopy>(&bytes)?;
                (copy.key.protocol != 0).then_some((id, (copy.key, copy.service)))
            })
            .collect()
    }

    /// Writes the spare copy of `id`, then points the selector at it.
    fn flip(&self, id: u32, key: &ServiceKey, service: &Service) {
        let selector = self.live.u32_at(id as usize);
        let spare = (selector.load(Ordering::Acquire) & 1) ^ 1;
        let copy = ServiceCopy {
            key: *key,
            service: *service,
        };
        let index = id as usize * 2 + spare as usize;
        self.copies
            .write_from(index * COPY_ELEMENTS, bytes_of(&copy));
        selector.store(spare, Ordering::Release);
    }
}

/// The services as packets find them, by listener and by id.
pub type ServicesById = HashMap<u32, (ServiceKey, Service)>;

impl Dataplane {
    /// pnlb_services as it is, by its services' ids.
    pub fn service_entries(&self) -> Result<ServicesById, DataplaneError> {
        let map = &self.maps().pnlb_services;
        let mut entries = ServicesById::new();
        for key in map.keys() {
            let value = map
                .lookup(&key, MapFlags::ANY)
                .map_err(|source| DataplaneError::Map {
                    map: "pnlb_services",
                    source,
                })?;
            if let (Some(key), Some(service)) = (
                from_bytes::<ServiceKey>(&key),
                value.as_deref().and_then(from_bytes::<Service>),
            ) {
                entries.insert(service.id, (key, service));
            }
        }
        Ok(entries)
    }

    /// The live copy of every id that holds a service
    /// (pnlb_service_copies): what an established flow's packets read.
    pub fn service_copies(&self) -> ServicesById {
        self.service_copies.live()
    }
}
