//! Fixture harness (Katran's method): packets built with etherparse run
//! through the loaded XDP program with BPF_PROG_TEST_RUN; tests assert the
//! verdict, the exact output bytes and the counters.

#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_rs::ProgramInput;
use pnlb_core::config::{self, Config};
use pnlb_dataplane::abi::{self, FlowKey};
use pnlb_dataplane::nexthop::{NextHop, Resolution, Resolver};
use pnlb_dataplane::{Dataplane, LoadOptions, Programmer};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const LB_MAC: [u8; 6] = [0x02, 0x4c, 0x42, 0, 0, 1];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x52, 0x54, 0, 0, 1];
/// Ingress interface of BPF_PROG_TEST_RUN: the loopback device.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// A bpffs of the test's own, mounted in a temporary directory named after
/// `tag` and the process (unmounted on drop): a data plane pinned in it
/// has its maps at paths a test can open.
pub struct Bpffs(pub PathBuf);

impl Bpffs {
    pub fn mount(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pnlb-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t bpf");
        Self(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Privileged tests run as root; elsewhere they may skip only outside CI.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI must run the data-plane fixtures as root");
    }
    eprintln!("skipping: BPF_PROG_TEST_RUN needs root (run the tests as root)");
    false
}

/// Backends get MAC 02:be:<last 4 bytes of their address>, on `ifindex`.
pub struct StaticResolver {
    pub ifindex: u32,
    /// The backends' VLAN on `ifindex`, 0 = untagged.
    pub vlan: u16,
    pub unreachable: Vec<IpAddr>,
}

pub fn backend_mac(addr: IpAddr) -> [u8; 6] {
    let bytes = match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets()[12..].to_vec(),
    };
    [0x02, 0xbe, bytes[0], bytes[1], bytes[2], bytes[3]]
}

impl Resolver for StaticResolver {
    fn resolve(&mut self, backends: &[IpAddr]) -> Resolution {
        let answer = |backend: IpAddr| {
            if self.unreachable.contains(&backend) {
                return Err("no neighbour".to_string());
            }
            Ok(NextHop {
                ifindex: self.ifindex,
                vlan: self.vlan,
                device: self.ifindex,
                mac: backend_mac(backend),
                src_mac: LB_MAC,
                gateway: None,
                source: Some(lb_address(backend)),
            })
        };
        backends.iter().map(|&b| (b, answer(b))).collect()
    }
}

/// The LB's own address in the fixtures (the outer source of tun packets).
pub fn lb_address(towards: IpAddr) -> IpAddr {
    match towards {
        IpAddr::V4(_) => "10.77.1.2".parse().unwrap(),
        IpAddr::V6(_) => "fd77:1::2".parse().unwrap(),
    }
}

pub struct Fixture {
    pub dataplane: Dataplane,
    pub programmer: Programmer,
    pub resolver: StaticResolver,
}

