//! IP fragments (bpf/lib/fragment.h): a datagram's later fragments follow
//! its first fragment's backend and translation, through every method and
//! both directions, IPv4 and IPv6. Each case is checked byte for byte
//! against the translated datagram cut the same way: fragmenting and
//! translating commute when the translation is right.

mod support;

use std::net::IpAddr;

use support::*;

const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "nat4"
vip = "10.77.100.1"
port = 53
protocol = "udp"
method = "nat"
[[service.backend]]
address = "10.77.1.11"
port = 5353

[[service]]
name = "snat6"
vip = "fd77:100::2"
port = 53
protocol = "udp"
method = "snat"
snat_addresses = ["fd77:1::2"]
[[service.backend]]
address = "fd77:1::21"

[[service]]
name = "dr4"
vip = "10.77.100.5"
port = 53
protocol = "udp"
method = "dr"
[[service.backend]]
address = "10.77.1.51"
[[service.backend]]
address = "10.77.1.52"
[[service.backend]]
address = "10.77.1.53"

[[service]]
name = "tun4"
vip = "10.77.100.6"
port = 53
protocol = "udp"
method = "tun"
[[service.backend]]
address = "10.77.1.61"

[[service]]
name = "dr4tcp"
vip = "10.77.100.5"
port = 80
method = "dr"
[[service.backend]]
address = "10.77.1.51"
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A 1,200-byte UDP datagram, cut after 1,000 bytes of IP payload.
fn big_udp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
    Pkt::udp(src, sport, dst, dport).with_payload((0..1192).map(|i| (i * 7) as u8).collect())
}

const CUT: usize = 1000;

#[test]
fn nat_translates_both_fragments_of_a_request_and_of_its_reply() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let request = big_udp("10.77.0.2", 40000, "10.77.100.1", 53);
        let [first, later] = fragments(&request.bytes(), 0x1234, CUT);
        let backend = ip("10.77.1.11");
        let translated = request
            .with(ip("10.77.0.2"), 40000, backend, 5353)
            .routed()
            .macs(LB_MAC, backend_mac(backend));
        let [want_first, want_later] = fragments(&translated.bytes(), 0x1234, CUT);
        let (verdict, out) = fixture.run(&first);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out, want_first,
            "first fragment: addresses, port and the datagram's UDP checksum"
        );
        let (verdict, out) = fixture.run(&later);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            out, want_later,
            "later fragment: addresses and TTL only, payload untouched"
        );

        // The server's reply, fragmented by the server.
        let reply =
            big_udp("10.77.1.11", 5353, "10.77.0.2", 40000).macs(backend_mac(backend), LB_MAC);
        let [first, later] = fragments(&reply.bytes(), 0x4321, CUT);
        let back = reply
            .with(ip("10.77.100.1"), 53, ip("10.77.0.2"), 40000)
            .routed()
            .macs(LB_MAC, ROUTER_MAC);
        let [want_first, want_later] = fragments(&back.bytes(), 0x4321, CUT);
        for (fragment, want, what) in [(first, want_first, "first"), (later, want_later, "later")] {
            let (verdict, out) = fixture.run(&fragment);
            assert_eq!(verdict, XDP_REDIRECT, "{what} reply fragment routed");
            assert_eq!(out, want, "{what} reply fragment from the VIP");
        }
        assert_eq!(fixture.reason("fwd_fragment"), 4);
        println!("nat: 2 request and 2 reply fragments translated byte-exact");
    });
}

#[test]
fn snat_translates_ipv6_fragments_both_ways() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let request = big_udp("fd77::2", 40001, "fd77:100::2", 53);
        let [first, later] = fragments(&request.bytes(), 0xdead_beef, CUT);
        let (verdict, out_first) = fixture.run(&first);
        assert_eq!(verdict, XDP_TX);
        // Where the first fragment went (the SNAT port is drawn).
        let snat_port = u16::from_be_bytes([out_first[62], out_first[63]]);
        let backend = ip("fd77:1::21");
        let translated = request
            .with(ip("fd77:1::2"), snat_port, backend, 53)
            .routed()
            .macs(LB_MAC, backend_mac(backend));
        let [want_first, want_later] = fragments(&translated.bytes(), 0xdead_beef, CUT);
        assert_eq!(out_first, want_first, "first: after the fragment header");
        let (verdict, out) = fixture.run(&later);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out, want_later);

        let reply = big_udp("fd77:1::21", 53, "fd77:1::2", snat_port);
        let [first, later] = fragments(&reply.bytes(), 7, CUT);
        let back = reply
            .with(ip("fd77:100::2"), 53, ip("fd77::2"), 40001)
            .routed()
            .macs(LB_MAC, ROUTER_MAC);
        let [want_first, want_later] = fragments(&back.bytes(), 7, CUT);
        assert_eq!(fixture.run(&first), (XDP_REDIRECT, want_first));
        assert_eq!(fixture.run(&later), (XDP_REDIRECT, want_later));
    });
}

