//! Traffic that must not be forwarded: not ours, or malformed. Each case
//! asserts the verdict, that a passed packet is untouched, and the reason
//! counter it was booked under.

mod support;

use support::*;

const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web4"
vip = "10.77.100.1"
port = 80
[[service.backend]]
address = "10.77.1.11"

[[service]]
name = "web6"
vip = "fd77:100::1"
port = 80
[[service.backend]]
address = "fd77:1::11"

[[service]]
name = "empty"
vip = "10.77.100.3"
port = 80
"#;

fn expect(fixture: &Fixture, packet: &[u8], verdict: u32, reason: &str) {
    let before = fixture.reason(reason);
    let (got, out) = fixture.run(packet);
    assert_eq!(got, verdict, "verdict for a {reason} packet");
    if verdict == XDP_PASS {
        assert_eq!(out, packet, "a passed packet is untouched");
    }
    assert_eq!(fixture.reason(reason), before + 1, "counted under {reason}");
}

fn ipv4_header_mut(packet: &mut [u8]) -> &mut [u8] {
    &mut packet[14..34]
}

#[test]
fn non_ip_frames_pass_untouched() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let mut arp = vec![0u8; 42];
    arp[0..6].copy_from_slice(&[0xff; 6]);
    arp[6..12].copy_from_slice(&ROUTER_MAC);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    expect(&fixture, &arp, XDP_PASS, "pass_not_ip");
}

#[test]
fn traffic_to_other_addresses_passes_untouched() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    expect(
        &fixture,
        &tcp4("10.77.0.2", 40000, "10.77.1.2", 22, b""),
        XDP_PASS,
        "pass_not_service",
    );
    expect(
        &fixture,
        &udp6("fd77::2", 40000, "fd77:1::2", 53, b""),
        XDP_PASS,
        "pass_not_service",
    );
}

#[test]
fn a_vip_port_without_a_service_passes_untouched() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    expect(
        &fixture,
        &tcp4("10.77.0.2", 40000, "10.77.100.1", 443, b""),
        XDP_PASS,
        "pass_vip_no_service",
    );
    expect(
        &fixture,
        &udp4("10.77.0.2", 40000, "10.77.100.1", 80, b""),
        XDP_PASS,
        "pass_vip_no_service",
    );
}

#[test]
fn icmp_to_a_vip_passes_to_the_kernel() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let builder = etherparse::PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ipv4(ip4("10.77.0.2"), ip4("10.77.100.1"), 64)
        .icmpv4_echo_request(1, 1);
    let mut ping = Vec::new();
    builder.write(&mut ping, b"ping").unwrap();
    expect(&fixture, &ping, XDP_PASS, "pass_vip_other_proto");
}

#[test]
fn truncated_ip_headers_are_dropped() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let full = tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"");
    expect(&fixture, &full[..14 + 12], XDP_DROP, "drop_truncated_ip");
    let full6 = tcp6("fd77::2", 40000, "fd77:100::1", 80, b"");
    expect(&fixture, &full6[..14 + 30], XDP_DROP, "drop_truncated_ip");
}

#[test]
fn bad_ipv4_headers_are_dropped() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let mut short_ihl = tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"");
    ipv4_header_mut(&mut short_ihl)[0] = 0x44;
    expect(&fixture, &short_ihl, XDP_DROP, "drop_bad_ip_header");
    let mut bad_length = tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"");
    ipv4_header_mut(&mut bad_length)[2..4].copy_from_slice(&10u16.to_be_bytes());
    expect(&fixture, &bad_length, XDP_DROP, "drop_bad_ip_header");
    let mut wrong_version = tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"");
    ipv4_header_mut(&mut wrong_version)[0] = 0x65;
    expect(&fixture, &wrong_version, XDP_DROP, "drop_bad_ip_header");
}

#[test]
fn ipv4_options_to_a_vip_are_dropped_but_not_to_others() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    for (dst, verdict, reason) in [
        ("10.77.100.1", XDP_DROP, "drop_ipv4_options"),
        ("10.77.1.2", XDP_PASS, "pass_not_service"),
    ] {
        let packet = with_ipv4_options(&tcp4("10.77.0.2", 40000, dst, 80, b""));
        expect(&fixture, &packet, verdict, reason);
    }
}

/// `plain` with 4 bytes of IPv4 options (NOP NOP NOP EOL) after its
/// 20-byte header.
fn with_ipv4_options(plain: &[u8]) -> Vec<u8> {
    let mut packet = plain[..34].to_vec();
    packet.extend_from_slice(&[1, 1, 1, 0]);
    packet.extend_from_slice(&plain[34..]);
    packet[14] = 0x46;
    let total = (packet.len() - 14) as u16;
    packet[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut packet);
    packet
}

