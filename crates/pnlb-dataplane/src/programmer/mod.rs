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

mod access;
mod address_set;
mod adopt;
mod backends;
mod held_tables;
mod ids;
mod names;
mod service_entry;
mod snat;
mod spare_tables;
mod table;
mod table_builder;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags};
use pnlb_core::config::{Config, Service as ServiceConfig, Snat};
use pnlb_core::maglev::MaglevBackend;

use crate::abi::{self, bytes_of, Backend, BackendStats, ServiceKey, ServiceStats};
use crate::grace::{Element, Grace};
use crate::loader::{Dataplane, DataplaneError};
use crate::nexthop::{Resolution, Resolver};

pub use address_set::AddressCounts;
use address_set::{AddressSet, SetMaps};
use ids::{IdPool, Taken};
pub use names::{FlowNames, SlotIds};
pub use service_entry::forwards_statelessly;
pub(crate) use spare_tables::SPARE_TABLES;
pub use table::PublishedTable;
use table_builder::{BuiltTable, TableBuilder, TableJob};

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
    /// By name (a hash map: an apply looks up every configured service).
    services: HashMap<String, ServiceSlot>,
    service_ids: IdPool,
    slots: Slots,
    vips: AddressSet,
    backend_addrs: AddressSet,
    /// pnlb_vips or pnlb_backend_addrs are due a sync, whole.
    addresses_changed: bool,
    /// Services' addresses as they were and as they are, to count into the
    /// sets (a whole sync counted every service's: 20-40 ms at 10,000).
    address_changes: Vec<(Addresses, Addresses)>,
    /// The next hops the last apply wrote.
    resolved: Resolution,
    /// The services' access rules as written.
    access: access::AccessRules,
    /// The table maps this process published, open (by service slot).
    held: held_tables::HeldTables,
    /// Closed tables published ahead at the next fresh service slots.
    spares: spare_tables::SpareTables,
}

/// Backend slot bookkeeping shared by all services.
#[derive(Default)]
struct Slots {
    backend_ids: IdPool,
    next_generation: u32,
    /// What pnlb_meta holds of it (pinned data planes).
    persisted_generation: u32,
    /// Fresh slots no published table names yet (written in place, in
    /// one batch before the next tables are published).
    unpublished: BTreeSet<u32>,
    /// Their entries (pnlb_backends index, value), in the order written,
    /// until `write_unpublished`.
    unwritten: Vec<(u32, Backend)>,
    copies: backends::BackendCopies,
    grace: Grace,
}

/// What a service puts in the address sets: its VIP, and for nat/snat its
/// backends' addresses (configured or retiring), once per backend.
#[derive(Default, PartialEq)]
struct Addresses {
    vips: Vec<IpAddr>,
    replies: Vec<IpAddr>,
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
    /// What `table` was built from (None: read back from an adopted data
    /// plane, or not built yet).
    table_inputs: Option<TableInputs>,
    /// The config it was last applied from, completely (None: not yet).
    applied: Option<ServiceConfig>,
    snat: Option<Snat>,
    /// nat/snat: replies come back through us.
    translates: bool,
}

#[derive(PartialEq)]
struct TableInputs {
    scheduler: pnlb_core::config::Scheduler,
    size: u32,
    candidates: Vec<MaglevBackend>,
}

struct BackendSlot {
    id: u32,
    value: Backend,
    reachable: bool,
    problem: Option<String>,
}

