//! Limits being hit, logged once per episode rather than per packet: SNAT
//! pools running dry, services over their new_flow_rate, a full
//! connection table. An episode starts when a refusal counter rises and
//! ends at the first sweep where it did not.

use std::collections::HashMap;
use std::time::Instant;

use pnlb_core::config::{Config, Service};
use pnlb_dataplane::abi::Reason;
use pnlb_dataplane::{Dataplane, Programmer};

use crate::log::{info, warning};

/// One counter's episode state.
#[derive(Default)]
struct Episode {
    last: u64,
    /// The count when the running episode began.
    started_at: Option<u64>,
}

impl Episode {
    /// Feeds the counter's current value; returns what to log: Some(true,
    /// n) when an episode starts (n refused so far), Some(false, n) when it
    /// ends (n refused in all).
    fn observe(&mut self, now: u64) -> Option<(bool, u64)> {
        let before = std::mem::replace(&mut self.last, now);
        match (self.started_at, now > before) {
            (None, true) => {
                self.started_at = Some(before);
                Some((true, now - before))
            }
            (Some(start), false) => {
                self.started_at = None;
                Some((false, now - start))
            }
            _ => None,
        }
    }
}

/// The refusals watched per service.
const WATCHED: [Reason; 2] = [
    Reason::PNLB_DROP_SNAT_EXHAUSTED,
    Reason::PNLB_DROP_RATE_LIMITED,
];

#[derive(Default)]
pub(super) struct PressureWatch {
    /// service -> an episode per reason of [`WATCHED`].
    services: HashMap<String, [Episode; 2]>,
    table_full: Episode,
    /// New flows per service at the last check, for the opening rate.
    new_flows: HashMap<String, (u64, Instant)>,
    /// Whether the SNAT rest map was last found too small for the rate.
    rest_short: bool,
    /// The data plane's totals of the [`WATCHED`] refusals at the last check.
    refused: [u64; 2],
}

/// Above this many services to read, their counters are read in one batch
/// (of every slot) rather than one by one.
const READ_ONE_BY_ONE: usize = 64;

/// The longest interval a service's opening rate is worked out over
/// (three sweep passes).
const RATE_WINDOW_SECONDS: f64 = 15.0;

impl PressureWatch {
    pub(super) fn check(
        &mut self,
        dataplane: &Dataplane,
        programmer: &Programmer,
        config: &Config,
    ) {
        let reasons = dataplane.reason_counters().ok();
        if let Some(reasons) = &reasons {
            let full = reasons[Reason::PNLB_DROP_TABLE_FULL.0 as usize];
            match self.table_full.observe(full) {
                Some((true, n)) => warning!(
                    "connection table full: {n} new flow(s) refused; established flows are unaffected. \
                     Raise daemon.conn_table_size (docs/conntrack.md says how to size it)"
                ),
                Some((false, n)) => info!("connection table has room again ({n} new flow(s) were refused)"),
                None => {}
            }
        }
        // Every service is looked at only when a watched refusal was counted
        // since the last check or an episode is open; otherwise only the
        // SNAT services, for the rest map's rate. At 10,000 services a look
        // at each took 40-70 ms of the daemon loop every sweep pass.
        let refused = WATCHED.map(|r| reasons.map_or(u64::MAX, |all| all[r.0 as usize]));
        let moved = std::mem::replace(&mut self.refused, refused) != refused;
        let open = self
            .services
            .values()
            .flatten()
            .any(|episode| episode.started_at.is_some());
        let looked_at: Vec<(&Service, u32)> = config
            .services
            .iter()
            .filter(|service| moved || open || service.snat.is_some())
            .filter_map(|service| Some((service, programmer.service_id(&service.name)?)))
            .collect();
        let every = if looked_at.len() > READ_ONE_BY_ONE {
            dataplane.every_service_counters()
        } else {
            Vec::new()
        };
        let mut resting = 0.0;
        for (service, id) in looked_at {
            let one;
            let counters = match every.get(id as usize) {
                Some(counters) => counters,
                None => match dataplane.service_counters(id) {
                    Ok(counters) => {
                        one = counters;
                        &one
                    }
                    Err(_) => continue,
                },
            };
            let rate = self.opening_rate(&service.name, counters.new_flows);
            if let (Some(snat), Some(rate)) = (&service.snat, rate) {
                resting += rate * snat.reuse_after.as_secs_f64();
            }
            // Looked up by name before a key is made: a name allocated per
            // service and check was much of a check at 10,000 services.
            if !self.services.contains_key(&service.name) {
                self.services
                    .insert(service.name.clone(), Default::default());
            }
            let Some(episodes) = self.services.get_mut(&service.name) else {
                continue;
            };
            for (reason, episode) in WATCHED.into_iter().zip(episodes.iter_mut()) {
                let count = counters.drops[reason.0 as usize];
                match episode.observe(count) {
                    Some((true, n)) => warning!("{}", episode_start(service, reason, n, rate)),
                    Some((false, n)) => info!(
                        "service {}: no longer refusing new flows ({n} refused: {})",
                        service.name,
                        pnlb_dataplane::stats::reason_name(reason.0 as usize)
                    ),
                    None => {}
                }
            }
        }
        self.check_rest_room(resting, dataplane.table_sizes().snat_rest);
    }

