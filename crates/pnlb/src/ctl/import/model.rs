//! What an import builds before it is written out: services as pnlb sees
//! them, with the notes that say what was left out or changed, and the
//! IPVS vocabulary both keepalived and ipvsadm share (schedulers, methods).

use std::net::IpAddr;

pub use pnlb_core::config::{Method, Protocol};

/// One line of the summary: something not imported, or imported with a
/// different meaning. `line` is 0 when the note is about the whole input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub line: usize,
    pub kind: NoteKind,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// Left out: pnlb cannot express it, or the source itself is invalid.
    Skipped,
    /// Imported as the nearest pnlb setting; the output says how it differs.
    Approximated,
    /// Not load balancing (VRRP, mail, host network setup): pnlb has its
    /// own place for it, or none is needed.
    Outside,
}

#[derive(Default)]
pub struct Notes(pub Vec<Note>);

impl Notes {
    pub fn skipped(&mut self, line: usize, text: impl Into<String>) {
        self.0.push(Note {
            line,
            kind: NoteKind::Skipped,
            text: text.into(),
        });
    }

    pub fn outside(&mut self, line: usize, text: impl Into<String>) {
        self.0.push(Note {
            line,
            kind: NoteKind::Outside,
            text: text.into(),
        });
    }

    pub fn approximated(&mut self, line: usize, text: impl Into<String>) {
        self.0.push(Note {
            line,
            kind: NoteKind::Approximated,
            text: text.into(),
        });
    }
}

/// The service as pnlb will run it.
#[derive(Clone, Debug)]
pub struct Service {
    /// Where it was defined in the source.
    pub line: usize,
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub method: Method,
    pub scheduler: Scheduler,
    /// Seconds of source affinity (IPVS persistence), with its prefix length.
    pub persistence: Option<(u64, Option<u8>)>,
    pub snat_addresses: Vec<IpAddr>,
    /// tun over GUE: the outer UDP port.
    pub gue_port: Option<u16>,
    pub health: Option<Health>,
    pub backends: Vec<Backend>,
    pub fallback: Option<(IpAddr, u16)>,
    /// Comments written above the service: how it differs from the source.
    pub comments: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub line: usize,
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub max_conns: Option<u64>,
    pub health: Option<Health>,
    pub comments: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CheckKind {
    Tcp,
    Http {
        tls: bool,
        path: String,
        host: Option<String>,
        expect_status: String,
    },
    Udp {
        payload: Vec<u8>,
        expect: Option<String>,
    },
    Exec {
        command: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub kind: CheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub port: Option<u16>,
}

/// A pnlb scheduler and, for the hashing ones, what it hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduler {
    pub name: &'static str,
    pub hash_key: Option<&'static str>,
}

impl Scheduler {
    fn plain(name: &'static str) -> Self {
        Self {
            name,
            hash_key: None,
        }
    }
}

/// How an IPVS scheduler (with its `-b` flags) maps to pnlb's.
pub enum SchedulerMapping {
    Same(Scheduler),
    /// The nearest pnlb scheduler, and how it differs.
    Nearest(Scheduler, &'static str),
    /// Weighted failover: the highest-weight server takes everything.
    Failover,
    Refused(String),
}

pub fn ipvs_scheduler(name: &str, flags: &[&str]) -> SchedulerMapping {
    let port = flags
        .iter()
        .any(|f| matches!(*f, "sh-port" | "mh-port" | "flag-2"));
    match name {
        "rr" | "wrr" | "lc" | "wlc" | "sed" | "nq" => {
            SchedulerMapping::Same(Scheduler::plain(match name {
                "rr" => "rr",
                "wrr" => "wrr",
                "lc" => "lc",
                "wlc" => "wlc",
                "sed" => "sed",
                _ => "nq",
            }))
        }
        // IPVS sh and mh hash the client's address (and port with the
        // sh-port / mh-port flag).
        "sh" => SchedulerMapping::Same(Scheduler {
            name: "sh",
            hash_key: Some(if port { "5tuple" } else { "source" }),
        }),
        "mh" => SchedulerMapping::Same(Scheduler {
            name: "maglev",
            hash_key: Some(if port { "5tuple" } else { "source" }),
        }),
        "dh" => SchedulerMapping::Same(Scheduler {
            name: "dh",
            hash_key: Some("destination"),
        }),
        "twos" => SchedulerMapping::Same(Scheduler::plain("p2c")),
        "lblc" | "lblcr" => SchedulerMapping::Nearest(
            Scheduler {
                name: "chbl",
                hash_key: Some("destination"),
            },
            "IPVS lblc/lblcr send a destination to one server until it is overloaded; pnlb's chbl hashes the destination with a load cap",
        ),
        // dpvs's consistent hashing (by client address).
        "conhash" => SchedulerMapping::Nearest(
            Scheduler {
                name: "maglev",
                hash_key: Some("source"),
            },
            "dpvs conhash hashes the client address consistently, as pnlb's maglev with hash_key source does",
        ),
        "fo" => SchedulerMapping::Failover,
        "ovf" => SchedulerMapping::Refused(
            "scheduler ovf (overflow by connection count) has no pnlb equivalent".into(),
        ),
        other => SchedulerMapping::Refused(format!(
            "scheduler {other:?} is not an IPVS scheduler (IPVS itself refuses it)"
        )),
    }
}

/// `rr`, `wrr`, ... as keepalived and ipvsadm write the forwarding method.
pub fn ipvs_method(text: &str) -> Option<Method> {
    match text.to_ascii_uppercase().as_str() {
        "DR" | "-G" | "--GATEWAYING" => Some(Method::Dr),
        "NAT" | "-M" | "--MASQUERADING" => Some(Method::Nat),
        "TUN" | "-I" | "--IPIP" => Some(Method::Tun),
        "FNAT" | "-B" | "--FULLNAT" => Some(Method::Snat),
        _ => None,
    }
}

/// The prefix length of a netmask written as an address (255.255.255.0)
/// or as a number (24), if it is a solid mask.
pub fn prefix_len(text: &str) -> Option<u8> {
    if let Ok(bits) = text.parse::<u8>() {
        return (bits <= 128).then_some(bits);
    }
    let mask = u32::from(text.parse::<std::net::Ipv4Addr>().ok()?);
    let bits = mask.leading_ones();
    (mask.checked_shl(bits).unwrap_or(0) == 0).then_some(bits as u8)
}

/// Why pnlb cannot send flows to `address`, if it cannot: the same
/// addresses `pnlb check` refuses for a backend.
pub fn unusable(address: IpAddr) -> Option<&'static str> {
    if address.is_loopback() {
        Some("a loopback address: a real server on the balancer itself, which pnlb does not forward to")
    } else if address.is_unspecified() || address.is_multicast() {
        Some("not a unicast address")
    } else if matches!(address, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// A service name from its address: `tcp-10_0_0_1-80`.
pub fn service_name(protocol: Protocol, vip: IpAddr, port: u16) -> String {
    format!("{}-{}-{}", protocol.name(), vip, port).replace([':', '.'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_become_prefix_lengths_and_holes_are_refused() {
        assert_eq!(prefix_len("255.255.255.0"), Some(24));
        assert_eq!(prefix_len("255.255.255.255"), Some(32));
        assert_eq!(prefix_len("0.0.0.0"), Some(0));
        assert_eq!(prefix_len("64"), Some(64));
        assert_eq!(prefix_len("255.0.255.0"), None);
        assert_eq!(prefix_len("banana"), None);
    }
}