fn map_err(map: &'static str) -> impl Fn(libbpf_rs::Error) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

impl ServiceSlot {
    fn addresses(&self) -> Addresses {
        let replies = if self.translates {
            self.backends
                .keys()
                .chain(self.retiring.keys())
                .map(|(address, _)| *address)
                .collect()
        } else {
            Vec::new()
        };
        Addresses {
            vips: vec![self.vip],
            replies,
        }
    }
}

impl Programmer {
    pub fn new() -> Self {
        Self {
            slots: Slots {
                next_generation: 1,
                ..Slots::default()
            },
            // The first apply writes them whole (an adopted data plane's
            // may hold addresses of services since removed).
            addresses_changed: true,
            ..Self::default()
        }
    }

    /// The access rules of `service` as written, each with the packets it
    /// dropped (deny rules; allow rules count nothing): (prefix, allows,
    /// drops), by prefix.
    pub fn access_hits(
        &self,
        dataplane: &Dataplane,
        service: &str,
    ) -> Vec<(pnlb_core::prefix::Prefix, bool, u64)> {
        self.services
            .get(service)
            .map(|slot| self.access.hits(dataplane, slot.id))
            .unwrap_or_default()
    }

    /// The backend map slot of a configured backend, if it has one.
    pub fn backend_id(&self, service: &str, address: IpAddr, port: u16) -> Option<u32> {
        self.services
            .get(service)?
            .backends
            .get(&(address, port))
            .map(|b| b.id)
    }

    /// Service slots and backend slots in use (a removed backend holds its
    /// slot while its flows last), against Dataplane::limits.
    pub fn slots_in_use(&self) -> (usize, usize) {
        let backends = self
            .services
            .values()
            .map(|s| s.backends.len() + s.retiring.len())
            .sum();
        (self.services.len(), backends)
    }

    /// The per-service counter slot of a configured service.
    pub fn service_id(&self, service: &str) -> Option<u32> {
        self.services.get(service).map(|s| s.id)
    }

    /// How many times an apply waited for program runs to finish reading
    /// an element it was about to write (a grace period each, ~10 ms
    /// here): what makes a change slow that is otherwise a few writes.
    pub fn waits_for_readers(&self) -> u64 {
        self.slots.grace.waits()
    }

    /// This process's program is attached to every interface: once the
    /// runs of a program of an earlier build that an adopted data plane
    /// may have carried are done (a grace period), service entries are
    /// written without waiting for readers.
    pub fn program_attached(&mut self) {
        if self.slots.grace.earlier_program() {
            self.slots.grace.wait_now();
            self.slots.grace.set_earlier_program(false);
        }
    }

    /// Waits (a grace period) until no program run can still read what
    /// this programmer rewrote or gave up, so that the next apply may take
    /// any freed slot again, the lowest first, without waiting itself.
    pub fn wait_for_readers(&mut self) {
        self.slots.grace.wait_now();
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
        let wanted: HashSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        let mut gone: Vec<String> = self
            .services
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();
        gone.sort_unstable();
        let mut report = self.remove(dataplane, &gone)?;
        let resolution = resolver.resolve(&backend_addresses(&config.services));
        // Backends whose next hop changed since the last apply.
        let moved: HashSet<IpAddr> = resolution
            .iter()
            .filter(|(address, hop)| self.resolved.get(address) != Some(hop))
            .map(|(address, _)| *address)
            .collect();
        // A service applied as it is configured now, whose backends'
        // next hops stayed, has nothing to write: a change to one of
        // thousands of services touches that one.
        let changed: Vec<&ServiceConfig> = config
            .services
            .iter()
            .filter(|service| {
                !self.is_applied(service)
                    || (!moved.is_empty()
                        && service.backends.iter().any(|b| moved.contains(&b.address)))
            })
            .collect();
        self.write_services(dataplane, &changed, &resolution, &mut report)?;
        // Only once written: a failed write leaves them "moved" for the next.
        self.resolved = resolution;
        Ok(report)
    }

    /// Makes the data plane match the services of `config` named in
    /// `names`, taking every other one as applied already: for a change
    /// that knows the services it touches (a health verdict, a drain), so
    /// that it costs what they cost and not a pass over every service
    /// (at 10,000 services that pass is ~15-30 ms). Their backends' next
    /// hops are looked up again; the others' wait for the next
    /// [`Self::apply`]. A named service not written yet is added;
    /// [`Self::remove`] removes.
    pub fn apply_services(
        &mut self,
        dataplane: &Dataplane,
        config: &Config,
        names: &HashSet<&str>,
        resolver: &mut dyn Resolver,
    ) -> Result<ApplyReport, DataplaneError> {
        let named: Vec<&ServiceConfig> = config
            .services
            .iter()
            .filter(|s| names.contains(s.name.as_str()))
            .collect();
        self.apply_given(dataplane, &named, resolver)
    }

    /// [`Self::apply_services`] for services in hand (an API edit has its
    /// one: picking it out of 10,000 by name was most of the programmer's
    /// part of an edit).
    pub fn apply_given(
        &mut self,
        dataplane: &Dataplane,
        named: &[&ServiceConfig],
        resolver: &mut dyn Resolver,
    ) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        let resolution = resolver.resolve_some(&backend_addresses(named.iter().copied()));
        let changed: Vec<&ServiceConfig> = named
            .iter()
            .copied()
            .filter(|service| {
                !self.is_applied(service)
                    || service
                        .backends
                        .iter()
                        .any(|b| self.resolved.get(&b.address) != resolution.get(&b.address))
            })
            .collect();
        self.write_services(dataplane, &changed, &resolution, &mut report)?;
        self.resolved.extend(resolution);
        Ok(report)
    }

    /// Removes the named services (an API edit that removes one knows it).
    pub fn remove(
        &mut self,
        dataplane: &Dataplane,
        names: &[String],
    ) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        let gone: Vec<String> = names
            .iter()
            .filter(|name| self.services.contains_key(*name))
            .cloned()
            .collect();
        self.remove_services(dataplane, &gone)?;
        for name in gone {
            report.changes.push(format!("service {name}: removed"));
        }
        Ok(report)
    }

    /// Whether `service` was last applied exactly as it is now.
    fn is_applied(&self, service: &ServiceConfig) -> bool {
        self.services
            .get(&service.name)
            .and_then(|s| s.applied.as_ref())
            == Some(service)
    }

    /// Writes `changed` in order, across all of them: backends, tables,
    /// service entries, addresses.
    fn write_services(
        &mut self,
        dataplane: &Dataplane,
        changed: &[&ServiceConfig],
        resolution: &Resolution,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        // Slots given back whose grace period passed may be taken again
        // (before it, a write to one would wait: an add right after a
        // removal takes other slots instead).
        let Slots {
            backend_ids, grace, ..
        } = &mut self.slots;
        backend_ids.wake(|id| grace.may_be_read(Element::BackendSpare(id)));
        self.service_ids
            .wake(|id| grace.may_be_read(Element::ServiceSpare(id)));
        let mut tables = table::PendingTables::default();
        let tables_per_swap = table::tables_per_swap();
        std::thread::scope(|scope| {
            let mut builder = TableBuilder::start(scope, changed.len());
            for service in changed {
                // Applied again in whole unless everything below succeeds.
                if let Some(slot) = self.services.get_mut(&service.name) {
                    slot.applied = None;
                }
                match self.apply_service(dataplane, service, resolution, report) {
                    Ok(Some(job)) => builder.submit(job),
                    Ok(None) => {}
                    Err(err) => {
                        // Its addresses may have changed uncounted: recount whole.
                        self.addresses_changed = true;
                        return Err(err);
                    }
                }
                for built in builder.ready() {
                    self.add_table(dataplane, built, &mut tables, tables_per_swap)?;
                }
            }
            for built in builder.finish() {
                self.add_table(dataplane, built, &mut tables, tables_per_swap)?;
            }
            Ok(())
        })?;
        self.publish_tables(dataplane, tables)?;
        report.problems.extend(self.held.budget_problem());
        for service in changed {
            // Every configured service has its slot from apply_service.
            let Some(slot) = self.services.get_mut(&service.name) else {
                continue;
            };
            // Rules the entry will name first; those it no longer names after.
            let stale = self.access.write(dataplane, slot.id, &service.access)?;
            let value = service_entry::service_value(slot.id, service);
            service_entry::write_service(dataplane, &mut self.slots.grace, slot, value)?;
            self.access.delete(dataplane, slot.id, &stale)?;
            slot.applied = Some((*service).clone());
        }
        self.write_address_sets(dataplane)?;
        self.slots.grace.settle();
        self.spares.restock(
            dataplane,
            &mut self.held,
            self.service_ids.first_unused(),
            dataplane.limits().services,
        );
        Ok(())
    }

    /// Step 2 of applying a service, once its table is built: the table
    /// goes with the others to be published, unless it is the one the
    /// data plane has.
    fn add_table(
        &mut self,
        dataplane: &Dataplane,
        built: BuiltTable,
        tables: &mut table::PendingTables,
        tables_per_swap: usize,
    ) -> Result<(), DataplaneError> {
        // Every job is for a service apply_service has a slot for.
        let Some(slot) = self.services.get_mut(&built.service) else {
            return Ok(());
        };
        if built.table != slot.table {
            tables.add(
                dataplane,
                &self.held,
                slot.id,
                &built.table,
                built.list_len,
                !slot.table.is_empty(),
            )?;
            slot.table = built.table;
            slot.table_version += 1;
        }
        slot.table_inputs = Some(built.inputs);
        // Each pending table is an open map: bounded, so that a big
        // config cannot run the process out of file descriptors (1,024
        // where nothing raised the limit). A wait per batch.
        if tables.len() >= tables_per_swap {
            self.publish_tables(dataplane, std::mem::take(tables))?;
        }
        Ok(())
    }

    /// Swaps in the tables this apply built; if that fails, the services
    /// whose table it carried build theirs again on the next apply.
    fn publish_tables(
        &mut self,
        dataplane: &Dataplane,
        tables: table::PendingTables,
    ) -> Result<(), DataplaneError> {
        let ids = tables.service_ids();
        publish_in_order(dataplane, &mut self.slots, &mut self.held, tables).inspect_err(|_| {
            for slot in self.services.values_mut() {
                if ids.contains(&slot.id) {
                    slot.table_inputs = None;
                    slot.table.clear();
                }
            }
        })
    }

    /// Removes services in the reverse order of adding: their entries,
    /// then the VIPs and reply addresses no other service needs, then
    /// their tables and backend slots.
    fn remove_services(
        &mut self,
        dataplane: &Dataplane,
        names: &[String],
    ) -> Result<(), DataplaneError> {
        let mut removed = Vec::with_capacity(names.len());
        for name in names {
            let Some(slot) = self.services.remove(name) else {
                continue;
            };
            // Out of the bookkeeping only once out of the map: a failed
            // delete is tried again by the next apply.
            if let Err(err) =
                service_entry::delete_service(dataplane, &mut self.slots.grace, slot.id, &slot.key)
            {
                self.services.insert(name.clone(), slot);
                return Err(err);
            }
            self.access.remove_service(dataplane, slot.id)?;
            self.address_changes
                .push((slot.addresses(), Addresses::default()));
            removed.push(slot);
        }
        if removed.is_empty() {
            return Ok(());
        }
        self.write_address_sets(dataplane)?;
        for slot in removed {
            table::close_table(&self.held, slot.id)?;
            for backend in slot.backends.values().chain(slot.retiring.values()) {
                self.slots.clear_backend(dataplane, backend.id)?;
                self.slots.backend_ids.rest(backend.id);
            }
            self.service_ids.rest(slot.id);
        }
        self.slots.grace.settle();
        Ok(())
    }

    /// Writes one service's backends and SNAT addresses, and says which
    /// scheduling table it needs built (if its inputs changed):
    /// `write_services` builds it, adds it ([`Self::add_table`]), swaps the
    /// tables in and writes the service entries that point at them all.
    fn apply_service(
        &mut self,
        dataplane: &Dataplane,
        config: &ServiceConfig,
        resolution: &Resolution,
        report: &mut ApplyReport,
    ) -> Result<Option<TableJob>, DataplaneError> {
        let key = ServiceKey {
            vip: abi::addr(config.vip),
            port: config.port.to_be(),
            protocol: config.protocol.number(),
            _pad: 0,
        };
        let is_new = !self.services.contains_key(&config.name);
        if is_new {
            let slot = self.new_service_slot(dataplane, config, key)?;
            self.services.insert(config.name.clone(), slot);
            // One line for a new service (its backends are in it), where
            // a backend added to a service is a line of its own.
            report.changes.push(format!(
                "service {}: {} port {} {} via {} ({}), {} backend(s)",
                config.name,
                config.vip,
                config.port,
                config.protocol,
                config.method,
                config.scheduler,
                config.backends.len()
            ));
        }
        let slots = &mut self.slots;
        let slot = self.services.get_mut(&config.name).expect("inserted above");
        // A new service is in no address set yet.
        let addresses_before = if is_new {
            Addresses::default()
        } else {
            slot.addresses()
        };

        // The listener moved (new VIP, port or protocol): retire the old key.
        if bytes_of(&slot.key) != bytes_of(&key) {
            service_entry::delete_service(dataplane, &mut slots.grace, slot.id, &slot.key)?;
            slot.key = key;
            slot.vip = config.vip;
            slot.value = abi::Service::default();
        }

        backends::retire_removed(dataplane, slot, config, report);
        slots.apply_backends(dataplane, slot, config, resolution, !is_new, report)?;

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
        // What the table is built from: the same inputs build the same
        // table, so an apply of thousands of unchanged services builds none.
        // It is built by the caller's TableBuilder, then added (add_table).
        let inputs = TableInputs {
            scheduler: config.scheduler,
            size: config.table_size,
            candidates,
        };
        let table_job = (slot.table_inputs.as_ref() != Some(&inputs)).then(|| TableJob {
            service: config.name.clone(),
            inputs,
        });

        if config.snat != slot.snat {
            if let Some(snat) = &config.snat {
                snat::write_snat_addresses(dataplane, slot.id, snat)?;
            }
            slot.snat = config.snat.clone();
        }
        slot.translates = config.method.translates();
        let addresses = slot.addresses();
        if addresses != addresses_before {
            self.address_changes.push((addresses_before, addresses));
        }
        Ok(table_job)
    }

    /// A slot for a service seen for the first time, its counters zeroed.
    fn new_service_slot(
        &mut self,
        dataplane: &Dataplane,
        config: &ServiceConfig,
        key: ServiceKey,
    ) -> Result<ServiceSlot, DataplaneError> {
        let maps = dataplane.maps();
        let Taken { id, fresh } = self
            .service_ids
            .take_or_full(dataplane.limits().services, "services")?;
        // Its table may be a spare still on its way: not touched before.
        self.spares.settle(id, &mut self.held);
        if !fresh {
            zero_percpu::<ServiceStats>(&maps.pnlb_service_stats, id, "pnlb_service_stats")?;
            maps.pnlb_rates
                .update(&id.to_ne_bytes(), &0u64.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("pnlb_rates"))?;
        }
        Ok(ServiceSlot {
            id,
            key,
            vip: config.vip,
            value: abi::Service::default(),
            backends: HashMap::new(),
            retiring: HashMap::new(),
            table_version: 0,
            table: Vec::new(),
            table_inputs: None,
            applied: None,
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
            if done.is_empty() {
                continue;
            }
            let before = slot.addresses();
            for key in done {
                if let Some(backend) = slot.retiring.remove(&key) {
                    // A failure leaves the addresses uncounted: recount whole.
                    let recount = self.addresses_changed;
                    self.addresses_changed = true;
                    self.slots.clear_backend(dataplane, backend.id)?;
                    self.addresses_changed = recount;
                    self.slots.backend_ids.rest(backend.id);
                    freed.push(format!(
                        "service {name}: removed backend {} has no connections left; slot freed",
                        std::net::SocketAddr::new(key.0, key.1)
                    ));
                }
            }
            self.address_changes.push((before, slot.addresses()));
        }
        self.write_address_sets(dataplane)?;
        freed.sort_unstable();
        Ok(freed)
    }

    /// The backends of `service` removed from the config that keep their
    /// slot while flows use it: (address, port, slot id), sorted.
    pub fn retiring_of(&self, service: &str) -> Vec<(IpAddr, u16, u32)> {
        let mut retiring: Vec<_> = self
            .services
            .get(service)
            .map(|slot| {
                slot.retiring
                    .iter()
                    .map(|(key, b)| (key.0, key.1, b.id))
                    .collect()
            })
            .unwrap_or_default();
        retiring.sort_unstable();
        retiring
    }

    /// Removed backends still carrying flows: (service, address, port, slot).
    pub fn retiring(&self) -> Vec<(String, IpAddr, u16, u32)> {
        let mut retiring: Vec<_> = self
            .services
            .iter()
            .flat_map(|(name, slot)| {
                slot.retiring
                    .iter()
                    .map(move |(key, b)| (name.clone(), key.0, key.1, b.id))
            })
            .collect();
        retiring.sort_unstable();
        retiring
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

    /// Counts the services' changed addresses into the sets; writes them
    /// whole instead when a set is not known as written (the first apply,
    /// an adopted data plane, a write that failed).
    fn write_address_sets(&mut self, dataplane: &Dataplane) -> Result<(), DataplaneError> {
        let changes = std::mem::take(&mut self.address_changes);
        if self.addresses_changed {
            return self.sync_address_sets(dataplane);
        }
        if changes.is_empty() {
            return Ok(());
        }
        let (mut vips, mut replies) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for (before, after) in changes {
            vips.0.extend(before.vips);
            vips.1.extend(after.vips);
            replies.0.extend(before.replies);
            replies.1.extend(after.replies);
        }
        // Synced whole if either fails or is not known.
        self.addresses_changed = true;
        let known = self.vips.count(vip_set(dataplane), &vips.0, &vips.1)?
            && self
                .backend_addrs
                .count(reply_set(dataplane), &replies.0, &replies.1)?;
        if !known {
            return self.sync_address_sets(dataplane);
        }
        self.addresses_changed = false;
        Ok(())
    }

    /// Makes pnlb_vips hold exactly the configured VIPs, and
    /// pnlb_backend_addrs the backends whose replies need translating.
    fn sync_address_sets(&mut self, dataplane: &Dataplane) -> Result<(), DataplaneError> {
        self.address_changes.clear();
        // Set again if a write fails: the next apply syncs them.
        self.addresses_changed = true;
        let every: Vec<Addresses> = self.services.values().map(ServiceSlot::addresses).collect();
        let vips = every.iter().flat_map(|a| a.vips.iter().copied());
        self.vips.sync(vip_set(dataplane), vips)?;
        let replies = every.iter().flat_map(|a| a.replies.iter().copied());
        self.backend_addrs.sync(reply_set(dataplane), replies)?;
        self.addresses_changed = false;
        Ok(())
    }
}

/// What a table may name goes in before it: the backend generations
/// (a process that adopts the data plane must never give one a published
/// table names), then the new slots' entries (from here a table may name
/// them, even if publishing fails halfway: they are written like any
/// other), then the tables.
fn publish_in_order(
    dataplane: &Dataplane,
    slots: &mut Slots,
    held: &mut held_tables::HeldTables,
    tables: table::PendingTables,
) -> Result<(), DataplaneError> {
    slots.persist_generation(dataplane)?;
    slots.write_unpublished(dataplane)?;
    tables.publish(dataplane, held)
}

/// pnlb_vips and its filter.
fn vip_set(dataplane: &Dataplane) -> SetMaps<'_> {
    SetMaps {
        map: &dataplane.maps().pnlb_vips,
        name: "pnlb_vips",
        filter: &dataplane.vip_filter,
    }
}

/// pnlb_backend_addrs and its filter.
fn reply_set(dataplane: &Dataplane) -> SetMaps<'_> {
    SetMaps {
        map: &dataplane.maps().pnlb_backend_addrs,
        name: "pnlb_backend_addrs",
        filter: &dataplane.backend_filter,
    }
}

/// Every backend address of `services`, once each.
fn backend_addresses<'a>(services: impl IntoIterator<Item = &'a ServiceConfig>) -> Vec<IpAddr> {
    // Deduplicated before sorting: services share servers (10,000
    // services x 10 backends were 100,000 addresses of 1,000 servers).
    let unique: HashSet<IpAddr> = services
        .into_iter()
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .collect();
    let mut addresses: Vec<IpAddr> = unique.into_iter().collect();
    addresses.sort_unstable();
    addresses
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
