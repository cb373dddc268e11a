//! The daemon's side of `[ha]`: attaching, and taking or giving up the
//! addresses, as the election decides.

use anyhow::Result;
use pnlb_core::config::XdpMode;

use super::Daemon;
use crate::log::{info, warning};

impl Daemon {
    /// Attaches the program to every interface.
    pub(super) fn attach(&self) -> Result<Vec<pnlb_dataplane::Attachment>> {
        let mut attachments = Vec::new();
        for interface in &self.config.daemon.interfaces {
            attachments.push(
                self.dataplane
                    .attach(interface, self.config.daemon.xdp_mode)?,
            );
        }
        self.publish_own_macs();
        if let Some(dir) = self.dataplane.pin_dir() {
            match pnlb_dataplane::pinning::remove_other_links(dir, &self.config.daemon.interfaces) {
                Ok(gone) if !gone.is_empty() => info!(
                    "detached the data plane left running on {} (no longer in daemon.interfaces)",
                    gone.join(", ")
                ),
                Ok(_) => {}
                Err(err) => warning!("clearing links to interfaces no longer configured: {err}"),
            }
        }
        let mode = match self.config.daemon.xdp_mode {
            XdpMode::Native => "native XDP",
            XdpMode::Generic => {
                "generic XDP (skb mode: slower; use native where the driver supports it)"
            }
        };
        info!(
            "forwarding {} service(s) on {} ({mode})",
            self.config.services.len(),
            self.config.daemon.interfaces.join(", ")
        );
        Ok(attachments)
    }

    /// The interfaces' own MACs, so that the program leaves frames for
    /// other hosts alone (own_macs.rs).
    pub(super) fn publish_own_macs(&self) {
        if let Err(err) = self.dataplane.set_own_macs(&self.config.daemon.interfaces) {
            warning!("publishing the interfaces' own MACs: {err}");
        }
    }

    /// The VIPs and floating addresses an active node holds.
    pub(super) fn held_addresses(&self) -> Vec<std::net::IpAddr> {
        let mut addresses: Vec<std::net::IpAddr> =
            self.config.services.iter().map(|s| s.vip).collect();
        if let Some(ha) = &self.config.ha {
            addresses.extend(&ha.floating);
        }
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// Announces the floating addresses (what neighbours send the traffic
    /// to) again after a takeover; the VIPs are announced when claimed.
    pub(super) fn announce_floating(&self) {
        if let Some(ha) = &self.config.ha {
            if let Err(err) = crate::ha::takeover::announce(&ha.interface, &ha.floating) {
                warning!("ha: announcing the floating addresses again: {err:#}");
            }
        }
    }

    /// Becomes the active node (attach, claim the addresses) or a standby
    /// (release them, detach). Returns whether that worked.
    pub(super) fn change_role(
        &self,
        role: crate::ha::election::Role,
        attachments: &mut Vec<pnlb_dataplane::Attachment>,
    ) -> bool {
        let Some(ha) = &self.config.ha else {
            return true;
        };
        let addresses = self.held_addresses();
        match role {
            crate::ha::election::Role::Master => {
                if attachments.is_empty() {
                    match self.attach() {
                        Ok(attached) => *attachments = attached,
                        Err(err) => {
                            warning!("ha: elected but cannot attach: {err:#}; resigning");
                            return false;
                        }
                    }
                }
                if let Err(err) = crate::ha::takeover::claim(&ha.interface, &addresses) {
                    warning!("ha: claiming the addresses: {err:#}");
                    return false;
                }
                warning!(
                    "ha: MASTER of group {}: holding {} address(es) on {} and forwarding",
                    ha.group,
                    addresses.len(),
                    ha.interface
                );
            }
            crate::ha::election::Role::Backup => {
                if let Err(err) = crate::ha::takeover::release(&ha.interface, &addresses) {
                    warning!("ha: releasing the addresses: {err:#}");
                }
                warning!(
                    "ha: BACKUP of group {}: holding no address; what still reaches this node is forwarded by its synced table",
                    ha.group
                );
            }
        }
        true
    }
}
