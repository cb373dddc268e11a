//! Connection-table sync between the nodes of a failover group, so that
//! established flows — nat and snat translations and allocated ports
//! included — continue on the node that takes over. The wire format of
//! both channels (port [`SYNC_PORT`]):
//!
//! - UDP, incremental: the active node sends the flows its data plane
//!   reports (new flows, state changes) and those that ended, coalesced to
//!   one report per flow per interval, each datagram numbered with a
//!   serial; a backup that sees a serial skipped asks for it (Nack), and
//!   the active node sends those flows again as they are now (events.rs).
//! - TCP, full dump: a backup that has no full table connects and asks
//!   (Request, with a random dump id); the active node streams the table in
//!   frames of that id and ends with the number of flows it sent (End). A
//!   backup is synced, and may preempt, only when it holds all of them
//!   (transfer.rs). TCP paces, acknowledges and retransmits. A Request
//!   with count 1 asks for the SNAT rests too (Rests frames before the
//!   End): what a fresh backup must not hand out once it takes over. A
//!   node of an earlier build asks with 0 and ignores the count it gets.
//!
//! Flows travel with their service's listener and their backend's address
//! and port, not slot ids, which are each node's own.
//!
//! ```text
//!  0..4   "PNSY"     4 version (3)   5 group   6 kind   7 reserved
//!  8..10  entries (u16)   10..12 reserved   12..20 sequence (u64)
//! 20..36  sender address   36..40 dump id (u32; 0: not part of a full dump)
//! 40..44  count (u32): End: flows the dump sent; Nack: serials asked for; Hello: 1 takes new flows, 0 not;
//!         Request: 1 asks for the SNAT rests too
//! 44..48  serial (u32): incremental Flows/Ended: this batch's; Nack: the first asked for;
//!         a dump's End: the last one sent before the table was read (0: none);
//!         Hello: ms until what it says applies (ha/membership.rs)
//! 48..    entries (150 bytes each; Rests: 48)   last 32: HMAC-SHA256
//! entry: flow key (40) | conn entry (72) | service key (20) | backend address (16) | backend port (2)
//! Rests entry: reply key (40) | ns it has rested (u64)
//! ```
//!
//! Every field has one byte order on the wire, whatever the nodes' CPUs:
//! numbers big-endian, addresses and ports in network order (as the
//! structs already hold them). A node refuses a version it cannot read,
//! and counts and reports it (rejections.rs): version 1 sent the
//! connection entry's numbers in the sender's order, version 2 had no
//! serials (and dumps over UDP).

use std::net::{IpAddr, Ipv6Addr};

use pnlb_dataplane::abi::{bytes_of, from_bytes, Conn, FlowKey, ServiceKey};

use super::advert::{sign, verify, AdvertError};

pub const SYNC_PORT: u16 = 8113;
const MAGIC: &[u8; 4] = b"PNSY";
const VERSION: u8 = 3;
const HEADER: usize = 48;
const CONN: usize = 72;
const ENTRY: usize = 40 + CONN + 20 + 16 + 2;
const REST_ENTRY: usize = 40 + 8;
/// A Request's count that asks for the SNAT rests too.
pub const ASKS_FOR_RESTS: u32 = 1;
const MAC: usize = 32;
/// Entries per datagram, under a 1500-byte MTU with IPv6 and UDP headers.
pub const PER_DATAGRAM: usize = (1400 - HEADER - MAC) / ENTRY;
/// Entries per frame of a full dump over TCP.
pub const PER_FRAME: usize = 256;
/// The longest message a node reads (a dump frame).
pub const MAX_MESSAGE: usize = HEADER + PER_FRAME * ENTRY + MAC;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Flows = 1,
    Request = 2,
    End = 3,
    /// Flows that ended on the sender (only their keys count).
    Ended = 4,
    /// Incremental batches a backup missed, by serial.
    Nack = 5,
    /// Nodes behind ECMP: "I run", every HELLO_EVERY; `count` 1 while the
    /// sender announces its VIPs (it takes new flows), 0 while not.
    Hello = 6,
    /// SNAT reply keys resting on the sender, in a full dump that asked
    /// for them (ASKS_FOR_RESTS).
    Rests = 7,
}

