//! The rules that span services: unique names and listeners, SNAT
//! addresses that are no service's VIP, the data plane's limits, exec
//! checks in their directory. A file runs them after every service is
//! valid on its own, with sets of every name, listener and VIP; an API
//! edit of one service runs them for that service against the others, a
//! pass that compares (~0.1 ms at 10,000 services, where the sets took
//! 2-5 ms and validating every service again 350 ms).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use super::{service_exec_commands, ConfigError, Daemon, Service, Validator, MAX_ACCESS_RULES};

impl Validator<'_> {
    pub(super) fn services_together(
        &self,
        daemon: &Daemon,
        services: &[Service],
    ) -> Result<(), ConfigError> {
        self.names_and_listeners_are_unique(services)?;
        self.snat_addresses_are_not_vips(services)?;
        self.within_the_data_planes_limits(daemon, services)?;
        self.exec_checks_in_their_directory(daemon, services.iter().enumerate())
    }

    /// The same rules for the service at `index` alone, the others being
    /// valid together already.
    pub(super) fn service_among(
        &self,
        daemon: &Daemon,
        services: &[Service],
        index: usize,
    ) -> Result<(), ConfigError> {
        let Some(service) = services.get(index) else {
            return self.within_the_data_planes_limits(daemon, services);
        };
        let listener = (service.vip, service.port, service.protocol);
        for (i, other) in services.iter().enumerate() {
            if i == index {
                continue;
            }
            // Reported at the later of the two, as a whole file is.
            let later = i.max(index);
            if other.name == service.name {
                return Err(self.name_twice(later, &services[later]));
            }
            if (other.vip, other.port, other.protocol) == listener {
                return Err(self.listener_taken(later, &services[later]));
            }
            if let Some(snat) = &other.snat {
                if let Some(k) = snat.addresses.iter().position(|a| *a == service.vip) {
                    return Err(self.snat_is_a_vip(i, other, k));
                }
            }
        }
        if let Some(snat) = &service.snat {
            let vips = |address: &IpAddr| services.iter().any(|s| s.vip == *address);
            if let Some(k) = snat.addresses.iter().position(vips) {
                return Err(self.snat_is_a_vip(index, service, k));
            }
        }
        self.within_the_data_planes_limits(daemon, services)?;
        self.exec_checks_in_their_directory(daemon, std::iter::once((index, service)))
    }

    fn name_twice(&self, index: usize, service: &Service) -> ConfigError {
        self.error(
            format!("service[{index}].name"),
            format!("service name {:?} is used twice", service.name),
            "give every [[service]] its own name",
        )
    }

    fn listener_taken(&self, index: usize, service: &Service) -> ConfigError {
        self.error(
            format!("service[{index}]"),
            format!(
                "another service already listens on {} port {} {}",
                service.vip, service.port, service.protocol
            ),
            "each (vip, port, protocol) may belong to one service only",
        )
    }

    /// Its `k`th SNAT address is a VIP.
    fn snat_is_a_vip(&self, index: usize, service: &Service, k: usize) -> ConfigError {
        let address = service
            .snat
            .as_ref()
            .and_then(|snat| snat.addresses.get(k))
            .map_or_else(String::new, ToString::to_string);
        self.error(
            format!("service[{index}] ({}).snat_addresses[{k}]", service.name),
            format!("{address} is a VIP; its clients' packets would be taken for replies"),
            "use a local address of the load balancer that no service listens on",
        )
    }

    fn names_and_listeners_are_unique(&self, services: &[Service]) -> Result<(), ConfigError> {
        let mut names = HashSet::with_capacity(services.len());
        let mut listeners = HashSet::with_capacity(services.len());
        for (index, service) in services.iter().enumerate() {
            if !names.insert(service.name.as_str()) {
                return Err(self.name_twice(index, service));
            }
            if !listeners.insert((service.vip, service.port, service.protocol)) {
                return Err(self.listener_taken(index, service));
            }
        }
        Ok(())
    }

    /// With daemon.exec_check_dir set, an exec check's command is a file
    /// directly in that directory, named by its absolute path.
    fn exec_checks_in_their_directory<'a>(
        &self,
        daemon: &Daemon,
        services: impl Iterator<Item = (usize, &'a Service)>,
    ) -> Result<(), ConfigError> {
        let Some(dir) = &daemon.exec_check_dir else {
            return Ok(());
        };
        for (index, service) in services {
            for command in service_exec_commands(service) {
                let program = Path::new(&command[0]);
                let inside = program.parent() == Some(dir.as_path())
                    && program.file_name().is_some_and(|name| name != "..");
                if !inside {
                    return Err(self.error(
                        format!("service[{index}] ({}).health.command", service.name),
                        format!(
                            "{} is not a file in daemon.exec_check_dir ({})",
                            command[0],
                            dir.display()
                        ),
                        format!(
                            "put the check in {} and name it by its full path, e.g. \"{}/check-{}\"",
                            dir.display(),
                            dir.display(),
                            service.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every service and backend gets a slot in maps sized by
    /// daemon.max_services and daemon.max_backends.
    fn within_the_data_planes_limits(
        &self,
        daemon: &Daemon,
        services: &[Service],
    ) -> Result<(), ConfigError> {
        if services.len() > daemon.max_services as usize {
            return Err(self.error(
                "daemon.max_services",
                format!(
                    "{} services are configured, the data plane is sized for {}",
                    services.len(),
                    daemon.max_services
                ),
                format!("set daemon.max_services = {} or more", services.len()),
            ));
        }
        let backends: usize = services
            .iter()
            .map(|s| s.backends.len() + usize::from(s.fallback.is_some()))
            .sum();
        let rules: usize = services.iter().map(|s| s.access.len()).sum();
        if rules > MAX_ACCESS_RULES {
            return Err(self.error(
                "service",
                format!("{rules} access rules (allow, deny) in all; the data plane holds {MAX_ACCESS_RULES}"),
                "merge prefixes",
            ));
        }
        if backends > daemon.max_backends as usize {
            return Err(self.error(
                "daemon.max_backends",
                format!(
                    "{backends} backends (fallbacks included) are configured, the data plane is sized for {}",
                    daemon.max_backends
                ),
                format!("set daemon.max_backends = {backends} or more (a removed backend keeps its slot while its flows last: leave room)"),
            ));
        }
        Ok(())
    }

    /// An SNAT address that is also a VIP would take the VIP's new flows
    /// for replies (and its replies for new flows).
    fn snat_addresses_are_not_vips(&self, services: &[Service]) -> Result<(), ConfigError> {
        let vips: HashSet<IpAddr> = services.iter().map(|s| s.vip).collect();
        for (index, service) in services.iter().enumerate() {
            let Some(snat) = &service.snat else { continue };
            if let Some(k) = snat.addresses.iter().position(|a| vips.contains(a)) {
                return Err(self.snat_is_a_vip(index, service, k));
            }
        }
        Ok(())
    }
}
