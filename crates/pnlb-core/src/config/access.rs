//! `allow` and `deny`: which sources may reach a service. Source prefixes,
//! IPv4 and IPv6; the longest prefix that matches a packet's source
//! decides; with any `allow`, a source no rule matches is denied.

use std::collections::HashSet;

use crate::prefix::Prefix;

use super::{ConfigError, Validator};

/// Rules of all services together (the data plane's pnlb_access).
pub const MAX_ACCESS_RULES: usize = 65_536;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub allow: Vec<Prefix>,
    pub deny: Vec<Prefix>,
}

impl Access {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Every rule: (prefix, whether it allows).
    pub fn rules(&self) -> impl Iterator<Item = (Prefix, bool)> + '_ {
        let allow = self.allow.iter().map(|p| (*p, true));
        allow.chain(self.deny.iter().map(|p| (*p, false)))
    }

    pub fn len(&self) -> usize {
        self.allow.len() + self.deny.len()
    }
}

impl Validator<'_> {
    pub(super) fn access(
        &self,
        at: &dyn Fn(&str) -> String,
        allow: Option<Vec<String>>,
        deny: Option<Vec<String>>,
    ) -> Result<Access, ConfigError> {
        let parse = |key: &str, list: Option<Vec<String>>| -> Result<Vec<Prefix>, ConfigError> {
            let mut prefixes: Vec<Prefix> = Vec::new();
            let mut seen = HashSet::new();
            for (i, text) in list.unwrap_or_default().iter().enumerate() {
                let prefix: Prefix = text.parse().map_err(|reason: String| {
                    self.error(
                        format!("{}[{i}]", at(key)),
                        reason,
                        "write a source prefix like \"192.0.2.0/24\" or \"2001:db8::/32\", or an address",
                    )
                })?;
                if seen.insert(prefix) {
                    prefixes.push(prefix);
                }
            }
            Ok(prefixes)
        };
        let access = Access {
            allow: parse("allow", allow)?,
            deny: parse("deny", deny)?,
        };
        let denied: HashSet<&Prefix> = access.deny.iter().collect();
        if let Some(both) = access.allow.iter().find(|p| denied.contains(p)) {
            return Err(self.error(
                at("deny"),
                format!("{both} is both allowed and denied"),
                "keep it in one list (the longest matching prefix decides, so a longer one can carve out of a shorter)",
            ));
        }
        if access.len() > MAX_ACCESS_RULES {
            return Err(self.error(
                at("allow"),
                format!("{} rules (at most {MAX_ACCESS_RULES})", access.len()),
                "merge prefixes",
            ));
        }
        Ok(access)
    }
}
