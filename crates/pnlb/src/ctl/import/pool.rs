//! A service's pool as IPVS builds it: a destination added twice, and
//! weighted failover (fo), which pnlb expresses with its fallback.

use std::net::IpAddr;

use super::model::{Backend, Method, Notes};

/// A second real server with the same address and port: IPVS refuses it
/// for nat; for dr and tun (where the port is not used) the two are one
/// server with both weights.
pub fn add_backend(
    backends: &mut Vec<Backend>,
    backend: Backend,
    method: Method,
    notes: &mut Notes,
) {
    let same = backends
        .iter_mut()
        .find(|b| b.address == backend.address && (!method.translates() || b.port == backend.port));
    match same {
        Some(existing) if !method.translates() => {
            existing.weight = (existing.weight + backend.weight).min(65_535);
            existing.comments.push(format!(
                "also real_server {} {} (line {}): with {} both are this server; weights added",
                backend.address,
                backend.port,
                backend.line,
                method.name()
            ));
            notes.approximated(
                backend.line,
                format!(
                    "real_server {} {}: the same server as line {} for {}; merged, weights added",
                    backend.address,
                    backend.port,
                    existing.line,
                    method.name()
                ),
            );
        }
        Some(existing) => notes.skipped(
            backend.line,
            format!(
                "real_server {} {}: already defined at line {} (IPVS refuses a duplicate too)",
                backend.address, backend.port, existing.line
            ),
        ),
        None => backends.push(backend),
    }
}

/// IPVS fo sends every new flow to the available server with the highest
/// weight: in pnlb, that server alone, and the next one as the fallback.
pub fn failover(
    backends: &mut Vec<Backend>,
    sorry: &mut Option<(IpAddr, u16, usize)>,
    notes: &mut Notes,
    line: usize,
    comments: &mut Vec<String>,
) {
    backends.sort_by_key(|b| std::cmp::Reverse(b.weight));
    if backends.len() > 1 {
        let second = backends.remove(1);
        if let Some((address, _, sorry_line)) =
            sorry.replace((second.address, second.port, second.line))
        {
            notes.skipped(sorry_line, format!("sorry_server {address}: with fo, the second-highest weight server is the fallback"));
        }
        for extra in backends.drain(1..) {
            notes.skipped(
                extra.line,
                format!(
                    "real_server {}: fo beyond two servers has no pnlb equivalent",
                    extra.address
                ),
            );
        }
    }
    comments.push(
        "lb_algo fo: the highest-weight server takes every new flow, the next is the fallback"
            .into(),
    );
    notes.approximated(
        line,
        "lb_algo fo: the highest-weight server as the backend, the next as [service.fallback]",
    );
}
