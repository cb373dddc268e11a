//! `pnlb ctl import`: an existing IPVS setup as a pnlb config, from a
//! keepalived.conf ([`keepalived`]) or from ipvsadm rules and scripts
//! ([`ipvsadm`]). Everything pnlb can express is imported; where pnlb's
//! nearest setting means something else, the output says so in a comment;
//! everything else is listed in the summary with its line and why. The
//! output always passes `pnlb check`: a service that would not is left out
//! and listed too.

#[cfg(test)]
mod corpus_tests;
pub mod ipvsadm;
pub mod keepalived;
mod model;
pub mod names;
mod pool;
mod render;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

pub use model::{Note, NoteKind};
use model::{Notes, Service};
use render::Head;

/// The result of an import: the config, and what did not carry over.
pub struct Imported {
    pub toml: String,
    pub services: usize,
    pub backends: usize,
    pub notes: Vec<Note>,
}

impl Imported {
    /// The summary for people, one line per note, `source:line: ...`.
    pub fn summary(&self, source: &str) -> String {
        let mut out = String::new();
        for note in &self.notes {
            let tag = match note.kind {
                NoteKind::Skipped => "not imported",
                NoteKind::Approximated => "changed",
                NoteKind::Outside => "not load balancing",
            };
            let place = if note.line == 0 {
                source.to_string()
            } else {
                format!("{source}:{}", note.line)
            };
            let _ = writeln!(out, "{place}: {tag}: {}", note.text);
        }
        let count = |kind| self.notes.iter().filter(|n| n.kind == kind).count();
        let _ = writeln!(
            out,
            "imported {} service(s) with {} backend(s); {} item(s) not imported, {} imported with another meaning, {} outside load balancing",
            self.services,
            self.backends,
            count(NoteKind::Skipped),
            count(NoteKind::Approximated),
            count(NoteKind::Outside)
        );
        out
    }
}

/// Names every service uniquely, keeps one service per (VIP, port,
/// protocol), moves a health check all backends share to the service, and
/// leaves out whatever pnlb's validation refuses.
fn finish(head: Head, mut services: Vec<Service>, mut notes: Notes) -> Imported {
    let mut first_at: HashMap<(std::net::IpAddr, u16, &'static str), usize> = HashMap::new();
    services.retain(|s| match first_at.get(&(s.vip, s.port, s.protocol.name())) {
        Some(&line) => {
            notes.skipped(
                s.line,
                format!(
                    "{} {}:{} is already defined at line {line}; IPVS holds one service per address, port and protocol",
                    s.protocol.name(),
                    s.vip,
                    s.port
                ),
            );
            false
        }
        None => {
            first_at.insert((s.vip, s.port, s.protocol.name()), s.line);
            true
        }
    });
    let mut taken: HashMap<String, usize> = HashMap::new();
    for service in &mut services {
        let count = taken.entry(service.name.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            service.name = format!("{}-{count}", service.name);
        }
        share_health(service);
    }

    // pnlb's own validation has the last word: a service it refuses is
    // left out (an importer bug or a source pnlb cannot run), never
    // written out invalid.
    loop {
        let toml = render::render(&head, &services);
        match pnlb_core::config::parse(Path::new("imported.toml"), &toml) {
            Ok(_) => {
                notes.0.sort_by_key(|n| n.line);
                return Imported {
                    backends: services.iter().map(|s| s.backends.len()).sum(),
                    services: services.len(),
                    toml,
                    notes: notes.0,
                };
            }
            Err(err) => {
                let index = err
                    .key
                    .strip_prefix("service[")
                    .and_then(|rest| rest.split(']').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|&i| i < services.len());
                let Some(index) = index else {
                    // Not about a service: the head is ours, and simple.
                    notes.skipped(0, format!("{}: {} ({})", err.key, err.reason, err.fix));
                    return Imported {
                        toml: render::render(&Head::default(), &[]),
                        services: 0,
                        backends: 0,
                        notes: notes.0,
                    };
                };
                let service = services.remove(index);
                notes.skipped(
                    service.line,
                    format!(
                        "{} {}:{}: pnlb refuses it: {}: {}",
                        service.protocol.name(),
                        service.vip,
                        service.port,
                        err.key,
                        err.reason
                    ),
                );
            }
        }
    }
}

/// One `[service.health]` instead of the same check on every backend.
fn share_health(service: &mut Service) {
    let Some(first) = service.backends.first().and_then(|b| b.health.clone()) else {
        return;
    };
    if service
        .backends
        .iter()
        .all(|b| b.health.as_ref() == Some(&first))
    {
        for backend in &mut service.backends {
            backend.health = None;
        }
        service.health = Some(first);
    }
}