/// An SNAT reply key resting after its flow ended, as nodes exchange it:
/// with how long it has rested (each node's clock is its own).
#[derive(Clone, Copy, Debug)]
pub struct Rest {
    pub key: FlowKey,
    pub rested_ns: u64,
}

/// One flow as nodes exchange it.
#[derive(Clone, Copy, Debug)]
pub struct SyncedFlow {
    pub key: FlowKey,
    pub conn: Conn,
    pub service: ServiceKey,
    pub backend: IpAddr,
    pub backend_port: u16,
}

#[derive(Debug)]
pub struct Message {
    pub kind: Kind,
    pub group: u8,
    pub sender: IpAddr,
    pub sequence: u64,
    /// The full dump this message is part of (0: none): its Flows and its
    /// End carry the same id, and the End how many flows it sent, so a
    /// backup knows whether it holds all of them.
    pub dump: u32,
    /// End: the flows the dump sent. Nack: how many serials it asks for.
    pub count: u32,
    /// Incremental Flows and Ended: the batch's serial (a resent batch
    /// keeps it). Nack: the first serial asked for. A dump's End: the last
    /// serial sent before the table was read (what the dump covers; 0:
    /// nothing). Hello: the ms until what it says applies.
    pub serial: u32,
    pub flows: Vec<SyncedFlow>,
    /// Rests: the rests it carries (no flows).
    pub rests: Vec<Rest>,
}

fn mapped(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn unmapped(bytes: &[u8]) -> IpAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[..16]);
    let v6 = Ipv6Addr::from(octets);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The host-order fields of a connection entry (offset, width): its slot
/// ids and times. The rest is network order or single bytes.
const CONN_NUMBERS: [(usize, usize); 6] = [(0, 4), (4, 4), (8, 4), (16, 8), (24, 8), (68, 4)];

/// A connection entry as it travels: its numbers big-endian.
fn conn_to_wire(conn: &Conn) -> [u8; CONN] {
    let mut wire = [0u8; CONN];
    wire.copy_from_slice(bytes_of(conn));
    for (at, width) in CONN_NUMBERS {
        wire[at..at + width].reverse_if_little_endian();
    }
    wire
}

fn conn_from_wire(bytes: &[u8]) -> Option<Conn> {
    let mut host: [u8; CONN] = bytes.get(..CONN)?.try_into().ok()?;
    for (at, width) in CONN_NUMBERS {
        host[at..at + width].reverse_if_little_endian();
    }
    from_bytes::<Conn>(&host)
}

/// Big-endian <-> this CPU's order, for a number's bytes.
trait ByteOrder {
    fn reverse_if_little_endian(&mut self);
}

impl ByteOrder for [u8] {
    fn reverse_if_little_endian(&mut self) {
        if cfg!(target_endian = "little") {
            self.reverse();
        }
    }
}

/// One flow entry (ENTRY bytes) as it travels.
fn flow_of(entry: &[u8]) -> Option<SyncedFlow> {
    Some(SyncedFlow {
        key: from_bytes::<FlowKey>(entry.get(0..40)?)?,
        conn: conn_from_wire(entry.get(40..112)?)?,
        service: from_bytes::<ServiceKey>(entry.get(112..132)?)?,
        backend: unmapped(entry.get(132..148)?),
        backend_port: u16::from_be_bytes(entry.get(148..150)?.try_into().ok()?),
    })
}

/// One Rests entry (REST_ENTRY bytes) as it travels.
fn rest_of(entry: &[u8]) -> Option<Rest> {
    Some(Rest {
        key: from_bytes::<FlowKey>(entry.get(0..40)?)?,
        rested_ns: u64::from_be_bytes(entry.get(40..48)?.try_into().ok()?),
    })
}

impl Message {
    /// A message of `kind` from `sender`, outside any dump, serial or
    /// sequence yet (the sender numbers it when it goes).
    pub fn new(kind: Kind, group: u8, sender: IpAddr, flows: Vec<SyncedFlow>) -> Self {
        Self {
            kind,
            group,
            sender,
            sequence: 0,
            dump: 0,
            count: 0,
            serial: 0,
            flows,
            rests: Vec::new(),
        }
    }

