//! Backend next hops as the daemon caches them.

use pnlb_dataplane::nexthop::{KernelResolver, Resolution, Resolver};

/// Next hops as last resolved. Weight changes (health, slow start) reuse
/// them; the kernel is asked only for addresses not seen before, and for
/// all of them on the periodic refresh and on reload. Asking means running
/// `ip` and, for an unresolvable backend, waiting for its neighbour probe:
/// not something to repeat on every health transition or ramp step.
#[derive(Default)]
pub(super) struct NextHops {
    kernel: KernelResolver,
    known: Resolution,
    /// Set to re-ask the kernel about every address on the next apply.
    pub(super) stale: bool,
}

impl Resolver for NextHops {
    fn resolve(&mut self, backends: &[std::net::IpAddr]) -> Resolution {
        let ask: Vec<std::net::IpAddr> = backends
            .iter()
            .copied()
            .filter(|b| self.stale || !self.known.contains_key(b))
            .collect();
        if self.stale {
            self.known.retain(|address, _| backends.contains(address));
        }
        if !ask.is_empty() {
            self.known.extend(self.kernel.resolve(&ask));
        }
        self.stale = false;
        backends
            .iter()
            .map(|&b| {
                (
                    b,
                    self.known
                        .get(&b)
                        .cloned()
                        .unwrap_or_else(|| Err(format!("{b} was not resolved"))),
                )
            })
            .collect()
    }
}