#[test]
fn dr_and_tun_send_every_fragment_to_the_first_ones_backend() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let mut backends = std::collections::BTreeSet::new();
    for sport in 0..16u16 {
        let request = big_udp("10.77.0.2", 41000 + sport, "10.77.100.5", 53);
        let [first, later] = fragments(&request.bytes(), u32::from(sport), CUT);
        let (verdict, out_first) = fixture.run(&first);
        assert_eq!(verdict, XDP_TX);
        let (verdict, out_later) = fixture.run(&later);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out_first[..6], out_later[..6], "same backend MAC");
        assert_eq!(out_later[12..], later[12..], "dr: the IP packet as it came");
        backends.insert(out_first[..6].to_vec());
    }
    assert!(backends.len() >= 2, "the flows spread: {}", backends.len());

    let request = big_udp("10.77.0.2", 42000, "10.77.100.6", 53);
    let [first, later] = fragments(&request.bytes(), 99, CUT);
    for fragment in [first, later] {
        let (verdict, out) = fixture.run(&fragment);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out.len(), fragment.len() + 20, "IPIP header added");
        assert_eq!(out[14 + 9], 4, "outer protocol IPIP");
        assert_eq!(out[30..34], [10, 77, 1, 61], "to the tun backend");
        assert_eq!(out[34..], fragment[14..], "the fragment inside, untouched");
    }
}

#[test]
fn a_later_fragment_without_its_first_is_dropped_and_counted() {
    if !privileged() {
        return;
    }
    in_lb_netns(|| {
        let fixture = Fixture::new(CONFIG);
        let request = big_udp("10.77.0.2", 40002, "10.77.100.1", 53);
        let [first, later] = fragments(&request.bytes(), 0x5555, CUT);
        assert_eq!(fixture.run(&later).0, XDP_DROP, "reordered: first not seen");
        assert_eq!(fixture.reason("drop_fragment"), 1);
        assert_eq!(fixture.run(&first).0, XDP_TX);
        assert_eq!(fixture.run(&later).0, XDP_TX, "after its first, it goes");

        // Another datagram of the same flow has another id.
        let [_, other] = fragments(&request.bytes(), 0x5556, CUT);
        assert_eq!(fixture.run(&other).0, XDP_DROP);
        assert_eq!(fixture.reason("drop_fragment"), 2);
    });
}

#[test]
fn a_tcp_fragment_at_offset_8_is_dropped_as_rfc_1858_says() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let syn = Pkt::tcp("10.77.0.2", 40003, "10.77.100.5", 80, SYN)
        .with_payload(vec![0; 40])
        .bytes();
    let [first, _] = fragments(&syn, 0x77, 16);
    assert_eq!(
        fixture.run(&first).0,
        XDP_DROP,
        "a 16-byte first fragment cannot hold TCP's header"
    );
    assert_eq!(fixture.reason("drop_truncated_l4"), 1);
    let [_, overlap] = fragments(&syn, 0x78, 8);
    assert_eq!(fixture.run(&overlap).0, XDP_DROP);
    assert_eq!(fixture.reason("drop_fragment"), 1);
}

#[test]
fn fragments_that_are_not_ours_pass_untouched() {
    if !privileged() {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let other = big_udp("10.77.0.2", 40004, "10.77.0.9", 53);
    for fragment in fragments(&other.bytes(), 1, CUT) {
        assert_eq!(fixture.run(&fragment), (XDP_PASS, fragment.clone()));
    }
    assert_eq!(fixture.reason("drop_fragment"), 0);
}
