//! API calls, answered by the daemon loop: edits of the config document
//! (one service validated, the rules across services checked, room
//! checked, then that service adopted), drains, zeroing.

use std::path::Path;
use std::time::Instant;

use pnlb_core::config::{Config, Service};

use super::{endpoint, index_added, index_removed, log_written, warn_without_forwarding, Daemon};
use crate::api::edit::{self, Applied, BackendSelector, Edit, Swap};
use crate::api::model::{ApiError, Done};
use crate::api::{Op, Reply};
use crate::health::monitor::BackendKey;
use crate::log::info;

impl Daemon {
    /// Answers one API call.
    pub(super) fn serve(&mut self, op: Op) -> Reply {
        let result = match op {
            Op::Status => {
                self.fingerprinter.current(&self.config);
                return Reply::Status(Box::new(self.status()));
            }
            Op::ServiceStatus(name) => {
                return Reply::Service(self.one_service_status(&name).map(Box::new))
            }
            Op::Document => {
                return match serde_json::to_value(&*self.document.get()) {
                    Ok(document) => Reply::Document(document),
                    Err(err) => {
                        Reply::Failed(ApiError::new(500, format!("encoding the config: {err}")))
                    }
                }
            }
            Op::Reload => self.reload(),
            Op::Edit(edit) => self.edit(&edit),
            Op::Drain {
                service,
                backend,
                drained,
            } => self.drain(&service, backend, drained),
            Op::Node { drained, deadline } => self.drain_node(drained, deadline),
            Op::Zero => match self.programmer.zero_counters(&self.dataplane) {
                Ok(()) => {
                    info!("counters zeroed through the API");
                    Ok(Done {
                        done: "counters zeroed".into(),
                        config_version: self.version,
                    })
                }
                Err(err) => Err(ApiError::new(500, format!("zeroing counters: {err}"))),
            },
        };
        match result {
            Ok(done) => Reply::Done(done),
            Err(err) => Reply::Failed(err),
        }
    }

    /// An API edit: made in the document in place, the service it touches
    /// validated alone and the rules across services over the result (what
    /// validating the whole document would find), then adopted as that one
    /// service's change. A refused edit is undone. At 10,000 services the
    /// whole document copied, validated and adopted took 0.6-0.8 s.
    fn edit(&mut self, edit: &Edit) -> Result<Done, ApiError> {
        let origin = Path::new("API request");
        let document = self.document.get();
        let Applied { what, change } = edit::apply_indexed(document, edit, &self.service_index)?;
        let swap = match edit::revalidate(
            origin,
            document,
            &change,
            &self.config.daemon,
            &mut self.config.services,
        ) {
            Ok(swap) => swap,
            Err(err) => {
                edit::undo(change, document);
                return Err(
                    ApiError::new(422, format!("{}: {}", err.key, err.reason)).with_fix(err.fix)
                );
            }
        };
        if let Err(err) = self
            .exec_checks_allowed(&swap)
            .and_then(|()| self.fits(&self.config))
        {
            swap.undo(&mut self.config.services);
            edit::undo(change, self.document.get());
            return Err(err);
        }
        self.source = format!("file {} + API edits", self.path.display());
        Ok(self.adopt_one(swap, format!("API: {what}")))
    }

    /// An exec check runs a command on this host: the API token must not be
    /// a way to run one the config file does not name (unless
    /// daemon.api_exec_checks). `swap` is in `config.services` already.
    fn exec_checks_allowed(&self, swap: &Swap) -> Result<(), ApiError> {
        let (index, before) = match swap {
            Swap::Added(index) => (*index, None),
            Swap::Replaced(index, before) => (*index, Some(before)),
            Swap::Removed(..) => return Ok(()),
        };
        if self.config.daemon.api_exec_checks {
            return Ok(());
        }
        let Some(service) = self.config.services.get(index) else {
            return Ok(());
        };
        let known = |command: &[String]| {
            before.is_some_and(|b| b.exec_commands().any(|c| c == command))
                || self
                    .config
                    .services
                    .iter()
                    .enumerate()
                    .any(|(i, s)| i != index && s.exec_commands().any(|c| c == command))
        };
        match service.exec_commands().find(|command| !known(command)) {
            None => Ok(()),
            Some(command) => Err(ApiError::new(
                403,
                format!(
                    "exec health checks cannot be set through the API: {:?} is not one the config file runs",
                    command.join(" ")
                ),
            )
            .with_fix("add the check to the config file (and reload), or set daemon.api_exec_checks = true with daemon.exec_check_dir")),
        }
    }

