//! Desired state -> maps. [`Programmer::apply`] takes a validated config and
//! makes the maps say exactly that, writing only what changed, so the same
//! call serves startup, reload and the periodic next-hop refresh.
//!
//! Identity: a service is its name, a backend is (service, address, port).
//! Both keep their map slots across applies, so established flows keep
//! their backend. A removed backend leaves the scheduling table at once but
//! keeps its slot while it still has connections (IPVS keeps such a real
//! server in its "trash" the same way): removing a backend resets nothing.
//! Its slot is freed once its connections have ended ([`Programmer::reap`]),
//! and reused only with a new generation, so flows pinned to the old
//! occupant are rescheduled rather than following a stranger.
//!
//! Order of writes: backends, then tables, then services, then VIPs when
//! adding; the reverse when removing. A packet therefore never finds a
//! service whose table names a backend slot that is not written yet.

mod adopt;
mod backends;
mod names;
mod service_entry;
mod snat;
mod table;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags};
use pnlb_core::config::{Config, Service as ServiceConfig, Snat};
use pnlb_core::maglev::MaglevBackend;

use crate::abi::{self, bytes_of, Backend, BackendStats, ServiceKey, ServiceStats};
use crate::grace::Grace;
use crate::loader::{Dataplane, DataplaneError};
use crate::nexthop::{Resolution, Resolver};

pub use names::{FlowNames, SlotIds};
pub use service_entry::forwards_statelessly;
pub use table::PublishedTable;

/// What an apply did, in words a log can print.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub changes: Vec<String>,
    /// New problems (e.g. a backend that stopped resolving); each is
    /// reported once, when it appears.
    pub problems: Vec<String>,
}

#[derive(Default)]
pub struct Programmer {
    services: BTreeMap<String, ServiceSlot>,
    service_ids: IdPool,
    slots: Slots,
}

/// Backend slot bookkeeping shared by all services.
#[derive(Default)]
struct Slots {
    backend_ids: IdPool,
    next_generation: u32,
    copies: backends::BackendCopies,
    grace: Grace,
}

struct ServiceSlot {
    id: u32,
    key: ServiceKey,
    vip: IpAddr,
    value: abi::Service,
    backends: HashMap<(IpAddr, u16), BackendSlot>,
    /// Removed from the config, kept while established flows use them.
    retiring: HashMap<(IpAddr, u16), BackendSlot>,
    /// How many times a new scheduling table was published.
    table_version: u64,
    table: Vec<u32>,
    snat: Option<Snat>,
    /// nat/snat: replies come back through us.
    translates: bool,
}

struct BackendSlot {
    id: u32,
    value: Backend,
    reachable: bool,
    problem: Option<String>,
}

/// Lowest-free id allocation within a fixed range.
#[derive(Default)]
struct IdPool {
    used: BTreeSet<u32>,
}

impl IdPool {
    fn take(&mut self, limit: u32) -> Option<u32> {
        let id = (0..limit).find(|id| !self.used.contains(id))?;
        self.used.insert(id);
        Some(id)
    }