    /// The entries it carries: a Rests message its rests, any other its flows.
    fn entries(&self) -> usize {
        if self.kind == Kind::Rests {
            self.rests.len()
        } else {
            self.flows.len()
        }
    }

    pub fn emit(&self, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.entries() * ENTRY + MAC);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, self.group, self.kind as u8, 0]);
        out.extend_from_slice(&(self.entries() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&mapped(self.sender));
        out.extend_from_slice(&self.dump.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.serial.to_be_bytes());
        let (flows, rests) = if self.kind == Kind::Rests {
            (&[][..], &self.rests[..])
        } else {
            (&self.flows[..], &[][..])
        };
        for flow in flows {
            out.extend_from_slice(bytes_of(&flow.key));
            out.extend_from_slice(&conn_to_wire(&flow.conn));
            out.extend_from_slice(bytes_of(&flow.service));
            out.extend_from_slice(&mapped(flow.backend));
            out.extend_from_slice(&flow.backend_port.to_be_bytes());
        }
        for rest in rests {
            out.extend_from_slice(bytes_of(&rest.key));
            out.extend_from_slice(&rest.rested_ns.to_be_bytes());
        }
        let tag = sign(key, &out);
        out.extend_from_slice(&tag);
        out
    }

    pub fn parse(bytes: &[u8], key: &[u8]) -> Result<Self, AdvertError> {
        if bytes.len() < HEADER + MAC || &bytes[0..4] != MAGIC {
            return Err(AdvertError::NotAnAdvert(bytes.len()));
        }
        if bytes[4] != VERSION {
            return Err(AdvertError::Version(bytes[4]));
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC);
        if !verify(key, body, tag) {
            return Err(AdvertError::Authentication);
        }
        let kind = match bytes[6] {
            1 => Kind::Flows,
            2 => Kind::Request,
            3 => Kind::End,
            4 => Kind::Ended,
            5 => Kind::Nack,
            6 => Kind::Hello,
            7 => Kind::Rests,
            _ => return Err(AdvertError::NotAnAdvert(bytes.len())),
        };
        let count = usize::from(u16::from_be_bytes([bytes[8], bytes[9]]));
        let entry_len = if kind == Kind::Rests {
            REST_ENTRY
        } else {
            ENTRY
        };
        if body.len() != HEADER + count * entry_len {
            return Err(AdvertError::NotAnAdvert(bytes.len()));
        }
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&bytes[12..20]);
        let entries = &body[HEADER..];
        let (flows, rests) = if kind == Kind::Rests {
            (
                Vec::new(),
                entries
                    .chunks_exact(REST_ENTRY)
                    .filter_map(rest_of)
                    .collect(),
            )
        } else {
            (
                entries.chunks_exact(ENTRY).filter_map(flow_of).collect(),
                Vec::new(),
            )
        };
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Ok(Self {
            kind,
            group: bytes[5],
            sender: unmapped(&bytes[20..36]),
            sequence: u64::from_be_bytes(sequence),
            dump: word(36),
            count: word(40),
            serial: word(44),
            flows,
            rests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(n: u16) -> SyncedFlow {
        SyncedFlow {
            key: FlowKey {
                src_port: n.to_be(),
                protocol: 6,
                ..Default::default()
            },
            conn: Conn {
                state: 2,
                rewrite_dport: 8080u16.to_be(),
                ..Default::default()
            },
            service: ServiceKey {
                port: 80u16.to_be(),
                protocol: 6,
                ..Default::default()
            },
            backend: "10.77.1.11".parse().unwrap(),
            backend_port: 8080,
        }
    }

    #[test]
    fn a_batch_of_flows_round_trips_and_fits_a_datagram() {
        let message = Message {
            kind: Kind::Flows,
            group: 7,
            sender: "10.77.1.2".parse().unwrap(),
            sequence: 9,
            dump: 5,
            count: 0,
            serial: 11,
            flows: (0..PER_DATAGRAM as u16).map(flow).collect(),
            rests: Vec::new(),
        };
        let bytes = message.emit(b"key");
        assert!(bytes.len() <= 1400);
        let back = Message::parse(&bytes, b"key").unwrap();
        assert_eq!((back.kind, back.group, back.sequence), (Kind::Flows, 7, 9));
        assert_eq!((back.dump, back.serial), (5, 11));
        assert_eq!(back.flows.len(), PER_DATAGRAM);
        assert_eq!(back.flows[3].key.src_port, 3u16.to_be());
        assert_eq!(
            (back.flows[3].backend, back.flows[3].backend_port),
            (flow(3).backend, 8080)
        );
        assert_eq!(back.flows[3].conn.rewrite_dport, 8080u16.to_be());
        let ended = Message {
            kind: Kind::Ended,
            flows: vec![flow(1)],
            ..message
        };
        assert_eq!(
            Message::parse(&ended.emit(b"key"), b"key").unwrap().kind,
            Kind::Ended
        );
    }

    #[test]
    fn a_frame_of_rests_round_trips_and_fits_the_longest_message() {
        let rests: Vec<Rest> = (0..PER_FRAME as u16)
            .map(|n| Rest {
                key: flow(n).key,
                rested_ns: 0x0102_0304_0506_0708 + u64::from(n),
            })
            .collect();
        let message = Message {
            dump: 5,
            rests,
            ..Message::new(Kind::Rests, 7, "10.77.1.2".parse().unwrap(), Vec::new())
        };
        let bytes = message.emit(b"key");
        assert!(bytes.len() <= MAX_MESSAGE);
        assert_eq!(
            bytes[HEADER + 40..HEADER + 48],
            [1, 2, 3, 4, 5, 6, 7, 8],
            "big-endian"
        );
        let back = Message::parse(&bytes, b"key").unwrap();
        assert_eq!((back.kind, back.dump), (Kind::Rests, 5));
        assert!(back.flows.is_empty());
        assert_eq!(back.rests.len(), PER_FRAME);
        assert_eq!(back.rests[3].key.src_port, 3u16.to_be());
        assert_eq!(back.rests[3].rested_ns, 0x0102_0304_0506_070b);
        // Cut by one byte, or taken for flows: refused whole, no panic.
        let mut cut = bytes.clone();
        cut.remove(HEADER);
        let tag = sign(b"key", &cut[..cut.len() - MAC]);
        let at = cut.len() - MAC;
        cut[at..].copy_from_slice(&tag);
        assert!(Message::parse(&cut, b"key").is_err());
        let mut as_flows = bytes.clone();
        as_flows[6] = Kind::Flows as u8;
        let tag = sign(b"key", &as_flows[..at + 1]);
        as_flows[at + 1..].copy_from_slice(&tag);
        assert!(Message::parse(&as_flows, b"key").is_err());
    }

    #[test]
    fn numbers_travel_big_endian_and_come_back_as_they_were() {
        let conn = Conn {
            backend_id: 0x0102_0304,
            backend_generation: 7,
            service_id: 9,
            state: 2,
            created_ns: 0x1122_3344_5566_7788,
            last_seen_ns: 42,
            rewrite_sport: 8080u16.to_be(),
            ..Default::default()
        };
        let wire = conn_to_wire(&conn);
        assert_eq!(wire[0..4], [1, 2, 3, 4], "ids big-endian");
        assert_eq!(wire[16..24], 0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(
            wire[64..66],
            8080u16.to_be_bytes(),
            "ports in network order"
        );
        let back = conn_from_wire(&wire).unwrap();
        assert_eq!(bytes_of(&back), bytes_of(&conn));
        assert!(conn_from_wire(&wire[..10]).is_none());
    }

    #[test]
    fn another_version_is_refused_by_its_number() {
        let message = Message::new(Kind::Request, 7, "10.77.1.3".parse().unwrap(), Vec::new());
        let mut bytes = message.emit(b"key");
        for old in [1, 2] {
            bytes[4] = old;
            assert_eq!(
                Message::parse(&bytes, b"key").unwrap_err(),
                AdvertError::Version(old)
            );
        }
    }

    #[test]
    fn a_wrong_key_or_a_cut_message_is_refused() {
        let message = Message::new(
            Kind::Request,
            7,
            "10.77.1.3".parse().unwrap(),
            vec![flow(1)],
        );
        let bytes = message.emit(b"key");
        assert_eq!(
            Message::parse(&bytes, b"other").unwrap_err(),
            AdvertError::Authentication
        );
        assert!(Message::parse(&bytes[..bytes.len() - 10], b"key").is_err());
    }
}