/// Runs one packet through `program` with BPF_PROG_TEST_RUN; returns
/// (verdict, output bytes).
pub fn test_run(program: &libbpf_rs::ProgramMut<'_>, packet: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; packet.len() + 256];
    let input = ProgramInput {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let output = program.test_run(input).expect("BPF_PROG_TEST_RUN");
    let verdict = output.return_value;
    let len = output.data.map(|d| d.len()).unwrap_or(0);
    out.truncate(len);
    (verdict, out)
}

pub fn parse_config(text: &str) -> Config {
    config::parse(Path::new("fixture.toml"), text).expect("fixture config is valid")
}

impl Fixture {
    pub fn new(config_text: &str) -> Self {
        Self::with_table_size(config_text, 65_536)
    }

    /// A fixture whose connection table holds `conn_table_size` entries.
    pub fn with_table_size(config_text: &str, conn_table_size: u32) -> Self {
        Self::with_options(config_text, LoadOptions::for_tests(conn_table_size))
    }

    /// A fixture whose program hashes flows with `hash_seed`.
    pub fn with_seed(config_text: &str, hash_seed: u32) -> Self {
        Self::with_options(
            config_text,
            LoadOptions {
                hash_seed,
                ..LoadOptions::for_tests(65_536)
            },
        )
    }

    pub fn with_options(config_text: &str, options: LoadOptions) -> Self {
        let dataplane = Dataplane::load_with(options).expect("load XDP program");
        let mut fixture = Self {
            dataplane,
            programmer: Programmer::new(),
            resolver: StaticResolver {
                ifindex: TEST_RUN_IFINDEX,
                vlan: 0,
                unreachable: Vec::new(),
            },
        };
        fixture.apply(config_text);
        fixture
    }

    pub fn apply(&mut self, config_text: &str) {
        let config = parse_config(config_text);
        self.programmer
            .apply(&self.dataplane, &config, &mut self.resolver)
            .expect("apply config");
    }

    /// Runs one packet; returns (verdict, output bytes).
    pub fn run(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        test_run(self.dataplane.program(), packet)
    }

    pub fn reason(&self, name: &str) -> u64 {
        let totals = self
            .dataplane
            .reason_counters()
            .expect("read reason counters");
        let index = (0..abi::REASON_COUNT)
            .find(|&i| pnlb_dataplane::stats::reason_name(i) == name)
            .expect("known reason");
        totals[index]
    }

    /// Which backend address the published table gives this flow.
    pub fn predicted_backend(
        &self,
        service: &str,
        packet: &[u8],
        hash_key: abi::HashKey,
    ) -> IpAddr {
        let flow = flow_of(packet);
        let table = self.programmer.table(service).expect("service has a table");
        let hash = abi::flow_hash(&flow, hash_key, self.dataplane.hash_seed());
        let id = table[(hash % table.len() as u32) as usize];
        self.backend_address(service, id)
    }

    pub fn backend_address(&self, service: &str, id: u32) -> IpAddr {
        self.candidates(service)
            .into_iter()
            .find(|(_, b)| *b == id)
            .map(|(a, _)| a)
            .expect("id belongs to the service")
    }

    fn candidates(&self, service: &str) -> Vec<(IpAddr, u32)> {
        let mut out = Vec::new();
        for last in 0..=255u8 {
            for addr in [format!("10.77.1.{last}"), format!("fd77:1::{last:x}")] {
                let ip: IpAddr = addr.parse().unwrap();
                for port in [0u16, 53, 80] {
                    if let Some(id) = self.programmer.backend_id(service, ip, port) {
                        out.push((ip, id));
                    }
                }
            }
        }
        out
    }
}

/// The flow key the XDP program builds for an Ethernet/IP/TCP|UDP packet.
pub fn flow_of(packet: &[u8]) -> FlowKey {
    let sliced = etherparse::SlicedPacket::from_ethernet(packet).expect("fixture packet parses");
    let (src, dst) = match sliced.net.expect("has IP") {
        etherparse::NetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
        ),
        etherparse::NetSlice::Ipv6(ip) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
        ),
    };
    let (protocol, sport, dport) = match sliced.transport.expect("has L4") {
        etherparse::TransportSlice::Tcp(t) => (6, t.source_port(), t.destination_port()),
        etherparse::TransportSlice::Udp(u) => (17, u.source_port(), u.destination_port()),
        // As the data plane keys an ICMP error: no ports.
        etherparse::TransportSlice::Icmpv4(_) => (1, 0, 0),
        etherparse::TransportSlice::Icmpv6(_) => (58, 0, 0),
    };
    FlowKey {
        src: abi::addr(src),
        dst: abi::addr(dst),
        src_port: sport.to_be(),
        dst_port: dport.to_be(),
        protocol,
        _pad: [0; 3],
    }
}

