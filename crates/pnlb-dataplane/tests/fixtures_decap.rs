//! `pnlb decap` fixtures: tunnel packets addressed to this host come out
//! as the inner packet — when they come from a load balancer's prefix and
//! hold a packet for this host or a `--vip`; everything else passes
//! untouched and is counted.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;

use pnlb_dataplane::decap::{Decap, DecapCounters, DecapOptions};
use support::*;

const HOST4: &str = "10.77.1.11";
const HOST6: &str = "fd77:1::11";
/// The VIPs, on the host's lo.
const VIP4: &str = "10.77.100.1";
const VIP6: &str = "fd77:100::1";
const GUE_PORT: u16 = 6080;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Decap as `pnlb decap` runs it without --from or --vip.
fn decap() -> Decap {
    decap_with(&DecapOptions::on_port(GUE_PORT))
}

fn decap_with(options: &DecapOptions) -> Decap {
    let mut decap = Decap::load(options).expect("load decap program");
    let local: BTreeSet<IpAddr> = [ip(HOST4), ip(HOST6), ip(VIP4), ip(VIP6)].into();
    decap.set_local_addresses(&local).unwrap();
    decap
}

fn run(decap: &Decap, packet: &[u8]) -> (u32, Vec<u8>) {
    test_run(decap.program(), packet)
}

/// What the stack should see: the inner packet, with the frame's MACs.
fn bare(inner: &[u8], like: &[u8]) -> Vec<u8> {
    let mut out = like[..12].to_vec();
    let ethertype: u16 = if inner[0] >> 4 == 4 { 0x0800 } else { 0x86dd };
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(inner);
    out
}

fn client_packets() -> Vec<Pkt> {
    vec![
        Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN),
        Pkt::udp("10.77.0.2", 40001, "10.77.100.1", 53),
        Pkt::tcp("fd77::2", 40002, "fd77:100::1", 80, SYN),
        Pkt::udp("fd77::2", 40003, "fd77:100::1", 53),
    ]
}

fn host_for(packet: &Pkt) -> IpAddr {
    if packet.dst.is_ipv4() {
        ip(HOST4)
    } else {
        ip(HOST6)
    }
}

#[test]
fn ipip_ip6ip6_and_gue_addressed_here_come_out_as_the_inner_packet() {
    if !privileged() {
        return;
    }
    let decap = decap();
    let mut expected = DecapCounters::default();
    for packet in client_packets() {
        let inner = packet.bytes();
        for wrap in [Wrap::Ipip, Wrap::Gue(GUE_PORT)] {
            let host = host_for(&packet);
            let wrapped = encapsulated(&inner, lb_address(host), host, wrap);
            let (verdict, out) = run(&decap, &wrapped);
            assert_eq!(verdict, XDP_PASS, "{packet:?} in {wrap:?}");
            assert_eq!(out, bare(&inner[14..], &wrapped), "{packet:?} in {wrap:?}");
            match wrap {
                Wrap::Ipip => expected.ipip += 1,
                Wrap::Gue(_) => expected.gue += 1,
            }
        }
    }
    assert_eq!(decap.counters().unwrap(), expected);
}

/// GUE variant 0 (a 4-byte header naming the inner protocol), as Linux fou
/// in gue mode sends it.
fn gue_variant0(inner: &[u8], host: IpAddr) -> Vec<u8> {
    let protocol = if inner[14] >> 4 == 4 { 4 } else { 41 };
    let mut payload = vec![0u8, protocol, 0, 0];
    payload.extend_from_slice(&inner[14..]);
    let builder = etherparse::PacketBuilder::ethernet2(LB_MAC, backend_mac(host));
    let builder = match host {
        IpAddr::V4(h) => builder.ipv4(ip4("10.77.1.2"), h.octets(), 64),
        IpAddr::V6(h) => builder.ipv6(ip6("fd77:1::2"), h.octets(), 64),
    };
    let mut out = Vec::new();
    builder
        .udp(50000, GUE_PORT)
        .write(&mut out, &payload)
        .unwrap();
    out
}