    fn give_back(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

fn map_err(map: &'static str) -> impl Fn(libbpf_rs::Error) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

impl Programmer {
    pub fn new() -> Self {
        Self {
            slots: Slots {
                next_generation: 1,
                ..Slots::default()
            },
            ..Self::default()
        }
    }

    /// The backend map slot of a configured backend, if it has one.
    pub fn backend_id(&self, service: &str, address: IpAddr, port: u16) -> Option<u32> {
        self.services
            .get(service)?
            .backends
            .get(&(address, port))
            .map(|b| b.id)
    }

    /// The per-service counter slot of a configured service.
    pub fn service_id(&self, service: &str) -> Option<u32> {
        self.services.get(service).map(|s| s.id)
    }

    /// The service's published scheduling table (slot -> backend id).
    pub fn table(&self, service: &str) -> Option<&[u32]> {
        self.services.get(service).map(|s| s.table.as_slice())
    }

    /// Makes the data plane match `config`.
    pub fn apply(
        &mut self,
        dataplane: &Dataplane,
        config: &Config,
        resolver: &mut dyn Resolver,
    ) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        let wanted: BTreeSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .services
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove_service(dataplane, &name)?;
            report.changes.push(format!("service {name}: removed"));
        }
        let addresses: BTreeSet<IpAddr> = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        let resolution = resolver.resolve(&addresses.into_iter().collect::<Vec<_>>());
        for service in &config.services {
            self.apply_service(dataplane, service, &resolution, &mut report)?;
        }
        self.sync_address_sets(dataplane)?;
        Ok(report)
    }

    fn remove_service(&mut self, dataplane: &Dataplane, name: &str) -> Result<(), DataplaneError> {
        let Some(slot) = self.services.remove(name) else {
            return Ok(());
        };
        service_entry::delete_service(dataplane, &mut self.slots.grace, &slot.key)?;
        self.sync_address_sets(dataplane)?;
        table::delete_table(dataplane, slot.id)?;
        for backend in slot.backends.values().chain(slot.retiring.values()) {
            self.slots.clear_backend(dataplane, backend.id)?;
            self.slots.backend_ids.give_back(backend.id);
        }
        self.service_ids.give_back(slot.id);
        Ok(())
    }

    /// Writes one service in order: backends, scheduling table, SNAT
    /// addresses, then the service entry that points at them all.
    fn apply_service(
        &mut self,
        dataplane: &Dataplane,
        config: &ServiceConfig,
        resolution: &Resolution,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        let key = ServiceKey {
            vip: abi::addr(config.vip),
            port: config.port.to_be(),
            protocol: config.protocol.number(),
            _pad: 0,
        };
        if !self.services.contains_key(&config.name) {
            let slot = self.new_service_slot(dataplane, config, key)?;
            self.services.insert(config.name.clone(), slot);
            report.changes.push(format!(
                "service {}: {} port {} {} via {} ({})",
                config.name,
                config.vip,
                config.port,
                config.protocol,
                config.method,
                config.scheduler
            ));
        }
        let slots = &mut self.slots;
        let slot = self.services.get_mut(&config.name).expect("inserted above");

        // The listener moved (new VIP, port or protocol): retire the old key.
        if bytes_of(&slot.key) != bytes_of(&key) {
            service_entry::delete_service(dataplane, &mut slots.grace, &slot.key)?;
            slot.key = key;
            slot.vip = config.vip;
            slot.value = abi::Service::default();
        }

        backends::retire_removed(dataplane, slot, config, report);
        slots.apply_backends(dataplane, slot, config, resolution, report)?;

        // The scheduling table, rebuilt and swapped in only when it changes.
        let candidates: Vec<MaglevBackend> = config
            .backends
            .iter()
            .filter_map(|b| {
                let backend = slot.backends.get(&(b.address, b.port))?;
                backend.reachable.then(|| MaglevBackend {
                    id: backend.id,
                    weight: b.weight,
                    key: format!("{}:{}", b.address, b.port).into_bytes(),
                })
            })
            .collect();
        let (new_table, list_len) = table::scheduling_table(config.scheduler, &candidates);
        if new_table != slot.table {
            table::publish_table(dataplane, slot.id, &new_table, list_len)?;
            slot.table = new_table;
            slot.table_version += 1;
        }

        if config.snat != slot.snat {
            if let Some(snat) = &config.snat {
                snat::write_snat_addresses(dataplane, slot.id, snat)?;
            }
            slot.snat = config.snat.clone();
        }
        slot.translates = config.method.translates();

        let value = service_entry::service_value(slot.id, config);
        service_entry::write_service(dataplane, &mut slots.grace, slot, value)
    }

    /// A slot for a service seen for the first time, its counters zeroed.
    fn new_service_slot(
        &mut self,
        dataplane: &Dataplane,
        config: &ServiceConfig,
        key: ServiceKey,
    ) -> Result<ServiceSlot, DataplaneError> {
        let maps = dataplane.maps();
        let id = self
            .service_ids
            .take(abi::MAX_SERVICES)
            .ok_or(DataplaneError::Full {
                what: "services",
                limit: abi::MAX_SERVICES,
            })?;
        zero_percpu::<ServiceStats>(&maps.pnlb_service_stats, id, "pnlb_service_stats")?;
        maps.pnlb_rates
            .update(&id.to_ne_bytes(), &0u64.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("pnlb_rates"))?;
        Ok(ServiceSlot {
            id,
            key,
            vip: config.vip,
            value: abi::Service::default(),
            backends: HashMap::new(),
            retiring: HashMap::new(),
            table_version: 0,
            table: Vec::new(),
            snat: None,
            translates: false,
        })
    }

    /// Frees the slots of removed backends whose connections have all
    /// ended; returns what it freed, for the log.
    pub fn reap(&mut self, dataplane: &Dataplane) -> Result<Vec<String>, DataplaneError> {
        let mut freed = Vec::new();
        for (name, slot) in &mut self.services {
            let done: Vec<(IpAddr, u16)> = slot
                .retiring
                .iter()
                .filter(|(_, b)| dataplane.backend_load(b.id).is_ok_and(|l| l == (0, 0)))
                .map(|(key, _)| *key)
                .collect();
            for key in done {
                if let Some(backend) = slot.retiring.remove(&key) {
                    self.slots.clear_backend(dataplane, backend.id)?;
                    self.slots.backend_ids.give_back(backend.id);
                    freed.push(format!(
                        "service {name}: removed backend {} has no connections left; slot freed",
                        std::net::SocketAddr::new(key.0, key.1)
                    ));
                }
            }
        }
        if !freed.is_empty() {
            self.sync_address_sets(dataplane)?;
        }
        Ok(freed)
    }

    /// Removed backends still carrying flows: (service, address, port, slot).
    pub fn retiring(&self) -> Vec<(String, IpAddr, u16, u32)> {
        self.services
            .iter()
            .flat_map(|(name, slot)| {
                slot.retiring
                    .iter()
                    .map(move |(key, b)| (name.clone(), key.0, key.1, b.id))
            })
            .collect()
    }

    /// Zeroes the packet and byte counters of every service, backend and
    /// reason (`ipvsadm -Z`); connection counts are state, not counters,
    /// and stay.
    pub fn zero_counters(&self, dataplane: &Dataplane) -> Result<(), DataplaneError> {
        let maps = dataplane.maps();
        for slot in self.services.values() {
            zero_percpu::<ServiceStats>(&maps.pnlb_service_stats, slot.id, "pnlb_service_stats")?;
            for backend in slot.backends.values().chain(slot.retiring.values()) {
                zero_percpu::<BackendStats>(
                    &maps.pnlb_backend_stats,
                    backend.id,
                    "pnlb_backend_stats",
                )?;
            }
        }
        for reason in 0..abi::REASON_COUNT as u32 {
            zero_percpu::<u64>(&maps.pnlb_reason_stats, reason, "pnlb_reason_stats")?;
        }
        Ok(())
    }

    /// How many scheduling tables a service has published.
    pub fn table_version(&self, service: &str) -> Option<u64> {
        self.services.get(service).map(|s| s.table_version)
    }

    /// Makes pnlb_vips hold exactly the configured VIPs, and
    /// pnlb_backend_addrs the backends whose replies need translating.
    fn sync_address_sets(&self, dataplane: &Dataplane) -> Result<(), DataplaneError> {
        let maps = dataplane.maps();
        let vips = self.services.values().map(|slot| slot.vip);
        sync_address_set(&maps.pnlb_vips, "pnlb_vips", vips)?;
        let backends = self
            .services
            .values()
            .filter(|slot| slot.translates)
            .flat_map(|slot| slot.backends.keys().chain(slot.retiring.keys()))
            .map(|(address, _)| *address);
        sync_address_set(&maps.pnlb_backend_addrs, "pnlb_backend_addrs", backends)
    }
}

/// Makes an address -> count map hold exactly `addresses`, counted.
fn sync_address_set(
    map: &dyn MapCore,
    name: &'static str,
    addresses: impl Iterator<Item = IpAddr>,
) -> Result<(), DataplaneError> {
    let mut counts: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    for address in addresses {
        *counts
            .entry(bytes_of(&abi::addr(address)).to_vec())
            .or_default() += 1;
    }
    let present: Vec<Vec<u8>> = map.keys().collect();
    for key in present {
        if !counts.contains_key(&key) {
            map.delete(&key).map_err(map_err(name))?;
        }
    }
    for (key, count) in counts {
        map.update(&key, &count.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err(name))?;
    }
    Ok(())
}

fn zero_percpu<T: abi::Plain>(
    map: &dyn MapCore,
    id: u32,
    name: &'static str,
) -> Result<(), DataplaneError> {
    let cpus = libbpf_rs::num_possible_cpus().map_err(map_err(name))?;
    let zero = bytes_of(&T::default()).to_vec();
    map.update_percpu(&id.to_ne_bytes(), &vec![zero; cpus], MapFlags::ANY)
        .map_err(map_err(name))
}