/// An address other than `address`, of its family (IPv4 in 10.0.0.0/8,
/// IPv6 in fd99::/96), whose address filter bit is `address`'s: the data
/// plane takes a packet to it for the VIP's until a lookup says otherwise.
pub fn sharing_filter_bit(address: &str) -> String {
    let address: IpAddr = address.parse().unwrap();
    let bit = pnlb_dataplane::address_filter::bit_of(&abi::addr(address));
    let candidate = |n: u32| -> IpAddr {
        match address {
            IpAddr::V4(_) => std::net::Ipv4Addr::from((10u32 << 24) | n).into(),
            IpAddr::V6(_) => std::net::Ipv6Addr::from((0xfd99u128 << 112) | u128::from(n)).into(),
        }
    };
    (0..1 << 24)
        .map(candidate)
        .find(|other| {
            *other != address && pnlb_dataplane::address_filter::bit_of(&abi::addr(*other)) == bit
        })
        .expect("an address shares the bit")
        .to_string()
}

pub fn ip4(text: &str) -> [u8; 4] {
    text.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

pub fn ip6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

pub fn tcp4(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ipv4(ip4(src), ip4(dst), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut out = Vec::new();
    builder.write(&mut out, payload).unwrap();
    out
}

pub fn udp4(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ipv4(ip4(src), ip4(dst), 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    builder.write(&mut out, payload).unwrap();
    out
}

pub fn tcp6(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ipv6(ip6(src), ip6(dst), 64)
        .tcp(sport, dport, 1000, 64240)
        .ack(1);
    let mut out = Vec::new();
    builder.write(&mut out, payload).unwrap();
    out
}

pub fn udp6(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ipv6(ip6(src), ip6(dst), 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    builder.write(&mut out, payload).unwrap();
    out
}

/// The packet as DR forwards it: only the Ethernet addresses change.
pub fn dr_rewritten(packet: &[u8], backend: IpAddr) -> Vec<u8> {
    let mut out = packet.to_vec();
    out[0..6].copy_from_slice(&backend_mac(backend));
    out[6..12].copy_from_slice(&LB_MAC);
    out
}

/// TCP flags for [`Pkt`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

pub const SYN: Flags = Flags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
pub const SYN_ACK: Flags = Flags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
pub const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
pub const FIN: Flags = Flags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};
pub const RST: Flags = Flags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

/// A packet described by its fields; `bytes()` builds it with correct
/// checksums, so a translated packet can be compared byte for byte with
/// the description of what it should have become.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// None = UDP.
    pub tcp: Option<Flags>,
    pub payload: Vec<u8>,
    /// TTL / hop limit.
    pub ttl: u8,
    /// An 802.1Q tag (its TCI) after the MACs.
    pub vlan: Option<u16>,
}

impl Pkt {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: Flags) -> Self {
        Self {
            src_mac: ROUTER_MAC,
            dst_mac: LB_MAC,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            tcp: Some(flags),
            payload: b"payload".to_vec(),
            ttl: 64,
            vlan: None,
        }
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self {
            tcp: None,
            ..Self::tcp(src, sport, dst, dport, ACK)
        }
    }

    /// The same packet with other addresses and ports.
    pub fn with(&self, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self {
            src,
            sport,
            dst,
            dport,
            ..self.clone()
        }
    }

    /// The same packet one router hop later (TTL / hop limit one less).
    pub fn routed(&self) -> Self {
        Self {
            ttl: self.ttl - 1,
            ..self.clone()
        }
    }

    pub fn with_ttl(&self, ttl: u8) -> Self {
        Self {
            ttl,
            ..self.clone()
        }
    }

    /// The same packet with an 802.1Q tag (`tci`: priority and VLAN id).
    pub fn tagged(&self, tci: u16) -> Self {
        Self {
            vlan: Some(tci),
            ..self.clone()
        }
    }

    pub fn with_payload(&self, payload: Vec<u8>) -> Self {
        Self {
            payload,
            ..self.clone()
        }
    }

    pub fn macs(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Self {
            src_mac,
            dst_mac,
            ..self.clone()
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let eth = etherparse::PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), self.ttl),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), self.ttl),
            _ => panic!("mixed address families"),
        };
        let mut out = Vec::new();
        match self.tcp {
            None => ip
                .udp(self.sport, self.dport)
                .write(&mut out, &self.payload)
                .unwrap(),
            Some(flags) => {
                let mut tcp = ip.tcp(self.sport, self.dport, 1000, 64240);
                if flags.syn {
                    tcp = tcp.syn();
                }
                if flags.ack {
                    tcp = tcp.ack(1);
                }
                if flags.fin {
                    tcp = tcp.fin();
                }
                if flags.rst {
                    tcp = tcp.rst();
                }
                tcp.write(&mut out, &self.payload).unwrap();
            }
        }
        match self.vlan {
            Some(tci) => tag(&out, tci),
            None => out,
        }
    }
}