#[test]
fn gue_variant_0_with_a_header_is_stripped_too() {
    if !privileged() {
        return;
    }
    let decap = decap();
    for packet in client_packets() {
        let inner = packet.bytes();
        let wrapped = gue_variant0(&inner, host_for(&packet));
        let (verdict, out) = run(&decap, &wrapped);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, bare(&inner[14..], &wrapped), "{packet:?}");
    }
    assert_eq!(decap.counters().unwrap().gue, 4);
}

#[test]
fn foreign_traffic_and_tunnels_for_other_hosts_pass_untouched() {
    if !privileged() {
        return;
    }
    let decap = decap();
    let inner = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN).bytes();
    let other_host = encapsulated(&inner, ip("10.77.1.2"), ip("10.77.1.12"), Wrap::Ipip);
    let other_port = encapsulated(&inner, ip("10.77.1.2"), ip(HOST4), Wrap::Gue(4789));
    let plain = Pkt::tcp("10.77.0.2", 40000, HOST4, 22, SYN).bytes();
    let plain6 = Pkt::udp("fd77::2", 40000, HOST6, 53).bytes();
    let arp = {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&ROUTER_MAC);
        frame.extend_from_slice(&[0x08, 0x06]);
        frame.extend_from_slice(&[0u8; 28]);
        frame
    };
    for (what, packet) in [
        ("IPIP for another host", &other_host),
        ("UDP to another port", &other_port),
        ("plain TCP", &plain),
        ("plain UDP over IPv6", &plain6),
        ("ARP", &arp),
    ] {
        let (verdict, out) = run(&decap, packet);
        assert_eq!((verdict, &out), (XDP_PASS, packet), "{what}");
    }
    let counters = decap.counters().unwrap();
    assert_eq!((counters.passed_not_local, counters.passed_other), (1, 4));
    assert_eq!(counters.ipip + counters.gue, 0);
}

/// Unwrapping is a way around uRPF and ACLs (the stack sees the inner
/// source): only tunnels from the balancers' prefixes (`--from`), and only
/// inner packets for this host or a `--vip`, are unwrapped.
#[test]
fn tunnels_from_strangers_or_for_strangers_pass_untouched_and_are_counted() {
    if !privileged() {
        return;
    }
    let decap = decap_with(&DecapOptions {
        from: vec![
            "10.77.1.0/29".parse().unwrap(),
            "fd77:1::/64".parse().unwrap(),
        ],
        vips: vec![ip("10.77.100.9")],
        ..DecapOptions::on_port(GUE_PORT)
    });
    let to = |dst: &str| {
        if ip(dst).is_ipv4() {
            Pkt::tcp("10.77.0.2", 40000, dst, 80, SYN).bytes()
        } else {
            Pkt::tcp("fd77::2", 40000, dst, 80, SYN).bytes()
        }
    };
    let mut expected = DecapCounters::default();
    for (what, outer_src, inner_dst, wrap) in [
        (
            "from a balancer, to the VIP on lo",
            "10.77.1.2",
            VIP4,
            Wrap::Ipip,
        ),
        (
            "from a balancer, to a --vip",
            "10.77.1.7",
            "10.77.100.9",
            Wrap::Gue(GUE_PORT),
        ),
        (
            "from a balancer over IPv6",
            "fd77:1::2",
            VIP6,
            Wrap::Gue(GUE_PORT),
        ),
    ] {
        let inner = to(inner_dst);
        let host = host_for(&Pkt::tcp(outer_src, 1, outer_src, 1, SYN));
        let wrapped = encapsulated(&inner, ip(outer_src), host, wrap);
        let (verdict, out) = run(&decap, &wrapped);
        assert_eq!(
            (verdict, out),
            (XDP_PASS, bare(&inner[14..], &wrapped)),
            "{what}"
        );
        match wrap {
            Wrap::Ipip => expected.ipip += 1,
            Wrap::Gue(_) => expected.gue += 1,
        }
    }
    for (what, outer_src, inner_dst, foreign) in [
        ("from outside the prefixes", "10.77.1.8", VIP4, true),
        ("from outside, over IPv6", "fd77:2::2", VIP6, true),
        ("to an address not ours", "10.77.1.2", "10.77.100.10", false),
        ("to our peer over IPv6", "fd77:1::2", "fd77:1::12", false),
    ] {
        let inner = to(inner_dst);
        let host = host_for(&Pkt::tcp(outer_src, 1, outer_src, 1, SYN));
        for wrap in [Wrap::Ipip, Wrap::Gue(GUE_PORT)] {
            let wrapped = encapsulated(&inner, ip(outer_src), host, wrap);
            let (verdict, out) = run(&decap, &wrapped);
            assert_eq!((verdict, &out), (XDP_PASS, &wrapped), "{what} in {wrap:?}");
            if foreign {
                expected.passed_foreign += 1;
            } else {
                expected.passed_not_ours += 1;
            }
        }
    }
    assert_eq!(decap.counters().unwrap(), expected);
}

