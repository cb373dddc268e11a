//! Tunneling fixtures: IPIP / IP6IP6 / GUE around TCP and UDP, compared byte
//! for byte with packets etherparse builds from scratch; the ICMP answer
//! when a packet would not fit the tunnel; ICMP errors about tun flows.

mod support;

use std::net::IpAddr;

use support::*;

/// One service per (family, protocol, encapsulation); one backend each, so
/// the expected backend is known.
const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "ipip4-tcp"
vip = "10.77.100.1"
port = 80
method = "tun"
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "ipip4-udp"
vip = "10.77.100.1"
port = 53
protocol = "udp"
method = "tun"
encap = "ipip"
[[service.backend]]
address = "10.77.1.12"

[[service]]
name = "gue4-tcp"
vip = "10.77.100.1"
port = 8080
method = "tun"
encap = "gue"
[[service.backend]]
address = "10.77.1.13"

[[service]]
name = "gue4-udp"
vip = "10.77.100.1"
port = 5353
protocol = "udp"
method = "tun"
encap = "gue"
gue_port = 7777
tunnel_source = "10.77.1.99"
[[service.backend]]
address = "10.77.1.14"

[[service]]
name = "ipip6-tcp"
vip = "fd77:100::1"
port = 80
method = "tun"
[[service.backend]]
address = "fd77:1::11"

[[service]]
name = "ipip6-udp"
vip = "fd77:100::1"
port = 53
protocol = "udp"
method = "tun"
[[service.backend]]
address = "fd77:1::12"

[[service]]
name = "gue6-tcp"
vip = "fd77:100::1"
port = 8080
method = "tun"
encap = "gue"
[[service.backend]]
address = "fd77:1::13"

[[service]]
name = "gue6-udp"
vip = "fd77:100::1"
port = 5353
protocol = "udp"
method = "tun"
encap = "gue"
[[service.backend]]
address = "fd77:1::14"
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

struct Case {
    packet: Pkt,
    backend: &'static str,
    source: IpAddr,
    wrap: Wrap,
}

fn cases() -> Vec<Case> {
    let tcp4 = |port| Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", port, SYN);
    let udp4 = |port| Pkt::udp("10.77.0.2", 40001, "10.77.100.1", port);
    let tcp6 = |port| Pkt::tcp("fd77::2", 40002, "fd77:100::1", port, SYN);
    let udp6 = |port| Pkt::udp("fd77::2", 40003, "fd77:100::1", port);
    let lb4 = ip("10.77.1.2");
    let lb6 = ip("fd77:1::2");
    vec![
        Case {
            packet: tcp4(80),
            backend: "10.77.1.11",
            source: lb4,
            wrap: Wrap::Ipip,
        },
        Case {
            packet: udp4(53),
            backend: "10.77.1.12",
            source: lb4,
            wrap: Wrap::Ipip,
        },
        Case {
            packet: tcp4(8080),
            backend: "10.77.1.13",
            source: lb4,
            wrap: Wrap::Gue(6080),
        },
        // tunnel_source and gue_port from the config.
        Case {
            packet: udp4(5353),
            backend: "10.77.1.14",
            source: ip("10.77.1.99"),
            wrap: Wrap::Gue(7777),
        },
        Case {
            packet: tcp6(80),
            backend: "fd77:1::11",
            source: lb6,
            wrap: Wrap::Ipip,
        },
        Case {
            packet: udp6(53),
            backend: "fd77:1::12",
            source: lb6,
            wrap: Wrap::Ipip,
        },
        Case {
            packet: tcp6(8080),
            backend: "fd77:1::13",
            source: lb6,
            wrap: Wrap::Gue(6080),
        },
        Case {
            packet: udp6(5353),
            backend: "fd77:1::14",
            source: lb6,
            wrap: Wrap::Gue(6080),
        },
    ]
}

#[test]
fn tun_wraps_tcp_and_udp_in_ipip_ip6ip6_and_gue_byte_exact() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    for case in cases() {
        let packet = case.packet.bytes();
        let (verdict, out) = fixture.run(&packet);
        let what = format!(
            "{:?} to {} {:?}",
            case.packet.tcp.map(|_| "tcp"),
            case.packet.dst,
            case.wrap
        );
        assert_eq!(
            verdict, XDP_TX,
            "{what}: sent back out of the ingress interface"
        );
        assert_eq!(
            out,
            encapsulated(&packet, case.source, ip(case.backend), case.wrap),
            "{what}: the client's packet, untouched, inside the outer headers"
        );
        // The same flow again: same backend, same outer headers.
        assert_eq!(fixture.run(&packet).1, out, "{what}: second packet");
    }
}

#[test]
fn the_inner_tos_and_traffic_class_carry_over_to_the_outer_header() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    for (mut packet, backend) in [
        (
            Pkt::tcp("10.77.0.2", 40010, "10.77.100.1", 80, SYN).bytes(),
            "10.77.1.11",
        ),
        (
            Pkt::tcp("fd77::2", 40010, "fd77:100::1", 80, SYN).bytes(),
            "fd77:1::11",
        ),
    ] {
        // DSCP AF41 + ECT(0), patched in with the IPv4 checksum redone.
        if packet[12..14] == [0x08, 0x00] {
            packet[15] = 0x8a;
            packet[24..26].copy_from_slice(&[0, 0]);
            let header = etherparse::Ipv4HeaderSlice::from_slice(&packet[14..34]).unwrap();
            let check = header.to_header().calc_header_checksum();
            packet[24..26].copy_from_slice(&check.to_be_bytes());
        } else {
            packet[14] = 0x68;
            packet[15] = 0xa0;
        }
        let (_, out) = fixture.run(&packet);
        let source = lb_address(ip(backend));
        assert_eq!(out, encapsulated(&packet, source, ip(backend), Wrap::Ipip));
    }
}