/// Reads (source, source port, destination, destination port) back from bytes.
pub fn endpoints(packet: &[u8]) -> (IpAddr, u16, IpAddr, u16) {
    let flow = flow_of(packet);
    (
        abi::ip_of(&flow.src),
        u16::from_be(flow.src_port),
        abi::ip_of(&flow.dst),
        u16::from_be(flow.dst_port),
    )
}

/// The backend's TCP answer to `forwarded` (a translated packet the data
/// plane sent it): from the address and port it went to, back to the
/// source it was given, from the backend's MAC to ours.
pub fn backend_answer(forwarded: &[u8], flags: Flags) -> Pkt {
    let (source, source_port, backend, backend_port) = endpoints(forwarded);
    Pkt::tcp(
        &backend.to_string(),
        backend_port,
        &source.to_string(),
        source_port,
        flags,
    )
    .macs(backend_mac(backend), LB_MAC)
}

/// Runs a shell script (`ip` and `sysctl` lines), which must succeed.
pub fn sh(script: &str) {
    let status = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(status.success(), "{script}");
}

/// Runs `f` on a thread in a fresh network namespace of its own (gone
/// when the thread ends), set up as an LB host: veth d0 with the LB's MAC and
/// addresses, a router at 10.77.1.1 / fd77:1::1 with a permanent neighbour
/// entry, forwarding on. Replies are routed with bpf_fib_lookup, which
/// reads these tables.
pub fn in_lb_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare on this thread only.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare(CLONE_NEWNET)"
        );
        let router = ROUTER_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let lb = LB_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let script = format!(
            "set -e
            ip link set lo up
            ip link add d0 address {lb} type veth peer name d1
            ip link set d1 up
            ip link set d0 up
            ip addr add 10.77.1.2/24 dev d0
            ip -6 addr add fd77:1::2/64 dev d0 nodad
            ip route add default via 10.77.1.1
            ip -6 route add default via fd77:1::1
            ip neigh add 10.77.1.1 lladdr {router} dev d0 nud permanent
            ip -6 neigh add fd77:1::1 lladdr {router} dev d0 nud permanent
            sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
        );
        sh(&script);
        f()
    })
    .join()
    .expect("test body")
}

/// In an LB namespace whose own link (d0) has a 1400-byte MTU, with the
/// backends behind it: a fixture for `config` whose backends egress on d0.
pub fn in_small_mtu_netns(config: &'static str, f: impl FnOnce(&mut Fixture) + Send + 'static) {
    in_lb_netns(move || {
        sh("ip link set d0 mtu 1400");
        let mut fixture = Fixture::new(config);
        fixture.resolver.ifindex = pnlb_dataplane::loader::ifindex_of("d0").unwrap();
        fixture.apply(config);
        f(&mut fixture);
    });
}

/// `packet` with a payload that makes its IP packet `ip_len` bytes long.
pub fn sized(mut packet: Pkt, ip_len: usize) -> Pkt {
    let headers = match (packet.dst, packet.tcp) {
        (IpAddr::V4(_), Some(_)) => 40,
        (IpAddr::V4(_), None) => 28,
        (IpAddr::V6(_), Some(_)) => 60,
        (IpAddr::V6(_), None) => 48,
    };
    packet.payload = (0..ip_len - headers).map(|i| i as u8).collect();
    packet
}

/// What an ICMP error says.
#[derive(Clone, Copy, Debug)]
pub enum IcmpError {
    /// IPv4 fragmentation needed / IPv6 packet too big, with the MTU.
    TooBig(u16),
    PortUnreachable,
    /// TTL / hop limit exceeded in transit.
    TimeExceeded,
}