    /// Makes one service's change (in `config.services` already) the
    /// desired state: its health checks, drains, fingerprint and data plane
    /// entries follow, no other service's.
    fn adopt_one(&mut self, swap: Swap, what: String) -> Done {
        let now = Instant::now();
        let (index, before) = match &swap {
            Swap::Added(index) => (*index, None),
            Swap::Replaced(index, before) | Swap::Removed(index, before) => (*index, Some(before)),
        };
        let after = match swap {
            Swap::Removed(..) => None,
            _ => self.config.services.get(index),
        };
        let Some(name) = after.or(before).map(|s| s.name.clone()) else {
            return self.done(what);
        };
        self.monitor.change_service(before, after);
        self.lifecycle.retain_service(&name, after);
        self.drained.retain(|(service, address, port)| {
            *service != name
                || after.is_some_and(|s| {
                    s.backends
                        .iter()
                        .any(|b| b.address == *address && b.port == *port)
                })
        });
        let effective = after.map(|service| {
            let mut effective = service.clone();
            self.drained_weights(&mut effective);
            self.lifecycle.effective_service(&mut effective, now);
            effective
        });
        let applied = &mut self.applied.services;
        match (&swap, effective) {
            (Swap::Added(_), Some(effective)) => {
                applied.insert(index.min(applied.len()), effective)
            }
            (Swap::Replaced(..), Some(effective)) if index < applied.len() => {
                applied[index] = effective
            }
            (Swap::Removed(..), _) if index < applied.len() => {
                applied.remove(index);
            }
            _ => {}
        }
        // The index follows by shifting, not rebuilt (10,000 names
        // allocated and freed were most of an added service's time).
        match &swap {
            Swap::Added(index) => index_added(&mut self.service_index, &name, *index),
            Swap::Removed(index, _) => index_removed(&mut self.service_index, &name, *index),
            Swap::Replaced(..) => {}
        }
        self.fingerprinter.changed(&name);
        let written = match &swap {
            Swap::Removed(..) => self
                .programmer
                .remove(&self.dataplane, std::slice::from_ref(&name)),
            _ => {
                // At its index (the effective list follows the config's),
                // searched for only if it is not there.
                let services = &self.applied.services;
                let service: Vec<&Service> = services
                    .get(index)
                    .filter(|s| s.name == name)
                    .or_else(|| services.iter().find(|s| s.name == name))
                    .into_iter()
                    .collect();
                self.programmer
                    .apply_given(&self.dataplane, &service, &mut self.next_hops)
            }
        };
        log_written(written);
        // Said at start and reload; again only when this edit brings
        // translation in (not on every edit of a nat service).
        let translates_now = after.is_some_and(|s| s.method.translates())
            && !before.is_some_and(|b| b.method.translates());
        drop(swap);
        self.publish_names();
        if translates_now {
            warn_without_forwarding(&self.config);
        }
        self.done(what)
    }

    fn drain(
        &mut self,
        service: &str,
        selector: BackendSelector,
        drained: bool,
    ) -> Result<Done, ApiError> {
        let config = self
            .config
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| ApiError::new(404, format!("no service named {service:?}")))?;
        let matches: Vec<BackendKey> = config
            .backends
            .iter()
            .filter(|b| b.address == selector.address && selector.port.is_none_or(|p| p == b.port))
            .map(|b| (service.to_string(), b.address, b.port))
            .collect();
        let key = match matches.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(ApiError::new(
                    404,
                    format!("service {service} has no backend {selector}"),
                ))
            }
            _ => {
                return Err(ApiError::new(
                    409,
                    format!("service {service} has several backends at {selector}"),
                )
                .with_fix("name the port too, e.g. 10.77.1.11:8080"))
            }
        };
        let endpoint = endpoint(key.1, key.2);
        let changed = if drained {
            self.drained.insert(key)
        } else {
            self.drained.remove(&key)
        };
        let what = match (drained, changed) {
            (true, true) => format!("service {service}: backend {endpoint} drained: no new flows, established ones continue"),
            (false, true) => format!("service {service}: backend {endpoint} undrained"),
            (true, false) => format!("service {service}: backend {endpoint} was already drained"),
            (false, false) => format!("service {service}: backend {endpoint} was not drained"),
        };
        if changed {
            // This service alone (a drain is the operator's single change).
            self.due.insert(service.to_string());
            self.apply_due(Instant::now(), true);
            self.version += 1;
            info!("API: {what}");
        }
        Ok(Done {
            done: what,
            config_version: self.version,
        })
    }

    /// Refuses, before anything is written, a config the data plane has no
    /// room for (so an apply never stops halfway for lack of slots).
    pub(super) fn fits(&self, next: &Config) -> Result<(), ApiError> {
        let services = next.services.len();
        // Removed backends keep their slots while they have flows.
        let backends: usize = next
            .services
            .iter()
            .map(|s| s.backends.len() + usize::from(s.fallback.is_some()))
            .sum::<usize>()
            + self.programmer.retiring().len();
        let limits = self.dataplane.limits();
        if services > limits.services as usize {
            return Err(ApiError::new(
                422,
                format!(
                    "{services} services: the data plane holds {} (daemon.max_services)",
                    limits.services
                ),
            )
            .with_fix(
                "remove services (raising daemon.max_services takes a restart: docs/config.md)",
            ));
        }
        if backends > limits.backends as usize {
            return Err(ApiError::new(422, format!("{backends} backends (counting removed ones still carrying flows): the data plane holds {} (daemon.max_backends)", limits.backends))
                .with_fix("remove backends, or wait for removed ones to finish their flows"));
        }
        Ok(())
    }
}
