//! API calls, answered by the daemon loop: edits of the config document
//! (validated whole, checked for room, then adopted), drains, zeroing.

use std::path::Path;
use std::time::Instant;

use pnlb_core::config::{self, Config};

use super::{endpoint, Daemon};
use crate::api::edit::BackendSelector;
use crate::api::model::{ApiError, Done};
use crate::api::{Op, Reply};
use crate::health::monitor::BackendKey;
use crate::log::info;

impl Daemon {
    /// Answers one API call.
    pub(super) fn serve(&mut self, op: Op) -> Reply {
        let result = match op {
            Op::Status => return Reply::Status(Box::new(self.status())),
            Op::ServiceStatus(name) => {
                return Reply::Service(self.one_service_status(&name).map(Box::new))
            }
            Op::Document => {
                return match serde_json::to_value(&self.document) {
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

    fn edit(&mut self, edit: &crate::api::edit::Edit) -> Result<Done, ApiError> {
        let mut document = self.document.clone();
        let what = crate::api::edit::apply(&mut document, edit)?;
        let next =
            config::validate_document(Path::new("API request"), &document).map_err(|err| {
                ApiError::new(422, format!("{}: {}", err.key, err.reason)).with_fix(err.fix.clone())
            })?;
        if next.daemon != self.config.daemon || next.ha != self.config.ha {
            return Err(
                ApiError::new(422, "the API does not change [daemon] or [ha]")
                    .with_fix("edit the file and restart pnlb run"),
            );
        }
        if !next.daemon.api_exec_checks {
            // An exec check runs a command on this host: the API token
            // must not be a way to run one the config file does not name.
            let known = self.config.exec_commands();
            if let Some(command) = next.exec_commands().difference(&known).next() {
                return Err(ApiError::new(
                    403,
                    format!(
                        "exec health checks cannot be set through the API: {:?} is not one the config file runs",
                        command.join(" ")
                    ),
                )
                .with_fix("add the check to the config file (and reload), or set daemon.api_exec_checks = true with daemon.exec_check_dir"));
            }
        }
        self.fits(&next)?;
        self.source = format!("file {} + API edits", self.path.display());
        Ok(self.adopt(document, next, format!("API: {what}")))
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