/// An ICMP error from `src` to `dst` quoting `quoted` (from its IP header
/// on, cut to `quote_len` bytes when given, as routers may).
pub fn icmp_error(
    src: &str,
    dst: &str,
    error: IcmpError,
    quoted: &Pkt,
    quote_len: Option<usize>,
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type};
    let mut inner = quoted.bytes()[14..].to_vec();
    if let Some(len) = quote_len {
        inner.truncate(len);
    }
    let eth = etherparse::PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    match (
        src.parse::<IpAddr>().unwrap(),
        dst.parse::<IpAddr>().unwrap(),
    ) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let kind = match error {
                IcmpError::TooBig(mtu) => {
                    icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu }
                }
                IcmpError::PortUnreachable => icmpv4::DestUnreachableHeader::Port,
                IcmpError::TimeExceeded => {
                    eth.ipv4(s.octets(), d.octets(), 64)
                        .icmpv4(Icmpv4Type::TimeExceeded(
                            icmpv4::TimeExceededCode::TtlExceededInTransit,
                        ))
                        .write(&mut out, &inner)
                        .unwrap();
                    return out;
                }
            };
            eth.ipv4(s.octets(), d.octets(), 64)
                .icmpv4(Icmpv4Type::DestinationUnreachable(kind))
                .write(&mut out, &inner)
                .unwrap();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let kind = match error {
                IcmpError::TooBig(mtu) => Icmpv6Type::PacketTooBig {
                    mtu: u32::from(mtu),
                },
                IcmpError::PortUnreachable => {
                    Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port)
                }
                IcmpError::TimeExceeded => {
                    Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded)
                }
            };
            eth.ipv6(s.octets(), d.octets(), 64)
                .icmpv6(kind)
                .write(&mut out, &inner)
                .unwrap();
        }
        _ => panic!("mixed address families"),
    }
    out
}

/// How a tun service wraps packets, for building expected output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrap {
    Ipip,
    Gue(u16),
}

/// The packet as tun sends it: `packet`'s IP packet, untouched, inside an
/// outer header from `source` to `backend` (built here from scratch by
/// etherparse, checksums included), to the backend's MAC.
pub fn encapsulated(packet: &[u8], source: IpAddr, backend: IpAddr, wrap: Wrap) -> Vec<u8> {
    use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, UdpHeader};
    let inner = &packet[14..];
    let hash = abi::flow_hash(
        &flow_of(packet),
        abi::HashKey::PNLB_HASH_5TUPLE,
        abi::TEST_HASH_SEED,
    );
    let sport = 0xc000 | (hash as u16 & 0x3fff);
    let udp_len = (inner.len() + 8) as u16;
    let mut out = Vec::new();
    out.extend_from_slice(&backend_mac(backend));
    out.extend_from_slice(&LB_MAC);
    match (source, backend) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let (protocol, outer_payload) = match wrap {
                Wrap::Ipip => (IpNumber::IPV4, inner.len()),
                Wrap::Gue(_) => (IpNumber::UDP, inner.len() + 8),
            };
            let mut ip =
                Ipv4Header::new(outer_payload as u16, 64, protocol, s.octets(), d.octets())
                    .unwrap();
            ip.dont_fragment = true;
            ip.identification = 0;
            // The inner TOS (DSCP + ECN) carries over.
            ip.dscp = etherparse::Ipv4Dscp::try_new(inner[1] >> 2).unwrap();
            ip.ecn = etherparse::Ipv4Ecn::try_new(inner[1] & 3).unwrap();
            ip.header_checksum = ip.calc_header_checksum();
            out.extend_from_slice(&ip.to_bytes());
            if let Wrap::Gue(port) = wrap {
                let udp = UdpHeader {
                    source_port: sport,
                    destination_port: port,
                    length: udp_len,
                    checksum: 0,
                };
                out.extend_from_slice(&udp.to_bytes());
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let traffic_class = (inner[0] << 4) | (inner[1] >> 4);
            let mut ip = Ipv6Header {
                traffic_class,
                flow_label: Ipv6FlowLabel::try_new(hash & 0xfffff).unwrap(),
                payload_length: inner.len() as u16,
                next_header: IpNumber::IPV6_HEADER_HOP_BY_HOP,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            match wrap {
                Wrap::Ipip => {
                    ip.next_header = IpNumber::IPV6;
                    out.extend_from_slice(&ip.to_bytes());
                }
                Wrap::Gue(port) => {
                    ip.next_header = IpNumber::UDP;
                    ip.payload_length = udp_len;
                    out.extend_from_slice(&ip.to_bytes());
                    let udp = UdpHeader::with_ipv6_checksum(sport, port, &ip, inner).unwrap();
                    out.extend_from_slice(&udp.to_bytes());
                }
            }
        }
        _ => panic!("mixed address families"),
    }
    out.extend_from_slice(inner);
    out
}

