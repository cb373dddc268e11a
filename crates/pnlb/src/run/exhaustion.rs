//! SNAT port exhaustion, logged once per episode.

use std::collections::HashMap;

use pnlb_core::config::Config;
use pnlb_dataplane::{Dataplane, Programmer};

use crate::log::warning;

/// Logs SNAT port exhaustion per service, once per episode rather than per
/// dropped flow.
#[derive(Default)]
pub(super) struct ExhaustionWatch {
    dropped: HashMap<String, u64>,
}

impl ExhaustionWatch {
    pub(super) fn check(
        &mut self,
        dataplane: &Dataplane,
        programmer: &Programmer,
        config: &Config,
    ) {
        let Some(reason) = pnlb_dataplane::stats::reason_by_name("drop_snat_exhausted") else {
            return;
        };
        for service in config.services.iter().filter(|s| s.snat.is_some()) {
            let Some(id) = programmer.service_id(&service.name) else {
                continue;
            };
            let Ok(counters) = dataplane.service_counters(id) else {
                continue;
            };
            let now = counters.drops[reason];
            let before = self.dropped.insert(service.name.clone(), now).unwrap_or(0);
            if now > before {
                warning!(
                    "service {}: SNAT ports exhausted, {} new flow(s) dropped; established flows are unaffected. \
                     Add snat_addresses or widen snat_ports",
                    service.name,
                    now - before
                );
            }
        }
    }
}