#[test]
fn ipip_outer_sources_vary_per_flow_within_a_configured_prefix() {
    if !privileged() {
        return;
    }
    let config = CONFIG.replace(
        "name = \"ipip4-tcp\"",
        "name = \"ipip4-tcp\"\ntunnel_source = \"10.77.200.0/24\"",
    );
    let fixture = Fixture::new(&config);
    let mut sources = std::collections::BTreeSet::new();
    for sport in 0..64u16 {
        let packet = Pkt::tcp("10.77.0.2", 31000 + sport, "10.77.100.1", 80, SYN).bytes();
        let (_, out) = fixture.run(&packet);
        let hash = pnlb_dataplane::abi::flow_hash(
            &flow_of(&packet),
            pnlb_dataplane::abi::HashKey::PNLB_HASH_5TUPLE,
            fixture.dataplane.hash_seed(),
        );
        let source = IpAddr::from([10, 77, 200, hash as u8]);
        assert_eq!(
            out,
            encapsulated(&packet, source, ip("10.77.1.11"), Wrap::Ipip),
            "outer source 10.77.200.<low 8 bits of the flow hash>, checksum right"
        );
        sources.insert(source);
    }
    println!(
        "64 IPIP flows used {} outer sources in 10.77.200.0/24",
        sources.len()
    );
    assert!(sources.len() >= 40, "{} distinct sources", sources.len());
}

#[test]
fn gue_source_ports_spread_flows_for_ecmp_and_rss() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let mut ports = std::collections::BTreeSet::new();
    for sport in 0..64u16 {
        let packet = Pkt::tcp("10.77.0.2", 30000 + sport, "10.77.100.1", 8080, SYN).bytes();
        let (_, out) = fixture.run(&packet);
        let outer_sport = u16::from_be_bytes([out[34], out[35]]);
        assert!(outer_sport >= 0xc000, "{outer_sport} is in 49152-65535");
        ports.insert(outer_sport);
    }
    assert!(
        ports.len() >= 60,
        "64 flows got {} distinct GUE source ports",
        ports.len()
    );
}

#[test]
fn a_packet_too_big_for_the_tunnel_is_answered_with_frag_needed_or_packet_too_big() {
    if !privileged() {
        return;
    }
    in_small_mtu_netns(CONFIG, |fixture| {
        // IPIP adds 20 bytes: 1380 fits a 1400 MTU exactly, 1381 does not.
        let fits = sized(Pkt::tcp("10.77.0.2", 41000, "10.77.100.1", 80, ACK), 1380);
        let (verdict, out) = fixture.run(&fits.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "1380 + 20 fits: forwarded to d0");
        assert_eq!(out.len(), 14 + 1400);

        let big = sized(fits.clone(), 1381);
        let (verdict, out) = fixture.run(&big.bytes());
        assert_eq!(
            verdict, XDP_TX,
            "answered back out of the ingress interface"
        );
        assert_eq!(
            out,
            icmp_error(
                "10.77.100.1",
                "10.77.0.2",
                IcmpError::TooBig(1380),
                &big,
                Some(20 + 64),
                (LB_MAC, ROUTER_MAC),
            ),
            "frag-needed from the VIP, MTU 1400 - 20, quoting the header + 64 bytes"
        );

        // GUE over IPv6 adds 48: the client is told 1352.
        let big6 = sized(Pkt::udp("fd77::2", 41001, "fd77:100::1", 5353), 1353);
        let (verdict, out) = fixture.run(&big6.bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out,
            icmp_error(
                "fd77:100::1",
                "fd77::2",
                IcmpError::TooBig(1352),
                &big6,
                Some(40 + 64),
                (LB_MAC, ROUTER_MAC),
            ),
            "packet-too-big from the VIP, MTU 1400 - 48"
        );
        assert_eq!(fixture.reason("tx_icmp_too_big"), 2);

        // IPv4 without DF asked to be fragmented, which XDP cannot do.
        let mut no_df = big.bytes();
        no_df[20] &= !0x40;
        no_df[24..26].copy_from_slice(&[0, 0]);
        let header = etherparse::Ipv4HeaderSlice::from_slice(&no_df[14..34]).unwrap();
        let check = header.to_header().calc_header_checksum();
        no_df[24..26].copy_from_slice(&check.to_be_bytes());
        assert_eq!(fixture.run(&no_df).0, XDP_DROP);
        assert_eq!(fixture.reason("drop_too_big"), 1);
        let id = fixture.programmer.service_id("ipip4-tcp").unwrap();
        let counters = fixture.dataplane.service_counters(id).unwrap();
        assert_eq!(
            counters.packets, 1,
            "only the packet that fit was forwarded"
        );
    });
}

#[test]
fn an_icmp_error_about_a_tun_flow_is_tunneled_to_its_backend() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let request = Pkt::tcp("10.77.0.2", 42000, "10.77.100.1", 80, SYN);
    fixture.run(&request.bytes());
    // A router on the way back to the client cannot pass the backend's
    // reply (sent from the VIP), and says so to the VIP.
    let reply = Pkt::tcp("10.77.100.1", 80, "10.77.0.2", 42000, ACK);
    let error = icmp_error(
        "10.77.0.1",
        "10.77.100.1",
        IcmpError::TooBig(1300),
        &reply,
        None,
        (ROUTER_MAC, LB_MAC),
    );
    let (verdict, out) = fixture.run(&error);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(
        out,
        encapsulated(&error, ip("10.77.1.2"), ip("10.77.1.11"), Wrap::Ipip),
        "the error goes, wrapped, to the backend that owns the flow"
    );
}