/// The address filter in front of the VIP set lets a packet to an address
/// that shares a VIP's bit through to the service lookup: it must still
/// be what it is, not the VIP's (passed where a VIP's would be dropped).
#[test]
fn an_address_sharing_a_vips_filter_bit_is_not_taken_for_the_vip() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let (other4, other6) = (
        sharing_filter_bit("10.77.100.1"),
        sharing_filter_bit("fd77:100::1"),
    );
    println!("sharing the VIPs' filter bits: {other4}, {other6}");
    expect(
        &fixture,
        &tcp4("10.77.0.2", 40000, &other4, 80, b""),
        XDP_PASS,
        "pass_not_service",
    );
    expect(
        &fixture,
        &udp6("fd77::2", 40000, &other6, 80, b""),
        XDP_PASS,
        "pass_not_service",
    );
    expect(
        &fixture,
        &with_ipv4_options(&tcp4("10.77.0.2", 40000, &other4, 80, b"")),
        XDP_PASS,
        "pass_not_service",
    );
    expect(
        &fixture,
        &with_ipv6_extension(&other6, 0, &[6, 0, 1, 4, 0, 0, 0, 0]),
        XDP_PASS,
        "pass_not_service",
    );
    // Cut short of its IP length: a VIP's is dropped, another's passed.
    let mut cut = tcp4("10.77.0.2", 40000, &other4, 80, b"");
    ipv4_header_mut(&mut cut)[2..4].copy_from_slice(&200u16.to_be_bytes());
    fix_ipv4_checksum(&mut cut);
    expect(&fixture, &cut, XDP_PASS, "pass_not_service");
    // The VIPs themselves, the same packets: refused as before.
    expect(
        &fixture,
        &with_ipv4_options(&tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"")),
        XDP_DROP,
        "drop_ipv4_options",
    );
    expect(
        &fixture,
        &with_ipv6_extension("fd77:100::1", 0, &[6, 0, 1, 4, 0, 0, 0, 0]),
        XDP_DROP,
        "drop_ipv6_ext_header",
    );
}

fn with_ipv6_extension(dst: &str, next_header: u8, extension: &[u8]) -> Vec<u8> {
    let plain = tcp6("fd77::2", 40000, dst, 80, b"");
    let mut packet = plain[..54].to_vec();
    packet[20] = next_header;
    packet.extend_from_slice(extension);
    packet.extend_from_slice(&plain[54..]);
    let payload = (packet.len() - 54) as u16;
    packet[18..20].copy_from_slice(&payload.to_be_bytes());
    packet
}

#[test]
fn ipv6_extension_headers_to_a_vip_are_dropped() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let hop_by_hop = with_ipv6_extension("fd77:100::1", 0, &[6, 0, 1, 4, 0, 0, 0, 0]);
    expect(&fixture, &hop_by_hop, XDP_DROP, "drop_ipv6_ext_header");
    // A fragment header, then another extension header.
    let fragment = with_ipv6_extension("fd77:100::1", 44, &[0, 0, 0, 1, 0, 0, 0, 7]);
    expect(&fixture, &fragment, XDP_DROP, "drop_ipv6_ext_header");
}

#[test]
fn truncated_l4_headers_are_dropped() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    // Datagrams whose L4 header is cut short (their IP lengths say so).
    let mut tcp = tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"")[..34 + 10].to_vec();
    tcp[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ipv4_checksum(&mut tcp);
    expect(&fixture, &tcp, XDP_DROP, "drop_truncated_l4");
    let mut udp = udp6("fd77::2", 40000, "fd77:100::1", 80, b"")[..54 + 4].to_vec();
    udp[18..20].copy_from_slice(&4u16.to_be_bytes());
    expect(&fixture, &udp, XDP_DROP, "drop_truncated_l4");
    // A TCP header the datagram ends within, however long the frame.
    let mut short = tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"payload");
    short[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ipv4_checksum(&mut short);
    expect(&fixture, &short, XDP_DROP, "drop_truncated_l4");
    // A frame cut short of its datagram's length: a bad IP header.
    let whole = tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"");
    expect(&fixture, &whole[..34 + 10], XDP_DROP, "drop_bad_ip_header");
    let mut bad_offset = tcp4("10.77.0.2", 40000, "10.77.100.1", 80, b"");
    bad_offset[34 + 12] = 0x20; // data offset 2 words: less than a header
    expect(&fixture, &bad_offset, XDP_DROP, "drop_truncated_l4");
}

#[test]
fn a_service_without_backends_drops_new_flows_and_says_why() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    expect(
        &fixture,
        &tcp4("10.77.0.2", 40000, "10.77.100.3", 80, b""),
        XDP_DROP,
        "drop_no_backend",
    );
    let id = fixture.programmer.service_id("empty").unwrap();
    let counters = fixture.dataplane.service_counters(id).unwrap();
    assert_eq!(counters.drops[11], 1, "booked on the service too");
    assert_eq!(counters.packets, 0);
}
