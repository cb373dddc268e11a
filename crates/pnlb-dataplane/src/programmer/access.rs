//! Access rules (service.allow, service.deny) in pnlb_access: an LPM trie
//! keyed by (service slot, source prefix), whose longest match decides. A
//! service's new and changed rules are written before its entry says it
//! has any, and its old ones deleted after the entry is written, so no
//! packet meets a half state that denies what the config allows.

use std::collections::{HashMap, HashSet};

use libbpf_rs::{MapCore, MapFlags};
use pnlb_core::config::{Access, MAX_ACCESS_RULES};
use pnlb_core::prefix::Prefix;

use super::ids::IdPool;
use super::{map_err, zero_percpu};
use crate::abi::{self, bytes_of};
use crate::loader::{Dataplane, DataplaneError};

/// A rule as written: whether it allows, and its hit counter's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    allow: bool,
    index: u32,
}

/// The rules in pnlb_access, by service slot.
#[derive(Default)]
pub(super) struct AccessRules {
    applied: HashMap<u32, HashMap<Prefix, Rule>>,
    indices: IdPool,
}

/// struct pnlb_access_key: the prefix length over (service id, address),
/// host order; the id; the address, IPv4-mapped.
fn key(service: u32, prefix: &Prefix) -> Vec<u8> {
    let mapped = if prefix.address.is_ipv4() { 96 } else { 0 };
    let mut key = (32 + mapped + u32::from(prefix.len)).to_ne_bytes().to_vec();
    key.extend_from_slice(&service.to_ne_bytes());
    key.extend_from_slice(bytes_of(&abi::addr(prefix.address)));
    key
}

/// struct pnlb_access_rule.
fn value(rule: Rule) -> [u8; 8] {
    let mut value = [0u8; 8];
    value[..4].copy_from_slice(&rule.index.to_ne_bytes());
    value[4] = u8::from(rule.allow);
    value
}

/// A pnlb_access key read back: (service id, prefix).
fn parse_key(bytes: &[u8]) -> Option<(u32, Prefix)> {
    let length = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    let service = u32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?);
    let address = abi::ip_of(&abi::from_bytes::<abi::Addr>(bytes.get(8..24)?)?);
    let mapped = if address.is_ipv4() { 96 } else { 0 };
    let len = u8::try_from(length.checked_sub(32 + mapped)?).ok()?;
    Some((service, Prefix { address, len }))
}

impl AccessRules {
    /// Writes the rules of `access` for service `id` that are new or
    /// changed; returns those to delete once its entry no longer needs them.
    pub(super) fn write(
        &mut self,
        dataplane: &Dataplane,
        id: u32,
        access: &Access,
    ) -> Result<Vec<Prefix>, DataplaneError> {
        let maps = dataplane.maps();
        let applied = self.applied.entry(id).or_default();
        for (prefix, allow) in access.rules() {
            let rule = match applied.get(&prefix) {
                Some(rule) if rule.allow == allow => continue,
                Some(rule) => Rule { allow, ..*rule },
                None => {
                    let taken = self
                        .indices
                        .take_or_full(MAX_ACCESS_RULES as u32, "access rules")?;
                    if !taken.fresh {
                        zero_percpu::<u64>(&maps.pnlb_access_hits, taken.id, "pnlb_access_hits")?;
                    }
                    Rule {
                        allow,
                        index: taken.id,
                    }
                }
            };
            maps.pnlb_access
                .update(&key(id, &prefix), &value(rule), MapFlags::ANY)
                .map_err(map_err("pnlb_access"))?;
            applied.insert(prefix, rule);
        }
        let wanted: HashSet<Prefix> = access.rules().map(|(prefix, _)| prefix).collect();
        Ok(applied
            .keys()
            .filter(|prefix| !wanted.contains(prefix))
            .copied()
            .collect())
    }

    /// Deletes service `id`'s rules for `prefixes`.
    pub(super) fn delete(
        &mut self,
        dataplane: &Dataplane,
        id: u32,
        prefixes: &[Prefix],
    ) -> Result<(), DataplaneError> {
        let Some(applied) = self.applied.get_mut(&id) else {
            return Ok(());
        };
        for prefix in prefixes {
            match dataplane.maps().pnlb_access.delete(&key(id, prefix)) {
                Ok(()) => {}
                Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(err) => return Err(map_err("pnlb_access")(err)),
            }
            if let Some(rule) = applied.remove(prefix) {
                self.indices.give_back(rule.index);
            }
        }
        if applied.is_empty() {
            self.applied.remove(&id);
        }
        Ok(())
    }

    /// A removed service's rules (after its entry is gone).
    pub(super) fn remove_service(
        &mut self,
        dataplane: &Dataplane,
        id: u32,
    ) -> Result<(), DataplaneError> {
        let prefixes: Vec<Prefix> = self
            .applied
            .get(&id)
            .map(|rules| rules.keys().copied().collect())
            .unwrap_or_default();
        self.delete(dataplane, id, &prefixes)
    }

    /// The rules a data plane left running holds.
    pub(super) fn adopt(dataplane: &Dataplane) -> Self {
        let mut rules = Self::default();
        rules.indices.none_fresh();
        let map = &dataplane.maps().pnlb_access;
        for key_bytes in map.keys() {
            let (Some((service, prefix)), Ok(Some(value))) =
                (parse_key(&key_bytes), map.lookup(&key_bytes, MapFlags::ANY))
            else {
                continue;
            };
            let Some(index) = value.get(..4).and_then(|b| b.try_into().ok()) else {
                continue;
            };
            let rule = Rule {
                index: u32::from_ne_bytes(index),
                allow: value.get(4) == Some(&1),
            };
            rules.indices.claim(rule.index);
            rules
                .applied
                .entry(service)
                .or_default()
                .insert(prefix, rule);
        }
        rules
    }

    /// Hits (packets dropped) of each deny rule of service `id`, by prefix.
    pub(super) fn hits(&self, dataplane: &Dataplane, id: u32) -> Vec<(Prefix, bool, u64)> {
        let Some(applied) = self.applied.get(&id) else {
            return Vec::new();
        };
        let map = &dataplane.maps().pnlb_access_hits;
        let mut hits: Vec<(Prefix, bool, u64)> = applied
            .iter()
            .map(|(prefix, rule)| {
                let count = map
                    .lookup_percpu(&rule.index.to_ne_bytes(), MapFlags::ANY)
                    .ok()
                    .flatten()
                    .map_or(0, |cpus| {
                        cpus.iter().filter_map(|v| abi::from_bytes::<u64>(v)).sum()
                    });
                (*prefix, rule.allow, count)
            })
            .collect();
        hits.sort_by_key(|(prefix, _, _)| *prefix);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for text in [
            "10.77.0.0/16",
            "10.77.0.9/32",
            "fd77::/16",
            "0.0.0.0/0",
            "::/0",
        ] {
            let prefix: Prefix = text.parse().unwrap();
            assert_eq!(parse_key(&key(7, &prefix)), Some((7, prefix)), "{text}");
        }
    }
}