    /// Ended snat flows rest in an LRU of conn_table_size keys; at a higher
    /// rate than it holds, the oldest rests are cut short and a backend may
    /// see a port it still holds in TIME_WAIT.
    fn check_rest_room(&mut self, resting: f64, capacity: u32) {
        let short = resting > f64::from(capacity) * 0.9;
        if short && !self.rest_short {
            warning!(
                "SNAT: about {resting:.0} ended flows' ports must rest at the current rate, but the rest map holds                  {capacity}; the oldest rests are cut short. Raise daemon.conn_table_size (docs/conntrack.md)"
            );
        } else if !short && self.rest_short {
            info!("SNAT: the rest map holds the current rate's ended flows again");
        }
        self.rest_short = short;
    }

    /// New flows per second since the last check.
    fn opening_rate(&mut self, service: &str, new_flows: u64) -> Option<f64> {
        let now = Instant::now();
        let Some(last) = self.new_flows.get_mut(service) else {
            self.new_flows.insert(service.to_string(), (new_flows, now));
            return None;
        };
        let (before, then) = std::mem::replace(last, (new_flows, now));
        let seconds = now.duration_since(then).as_secs_f64();
        // A service looked at only now and then: no rate from a sample
        // older than a few sweep passes (it would say an average).
        (seconds > 0.0 && seconds <= RATE_WINDOW_SECONDS)
            .then(|| new_flows.saturating_sub(before) as f64 / seconds)
    }
}

fn episode_start(service: &Service, reason: Reason, refused: u64, rate: Option<f64>) -> String {
    let opening = rate.map_or(String::new(), |r| format!(" (opening {r:.0} flows/s)"));
    if reason == Reason::PNLB_DROP_RATE_LIMITED {
        let limit = service.new_flow_rate.map_or(0, |r| r.per_second);
        return format!(
            "service {}: over new_flow_rate = {limit}/s{opening}, {refused} new flow(s) refused; \
             established flows are unaffected. Raise new_flow_rate if this is not a flood",
            service.name
        );
    }
    let pool = service.snat.as_ref().map_or(String::new(), |snat| {
        let sustained = snat
            .sustained_rate()
            .map_or(String::new(), |r| format!(", sustaining about {r:.0} new flows/s per backend"));
        format!(
            " The pool is {} address(es) x {} ports per backend, each resting {}s after its flow ends{sustained}.",
            snat.addresses.len(),
            snat.ports(),
            snat.reuse_after.as_secs()
        )
    });
    format!(
        "service {}: SNAT ports exhausted{opening}, {refused} new flow(s) refused; established flows are unaffected.{pool} \
         Add snat_addresses, widen snat_ports or shorten snat_reuse_after",
        service.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_logged_when_it_starts_and_when_it_ends() {
        let mut episode = Episode::default();
        assert_eq!(episode.observe(0), None);
        assert_eq!(episode.observe(5), Some((true, 5)));
        assert_eq!(episode.observe(9), None);
        assert_eq!(episode.observe(9), Some((false, 9)));
        assert_eq!(episode.observe(9), None);
        assert_eq!(episode.observe(10), Some((true, 1)));
    }
}