#[test]
fn without_from_any_source_is_unwrapped_but_never_a_strangers_packet() {
    if !privileged() {
        return;
    }
    let decap = decap();
    let inner = Pkt::tcp("10.77.0.2", 40000, VIP4, 80, SYN).bytes();
    let wrapped = encapsulated(&inner, ip("192.0.2.7"), ip(HOST4), Wrap::Ipip);
    assert_eq!(
        run(&decap, &wrapped),
        (XDP_PASS, bare(&inner[14..], &wrapped))
    );
    let stranger = Pkt::tcp("10.77.0.2", 40000, "10.77.1.12", 22, SYN).bytes();
    let wrapped = encapsulated(&stranger, ip("10.77.1.2"), ip(HOST4), Wrap::Ipip);
    assert_eq!(run(&decap, &wrapped), (XDP_PASS, wrapped.clone()));
    let counters = decap.counters().unwrap();
    assert_eq!((counters.ipip, counters.passed_not_ours), (1, 1));
}

#[test]
fn malformed_tunnel_packets_pass_untouched_and_are_counted() {
    if !privileged() {
        return;
    }
    let decap = decap();
    let inner4 = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN).bytes();
    let ipip = encapsulated(&inner4, ip("10.77.1.2"), ip(HOST4), Wrap::Ipip);
    let gue = encapsulated(&inner4, ip("10.77.1.2"), ip(HOST4), Wrap::Gue(GUE_PORT));

    let truncated_inner = ipip[..14 + 20 + 12].to_vec();
    let mut wrong_version = ipip.clone();
    wrong_version[34] = 0x65; // protocol 4 says IPv4, the inner says 6
    let mut fragment = ipip.clone();
    fragment[20] = 0x20; // more fragments
    let mut gue_version_2 = gue.clone();
    gue_version_2[42] = 0x85;
    let mut gue_control = gue_variant0(&inner4, ip(HOST4));
    gue_control[42] = 0x20; // C bit: a control message
    let gue_short = gue[..14 + 20 + 8 + 2].to_vec();
    for (what, packet) in [
        ("inner header cut short", &truncated_inner),
        ("inner version disagrees", &wrong_version),
        ("outer fragment", &fragment),
        ("GUE version bits 10", &gue_version_2),
        ("GUE control message", &gue_control),
        ("GUE header cut short", &gue_short),
    ] {
        let (verdict, out) = run(&decap, packet);
        assert_eq!((verdict, &out), (XDP_PASS, packet), "{what}");
    }
    assert_eq!(decap.counters().unwrap().passed_malformed, 6);
}

#[test]
fn what_the_load_balancer_wraps_decap_unwraps() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(
        r#"
[daemon]
interfaces = ["eth0"]
[[service]]
name = "web"
vip = "10.77.100.1"
port = 80
method = "tun"
encap = "gue"
[[service.backend]]
address = "10.77.1.11"
"#,
    );
    let decap = decap();
    let packet = Pkt::tcp("10.77.0.2", 40000, "10.77.100.1", 80, SYN).bytes();
    let (_, wrapped) = fixture.run(&packet);
    let (verdict, out) = run(&decap, &wrapped);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        &out[12..],
        &packet[12..],
        "the client's packet, as it was sent"
    );
}
