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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use pnlb_core::config::{
    Config, Encap, HashKey, Method, Scheduler, Service as ServiceConfig, Snat,
};
use pnlb_core::maglev::{self, MaglevBackend};
use pnlb_core::sched;

use crate::abi::{self, bytes_of, Backend, BackendFlags, BackendStats, ServiceKey, ServiceStats};
use crate::loader::{Dataplane, DataplaneError};
use crate::nexthop::{NextHop, Resolution, Resolver};

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
    backend_ids: IdPool,
    service_ids: IdPool,
    next_generation: u32,
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
    /// chbl: how many backend ids precede the Maglev part of `table`.
    list_len: u16,
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
            next_generation: 1,
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
        let maps = dataplane.maps();
        maps.pnlb_services
            .delete(bytes_of(&slot.key))
            .map_err(map_err("pnlb_services"))?;
        self.sync_address_sets(dataplane)?;
        delete_table(dataplane, slot.id)?;
        for backend in slot.backends.values().chain(slot.retiring.values()) {
            clear_backend(dataplane, backend.id)?;
            self.backend_ids.give_back(backend.id);
        }
        self.service_ids.give_back(slot.id);
        Ok(())
    }

    fn apply_service(
        &mut self,
        dataplane: &Dataplane,
        config: &ServiceConfig,
        resolution: &Resolution,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        let maps = dataplane.maps();
        let key = ServiceKey {
            vip: abi::addr(config.vip),
            port: config.port.to_be(),
            protocol: config.protocol.number(),
            _pad: 0,
        };
        if !self.services.contains_key(&config.name) {
            let id = self
                .service_ids
                .take(abi::MAX_SERVICES)
                .ok_or(DataplaneError::Full {
                    what: "services",
                    limit: abi::MAX_SERVICES,
                })?;
            zero_percpu::<ServiceStats>(&maps.pnlb_service_stats, id, "pnlb_service_stats")?;
            self.services.insert(
                config.name.clone(),
                ServiceSlot {
                    id,
                    key,
                    vip: config.vip,
                    value: abi::Service::default(),
                    backends: HashMap::new(),
                    retiring: HashMap::new(),
                    table_version: 0,
                    table: Vec::new(),
                    list_len: 0,
                    snat: None,
                    translates: false,
                },
            );
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
        let next_generation = &mut self.next_generation;
        let backend_ids = &mut self.backend_ids;
        let slot = self.services.get_mut(&config.name).expect("inserted above");

        // The listener moved (new VIP, port or protocol): retire the old key.
        if bytes_of(&slot.key) != bytes_of(&key) {
            maps.pnlb_services
                .delete(bytes_of(&slot.key))
                .map_err(map_err("pnlb_services"))?;
            slot.key = key;
            slot.vip = config.vip;
            slot.value = abi::Service::default();
        }

        // Backends: retire the removed, add the new, refresh next hops.
        let wanted: HashMap<(IpAddr, u16), &pnlb_core::config::Backend> = config
            .backends
            .iter()
            .map(|b| ((b.address, b.port), b))
            .collect();
        let removed: Vec<(IpAddr, u16)> = slot
            .backends
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in removed {
            if let Some(backend) = slot.backends.remove(&key) {
                let (active, inactive) = dataplane.backend_load(backend.id).unwrap_or((0, 0));
                report.changes.push(format!(
                    "service {}: backend {} removed; its {} connection(s) continue until they end",
                    config.name,
                    std::net::SocketAddr::new(key.0, key.1),
                    active + inactive
                ));
                slot.retiring.insert(key, backend);
            }
        }
        for backend in &config.backends {
            let key = (backend.address, backend.port);
            if let Some(returning) = slot.retiring.remove(&key) {
                slot.backends.insert(key, returning);
            }
            let entry = match slot.backends.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let id = backend_ids
                        .take(abi::MAX_BACKENDS)
                        .ok_or(DataplaneError::Full {
                            what: "backends",
                            limit: abi::MAX_BACKENDS,
                        })?;
                    zero_percpu::<BackendStats>(
                        &maps.pnlb_backend_stats,
                        id,
                        "pnlb_backend_stats",
                    )?;
                    // A reused slot starts with no connections counted.
                    for (map, name) in [
                        (&maps.pnlb_backend_conns, "pnlb_backend_conns"),
                        (&maps.pnlb_backend_expired, "pnlb_backend_expired"),
                    ] {
                        let zero = vec![0u8; map.value_size() as usize];
                        map.update(&id.to_ne_bytes(), &zero, MapFlags::ANY)
                            .map_err(map_err(name))?;
                    }
                    let generation = *next_generation;
                    *next_generation = next_generation.wrapping_add(1).max(1);
                    report.changes.push(format!(
                        "service {}: backend {}:{} weight {} added",
                        config.name, backend.address, backend.port, backend.weight
                    ));
                    e.insert(BackendSlot {
                        id,
                        value: Backend {
                            generation,
                            ..Backend::default()
                        },
                        reachable: false,
                        problem: None,
                    })
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
                ..Backend::default()
            };
            if let Some(tunnel) = &config.tunnel {
                let (encap, gue_port) = match tunnel.encap {
                    Encap::Ipip => (abi::Encap::PNLB_ENCAP_IPIP, 0),
                    Encap::Gue { port } => (abi::Encap::PNLB_ENCAP_GUE, port),
                };
                value.encap = encap.0 as u8;
                value.gue_port = gue_port.to_be();
            }
            match &resolved {
                Ok(hop) => {
                    value.ifindex = hop.ifindex;
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
                maps.pnlb_backends
                    .update(&entry.id.to_ne_bytes(), bytes_of(&value), MapFlags::ANY)
                    .map_err(map_err("pnlb_backends"))?;
                entry.value = value;
            }
        }

        // The scheduling table, rebuilt and swapped in only when it changes.
        let candidates: Vec<MaglevBackend> = config
            .backends
            .iter()
            .filter_map(|b| {
                let slot = slot.backends.get(&(b.address, b.port))?;
                slot.reachable.then(|| MaglevBackend {
                    id: slot.id,
                    weight: b.weight,
                    key: format!("{}:{}", b.address, b.port).into_bytes(),
                })
            })
            .collect();
        let (table, list_len) = scheduling_table(config.scheduler, &candidates);
        if table != slot.table {
            publish_table(dataplane, slot.id, &table)?;
            slot.table = table;
            slot.table_version += 1;
        }
        slot.list_len = list_len;

        // SNAT source addresses, before the service that points at them.
        if config.snat != slot.snat {
            if let Some(snat) = &config.snat {
                for (i, address) in snat.addresses.iter().enumerate() {
                    let index = slot.id * abi::MAX_SNAT_ADDRS + i as u32;
                    maps.pnlb_snat_addrs
                        .update(
                            &index.to_ne_bytes(),
                            bytes_of(&abi::addr(*address)),
                            MapFlags::ANY,
                        )
                        .map_err(map_err("pnlb_snat_addrs"))?;
                }
            }
            slot.snat = config.snat.clone();
        }
        slot.translates = config.method.translates();
        let (snat_count, snat_port_min, snat_port_count) = match &config.snat {
            Some(snat) => (
                snat.addresses.len() as u8,
                snat.port_min,
                snat.port_max - snat.port_min + 1,
            ),
            None => (0, 0, 0),
        };
        let value = abi::Service {
            id: slot.id,
            method: match config.method {
                Method::Dr => abi::Method::PNLB_METHOD_DR.0 as u8,
                Method::Tun => abi::Method::PNLB_METHOD_TUN.0 as u8,
                Method::Nat => abi::Method::PNLB_METHOD_NAT.0 as u8,
                Method::Snat => abi::Method::PNLB_METHOD_SNAT.0 as u8,
            },
            scheduler: match config.scheduler {
                Scheduler::Maglev => abi::SchedulerKind::PNLB_SCHED_MAGLEV.0 as u8,
                Scheduler::Rr => abi::SchedulerKind::PNLB_SCHED_RR.0 as u8,
                Scheduler::Wrr => abi::SchedulerKind::PNLB_SCHED_WRR.0 as u8,
                Scheduler::Sh => abi::SchedulerKind::PNLB_SCHED_SH.0 as u8,
                Scheduler::Dh => abi::SchedulerKind::PNLB_SCHED_DH.0 as u8,
                Scheduler::Lc => abi::SchedulerKind::PNLB_SCHED_LC.0 as u8,
                Scheduler::Wlc => abi::SchedulerKind::PNLB_SCHED_WLC.0 as u8,
                Scheduler::Sed => abi::SchedulerKind::PNLB_SCHED_SED.0 as u8,
                Scheduler::Nq => abi::SchedulerKind::PNLB_SCHED_NQ.0 as u8,
                Scheduler::P2c => abi::SchedulerKind::PNLB_SCHED_P2C.0 as u8,
                Scheduler::Chbl { .. } => abi::SchedulerKind::PNLB_SCHED_CHBL.0 as u8,
            },
            hash_key: match config.hash_key {
                HashKey::FiveTuple => abi::HashKey::PNLB_HASH_5TUPLE.0 as u8,
                HashKey::Source => abi::HashKey::PNLB_HASH_SOURCE.0 as u8,
                HashKey::Destination => abi::HashKey::PNLB_HASH_DESTINATION.0 as u8,
            },
            snat_count,
            table_len: slot.table.len() as u32 - u32::from(slot.list_len),
            snat_port_min,
            snat_port_count,
            persistence_s: config
                .persistence
                .map_or(0, |p| p.timeout.as_secs().max(1) as u32),
            // IPv4 addresses sit in the last 32 bits of the mapped form.
            persistence_prefix: config.persistence.map_or(0, |p| {
                if config.vip.is_ipv4() {
                    96 + p.prefix_len
                } else {
                    p.prefix_len
                }
            }),
            _pad1: 0,
            list_len: slot.list_len,
            chbl_epsilon_pct: match config.scheduler {
                Scheduler::Chbl { epsilon } => (epsilon * 100.0).round() as u32,
                _ => 0,
            },
        };
        if bytes_of(&value) != bytes_of(&slot.value) {
            maps.pnlb_services
                .update(bytes_of(&slot.key), bytes_of(&value), MapFlags::ANY)
                .map_err(map_err("pnlb_services"))?;
            slot.value = value;
        }
        Ok(())
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
                    clear_backend(dataplane, backend.id)?;
                    self.backend_ids.give_back(backend.id);
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

    /// A flow's service (by its listener) and backend (by address and
    /// port), from this node's slot ids: what another node can resolve.
    pub fn describe(&self, service_id: u32, backend_id: u32) -> Option<(ServiceKey, IpAddr, u16)> {
        let slot = self.services.values().find(|s| s.id == service_id)?;
        let (address, port) = slot
            .backends
            .iter()
            .chain(slot.retiring.iter())
            .find(|(_, b)| b.id == backend_id)
            .map(|(key, _)| *key)?;
        Some((slot.key, address, port))
    }

    /// The reverse of [`Self::describe`] on this node: (service id,
    /// backend id, backend generation).
    pub fn resolve(
        &self,
        service: &ServiceKey,
        address: IpAddr,
        port: u16,
    ) -> Option<(u32, u32, u32)> {
        let slot = self
            .services
            .values()
            .find(|s| bytes_of(&s.key) == bytes_of(service))?;
        let backend = slot
            .backends
            .get(&(address, port))
            .or_else(|| slot.retiring.get(&(address, port)))?;
        Some((slot.id, backend.id, backend.value.generation))
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

/// The table the data plane indexes for new flows: Maglev for the hashing
/// schedulers (by flow hash), the interleaved wrr cycle (by a per-service
/// cursor), or the list of backends that may take flows (rr's cursor, and
/// the least-load schedulers' scan). Entries are backend ids.
///
/// chbl gets both: the backend list (its length is returned, 0 otherwise)
/// followed by the Maglev table.
fn scheduling_table(scheduler: Scheduler, candidates: &[MaglevBackend]) -> (Vec<u32>, u16) {
    let weights: Vec<u32> = candidates.iter().map(|c| c.weight).collect();
    let ids = |indexes: Vec<usize>| -> Vec<u32> {
        indexes.into_iter().map(|i| candidates[i].id).collect()
    };
    match scheduler {
        Scheduler::Maglev | Scheduler::Sh | Scheduler::Dh => {
            (maglev::build(candidates, abi::TABLE_SIZE as usize), 0)
        }
        // The least-load family scans this list, reading live counts.
        Scheduler::Rr
        | Scheduler::Lc
        | Scheduler::Wlc
        | Scheduler::Sed
        | Scheduler::Nq
        | Scheduler::P2c => (ids(sched::rr::table(&weights)), 0),
        Scheduler::Wrr => (ids(sched::wrr::cycle(&weights)), 0),
        Scheduler::Chbl { .. } => {
            let hash = maglev::build(candidates, abi::TABLE_SIZE as usize);
            if hash.is_empty() {
                return (Vec::new(), 0);
            }
            let mut table = ids(sched::rr::table(&weights));
            let list_len = table.len() as u16;
            table.extend(hash);
            (table, list_len)
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

fn clear_backend(dataplane: &Dataplane, id: u32) -> Result<(), DataplaneError> {
    dataplane
        .maps()
        .pnlb_backends
        .update(
            &id.to_ne_bytes(),
            bytes_of(&Backend::default()),
            MapFlags::ANY,
        )
        .map_err(map_err("pnlb_backends"))
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

/// Builds a new inner table map and swaps it into the service's slot in one
/// update: packets see the old table or the new one, never a mix.
fn publish_table(
    dataplane: &Dataplane,
    service_id: u32,
    table: &[u32],
) -> Result<(), DataplaneError> {
    if table.is_empty() {
        return delete_table(dataplane, service_id);
    }
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let inner = MapHandle::create(
        MapType::Array,
        Some("pnlb_table"),
        4,
        4,
        abi::TABLE_CAPACITY,
        &opts,
    )
    .map_err(map_err("pnlb_table"))?;
    let keys: Vec<u8> = (0..table.len() as u32).flat_map(u32::to_ne_bytes).collect();
    let values: Vec<u8> = table.iter().flat_map(|id| id.to_ne_bytes()).collect();
    inner
        .update_batch(
            &keys,
            &values,
            table.len() as u32,
            MapFlags::ANY,
            MapFlags::ANY,
        )
        .map_err(map_err("pnlb_table"))?;
    let fd = inner.as_fd().as_raw_fd();
    dataplane
        .maps()
        .pnlb_tables
        .update(&service_id.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
        .map_err(map_err("pnlb_tables"))
    // `inner` closes here; the outer map holds the table now.
}

fn delete_table(dataplane: &Dataplane, service_id: u32) -> Result<(), DataplaneError> {
    match dataplane
        .maps()
        .pnlb_tables
        .delete(&service_id.to_ne_bytes())
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(DataplaneError::Map {
            map: "pnlb_tables",
            source: err,
        }),
    }
}