/// Recomputes the IPv4 header checksum of an Ethernet frame.
pub fn fix_ipv4_checksum(packet: &mut [u8]) {
    let ihl = (packet[14] & 0x0f) as usize * 4;
    packet[24] = 0;
    packet[25] = 0;
    let mut sum = 0u32;
    for chunk in packet[14..14 + ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    packet[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// `packet` (a frame as [`Pkt`] builds it) cut into two fragments of
/// datagram `id`, as its sender would: the first carries `first_len` bytes
/// (a multiple of 8) of the IP payload, L4 header included; the second
/// the rest. IPv4 fragments lose DF; IPv6 ones get a fragment header.
pub fn fragments(packet: &[u8], id: u32, first_len: usize) -> [Vec<u8>; 2] {
    assert_eq!(first_len % 8, 0, "fragments break at 8-byte units");
    let ipv6 = packet[12..14] == [0x86, 0xdd];
    let header_len = if ipv6 { 40 } else { 20 };
    let header = &packet[14..14 + header_len];
    let payload = &packet[14 + header_len..];
    let pieces = [&payload[..first_len], &payload[first_len..]];
    let mut out = [Vec::new(), Vec::new()];
    for (i, piece) in pieces.iter().enumerate() {
        let offset = if i == 0 { 0 } else { first_len as u16 };
        let more = i == 0;
        let frame = &mut out[i];
        frame.extend_from_slice(&packet[..14]);
        frame.extend_from_slice(header);
        if ipv6 {
            let next_header = header[6];
            frame[14 + 6] = 44;
            let payload_len = (8 + piece.len()) as u16;
            frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
            frame.extend_from_slice(&[next_header, 0]);
            frame.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes());
        } else {
            let total = (20 + piece.len()) as u16;
            frame[16..18].copy_from_slice(&total.to_be_bytes());
            frame[18..20].copy_from_slice(&(id as u16).to_be_bytes());
            let flags = (offset / 8) | if more { 0x2000 } else { 0 };
            frame[20..22].copy_from_slice(&flags.to_be_bytes());
        }
        frame.extend_from_slice(piece);
        if !ipv6 {
            fix_ipv4_checksum(frame);
        }
    }
    out
}

/// `frame` with an 802.1Q tag carrying `tci` after its MACs.
pub fn tag(frame: &[u8], tci: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00]);
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// Every service entry has its copy by id (pnlb_service_copies), the same
/// byte for byte, and no other id holds one.
pub fn assert_copies_mirror_services(dataplane: &Dataplane, step: &str) {
    let bytes = |services: &pnlb_dataplane::service_copies::ServicesById| {
        let mut all: Vec<(u32, Vec<u8>, Vec<u8>)> = services
            .iter()
            .map(|(id, (key, service))| {
                (
                    *id,
                    abi::bytes_of(key).to_vec(),
                    abi::bytes_of(service).to_vec(),
                )
            })
            .collect();
        all.sort();
        all
    };
    let entries = dataplane.service_entries().expect("read pnlb_services");
    assert_eq!(
        bytes(&dataplane.service_copies()),
        bytes(&entries),
        "{step}: the copies by id are not the service entries"
    );
    println!("{step}: {} services, each copied by id", entries.len());
}
